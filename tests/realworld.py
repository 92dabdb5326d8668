"""The real Debian archive this machine's apt uses, and minimal roots made from it, for the
``realworld`` tests and ``bench/debs_real_bench.py``.

The archive's address and suites are read from the machine's apt configuration
(``/etc/apt/sources.list.d/*.sources`` or ``/etc/apt/sources.list``), never written
into the repository. A ``debootstrap --variant=minbase`` root of the release, and a copy
of it upgraded from the updates and security suites, are made once a day and kept in a
cache outside the repository (``$AIRBUNDLE_TEST_CACHE``, default ``~/.cache/airbundle-tests``),
so the suite stays fast; work happens on copies.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import os
import shutil
import subprocess
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
# The vendor guide's site list: load balancers, heartbeat, Docker, NTP, Ceph client, VM tools.
SITE_PACKAGES = (
    "haproxy",
    "keepalived",
    "ipvsadm",
    "heartbeat",
    "docker.io",
    "chrony",
    "ceph-common",
    "open-vm-tools",
    "curl",
)


@dataclass(frozen=True)
class AptSource:
    uri: str
    suite: str
    components: tuple[str, ...]
    keyring: str


@dataclass(frozen=True)
class RealArchive:
    """The release suite (e.g. bookworm) and the others of the same release (updates, security)."""

    codename: str
    sources: tuple[AptSource, ...]

    @property
    def main(self) -> AptSource:
        return next(s for s in self.sources if s.suite == self.codename)

    def sources_list(self) -> str:
        return "".join(
            f"deb [signed-by={s.keyring}] {s.uri} {s.suite} {' '.join(s.components)}\n" for s in self.sources
        )

    def manifest_sources(self) -> str:
        return "".join(
            f"    - url: {s.uri}\n      suite: {s.suite}\n      components: [{', '.join(s.components)}]\n"
            f"      keyring: {s.keyring}\n"
            for s in self.sources
        )


def _configured() -> list[AptSource]:
    """This machine's apt sources of type ``deb`` (deb822 files first, then one-line ones)."""
    out = []
    for path in sorted(Path("/etc/apt/sources.list.d").glob("*.sources")):
        for stanza in path.read_text().split("\n\n"):
            fields: dict[str, str] = {}
            for line in stanza.splitlines():
                if line and not line.startswith(("#", " ")) and ":" in line:
                    key, _, value = line.partition(":")
                    fields[key.strip().lower()] = value.strip()
            if "deb" not in fields.get("types", "").split() or fields.get("enabled", "yes") == "no":
                continue
            for uri in fields.get("uris", "").split():
                for suite in fields.get("suites", "").split():
                    comps = tuple(fields.get("components", "main").split())
                    out.append(AptSource(uri.rstrip("/"), suite, comps, fields.get("signed-by", KEYRING)))
    lists = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*.list"))]
    for path in lists:
        if not path.exists():
            continue
        for line in path.read_text().splitlines():
            words = line.split("#")[0].split()
            if not words or words[0] != "deb":
                continue
            words = [w for w in words[1:] if not w.startswith("[") and not w.endswith("]")]
            if len(words) >= 3:
                out.append(AptSource(words[0].rstrip("/"), words[1], tuple(words[2:]), KEYRING))
    return out


def archive() -> RealArchive | str:
    """The configured Debian release and its companion suites, or why there is none to test against."""
    sources = [s for s in _configured() if "main" in s.components and s.keyring.startswith("/")]
    releases = [s.suite for s in sources if "-" not in s.suite and "/" not in s.suite]
    if not releases:
        return "no Debian release suite (e.g. bookworm) with 'main' in this machine's apt sources"
    codename = releases[0]
    chosen = tuple(
        AptSource(s.uri, s.suite, ("main",), s.keyring)
        for s in sources
        if s.suite == codename or (s.suite.startswith(codename + "-") and not s.suite.endswith("backports"))
    )
    for source in chosen:
        url = f"{source.uri}/dists/{source.suite}/InRelease"
        try:
            with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=10):
                pass
        except OSError as exc:
            return f"the Debian archive this machine's apt uses is not reachable ({source.suite}: {exc})"
    if not Path(KEYRING).exists():
        return f"{KEYRING} is missing (Debian package debian-archive-keyring)"
    return RealArchive(codename, chosen)


def cache_root() -> Path:
    root = Path(os.environ.get("AIRBUNDLE_TEST_CACHE") or Path.home() / ".cache" / "airbundle-tests")
    root.mkdir(parents=True, exist_ok=True)
    return root


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


@contextlib.contextmanager
def mounted_proc(root: Path) -> Iterator[None]:
    """/proc inside ``root`` for apt and dpkg, unmounted afterwards whatever happens."""
    (root / "proc").mkdir(exist_ok=True)
    subprocess.run(["mount", "-t", "proc", "proc", str(root / "proc")], check=True)
    try:
        yield
    finally:
        subprocess.run(["umount", "-l", str(root / "proc")], check=False)


def chroot(root: Path, script: str, network: bool = True, timeout: int = 1800) -> subprocess.CompletedProcess:
    """``sh -c script`` in ``root`` (with ``unshare -n``: no network at all)."""
    argv = ["chroot", str(root), "sh", "-c", script]
    if not network:
        argv = ["unshare", "-n", *argv]
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C", "DEBIAN_FRONTEND": "noninteractive"}
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env)


def _prepare(root: Path, sources: str) -> None:
    (root / "etc/apt/sources.list").write_text(sources)
    for extra in (root / "etc/apt/sources.list.d").glob("*"):
        extra.unlink()
    policy = root / "usr/sbin/policy-rc.d"  # no daemon starts inside the test roots
    policy.write_text("#!/bin/sh\nexit 101\n")
    policy.chmod(0o755)


def _stale(folder: Path, keep: Path) -> None:
    for old in folder.glob(keep.name.rsplit("-", 1)[0] + "-*"):
        if old != keep and old.is_dir():
            shutil.rmtree(old, ignore_errors=True)


def minbase(real: RealArchive) -> tuple[Path, Path]:
    """(stock root, root upgraded from updates + security): made once a day, then reused."""
    today = datetime.date.today().strftime("%Y%m%d")
    folder = cache_root() / "roots"
    folder.mkdir(exist_ok=True)
    stock = folder / f"{real.codename}-minbase-{today}"
    upgraded = folder / f"{real.codename}-upgraded-{today}"
    with _locked(folder / ".lock"):
        if not stock.exists():
            work = stock.with_name(stock.name + ".partial")
            shutil.rmtree(work, ignore_errors=True)
            run = subprocess.run(
                ["debootstrap", "--variant=minbase", real.codename, str(work), real.main.uri],
                capture_output=True,
                text=True,
                timeout=1800,
            )
            if run.returncode != 0:
                raise RuntimeError(f"debootstrap failed: {run.stdout[-2000:]}{run.stderr[-2000:]}")
            _prepare(work, real.sources_list())
            work.rename(stock)
            _stale(folder, stock)
        if not upgraded.exists():
            work = upgraded.with_name(upgraded.name + ".partial")
            shutil.rmtree(work, ignore_errors=True)
            subprocess.run(["cp", "-a", str(stock), str(work)], check=True)
            with mounted_proc(work):
                run = chroot(work, "apt-get -q update && apt-get -q -y upgrade && apt-get clean")
            if run.returncode != 0:
                raise RuntimeError(f"upgrading the root failed: {run.stdout[-2000:]}{run.stderr[-2000:]}")
            work.rename(upgraded)
            _stale(folder, upgraded)
    return stock, upgraded


def copy_root(root: Path, dest: Path) -> Path:
    subprocess.run(["cp", "-a", str(root), str(dest)], check=True)
    return dest
