"""rpm-md repositories as data: ``repomd.xml``, ``primary.xml`` and the packages they list.

Pure: parses bytes it is given (``primary.xml`` as a stream of chunks, so a distribution's
index never sits in memory whole) and describes packages; it fetches, verifies and solves
nothing. Not here: downloads and signature checks (``bundler.rpmsource``), the dependency
closure (``bundler.rpmsolve``, libsolv: the solver dnf itself uses), writing the bundle's
repository (``bundler.rpmrepo``).
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

_COMMON = "{http://linux.duke.edu/metadata/common}"
_REPO = "{http://linux.duke.edu/metadata/repo}"
# rpm's own names for the platform architectures Debian spells otherwise (manifest: platform.arch).
RPM_ARCH = {"amd64": "x86_64", "arm64": "aarch64", "ppc64el": "ppc64le", "s390x": "s390x", "i386": "i686"}
# A package request as dnf takes it: a name, or name=version pins (epoch:version-release or a prefix).
REQUEST_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._+-]*(?:=[0-9A-Za-z.+~^:_-]+)?")
# The package file name rpm-md lists (primary's location href) must stay one safe path segment here.
_FILE_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._+~^-]*\.rpm")


@dataclass(frozen=True)
class Source:
    """An ``rpms.sources`` entry: an rpm-md repository (its URL holds ``repodata/``)."""

    url: str
    gpgkey: Path | None = None  # the repository's OpenPGP key; None: nothing is signed-checked (warned)

    def describe(self) -> str:
        return f"rpm source {self.url}"


@dataclass(frozen=True)
class MetadataFile:
    """One ``<data>`` entry of ``repomd.xml``: where a metadata file is and what it must hash to."""

    type: str  # primary, filelists, other, ...
    href: str  # relative to the repository URL
    checksum_type: str
    checksum: str
    size: int | None  # compressed size, when listed


@dataclass(frozen=True)
class Package:
    """One package ``primary.xml`` lists, enough to fetch, check and name it."""

    name: str
    epoch: str
    version: str
    release: str
    arch: str
    href: str  # location relative to the source URL
    sha256: str
    size: int
    source: int  # index of its source in the manifest

    @property
    def evr(self) -> str:
        """``epoch:version-release`` as rpm prints it (no epoch when it is 0)."""
        head = f"{self.epoch}:" if self.epoch not in ("", "0") else ""
        return f"{head}{self.version}-{self.release}"

    @property
    def nevra(self) -> str:
        return f"{self.name}-{self.evr}.{self.arch}"

    @property
    def file_name(self) -> str:
        """The file name the bundle stores it under: rpm's own ``N-V-R.A.rpm``."""
        return f"{self.name}-{self.version}-{self.release}.{self.arch}.rpm"


class RepoError(ValueError):
    """Metadata that cannot be read as rpm-md."""


def parse_repomd(data: bytes) -> dict[str, MetadataFile]:
    """The metadata files ``repomd.xml`` lists, by type."""
    try:
        # Entity expansion is bounded by the libexpat Python ships (2.4+); no external entities.
        root = ET.fromstring(data)  # noqa: S314
    except ET.ParseError as exc:
        raise RepoError(f"repomd.xml is not XML: {exc}") from None
    if root.tag != f"{_REPO}repomd":
        raise RepoError(f"repomd.xml: the root element is {root.tag}, not repomd")
    out = {}
    for node in root.findall(f"{_REPO}data"):
        kind = node.get("type", "")
        loc = node.find(f"{_REPO}location")
        chk = node.find(f"{_REPO}checksum")
        if loc is None or chk is None or not loc.get("href") or not (chk.text or "").strip():
            raise RepoError(f"repomd.xml: the {kind or 'unnamed'} entry lacks its location or checksum")
        size = node.find(f"{_REPO}size")
        href = str(loc.get("href"))
        if href.startswith("/") or ".." in href.split("/"):
            raise RepoError(f"repomd.xml: the {kind} entry's location {href!r} leaves the repository")
        out[kind] = MetadataFile(
            kind,
            href,
            chk.get("type", "sha256"),
            (chk.text or "").strip().lower(),
            int(size.text or "0") if size is not None and (size.text or "").isdigit() else None,
        )
    return out


def parse_primary(chunks: Iterable[bytes], source: int) -> Iterator[Package]:
    """The packages of a decompressed ``primary.xml``, parsed as the chunks arrive.

    Each ``<package>`` element is dropped once read, so memory holds one package at a time
    plus what the caller keeps.
    """
    parser: ET.XMLPullParser = ET.XMLPullParser(events=("end",))
    for chunk in chunks:
        parser.feed(chunk)
        yield from _packages(parser, source)
    parser.close()
    yield from _packages(parser, source)


def _packages(parser: ET.XMLPullParser, source: int) -> Iterator[Package]:
    try:
        events = list(parser.read_events())
    except ET.ParseError as exc:
        raise RepoError(f"primary.xml is not XML: {exc}") from None
    for event in events:
        node = event[1]  # type: ignore[misc]  # (event, element) pairs for the "end" events asked for
        if not isinstance(node, ET.Element) or node.tag != f"{_COMMON}package":
            continue
        if node.get("type", "rpm") == "rpm":
            yield _package(node, source)
        node.clear()


def _package(node: ET.Element, source: int) -> Package:
    name = (node.findtext(f"{_COMMON}name") or "").strip()
    arch = (node.findtext(f"{_COMMON}arch") or "").strip()
    ver = node.find(f"{_COMMON}version")
    chk = node.find(f"{_COMMON}checksum")
    loc = node.find(f"{_COMMON}location")
    size = node.find(f"{_COMMON}size")
    if not name or ver is None or chk is None or loc is None:
        raise RepoError(f"primary.xml: package {name or '?'} lacks its version, checksum or location")
    href = str(loc.get("href", ""))
    if href.startswith("/") or ".." in href.split("/") or not href.endswith(".rpm"):
        raise RepoError(f"primary.xml: {name}: location {href!r} is not a package inside the repository")
    if chk.get("type") != "sha256":
        raise RepoError(
            f"primary.xml: {name}: checksum type {chk.get('type')!r}; only sha256 is accepted "
            "(regenerate the repository with createrepo_c's default)"
        )
    pkg = Package(
        name=name,
        epoch=ver.get("epoch", "0") or "0",
        version=ver.get("ver", ""),
        release=ver.get("rel", ""),
        arch=arch,
        href=href,
        sha256=(chk.text or "").strip().lower(),
        size=int(size.get("package", "0")) if size is not None else 0,
        source=source,
    )
    if not _FILE_RE.fullmatch(pkg.file_name) or not re.fullmatch(r"[0-9a-f]{64}", pkg.sha256):
        raise RepoError(f"primary.xml: {name}: unusable name, version, arch or checksum")
    return pkg
