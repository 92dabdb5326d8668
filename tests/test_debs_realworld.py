"""Debian packages against the real Debian archive this machine's apt uses (marked ``realworld``).

A bundle of the vendor guide's site list from the release, updates and security suites is
compared with apt's own answer in a ``debootstrap --variant=minbase`` root, then installed
offline (``unshare -n``) from its ``debs/`` alone into a fresh copy of the stock root and
into one upgraded from security first. A baseline given as a root's dpkg status must give
exactly apt's list for that root. Skipped, with the reason, when the archive cannot be
reached. The roots and the download cache are kept between runs (tests/realworld.py).
"""

from __future__ import annotations

import os
import re
import shutil
import tarfile
from pathlib import Path

import pytest

from bundler import archive

from . import realworld
from .conftest import Keys, run_cli

pytestmark = [pytest.mark.realworld, pytest.mark.slow, pytest.mark.timeout(1800)]


@pytest.fixture(scope="module")
def real() -> tuple[realworld.RealArchive, Path, Path]:
    if os.geteuid() != 0:
        pytest.skip("needs root: debootstrap, chroot, unshare -n and mounting /proc in the roots")
    found = realworld.archive()
    if isinstance(found, str):
        pytest.skip(found)
    if shutil.which("debootstrap") is None:
        pytest.skip("debootstrap is not installed ('make debs' installs it)")
    stock, upgraded = realworld.minbase(found)
    return found, stock, upgraded


def _inst(stdout: str) -> dict[str, str]:
    return {m[1]: m[2] for m in re.finditer(r"^Inst (\S+) (?:\[[^\]]*\] )?\((\S+)", stdout, re.M)}


@pytest.fixture(scope="module")
def apts_lists(real, tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, str]]:
    """What ``apt-get install -s --no-install-recommends`` installs in each root: name -> version."""
    _, stock, upgraded = real
    out = {}
    for name, root in (("stock", stock), ("upgraded", upgraded)):
        copy = realworld.copy_root(root, tmp_path_factory.mktemp("apt") / name)
        with realworld.mounted_proc(copy):
            run = realworld.chroot(
                copy,
                "apt-get -q update >/dev/null && apt-get -s install --no-install-recommends "
                + " ".join(realworld.SITE_PACKAGES),
            )
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
        out[name] = _inst(run.stdout)
        shutil.rmtree(copy)
    return out


def _build(real, keys: Keys, folder: Path, baseline: Path | None = None) -> Path:
    """Build the site list from the real suites (into a download cache kept between runs)."""
    archive_ = real[0]
    (folder / "manifests").mkdir(parents=True)
    manifest = folder / "manifests" / "site.yaml"
    extra = ""
    if baseline is not None:
        shutil.copy(baseline, folder / "node-status")  # paths are relative to the project folder
        extra = "  baseline: node-status\n"
    manifest.write_text(
        "apiVersion: airbundle/v1\nkind: Bundle\nname: site\nversion: '1.0'\n"
        f"platform: {{os: debian, codename: {archive_.codename}, arch: amd64}}\n"
        f"debs:\n  sources:\n{archive_.manifest_sources()}"
        f"  packages: [{', '.join(realworld.SITE_PACKAGES)}]\n{extra}"
    )
    cache = realworld.cache_root() / "build-cache"
    result = run_cli("build", manifest, "-o", folder / "out", "--key", keys.key_path, "--cache", cache)
    assert result.exit_code == 0, result.stderr[-3000:]
    return Path(result.stdout.strip())


@pytest.fixture(scope="module")
def site_bundle(real, keys: Keys, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _build(real, keys, tmp_path_factory.mktemp("site"))


def test_bundle_holds_everything_apt_installs(site_bundle: Path, apts_lists) -> None:
    """Every package apt would install on the stock or the patched root is in the bundle, same version."""
    lock = archive.read_lock(site_bundle)[0]
    ours = {d.name: d.version for d in lock.debs}
    for name, theirs in apts_lists.items():
        missing = {p: v for p, v in theirs.items() if ours.get(p) != v}
        assert missing == {}, f"{name}: not in the bundle at apt's version: {missing}"
    assert all(d.reason == "requested" for d in lock.debs if d.name in realworld.SITE_PACKAGES)
    assert {len(s["signed_by"]) > 0 for s in lock.apt_sources} == {True}


@pytest.mark.parametrize("which", ["stock", "upgraded"])
def test_offline_install_from_the_bundle(real, site_bundle: Path, tmp_path: Path, which: str) -> None:
    """No network at all: apt installs the site list from debs/ alone; dpkg --audit is clean."""
    _, stock, upgraded = real
    root = realworld.copy_root(stock if which == "stock" else upgraded, tmp_path / "root")
    repo = root / "srv" / "airbundle"
    with tarfile.open(site_bundle) as tar:
        tar.extractall(repo, members=[m for m in tar.getmembers() if m.name.startswith("debs/")])
    (root / "etc/apt/sources.list").write_text("deb [trusted=yes] file:/srv/airbundle/debs ./\n")
    shutil.rmtree(root / "var/lib/apt/lists")
    (root / "var/lib/apt/lists/partial").mkdir(parents=True)
    with realworld.mounted_proc(root):
        run = realworld.chroot(
            root,
            "apt-get -q update && apt-get -q -y --no-install-recommends install "
            + " ".join(realworld.SITE_PACKAGES)
            + " && dpkg --audit && dpkg-query -W -f='${Package} ${Version}\\n' "
            + " ".join(realworld.SITE_PACKAGES),
            network=False,
        )
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    lock = archive.read_lock(site_bundle)[0]
    wanted = {d.name: d.version for d in lock.debs if d.name in realworld.SITE_PACKAGES}
    installed = dict(line.split() for line in run.stdout.splitlines()[-len(wanted) :])
    assert installed == wanted


@pytest.mark.parametrize("which", ["stock", "upgraded"])
def test_baseline_status_gives_exactly_apts_list(
    real, keys: Keys, apts_lists, tmp_path: Path, which: str
) -> None:
    _, stock, upgraded = real
    status = (stock if which == "stock" else upgraded) / "var/lib/dpkg/status"
    lock = archive.read_lock(_build(real, keys, tmp_path, baseline=status))[0]
    assert {d.name: d.version for d in lock.debs} == apts_lists[which]


@pytest.mark.parametrize("which", ["stock", "upgraded"])
def test_installer_packages_phase_into_a_root(
    real, site_bundle: Path, keys: Keys, tmp_path: Path, which: str
) -> None:
    """The installer's own packages phase, over SSH, into a node whose sshd is chrooted into a
    copy of the root (OpenSSH's ChrootDirectory): apt there installs from the bundle's repository
    only, every maintainer script runs inside the root, and dpkg --audit is clean."""
    from .nodes import Client, Node, cluster_yml
    from .test_installer import _install, _site

    _, stock, upgraded = real
    # sshd wants every folder of a ChrootDirectory owned by root and writable by no one else:
    # not under /tmp, so next to the cached roots.
    root = realworld.cache_root() / "nodes" / f"{which}-{os.getpid()}"
    shutil.rmtree(root, ignore_errors=True)
    root.parent.mkdir(exist_ok=True)
    realworld.copy_root(stock if which == "stock" else upgraded, root)
    node = None
    try:
        with realworld.mounted_proc(root):
            client = Client(tmp_path / "client")
            node = Node(
                "127.0.0.61", f"deb-{which}", client, docker=False, sshd_extra=f"ChrootDirectory {root}\n"
            )
            site = _site(site_bundle, tmp_path)
            (site / "cluster.yml").write_text(cluster_yml([node], workers={node.name}))
            run = _install(site, keys, "--ssh-config", str(client.config), "--only", "packages")
            assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
            check = realworld.chroot(
                root,
                "dpkg --audit && dpkg-query -W -f='${Package} ${Version}\\n' "
                + " ".join(realworld.SITE_PACKAGES),
                network=False,
            )
        assert check.returncode == 0 and check.stdout.count("\n") == len(realworld.SITE_PACKAGES), (
            check.stdout
        )
        lock = archive.read_lock(site_bundle)[0]
        wanted = {d.name: d.version for d in lock.debs if d.name in realworld.SITE_PACKAGES}
        assert dict(line.split() for line in check.stdout.splitlines()) == wanted
    finally:
        if node is not None:
            node.stop()
        shutil.rmtree(root, ignore_errors=True)
