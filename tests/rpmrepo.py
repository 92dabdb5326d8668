"""Real rpm-md repositories for the tests: rpms built here with rpmbuild (real dependency shapes),
signed with rpmsign, indexed with createrepo_c, repomd.xml signed with a detached armored gpg
signature (repomd.xml.asc), served over loopback HTTP (aptrepo.Served)."""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from .aptrepo import GpgKey


@dataclass(frozen=True)
class Rpm:
    """One package to build: name, [epoch:]version-release, arch, spec tags, files it owns."""

    name: str
    evr: str
    arch: str
    tags: tuple[str, ...] = ()
    files: tuple[str, ...] = ()


# The set exercises the solver as dnf would: versioned requires (epoch beats a higher version),
# a file require, rich dependencies ((a or b), (a if b)), obsoletes, noarch, x86_64 multilib
# (x86_64 and i686 builds of one library), an arch-only package for another platform, a cycle,
# a baseline package, and an unresolvable chain.
PACKAGES = [
    Rpm(
        "app",
        "1.0-1",
        "x86_64",
        (
            "Requires: libfoo >= 2.0",
            "Requires: /usr/bin/helper",
            "Requires: (tiny-mta or postfix)",
            "Requires: (app-selinux if selinux-policy)",
            "Requires: libmulti",
            "Requires: /bin/sh",
            "Requires: conf-data",
        ),
        ("/usr/bin/app",),
    ),
    Rpm("libfoo", "1.5-1", "x86_64", (), ("/usr/lib64/libfoo-1.5",)),
    Rpm("libfoo", "2.1-1", "x86_64", (), ("/usr/lib64/libfoo-2.1",)),
    Rpm("libfoo", "1:0.5-1", "x86_64", (), ("/usr/lib64/libfoo-0.5",)),  # the epoch makes it the newest
    Rpm("helper-tools", "3.0-2", "x86_64", (), ("/usr/bin/helper",)),
    Rpm("tiny-mta", "0.9-1", "x86_64", ("Provides: MTA",)),
    Rpm("postfix", "3.5-1", "x86_64", ("Provides: MTA", "Requires: libbig")),
    Rpm("libbig", "1.0-1", "x86_64"),
    Rpm("app-selinux", "1.0-1", "noarch"),
    Rpm("selinux-policy", "3.14-1", "noarch"),
    Rpm("libmulti", "1.2-1", "x86_64", ("Provides: libmulti.so.1()(64bit)",)),
    Rpm("libmulti", "1.2-1", "i686", ("Provides: libmulti.so.1",)),
    Rpm("legacy32", "1.0-1", "i686", ("Requires: libmulti.so.1",)),
    Rpm("conf-data", "2.0-1", "noarch", (), ("/etc/conf-data.conf",)),
    Rpm("bash", "5.1-1", "x86_64", ("Provides: /bin/sh",), ("/usr/bin/bash",)),
    Rpm("oldtool", "1.0-1", "x86_64"),
    Rpm("newtool", "2.0-1", "x86_64", ("Obsoletes: oldtool < 2.0", "Provides: oldtool = 2.0-1")),
    Rpm("cyc-a", "1.0-1", "noarch", ("Requires: cyc-b",)),
    Rpm("cyc-b", "1.0-1", "noarch", ("Requires: cyc-a",)),
    Rpm("armonly", "1.0-1", "aarch64"),
    Rpm("broken", "1.0-1", "x86_64", ("Requires: missing-lib >= 1",)),
]
# What dnf installs for `app cyc-a` on an x86_64 target that has bash (tests compare with dnf too;
# for (tiny-mta or postfix) dnf's libsolv takes postfix, with its libbig).
CLOSURE = {
    "app": "1.0-1",
    "libfoo": "1:0.5-1",
    "helper-tools": "3.0-2",
    "postfix": "3.5-1",
    "libbig": "1.0-1",
    "libmulti": "1.2-1",
    "conf-data": "2.0-1",
    "cyc-a": "1.0-1",
    "cyc-b": "1.0-1",
}


def _spec(group: list[Rpm], arch: str, number: int) -> str:
    lines = [
        f"Name: grp{number}",
        "Version: 1",
        "Release: 1",
        "Summary: test group",
        "License: MIT",
        *(["BuildArch: noarch"] if arch == "noarch" else []),  # the others: rpmbuild --target
        "%global debug_package %{nil}",
        "%global _build_id_links none",
        "%description",
        "test group",
    ]
    install = ["%install"]
    for pkg in group:
        epoch, _, vr = pkg.evr.rpartition(":")
        version, _, release = vr.partition("-")
        lines += [f"%package -n {pkg.name}", f"Summary: test package {pkg.name}", f"Version: {version}"]
        lines += [f"Release: {release}", *([f"Epoch: {epoch}"] if epoch else []), *pkg.tags]
        lines += [f"%description -n {pkg.name}", f"test package {pkg.name}", f"%files -n {pkg.name}"]
        lines += list(pkg.files)
        for path in pkg.files:
            install.append(
                f"mkdir -p %{{buildroot}}{Path(path).parent} && echo {pkg.name} > %{{buildroot}}{path}"
            )
    return "\n".join(lines + install) + "\n"


def build_rpms(workdir: Path, packages: list[Rpm]) -> list[Path]:
    """Every package built with rpmbuild: one spec per architecture and distinct names (rpmbuild
    makes all of a spec's subpackages in one run, so hundreds take seconds)."""
    groups: list[tuple[str, list[Rpm]]] = []
    for pkg in packages:
        home = next((g for a, g in groups if a == pkg.arch and all(p.name != pkg.name for p in g)), None)
        if home is None:
            groups.append((pkg.arch, [pkg]))
        else:
            home.append(pkg)
    workdir.mkdir(parents=True, exist_ok=True)
    top = workdir / "rpmbuild"
    for number, (arch, group) in enumerate(groups):
        spec = workdir / f"grp{number}.spec"
        spec.write_text(_spec(group, arch, number))
        subprocess.run(
            [
                "rpmbuild",
                "--define",
                f"_topdir {top}",
                "--target",
                "x86_64" if arch == "noarch" else arch,
                "-bb",
                str(spec),
            ],
            check=True,
            capture_output=True,
        )
    return sorted((top / "RPMS").glob("*/*.rpm"))


def sign_rpms(key: GpgKey, rpms: list[Path]) -> None:
    uid = _uid(key)
    subprocess.run(
        [
            "rpmsign",
            "--define",
            f"_gpg_name {uid}",
            "--define",
            f"_gpg_path {key.home}",
            "--define",
            "__gpg /usr/bin/gpg",
            "--addsign",
            *map(str, rpms),
        ],
        check=True,
        capture_output=True,
        stdin=subprocess.DEVNULL,
    )


def _uid(key: GpgKey) -> str:
    listing = subprocess.run(
        ["gpg", "--homedir", str(key.home), "--with-colons", "--list-keys"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return next(line.split(":")[9] for line in listing.splitlines() if line.startswith("uid:"))


def index(root: Path, key: GpgKey | None) -> None:
    """repodata/ by createrepo_c; repomd.xml.asc by gpg --detach-sign --armor when a key is given."""
    subprocess.run(["createrepo_c", "--quiet", "--no-database", str(root)], check=True, capture_output=True)
    if key is not None:
        sign_repomd(root, key)


def sign_repomd(root: Path, key: GpgKey) -> None:
    repomd = root / "repodata" / "repomd.xml"
    subprocess.run(
        [*key.gpg, "--yes", "--detach-sign", "--armor", "-o", f"{repomd}.asc", str(repomd)],
        check=True,
        capture_output=True,
    )


@dataclass
class RpmRepo:
    """A signed repository folder (``root``) and its rpms by file name."""

    root: Path
    key: GpgKey
    other_key: GpgKey
    files: dict[str, Path] = field(default_factory=dict)


def make_repo(workdir: Path, key: GpgKey, packages: list[Rpm] = PACKAGES, sign: bool = True) -> Path:
    """A repository of ``packages`` under workdir/repo: rpms signed (when ``sign``), repomd.xml signed."""
    built = build_rpms(workdir, packages)
    root = workdir / "repo"
    (root / "Packages").mkdir(parents=True)
    copies = []
    for path in built:
        copies.append(Path(shutil.copy(path, root / "Packages" / path.name)))
    if sign:
        sign_rpms(key, copies)
    index(root, key)
    return root


@dataclass
class Dnf:
    """dnf in a private root: no host repositories, plugins or configuration."""

    folder: Path

    def args(self, repos: dict[str, str], arch: str = "x86_64") -> list[str]:
        reposdir = self.folder / "repos.d"
        reposdir.mkdir(parents=True, exist_ok=True)
        for old in reposdir.glob("*.repo"):
            old.unlink()
        for name, text in repos.items():
            (reposdir / f"{name}.repo").write_text(text)
        conf = self.folder / "dnf.conf"
        conf.write_text("[main]\ngpgcheck=1\ninstall_weak_deps=False\n")
        root = self.folder / "root"
        root.mkdir(exist_ok=True)
        (self.folder / "log").mkdir(exist_ok=True)
        return [
            "dnf",
            f"--installroot={root}",
            f"--config={conf}",
            f"--setopt=reposdir={reposdir}",
            f"--setopt=cachedir={self.folder / 'cache'}",
            f"--setopt=logdir={self.folder / 'log'}",
            f"--forcearch={arch}",
            "--releasever=8",
            "--disableplugin=*",
            "-y",
        ]

    def close(self) -> None:
        """Stop the gpg-agents dnf started for the keys it imported into its cache's pubrings."""
        for pubring in (self.folder / "cache").glob("*/pubring"):
            subprocess.run(["gpgconf", "--homedir", str(pubring), "--kill", "gpg-agent"], capture_output=True)

    def would_install(self, repos: dict[str, str], *packages: str) -> tuple[int, dict[str, str], str]:
        """``dnf install --assumeno``: its exit code, name -> [epoch:]version-release, its output."""
        run = subprocess.run(
            [*self.args(repos), "install", "--assumeno", *packages], capture_output=True, text=True
        )
        out = run.stdout + run.stderr
        found = {}
        table = (
            out.split("Installing:", 1)[-1].split("Transaction Summary", 1)[0] if "Installing:" in out else ""
        )
        for m in re.finditer(r"^ (\S+)\s+(\S+)\s+(\S+)\s+\S+\s+\S+ \S+$", table, re.M):
            found[m[1]] = m[3]
        return run.returncode, found, out
