"""Hostile bundles and hostile machines against the readers: verify, inspect, join and extraction.

Each test plays one finding of the attacker's review (its docstring says the attack) on a
real bundle and checks the contract's exit code, that the message names the member, part
or file at fault, and that nothing was written outside the work folder.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from bundler import archive
from bundler.errors import IntegrityError

from .conftest import Keys, Project, run_cli

HERE = Path(__file__).resolve().parent.parent


def _pax_block(records: bytes, name: str = "././@PaxHeader") -> bytes:
    """A raw PAX extended header carrying ``records`` verbatim (tarfile would not write bad ones)."""
    header = tarfile.TarInfo(name)
    header.type = tarfile.XHDTYPE
    header.size = len(records)
    return header.tobuf(tarfile.USTAR_FORMAT) + records + b"\0" * (-len(records) % 512)


def _record(key: str, value: str) -> bytes:
    body = f" {key}={value}\n"
    n = len(body) + 1
    n = len(body) + len(str(n))
    return f"{n}{body}".encode()


def _splice(bundle: Path, out: Path, before: str, raw: bytes) -> Path:
    """``bundle`` with ``raw`` bytes inserted just before member ``before``'s header."""
    data = bundle.read_bytes()
    with tarfile.open(bundle) as tar:
        offset = next(m.offset for m in tar.getmembers() if m.name == before)
    out.write_bytes(data[:offset] + raw + data[offset:])
    return out


def test_gnu_sparse_records_are_refused(built: Path, keys: Keys, tmp_path: Path) -> None:
    """Attack: PAX ``GNU.sparse.*`` records on a listed member. GNU tar then extracts a different
    (sparse-expanded) file than the bytes a reader that ignores them hashes, so a "verified"
    bundle would unpack into other files. Only ``path`` and ``size`` records are accepted."""
    records = _record("GNU.sparse.major", "1") + _record("GNU.sparse.minor", "0")
    hostile = _splice(built, tmp_path / "sparse.tar", "install.sh", _pax_block(records))
    for command in (["verify", hostile, "--pubkey", keys.pub_path], ["inspect", hostile, "--sbom"]):
        result = run_cli(*command)
        assert result.exit_code == 4, result.stderr
        assert "unsafe member 'install.sh': PAX record 'GNU.sparse.major'" in result.stderr


@pytest.mark.parametrize("value", ["-1000000", "+512", "0x10"])
def test_a_malformed_pax_size_is_refused_at_once(built: Path, keys: Keys, tmp_path: Path, value: str) -> None:
    """Attack: a negative PAX size made the header scan walk backwards forever (``inspect --sbom``
    never returned). Only plain decimal sizes are read; the refusal comes at once."""
    hostile = _splice(built, tmp_path / "neg.tar", "installer/run.py", _pax_block(_record("size", value)))
    for command in (["inspect", hostile, "--sbom"], ["verify", hostile, "--pubkey", keys.pub_path]):
        run = subprocess.run(
            [sys.executable, "-m", "bundler", *map(str, command)], capture_output=True, text=True, timeout=60
        )
        assert run.returncode == 4, run.stderr
        assert f"unsafe member 'installer/run.py': malformed PAX size '{value}'" in run.stderr


def test_a_gnu_format_header_is_refused(built: Path, keys: Keys, tmp_path: Path) -> None:
    """Attack: a GNU-magic header, whose bytes 345..500 GNU tar reads as times but Python's tarfile
    as a name prefix: the two would unpack the member under different names."""
    with tarfile.open(built) as tar:
        member = next(m for m in tar.getmembers() if m.name == "installer/run.py")
    raw = bytearray(built.read_bytes())
    header = member.offset
    raw[header + 257 : header + 265] = b"ustar  \0"
    raw[header + 148 : header + 156] = b"        "
    raw[header + 148 : header + 156] = b"%06o\0 " % sum(raw[header : header + 512])
    hostile = tmp_path / "gnu.tar"
    hostile.write_bytes(bytes(raw))
    result = run_cli("verify", hostile, "--pubkey", keys.pub_path)
    assert result.exit_code == 4 and "'installer/run.py': not a POSIX ustar header" in result.stderr


@pytest.mark.parametrize("kind", ["fifo", "folder"])
def test_a_fifo_or_folder_given_as_a_bundle_is_refused(keys: Keys, tmp_path: Path, kind: str) -> None:
    """A FIFO given as the bundle used to block ``verify`` forever; a folder gave a traceback."""
    target = tmp_path / "bundle.tar"
    os.mkfifo(target) if kind == "fifo" else target.mkdir()
    for command in (["verify", target, "--pubkey", keys.pub_path], ["inspect", target]):
        run = subprocess.run(
            [sys.executable, "-m", "bundler", *map(str, command)], capture_output=True, text=True, timeout=60
        )
        assert run.returncode == 2, run.stderr
        assert str(target) in run.stderr and "Traceback" not in run.stderr


def test_install_sh_refuses_a_fifo_as_the_bundle(built: Path, keys: Keys, tmp_path: Path) -> None:
    """A FIFO named as the bundle made install.sh's tar wait forever: refused at once, exit 2."""
    shutil.copy(HERE / "bundler" / "installer" / "install.sh", tmp_path / "install.sh")
    os.mkfifo(tmp_path / "demo-1.0.0.tar")
    run = subprocess.run(
        ["sh", "install.sh", "--bundle", "demo-1.0.0.tar", "--pubkey", str(keys.pub_path), "--inventory", "c.yml"],
        cwd=tmp_path, capture_output=True, text=True, timeout=60, env={**os.environ, "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert run.returncode == 2 and "demo-1.0.0.tar: no such bundle, or not a regular file" in run.stderr


def test_the_bytes_decided_on_are_the_bytes_unpacked(
    project: Project, keys: Keys, built: Path, tmp_path: Path, cache_dir: Path
) -> None:
    """Attack: the version was checked on a first read of the bundle and unpacked from a second;
    renaming an older, validly signed bundle over the path between them installed it.
    Now the file is opened once: whatever is renamed over the path later is never read."""
    older = tmp_path / "older"
    project.manifest.write_text(project.manifest.read_text().replace('version: "1.0.0"', 'version: "0.9.0"'))
    made = run_cli("build", project.manifest, "-o", older, "--key", keys.key_path, "--cache", cache_dir)
    assert made.exit_code == 0, made.stderr
    site = tmp_path / "site.tar"
    shutil.copy(built, site)
    work = tmp_path / "work"
    with archive.Bundle(site, [keys.pub]) as bundle:
        decision = bundle.decide(archive.facts([keys.pub]))
        os.replace(older / "demo-0.9.0.tar", site)  # the swap
        final, _ = bundle.extract(decision, work)
    assert final.name == "demo-1.0.0"
    assert (final / "lock.json").read_bytes() == decision.lock_bytes
    assert b'"version": "1.0.0"' in decision.lock_bytes


def test_bytes_changed_in_place_after_the_audit_unpack_nothing(
    built: Path, keys: Keys, tmp_path: Path
) -> None:
    """Attack: rewrite a member's bytes in the same file (same inode) after its headers were
    audited. Every byte is hashed as it is written, so the unpack fails naming the member and
    leaves no folder, final or temporary, behind."""
    site = tmp_path / "site.tar"
    shutil.copy(built, site)
    with tarfile.open(site) as tar:
        target = next(m for m in tar.getmembers() if m.name == "installer/run.py")
    work = tmp_path / "work"
    with archive.Bundle(site, [keys.pub]) as bundle:
        decision = bundle.decide(archive.facts([keys.pub]))
        with open(site, "r+b") as f:
            f.seek(target.offset_data)
            f.write(b"import os; os.system('touch /tmp/pwned')  #")
        with pytest.raises(IntegrityError, match=r"installer/run\.py: sha256 [0-9a-f]{64}, lock\.json says"):
            bundle.extract(decision, work)
    assert sorted(p.name for p in work.iterdir()) == []


def test_a_damaged_byte_is_named_in_the_part_that_holds_it(
    project: Project, keys: Keys, tmp_path: Path, cache_dir: Path
) -> None:
    """A member spanning parts used to be reported in the part where it starts; the signed
    per-part SHA-256s now say which part holds the damage."""
    big = project.root / "payloads" / "big.bin"
    big.write_bytes(os.urandom(300_000))
    text = project.manifest.read_text()
    if "files:" in text:
        text = text.replace("files:\n", "files:\n  - src: payloads/big.bin\n    dest: big.bin\n", 1)
    else:
        text += "files:\n  - src: payloads/big.bin\n    dest: big.bin\n"
    project.manifest.write_text(text)
    made = run_cli(
        "build", project.manifest, "-o", tmp_path / "p", "--key", keys.key_path, "--cache", cache_dir,
        "--split", "64K",
    )  # fmt: skip
    assert made.exit_code == 0, made.stderr
    index = Path(made.stdout.strip())
    with archive.open_source(index) as src:
        starts, paths = src.starts, src.paths
        reader = archive.TarReader(src, src.size)
        member = next(m for m in iter(reader.next, None) if m.name == "files/big.bin")
    first = max(i for i, s in enumerate(starts) if s <= member.offset)
    later = first + 2  # a part the member spans, not the one it starts in
    assert starts[later] < member.offset + member.size
    part = paths[later]
    data = bytearray(part.read_bytes())
    data[100] ^= 0xFF
    part.write_bytes(bytes(data))
    result = run_cli("verify", index, "--pubkey", keys.pub_path)
    assert result.exit_code == 4
    assert "files/big.bin: sha256" in result.stderr and f"(in part {part.name})" in result.stderr


def test_an_unwritable_work_folder_is_an_install_error_not_a_traceback(
    built: Path, keys: Keys, tmp_path: Path
) -> None:
    """A file where the work folder should be: exit 6 naming it, no traceback, nothing written."""
    from .conftest import CLUSTER_YML

    (tmp_path / "cluster.yml").write_text(CLUSTER_YML)
    blocker = tmp_path / "work"
    blocker.write_text("not a folder")
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "bundler",
            "install",
            str(built),
            "--pubkey",
            str(keys.pub_path),
            "--inventory",
            str(tmp_path / "cluster.yml"),
            "--workdir",
            str(blocker / "sub"),
        ],
        capture_output=True,
        text=True,
        cwd=HERE,
    )
    assert run.returncode == 6, run.stderr
    assert "Traceback" not in run.stderr and str(blocker) in run.stderr
    assert blocker.read_text() == "not a folder"
    direct = subprocess.run(  # the work folder itself is a file: a usage error, said plainly
        [sys.executable, "-m", "bundler", "install", str(built), "--pubkey", str(keys.pub_path),
         "--inventory", str(tmp_path / "cluster.yml"), "--workdir", str(blocker), "--dry-run"],
        capture_output=True, text=True, cwd=HERE,
    )  # fmt: skip
    assert direct.returncode == 2 and f"--workdir {blocker}: not a folder" in direct.stderr


def test_disk_full_while_unpacking_is_an_install_error(built: Path, keys: Keys, tmp_path: Path) -> None:
    """The work folder's filesystem runs out of room half-way (a tmpfs with few inodes, so the
    free-space check passes and a later file cannot be made): exit 6 naming the folder and the
    cause, no traceback, and the private folder removed. The tmpfs is seen only by the installer
    (its own mount namespace)."""
    from .conftest import CLUSTER_YML

    if not shutil.which("unshare"):
        pytest.skip("unshare (util-linux) is needed for a private mount")
    (tmp_path / "cluster.yml").write_text(CLUSTER_YML)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    install = [sys.executable, "-m", "bundler", "install", str(built), "--pubkey", str(keys.pub_path),
               "--inventory", str(tmp_path / "cluster.yml"), "--workdir", f"{mnt}/work"]  # fmt: skip
    script = (
        f"mount -t tmpfs -o size=200m,nr_inodes=24 airbundle-test {mnt} || exit 97\n"
        f'{" ".join(install)}; echo "exit=$?"; ls -A {mnt}/work'
    )
    run = subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True, text=True, cwd=HERE)
    if run.returncode == 97:
        pytest.skip(f"cannot mount a tmpfs here: {run.stderr.strip()}")
    assert "exit=6" in run.stdout, run.stdout + run.stderr
    assert "no space left" in run.stderr and f"{mnt}/work" in run.stderr and "Traceback" not in run.stderr
    leftovers = run.stdout.split("exit=6", 1)[1].split()
    assert [n for n in leftovers if not n.startswith("state.")] == []  # the journal's files only


@pytest.mark.parametrize("length", ["+25", "2_5"])
def test_a_pax_record_length_gnu_tar_refuses_is_refused(
    built: Path, keys: Keys, tmp_path: Path, length: str
) -> None:
    """Attack: a PAX record whose length is spelled ``+25`` or ``2_5`` (Python's int() takes
    both, GNU tar calls the header malformed and keeps the ustar name): verify said OK while
    tar unpacked the member under another name. Only plain digits are read."""
    record = length.encode() + b" path=files/notes.txt\n"
    assert len(record) == 25  # the length the record claims, read as int() reads it
    hostile = _splice(built, tmp_path / "len.tar", "files/notes.txt", _pax_block(record))
    result = run_cli("verify", hostile, "--pubkey", keys.pub_path)
    assert result.exit_code == 4 and "malformed PAX header" in result.stderr


@pytest.mark.parametrize("kind", ["fifo", "zero"])
def test_odd_files_for_the_small_inputs_are_refused_at_once(
    built: Path, keys: Keys, tmp_path: Path, project: Project, kind: str
) -> None:
    """A FIFO given as the key, inventory, values or manifest made the command wait forever;
    /dev/zero as the inventory grew the installer to gigabytes. Each is refused at once, exit 2,
    naming the file."""
    odd = tmp_path / "odd.yml"
    if kind == "fifo":
        os.mkfifo(odd)
    else:
        odd = Path("/dev/zero")
    from .conftest import CLUSTER_YML

    (tmp_path / "cluster.yml").write_text(CLUSTER_YML)
    commands = [
        ["verify", built, "--pubkey", odd],
        ["inspect", built, "--pubkey", odd],
        ["install", built, "--pubkey", keys.pub_path, "--inventory", odd],
        [
            "install",
            built,
            "--pubkey",
            keys.pub_path,
            "--inventory",
            tmp_path / "cluster.yml",
            "--values",
            odd,
        ],
        ["build", odd, "--key", keys.key_path, "-o", tmp_path / "out"],
        ["build", project.manifest, "--key", odd, "-o", tmp_path / "out"],
    ]
    for command in commands:
        run = subprocess.run(
            [sys.executable, "-m", "bundler", *map(str, command)], capture_output=True, text=True, timeout=60
        )
        assert run.returncode == 2, (command, run.stderr)
        assert str(odd) in run.stderr and "Traceback" not in run.stderr, (command, run.stderr)


def test_bytes_in_a_members_padding_are_refused(built: Path, keys: Keys, tmp_path: Path) -> None:
    """Attack: data hidden in the zero padding after a member (outside every digest the lock
    signs): the bundle verified although it no longer matched its .sha256. Refused, naming it."""
    with tarfile.open(built) as tar:
        member = next(m for m in tar.getmembers() if m.size % 512)
    raw = bytearray(built.read_bytes())
    raw[member.offset_data + member.size] = ord("X")
    hostile = tmp_path / "pad.tar"
    hostile.write_bytes(bytes(raw))
    result = run_cli("verify", hostile, "--pubkey", keys.pub_path)
    assert result.exit_code == 4 and f"'{member.name}': non-zero bytes in the padding" in result.stderr


# ---------------------------------------------------------------- the third review


@pytest.mark.parametrize("how", ["group-writable", "other-owner"])
def test_a_work_folder_others_can_write_is_refused(built: Path, keys: Keys, tmp_path: Path, how: str) -> None:
    """Attack: a work folder another user can write: after the unpack they swap the verified
    folder and root runs their step scripts. The installer refuses such a folder (as ssh's
    StrictModes does), before reading the bundle."""
    from .conftest import CLUSTER_YML

    (tmp_path / "cluster.yml").write_text(CLUSTER_YML)
    work = tmp_path / "work"
    work.mkdir()
    if how == "group-writable":
        work.chmod(0o777)
    else:
        os.chown(work, 65534, 65534)
    run = subprocess.run(
        [sys.executable, "-m", "bundler", "install", str(built), "--pubkey", str(keys.pub_path),
         "--inventory", str(tmp_path / "cluster.yml"), "--workdir", str(work), "--dry-run"],
        capture_output=True, text=True, cwd=HERE,
    )  # fmt: skip
    assert run.returncode == 2 and f"--workdir {work}" in run.stderr, run.stderr
    assert (
        "writable by group or others" if how == "group-writable" else "belongs to uid 65534"
    ) in run.stderr
    assert list(work.iterdir()) == []


def test_steps_and_rke_run_from_checked_copies(built: Path, keys: Keys, tmp_path: Path) -> None:
    """Attack: the unpacked step script changed after the unpack (a swap in the work folder):
    it used to run as root. Each script is now copied into a private folder while its bytes are
    checked against the lock; a changed one is refused (exit 4) and never runs."""
    from bundler.errors import IntegrityError
    from bundler.installer.journal import Journal
    from bundler.installer.steps import run_steps

    work = tmp_path / "work"
    with archive.Bundle(built, [keys.pub]) as bundle:
        decision = bundle.decide(archive.facts([keys.pub]))
        final, _ = bundle.extract(decision, work)
    marker = tmp_path / "PWNED"
    step = decision.lock.steps[0]
    (final / step.script).write_text(f"#!/bin/sh\ntouch {marker}\n")
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    with Journal(work) as journal, pytest.raises(IntegrityError, match="changed since it was verified"):
        run_steps(decision.lock, final, work / "logs", dict(os.environ), journal, lambda _: None, private)
    assert not marker.exists()


def test_a_damaged_journal_is_exit_6_not_a_traceback(tmp_path: Path) -> None:
    """A state.json of another shape (no ``installed``, a list, a string entry), a FIFO, or a
    symlinked state.lock: exit 6 naming the file (a traceback before; a FIFO hung; the lock link
    made root create a file elsewhere)."""
    from bundler.errors import InstallError
    from bundler.installer.journal import Journal

    for shape in ('{"format": 1, "done": {}}', '{"format": 1, "done": {}, "installed": []}',
                  '{"format": 1, "done": {}, "installed": {"demo": "1.0.0"}}'):  # fmt: skip
        (tmp_path / "state.json").write_text(shape)
        with pytest.raises(InstallError, match="journal is damaged"):
            Journal.read(tmp_path)
    (tmp_path / "state.json").unlink()
    os.mkfifo(tmp_path / "state.json")
    with pytest.raises(InstallError, match="is a FIFO"):
        Journal.read(tmp_path)
    (tmp_path / "state.json").unlink()
    elsewhere = tmp_path / "outside" / "created"
    (tmp_path / "state.lock").symlink_to(elsewhere)
    with pytest.raises(InstallError, match="cannot open the install lock"), Journal(tmp_path):
        pass
    assert not elsewhere.exists()


def test_a_delta_whose_base_file_is_gone_is_refused_with_advice(
    built: Path, keys: Keys, tmp_path: Path
) -> None:
    """A delta's inherited member missing from (or replaced in) the installed base: exit 3 naming
    the base and what to do (it was exit 2 "opening the bundle failed", or 4 without advice)."""
    import dataclasses

    from bundler.errors import TrustError

    work = tmp_path / "work"
    with archive.Bundle(built, [keys.pub]) as bundle:
        base_dir, _ = bundle.extract(bundle.decide(archive.facts([keys.pub])), work)
        lock = bundle.decide(archive.facts([keys.pub])).lock
    rke = lock.member("bin/rke")
    delta = dataclasses.replace(lock, version="1.1.0", members=(), inherited=(rke,), base={"name": "demo",
                                "version": "1.0.0", "lock_sha256": "0" * 64})  # fmt: skip
    staging = tmp_path / "staging"
    for damage in ("missing", "fifo"):
        (base_dir / "bin" / "rke").unlink(missing_ok=True)
        if damage == "fifo":
            os.mkfifo(base_dir / "bin" / "rke")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        with pytest.raises(TrustError, match=r"install demo 1\.0\.0 again from its full bundle") as err:
            archive._inherit(delta, base_dir, str(staging))
        assert err.value.exit_code == 3


def test_a_key_file_mixing_pub_and_allowed_signers_lines_is_refused(keys: Keys, tmp_path: Path) -> None:
    """ssh-keygen skips a bare ``ssh-ed25519 KEY`` line inside an allowed_signers file, airbundle
    trusted it: a key retired on its allowed_signers line stayed trusted through its .pub line."""
    from bundler import signing
    from bundler.errors import KeyFileError

    line = keys.pub.openssh_line()
    text = f'{line}\nairbundle valid-before="20000101Z" {line}\n'
    with pytest.raises(KeyFileError, match=r"mixes \.pub lines"):
        signing.parse_public_keys(text, "signers")
    signers = tmp_path / "signers"
    signers.write_text(text)
    shutil.copy(HERE / "bundler" / "installer" / "install.sh", tmp_path / "install.sh")
    run = subprocess.run(
        ["sh", "install.sh", "--bundle", str(built_path(tmp_path)), "--pubkey", "signers", "--inventory", "c.yml"],
        cwd=tmp_path, capture_output=True, text=True, env={**os.environ, "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert run.returncode == 2 and "mixes .pub lines" in run.stderr, run.stderr


def built_path(tmp_path: Path) -> Path:
    """A regular file for install.sh's --bundle (the key file is refused before it is read)."""
    path = tmp_path / "b.tar"
    path.write_bytes(b"")
    return path
