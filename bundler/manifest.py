"""Load and validate bundle manifests (``manifests/NAME.yaml``); the only user of PyYAML.

Validation is strict and complete before anything is fetched: unknown keys,
wrong types, bad names and versions, duplicate keys, non-safe YAML tags,
missing payload files, paths escaping the manifest's base folder and known
placeholders (an all-zero sha256, a ``PLACEHOLDER`` comment) are each a problem
naming the file and line. Every section and list item is checked even after one
fails, so one ``ManifestError`` (exit 2) lists them all: a manifest with three
missing inputs takes one run, not three.

Paths in a manifest are relative to its base folder: the folder holding the
manifest or, for a manifest kept in a folder named ``manifests`` (the
project layout), that folder's parent, so ``payloads/…`` and ``scripts/…``
name the project's own folders. Nothing here fetches or writes.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bundler import files as userfiles
from bundler import k0simages, kinds, rkeimages, versions
from bundler.debs import Source
from bundler.errors import InputError, ManifestError, several
from bundler.lock import (
    IMAGES_MODES,
    ITEM_NAME_RE,
    K8S_VERSION_RE,
    NAME_RE,
    NODE_NAME_RE,
    REGISTRY_RE,
    STEP_FIXES,
    STEP_ON,
    STEP_WHEN,
    check_dest,
    check_member_path,
)
from bundler.oci import ImageFormatError, Reference, parse_reference
from bundler.rpms import REQUEST_RE as RPM_REQUEST_RE
from bundler.rpms import Source as RpmSource

API_VERSION = "airbundle/v1"
MAX_MANIFEST_BYTES = 1024 * 1024
SHA256_RE = re.compile(r"[0-9a-f]{64}")
PLACEHOLDER_SHA256 = "0" * 64  # what a manifest holds until someone copies the real digest over it
_PLACEHOLDER_COMMENT = re.compile(r"#.*\bPLACEHOLDER\b")
ARCHES = ("amd64", "arm64", "armhf", "i386", "ppc64el", "s390x", "riscv64")
MODES = ("0644", "0755")
NOT_YET: dict[str, str] = {}
PACKAGE_RE = re.compile(r"[a-z0-9][a-z0-9.+-]+(?:=[0-9A-Za-z.+~:-]+)?")
IMAGE_SOURCES = ("daemon", "registry")


@dataclass(frozen=True)
class Platform:
    """The target the bundle is for."""

    os: str
    codename: str
    arch: str


@dataclass(frozen=True)
class BinarySpec:
    """A pinned single binary to download."""

    name: str
    url: str
    sha256: str
    dest: str
    mode: str


@dataclass(frozen=True)
class PayloadFile:
    """One local file that ships: its source and its bundle member path."""

    source: Path
    member: str
    mode: str


@dataclass(frozen=True)
class FileSpec:
    """A ``files`` entry and the files it expands to, in sorted order."""

    src: str
    dest: str
    files: tuple[PayloadFile, ...]
    where: str = ""  # FILE:LINE of the entry, for messages


@dataclass(frozen=True)
class ImageSpec:
    """An ``images`` entry: a reference (from a registry or the local engine) or a vendor archive."""

    source: str  # registry | daemon | archive
    ref: Reference | None = None
    archive: Path | None = None
    insecure: bool = False  # plain http to a non-loopback registry
    zstd: bool = False  # the target engines read zstd layers
    where: str = ""  # FILE:LINE, for messages
    roles: tuple[str, ...] = ()  # the node roles that get it; empty: the manifest's image_roles

    def describe(self) -> str:
        return str(self.archive) if self.archive else f"{self.ref} (from {self.source})"


def request_sets(packages: tuple[str, ...], roles: dict[str, tuple[str, ...]]) -> list[tuple[str, ...]]:
    """The distinct sets of requests a node can have: ``packages`` alone (a node of none of the
    roles) and with the packages of each combination of the roles, each set once, in a stable
    order. Each is resolved on its own, as apt (or dnf) on such a node would."""
    named = sorted(roles)
    out: list[tuple[str, ...]] = []
    for mask in range(1 << len(named)):
        extra = [p for i, role in enumerate(named) if mask >> i & 1 for p in roles[role]]
        requests = tuple(dict.fromkeys([*packages, *extra]))
        if requests not in out:
            out.append(requests)
    return out


@dataclass(frozen=True)
class RpmsSpec:
    """The ``rpms`` section: rpm-md sources, the packages to install and those assumed present."""

    sources: tuple[RpmSource, ...]
    packages: tuple[str, ...]
    exclude: tuple[str, ...] = ()
    baseline_file: Path | None = None  # ``rpm -qa`` output of a site node: what it has installed
    roles: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def request_sets(self) -> list[tuple[str, ...]]:
        return [r for r in request_sets(self.packages, self.roles) if r]


@dataclass(frozen=True)
class DebsSpec:
    """The ``debs`` section: apt sources, the packages to install and those assumed present."""

    sources: tuple[Source, ...]
    packages: tuple[str, ...]
    exclude: tuple[str, ...] = ()
    # required: Priority: required packages are present at some version; none; file: baseline_file,
    # a dpkg status of the target, says exactly what is installed.
    baseline: str = "required"
    baseline_file: Path | None = None
    recommends: bool = False  # add Recommends to the closure, as apt does by default
    # debs.roles: node role -> packages only the nodes of that role get (``packages``: every node).
    roles: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def request_sets(self) -> list[tuple[str, ...]]:
        return request_sets(self.packages, self.roles)


@dataclass(frozen=True)
class StepSpec:
    """A staged script, run in manifest order: on the control node, or over SSH on nodes (``on``)."""

    name: str
    script: str
    source: Path
    on: str = "control"  # lock.STEP_ON, or "nodes" (``nodes`` names them)
    nodes: tuple[str, ...] = ()
    serial: bool = False
    files: tuple[str, ...] = ()  # the bundle members under files/ copied to each node first
    when: str = "after-cluster"  # lock.STEP_WHEN: before-cluster runs in the prepare phase
    fixes: tuple[str, ...] = ()  # lock.STEP_FIXES: preflight checks it makes pass (before-cluster)


@dataclass(frozen=True)
class ClusterSpec:
    """``cluster``: the cluster tool, the Kubernetes version it brings up, and its own images."""

    kind: str
    kubernetes_version: str
    network_plugin: str = rkeimages.DEFAULT_NETWORK_PLUGIN
    tool: str = "rke"  # a binaries: entry
    system_images: tuple[str, ...] = ()  # explicit list (normalized refs); empty: ask the tool
    where: str = ""  # FILE:LINE of the section
    k0sctl: str = ""  # k0s: a binaries: entry holding k0sctl, which then brings the cluster up
    shared_roles: str = ""  # "demo-only": the product allows controller+worker nodes only for a demo


# A registry (as image references name it) and a mirror: HOST[:PORT][/PREFIX], optionally http(s)://.
_REGISTRY_NAME = re.compile(
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)(?:\.[A-Za-z0-9-]+)*(?::[0-9]{1,5})?"
)
_MIRROR = re.compile(
    r"(?:(?P<scheme>https?)://)?(?P<host>(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(?::[0-9]{1,5})?)"
    r"(?P<prefix>(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)*)/?"
)


@dataclass(frozen=True)
class Mirror:
    """Where the build host pulls one registry's images from: ``host`` with ``prefix`` put before
    every repository path (a Harbor proxy-cache project, an Artifactory remote repository)."""

    host: str  # HOST[:PORT]
    prefix: str = ""  # path without slashes at either end, or ""
    scheme: str = ""  # "http", "https" or "" (https, or http for loopback)
    insecure: bool = False  # plain http to a non-loopback mirror allowed

    def __str__(self) -> str:
        return (
            (f"{self.scheme}://" if self.scheme else "")
            + self.host
            + (f"/{self.prefix}" if self.prefix else "")
        )


def _loopback(host: str) -> bool:
    name = host[1 : host.find("]")] if host.startswith("[") else host.rsplit(":", 1)[0]
    return name == "localhost" or name == "::1" or re.fullmatch(r"127(?:\.[0-9]{1,3}){3}", name) is not None


def parse_mirror(registry: str, text: str, insecure: bool = False, where: str = "--mirror") -> Mirror:
    """``REGISTRY`` and ``HOST[:PORT][/PREFIX]`` (or ``http(s)://...``) as a checked ``Mirror``.

    Raises:
        InputError: a malformed registry or mirror, or ``http://`` to a mirror that is neither
            loopback nor marked insecure (exit 2).
    """
    if not _REGISTRY_NAME.fullmatch(registry) or (
        "." not in registry and ":" not in registry and registry != "localhost"
    ):
        raise InputError(f"{where}: {registry!r} is not a registry name (e.g. docker.io, quay.io, HOST:PORT)")
    match = _MIRROR.fullmatch(text)
    if not match:
        raise InputError(
            f"{where}: {text!r} is not a mirror: give HOST[:PORT][/PREFIX] "
            "(e.g. harbor.example.org/dockerhub-proxy)"
        )
    scheme, host, prefix = match.group("scheme") or "", match.group("host"), match.group("prefix").strip("/")
    if scheme == "http" and not insecure and not _loopback(host):
        raise InputError(
            f"{where}: {text!r}: plain http is used only for a loopback mirror or one marked insecure "
            "(mirrors: {REGISTRY: {url: ..., insecure: true}} in the manifest)"
        )
    return Mirror(host, prefix, scheme, insecure)


@dataclass(frozen=True)
class Manifest:
    """A validated bundle manifest."""

    path: Path
    base: Path
    sha256: str
    name: str
    version: str
    platform: Platform
    binaries: tuple[BinarySpec, ...]
    files: tuple[FileSpec, ...]
    steps: tuple[StepSpec, ...]
    images: tuple[ImageSpec, ...] = ()
    debs: DebsSpec | None = None
    rpms: RpmsSpec | None = None
    description: str = ""
    min_workers: int = 0
    image_roles: tuple[str, ...] = ("worker",)
    images_mode: str = "ssh-load"  # how the installer ships images: ssh-load or registry
    registry: str = ""  # HOST:PORT of the site registry for the registry mode
    registry_image: str = ""  # an images: entry the installer can run as the site registry
    cluster: ClusterSpec | None = None
    mirrors: dict[str, Mirror] = field(default_factory=dict)  # registry domain -> mirror (build host only)


# ---------------------------------------------------------------- YAML with line numbers


class _LineDict(dict[Any, Any]):
    """A mapping that remembers the line of itself and of each value, and each scalar as written
    (``mode: 0755`` loads as the int 493; advice must quote what the user wrote, not 493)."""

    line = 0
    lines: dict[Any, int]
    raw: dict[Any, str]


class _LineList(list[Any]):
    line = 0
    lines: list[int]


class _Duplicate(Exception):
    def __init__(self, key: Any, line: int, first: int) -> None:
        super().__init__(key)
        self.key, self.line, self.first = key, line, first


class _Loader(yaml.SafeLoader):
    """SafeLoader (no Python tags) that records lines and refuses duplicate keys."""


def _mapping(loader: _Loader, node: yaml.MappingNode) -> _LineDict:
    loader.flatten_mapping(node)
    out = _LineDict()
    out.line = node.start_mark.line + 1
    out.lines = {}
    out.raw = {}
    for knode, vnode in node.value:
        key = loader.construct_object(knode, deep=True)
        try:
            hash(key)
        except TypeError:
            raise yaml.constructor.ConstructorError(
                None, None, "a mapping key must be a plain value", knode.start_mark
            ) from None
        if key in out:
            raise _Duplicate(key, knode.start_mark.line + 1, out.lines[key])
        out[key] = loader.construct_object(vnode, deep=True)
        out.lines[key] = vnode.start_mark.line + 1
        if isinstance(vnode, yaml.ScalarNode):
            out.raw[key] = vnode.value
    return out


def _sequence(loader: _Loader, node: yaml.SequenceNode) -> _LineList:
    out = _LineList(loader.construct_object(child, deep=True) for child in node.value)
    out.line = node.start_mark.line + 1
    out.lines = [child.start_mark.line + 1 for child in node.value]
    return out


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)
_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _sequence)


def _parse_yaml(text: str, where: str) -> Any:
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader
    except _Duplicate as dup:
        raise ManifestError(
            f"{where}:{dup.line}: duplicate key {dup.key!r} (first at line {dup.first})"
        ) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        if "python/" in str(exc) or "constructor for the tag" in str(exc):
            problem = f"{problem} (only plain YAML is allowed; tags like !!python/... are refused)"
        raise ManifestError(f"{where}{line}: invalid YAML: {problem}") from None


# ---------------------------------------------------------------- validation


class _Problems:
    """The manifest's mistakes so far: each section or item is checked in ``each()``, which
    keeps its ``ManifestError`` and goes on, so that one run names every mistake."""

    def __init__(self) -> None:
        self.errors: list[InputError] = []

    @contextlib.contextmanager
    def each(self) -> Iterator[None]:
        try:
            yield
        except ManifestError as exc:
            if exc.problems:  # an entry that listed its own problems (_Reported) adds none
                self.errors.append(exc)


class _Section:
    """Typed access to one mapping of the manifest, with file:line errors.

    Unknown keys are raised at once, or added to ``problems`` when given (the top level,
    whose other keys are still worth checking)."""

    def __init__(
        self,
        data: Any,
        where: str,
        path: str,
        line: int,
        allowed: tuple[str, ...],
        problems: _Problems | None = None,
    ) -> None:
        self.where = where
        self.path = path
        if not isinstance(data, dict):
            raise ManifestError(f"{where}:{line}: {path or 'the document'} must be a mapping")
        self.data = data
        self.line = getattr(data, "line", line)
        for key in data:
            if key not in allowed:
                hint = f"; allowed: {', '.join(allowed)}"
                error = ManifestError(f"{self.at(key)}: unknown key {self.name(key)!r}{hint}")
                if problems is None:
                    raise error
                problems.errors.append(error)

    def name(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else str(key)

    def at(self, key: str | None = None) -> str:
        lines = getattr(self.data, "lines", {})
        return f"{self.where}:{lines.get(key, self.line)}"

    def fail(self, key: str, message: str) -> ManifestError:
        return ManifestError(f"{self.at(key)}: {self.name(key)}: {message}")

    def get(self, key: str, kind: type, default: Any = None, required: bool = True) -> Any:
        if key not in self.data:
            if required:
                raise ManifestError(f"{self.at()}: {self.path or 'the manifest'} needs {key!r}")
            return default
        value = self.data[key]
        if kind is str and isinstance(value, (int, float)) and not isinstance(value, bool):
            written = getattr(self.data, "raw", {}).get(key, value)  # 0755 as written, not 493
            raise self.fail(key, f'must be a string; quote it: "{written}"')
        if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
            raise self.fail(key, f"must be a {kind.__name__}, got {type(value).__name__}")
        return value

    def match(self, key: str, regex: re.Pattern[str], what: str, required: bool = True) -> str:
        value = self.get(key, str, required=required)
        if value is None:
            return ""
        if not regex.fullmatch(value):
            raise self.fail(key, f"{value!r} is not a valid {what} ({regex.pattern})")
        return str(value)

    def items(self, key: str) -> list[tuple[Any, int]]:
        value = self.get(key, list, default=[], required=False)
        lines = getattr(value, "lines", [self.line] * len(value))
        return list(zip(value, lines))


def _step_on(sec: _Section) -> tuple[str, tuple[str, ...]]:
    """A step's ``on:``: control (the default), all, a role, or a list of node names."""
    value = sec.data.get("on", "control")
    if isinstance(value, str) and value in STEP_ON:
        return value, ()
    if (
        isinstance(value, list)
        and value
        and all(isinstance(n, str) and NODE_NAME_RE.fullmatch(n) for n in value)
    ):
        if len(set(value)) < len(value):
            raise sec.fail("on", "names a node twice")
        return "nodes", tuple(value)
    raise sec.fail("on", f"{value!r} must be one of {', '.join(STEP_ON)}, or a list of node names")


def _step_when(sec: _Section) -> tuple[str, tuple[str, ...]]:
    """A step's ``when:`` (after-cluster, the default, or before-cluster) and ``fixes:`` (the
    preflight checks a before-cluster step makes pass, e.g. [swap])."""
    when = sec.get("when", str, default="after-cluster", required=False)
    if when not in STEP_WHEN:
        raise sec.fail("when", f"{when!r} must be one of {', '.join(STEP_WHEN)}")
    fixes = sec.get("fixes", list, default=[], required=False)
    if not all(isinstance(x, str) and x in STEP_FIXES for x in fixes) or len(set(fixes)) < len(fixes):
        raise sec.fail("fixes", f"must list some of {', '.join(STEP_FIXES)}, each once")
    if fixes and when != "before-cluster":
        raise sec.fail(
            "fixes",
            "goes with when: before-cluster (the preflight only lets a node through that a step "
            "fixes before the cluster comes up)",
        )
    return when, tuple(fixes)


def _step_files(sec: _Section, members: list[str]) -> tuple[str, ...]:
    """The bundle members a step's ``files:`` names: each a file or a folder under files/ that the
    manifest's ``files:`` section ships."""
    out: list[str] = []
    for entry in sec.get("files", list, default=[], required=False):
        if not isinstance(entry, str):
            raise sec.fail("files", f"{entry!r} is not a path under files/")
        prefix = entry.rstrip("/")
        found = [m for m in members if m == prefix or m.startswith(prefix + "/")]
        if not found:
            raise sec.fail(
                "files", f"{entry!r} names no file the bundle carries (give files/DEST/... of a files: entry)"
            )
        out += [m for m in found if m not in out]
    return tuple(out)


def _local_path(sec: _Section, key: str, base: Path) -> tuple[str, Path]:
    raw = sec.get(key, str)
    if not raw or raw.startswith("/") or "\\" in raw or "\0" in raw:
        raise sec.fail(key, f"{raw!r} must be a relative path inside {base}")
    path = (base / raw).resolve()
    if path != base and base not in path.parents:
        raise sec.fail(key, f"{raw!r} escapes the manifest's folder {base}")
    if not path.exists():
        raise sec.fail(key, f"{raw!r} does not exist (looked for {path})")
    return raw, path


def _mode_of(st: os.stat_result) -> str:
    return "0755" if st.st_mode & 0o111 else "0644"


def _expand_files(sec: _Section, raw: str, src: Path, dest: str) -> tuple[PayloadFile, ...]:
    if src.is_file():
        return (PayloadFile(src, f"files/{dest}", _mode_of(src.stat())),)
    out = []
    for root, dirs, names in os.walk(src):
        dirs.sort()
        for name in sorted(names + [d for d in dirs if os.path.islink(os.path.join(root, d))]):
            path = Path(root, name)
            st = path.lstat()
            rel = path.relative_to(src).as_posix()
            if not stat.S_ISREG(st.st_mode):
                kind = "a symbolic link" if stat.S_ISLNK(st.st_mode) else "not a regular file"
                raise sec.fail("src", f"{raw}{rel} is {kind}; bundles carry regular files only")
            member = f"files/{dest}/{rel}"
            problem = check_member_path(member)
            if problem:
                raise sec.fail("src", f"{raw}{rel}: the bundle name {member!r} {problem}")
            out.append(PayloadFile(path, member, _mode_of(st)))
    if not out:
        raise sec.fail("src", f"{raw!r} is an empty folder")
    return tuple(sorted(out, key=lambda p: p.member))


def _base_for(path: Path) -> Path:
    folder = path.parent.resolve()
    return folder.parent if folder.name == "manifests" else folder


def load_manifest(path: Path) -> Manifest:
    """Read and validate a manifest file.

    Raises:
        ManifestError: anything wrong, naming the file and line (exit 2); every problem of
            the manifest at once, one per line (``problems`` lists them).
    """
    where = str(path)
    data = userfiles.read_capped(path, "manifest", MAX_MANIFEST_BYTES, ManifestError)  # a FIFO is refused
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ManifestError(f"{where}: not UTF-8 text (byte {exc.start})") from exc
    doc = _parse_yaml(text, where)
    base = _base_for(path)
    problems = _Problems()
    top = _Section(doc, where, "", 1, _TOP_KEYS, problems)
    with problems.each():
        if top.get("apiVersion", str) != API_VERSION:
            raise top.fail("apiVersion", f"must be {API_VERSION!r}")
    with problems.each():
        if top.get("kind", str) != "Bundle":
            raise top.fail("kind", "must be 'Bundle'")
    for key, why in NOT_YET.items():
        if key in top.data:
            problems.errors.append(top.fail(key, f"not supported yet: {why}; remove the section for now"))
    name = version = ""
    with problems.each():
        name = top.match("name", NAME_RE, "bundle name")
    with problems.each():
        version = top.get("version", str)
        problem = versions.check(version)
        if problem:
            raise top.fail("version", f"{version!r} {problem}")
    platform = Platform("", "", "amd64")
    with problems.each():
        plat = _Section(top.get("platform", dict), where, "platform", top.line, ("os", "codename", "arch"))
        platform = Platform(
            os=plat.match("os", ITEM_NAME_RE, "OS id"),
            codename=plat.match("codename", ITEM_NAME_RE, "codename"),
            arch=plat.get("arch", str),
        )
        if platform.arch not in ARCHES:
            raise plat.fail("arch", f"{platform.arch!r} is not a Debian architecture ({', '.join(ARCHES)})")

    binaries: list[BinarySpec] = []
    binary_lines: list[int] = []
    with problems.each():
        for i, (item, line) in enumerate(top.items("binaries")):
            with problems.each():
                binaries.append(_binary(item, where, i, line, problems))
                binary_lines.append(line)
        _unique(where, [(b.name, line) for b, line in zip(binaries, binary_lines)])

    files: list[FileSpec] = []
    file_lines: list[int] = []
    with problems.each():
        for i, (item, line) in enumerate(top.items("files")):
            with problems.each():
                sec = _Section(item, where, f"files[{i}]", line, ("src", "dest"))
                raw, src = _local_path(sec, "src", base)
                dest = sec.get("dest", str)
                problem = check_member_path(dest)
                if problem:
                    raise sec.fail("dest", f"{dest!r} {problem}")
                files.append(FileSpec(raw, dest, _expand_files(sec, raw, src, dest), where=sec.at()))
                file_lines.append(line)
        _unique(where, [(p.member, line) for f, line in zip(files, file_lines) for p in f.files])

    images: list[ImageSpec] = []
    with problems.each():
        for i, (item, line) in enumerate(top.items("images")):
            with problems.each():
                images.append(_image(item, where, i, line, base))
        _unique(where, [(str(im.ref or im.archive), int(im.where.rsplit(":", 1)[1])) for im in images])

    debs = None
    if "debs" in top.data:
        with problems.each():
            debs = _debs_section(top, where, base, problems)
    rpms = None
    if "rpms" in top.data:
        with problems.each():
            rpms = _rpms_section(top, where, base, problems)
            if "debs" in top.data:
                # The packages phase takes one route per bundle: apt or dnf, as the platform says.
                raise top.fail(
                    "rpms",
                    "a bundle is for one platform: give debs (Debian/Ubuntu) or rpms (Rocky/RHEL), not both",
                )
            if platform.os and not platform.codename.isdigit():
                raise top.fail(
                    "rpms",
                    f"platform.codename {platform.codename!r} must be the major release for rpms "
                    '(e.g. platform: {os: rocky, codename: "8", arch: amd64})',
                )

    steps: list[StepSpec] = []
    step_lines: list[int] = []
    members = sorted(pf.member for f in files for pf in f.files)
    with problems.each():
        for i, (item, line) in enumerate(top.items("steps")):
            with problems.each():
                if isinstance(item, dict) and True in item and "on" not in item:
                    item["on"] = item.pop(True)  # YAML 1.1 reads the key 'on' as the boolean true
                sec = _Section(
                    item,
                    where,
                    f"steps[{i}]",
                    line,
                    ("name", "script", "on", "serial", "files", "when", "fixes"),
                )
                raw, src = _local_path(sec, "script", base)
                if not src.is_file():
                    raise sec.fail("script", f"{raw!r} is not a file")
                on, nodes = _step_on(sec)
                serial = sec.get("serial", bool, default=False, required=False)
                if on == "control" and (serial or "files" in sec.data):
                    raise sec.fail(
                        "serial" if serial else "files",
                        "goes with a step on nodes (on: all, a role or names)",
                    )
                when, fixes = _step_when(sec)
                if when == "before-cluster" and on == "control":
                    raise sec.fail(
                        "when",
                        "before-cluster goes with a step on nodes (on: all, a role or names)",
                    )
                steps.append(
                    StepSpec(sec.match("name", ITEM_NAME_RE, "step name"), raw, src, on, nodes, serial,
                             _step_files(sec, members), when, fixes)
                )  # fmt: skip
                step_lines.append(line)
        _unique(where, [(s.name, line) for s, line in zip(steps, step_lines)])

    cluster = None
    if "cluster" in top.data:
        with problems.each():
            cluster = _cluster_section(top, where, _binary_names(top))
    mirrors: dict[str, Mirror] = {}
    if "mirrors" in top.data:
        with problems.each():
            mirrors = _mirrors_section(top, where)
    rest: dict[str, Any] = {}
    with problems.each():
        rest["description"] = top.get("description", str, default="", required=False)
    with problems.each():
        rest["min_workers"] = _min_workers(top)
    with problems.each():
        rest["image_roles"] = _image_roles(top)
    with problems.each():
        rest.update(_install_section(top, where))
    _placeholder_comments(text, where, problems)
    if problems.errors:
        raise several(sorted(problems.errors, key=_line_of), ManifestError, where)

    return Manifest(
        path=path,
        base=base,
        sha256=hashlib.sha256(data).hexdigest(),
        name=name,
        version=version,
        platform=platform,
        binaries=tuple(binaries),
        files=tuple(files),
        steps=tuple(steps),
        images=tuple(images),
        debs=debs,
        rpms=rpms,
        cluster=cluster,
        mirrors=mirrors,
        **rest,
    )


_TOP_KEYS = (
    "apiVersion",
    "kind",
    "name",
    "version",
    "description",
    "platform",
    "min_workers",
    "image_roles",
    "install",
    "debs",
    "rpms",
    "binaries",
    "images",
    "files",
    "steps",
    "cluster",
    "mirrors",
)


def _line_of(error: InputError) -> int:
    """The line an error names (``FILE:LINE: ...``), for listing problems in file order."""
    match = re.match(r"[^\n]*?:(\d+): ", str(error))
    return int(match.group(1)) if match else 0


def _binary_names(top: _Section) -> list[str]:
    """The names the ``binaries:`` entries give, valid or not (so that ``cluster.tool`` is not
    reported as unknown when only its binary entry has another mistake)."""
    items = top.data.get("binaries")
    if not isinstance(items, list):
        return []
    return [str(item["name"]) for item in items if isinstance(item, dict) and "name" in item]


def _binary(item: Any, where: str, i: int, line: int, problems: _Problems) -> BinarySpec:
    """One ``binaries:`` entry; each field's mistake is its own problem, so a wrong URL and a
    placeholder sha256 on one entry are both named in one run."""
    sec = _Section(item, where, f"binaries[{i}]", line, ("name", "url", "sha256", "dest", "mode"))
    before = len(problems.errors)
    fields: dict[str, str] = {}
    with problems.each():
        fields["name"] = sec.match("name", ITEM_NAME_RE, "binary name")
    with problems.each():
        url = sec.get("url", str)
        if not url.startswith(("http://", "https://")):
            raise sec.fail("url", f"{url!r} must be an http(s) URL")
        fields["url"] = url
    with problems.each():
        # Checked as written: unquoted, 64 zeros load as the int 0 (and "quote it" would be no fix).
        if getattr(sec.data, "raw", {}).get("sha256") == PLACEHOLDER_SHA256:
            raise sec.fail(
                "sha256",
                "is the all-zero placeholder: put the real SHA-256 of the file at url: there (from the "
                "release's checksum file, e.g. sha256sum.txt, or `sha256sum` of a download you trust)",
            )
        fields["sha256"] = sec.match("sha256", SHA256_RE, "sha256 (64 lowercase hex digits)")
    with problems.each():
        dest = sec.get("dest", str)
        problem = check_dest(dest)
        if problem:
            raise sec.fail(
                "dest", f"{dest!r} {problem}: it must be an absolute file path, normalized (no '..', '//')"
            )
        fields["dest"] = dest
    with problems.each():
        mode = sec.get("mode", str, default="0755", required=False)
        if mode not in MODES:
            raise sec.fail("mode", f"{mode!r} must be one of {', '.join(f'{m!r}' for m in MODES)}")
        fields["mode"] = mode
    if len(problems.errors) > before:
        raise _Reported()
    return BinarySpec(**fields)


class _Reported(ManifestError):
    """An entry whose problems are already in the list: nothing more to add."""

    def __init__(self) -> None:
        super().__init__("", problems=())
        self.problems = ()


def _image(item: Any, where: str, i: int, line: int, base: Path) -> ImageSpec:
    """One ``images:`` entry: a reference (registry or engine) or a vendor archive."""
    keys = ("ref", "from", "archive", "insecure", "zstd", "roles")
    sec = _Section(item, where, f"images[{i}]", line, keys)
    zstd = sec.get("zstd", bool, default=False, required=False)
    roles = _roles(sec, "roles", default=[])
    if ("ref" in sec.data) == ("archive" in sec.data):
        raise ManifestError(f"{sec.at()}: images[{i}] needs exactly one of 'ref' or 'archive'")
    if "archive" in sec.data:
        for key in ("from", "insecure"):
            if key in sec.data:
                raise sec.fail(key, "goes with 'ref', not with 'archive'")
        _, path = _local_path(sec, "archive", base)
        return ImageSpec("archive", archive=path, zstd=zstd, where=sec.at(), roles=roles)
    source = sec.get("from", str, default="registry", required=False)
    if source not in IMAGE_SOURCES:
        raise sec.fail("from", f"{source!r} must be one of {', '.join(IMAGE_SOURCES)}")
    insecure = sec.get("insecure", bool, default=False, required=False)
    if insecure and source != "registry":
        raise sec.fail("insecure", "applies to registry pulls only")
    try:
        ref = parse_reference(sec.get("ref", str))
    except ImageFormatError as exc:
        raise sec.fail("ref", str(exc)) from None
    if ref.tag is None and source == "daemon":
        raise sec.fail("ref", f"{ref} needs a tag to be saved from the local engine")
    return ImageSpec(source, ref=ref, insecure=insecure, zstd=zstd, where=sec.at("ref"), roles=roles)


def _placeholder_comments(text: str, where: str, problems: _Problems) -> None:
    """A line marked ``# ... PLACEHOLDER`` still holds a stand-in value: name it, unless that
    line's value was already reported (the all-zero sha256 says more)."""
    reported = {_line_of(e) for e in problems.errors}
    for number, line in enumerate(text.splitlines(), start=1):
        comment = _PLACEHOLDER_COMMENT.search(line)
        if comment and number not in reported and not line.lstrip().startswith("#"):
            problems.errors.append(
                ManifestError(
                    f"{where}:{number}: this line is marked PLACEHOLDER ({comment.group(0).strip()}): "
                    "put the real value there and remove the marker"
                )
            )


def _cluster_section(top: _Section, where: str, binaries: list[str]) -> ClusterSpec:
    """``cluster: {kind, kubernetes_version, network_plugin, tool, system_images}``."""
    sec = _Section(
        top.get("cluster", dict),
        where,
        "cluster",
        top.line,
        (
            "kind",
            "kubernetes_version",
            "version",
            "network_plugin",
            "tool",
            "system_images",
            "k0sctl",
            "shared_roles",
        ),
    )
    kind = sec.get("kind", str)
    known = (*kinds.KINDS, k0simages.KIND)
    if kind not in known:
        raise sec.fail("kind", f"{kind!r} is not a cluster kind this airbundle knows ({', '.join(known)})")
    k0s = kind == k0simages.KIND
    allowed = ("version", "k0sctl", "shared_roles") if k0s else ("kubernetes_version",)
    for key in sec.data:
        if key in ("kubernetes_version", "version", "k0sctl", "shared_roles") and key not in allowed:
            raise sec.fail(
                str(key), f"goes with another cluster kind; a {kind} cluster takes {', '.join(allowed)}"
            )
    plugins: tuple[str, ...]
    if k0s:  # k0s's own release version names the Kubernetes it brings up: v1.28.15+k0s.0
        version = sec.match("version", k0simages.VERSION_RE, "k0s version (e.g. v1.28.15+k0s.0)")
        plugins, default_plugin = k0simages.NETWORK_PROVIDERS, k0simages.DEFAULT_NETWORK_PROVIDER
    else:
        version = sec.match(
            "kubernetes_version", K8S_VERSION_RE, "Kubernetes version (e.g. v1.28.15-rancher1-1)"
        )
        # rke deploys a network plugin itself; kubeadm deploys none (the bundle's steps apply one).
        plugins = rkeimages.NETWORK_PLUGINS
        default_plugin = rkeimages.DEFAULT_NETWORK_PLUGIN if kind == "rke" else "none"
    plugin = sec.get("network_plugin", str, default=default_plugin, required=False)
    if plugin not in plugins:  # (a tuple of either kind's names)
        raise sec.fail("network_plugin", f"{plugin!r} must be one of {', '.join(plugins)}")
    tool = sec.get(
        "tool", str, default=kinds.KINDS[kind].tool if kind in kinds.KINDS else kind, required=False
    )
    if tool not in binaries:
        raise sec.fail(
            "tool",
            f"{tool!r} must name a binaries: entry (the pinned {kind} that lists the system images "
            "and brings the cluster up)",
        )
    k0sctl = sec.get("k0sctl", str, default="", required=False)
    if k0sctl and k0sctl not in binaries:
        raise sec.fail("k0sctl", f"{k0sctl!r} must name a binaries: entry (the pinned k0sctl)")
    shared = sec.get("shared_roles", str, default="", required=False)
    if shared and shared not in k0simages.SHARED_ROLES:
        raise sec.fail("shared_roles", f"{shared!r} must be one of {', '.join(k0simages.SHARED_ROLES)}")
    refs = []
    if "system_images" in sec.data:
        items = sec.items("system_images")
        if not items:
            raise sec.fail("system_images", "list at least one image, or leave it out to ask the pinned tool")
        for raw, line in items:
            if not isinstance(raw, str):
                raise ManifestError(
                    f"{where}:{line}: cluster.system_images: {raw!r} must be an image reference"
                )
            try:
                refs.append(str(parse_reference(raw)))
            except ImageFormatError as exc:
                raise ManifestError(f"{where}:{line}: cluster.system_images: {exc}") from None
        _unique(where, [(r, line) for r, (_, line) in zip(refs, items)])
    return ClusterSpec(
        kind, version, plugin, tool, tuple(refs), where=sec.at(), k0sctl=k0sctl, shared_roles=shared
    )


def _mirrors_section(top: _Section, where: str) -> dict[str, Mirror]:
    """``mirrors: {REGISTRY: HOST[:PORT][/PREFIX]}`` or ``{REGISTRY: {url: ..., insecure: true}}``."""
    sec = _Section(
        top.get("mirrors", dict), where, "mirrors", top.line, tuple(str(k) for k in top.data["mirrors"])
    )
    out = {}
    for registry in sec.data:
        value = sec.data[registry]
        insecure = False
        if isinstance(value, dict):
            item = _Section(value, where, f"mirrors.{registry}", sec.line, ("url", "insecure"))
            insecure = item.get("insecure", bool, default=False, required=False)
            value = item.get("url", str)
        elif not isinstance(value, str):
            raise sec.fail(str(registry), "must be HOST[:PORT][/PREFIX] or {url: ..., insecure: true}")
        try:
            out[str(registry)] = parse_mirror(
                str(registry), value, insecure, where=f"{sec.at(registry)}: mirrors"
            )
        except InputError as exc:
            raise ManifestError(str(exc)) from None
    return out


def _debs_section(top: _Section, where: str, base: Path, problems: _Problems) -> DebsSpec:
    """``debs:``; each source is checked on its own, so two missing keyrings are named in one run."""
    sec = _Section(
        top.get("debs", dict),
        where,
        "debs",
        top.line,
        ("sources", "packages", "exclude", "baseline", "recommends", "roles"),
    )
    sources = []
    before = len(problems.errors)
    for i, (item, line) in enumerate(sec.items("sources")):
        with problems.each():
            sources.append(_apt_source(item, where, i, line, base))
    if len(problems.errors) > before:
        raise _Reported()
    if not sources:
        raise ManifestError(f"{sec.at()}: debs needs at least one source")
    packages = sec.get("packages", list)
    exclude = sec.get("exclude", list, default=[], required=False)
    for key, names in (("packages", packages), ("exclude", exclude)):
        for name in names:
            if not isinstance(name, str) or not PACKAGE_RE.fullmatch(name):
                raise sec.fail(key, f"{name!r} is not a package name (or name=version)")
    roles = _debs_roles(sec, packages)
    if not packages and not roles:
        raise sec.fail("packages", "name at least one package (here or under roles:)")
    baseline = sec.get("baseline", str, default="required", required=False)
    baseline_file = None
    if baseline not in ("required", "none"):
        if not baseline.startswith("/") and not (base / baseline).is_file():
            raise sec.fail(
                "baseline",
                f"{baseline!r} is not a file here; give 'required' (Priority: required packages are "
                "present), 'none', or a copy of a site node's /var/lib/dpkg/status (payloads/site-status)",
            )
        _, baseline_file = _local_path(sec, "baseline", base)
        baseline = "file"
    recommends = sec.get("recommends", bool, default=False, required=False)
    return DebsSpec(
        tuple(sources), tuple(packages), tuple(exclude), baseline, baseline_file, recommends, roles
    )


def _rpms_section(top: _Section, where: str, base: Path, problems: _Problems) -> RpmsSpec:
    """``rpms:`` (rpm-md sources for Rocky/RHEL sites); each source is checked on its own."""
    sec = _Section(
        top.get("rpms", dict),
        where,
        "rpms",
        top.line,
        ("sources", "packages", "exclude", "baseline", "roles"),
    )
    sources = []
    before = len(problems.errors)
    for i, (item, line) in enumerate(sec.items("sources")):
        with problems.each():
            sources.append(_rpm_source(item, where, i, line, base))
    if len(problems.errors) > before:
        raise _Reported()
    if not sources:
        raise ManifestError(f"{sec.at()}: rpms needs at least one source")
    unsigned = [i for i, s in enumerate(sources) if s.gpgkey is None]
    if unsigned and len(unsigned) < len(sources):
        # The nodes' dnf reads the bundle as one repository, gpgcheck on when there are keys: an rpm
        # from a source without one would pass the build and be refused on the nodes, mid-install.
        raise ManifestError(
            f"{sec.at()}: rpms.sources[{unsigned[0]}] has no gpgkey while other sources have one; the "
            "nodes check every bundled rpm against the bundled keys: give each source its key (or none)"
        )
    packages = sec.get("packages", list, default=[], required=False)
    exclude = sec.get("exclude", list, default=[], required=False)
    for key, names in (("packages", packages), ("exclude", exclude)):
        for name in names:
            if (
                not isinstance(name, str)
                or not RPM_REQUEST_RE.fullmatch(name)
                or (key == "exclude" and "=" in name)
            ):
                raise sec.fail(
                    key,
                    f"{name!r} is not a package name" + (" (or name=version)" if key == "packages" else ""),
                )
    roles = _debs_roles(sec, packages, "rpms", RPM_REQUEST_RE)
    if not packages and not roles:
        raise sec.fail("packages", "name at least one package (here or under roles:)")
    baseline_file = None
    if "baseline" in sec.data:
        _, baseline_file = _local_path(sec, "baseline", base)
    return RpmsSpec(tuple(sources), tuple(packages), tuple(exclude), baseline_file, roles)


def _rpm_source(item: Any, where: str, i: int, line: int, base: Path) -> RpmSource:
    """One ``rpms.sources`` entry: an rpm-md repository URL and, normally, its signing key."""
    src = _Section(item, where, f"rpms.sources[{i}]", line, ("url", "gpgkey"))
    url = src.get("url", str)
    if not url.startswith(("http://", "https://")):
        raise src.fail("url", f"{url!r} must be an http(s) URL (the folder that holds repodata/)")
    gpgkey = None
    if "gpgkey" in src.data:
        raw = src.get("gpgkey", str)
        if raw.startswith("/"):
            gpgkey = Path(raw)
            if not gpgkey.is_file():
                raise src.fail("gpgkey", f"{raw!r} is not a file on this host")
        elif not (base / raw).exists():
            raise src.fail(
                "gpgkey",
                f"{raw!r} does not exist; put the repository's public key there (e.g. Rocky's "
                "RPM-GPG-KEY-Rocky-9) and check its fingerprint against the publisher's",
            )
        else:
            _, gpgkey = _local_path(src, "gpgkey", base)
    return RpmSource(url, gpgkey)


def _debs_roles(
    sec: _Section, packages: list[str], section: str = "debs", pattern: re.Pattern[str] = PACKAGE_RE
) -> dict[str, tuple[str, ...]]:
    """``debs.roles: {worker: [heartbeat]}`` (or ``rpms.roles``): packages only the nodes of a role get."""
    raw = sec.get("roles", dict, default={}, required=False)
    every = {p.partition("=")[0] for p in packages}
    out = {}
    for role, names in raw.items():
        if role not in kinds.ALL_ROLES:
            raise sec.fail("roles", f"{role!r} is not a node role ({', '.join(kinds.ALL_ROLES)})")
        if not isinstance(names, list) or not names:
            raise sec.fail("roles", f"{role}: give a list of packages (e.g. {role}: [heartbeat])")
        for name in names:
            if not isinstance(name, str) or not pattern.fullmatch(name):
                raise sec.fail("roles", f"{role}: {name!r} is not a package name (or name=version)")
            if name.partition("=")[0] in every:
                raise sec.fail(
                    "roles",
                    f"{role}: {name} is in {section}.packages already (every node gets those); name it once",
                )
        out[str(role)] = tuple(names)
    return out


def _apt_source(item: Any, where: str, i: int, line: int, base: Path) -> Source:
    """One ``debs.sources`` entry: an apt repository and how its signature is checked."""
    src = _Section(
        item,
        where,
        f"debs.sources[{i}]",
        line,
        ("url", "suite", "components", "keyring", "flat", "trusted"),
    )
    url = src.get("url", str)
    if not url.startswith(("http://", "https://")):
        raise src.fail("url", f"{url!r} must be an http(s) URL")
    flat = src.get("flat", bool, default=False, required=False)
    trusted = src.get("trusted", bool, default=False, required=False)
    suite = src.get("suite", str, default="./" if flat else None, required=not flat)
    components = src.get("components", list, default=[], required=not flat)
    if not flat and not components:
        raise src.fail("components", "name at least one component (e.g. [main])")
    if not all(isinstance(c, str) and ITEM_NAME_RE.fullmatch(c) for c in components):
        raise src.fail("components", "must be a list of component names")
    keyring = None
    if "keyring" in src.data:
        raw = src.get("keyring", str)
        if raw.startswith("/"):
            # The build host's own keyring (e.g. /usr/share/keyrings/debian-archive-keyring.gpg):
            # a build input like the manifest itself; the lock records who signed, by fingerprint.
            keyring = Path(raw)
            if not keyring.is_file():
                raise src.fail(
                    "keyring",
                    f"{raw!r} is not a file on this host; install the package that ships it "
                    "(e.g. debian-archive-keyring) or give the key's file in the project",
                )
        elif not (base / raw).exists():
            # Docker publishes its key beside its repository; Astra's is on every Astra host (apt trusts
            # it there); for the others: payloads/keys/README.md.
            example = ""
            if "docker" in url and ".invalid" not in url:
                example = f", e.g. 'curl -fsSL {url.rstrip('/')}/gpg -o {raw}'"
            elif "astra" in url or "astra" in raw:
                example = (
                    f", e.g. on an Astra host of that release 'apt-key exportall > {raw}' "
                    "(the keys its apt trusts for Astra's repositories)"
                )
            raise src.fail(
                "keyring",
                f"{raw!r} does not exist; put the repository's public key there (armored or binary)"
                f"{example}, and check its fingerprint against the publisher's (payloads/keys/README.md; "
                "README: 'Keys of apt repositories')",
            )
        else:
            _, keyring = _local_path(src, "keyring", base)
    elif not trusted:
        raise ManifestError(
            f"{src.at()}: debs.sources[{i}] needs 'keyring' (the repository's public key, e.g. "
            "payloads/keys/NAME.gpg), or 'trusted: true' to skip the signature check"
        )
    return Source(url, suite, tuple(components), keyring, trusted, flat)


def _install_section(top: _Section, where: str) -> dict[str, str]:
    """``install: {images_mode, registry, registry_image}``: the installer's defaults (its options win)."""
    if "install" not in top.data:
        return {}
    sec = _Section(
        top.get("install", dict), where, "install", top.line, ("images_mode", "registry", "registry_image")
    )
    mode = sec.get("images_mode", str, default="ssh-load", required=False)
    if mode not in IMAGES_MODES:
        raise sec.fail("images_mode", f"must be one of {', '.join(IMAGES_MODES)}")
    registry = sec.get("registry", str, default="", required=False)
    if registry and not REGISTRY_RE.fullmatch(registry):
        raise sec.fail("registry", f"{registry!r} is not HOST:PORT (e.g. 10.0.0.5:5000)")
    image = sec.get("registry_image", str, default="", required=False)
    if image:
        try:
            parse_reference(image)  # kept as written; lock.find_image normalizes when it matches
        except ImageFormatError as exc:
            raise sec.fail("registry_image", str(exc)) from None
    return {"images_mode": mode, "registry": registry, "registry_image": image}


def _image_roles(top: _Section) -> tuple[str, ...]:
    return _roles(top, "image_roles", default=["worker"])


def _roles(sec: _Section, key: str, default: list[str]) -> tuple[str, ...]:
    """A list of node roles under ``key`` (``default`` when absent): some of ROLES, each once."""
    if key not in sec.data:
        return tuple(default)
    roles = sec.get(key, list)
    allowed = kinds.ALL_ROLES
    if not roles or not all(r in allowed for r in roles) or len(set(roles)) != len(roles):
        raise sec.fail(key, f"must list some of {', '.join(allowed)}, each once")
    return tuple(roles)


def _min_workers(top: _Section) -> int:
    value = top.get("min_workers", int, default=0, required=False)
    if value < 0:
        raise top.fail("min_workers", "must be 0 or more")
    return int(value)


def _unique(where: str, names: list[tuple[str, int]]) -> None:
    """Refuse a name used twice (case-insensitively), naming the second use's line."""
    seen: dict[str, int] = {}
    for name, line in names:
        folded = name.casefold()
        if folded in seen:
            raise ManifestError(f"{where}:{line}: {name!r} appears twice (first at line {seen[folded]})")
        seen[folded] = line
