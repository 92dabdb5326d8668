"""Debian package metadata, dependency resolution and the bundle's flat apt repository.

Pure logic over text and objects, no I/O; the only user of ``python-debian``
(Debian version ordering and relation syntax are subtle enough that a well-kept
library beats hand-written code: epochs, ``~``, arch qualifiers, restrictions).

- ``parse_release`` reads ``Release`` (small: python-debian's deb822).
- ``parse_packages`` / ``parse_status`` read ``Packages`` indexes and dpkg status files
  as a stream of byte chunks, keeping only the fields resolution, fetching and the
  bundle's own index need. Not deb822: a full deb822 paragraph per stanza (every field,
  descriptions included) made parsing Debian's main index cost ~20 CPU seconds and
  hundreds of MiB; one compiled regular expression per stanza, run by ``re`` in C,
  does the same work at apt-like speed.
- ``Resolver`` computes what apt would install for the requested packages on a target:
  ``Pre-Depends`` and ``Depends`` (and ``Recommends`` when asked), alternatives (what is
  requested, chosen or present first, then the first that exists), versioned relations,
  virtual packages through ``Provides`` (versioned too), ``:any``, pinned
  ``name=version``, apt's candidate rule across sources (pin priority, then the highest
  version), excluded names, a baseline assumed present (by name, at an unknown version)
  or installed (a dpkg status: exact versions), upgrades of present packages that a
  versioned relation needs, and Conflicts/Breaks. It does not backtrack; what it cannot
  satisfy fails with the chain that led there.
- ``flat_repository`` writes ``Packages``, ``Packages.gz`` and ``Release`` for the chosen
  ``.deb`` files, deterministically.

Fetching sources, decompressing indexes and checking signatures happen in ``bundler.aptsource``.
"""

from __future__ import annotations

import email.utils
import functools
import gzip
import hashlib
import io
import re
import sys
from collections.abc import Callable, Iterable, Iterator
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
DEFAULT_PIN = 500  # apt's priority for an ordinary source
# What a stanza keeps beyond the core fields, in the order the bundle's index writes them:
# what apt and dpkg read from an index (relations, Multi-Arch, Essential, Priority, sizes),
# and the first line of Description for people. Long descriptions, checksums other than
# SHA256, tags and homepages are dropped as they stream past.
_EXTRA = (
    "Source",
    "Essential",
    "Protected",
    "Important",
    "Priority",
    "Section",
    "Installed-Size",
    "Multi-Arch",
    "Pre-Depends",
    "Depends",
    "Recommends",
    "Suggests",
    "Enhances",
    "Conflicts",
    "Breaks",
    "Replaces",
    "Provides",
    "Description",
)
_CORE = ("Package", "Version", "Architecture", "Filename", "Size", "SHA256", "Status")
# Field names are matched as Debian's tools write them (dpkg-scanpackages, dak, dpkg):
# a field line and its continuation lines, which relation fields may use.
_FIELD_RE = re.compile(
    r"^(" + "|".join(re.escape(f) for f in _CORE + _EXTRA) + r"):[ \t]*([^\n]*(?:\n[ \t][^\n]*)*)", re.M
)
_EXTRA_SET = frozenset(_EXTRA)


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


def apt_quote(path: str) -> str:
    """A path quoted for an HTTP request exactly as apt's http method quotes it.

    apt (methods/http.cc) sends ``QuoteString(path, "+~ ")``: ``%``, ``+``, ``~``, space,
    control characters and every byte from 0x7F up become ``%xx`` (lowercase hex); everything
    else, ``:`` included, goes as it is. A pool file literally named ``a_1%3a2~rc1.deb``
    is therefore asked for as ``a_1%253a2%7erc1.deb``.
    """
    out = []
    for byte in path.encode("utf-8"):
        if byte <= 0x20 or byte >= 0x7F or byte in b"%+~":
            out.append(f"%{byte:02x}")
        else:
            out.append(chr(byte))
    return "".join(out)


class _Field:
    """A kept control field read as an attribute: ``pkg.depends`` is ``pkg.get("Depends")``."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __get__(self, pkg: Package, owner: type | None = None) -> str:
        return pkg.get(self.name)


@dataclass(frozen=True, slots=True)
class Package:
    """One binary package: a ``Packages`` stanza (or a dpkg status entry), compactly.

    ``control`` holds the other kept fields as ``\\nName: value`` lines (see ``_EXTRA``);
    slots and one string per package keep Debian's ~65,000 stanzas small in memory.
    """

    name: str
    version: str
    arch: str
    filename: str = ""  # relative to the source's base URL; empty for an installed package
    size: int = 0
    sha256: str = ""
    source_url: str = ""  # the repository base the filename is relative to
    control: str = field(default="", compare=False, repr=False)
    pin: int = DEFAULT_PIN  # apt's priority of the source (NotAutomatic: 1, ButAutomaticUpgrades: 100)

    def get(self, name: str) -> str:
        """A kept field's value, or "" when the stanza has none."""
        key = f"\n{name}: "
        start = self.control.find(key)
        if start < 0:
            return ""
        start += len(key)
        end = self.control.find("\n", start)
        return self.control[start : None if end < 0 else end]

    depends = _Field("Depends")
    pre_depends = _Field("Pre-Depends")
    provides = _Field("Provides")
    multi_arch = _Field("Multi-Arch")
    priority = _Field("Priority")

    @property
    def url(self) -> str:
        return f"{self.source_url.rstrip('/')}/{apt_quote(self.filename)}"

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


def _pieces(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """What lies between blank lines in a deb822 stream given as byte chunks cut anywhere:
    every stanza, and an empty piece for each extra blank line (so offsets can be counted)."""
    rest = b""
    for chunk in chunks:
        data = rest + chunk if rest else chunk
        cut = data.rfind(b"\n\n")
        if cut < 0:
            rest = data
            continue
        rest = data[cut + 2 :]
        yield from data[:cut].split(b"\n\n")
    yield rest


def _stanzas(chunks: Iterable[bytes]) -> Iterator[str]:
    """The stanzas of a deb822 stream given as byte chunks, one string each."""
    for piece in _pieces(chunks):
        if piece.strip():
            yield piece.decode("utf-8", "replace")


def _fields(stanza: str) -> tuple[dict[str, str], str]:
    """The core fields of one stanza, and the kept others as ``control`` text."""
    core: dict[str, str] = {}
    control = []
    for name, value in _FIELD_RE.findall(stanza):
        if name in _EXTRA_SET:
            if name == "Description":
                value = value.partition("\n")[0]
            elif "\n" in value:  # a folded relation field: one line
                value = " ".join(part.strip() for part in value.split("\n"))
            control.append(f"\n{name}: {value}")
        else:
            core[name] = value
    return core, "".join(control)


def parse_packages(chunks: Iterable[bytes], source_url: str, pin: int = DEFAULT_PIN) -> Iterator[Package]:
    """Every stanza of a ``Packages`` stream that names a file with a SHA256, as it streams."""
    intern = sys.intern
    for stanza in _stanzas(chunks):
        core, control = _fields(stanza)
        try:
            yield Package(
                name=intern(core["Package"]),
                version=core["Version"],
                arch=intern(core["Architecture"]),
                filename=core["Filename"],
                size=int(core["Size"]),
                sha256=core["SHA256"].lower(),
                source_url=source_url,
                control=control,
                pin=pin,
            )
        except (KeyError, ValueError):
            continue  # not a downloadable package (no file, size or SHA256): apt skips it too


def parse_status(chunks: Iterable[bytes]) -> list[Package]:
    """The installed packages of a dpkg status file (``Status: … installed`` and the like).

    Packages dpkg knows only by their configuration files or as not installed are left out.
    """
    out = []
    for stanza in _stanzas(chunks):
        core, control = _fields(stanza)
        state = core.get("Status", "").split()
        if not {"Package", "Version", "Architecture"} <= core.keys() or len(state) != 3:
            continue
        if state[2] in ("not-installed", "config-files"):
            continue
        out.append(Package(core["Package"], core["Version"], core["Architecture"], control=control))
    return out


@functools.lru_cache(maxsize=65536)
def _relations(text: str) -> list[list[dict[str, Any]]]:
    """OR-groups of relations (``name``, ``version`` (op, ver), ``archqual``, ``arch``); cached, read-only."""
    if not text.strip():
        return []
    return [[dict(rel) for rel in group] for group in deb822.PkgRelation.parse_relations(text)]


def _satisfies(version: str | None, constraint: tuple[str, str] | None) -> bool:
    if constraint is None:
        return True
    if version is None:
        return False
    op, wanted = constraint
    return bool(_OPS[op](compare_versions(version, wanted)))


def _show(rel: dict[str, Any]) -> str:
    text = rel["name"] + (f":{rel['archqual']}" if rel.get("archqual") else "")
    if rel.get("version"):
        text += f" ({rel['version'][0]} {rel['version'][1]})"
    return text


# What the first pass over an index reads of each stanza: enough to catalogue it by name.
_SCAN_RE = re.compile(
    rb"^(Package|Architecture|Provides|Priority|Filename|SHA256):[ \t]*([^\n]*(?:\n[ \t][^\n]*)*)", re.M
)


@dataclass
class Catalog:
    """Every source's packages for one architecture, by name, each materialised only when asked.

    A reference is whatever ``load`` turns into a ``Package``: the package itself for an
    in-memory catalog (``Catalog.of``), or where its stanza sits in a spill file of
    decompressed indexes (``bundler.aptsource``): as apt keeps its lists on disk and reads
    only what a resolution touches, so a 65,000-package archive costs a few MiB, not hundreds.
    """

    load: Callable[[Any], Package] = field(default=lambda ref: ref)
    refs: dict[str, list[Any]] = field(default_factory=dict)
    provides: dict[str, list[tuple[Any, str | None]]] = field(
        default_factory=dict
    )  # virtual -> (ref, version)
    required: set[str] = field(default_factory=set)  # names some version of which is Priority: required

    def add(self, name: str, ref: Any, provides: str = "", required: bool = False) -> None:
        self.refs.setdefault(name, []).append(ref)
        for group in _relations(provides):
            for rel in group:
                ver = rel["version"][1] if rel.get("version") and rel["version"][0] == "=" else None
                self.provides.setdefault(rel["name"], []).append((ref, ver))
        if required:
            self.required.add(name)

    @classmethod
    def of(cls, packages: Iterable[Package], arch: str) -> Catalog:
        """An in-memory catalog of ``packages`` (those for ``arch`` and ``all``)."""
        catalog = cls()
        for pkg in packages:
            if pkg.arch in (arch, "all"):
                catalog.add(pkg.name, pkg, pkg.provides, pkg.priority == "required")
        return catalog


def _scanned(stanza: bytes, arch: str) -> tuple[str, str, bool] | None:
    fields = dict(_SCAN_RE.findall(stanza))
    name = fields.get(b"Package")
    if not name or b"Filename" not in fields or b"SHA256" not in fields:
        return None  # not a downloadable package: apt skips it too
    if fields.get(b"Architecture", b"").decode() not in (arch, "all"):
        return None
    return (
        name.decode(),
        fields.get(b"Provides", b"").decode("utf-8", "replace"),
        fields.get(b"Priority") == b"required",
    )


def scan_packages(
    chunks: Iterable[bytes], arch: str, start: int = 0
) -> Iterator[tuple[int, int, str, str, bool]]:
    """First pass over a ``Packages`` stream: (offset, length, name, Provides, required) of each
    downloadable stanza for ``arch`` or ``all``, offsets counted from ``start``; ``parse_stanza``
    reads one in full later."""
    offset = start
    for piece in _pieces(chunks):
        found = _scanned(piece, arch) if piece.strip() else None
        if found:
            yield (offset, len(piece), *found)
        offset += len(piece) + 2


def parse_stanza(stanza: bytes, source_url: str, pin: int = DEFAULT_PIN) -> Package | None:
    """One ``Packages`` stanza as a Package; None when it names no file with a size and SHA256."""
    return next(parse_packages([stanza], source_url, pin), None)


@dataclass
class Resolution:
    """The packages chosen, in a stable order, and why each was chosen."""

    packages: list[Package]
    reasons: dict[str, str]  # name -> "requested" or the package whose relation needed it


_Provider = tuple[Package, "str | None"]


def _index_provides(index: dict[str, list[_Provider]], pkg: Package) -> None:
    for group in _relations(pkg.provides):
        for rel in group:
            ver = rel["version"][1] if rel.get("version") and rel["version"][0] == "=" else None
            index.setdefault(rel["name"], []).append((pkg, ver))


class Resolver:
    """What apt would install for some requested packages on one target, over all sources' packages.

    The target is described by ``baseline`` (names present at an unknown version: the
    ``Priority: required`` set of a minimal system), ``installed`` (a dpkg status: exact
    versions, their Provides and relations) and ``exclude`` (names never shipped, taken as
    satisfying every relation on them).
    """

    def __init__(
        self,
        packages: Iterable[Package] | Catalog,
        arch: str,
        baseline: Iterable[str] = (),
        exclude: Iterable[str] = (),
        installed: Iterable[Package] = (),
        recommends: bool = False,
    ) -> None:
        self.arch = arch
        self.catalog = packages if isinstance(packages, Catalog) else Catalog.of(packages, arch)
        self._objects: dict[Any, Package] = {}  # ref -> its one Package object (identity matters below)
        self._by_name: dict[str, list[Package]] = {}  # materialised, in apt's candidate order
        self._providers: dict[str, list[_Provider]] = {}  # materialised
        self.assumed = set(baseline)
        self.exclude = set(exclude)
        self.installed: dict[str, Package] = {}
        for pkg in installed:
            # A foreign-architecture copy counts only when there is no native one.
            if pkg.arch in (arch, "all") or pkg.name not in self.installed:
                self.installed[pkg.name] = pkg
        self.installed_providers: dict[str, list[_Provider]] = {}
        self.rdeps: dict[str, list[Package]] = {}  # name -> installed packages with a relation on it
        for pkg in self.installed.values():
            _index_provides(self.installed_providers, pkg)
            for group in _relations(pkg.pre_depends) + _relations(pkg.depends) + self._negative(pkg):
                for rel in group:
                    self.rdeps.setdefault(rel["name"], []).append(pkg)
        self.recommends = recommends
        self.chosen: dict[str, Package] = {}
        self.reasons: dict[str, str] = {}
        self._expanded: set[str] = set()

    def required_baseline(self) -> set[str]:
        """Names of ``Priority: required`` packages: what a minimal target already has."""
        return set(self.catalog.required)

    def _pkg(self, ref: Any) -> Package:
        pkg = self._objects.get(ref)
        if pkg is None:
            pkg = self._objects[ref] = self.catalog.load(ref)
        return pkg

    def providers(self, name: str) -> list[_Provider]:
        """The source packages that provide ``name``, with the version they provide (if any)."""
        out = self._providers.get(name)
        if out is None:
            out = self._providers[name] = [
                (self._pkg(ref), ver) for ref, ver in self.catalog.provides.get(name, [])
            ]
        return out

    @staticmethod
    def _negative(pkg: Package) -> list[list[dict[str, Any]]]:
        return _relations(pkg.get("Conflicts")) + _relations(pkg.get("Breaks"))

    @staticmethod
    def _arch_ok(pkg: Package, rel: dict[str, Any]) -> bool:
        # "name:any" is met only by a package that declares "Multi-Arch: allowed" (Debian policy 7.1).
        return rel.get("archqual") != "any" or pkg.multi_arch == "allowed"

    def _real(self, name: str) -> list[Package]:
        """The source packages named ``name`` in apt's candidate order: pin priority, then version."""
        candidates = self._by_name.get(name)
        if candidates is None:
            candidates = [self._pkg(ref) for ref in self.catalog.refs.get(name, [])]
            # A stable sort: the same version from two sources keeps the first source's copy first.
            candidates.sort(key=lambda p: (p.pin, Version(p.version)), reverse=True)
            self._by_name[name] = candidates
        return candidates

    def _candidates(self, rel: dict[str, Any]) -> list[Package]:
        """Real packages (apt's order), then providers, that satisfy one relation."""
        out = [
            p
            for p in self._real(rel["name"])
            if _satisfies(p.version, rel.get("version")) and self._arch_ok(p, rel)
        ]
        for pkg, provided in self.providers(rel["name"]):
            if self._provides(provided, rel) and self._arch_ok(pkg, rel):
                out.append(pkg)
        return out

    @staticmethod
    def _provides(provided: str | None, rel: dict[str, Any]) -> bool:
        """Whether a ``Provides`` entry meets ``rel`` (unversioned ones meet unversioned relations only)."""
        return rel.get("version") is None or (provided is not None and _satisfies(provided, rel["version"]))

    def _current(self, name: str) -> Package | None:
        """The version the target will have of ``name``: chosen from the sources, else installed."""
        return self.chosen.get(name) or self.installed.get(name)

    def _satisfied(self, rel: dict[str, Any]) -> bool:
        name, wanted = rel["name"], rel.get("version")
        if name in self.exclude:
            return True
        pkg = self._current(name)
        if pkg is not None:
            if _satisfies(pkg.version, wanted) and self._arch_ok(pkg, rel):
                return True
        elif name in self.assumed and wanted is None:
            return True  # present at a version nobody knows: only an unversioned relation is met
        for prov, provided in self.providers(name):
            if (
                self.chosen.get(prov.name) is prov
                and self._provides(provided, rel)
                and self._arch_ok(prov, rel)
            ):
                return True
            if (
                prov.name in self.assumed
                and self._current(prov.name) is None
                and self._provides(provided, rel)
            ):
                return True  # Provides of a baseline package count
        return any(
            self._current(prov.name) is prov and self._provides(provided, rel)
            for prov, provided in self.installed_providers.get(name, [])
        )

    def _applies(self, rel: dict[str, Any]) -> bool:
        arches = rel.get("arch")
        if not arches:
            return True
        enabled = [a for a in arches if a.enabled]
        if enabled:
            return any(a.arch == self.arch for a in enabled)
        return all(a.arch != self.arch for a in arches)

    def _path(self, name: str) -> list[str]:
        """``[requested, …, name]``: why ``name`` is in the closure."""
        names = [name]
        reason = self.reasons.get(name, "requested")
        while reason != "requested" and reason not in names:
            names.append(reason)
            reason = self.reasons.get(reason, "requested")
        return names[::-1]

    def _mark(self, pkg: Package, reason: str, chain: list[str]) -> bool:
        """Choose ``pkg``; False when it was chosen already."""
        earlier = self.chosen.get(pkg.name)
        if earlier is pkg:
            return False
        if earlier is not None:
            raise ResolveError(
                " → ".join([*chain, pkg.label()]) + f": conflicts with {earlier.label()}, chosen earlier"
            )
        self.chosen[pkg.name] = pkg
        self.reasons[pkg.name] = reason
        return True

    def _add(self, pkg: Package, reason: str, chain: list[str]) -> None:
        if self._mark(pkg, reason, chain):
            self._expand(pkg, chain)

    def _expand(self, pkg: Package, chain: list[str]) -> None:
        """Choose what ``pkg``'s relations need (depth first, as apt's MarkInstall goes)."""
        if pkg.name in self._expanded:
            return
        self._expanded.add(pkg.name)
        path = [*chain, pkg.name]
        for group in _relations(pkg.pre_depends) + _relations(pkg.depends):
            self._need(group, path, optional=False)
        if self.recommends:
            for group in _relations(pkg.get("Recommends")):
                self._need(group, path, optional=True)
        if pkg.name in self.installed:
            self._keep_dependents(pkg, path)

    def _need(self, group: list[dict[str, Any]], path: list[str], optional: bool) -> None:
        group = [rel for rel in group if self._applies(rel)]
        if not group or any(self._satisfied(rel) for rel in group):
            return
        # Nothing in the group is chosen, requested or present: take the first alternative that
        # exists, as apt does, and its candidate (for a versioned relation on a present package:
        # the best version that satisfies it, which the target then upgrades to).
        viable = next((cands for cands in map(self._candidates, group) if cands), None)
        if viable is None:
            if optional:
                return  # apt leaves out a recommendation it cannot install
            wanted = " | ".join(_show(rel) for rel in group)
            have = [self._current(r["name"]) for r in group]
            hint = "".join(f" (the target has {p.label()})" for p in have if p is not None)
            raise ResolveError(" → ".join([*path, wanted]) + " → not found in any source" + hint)
        if not optional:
            self._add(viable[0], path[-1], path)
            return
        saved = dict(self.chosen), dict(self.reasons), set(self._expanded)
        try:
            self._add(viable[0], path[-1], path)
        except ResolveError:  # a recommendation that cannot be installed is skipped, as apt does
            self.chosen, self.reasons, self._expanded = saved

    def _keep_dependents(self, pkg: Package, path: list[str]) -> None:
        """``pkg`` upgrades an installed package: upgrade installed ones that the change would break."""
        for dependent in self.rdeps.get(pkg.name, []):
            if dependent.name in self.chosen or not self._broken(dependent):
                continue
            fix = next(iter(self._real(dependent.name)), None)
            if fix is None:
                raise ResolveError(
                    " → ".join(path)
                    + f": upgrading to {pkg.label()} breaks {dependent.label()} on the target, "
                    f"and no source has another {dependent.name}"
                )
            self._add(fix, pkg.name, path)

    def _broken(self, pkg: Package) -> bool:
        """Whether an installed package's relations fail once the chosen packages are installed."""
        for group in _relations(pkg.pre_depends) + _relations(pkg.depends):
            group = [rel for rel in group if self._applies(rel)]
            if group and not any(self._satisfied(rel) for rel in group):
                return True
        return any(self._hits(pkg, rel) for group in self._negative(pkg) for rel in group)

    def _hits(self, pkg: Package, rel: dict[str, Any]) -> list[Package]:
        """What a Conflicts/Breaks relation of ``pkg`` meets on the target-to-be (never ``pkg`` itself)."""
        if not self._applies(rel):
            return []
        name, wanted = rel["name"], rel.get("version")
        out = []
        other = self._current(name)
        if other is not None:
            if other.name != pkg.name and _satisfies(other.version, wanted):
                out.append(other)
        elif name in self.assumed and wanted is None and name != pkg.name:
            out.append(Package(name, "(baseline)", self.arch))
        for prov, provided in self.providers(name):
            if prov.name != pkg.name and self.chosen.get(prov.name) is prov and self._provides(provided, rel):
                out.append(prov)
        for prov, provided in self.installed_providers.get(name, []):
            if prov.name != pkg.name and self._current(prov.name) is prov and self._provides(provided, rel):
                out.append(prov)
        return out

    def _where(self, pkg: Package) -> str:
        if self.chosen.get(pkg.name) is pkg:
            return f"{pkg.label()} ({' → '.join(self._path(pkg.name))})"
        return f"{pkg.label()} (on the target)"

    def _conflicts(self) -> Iterator[tuple[Package, str, dict[str, Any], Package]]:
        """Each Conflicts/Breaks met on the target-to-be: (package, kind, relation, what it meets)."""
        kept = [p for p in self.installed.values() if p.name not in self.chosen]
        for pkg in [*self.chosen.values(), *kept]:
            for kind in ("Conflicts", "Breaks"):
                for group in _relations(pkg.get(kind)):
                    for rel in group:
                        for other in self._hits(pkg, rel):
                            yield pkg, kind, rel, other

    def _check_conflicts(self) -> None:
        """Refuse Conflicts/Breaks among the chosen packages and against the target's, as apt
        would; an installed package that a source version no longer conflicts with is upgraded."""
        while any(self._settle(*conflict) for conflict in self._conflicts()):
            pass  # an upgrade changed the target-to-be: look again

    def _meets(self, pkg: Package, rel: dict[str, Any]) -> bool:
        """Whether ``pkg`` itself (by name or by a Provides) is met by a Conflicts/Breaks ``rel``."""
        if pkg.name == rel["name"] and _satisfies(pkg.version, rel.get("version")):
            return True
        return any(
            prov is pkg and self._provides(provided, rel) for prov, provided in self.providers(rel["name"])
        )

    def _settle(self, pkg: Package, kind: str, rel: dict[str, Any], other: Package) -> bool:
        """Upgrade the installed side of one conflict to a source version free of it (True);
        False when both sides are the target's own; otherwise refuse with both chains."""
        pkg_chosen = self.chosen.get(pkg.name) is pkg
        other_chosen = self.chosen.get(other.name) is other
        if not pkg_chosen and not other_chosen:
            return False  # the target's state before this bundle is not this bundle's business
        if pkg_chosen and self.installed.get(other.name) is other:
            fix = next((f for f in self._real(other.name) if not self._meets(f, rel)), None)
            if fix is not None:
                self._add(fix, pkg.name, self._path(pkg.name))
                return True
        if other_chosen and self.installed.get(pkg.name) is pkg:
            fix = next(
                (
                    f
                    for f in self._real(pkg.name)
                    if not any(
                        other is hit for group in self._negative(f) for r in group for hit in self._hits(f, r)
                    )
                ),
                None,
            )
            if fix is not None:
                self._add(fix, other.name, self._path(other.name))
                return True
        raise ResolveError(
            f"{self._where(pkg)} and {self._where(other)} cannot be installed together: "
            f"{pkg.name} {kind}: {_show(rel)}"
        )

    def resolve(self, requests: Iterable[str]) -> Resolution:
        """Choose the closure of ``requests`` (``name`` or ``name=version``).

        Every request is chosen before any dependency is followed (as ``apt-get install``
        marks the command line first), so a package that is requested stays "requested",
        and an alternative that is requested is the one taken, whatever the order.

        Raises:
            ResolveError: a request or one of its dependencies cannot be met, or chosen
                packages conflict with each other or with the target.
        """
        marked = []
        for request in requests:
            name, _, version = request.partition("=")
            rel: dict[str, Any] = {"name": name, "version": ("=", version) if version else None}
            candidates = self._candidates(rel)
            if not candidates:
                known = sorted({p.version for p in self._real(name)}, key=Version, reverse=True)
                hint = f" (available: {', '.join(known)})" if known else " (not found in any source)"
                raise ResolveError(f"{request}{hint}")
            self._mark(candidates[0], "requested", [])
            marked.append(candidates[0])
        for pkg in marked:
            self._expand(pkg, [])
        self._check_conflicts()
        packages = sorted(self.chosen.values(), key=lambda p: (p.name, Version(p.version), p.arch))
        return Resolution(packages, dict(self.reasons))


def _stanza(pkg: Package) -> str:
    """The package's kept fields with ``Filename`` pointing into the flat repository."""
    return (
        f"Package: {pkg.name}\nVersion: {pkg.version}\nArchitecture: {pkg.arch}{pkg.control}\n"
        f"Filename: ./{pkg.deb_name}\nSize: {pkg.size}\nSHA256: {pkg.sha256}\n"
    )


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
