"""The installer the bundle carries, run as a site would: install.sh, Debian's python3 -I -S, stock tools."""

from __future__ import annotations

import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from .conftest import Keys
from .test_verify import info, read_items, replace, write_items

SITE_PATH = "/usr/bin:/bin"  # python3 is Debian's /usr/bin/python3: no venv, no cryptography with -S


def _site(bundle: Path, tmp_path: Path) -> Path:
    """A site folder holding the bundle and install.sh taken from it, as the README says."""
    site = tmp_path / "site"
    site.mkdir(exist_ok=True)
    shutil.copy(bundle, site / bundle.name)
    subprocess.run(["tar", "-xf", bundle.name, "install.sh"], cwd=site, check=True)
    (site / "cluster.yml").write_text("nodes: []\n")
    return site


def _install(site: Path, keys: Keys, *extra: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PATH": SITE_PATH}
    return subprocess.run(
        [
            "sh",
            "install.sh",
            "--pubkey",
            str(keys.pub_path),
            "--inventory",
            "cluster.yml",
            "--workdir",
            str(site / "work"),
            *extra,
        ],
        cwd=site,
        env=env,
        capture_output=True,
        text=True,
    )


def test_debian_python_has_no_cryptography_in_isolated_mode() -> None:
    """The premise of these tests: the site interpreter cannot import cryptography."""
    run = subprocess.run(["/usr/bin/python3", "-I", "-S", "-c", "import cryptography"], capture_output=True)
    assert run.returncode != 0


def test_install_sh_verifies_and_unpacks_with_stock_tools(built: Path, keys: Keys, tmp_path: Path) -> None:
    site = _site(built, tmp_path)
    dry = _install(site, keys, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "members verified; the plan:" in dry.stdout and "/usr/local/bin/rke" in dry.stdout
    assert not (site / "work").exists()  # a dry run changes nothing
    run = _install(site, keys)
    assert run.returncode == 6, run.stderr
    assert "no node was touched" in run.stderr and "verified (signed by" in run.stdout
    unpacked = site / "work" / "demo-1.0.0"
    assert (unpacked / "bin" / "rke").stat().st_mode & 0o777 == 0o755
    assert (unpacked / "files" / "app" / "config" / "values.yaml").read_text() == "replicas: 3\n"
    with tarfile.open(built) as tar:
        assert {m.name for m in tar.getmembers()} == {
            str(p.relative_to(unpacked)) for p in unpacked.rglob("*") if p.is_file()
        }
    again = _install(site, keys)  # unpacking again replaces the folder whole
    assert again.returncode == 6 and (unpacked / "bin" / "rke").is_file()
    assert [p.name for p in (site / "work").iterdir()] == ["demo-1.0.0"]


def test_install_sh_refuses_another_key(built: Path, other_keys: Keys, tmp_path: Path) -> None:
    site = _site(built, tmp_path)
    run = _install(site, other_keys)
    assert run.returncode == 3 and "does not verify" in run.stderr
    assert not (site / "work").exists()


def test_tampered_installer_never_runs(built: Path, keys: Keys, tmp_path: Path) -> None:
    items = read_items(built)
    main = dict((ti.name, d) for ti, d in items)["installer/bundler/installer/main.py"]
    evil = main.replace(b"def run(", b"import os\nos.system('touch /tmp/airbundle-pwned')\ndef run(", 1)
    bad = write_items(
        tmp_path / "demo-1.0.0.tar", replace(items, "installer/bundler/installer/main.py", evil)
    )
    site = _site(bad, tmp_path)
    run = _install(site, keys)
    assert run.returncode == 4 and "installer files do not match lock.json" in run.stderr
    assert not Path("/tmp/airbundle-pwned").exists() and not (site / "work").exists()


@pytest.mark.parametrize(
    "damage",
    ["payload-byte", "extra-member", "symlink", "dotdot", "device"],
)
def test_tampered_or_hostile_bundles_unpack_nothing(
    built: Path, keys: Keys, tmp_path: Path, damage: str
) -> None:
    """The carried installer verifies every member first: nothing is written, no node touched (exit 4)."""
    items = read_items(built)
    if damage == "payload-byte":
        data = dict((ti.name, d) for ti, d in items)["files/notes.txt"]
        items = replace(items, "files/notes.txt", b"X" + data[1:])
    else:
        hostile = {
            "extra-member": info("scripts/99-evil.sh", b"#!/bin/sh\nid\n", mode=0o755),
            "symlink": info("files/etc", type_=tarfile.SYMTYPE, linkname="/etc"),
            "dotdot": info("../../tmp/airbundle-escape", b"x"),
            "device": info("files/tty", type_=tarfile.CHRTYPE),
        }[damage]
        items.append(hostile)
    site = _site(write_items(tmp_path / "demo-1.0.0.tar", items), tmp_path)
    run = _install(site, keys)
    assert run.returncode == 4, run.stderr
    assert not (site / "work").exists() or not any((site / "work").iterdir())
    assert not Path("/tmp/airbundle-escape").exists()
