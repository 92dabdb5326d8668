"""Building bundles: round trip, determinism, atomicity, stock tar compatibility."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from bundler import archive, build
from bundler.errors import FetchError, IntegrityError

from .conftest import AIRBUNDLE, RKE_BYTES, Keys, Project, run_cli


def _build(
    project: Project,
    keys: Keys,
    out: Path,
    cache: Path,
    *extra: str,
    manifest: Path | None = None,
    env: dict[str, str] | None = None,
):
    return run_cli(
        "build",
        manifest or project.manifest,
        "-o",
        out,
        "--key",
        keys.key_path,
        "--cache",
        cache,
        *extra,
        env=env,
    )


def test_build_verify_round_trip(built: Path, keys: Keys) -> None:
    report = archive.verify_bundle(built, [keys.pub])
    assert report.problems == []
    assert report.signer == keys.pub
    names = [m.path for m in report.lock.members]
    assert names == [
        "install.sh",
        *sorted(build.INSTALLER_FILES),
        "bin/rke",
        "files/app/config/values.yaml",
        "files/app/deploy.yaml",
        "files/app/tool.sh",
        "files/notes.txt",
        "scripts/01-storage.sh",
        "scripts/02-services.sh",
        "sbom.cdx.json",
    ]
    assert report.members == len(names)


def test_tar_layout_for_stock_tar(built: Path) -> None:
    with tarfile.open(built) as tar:
        members = tar.getmembers()
    assert [m.name for m in members[:3]] == ["lock.json", "lock.json.sig", "install.sh"]
    assert all(m.isreg() and m.uid == 0 and m.gid == 0 and m.mtime == 0 for m in members)
    modes = {m.name: m.mode for m in members}
    assert modes["bin/rke"] == modes["install.sh"] == modes["files/app/tool.sh"] == 0o755
    assert modes["files/notes.txt"] == modes["lock.json"] == 0o644
    listing = subprocess.run(["tar", "-tvf", built], capture_output=True, text=True, check=True).stdout
    assert "0/0" in listing and "bin/rke" in listing
    # GNU tar reads it whole, including the padding to a full record.
    assert built.stat().st_size % archive.RECORD == 0
    with tarfile.open(built) as tar:
        assert tar.extractfile("bin/rke").read() == RKE_BYTES  # type: ignore[union-attr]


def test_sha256_file_matches_sha256sum(built: Path) -> None:
    sha_file = built.with_name(built.name + ".sha256")
    line = sha_file.read_text()
    assert line == f"{hashlib.sha256(built.read_bytes()).hexdigest()}  {built.name}\n"
    subprocess.run(["sha256sum", "-c", sha_file.name], cwd=built.parent, check=True, capture_output=True)


def test_two_builds_are_byte_identical(project: Project, keys: Keys, tmp_path: Path, cache_dir: Path) -> None:
    """Same manifest, another folder, another time, another cache: the same bytes."""
    first = _build(project, keys, tmp_path / "a", cache_dir)
    assert first.exit_code == 0, first.stderr
    copy = tmp_path / "elsewhere" / "proj"
    shutil.copytree(project.root, copy)
    for path in copy.rglob("*"):
        os.utime(path, (1_000_000, 1_000_000))  # other mtimes must not leak in
    second = _build(project, keys, tmp_path / "b", tmp_path / "cache2", manifest=copy / "manifests/demo.yaml")
    assert second.exit_code == 0, second.stderr
    a, b = (Path(r.stdout.strip()) for r in (first, second))
    assert a.read_bytes() == b.read_bytes()
    assert a.with_suffix(".tar.sha256").read_text() == b.with_suffix(".tar.sha256").read_text()


def test_source_date_epoch_stamps_members(
    project: Project, keys: Keys, tmp_path: Path, cache_dir: Path
) -> None:
    result = _build(project, keys, tmp_path / "o", cache_dir, env={"SOURCE_DATE_EPOCH": "1700000000"})
    assert result.exit_code == 0, result.stderr
    with tarfile.open(result.stdout.strip()) as tar:
        assert {m.mtime for m in tar.getmembers()} == {1700000000}
        lock = json.loads(tar.extractfile("lock.json").read())  # type: ignore[union-attr]
    assert lock["source_date_epoch"] == 1700000000
    bad = _build(project, keys, tmp_path / "o2", cache_dir, env={"SOURCE_DATE_EPOCH": "yesterday"})
    assert bad.exit_code == 2 and "SOURCE_DATE_EPOCH" in bad.stderr


def test_failed_fetch_leaves_no_bundle(project: Project, keys: Keys, tmp_path: Path, cache_dir: Path) -> None:
    project.origin.routes["/rke_linux-amd64"].behaviour = "wrong"
    out = tmp_path / "out"
    result = _build(project, keys, out, cache_dir)
    assert result.exit_code == 5
    assert "sha256 mismatch" in result.stderr and "/rke_linux-amd64" in result.stderr
    assert not out.exists() or list(out.iterdir()) == []


def test_interrupted_write_leaves_nothing_at_final_path(
    project: Project, keys: Keys, tmp_path: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"
    assert _build(project, keys, out, cache_dir).exit_code == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    (project.root / "scripts/storage.sh").write_text("#!/bin/sh\necho changed storage step\n")
    real_copy = archive._copy_file

    def dying_copy(src_fd: int, dst_fd: int, size: int, path: Path, progress) -> None:
        if "storage" in str(path):
            raise OSError(errno.ENOSPC, "No space left on device")
        real_copy(src_fd, dst_fd, size, path, progress)

    monkeypatch.setattr(archive, "_copy_file", dying_copy)
    with pytest.raises(FetchError, match="no space left"):
        build.build_bundle(project.manifest, out, keys.key, cache_dir)
    # The previous bundle is untouched and no temp file is left behind.
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_source_changing_during_build_is_caught(tmp_path: Path) -> None:
    src = tmp_path / "f"
    src.write_bytes(b"12345")
    entry = archive.Entry("files/f", "0644", 10, source=src)  # hashed when it was 10 bytes
    fd = os.open(tmp_path / "t.tar", os.O_RDWR | os.O_CREAT, 0o644)
    with pytest.raises(IntegrityError, match="changed size"):
        archive.write_tar(fd, [entry])
    os.close(fd)


@pytest.mark.parametrize("failing", ["sendfile", "both"])
def test_copy_falls_back_when_kernel_path_is_refused(
    built: Path,
    project: Project,
    keys: Keys,
    tmp_path: Path,
    cache_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    failing: str,
) -> None:
    """Some file pairs refuse sendfile (EINVAL) or copy_file_range (EXDEV): bytes stay identical."""

    def refuse(*_a: object) -> int:
        raise OSError(errno.EINVAL, "Invalid argument")

    monkeypatch.setattr(os, "sendfile", refuse)
    if failing == "both":
        monkeypatch.setattr(
            os, "copy_file_range", lambda *_a: (_ for _ in ()).throw(OSError(errno.EXDEV, "x"))
        )
    result = build.build_bundle(project.manifest, tmp_path / "fallback", keys.key, cache_dir)
    assert result.path.read_bytes() == built.read_bytes()


def test_corrupted_cache_entry_is_never_bundled(
    built: Path, project: Project, keys: Keys, tmp_path: Path, cache_dir: Path
) -> None:
    sha = hashlib.sha256(RKE_BYTES).hexdigest()
    entry = cache_dir / "sha256" / sha[:2] / sha
    entry.write_bytes(b"corrupted" + RKE_BYTES[9:])
    result = build.build_bundle(project.manifest, tmp_path / "again", keys.key, cache_dir)
    assert result.path.read_bytes() == built.read_bytes()
    assert project.origin.routes["/rke_linux-amd64"].hits == 2


def test_install_sh_needs_its_pubkey(built: Path, tmp_path: Path) -> None:
    subprocess.run(["tar", "-xf", built, "-C", tmp_path, "install.sh"], check=True)
    run = subprocess.run(["sh", tmp_path / "install.sh"], capture_output=True, text=True)
    assert run.returncode == 2
    assert "--pubkey PUB is required" in run.stderr


def test_two_build_processes_share_one_cache(
    project: Project, keys: Keys, tmp_path: Path, cache_dir: Path
) -> None:
    """Two real airbundle processes at once: one downloads, the other waits on the cache lock."""
    project.origin.routes["/rke_linux-amd64"].behaviour = "slow"
    procs = [
        subprocess.Popen(
            [
                AIRBUNDLE,
                "build",
                str(project.manifest),
                "-o",
                str(tmp_path / f"out{i}"),
                "--key",
                str(keys.key_path),
                "--cache",
                str(cache_dir),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    outputs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    a, b = (Path(out.strip()) for out, _ in outputs)
    assert a.read_bytes() == b.read_bytes()
    assert project.origin.routes["/rke_linux-amd64"].hits == 1


def test_ssh_keygen_verifies_the_bundles_lock(built: Path, keys: Keys, tmp_path: Path) -> None:
    """Real OpenSSH accepts lock.json.sig over lock.json as built, and refuses a changed byte."""
    subprocess.run(["tar", "-xf", built, "-C", tmp_path, "lock.json", "lock.json.sig"], check=True)
    signers = tmp_path / "allowed_signers"
    signers.write_text(f"airbundle {keys.pub_path.read_text()}")
    cmd = [
        "ssh-keygen",
        "-Y",
        "verify",
        "-f",
        signers,
        "-I",
        "airbundle",
        "-n",
        "airbundle",
        "-s",
        tmp_path / "lock.json.sig",
    ]
    lock = (tmp_path / "lock.json").read_bytes()
    assert subprocess.run(cmd, input=lock, capture_output=True).returncode == 0
    changed = lock.replace(b'"format": 1', b'"format": 2')
    assert subprocess.run(cmd, input=changed, capture_output=True).returncode != 0


def test_sbom_lists_binaries_and_files(built: Path) -> None:
    import json

    from .conftest import run_cli

    bom = json.loads(run_cli("inspect", built, "--sbom").stdout)
    lock = archive.read_lock(built)[0]
    binary = next(c for c in bom["components"] if c["name"] == "rke")
    assert binary["hashes"][0]["content"] == lock.binaries[0].sha256
    assert binary["externalReferences"][0]["url"].endswith("/rke_linux-amd64")
    files = {c["name"] for c in bom["components"] if c["type"] == "file"}
    assert {"files/notes.txt", "scripts/01-storage.sh"} <= files
    from cyclonedx.schema import SchemaVersion
    from cyclonedx.validation.json import JsonStrictValidator

    assert JsonStrictValidator(SchemaVersion.V1_5).validate_str(json.dumps(bom)) is None


def _rke_entry(cache_dir: Path) -> Path:
    sha = hashlib.sha256(RKE_BYTES).hexdigest()
    return cache_dir / "sha256" / sha[:2] / sha


def _restamp(entry: Path) -> None:
    """Rewrite the cache's stat record so it matches the entry again: its stat looks unchanged."""
    st = entry.stat()
    stamp = [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]
    entry.with_name(entry.name + ".stat").write_text(json.dumps(stamp))


def test_bit_flip_in_a_cache_entry_is_never_signed(
    built: Path, project: Project, keys: Keys, tmp_path: Path, cache_dir: Path
) -> None:
    """Attack: one bit flips inside a cache entry while its stat record still matches (bit rot,
    or a writer that restores the stamp), so the stat-cached digest is reused and the build
    would sign the pin's digest over other bytes. The written bytes are hashed on their way
    into the bundle: exit 5 naming the member and the entry, the entry evicted, nothing at
    the final path; the next build fetches it again and is the good bundle."""
    entry = _rke_entry(cache_dir)
    data = bytearray(entry.read_bytes())
    data[len(data) // 2] ^= 0x01
    with open(entry, "r+b") as f:  # in place: same inode, same size
        f.write(data)
    _restamp(entry)
    out = tmp_path / "flip"
    result = _build(project, keys, out, cache_dir)
    assert result.exit_code == 5, result.stderr
    assert "bin/rke" in result.stderr and str(entry) in result.stderr
    assert "Traceback" not in result.stderr
    assert not entry.exists()  # evicted
    assert list(out.iterdir()) == []
    again = _build(project, keys, out, cache_dir)
    assert again.exit_code == 0, again.stderr
    assert Path(again.stdout.strip()).read_bytes() == built.read_bytes()
    assert project.origin.routes["/rke_linux-amd64"].hits == 2


def test_payload_file_changed_behind_its_stat_is_never_signed(
    built: Path, project: Project, keys: Keys, tmp_path: Path, cache_dir: Path
) -> None:
    """Attack: a payload file is rewritten and its digest index record made to match again,
    so the build would reuse the old digest. Its written bytes do not match: exit 5, the
    record is dropped and the next build hashes it again and signs what is there."""
    notes = project.root / "payloads/notes.txt"
    real = notes.resolve()
    index = cache_dir / "index" / hashlib.sha256(os.fsencode(real)).hexdigest()
    notes.write_text("site notez\n")  # same size
    record = json.loads(index.read_text())
    st = real.stat()
    record["stamp"] = [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]
    index.write_text(json.dumps(record))
    out = tmp_path / "changed"
    result = _build(project, keys, out, cache_dir)
    assert result.exit_code == 5, result.stderr
    assert "files/notes.txt" in result.stderr and str(real) in result.stderr
    assert list(out.iterdir()) == []
    again = _build(project, keys, out, cache_dir)
    assert again.exit_code == 0, again.stderr
    assert run_cli("verify", again.stdout.strip(), "--pubkey", keys.pub_path).exit_code == 0


_KILL_AT = """
import os, signal, sys
from bundler import build, cache, archive
where = sys.argv.pop(1)
if where == "sha256":  # after the .tar is renamed in, before its .sha256 is written
    build.atomic_write = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)
else:  # while the .tar is being written
    real = archive._copy_file
    def dying(src, dst, size, path, progress):
        if "storage" in str(path):
            os.kill(os.getpid(), signal.SIGKILL)
        real(src, dst, size, path, progress)
    archive._copy_file = dying
from bundler.cli import main
main(sys.argv[1:])
"""


@pytest.mark.parametrize("where", ["sha256", "tar"])
def test_tar_and_sha256_appear_together_after_a_kill(
    built: Path, project: Project, keys: Keys, cache_dir: Path, where: str
) -> None:
    """Attack: a build killed between the rename of the .tar and the write of its .sha256 left
    an old .sha256 beside a new .tar, so `sha256sum -c` failed a good bundle (or passed a stale
    one). A real process is SIGKILLed there (and, second case, mid-write): no .sha256 may
    disagree with the .tar beside it, and the next build removes the leftovers."""
    out = built.parent
    sha_file = built.with_name(built.name + ".sha256")
    (project.root / "scripts/storage.sh").write_text("#!/bin/sh\necho storage, new\n")
    argv = [sys.executable, "-c", _KILL_AT, where, "build", str(project.manifest), "-o", str(out),
            "--key", str(keys.key_path), "--cache", str(cache_dir), "--force"]  # fmt: skip
    killed = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert killed.returncode == -9, killed.stderr
    if sha_file.exists():
        check = subprocess.run(["sha256sum", "-c", sha_file.name], cwd=out, capture_output=True)
        assert check.returncode == 0, "a .sha256 beside a .tar it does not describe"
    if where == "sha256":
        assert built.exists() and not sha_file.exists()  # the new .tar alone: the old .sha256 went first
    else:
        assert any(p.name.endswith(".partial") for p in out.iterdir())
    # The killed build's content differs from the bundle still there ("tar"): replacing it is asked for.
    again = _build(project, keys, out, cache_dir, *(["--force"] if where == "tar" else []))
    assert again.exit_code == 0, again.stderr
    assert sorted(p.name for p in out.iterdir()) == [built.name, sha_file.name]
    subprocess.run(["sha256sum", "-c", sha_file.name], cwd=out, check=True, capture_output=True)


def test_file_and_folder_at_one_bundle_path_are_refused(
    project: Project, keys: Keys, tmp_path: Path, cache_dir: Path
) -> None:
    """Attack: one files: entry ships `x` as a file, another ships `x/y`; the tar holds both,
    builds and verifies, then the install crashes unpacking it. Refused at build time (exit 2),
    naming both manifest entries with their lines."""
    (project.root / "payloads/tree/y").mkdir(parents=True)
    (project.root / "payloads/tree/y/z.txt").write_text("z\n")
    text = project.manifest.read_text().replace(
        "  - src: payloads/notes.txt\n    dest: notes.txt\n",
        "  - src: payloads/notes.txt\n    dest: x\n  - src: payloads/tree/\n    dest: X\n",
    )
    manifest = project.write_manifest(text, "clash.yaml")
    out = tmp_path / "clash"
    result = _build(project, keys, out, cache_dir, manifest=manifest)
    assert result.exit_code == 2, result.stderr
    lines = text.splitlines()
    file_line = lines.index("  - src: payloads/notes.txt") + 1
    dir_line = lines.index("  - src: payloads/tree/") + 1
    assert f"clash.yaml:{file_line}" in result.stderr and f"clash.yaml:{dir_line}" in result.stderr
    assert "'files/x'" in result.stderr and "'files/X/y/z.txt'" in result.stderr
    assert not out.exists() or list(out.iterdir()) == []


def _unshared_build(
    project: Project, keys: Keys, mount: Path, cache: Path, out: Path
) -> subprocess.CompletedProcess:
    """`airbundle build` in a private mount namespace with a 1 MiB tmpfs at ``mount``."""
    mount.mkdir(parents=True, exist_ok=True)
    cmd = (
        f'mount -t tmpfs -o size=1m tmpfs "{mount}" && "{AIRBUNDLE}" build "{project.manifest}" '
        f'-o "{out}" --key "{keys.key_path}" --cache "{cache}"'
    )
    return subprocess.run(["unshare", "-m", "sh", "-c", cmd], capture_output=True, text=True, timeout=120)


def test_disk_full_while_writing_the_bundle(
    project: Project, keys: Keys, tmp_path: Path, cache_dir: Path
) -> None:
    """Attack/fault: the output disk fills up mid-bundle (a real 1 MiB tmpfs, the bundle is
    larger). A clear message naming the path and what to do, exit 5, no traceback, nothing
    at the final path or beside it."""
    (project.root / "payloads/app/big.bin").write_bytes(os.urandom(2 << 20))
    mount = tmp_path / "small"
    result = _unshared_build(project, keys, mount, cache_dir, mount / "out")
    assert result.returncode == 5, result.stderr
    assert "Traceback" not in result.stderr
    assert "no space left" in result.stderr and "demo-1.0.0.tar" in result.stderr
    assert "writing the bundle" in result.stderr


def test_disk_full_while_writing_the_cache(project: Project, keys: Keys, tmp_path: Path) -> None:
    """Fault: the cache's disk fills up during a download (the binary is larger than the tmpfs
    holding the cache): exit 5 naming the cache, no traceback."""
    big = os.urandom(2 << 20)
    url = project.origin.add("/big-tool", big)
    text = project.manifest.read_text().replace(
        "files:",
        f"  - name: big\n    url: {url}\n    sha256: {hashlib.sha256(big).hexdigest()}\n"
        "    dest: /usr/local/bin/big\nfiles:",
    )
    project.write_manifest(text)
    mount = tmp_path / "small"
    result = _unshared_build(project, keys, mount, mount / "cache", tmp_path / "out")
    assert result.returncode == 5, result.stderr
    assert "Traceback" not in result.stderr
    assert "no space left" in result.stderr and str(mount / "cache") in result.stderr
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []


def test_folder_at_a_cache_entry_path(
    built: Path, project: Project, keys: Keys, tmp_path: Path, cache_dir: Path
) -> None:
    """Fault: a folder sits where a cache entry's file belongs. An empty one is treated as an
    absent entry (fetched again); one holding files is named with what to do, exit 5, no
    traceback."""
    entry = _rke_entry(cache_dir)
    entry.unlink()
    entry.mkdir()
    again = _build(project, keys, tmp_path / "a", cache_dir)
    assert again.exit_code == 0, again.stderr
    assert Path(again.stdout.strip()).read_bytes() == built.read_bytes()
    entry.unlink()
    entry.mkdir()
    (entry / "something").write_text("x")
    result = _build(project, keys, tmp_path / "b", cache_dir)
    assert result.exit_code == 5, result.stderr
    assert str(entry) in result.stderr and "a folder is where a file is expected" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "b").exists() or list((tmp_path / "b").iterdir()) == []


def test_output_folder_that_is_a_file(project: Project, keys: Keys, tmp_path: Path, cache_dir: Path) -> None:
    """Fault: -o names a file. Exit 2 (bad usage) naming it and what to do, before anything is fetched."""
    out = tmp_path / "out"
    out.write_text("not a folder\n")
    result = _build(project, keys, out, cache_dir)
    assert result.exit_code == 2, result.stderr
    assert f"-o {out}: is a file, not a folder" in result.stderr and "give a folder" in result.stderr
    assert project.origin.routes["/rke_linux-amd64"].hits == 0 and "Traceback" not in result.stderr


def test_lock_never_records_a_url_that_did_not_serve_the_binary(
    project: Project, keys: Keys, tmp_path: Path, cache_dir: Path
) -> None:
    """Fault: the binary's URL changes (same sha256) and the new one answers 404. The cache holds
    the bytes, but the lock would name a URL that never served them: the build fetches the new URL,
    fails with exit 5 naming it, and writes nothing; once that URL serves the bytes, it builds."""
    assert _build(project, keys, tmp_path / "a", cache_dir).exit_code == 0
    moved = project.origin.base + "/moved/rke_linux-amd64"
    project.manifest.write_text(
        project.manifest.read_text().replace(project.origin.base + "/rke_linux-amd64", moved)
    )
    failed = _build(project, keys, tmp_path / "b", cache_dir)
    assert failed.exit_code == 5, failed.stderr
    assert moved in failed.stderr and "404" in failed.stderr
    assert not (tmp_path / "b").exists() or not list((tmp_path / "b").glob("*.tar"))
    project.origin.add("/moved/rke_linux-amd64", RKE_BYTES)
    ok = _build(project, keys, tmp_path / "b", cache_dir)
    assert ok.exit_code == 0, ok.stderr
    lock = json.loads(run_cli("inspect", Path(ok.stdout.strip()), "--json").stdout)
    assert [b["url"] for b in lock["binaries"]] == [moved]
    assert project.origin.routes["/moved/rke_linux-amd64"].hits == 1
    again = _build(project, keys, tmp_path / "c", cache_dir)  # known now: from the cache
    assert again.exit_code == 0 and project.origin.routes["/moved/rke_linux-amd64"].hits == 1


def test_delta_leaves_out_unchanged_payload_files(
    project: Project, keys: Keys, tmp_path: Path, cache_dir: Path
) -> None:
    """A delta carries only the files: members that changed; unpacking it on top of its base gives
    every file, the inherited ones copied from the base's unpacked folder and checked."""
    big = project.root / "payloads" / "app" / "big.bin"
    big.write_bytes(os.urandom(300_000))
    base = _build(project, keys, tmp_path / "base", cache_dir)
    assert base.exit_code == 0, base.stderr
    (project.root / "payloads" / "notes.txt").write_text("site notes, changed\n")
    project.manifest.write_text(project.manifest.read_text().replace('"1.0.0"', '"1.0.1"'))
    delta = _build(project, keys, tmp_path / "delta", cache_dir, "--base", base.stdout.strip())
    assert delta.exit_code == 0, delta.stderr
    bundle = Path(delta.stdout.strip())
    lock = archive.read_lock(bundle)[0]
    inherited = {m.path for m in lock.inherited}
    assert "files/app/big.bin" in inherited and "files/app/deploy.yaml" in inherited
    assert "files/notes.txt" in {m.path for m in lock.members}  # changed: it travels
    with tarfile.open(bundle) as tar:
        names = tar.getnames()
    assert "files/app/big.bin" not in names and "files/notes.txt" in names
    assert bundle.stat().st_size < Path(base.stdout.strip()).stat().st_size - 290_000
    work = tmp_path / "site"
    work.mkdir(mode=0o700)
    old, _ = archive.extract_bundle(Path(base.stdout.strip()), [keys.pub], work)
    new, _ = archive.extract_bundle(bundle, [keys.pub], work, inherit_from=old)
    assert (new / "files/app/big.bin").read_bytes() == big.read_bytes()
    assert (new / "files/notes.txt").read_text() == "site notes, changed\n"
