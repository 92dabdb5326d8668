"""Building bundles: round trip, determinism, atomicity, stock tar compatibility."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from bundler import archive, build
from bundler.errors import IntegrityError

from .conftest import AIRBUNDLE, RKE_BYTES, Keys, Project, run_cli


def _build(
    project: Project,
    keys: Keys,
    out: Path,
    cache: Path,
    manifest: Path | None = None,
    env: dict[str, str] | None = None,
):
    return run_cli(
        "build", manifest or project.manifest, "-o", out, "--key", keys.key_path, "--cache", cache, env=env
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
    with pytest.raises(OSError, match="No space"):
        build.build_bundle(project.manifest, out, keys.key, cache_dir)
    # The previous bundle is untouched and no temp file is left behind.
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_source_changing_during_build_is_caught(tmp_path: Path) -> None:
    src = tmp_path / "f"
    src.write_bytes(b"12345")
    entry = archive.Entry("files/f", "0644", 10, source=src)  # hashed when it was 10 bytes
    fd = os.open(tmp_path / "t.tar", os.O_WRONLY | os.O_CREAT, 0o644)
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
