"""Debian package metadata, dependency resolution and the bundle's flat apt repository.

Pure logic over text and objects, no I/O; the only user of ``python-debian``
(deb822 parsing and Debian version ordering are subtle enough that a
well-kept library beats hand-written code: epochs, ``~``, relation syntax).

- ``parse_release`` / ``parse_packages`` read ``Release`` and ``Packages``.
- ``Resolver`` computes the closure of requested packages the way apt's
  simple cases go: ``Pre-Depends`` and ``Depends``, alternatives (first
  satisfiable, preferring what is already chosen or present), versioned
  relations, virtual packages through ``Provides`` (versioned too), ``:any``,
  pinned ``name=version``, excluded names and a baseline assumed present.
  It does not backtrack; a relation it cannot satisfy fails with the chain
  that led there.
- ``flat_repository`` writes ``Packages``, ``Packages.gz`` and ``Release``
  for the chosen ``.deb`` files, deterministically.

Fetching sources and checking their signatures happen in ``bundler.aptsource``.
"""

from __future__ import annotations

import email.utils
import gzip
import hashlib
import io
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from debian import deb822
from debian.debian_support import Version, version_compare

_OPS = {
    "<<": lambda c: c < 0,
    "<=": lambda c: c <= 0,
    "=": lambda c: c == 0,
    ">=": lambda c: c >= 0,
    ">>": lambda c: c > 0,
}


@dataclass(frozen=True)
class Source:
    """One apt source as the manifest names it."""

    url: str
    suite: str
    components: tuple[str, ...] = ()
    keyring: Path | None = None
    trusted: bool = False
    flat: bool = False

    @property
    def dist_url(self) -> str:
        base = self.url.rstrip("/")
        if self.flat:
            suite = self.suite.strip("/")
            return base if suite in ("", ".") else f"{base}/{suite}"
        return f"{base}/dists/{self.suite}"

    def describe(self) -> str:
        return f"{self.url} {self.suite}" + (f" {' '.join(self.components)}" if self.components else "")


class ResolveError(ValueError):
    """A requested package cannot be installed from the sources; the message shows the chain."""


@dataclass(frozen=True)
class Package:
    """One binary package stanza from a ``Packages`` index."""

    name: str
    version: str
    arch: str
    filename: str  # relative to the source's base URL
    size: int
    sha256: str
    depends: str = ""
    pre_depends: str = ""
    provides: str = ""
    priority: str = ""
    multi_arch: str = ""
    source_url: str = ""  # the repository base the filename is relative to
    stanza: str = field(default="", compare=False, repr=False)

    @property
    def url(self) -> str:
        return f"{self.source_url.rstrip('/')}/{self.filename}"

    @property
    def deb_name(self) -> str:
        """``name_version_arch.deb`` as dpkg names files (the epoch is left out)."""
        version = self.version.split(":", 1)[-1]
        return f"{self.name}_{version}_{self.arch}.deb"

    def label(self) -> str:
        return f"{self.name} {self.version} ({self.arch})"


def compare_versions(a: str, b: str) -> int:
    """Debian ordering of two version strings (negative, zero, positive)."""
    return int(version_compare(a, b))


def parse_release(text: str) -> dict[str, Any]:
    """A ``Release`` file: its fields, and ``sha256`` as {path: (size, hex)}."""
    release = deb822.Release(text)
    files = {}
    for entry in release.get("SHA256", []):
        files[entry["name"]] = (int(entry["size"]), entry["sha256"])
    fields = {k: v for k, v in release.items() if k not in ("SHA256", "SHA1", "MD5Sum", "SHA512")}
    return {"fields": fields, "sha256": files}


def parse_packages(text: str, source_url: str) -> list[Package]:
    """Every stanza of a ``Packages`` index that names a file with a SHA256."""
    out = []
    for stanza in deb822.Packages.iter_paragraphs(io.StringIO(text), use_apt_pkg=False):
        if not all(k in stanza for k in ("Package", "Version", "Architecture", "Filename", "Size", "SHA256")):
            continue
        out.append(
            Package(
                name=stanza["Package"],
                version=stanza["Version"],
                arch=stanza["Architecture"],
                filename=stanza["Filename"],
                size=int(stanza["Size"]),
                sha256=stanza["SHA256"].lower(),
                depends=stanza.get("Depends", ""),
                pre_depends=stanza.get("Pre-Depends", ""),
                provides=stanza.get("Provides", ""),
                priority=stanza.get("Priority", ""),
                multi_arch=stanza.get("Multi-Arch", ""),
                source_url=source_url,
                stanza=stanza.dump(),
            )
        )
    return out


def _relations(text: str) -> list[list[dict[str, Any]]]:
    """OR-groups of relations (``name``, ``version`` (op, ver), ``archqual``, ``arch``)."""
    if not text.strip():
        return []
    return [[dict(rel) for rel in group] for group in deb822.PkgRelation.parse_relations(text)]


def _satisfies(version: str, constraint: tuple[str, str] | None) -> bool:
    if constraint is None:
        return True
    op, wanted = constraint
    return bool(_OPS[op](compare_versions(version, wanted)))


def _show(rel: dict[str, Any]) -> str:
    text = rel["name"] + (f":{rel['archqual']}" if rel.get("archqual") else "")
    if rel.get("version"):
        text += f" ({rel['version'][0]} {rel['version'][1]})"
    return text


@dataclass
class Resolution:
    """The packages chosen, in a stable order, and why each was chosen."""

    packages: list[Package]
    reasons: dict[str, str]  # name -> "requested" or the package that needed it


class Resolver:
    """Dependency closure over the packages of all sources, for one architecture."""

    def __init__(
        self,
        packages: Iterable[Package],
        arch: str,
        baseline: Iterable[str] = (),
        exclude: Iterable[str] = (),
    ) -> None:
        self.arch = arch
        self.by_name: dict[str, list[Package]] = {}
        self.providers: dict[str, list[tuple[Package, str | None]]] = {}
        for pkg in packages:
            if pkg.arch not in (arch, "all"):
                continue
            self.by_name.setdefault(pkg.name, []).append(pkg)
            for group in _relations(pkg.provides):
                for rel in group:
                    ver = rel["version"][1] if rel.get("version") and rel["version"][0] == "=" else None
                    self.providers.setdefault(rel["name"], []).append((pkg, ver))
        for candidates in self.by_name.values():
            # Newest first; the same version from two sources keeps the first source's copy.
            candidates.sort(key=lambda p: Version(p.version), reverse=True)
        self.present = set(baseline) | set(exclude)
        self.chosen: dict[str, Package] = {}
        self.reasons: dict[str, str] = {}

    def required_baseline(self) -> set[str]:
        """Names of ``Priority: required`` packages: what a minimal target already has."""
        return {name for name, pkgs in self.by_name.items() if any(p.priority == "required" for p in pkgs)}

    @staticmethod
    def _arch_ok(pkg: Package, rel: dict[str, Any]) -> bool:
        # "name:any" is met only by a package that declares "Multi-Arch: allowed" (Debian policy 7.1).
        return rel.get("archqual") != "any" or pkg.multi_arch == "allowed"

    def _candidates(self, rel: dict[str, Any]) -> list[Package]:
        """Real packages (newest first), then providers, that satisfy one relation."""
        out = [
            p
            for p in self.by_name.get(rel["name"], [])
            if _satisfies(p.version, rel.get("version")) and self._arch_ok(p, rel)
        ]
        for pkg, provided in self.providers.get(rel["name"], []):
            if self._provides(provided, rel) and self._arch_ok(pkg, rel):
                out.append(pkg)
        return out

    @staticmethod
    def _provides(provided: str | None, rel: dict[str, Any]) -> bool:
        """Whether a ``Provides`` entry meets ``rel`` (unversioned ones meet unversioned relations only)."""
        return rel.get("version") is None or (provided is not None and _satisfies(provided, rel["version"]))

    def _satisfied(self, rel: dict[str, Any]) -> bool:
        if rel["name"] in self.present:
            return True
        chosen = self.chosen.get(rel["name"])
        if (
            chosen is not None
            and _satisfies(chosen.version, rel.get("version"))
            and self._arch_ok(chosen, rel)
        ):
            return True
        return any(
            self.chosen.get(pkg.name) is pkg and self._provides(provided, rel)
            for pkg, provided in self.providers.get(rel["name"], [])
        )

    def _applies(self, rel: dict[str, Any]) -> bool:
        arches = rel.get("arch")
        if not arches:
            return True
        enabled = [a for a in arches if a.enabled]
        if enabled:
            return any(a.arch == self.arch for a in enabled)
        return all(a.arch != self.arch for a in arches)

    def _add(self, pkg: Package, reason: str, chain: list[str]) -> None:
        if pkg.name in self.chosen:
            if self.chosen[pkg.name] is not pkg:
                raise ResolveError(
                    " → ".join([*chain, pkg.label()])
                    + f": conflicts with {self.chosen[pkg.name].label()}, chosen earlier"
                )
            return
        self.chosen[pkg.name] = pkg
        self.reasons[pkg.name] = reason
        for group in _relations(pkg.pre_depends) + _relations(pkg.depends):
            group = [rel for rel in group if self._applies(rel)]
            if not group or any(self._satisfied(rel) for rel in group):
                continue
            # Nothing in the group is chosen or present yet: take the first alternative that
            # exists, as apt does, and its newest candidate.
            viable = next((cands for cands in map(self._candidates, group) if cands), None)
            if viable is None:
                wanted = " | ".join(_show(rel) for rel in group)
                raise ResolveError(" → ".join([*chain, pkg.name, wanted]) + " → not found in any source")
            self._add(viable[0], pkg.name, [*chain, pkg.name])

    def resolve(self, requests: Iterable[str]) -> Resolution:
        """Choose the closure of ``requests`` (``name`` or ``name=version``).

        Raises:
            ResolveError: a request or one of its dependencies cannot be met.
        """
        for request in requests:
            name, _, version = request.partition("=")
            rel: dict[str, Any] = {"name": name, "version": ("=", version) if version else None}
            candidates = self._candidates(rel)
            if not candidates:
                known = sorted({p.version for p in self.by_name.get(name, [])}, key=Version, reverse=True)
                hint = f" (available: {', '.join(known)})" if known else " (not found in any source)"
                raise ResolveError(f"{request}{hint}")
            self._add(candidates[0], "requested", [])
        packages = sorted(self.chosen.values(), key=lambda p: (p.name, Version(p.version), p.arch))
        return Resolution(packages, dict(self.reasons))


def _stanza(pkg: Package) -> str:
    """The package's own stanza with ``Filename`` pointing into the flat repository."""
    para = deb822.Packages(pkg.stanza)
    para["Filename"] = f"./{pkg.deb_name}"
    return para.dump().rstrip("\n") + "\n"


def flat_repository(packages: list[Package], arch: str, date: int = 0) -> dict[str, bytes]:
    """``Packages``, ``Packages.gz`` and ``Release`` of a flat repository holding ``packages``.

    ``date`` (seconds since the epoch: the build's SOURCE_DATE_EPOCH) stamps ``Release``,
    which apt expects to carry a ``Date``; no clock is read, so the output is deterministic.
    """
    text = "\n".join(_stanza(pkg) for pkg in packages).encode()
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0, compresslevel=9) as gz:
        gz.write(text)
    packages_gz = buf.getvalue()
    lines = [
        "Origin: airbundle",
        "Label: airbundle",
        "Suite: bundle",
        "Codename: bundle",
        f"Date: {email.utils.formatdate(date, usegmt=True)}",
        f"Architectures: {arch} all",
        "Components: .",
        "Description: packages carried by an airbundle bundle",
        "SHA256:",
    ]
    for name, data in (("Packages", text), ("Packages.gz", packages_gz)):
        lines.append(f" {hashlib.sha256(data).hexdigest()} {len(data):>16} {name}")
    return {"Packages": text, "Packages.gz": packages_gz, "Release": ("\n".join(lines) + "\n").encode()}
