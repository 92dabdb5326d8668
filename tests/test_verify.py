"""The tamper matrix for ``airbundle verify`` (security-matrix.md T, P, M and A rows).

Each case damages a real bundle in one way and checks the exit code and that
the message names the culprit. Hostile tars are written with ``tarfile``
directly, since our writer cannot produce them.
"""

from __future__ import annotations

import base64
import gzip
import io
import json
import os
import struct
import subprocess
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

from bundler import signing
from bundler.build import INSTALLER_FILES
from bundler.lock import Lock

from .conftest import Keys, Project, run_cli

Item = tuple[tarfile.TarInfo, bytes]


def read_items(bundle: Path) -> list[Item]:
    with tarfile.open(bundle) as tar:
        return [(m, tar.extractfile(m).read()) for m in tar.getmembers()]  # type: ignore[union-attr]


def info(name: str, data: bytes = b"", type_: bytes = tarfile.REGTYPE, mode: int = 0o644, **kw) -> Item:
    ti = tarfile.TarInfo(name)
    ti.size = len(data) if type_ in (tarfile.REGTYPE, tarfile.AREGTYPE) else 0
    ti.type, ti.mode = type_, mode
    for key, value in kw.items():
        setattr(ti, key, value)
    return ti, data


def write_items(path: Path, items: list[Item]) -> Path:
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for ti, data in items:
            ti.size = len(data) if ti.isreg() else 0
            tar.addfile(ti, io.BytesIO(data) if ti.isreg() else None)
    return path


def replace(items: list[Item], name: str, data: bytes) -> list[Item]:
    return [(ti, data if ti.name == name else d) for ti, d in items]


def resign(
    items: list[Item], key: signing.PrivateKey, lock: bytes, namespace: str = "airbundle"
) -> list[Item]:
    items = replace(items, "lock.json", lock)
    return replace(items, "lock.json.sig", signing.sign(key, lock, namespace))


def verify(bundle: Path, keys: Keys, *extra: str):
    return run_cli("verify", bundle, "--pubkey", keys.pub_path, *extra)


def test_good_bundle_verifies_and_writes_nothing(built: Path, keys: Keys, tmp_path: Path) -> None:  # R14
    before = sorted((p, p.stat().st_mtime_ns) for p in built.parent.iterdir())
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        listing = sorted(tmp_path.rglob("*"))
        result = verify(built, keys)
        assert sorted(tmp_path.rglob("*")) == listing
    finally:
        os.chdir(cwd)
    assert result.exit_code == 0, result.stderr
    assert result.stdout.startswith("OK demo 1.0.0: signed by " + keys.pub.fingerprint)
    assert sorted((p, p.stat().st_mtime_ns) for p in built.parent.iterdir()) == before


def test_json_report(built: Path, keys: Keys) -> None:
    report = json.loads(verify(built, keys, "--json").stdout)
    assert report["ok"] is True and report["problems"] == []
    assert report["signer"] == keys.pub.fingerprint and report["members"] == 9 + len(INSTALLER_FILES)


# ---------------------------------------------------------------- trust (exit 3)


def test_t01_flipped_payload_byte(built: Path, keys: Keys, tmp_path: Path) -> None:
    items = read_items(built)
    data = dict((ti.name, d) for ti, d in items)["bin/rke"]
    bad = write_items(
        tmp_path / "t01.tar", replace(items, "bin/rke", data[:500] + bytes([data[500] ^ 1]) + data[501:])
    )
    result = verify(bad, keys)
    assert result.exit_code == 4
    assert "bin/rke: sha256" in result.stderr and "Do not install" in result.stderr
    report = json.loads(verify(bad, keys, "--json").stdout)
    assert report["ok"] is False and report["problems"][0]["member"] == "bin/rke"


def test_t02_lock_edited_without_resigning(built: Path, keys: Keys, tmp_path: Path) -> None:
    items = read_items(built)
    lock = dict((ti.name, d) for ti, d in items)["lock.json"]
    edited = lock.replace(b'"version": "1.0.0"', b'"version": "9.0.0"')
    assert edited != lock
    result = verify(write_items(tmp_path / "t02.tar", replace(items, "lock.json", edited)), keys)
    assert result.exit_code == 3
    assert "does not match the signed bytes" in result.stderr


def test_t03_signed_by_another_key(built: Path, keys: Keys, other_keys: Keys, tmp_path: Path) -> None:
    result = run_cli("verify", built, "--pubkey", other_keys.pub_path)
    assert result.exit_code == 3
    assert keys.pub.fingerprint in result.stderr  # the actual signer is named
    assert "not a trusted key" in result.stderr
    report = json.loads(run_cli("verify", built, "--pubkey", other_keys.pub_path, "--json").stdout)
    assert report == {**report, "ok": False, "exit_code": 3, "signer": keys.pub.fingerprint}


def test_t04_wrong_namespace(built: Path, keys: Keys, tmp_path: Path) -> None:
    items = read_items(built)
    lock = dict((ti.name, d) for ti, d in items)["lock.json"]
    result = verify(write_items(tmp_path / "t04.tar", resign(items, keys.key, lock, "file")), keys)
    assert result.exit_code == 3 and "namespace" in result.stderr


def test_t05_signature_missing(built: Path, keys: Keys, tmp_path: Path) -> None:
    items = [(ti, d) for ti, d in read_items(built) if ti.name != "lock.json.sig"]
    result = verify(write_items(tmp_path / "t05.tar", items), keys)
    assert result.exit_code == 3 and "lock.json.sig is missing" in result.stderr


@pytest.mark.parametrize(
    "damage",
    [
        lambda s: s[:40],
        lambda s: s.replace(b"-----\n", b"-----\n%%%", 1),
        lambda s: (
            b"-----BEGIN SSH SIGNATURE-----\n"
            + base64.b64encode(b"SSHSIG" + struct.pack(">I", 2))
            + b"\n-----END SSH SIGNATURE-----\n"
        ),
    ],
    ids=["t12-truncated", "t12-not-base64", "t13-version-2"],
)
def test_t12_t13_malformed_signature(built: Path, keys: Keys, tmp_path: Path, damage: Callable) -> None:
    items = read_items(built)
    sig = dict((ti.name, d) for ti, d in items)["lock.json.sig"]
    result = verify(write_items(tmp_path / "t12.tar", replace(items, "lock.json.sig", damage(sig))), keys)
    assert result.exit_code == 3, result.stderr
    assert "signature" in result.stderr


# ---------------------------------------------------------------- contents (exit 4)


def test_p07_lock_of_one_bundle_payload_of_another(
    built: Path, project: Project, keys: Keys, tmp_path: Path, cache_dir: Path
) -> None:
    (project.root / "scripts/storage.sh").write_text("#!/bin/sh\necho STORAGE\n")  # same length
    other = run_cli(
        "build", project.manifest, "-o", tmp_path / "b", "--key", keys.key_path, "--cache", cache_dir
    )
    a, b = read_items(built), read_items(Path(other.stdout.strip()))
    mixed = a[:2] + b[2:]
    result = verify(write_items(tmp_path / "p07.tar", mixed), keys)
    assert result.exit_code == 4
    assert "scripts/01-storage.sh: sha256" in result.stderr  # M09: a changed script is caught


def test_p08_extra_member(built: Path, keys: Keys, tmp_path: Path) -> None:
    items = [*read_items(built), info("scripts/99-backdoor.sh", b"#!/bin/sh\nid\n", mode=0o755)]
    result = verify(write_items(tmp_path / "p08.tar", items), keys)
    assert result.exit_code == 4 and "scripts/99-backdoor.sh: extra member" in result.stderr


def test_p09_missing_member(built: Path, keys: Keys, tmp_path: Path) -> None:
    items = [(ti, d) for ti, d in read_items(built) if ti.name != "files/notes.txt"]
    result = verify(write_items(tmp_path / "p09.tar", items), keys)
    assert result.exit_code == 4 and "files/notes.txt: missing" in result.stderr


def _signed_lock_case(built: Path, keys: Keys, tmp_path: Path, mutate: Callable[[dict], None] | bytes):
    items = read_items(built)
    lock = dict((ti.name, d) for ti, d in items)["lock.json"]
    if isinstance(mutate, bytes):
        new = mutate
    else:
        doc = json.loads(lock)
        mutate(doc)
        new = json.dumps(doc).encode()
    return verify(write_items(tmp_path / "m.tar", resign(items, keys.key, new)), keys)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (b"{this is not json", "not valid JSON"),  # M01
        (lambda d: d.update(format=7), "format 7"),  # M02
        (lambda d: d["members"].append(dict(d["members"][1])), "listed twice"),  # M03
        (lambda d: d["members"][1].update(path="../../etc/cron.d/x"), "'..' segment"),  # M06
        (lambda d: d["members"][1].update(sha256="ZZ"), "64 lowercase hex"),  # M07
        (lambda d: d["members"][1].update(size=-5), "negative"),  # M08
    ],
    ids=["m01", "m02", "m03", "m06", "m07", "m08"],
)
def test_m_signed_but_malformed_lock(built: Path, keys: Keys, tmp_path: Path, mutate, message: str) -> None:
    result = _signed_lock_case(built, keys, tmp_path, mutate)
    assert result.exit_code == 4, result.stderr
    assert message in result.stderr and "lock.json" in result.stderr


def test_m05_oversized_lock_refused_before_parsing(built: Path, keys: Keys, tmp_path: Path) -> None:
    result = _signed_lock_case(built, keys, tmp_path, b" " * (17 * 1024 * 1024))
    assert result.exit_code == 4 and "over the" in result.stderr


@pytest.mark.parametrize(
    "hostile, message",
    [
        (info("../../etc/cron.d/x", b"* * * * * root id\n"), "'..' segment"),  # A01
        (info("/etc/passwd", b"root::0:0::/:/bin/sh\n"), "absolute"),  # A02
        (info("files/d", type_=tarfile.SYMTYPE, linkname="/etc"), "symbolic link"),  # A03
        (info("files/h", type_=tarfile.LNKTYPE, linkname="/etc/shadow"), "hard link"),  # A04
        (
            info("files/" + "d/" * 60 + "l", type_=tarfile.SYMTYPE, linkname="../" * 70),
            "symbolic link",
        ),  # A05
        (info("files/tty", type_=tarfile.CHRTYPE, devmajor=4, devminor=1), "character device"),  # A06
        (info("files/blk", type_=tarfile.BLKTYPE), "block device"),
        (info("files/fifo", type_=tarfile.FIFOTYPE), "FIFO"),
        (info("files/suid", b"x", mode=0o4755), "setuid"),  # A07
        (info("files/ww", b"x", mode=0o666), "world-writable"),
        (info("files/dir/", type_=tarfile.DIRTYPE, mode=0o755), "directory"),
        (info("files/a\\b", b"x"), "backslash"),
    ],
    ids=[
        "a01",
        "a02",
        "a03",
        "a04",
        "a05",
        "a06-chr",
        "a06-blk",
        "a06-fifo",
        "a07-suid",
        "a07-ww",
        "dir",
        "backslash",
    ],
)
def test_a_unsafe_members(built: Path, keys: Keys, tmp_path: Path, hostile: Item, message: str) -> None:
    items = read_items(built)
    items.insert(3, hostile)
    result = verify(write_items(tmp_path / "a.tar", items), keys)
    assert result.exit_code == 4, result.stderr
    assert "unsafe member" in result.stderr and message in result.stderr
    assert repr(hostile[0].name.rstrip("/")) in result.stderr or hostile[0].name in result.stderr


def test_a08_duplicate_member(built: Path, keys: Keys, tmp_path: Path) -> None:
    items = read_items(built)
    twin = next((ti, d) for ti, d in items if ti.name == "files/notes.txt")
    items.append((tarfile.TarInfo(twin[0].name), b"evil\n"))
    result = verify(write_items(tmp_path / "a08.tar", items), keys)
    assert result.exit_code == 4 and "'files/notes.txt' appears twice" in result.stderr


def test_a09_case_fold_collision(built: Path, keys: Keys, tmp_path: Path) -> None:
    items = [*read_items(built), info("files/NOTES.txt", b"x")]
    result = verify(write_items(tmp_path / "a09.tar", items), keys)
    assert result.exit_code == 4 and "collides with 'files/notes.txt'" in result.stderr


def test_a10_member_larger_than_lock(built: Path, keys: Keys, tmp_path: Path) -> None:
    items = read_items(built)
    data = dict((ti.name, d) for ti, d in items)["files/notes.txt"]
    result = verify(
        write_items(tmp_path / "a10.tar", replace(items, "files/notes.txt", data + b"0" * 10**6)), keys
    )
    assert result.exit_code == 4 and "files/notes.txt: size 1000011, lock.json says 11" in result.stderr


def _header_offset(bundle: Path, name: str) -> int:
    with tarfile.open(bundle) as tar:
        return next(m.offset for m in tar.getmembers() if m.name == name)


def test_a11_corrupt_header_checksum(built: Path, keys: Keys, tmp_path: Path) -> None:
    data = bytearray(built.read_bytes())
    data[_header_offset(built, "bin/rke") + 10] ^= 0xFF  # inside the name: checksum now wrong
    bad = tmp_path / "a11.tar"
    bad.write_bytes(bytes(data))
    result = verify(bad, keys)
    assert result.exit_code == 4 and "corrupt tar header" in result.stderr


def test_a11_negative_size_header(built: Path, keys: Keys, tmp_path: Path) -> None:
    """A base-256 negative size field (CVE-2025-8194's trigger) is refused, not looped on."""
    data = bytearray(built.read_bytes())
    off = _header_offset(built, "bin/rke")
    data[off + 124 : off + 136] = b"\xff" * 12  # size field: -1 in base-256
    chk = sum(data[off : off + 148]) + 8 * 32 + sum(data[off + 156 : off + 512])
    data[off + 148 : off + 156] = b"%06o\0 " % chk
    bad = tmp_path / "a11n.tar"
    bad.write_bytes(bytes(data))
    result = verify(bad, keys)
    assert result.exit_code == 4 and "impossible size -1" in result.stderr


@pytest.mark.parametrize("where", ["mid-member", "in-end-marker"])
def test_a12_truncated_bundle(built: Path, keys: Keys, tmp_path: Path, where: str) -> None:
    data = built.read_bytes()
    with tarfile.open(built) as tar:
        last = tar.getmembers()[-1]
    end_of_members = last.offset_data + last.size + (-last.size % 512)
    cut = len(data) // 2 if where == "mid-member" else end_of_members + 512 + 100
    bad = tmp_path / "a12.tar"
    bad.write_bytes(data[:cut])
    result = verify(bad, keys)
    assert result.exit_code == 4 and "truncated" in result.stderr


@pytest.mark.parametrize(
    "content, code, message",
    [
        (b"", 4, "empty"),
        (os.urandom(4096), 2, "a13.tar is not a tar archive, so not an airbundle bundle: give the .tar"),
        (b"hello\n" * 100, 2, "is not a tar archive, so not an airbundle bundle"),
        (b"hello\n", 4, "truncated"),
    ],
    ids=["empty", "random", "text", "short"],
)
def test_a13_not_a_bundle(keys: Keys, tmp_path: Path, content: bytes, code: int, message: str) -> None:
    bad = tmp_path / "a13.tar"
    bad.write_bytes(content)
    result = verify(bad, keys)
    assert result.exit_code == code and message in result.stderr


def test_a13_a_gnu_tar_is_named(keys: Keys, tmp_path: Path) -> None:
    bad = tmp_path / "gnu.tar"
    (tmp_path / "hostname").write_text("vm\n")
    subprocess.run(["tar", "--format=gnu", "-cf", bad, "-C", tmp_path, "hostname"], check=True)
    result = verify(bad, keys)
    assert result.exit_code == 2 and "gnu.tar is a GNU-format tar, not an airbundle bundle" in result.stderr


def test_a13_tar_that_is_not_a_bundle(keys: Keys, tmp_path: Path) -> None:
    bad = write_items(tmp_path / "plain.tar", [info("README", b"hi\n")])
    result = verify(bad, keys)
    assert result.exit_code == 4 and "first member must be lock.json" in result.stderr


def test_data_after_end_of_archive(built: Path, keys: Keys, tmp_path: Path) -> None:
    bad = tmp_path / "trail.tar"
    bad.write_bytes(built.read_bytes() + b"\0" * 512 + b"hidden" + b"\0" * 506)
    result = verify(bad, keys)
    assert result.exit_code == 4 and "follows the end-of-archive marker" in result.stderr


def test_lock_parses_identically_everywhere(built: Path) -> None:
    lock = dict((ti.name, d) for ti, d in read_items(built))["lock.json"]
    assert Lock.from_bytes(lock).to_bytes() == lock


def test_oversized_pax_header_refused(built: Path, keys: Keys, tmp_path: Path) -> None:
    items = read_items(built)
    ti, data = info("files/big-pax", b"x")
    ti.pax_headers = {"comment": "x" * 100_000}
    items.insert(3, (ti, data))
    result = verify(write_items(tmp_path / "pax.tar", items), keys)
    assert result.exit_code == 4 and "PAX header" in result.stderr


def test_long_member_names_round_trip(project: Project, keys: Keys, tmp_path: Path, cache_dir: Path) -> None:
    """Names over ustar's 100 bytes travel in PAX records that the reader accepts."""
    deep = project.root / "payloads" / "app" / ("long-folder-name-" * 5) / ("file-name-" * 8)
    deep.parent.mkdir(parents=True)
    deep.write_text("deep\n")
    result = run_cli(
        "build", project.manifest, "-o", tmp_path / "o", "--key", keys.key_path, "--cache", cache_dir
    )
    assert result.exit_code == 0, result.stderr
    bundle = Path(result.stdout.strip())
    assert any(len(ti.name) > 100 for ti, _ in read_items(bundle))
    assert verify(bundle, keys).exit_code == 0


def test_ssh_keygen_checks_signatures_where_cryptography_is_missing(
    built: Path, keys: Keys, other_keys: Keys, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a site without cryptography, stock ssh-keygen does the Ed25519 check; trust rules are the same."""
    from bundler import archive as archive_mod

    monkeypatch.setattr(signing, "HAVE_CRYPTOGRAPHY", False)
    monkeypatch.setattr(signing, "_cryptography_check", None)  # any use of it would now fail loudly
    assert archive_mod.verify_bundle(built, [keys.pub]).problems == []
    items = read_items(built)
    lock = dict((ti.name, d) for ti, d in items)["lock.json"]
    edited = write_items(
        tmp_path / "e.tar", replace(items, "lock.json", lock.replace(b'"1.0.0"', b'"9.0.0"'))
    )
    with pytest.raises(signing.SignatureError, match="does not match"):
        archive_mod.verify_bundle(edited, [keys.pub])
    with pytest.raises(signing.UntrustedKeyError):
        archive_mod.verify_bundle(built, [other_keys.pub])


def test_not_a_bundle_says_what_it_is(built: Path, keys: Keys, tmp_path: Path) -> None:
    """The .sha256 beside a bundle, a gzipped bundle and a cut copy: each message says what the
    file is and what to do, naming the path."""
    checksum = built.with_name(built.name + ".sha256")
    result = verify(checksum, keys)
    assert result.exit_code == 2, result.stderr
    assert f"{checksum} is a checksum file" in result.stderr and "not a bundle" in result.stderr
    assert f"sha256sum -c {checksum.name}" in result.stderr and "truncated" not in result.stderr
    gz = tmp_path / "demo.tar.gz"
    gz.write_bytes(gzip.compress(built.read_bytes()))
    for command in ("verify", "inspect"):
        args = ["--pubkey", keys.pub_path] if command == "verify" else []
        zipped = run_cli(command, gz, *args)
        assert (
            zipped.exit_code == 4 and "is gzip-compressed" in zipped.stderr and "gunzip -k" in zipped.stderr
        )
    cut = tmp_path / "cut.tar"
    cut.write_bytes(built.read_bytes()[: built.stat().st_size // 2])
    truncated = verify(cut, keys)
    assert truncated.exit_code == 4 and f"bundle {cut} is truncated" in truncated.stderr
    assert "copy it again" in truncated.stderr
