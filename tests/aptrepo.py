"""Real apt repositories for the tests (TESTBED.md): tiny .debs made with dpkg-deb, indexed with
dpkg-scanpackages and apt-ftparchive, InRelease clearsigned by a gpg key made here, served
over loopback HTTP."""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import lzma
import shutil
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path

# name, version, arch, extra control fields. The set exercises the resolver: alternatives with a
# virtual first choice, versioned and epoch/tilde constraints, versioned Provides, Pre-Depends,
# :any on an arch-all Multi-Arch: allowed package (and on a foreign one, which cannot meet it), a cycle, a required baseline package, and an
# unresolvable chain.
PACKAGES = [
    (
        "app",
        "1.0",
        "amd64",
        {
            "Pre-Depends": "prelib",
            "Depends": "libfoo (>= 2.0), mail-transport-agent | postfix, config-tool:any, libbar (>= 3.0~),"
            " libfoo-api (>= 3), base-files",
        },
    ),
    ("libfoo", "1.5", "amd64", {}),
    ("libfoo", "2.1", "amd64", {}),
    ("libfoo", "1:0.5", "amd64", {}),  # the epoch makes this the newest
    ("libbar", "3.0~rc1", "amd64", {}),
    ("libbar", "3.0", "amd64", {}),
    ("old-user", "1.0", "amd64", {"Depends": "libbar (<< 3.0)"}),
    ("tiny-mta", "0.9", "amd64", {"Provides": "mail-transport-agent"}),
    ("newlib", "2.0", "amd64", {"Provides": "libfoo-api (= 3)"}),
    ("config-tool", "1.2", "all", {"Multi-Arch": "allowed"}),
    ("foreign-tool", "1.0", "all", {"Multi-Arch": "foreign"}),
    ("wants-any", "1.0", "amd64", {"Depends": "foreign-tool:any"}),
    ("prelib", "1.0", "amd64", {}),
    ("cyc-a", "1.0", "amd64", {"Depends": "cyc-b"}),
    ("cyc-b", "1.0", "amd64", {"Depends": "cyc-a"}),
    ("base-files", "12.4", "amd64", {"Priority": "required"}),
    ("broken", "1.0", "amd64", {"Depends": "missing-lib (>= 1)"}),
    ("armonly", "1.0", "arm64", {}),
]
# What apt installs for `app cyc-a` on a target that has base-files.
CLOSURE = {
    "app": "1.0",
    "prelib": "1.0",
    "libfoo": "1:0.5",
    "tiny-mta": "0.9",
    "config-tool": "1.2",
    "libbar": "3.0",
    "newlib": "2.0",
    "cyc-a": "1.0",
    "cyc-b": "1.0",
}


def make_deb(workdir: Path, name: str, version: str, arch: str, fields: dict[str, str]) -> Path:
    root = workdir / f"{name}-{version.replace(':', '_')}-{arch}"
    (root / "DEBIAN").mkdir(parents=True)
    doc = root / "usr" / "share" / "doc" / name
    doc.mkdir(parents=True)
    (doc / "README").write_text(f"{name} {version}\n")
    control = {
        "Package": name,
        "Version": version,
        "Architecture": arch,
        "Maintainer": "Test <t@example.invalid>",
        "Description": f"test package {name}",
        "Priority": "optional",
        **fields,
    }
    (root / "DEBIAN" / "control").write_text("".join(f"{k}: {v}\n" for k, v in control.items()))
    out = workdir / f"{name}_{version.split(':')[-1]}_{arch}.deb"
    subprocess.run(
        ["dpkg-deb", "--build", "--root-owner-group", str(root), str(out)], check=True, capture_output=True
    )
    return out


class GpgKey:
    """A signing key in its own gpg home, exported as a binary keyring for the manifest."""

    def __init__(self, home: Path, name: str) -> None:
        self.home = home
        home.mkdir(mode=0o700, parents=True)
        gpg = ["gpg", "--batch", "--homedir", str(home), "--passphrase", "", "--pinentry-mode", "loopback"]
        subprocess.run(
            [*gpg, "--quick-gen-key", name, "ed25519", "sign", "never"], check=True, capture_output=True
        )
        self.gpg = gpg
        self.keyring = home.parent / f"{home.name}.gpg"
        exported = subprocess.run(
            ["gpg", "--homedir", str(home), "--export"], check=True, capture_output=True
        ).stdout
        self.keyring.write_bytes(exported)
        self.armored = home.parent / f"{home.name}.asc"
        self.armored.write_bytes(
            subprocess.run(
                ["gpg", "--homedir", str(home), "--armor", "--export"], check=True, capture_output=True
            ).stdout
        )

    @property
    def fingerprint(self) -> str:
        listing = subprocess.run(
            ["gpg", "--homedir", str(self.home), "--with-colons", "--list-keys"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        return next(line.split(":")[9] for line in listing.splitlines() if line.startswith("fpr:"))

    def clearsign(self, src: Path, dest: Path) -> None:
        subprocess.run(
            [*self.gpg, "--yes", "--clearsign", "-o", str(dest), str(src)], check=True, capture_output=True
        )

    def close(self) -> None:
        subprocess.run(["gpgconf", "--homedir", str(self.home), "--kill", "gpg-agent"], capture_output=True)


def index_repo(repo: Path, key: GpgKey, valid_until: str | None = None) -> None:
    """Packages, Packages.gz, Release and InRelease for repo/dists/stable/main (amd64 + arm64)."""
    for arch in ("amd64", "arm64"):
        folder = repo / "dists" / "stable" / "main" / f"binary-{arch}"
        folder.mkdir(parents=True, exist_ok=True)
        packages = subprocess.run(
            ["dpkg-scanpackages", "--multiversion", "--arch", arch, "pool"],
            cwd=repo,
            check=True,
            capture_output=True,
        ).stdout
        (folder / "Packages").write_bytes(packages)
        (folder / "Packages.gz").write_bytes(gzip.compress(packages, mtime=0))
    dist = repo / "dists" / "stable"
    release = subprocess.run(
        [
            "apt-ftparchive",
            "-o",
            "APT::FTPArchive::Release::Suite=stable",
            "-o",
            "APT::FTPArchive::Release::Codename=stable",
            "-o",
            "APT::FTPArchive::Release::Architectures=amd64 arm64",
            "-o",
            "APT::FTPArchive::Release::Components=main",
            "release",
            ".",
        ],
        cwd=dist,
        check=True,
        capture_output=True,
    ).stdout.decode()
    if valid_until:
        release = release.replace("\nDate:", f"\nValid-Until: {valid_until}\nDate:", 1)
    (dist / "Release").write_text(release)
    key.clearsign(dist / "Release", dist / "InRelease")


def index_flat(repo: Path, key: GpgKey) -> None:
    """A flat repository (deb URL ./): Packages and a signed InRelease at its root."""
    packages = subprocess.run(
        ["dpkg-scanpackages", "--arch", "amd64", "."], cwd=repo, check=True, capture_output=True
    ).stdout
    (repo / "Packages").write_bytes(packages)
    release = subprocess.run(
        ["apt-ftparchive", "release", "."], cwd=repo, check=True, capture_output=True
    ).stdout
    (repo / "Release").write_bytes(release)
    key.clearsign(repo / "Release", repo / "InRelease")


class Served:
    """A folder served over HTTP on 127.0.0.1; ``paths`` records each request's path as sent."""

    def __init__(self, folder: Path) -> None:
        self.paths: list[str] = []
        handler = functools.partial(_QuietHandler, self.paths, directory=str(folder))
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def __init__(self, paths: list[str], *args, **kwargs) -> None:
        self.paths = paths
        super().__init__(*args, **kwargs)

    def send_head(self):  # type: ignore[no-untyped-def]
        self.paths.append(self.path)
        return super().send_head()

    def log_message(self, *args: object) -> None:
        pass


@dataclass
class AptRepo:
    root: Path
    url: str
    key: GpgKey
    other_key: GpgKey


def build_repo(workdir: Path) -> tuple[Path, GpgKey, GpgKey]:
    """The test repository (signed) and a second, unrelated key."""
    key = GpgKey(workdir / "gnupg", "Test Repo")
    other = GpgKey(workdir / "gnupg-other", "Someone Else")
    repo = workdir / "repo"
    pool = repo / "pool" / "main"
    pool.mkdir(parents=True)
    debs = workdir / "debs-src"
    debs.mkdir()
    for name, version, arch, fields in PACKAGES:
        shutil.move(str(make_deb(debs, name, version, arch, fields)), pool)
    index_repo(repo, key)
    flat = workdir / "flat"
    flat.mkdir()
    shutil.copy(next(pool.glob("prelib_*.deb")), flat)
    index_flat(flat, key)
    return repo, key, other


# A small archive shaped like Debian's: suite "stable" (as bookworm main: Architectures lists
# "all", No-Support-for-Architecture-all: Packages, xz listed but missing so gz must be taken,
# a binary-all index that does not match the Release) and "stable-security" (as
# bookworm-security: no "all" at all, Acquire-By-Hash: yes, the named Packages.xz stale so
# only by-hash is right, a pool file literally named with "%3a", "~" and "+").
ARCHIVE_STABLE = [
    ("perl-base", "5.36-1", "amd64", {"Priority": "required"}),
    ("perl", "5.36-1", "amd64", {"Depends": "perl-base (= 5.36-1)"}),
    ("sysv-utils", "3.0", "amd64", {"Priority": "required", "Provides": "lsb-base"}),
    ("lsb-base", "11.6", "all", {}),
    ("daemon-x", "1.0", "amd64", {"Depends": "lsb-base"}),
    ("docs-all", "1.0", "all", {}),
    ("conflict-a", "1.0", "amd64", {"Conflicts": "conflict-b"}),
    ("conflict-b", "1.0", "amd64", {}),
    ("oldtool", "1.0", "amd64", {}),
    ("oldtool", "2.0", "amd64", {}),
    ("breaker", "1.0", "amd64", {"Breaks": "oldtool (<< 2.0)"}),
    ("stuck", "1.0", "amd64", {}),
    ("breaker2", "1.0", "amd64", {"Breaks": "stuck (<< 2.0)"}),
    ("needs-mta", "1.0", "amd64", {"Depends": "mail-transport-agent | mta-real"}),
    ("mta-virt", "1.0", "amd64", {"Provides": "mail-transport-agent", "Conflicts": "mail-transport-agent"}),
    ("mta-real", "1.0", "amd64", {"Provides": "mail-transport-agent", "Conflicts": "mail-transport-agent"}),
    ("rec-app", "1.0", "amd64", {"Recommends": "rec-lib | rec-missing, rec-gone"}),
    ("rec-lib", "1.0", "amd64", {}),
]
ARCHIVE_SECURITY = [
    ("perl-base", "5.36-1+u3", "amd64", {"Priority": "required"}),
    ("perl", "5.36-1+u3", "amd64", {"Depends": "perl-base (= 5.36-1+u3)"}),
    ("engine", "1:5.0~rc1+dfsg", "amd64", {}),
]
ENGINE_FILE = "engine_1%3a5.0~rc1+dfsg_amd64.deb"  # what the pool holds, literally
ENGINE_REQUEST = "engine_1%253a5.0%7erc1%2bdfsg_amd64.deb"  # what apt asks for


def status_file(entries: list[tuple[str, str, dict[str, str]]]) -> str:
    """A dpkg status file: (name, version, fields) installed on amd64."""
    return "\n".join(
        f"Package: {name}\nStatus: install ok installed\nPriority: optional\nVersion: {version}\n"
        f"Architecture: amd64\nMaintainer: T <t@example.invalid>\nDescription: installed {name}\n"
        + "".join(f"{k}: {v}\n" for k, v in fields.items())
        for name, version, fields in entries
    )


def _release(dist: Path, fields: dict[str, str], key: GpgKey) -> None:
    """Release (every file under dist, by SHA256) and its clearsigned InRelease."""
    lines = [f"{k}: {v}" for k, v in fields.items()] + ["SHA256:"]
    for path in sorted(p for p in dist.rglob("*") if p.is_file() and "by-hash" not in p.parts):
        data = path.read_bytes()
        lines.append(
            f" {hashlib.sha256(data).hexdigest()} {len(data):>8} {path.relative_to(dist).as_posix()}"
        )
    (dist / "Release").write_text("\n".join(lines) + "\n")
    key.clearsign(dist / "Release", dist / "InRelease")


def build_archive(workdir: Path, key: GpgKey) -> Path:
    """The Debian-shaped two-suite archive described at ARCHIVE_STABLE; returns its root."""
    root = workdir / "archive"
    src = workdir / "archive-src"
    src.mkdir()
    for suite, pool, packages in (
        ("stable", "pool/main", ARCHIVE_STABLE),
        ("stable-security", "pool/updates", ARCHIVE_SECURITY),
    ):
        (root / pool).mkdir(parents=True)
        for name, version, arch, fields in packages:
            deb = make_deb(src, name, version, arch, fields)
            shutil.move(str(deb), root / pool / (ENGINE_FILE if name == "engine" else deb.name))
        index = subprocess.run(
            ["dpkg-scanpackages", "--multiversion", "--arch", "amd64", pool],
            cwd=root,
            check=True,
            capture_output=True,
        ).stdout
        dist = root / "dists" / suite
        amd64 = dist / "main" / "binary-amd64"
        amd64.mkdir(parents=True)
        (amd64 / "Packages").write_bytes(index)  # listed (apt looks for it), then removed, as Debian does
        (amd64 / "Packages.xz").write_bytes(lzma.compress(index))
        (amd64 / "Packages.gz").write_bytes(gzip.compress(index, mtime=0))
        common = {
            "Origin": "Test",
            "Suite": suite,
            "Codename": suite,
            "Date": "Sat, 01 Jan 2000 00:00:00 UTC",
        }
        if suite == "stable":
            (dist / "main" / "binary-all").mkdir()
            (dist / "main" / "binary-all" / "Packages").write_bytes(b"Package: docs-all\n")
            fields = {**common, "Architectures": "all amd64", "Components": "main",
                      "No-Support-for-Architecture-all": "Packages"}  # fmt: skip
            _release(dist, fields, key)
            (amd64 / "Packages.xz").unlink()  # listed, missing: the next compression must be tried
            (amd64 / "Packages").unlink()
            (dist / "main" / "binary-all" / "Packages").write_bytes(b"Package: not-what-release-says\n")
        else:
            by_hash = amd64 / "by-hash" / "SHA256"
            by_hash.mkdir(parents=True)
            for name in ("Packages.xz", "Packages.gz"):
                data = (amd64 / name).read_bytes()
                (by_hash / hashlib.sha256(data).hexdigest()).write_bytes(data)
            fields = {**common, "Architectures": "amd64", "Components": "main", "Acquire-By-Hash": "yes"}
            _release(dist, fields, key)
            (amd64 / "Packages.xz").write_bytes(lzma.compress(b"Package: stale\n"))  # mid-update mirror
            (amd64 / "Packages").unlink()
    return root


DEMO_PACKAGES = [
    ("demo-agent", "1.0", "amd64", {"Depends": "demo-lib (>= 1.1), mail-transport-agent | demo-mta"}),
    ("demo-lib", "1.0", "amd64", {}),
    ("demo-lib", "1.2", "amd64", {}),
    ("demo-mta", "0.9", "amd64", {"Provides": "mail-transport-agent"}),
    ("demo-unused", "1.0", "amd64", {}),
]


def main(out: Path) -> None:
    """A small signed repository for `make demo`: OUT/repo (serve it) and OUT/repo-key.gpg."""
    key = GpgKey(out / "gnupg", "airbundle demo repository")
    try:
        pool = out / "repo" / "pool" / "main"
        pool.mkdir(parents=True)
        for name, version, arch, fields in DEMO_PACKAGES:
            shutil.move(str(make_deb(out, name, version, arch, fields)), pool)
        index_repo(out / "repo", key)
        shutil.copy(key.keyring, out / "repo-key.gpg")
    finally:
        key.close()


if __name__ == "__main__":
    import sys

    main(Path(sys.argv[1]))


def index_suite(
    repo: Path, key: GpgKey, suite: str, components: tuple[str, ...], arch: str = "amd64"
) -> None:
    """Packages and a signed InRelease for ``repo/dists/SUITE/COMPONENT`` from ``repo/pool/COMPONENT``
    (each component its own index, as Astra's and Debian's archives have them)."""
    for component in components:
        folder = repo / "dists" / suite / component / f"binary-{arch}"
        folder.mkdir(parents=True, exist_ok=True)
        (repo / "pool" / component).mkdir(parents=True, exist_ok=True)
        packages = subprocess.run(
            ["dpkg-scanpackages", "--multiversion", "--arch", arch, f"pool/{component}"],
            cwd=repo, check=True, capture_output=True,
        ).stdout  # fmt: skip
        (folder / "Packages").write_bytes(packages)
        (folder / "Packages.gz").write_bytes(gzip.compress(packages, mtime=0))
    dist = repo / "dists" / suite
    options = [
        f"Suite={suite}",
        f"Codename={suite}",
        f"Architectures={arch}",
        f"Components={' '.join(components)}",
    ]
    release = subprocess.run(
        ["apt-ftparchive", *[a for o in options for a in ("-o", f"APT::FTPArchive::Release::{o}")], "release", "."],
        cwd=dist, check=True, capture_output=True,
    ).stdout  # fmt: skip
    (dist / "Release").write_bytes(release)
    key.clearsign(dist / "Release", dist / "InRelease")


# Astra Linux SE 1.7's layout, in small: one tree per repository under astra/stable/1.7_x86-64/,
# suite 1.7_x86-64, components main, contrib and non-free; docker.io's closure spans two of them.
ASTRA_SUITE = "1.7_x86-64"
ASTRA_REPOSITORIES = {
    "repository-main": {
        "main": [
            (
                "docker.io",
                "20.10.25+dfsg1-2astra1",
                "amd64",
                {"Depends": "containerd (>= 1.4), runc, iptables"},
            ),
            ("containerd", "1.4.13~ds1-1astra1", "amd64", {}),
            ("iptables", "1.8.7-1astra1", "amd64", {}),
        ],
        "contrib": [("runc", "1.1.5+ds1-1astra1", "amd64", {})],
        "non-free": [],
    },
    "repository-extended": {
        "main": [("containerd", "1.6.20~ds1-1astra2", "amd64", {})],
        "contrib": [],
        "non-free": [],
    },
}


def build_astra(workdir: Path, key: GpgKey) -> Path:
    """Astra-shaped repositories under ``workdir/served``; serve that folder."""
    served = workdir / "served"
    for name, components in ASTRA_REPOSITORIES.items():
        repo = served / "astra" / "stable" / ASTRA_SUITE / name
        for component, packages in components.items():
            pool = repo / "pool" / component
            pool.mkdir(parents=True, exist_ok=True)
            for pkg, version, arch, fields in packages:
                shutil.move(str(make_deb(workdir, pkg, version, arch, fields)), pool)
        index_suite(repo, key, ASTRA_SUITE, tuple(components))
    return served
