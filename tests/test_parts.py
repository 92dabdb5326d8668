"""Media-sized parts: --split, verify naming the bad or missing part, join, sha256sum -c."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from .conftest import Keys, Project, run_cli


@pytest.fixture
def split(project: Project, keys: Keys, tmp_path: Path, cache_dir: Path, built: Path) -> tuple[Path, Path]:
    """The demo bundle cut into 64 KiB parts, and the same bundle built whole for comparison."""
    result = run_cli(
        "build",
        project.manifest,
        "-o",
        tmp_path / "parts",
        "--key",
        keys.key_path,
        "--cache",
        cache_dir,
        "--split",
        "64K",
    )
    assert result.exit_code == 0, result.stderr
    return Path(result.stdout.strip()), built


def test_split_verify_inspect_join(split: tuple[Path, Path], keys: Keys, tmp_path: Path) -> None:
    index, whole = split
    folder = index.parent
    parts = sorted(p.name for p in folder.glob("demo-1.0.0.tar.[0-9]*"))
    assert len(parts) >= 3 and not (folder / "demo-1.0.0.tar").exists()
    doc = json.loads(index.read_text())
    assert [p["name"] for p in doc["parts"]] == parts
    assert (
        doc["sha256"]
        == subprocess.run(["sha256sum", whole], capture_output=True, text=True).stdout.split()[0]
    )
    subprocess.run(
        ["sha256sum", "-c", "demo-1.0.0.parts.sha256"], cwd=folder, check=True, capture_output=True
    )
    for target in (index, folder / parts[1]):  # the parts file, or any part, names the set
        result = run_cli("verify", target, "--pubkey", keys.pub_path)
        assert result.exit_code == 0, result.stderr
    assert "demo 1.0.0" in run_cli("inspect", index).stdout
    joined = tmp_path / "joined.tar"
    result = run_cli("join", index, "--pubkey", keys.pub_path, "-o", joined)
    assert result.exit_code == 0, result.stderr
    assert joined.read_bytes() == whole.read_bytes()
    assert sorted(p.name for p in folder.glob("demo-1.0.0.tar.[0-9]*")) == parts  # parts kept


def test_damaged_or_missing_part_is_named(split: tuple[Path, Path], keys: Keys, other_keys: Keys) -> None:
    index, _ = split
    middle = sorted(index.parent.glob("demo-1.0.0.tar.[0-9]*"))[1]
    data = bytearray(middle.read_bytes())
    data[len(data) // 2] ^= 1
    middle.write_bytes(bytes(data))
    damaged = run_cli("verify", index, "--pubkey", keys.pub_path)
    assert damaged.exit_code == 4 and f"(in part {middle.name})" in damaged.stderr
    joined = run_cli("join", index, "--pubkey", keys.pub_path, "-o", index.parent / "j.tar")
    assert joined.exit_code == 4 and f"part {middle.name} is damaged" in joined.stderr
    middle.unlink()
    missing = run_cli("verify", index, "--pubkey", keys.pub_path)
    assert missing.exit_code == 4 and f"part {middle.name} is missing" in missing.stderr
    untrusted = run_cli("verify", index, "--pubkey", other_keys.pub_path)
    assert untrusted.exit_code == 3


def test_split_size_is_checked(project: Project, keys: Keys, tmp_path: Path) -> None:
    for bad in ("lots", "1K"):
        result = run_cli(
            "build", project.manifest, "-o", tmp_path / "x", "--key", keys.key_path, "--split", bad
        )
        assert result.exit_code == 2 and "--split" in result.stderr


def test_install_sh_reads_the_parts(split: tuple[Path, Path], keys: Keys, tmp_path: Path) -> None:
    """install.sh taken from the first part runs on the parts as one stream (Debian python3, -I -S)."""

    from .conftest import CLUSTER_YML
    from .test_installer import _install

    index, _ = split
    site = index.parent
    first = sorted(site.glob("demo-1.0.0.tar.[0-9]*"))[0]
    # lock.json, its signature and install.sh lead the first part; --occurrence stops tar there.
    subprocess.run(["tar", "--occurrence", "-xf", str(first), "install.sh"], cwd=site, check=True)
    (site / "cluster.yml").write_text(CLUSTER_YML)
    run = _install(site, keys)
    assert "verified (signed by" in run.stdout, run.stderr
    assert (site / "work" / "demo-1.0.0" / "bin" / "rke").is_file()
    assert (
        run.returncode == 6 and "preflight: failed" in run.stderr
    )  # the inventory's nodes do not exist here


def test_a_build_replaces_every_output_of_an_earlier_build(
    project: Project, keys: Keys, tmp_path: Path, cache_dir: Path
) -> None:
    """Builds of one NAME-VERSION in 64K parts, then 128K parts, then whole left old parts beside
    the new bundle: an orphan part still verified "OK", and install.sh could take the stale set.
    Each build now replaces all that an earlier one left, and an orphan part is refused."""
    out = tmp_path / "dist"

    def build(*extra: str) -> Path:
        made = run_cli(
            "build", project.manifest, "-o", out, "--key", keys.key_path, "--cache", cache_dir, *extra
        )
        assert made.exit_code == 0, made.stderr
        return Path(made.stdout.strip())

    build("--split", "64K")
    first_parts = sorted(out.glob("demo-1.0.0.tar.[0-9]*"))
    (project.root / "payloads" / "notes.txt").write_text("changed\n")
    # Other content under the same NAME-VERSION: refused (naming the parts file), the old parts kept.
    refused = run_cli("build", project.manifest, "-o", out, "--key", keys.key_path, "--cache", cache_dir)
    assert refused.exit_code == 2 and "demo-1.0.0.parts.json: holds another bundle" in refused.stderr
    assert "--force" in refused.stderr and sorted(out.glob("demo-1.0.0.tar.[0-9]*")) == first_parts
    build("--split", "128K", "--force")
    second_parts = sorted(out.glob("demo-1.0.0.tar.[0-9]*"))
    assert len(second_parts) < len(first_parts)  # the earlier build's last parts are gone
    orphan = first_parts[-1]
    assert not orphan.exists()
    orphan.write_bytes(b"a part of another build")
    refused = run_cli("verify", orphan, "--pubkey", keys.pub_path)
    assert refused.exit_code == 4 and "not one of the parts demo-1.0.0.parts.json lists" in refused.stderr
    whole = build()
    assert sorted(p.name for p in out.iterdir()) == [whole.name, whole.name + ".sha256"]


def test_a_part_name_with_more_after_its_number_is_a_whole_bundle(
    split: tuple[Path, Path], keys: Keys, tmp_path: Path
) -> None:
    """``--bundle NAME.tar.000.tar``: install.sh checked the parts set its name suggested, and the
    installer then read the named file as a whole bundle. Both now read it as a whole bundle."""
    from .test_sitecheck import INSTALL_SH, SITE_PATH

    index, _ = split
    (index.parent / "demo-1.0.0.tar.000.tar").write_bytes(b"junk" * 300)
    run = subprocess.run(
        ["sh", str(INSTALL_SH), "--bundle", "demo-1.0.0.tar.000.tar", "--pubkey", str(keys.pub_path),
         "--inventory", "cluster.yml", "--dry-run"],
        cwd=index.parent, capture_output=True, text=True, env={"PATH": SITE_PATH},
    )  # fmt: skip
    assert run.returncode == 4 and "demo-1.0.0.tar.000.tar: not an uncompressed POSIX tar" in run.stderr, (
        run.stderr
    )


def test_join_never_writes_over_its_parts(split: tuple[Path, Path], keys: Keys) -> None:
    """``join -o NAME.tar.000`` (or the parts file) replaced a part with the whole bundle."""
    index, _ = split
    first = sorted(index.parent.glob("demo-1.0.0.tar.[0-9]*"))[0]
    before = first.read_bytes()
    for target in (first, index):
        result = run_cli("join", index, "--pubkey", keys.pub_path, "-o", target)
        assert result.exit_code == 2 and "write the bundle elsewhere" in result.stderr
    assert first.read_bytes() == before


def test_join_shows_its_progress_on_a_terminal(split: tuple[Path, Path], keys: Keys, tmp_path: Path) -> None:
    """``join`` of a large bundle used to be silent: on a terminal it draws a "joining" bar (bytes
    of total); in a pipe it draws none."""
    from .conftest import AIRBUNDLE
    from .test_siteux import _on_terminal

    index, built = split
    argv = [AIRBUNDLE, "join", str(index), "--pubkey", str(keys.pub_path), "-o", str(tmp_path / "j.tar")]
    code, said = _on_terminal(tmp_path, argv, None)
    assert code == 0, said
    assert "joining" in said and "B/" in said  # tqdm's bar: bytes done of total
    assert (tmp_path / "j.tar").read_bytes() == built.read_bytes()
    piped = run_cli("join", index, "--pubkey", keys.pub_path, "-o", tmp_path / "k.tar")
    assert piped.exit_code == 0 and "joining" not in piped.stderr
