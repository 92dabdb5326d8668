"""The lock: ``lock.json``, the signed list of every byte a bundle carries.

A ``Lock`` names each member (path, size, SHA-256, kind, mode) and what the
installer does with it (binaries, files, steps). ``to_bytes`` gives one
canonical, deterministic encoding; ``from_bytes`` parses untrusted bytes
strictly. The encoding puts one member per line with ``path`` just before
``sha256``, so a bare host can turn it into ``sha256sum -c`` input with sed.

No I/O happens here: callers pass bytes and objects.
"""

import json
import re
import unicodedata
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Set, Tuple, Union

from bundler import k0simages, kinds, oci, rkeimages, versions
from bundler.compat import asdict, dataclass, field, replace
from bundler.errors import IntegrityError

FORMAT = 1
LOCK_NAME = "lock.json"
IMAGES_MODES = ("ssh-load", "registry")  # how the installer ships images to the nodes
REGISTRY_RE = re.compile(r"[A-Za-z0-9.-]{1,253}:[0-9]{1,5}")  # a site registry, HOST:PORT
SIG_NAME = "lock.json.sig"
INSTALL_SH = "install.sh"
MAX_LOCK_BYTES = 16 * 1024 * 1024  # a lock of 100k members is ~15 MB; refuse more unparsed
MEMBER_KINDS = ("installer", "binary", "file", "script", "image", "deb", "rpm", "sbom")
MODES = ("0644", "0755")

# The names the manifest accepts and the site re-checks: they become folder and file names there
# (NAME-VERSION under --workdir, step logs) and words in shell commands. The version's rule is
# bundler.versions.
NAME_RE = re.compile(r"[a-z0-9][a-z0-9.-]{0,62}")  # a bundle's name
ITEM_NAME_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")  # binaries, steps, platform values, components

# A cluster tool's Kubernetes version, e.g. v1.28.15-rancher1-1: a word on rke's command line.
DEB_NAME_RE = re.compile(r"[a-z0-9][a-z0-9.+-]{0,127}")  # Debian policy 5.6.1
DEB_VERSION_RE = re.compile(r"[0-9A-Za-z.+~:-]{1,128}")  # Debian policy 5.6.12
K8S_VERSION_RE = re.compile(r"v[0-9]+\.[0-9]+\.[0-9]+(?:[-+][A-Za-z0-9.-]{1,48})?")
CLUSTER_KEYS = ("kind", "kubernetes_version", "network_plugin", "tool", "k0sctl", "shared_roles")
# Written only when the manifest gives them (a k0s bundle's k0sctl, a product's rule on shared
# roles), so that other bundles keep their lock's bytes.
CLUSTER_OPTIONAL = ("k0sctl", "shared_roles")

_SHA256 = re.compile(r"[0-9a-f]{64}")
# An rpm's name, epoch:version-release and arch, as words the installer names to dnf.
_RPM_WORD = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._+~^:-]{0,254}")
# Member paths travel into tar headers, sha256sum lines and shell commands: keep
# them to a plain character set (no quotes, backslashes, control characters).
_PATH_CHARS = re.compile(r"[A-Za-z0-9._+@=:,~ -]+")


class LockError(IntegrityError):
    """``lock.json`` is malformed or inconsistent (exit 4: the signed content is bad)."""


def check_member_path(path: str) -> Optional[str]:
    """Why ``path`` is not a safe, relative bundle member name, or None when it is."""
    if not path or len(path.encode()) > 4096:
        return "empty or too long"
    if "\\" in path or "\0" in path:
        return "contains a backslash or NUL"
    if path.startswith("/"):
        return "is absolute"
    for part in path.split("/"):
        if part in ("", ".", ".."):
            return f"has a {part or 'empty'!r} segment" if part else "has an empty segment"
        if len(part.encode()) > 255:
            return "has a segment longer than 255 bytes"
        if not _PATH_CHARS.fullmatch(part):
            return "has characters outside [A-Za-z0-9._+@=:,~ -]"
    return None


def check_dest(path: str) -> Optional[str]:
    """Why ``path`` is not an absolute, normalized file path on a node, or None when it is."""
    if not path.startswith("/"):
        return "is not absolute"
    if path.endswith("/"):
        return "ends with '/' (a file path is needed)"
    if "//" in path:
        return "has an empty segment ('//')"
    return check_member_path(path[1:])


def fold(path: str) -> str:
    """The key under which two names collide on a case-insensitive or normalizing filesystem."""
    return unicodedata.normalize("NFC", path).casefold()


@dataclass(frozen=True)
class Member:
    """One tar member the bundle must carry, exactly."""

    path: str
    size: int
    sha256: str
    kind: str
    mode: str = "0644"


@dataclass(frozen=True)
class Binary:
    """A pinned binary: ``path`` in the bundle, installed at ``dest``."""

    name: str
    path: str
    dest: str
    mode: str
    url: str
    sha256: str
    size: int


@dataclass(frozen=True)
class FileSet:
    """A manifest ``files`` entry: members under ``files/<dest>/``."""

    src: str
    dest: str
    count: int
    size: int


# Where a step runs: "control" (here, on the node the installer runs on), "all" nodes, the nodes
# of a role, or "nodes" (the names in ``Step.nodes``).
STEP_ON = ("control", "all", *kinds.ALL_ROLES)
# When a step runs: "before-cluster" (its own phase, ``prepare``: after the packages and binaries,
# before the images and the cluster tool; the vendor's node preparation) or "after-cluster" (``steps``).
STEP_WHEN = ("before-cluster", "after-cluster")
# What a before-cluster step may declare it fixes: the preflight then warns instead of refusing on
# its nodes, and the check runs again just before the cluster comes up.
STEP_FIXES = ("swap",)
NODE_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,252}")  # an inventory node's name or address


@dataclass(frozen=True)
class Step:
    """A staged script run in order: here (``on: control``) or over SSH on the nodes it names."""

    name: str
    script: str  # member path under scripts/
    sha256: str
    on: str = "control"  # one of STEP_ON, or "nodes"
    nodes: Tuple[str, ...] = ()  # with on "nodes": the inventory names of the nodes
    serial: bool = False  # on the nodes one after the other, not all at once
    files: Tuple[str, ...] = ()  # bundle members copied to each node (checked there) before it runs
    when: str = "after-cluster"  # one of STEP_WHEN: before the images and the cluster, or after them
    fixes: Tuple[str, ...] = ()  # preflight checks the step makes pass on its nodes (STEP_FIXES)

    @property
    def target(self) -> str:
        """Where it runs, for people: control, all, a role, or the names of its nodes."""
        return ", ".join(self.nodes) or self.on


@dataclass(frozen=True)
class Deb:
    """A Debian package in ``debs/``: where it came from and why it is there."""

    name: str
    version: str
    arch: str
    path: str
    sha256: str
    size: int
    url: str
    reason: str  # "requested" or the package that depends on it


@dataclass(frozen=True)
class Rpm(Deb):
    """An rpm in ``rpms/`` (``version`` is rpm's ``epoch:version-release``, no epoch when 0)."""


@dataclass(frozen=True)
class RoledImage:
    """A locked image and the node roles that get it: a system image (one the cluster tool itself
    needs, ``rke up``) or an application image whose ``images:`` entry names its own ``roles``."""

    ref: str  # resolves with Lock.find_image
    roles: Tuple[str, ...]  # some of controlplane, etcd, worker (bundler.rkeimages)


SystemImage = RoledImage  # the name the cluster's records go by


@dataclass(frozen=True)
class Lock:
    """The parsed ``lock.json``."""

    name: str
    version: str
    platform: Dict[str, str]
    builder: str
    manifest_sha256: str
    source_date_epoch: int
    members: Tuple[Member, ...]
    binaries: Tuple[Binary, ...] = ()
    files: Tuple[FileSet, ...] = ()
    steps: Tuple[Step, ...] = ()
    images: Tuple[oci.Image, ...] = ()
    debs: Tuple[Deb, ...] = ()
    apt_sources: Tuple[Dict[str, Any], ...] = field(default=())
    min_workers: int = 0  # the installer warns when the inventory has fewer workers
    image_roles: Tuple[str, ...] = ("worker",)  # node roles that receive the images
    expires: int = 0  # epoch seconds after which sites refuse the bundle; 0 = never
    images_mode: str = "ssh-load"  # the installer's default for --images-mode
    registry: str = ""  # the installer's default for --registry
    registry_image: str = ""  # the locked image (a ref) the installer runs as the site registry
    recommends: bool = False  # debs.recommends: apt installs the bundled Recommends too
    # debs.baseline given as a dpkg status: what the closure assumes every node has (name -> version).
    deb_baseline: Dict[str, str] = field(default_factory=dict)
    # A delta bundle: the bundle it builds on, and the members it takes from that one's unpacked copy.
    base: Dict[str, str] = field(default_factory=dict)  # name, version, lock_sha256
    inherited: Tuple[Member, ...] = ()
    # The cluster tool (kind, kubernetes_version, network_plugin, tool); empty without a cluster.
    cluster: Dict[str, str] = field(default_factory=dict)
    system_images: Tuple[SystemImage, ...] = ()  # the cluster tool's own images, with their roles
    # Application images whose entry names its own roles (e.g. rancher-agent on every node);
    # the others go to the image_roles nodes.
    placed_images: Tuple[RoledImage, ...] = ()
    # debs.roles: role -> the requested packages (names) only the nodes of that role get; the
    # other requested packages go to every node.
    deb_roles: Dict[str, Tuple[str, ...]] = field(default_factory=dict)
    # rpms: the closure for Rocky/RHEL nodes, its sources (who signed) and its requests by role.
    rpms: Tuple[Rpm, ...] = ()
    rpm_sources: Tuple[Dict[str, Any], ...] = field(default=())
    rpm_roles: Dict[str, Tuple[str, ...]] = field(default_factory=dict)

    def debs_for(self, roles: Iterable[str]) -> Tuple[Deb, ...]:
        """The requested packages a node with ``roles`` installs (apt adds their closure from the
        bundled repository): every node's, and those ``deb_roles`` gives one of its roles."""
        roles = set(roles)
        by_role = {name for names in self.deb_roles.values() for name in names}
        mine = {name for role, names in self.deb_roles.items() if role in roles for name in names}
        return tuple(
            d for d in self.debs if d.reason == "requested" and (d.name not in by_role or d.name in mine)
        )

    def rpms_for(self, roles: Iterable[str]) -> Tuple[Rpm, ...]:
        """The requested rpms a node with ``roles`` installs (dnf adds their closure from the bundled
        repository): every node's, and those ``rpm_roles`` gives one of its roles."""
        roles = set(roles)
        by_role = {name for names in self.rpm_roles.values() for name in names}
        mine = {name for role, names in self.rpm_roles.items() if role in roles for name in names}
        return tuple(
            r for r in self.rpms if r.reason == "requested" and (r.name not in by_role or r.name in mine)
        )

    def deb_places(self) -> Dict[str, Tuple[str, ...]]:
        """Package name -> the roles whose nodes get it, ``()`` for every node: a requested package's
        roles from ``deb_roles``; a dependency's from the requested package its reason leads to
        (the closure of every node's requests is resolved first, so a dependency they share with
        a role's package leads to every node)."""
        by_name = {d.name: d for d in self.debs}
        roles_of: Dict[str, List[str]] = {}
        for role, names in sorted(self.deb_roles.items()):
            for name in names:
                roles_of.setdefault(name, []).append(role)
        out = {}
        for deb in self.debs:
            name, seen = deb.name, set()
            while by_name.get(name) and by_name[name].reason != "requested" and name not in seen:
                seen.add(name)
                name = by_name[name].reason
            out[deb.name] = tuple(roles_of.get(name, ()))
        return out

    def fixed_before_cluster(self, check: str, roles: Iterable[str], name: str) -> Optional[Step]:
        """The before-cluster step that declares it fixes ``check`` on the node ``name`` with
        ``roles`` (``Step.fixes``), if any."""
        roles = set(roles)
        for step in self.steps:
            if step.when != "before-cluster" or check not in step.fixes:
                continue
            if step.on == "all" or step.on in roles or name in step.nodes:
                return step
        return None

    @property
    def workloads(self) -> Tuple[oci.Image, ...]:
        """The application images the ``image_roles`` nodes get: all but the system images and
        ``registry_image``, which only the registry's node runs."""
        tool = self.find_image(self.registry_image) if self.registry_image else None
        system = {self.find_image(s.ref) for s in self.system_images}
        return tuple(i for i in self.images if i != tool and i not in system)

    @property
    def placed(self) -> Tuple[oci.Image, ...]:
        """The workloads whose entry named their own roles (``placed_images``)."""
        named = {self.find_image(p.ref) for p in self.placed_images}
        return tuple(i for i in self.workloads if i in named)

    def misplaced(self) -> List[str]:
        """``placed_images`` refs that are also a system image or the registry image: an image takes
        its nodes from one rule only (the system rule's, its entry's, or the registry node)."""
        others = {id(self.find_image(s.ref)) for s in self.system_images}
        if self.registry_image:
            others.add(id(self.find_image(self.registry_image)))
        return [p.ref for p in self.placed_images if id(self.find_image(p.ref)) in others]

    def images_for(self, roles: Iterable[str]) -> Tuple[oci.Image, ...]:
        """The images a node with ``roles`` gets, in lock order, each once: the workloads when it
        has one of ``image_roles`` (a placed one when it has one of that image's own roles), and
        the system images whose roles meet its roles."""
        roles = tuple(roles)
        placed = set(self.placed)
        chosen = set()
        if rkeimages.needed_by(self.image_roles, roles):
            chosen = {i for i in self.workloads if i not in placed}
        for record in (*self.system_images, *self.placed_images):
            image = self.find_image(record.ref)
            if image is not None and rkeimages.needed_by(record.roles, roles):
                chosen.add(image)
        return tuple(i for i in self.images if i in chosen)

    def find_image(self, ref: str) -> Optional[oci.Image]:
        """The locked image ``ref`` names (by its reference or one of its tags, normalized), if any;
        the first in lock order. One lookup in an index built once per lock, so that callers may
        ask per record and per node without cost growing with the square of the images."""
        try:
            want = oci.parse_reference(ref)
        except oci.ImageFormatError:
            return None
        return self._image_index().get(want)

    def _image_index(self) -> Dict[oci.Reference, oci.Image]:
        index: Optional[Dict[oci.Reference, oci.Image]] = self.__dict__.get("_index")
        if index is None:
            index = {}
            for image in self.images:
                for name in (image.ref, *image.tags):
                    try:
                        index.setdefault(oci.parse_reference(name), image)
                    except oci.ImageFormatError:
                        continue  # an untagged image's ref is its digest
            object.__setattr__(self, "_index", index)  # a cache beside the frozen fields
        return index

    @property
    def payload_size(self) -> int:
        """Bytes of every member the lock lists."""
        return sum(m.size for m in self.members)

    def member(self, path: str) -> Member:
        """The member at ``path``; raises ``KeyError``."""
        for m in self.members:
            if m.path == path:
                return m
        raise KeyError(path)

    def to_dict(self) -> Dict[str, Any]:
        """Plain data, as ``lock.json`` holds it."""
        return {
            "format": FORMAT,
            "name": self.name,
            "version": self.version,
            "platform": dict(self.platform),
            "builder": self.builder,
            "manifest_sha256": self.manifest_sha256,
            "source_date_epoch": self.source_date_epoch,
            "members": [asdict(m) for m in self.members],
            "binaries": [asdict(b) for b in self.binaries],
            "files": [asdict(f) for f in self.files],
            # A step here (the default) reads as before: only what differs from it is written.
            "steps": [
                {
                    k: v
                    for k, v in asdict(s).items()
                    if k in ("name", "script", "sha256") or v != getattr(_HERE, k)
                }
                for s in self.steps
            ],
            "images": [asdict(i) for i in self.images],
            "debs": [asdict(d) for d in self.debs],
            "apt_sources": [dict(a) for a in self.apt_sources],
            "min_workers": self.min_workers,
            "image_roles": list(self.image_roles),
            "expires": self.expires,
            "install": {
                "images_mode": self.images_mode,
                "registry": self.registry,
                "registry_image": self.registry_image,
                # Written only when set, so that bundles without it keep their exact bytes.
                **({"recommends": True} if self.recommends else {}),
            },
            "base": dict(self.base),
            "inherited": [asdict(m) for m in self.inherited],
            "cluster": dict(self.cluster),
            "system_images": [{"ref": s.ref, "roles": list(s.roles)} for s in self.system_images],
            "placed_images": [{"ref": p.ref, "roles": list(p.roles)} for p in self.placed_images],
            # Written only when set, so that bundles without it keep their exact bytes.
            **({"deb_baseline": dict(sorted(self.deb_baseline.items()))} if self.deb_baseline else {}),
            **(
                {"deb_roles": {r: list(n) for r, n in sorted(self.deb_roles.items())}}
                if self.deb_roles
                else {}
            ),
            # Written only when the bundle carries rpms, so that other bundles keep their exact bytes.
            **(
                {
                    "rpms": [asdict(r) for r in self.rpms],
                    "rpm_sources": [dict(a) for a in self.rpm_sources],
                    "rpm_roles": {r: list(n) for r, n in sorted(self.rpm_roles.items())},
                }
                if self.rpms
                else {}
            ),
        }

    def to_bytes(self) -> bytes:
        """The canonical encoding: sorted keys, one list item per line, UTF-8, final newline."""
        data = self.to_dict()
        parts = []
        for key in sorted(data):
            value = data[key]
            if isinstance(value, list) and value:
                items = ",\n".join("    " + _dumps(item) for item in value)
                parts.append(f'  "{key}": [\n{items}\n  ]')
            else:
                parts.append(f'  "{key}": {_dumps(value)}')
        return ("{\n" + ",\n".join(parts) + "\n}\n").encode("utf-8")

    def sha256sums(self) -> str:
        """``sha256sum -c`` input for every member."""
        return "".join(f"{m.sha256}  {m.path}\n" for m in self.members)

    @classmethod
    def from_bytes(cls, data: bytes) -> "Lock":
        """Parse untrusted ``lock.json`` bytes.

        Raises:
            LockError: too large, not JSON, duplicate keys, unknown format, a
                field of the wrong type, an unsafe path, a bad digest or size,
                or a member listed twice.
        """
        if len(data) > MAX_LOCK_BYTES:
            raise LockError(f"{LOCK_NAME} is {len(data)} bytes, over the {MAX_LOCK_BYTES} limit")
        try:
            doc = json.loads(data.decode("utf-8"), object_pairs_hook=oci.no_duplicate_keys)
        except (UnicodeDecodeError, ValueError) as exc:
            raise LockError(f"{LOCK_NAME} is not valid JSON: {exc}") from exc
        return _parse(doc)


def _dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(", ", ": "))


class _Fields:
    """Typed access to one JSON object, raising ``LockError`` with its location."""

    def __init__(self, obj: Any, where: str) -> None:
        if not isinstance(obj, dict):
            raise LockError(f"{LOCK_NAME}: {where} is not an object")
        self.obj = obj
        self.where = where

    def get(self, key: str, kind: Union[type, Tuple[type, ...]]) -> Any:
        if key not in self.obj:
            raise LockError(f"{LOCK_NAME}: {self.where} lacks {key!r}")
        value = self.obj[key]
        if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
            raise LockError(f"{LOCK_NAME}: {self.where}.{key} has the wrong type")
        return value

    def sha(self, key: str) -> str:
        value = self.get(key, str)
        if not _SHA256.fullmatch(value):
            raise LockError(f"{LOCK_NAME}: {self.where}.{key} is not 64 lowercase hex digits")
        return str(value)

    def size(self, key: str) -> int:
        value = self.get(key, int)
        if value < 0:
            raise LockError(f"{LOCK_NAME}: {self.where}.{key} is negative")
        return int(value)

    def digest(self, key: str) -> str:
        value = self.get(key, str)
        if not value.startswith("sha256:") or not _SHA256.fullmatch(value[7:]):
            raise LockError(f"{LOCK_NAME}: {self.where}.{key} is not a sha256:<64 hex> digest")
        return str(value)

    def checked(self, key: str, check: Callable[[str], Optional[str]]) -> str:
        """The string at ``key`` when ``check`` finds no problem with it (a phrase to follow the value)."""
        value = self.get(key, str)
        problem = check(value)
        if problem:
            raise LockError(f"{LOCK_NAME}: {self.name(key)} {value!r} {problem}")
        return str(value)

    def path(self, key: str) -> str:
        return self.checked(key, check_member_path)

    def match(self, key: str, regex: "re.Pattern[str]", what: str) -> str:
        value = self.get(key, str)
        if not regex.fullmatch(value):
            raise LockError(
                f"{LOCK_NAME}: {self.name(key)} {value!r} is not a valid {what} ({regex.pattern})"
            )
        return str(value)

    def mode(self, key: str) -> str:
        value = self.get(key, str)
        if value not in MODES:
            raise LockError(f"{LOCK_NAME}: {self.name(key)} {value!r} is not one of {', '.join(MODES)}")
        return str(value)

    def name(self, key: str) -> str:
        return key if self.where == "document" else f"{self.where}.{key}"

    def items(self, key: str) -> List[Any]:
        return list(self.get(key, list)) if key in self.obj else []


def _image_roles(top: _Fields) -> Tuple[str, ...]:
    roles = top.items("image_roles") if "image_roles" in top.obj else ["worker"]
    if not roles or not all(r in ("controlplane", "etcd", "worker") for r in roles):
        raise LockError(f"{LOCK_NAME}: image_roles must list some of controlplane, etcd, worker")
    return tuple(roles)


def _reference(value: str, where: str) -> None:
    """Refuse ``value`` unless it is an image reference (as the manifest and the builder write them)."""
    try:
        oci.parse_reference(value)
    except oci.ImageFormatError as exc:
        raise LockError(f"{LOCK_NAME}: {where} {value!r}: {exc}") from None


def _install(top: _Fields) -> Dict[str, Any]:
    install = top.get("install", dict) if "install" in top.obj else {}
    mode = install.get("images_mode", "ssh-load")
    registry = install.get("registry", "")
    if mode not in IMAGES_MODES:
        raise LockError(f"{LOCK_NAME}: install.images_mode must be one of {', '.join(IMAGES_MODES)}")
    if not isinstance(registry, str) or (registry and not REGISTRY_RE.fullmatch(registry)):
        raise LockError(f"{LOCK_NAME}: install.registry must be HOST:PORT")
    image = install.get("registry_image", "")
    if not isinstance(image, str):
        raise LockError(f"{LOCK_NAME}: install.registry_image must be an image reference")
    if image:
        _reference(image, "install.registry_image")
    recommends = install.get("recommends", False)
    if not isinstance(recommends, bool):
        raise LockError(f"{LOCK_NAME}: install.recommends must be true or false")
    return {"images_mode": mode, "registry": registry, "registry_image": image, "recommends": recommends}


def _deb_baseline(top: _Fields) -> Dict[str, str]:
    """The packages a dpkg-status baseline says every node has; they reach a shell on the nodes."""
    if "deb_baseline" not in top.obj:
        return {}
    raw = top.get("deb_baseline", dict)
    for name, version in raw.items():
        if (
            not DEB_NAME_RE.fullmatch(name)
            or not isinstance(version, str)
            or not DEB_VERSION_RE.fullmatch(version)
        ):
            raise LockError(f"{LOCK_NAME}: deb_baseline has an unreadable entry {name!r}: {version!r}")
    return dict(raw)


def _package_fields(f: "_Fields") -> Dict[str, Any]:
    """The fields a ``debs`` and an ``rpms`` record share (the two have one shape)."""
    return {
        "name": f.get("name", str),
        "version": f.get("version", str),
        "arch": f.get("arch", str),
        "path": f.path("path"),
        "sha256": f.sha("sha256"),
        "size": f.size("size"),
        "url": f.get("url", str),
        "reason": f.get("reason", str),
    }


def _deb_roles(top: _Fields, debs: Sequence[Deb], key: str = "deb_roles") -> Dict[str, Tuple[str, ...]]:
    """``deb_roles`` (or ``rpm_roles``): for each node role, requested packages only its nodes get."""
    if key not in top.obj:
        return {}
    requested = {d.name for d in debs if d.reason == "requested"}
    out = {}
    for role, names in top.get(key, dict).items():
        if (
            role not in kinds.ALL_ROLES
            or not isinstance(names, list)
            or not names
            or not all(isinstance(n, str) and n in requested for n in names)
        ):
            raise LockError(
                f"{LOCK_NAME}: {key}: {role!r} must be a node role listing requested packages of "
                f"{key.partition('_')[0]}s"
            )
        out[role] = tuple(names)
    return out


def _base(top: _Fields) -> Dict[str, str]:
    """A delta's base: its name and version become a folder name under --workdir, so both are checked."""
    if "base" not in top.obj or top.obj["base"] == {}:
        return {}
    base = _Fields(top.get("base", dict), "base")
    return {
        "name": base.match("name", NAME_RE, "bundle name"),
        "version": base.checked("version", versions.check),
        "lock_sha256": base.sha("lock_sha256"),
    }


def _cluster(top: _Fields, binaries: List[Binary]) -> Dict[str, str]:
    """``cluster``: exactly kind, kubernetes_version, network_plugin and tool (a bundled binary)."""
    if "cluster" not in top.obj or top.obj["cluster"] == {}:
        return {}
    f = _Fields(top.get("cluster", dict), "cluster")
    extra = sorted(set(f.obj) - set(CLUSTER_KEYS))
    if extra:
        raise LockError(f"{LOCK_NAME}: cluster has unknown key(s) {', '.join(map(repr, extra))}")
    out = {
        "kind": f.get("kind", str),
        "kubernetes_version": f.match("kubernetes_version", K8S_VERSION_RE, "Kubernetes version"),
        "network_plugin": f.get("network_plugin", str),
        "tool": f.match("tool", ITEM_NAME_RE, "binary name"),
    }
    for key in CLUSTER_OPTIONAL:
        if key in f.obj:
            out[key] = f.get(key, str)
    known = (*kinds.KINDS, k0simages.KIND)
    if out["kind"] not in known:
        raise LockError(f"{LOCK_NAME}: cluster.kind {out['kind']!r} is not one of {', '.join(known)}")
    plugins = k0simages.NETWORK_PROVIDERS if out["kind"] == k0simages.KIND else rkeimages.NETWORK_PLUGINS
    if out["network_plugin"] not in plugins:
        raise LockError(
            f"{LOCK_NAME}: cluster.network_plugin {out['network_plugin']!r} is not one of "
            f"{', '.join(plugins)}"
        )
    if out.get("shared_roles", "allowed") not in k0simages.SHARED_ROLES:
        raise LockError(
            f"{LOCK_NAME}: cluster.shared_roles must be one of {', '.join(k0simages.SHARED_ROLES)}"
        )
    if "k0sctl" in out and out["k0sctl"] not in [b.name for b in binaries]:
        raise LockError(f"{LOCK_NAME}: cluster.k0sctl {out['k0sctl']!r} is not one of the bundle's binaries")
    if out["tool"] not in [b.name for b in binaries]:
        raise LockError(f"{LOCK_NAME}: cluster.tool {out['tool']!r} is not one of the bundle's binaries")
    return out


def _roled_images(top: _Fields, lock: Lock, key: str) -> Tuple[RoledImage, ...]:
    """``system_images`` or ``placed_images``: each a locked image (by reference) with the node
    roles that get it."""
    out: List[RoledImage] = []
    seen: Set[int] = set()
    for i, raw in enumerate(top.items(key)):
        f = _Fields(raw, f"{key}[{i}]")
        extra = sorted(set(f.obj) - {"ref", "roles"})
        if extra:
            raise LockError(f"{LOCK_NAME}: {key}[{i}] has unknown key(s) {', '.join(map(repr, extra))}")
        ref = f.get("ref", str)
        _reference(ref, f"{key}[{i}].ref")
        if lock.find_image(ref) is None:
            raise LockError(f"{LOCK_NAME}: {key}[{i}].ref {ref!r} is not one of the locked images")
        roles = f.get("roles", list)
        if not roles or not all(r in kinds.ALL_ROLES for r in roles) or len(set(roles)) != len(roles):
            raise LockError(
                f"{LOCK_NAME}: {key}[{i}].roles must list some of {', '.join(kinds.ALL_ROLES)}, each once"
            )
        image = lock.find_image(ref)
        if id(image) in seen:  # the same image, under this name or another of its names
            raise LockError(f"{LOCK_NAME}: {key}: {ref!r} is listed twice")
        seen.add(id(image))
        out.append(RoledImage(ref, tuple(roles)))
    if out and key == "system_images" and not lock.cluster:
        raise LockError(f"{LOCK_NAME}: system_images need a cluster (kind, kubernetes_version, ...)")
    return tuple(out)


_HERE = Step("", "", "")  # the defaults of a step


def _step(f: _Fields) -> Step:
    """One ``steps`` entry; ``on``, ``nodes``, ``serial`` and ``files`` may be absent (a step here)."""
    on = f.get("on", str) if "on" in f.obj else "control"
    nodes = f.get("nodes", list) if "nodes" in f.obj else []
    if (on == "nodes") != bool(nodes) or (on != "nodes" and on not in STEP_ON):
        raise LockError(f"{LOCK_NAME}: {f.where}.on {on!r} must be one of {', '.join(STEP_ON)}, or nodes "
                        "with a list of node names")  # fmt: skip
    if not all(isinstance(n, str) and NODE_NAME_RE.fullmatch(n) for n in nodes) or len(set(nodes)) < len(
        nodes
    ):
        raise LockError(f"{LOCK_NAME}: {f.where}.nodes must list node names, each once")
    files = f.get("files", list) if "files" in f.obj else []
    for member in files:
        if not isinstance(member, str) or check_member_path(member) or not member.startswith("files/"):
            raise LockError(f"{LOCK_NAME}: {f.where}.files must list members under files/")
    serial = f.get("serial", bool) if "serial" in f.obj else False
    when = f.get("when", str) if "when" in f.obj else "after-cluster"
    if when not in STEP_WHEN:
        raise LockError(f"{LOCK_NAME}: {f.where}.when {when!r} must be one of {', '.join(STEP_WHEN)}")
    fixes = f.get("fixes", list) if "fixes" in f.obj else []
    if when == "before-cluster" and on == "control":
        raise LockError(f"{LOCK_NAME}: {f.where}.when before-cluster needs a step on nodes")
    if not all(x in STEP_FIXES for x in fixes) or (fixes and when != "before-cluster"):
        raise LockError(f"{LOCK_NAME}: {f.where}.fixes must list some of {', '.join(STEP_FIXES)}, "
                        "on a before-cluster step")  # fmt: skip
    return Step(f.match("name", ITEM_NAME_RE, "step name"), f.path("script"), f.sha("sha256"), on,
                tuple(nodes), serial, tuple(files), when, tuple(fixes))  # fmt: skip


def _parse(doc: Any) -> Lock:
    top = _Fields(doc, "document")
    if top.obj.get("format") != FORMAT:
        raise LockError(
            f"{LOCK_NAME}: format {top.obj.get('format')!r} is not {FORMAT}; "
            "this airbundle cannot read it (use the airbundle that built it)"
        )
    members = []
    seen: Dict[str, str] = {}
    for i, raw in enumerate(top.items("members")):
        f = _Fields(raw, f"members[{i}]")
        kind = f.get("kind", str)
        mode = f.get("mode", str)
        if kind not in MEMBER_KINDS or mode not in MODES:
            raise LockError(f"{LOCK_NAME}: members[{i}] has unknown kind or mode")
        m = Member(f.path("path"), f.size("size"), f.sha("sha256"), kind, mode)
        if m.path in (LOCK_NAME, SIG_NAME):
            raise LockError(f"{LOCK_NAME}: members[{i}] names {m.path}, which the lock cannot list")
        key = fold(m.path)
        if key in seen:
            raise LockError(
                f"{LOCK_NAME}: member {m.path!r} is listed twice (or collides with {seen[key]!r})"
            )
        seen[key] = m.path
        members.append(m)
    binaries = []
    for i, raw in enumerate(top.items("binaries")):
        f = _Fields(raw, f"binaries[{i}]")
        binaries.append(
            Binary(
                name=f.match("name", ITEM_NAME_RE, "binary name"),
                path=f.path("path"),
                dest=f.checked("dest", check_dest),
                mode=f.mode("mode"),
                url=f.get("url", str),
                sha256=f.sha("sha256"),
                size=f.size("size"),
            )
        )
    files = []
    for i, raw in enumerate(top.items("files")):
        f = _Fields(raw, f"files[{i}]")
        files.append(FileSet(f.get("src", str), f.path("dest"), f.size("count"), f.size("size")))
    steps = []
    for i, raw in enumerate(top.items("steps")):
        f = _Fields(raw, f"steps[{i}]")
        steps.append(_step(f))
    images = []
    for i, raw in enumerate(top.items("images")):
        f = _Fields(raw, f"images[{i}]")
        layers = []
        for j, layer in enumerate(f.get("layers", list)):
            lf = _Fields(layer, f"images[{i}].layers[{j}]")
            layers.append(oci.Layer(lf.digest("digest"), lf.size("size"), lf.get("media_type", str)))
        tags = f.get("tags", list)
        if not all(isinstance(t, str) for t in tags):
            raise LockError(f"{LOCK_NAME}: images[{i}].tags must be strings")
        for tag in tags:  # repository paths on the site registry, words in docker commands
            _reference(tag, f"images[{i}].tags")
        ref = f.get("ref", str)
        if not (ref.startswith("sha256:") and _SHA256.fullmatch(ref[7:])):  # an untagged image: its ID
            _reference(ref, f"images[{i}].ref")
        images.append(
            oci.Image(
                ref=ref,
                tags=tuple(tags),
                source=f.get("source", str),
                manifest=f.digest("manifest"),
                media_type=f.get("media_type", str),
                config=f.digest("config"),
                platform=f.get("platform", str),
                layers=tuple(layers),
            )
        )
    blob_refs = [f"images/{oci.blob_path(d)}" for im in images for d in (im.manifest, im.config)]
    blob_refs += [f"images/{oci.blob_path(la.digest)}" for im in images for la in im.layers]
    debs = []
    for i, raw in enumerate(top.items("debs")):
        f = _Fields(raw, f"debs[{i}]")
        debs.append(Deb(**_package_fields(f)))
    blob_refs += [d.path for d in debs]
    rpm_records = []
    for i, raw in enumerate(top.items("rpms") if "rpms" in top.obj else []):
        f = _Fields(raw, f"rpms[{i}]")
        rpm_records.append(Rpm(**_package_fields(f)))
        if not _RPM_WORD.fullmatch(rpm_records[-1].name + rpm_records[-1].version + rpm_records[-1].arch):
            raise LockError(f"{LOCK_NAME}: rpms[{i}] has an unusable name, version or arch")
    blob_refs += [r.path for r in rpm_records]
    inherited = []
    for i, raw in enumerate(top.items("inherited")):
        f = _Fields(raw, f"inherited[{i}]")
        member = Member(
            f.path("path"), f.size("size"), f.sha("sha256"), f.get("kind", str), f.get("mode", str)
        )
        if member.kind not in MEMBER_KINDS or member.mode not in MODES:
            raise LockError(f"{LOCK_NAME}: inherited[{i}] has unknown kind or mode")
        if fold(member.path) in seen:
            raise LockError(f"{LOCK_NAME}: {member.path!r} is both carried and inherited")
        inherited.append(member)
    base = _base(top)
    if inherited and not base:
        raise LockError(f"{LOCK_NAME}: inherited members need a base (name, version, lock_sha256)")
    listed = set(seen.values()) | {m.path for m in inherited}
    step_files = [m for s in steps for m in s.files]
    for ref in [b.path for b in binaries] + [s.script for s in steps] + step_files + blob_refs:
        if ref not in listed:
            raise LockError(f"{LOCK_NAME}: {ref!r} is used but not listed as a member")
    plat = _Fields(top.get("platform", dict), "platform")
    platform = {str(k): plat.match(k, ITEM_NAME_RE, "platform value") for k in plat.obj}
    lock = Lock(
        name=top.match("name", NAME_RE, "bundle name"),
        version=top.checked("version", versions.check),
        platform=platform,
        builder=top.get("builder", str),
        manifest_sha256=top.sha("manifest_sha256"),
        source_date_epoch=top.size("source_date_epoch"),
        members=tuple(members),
        binaries=tuple(binaries),
        files=tuple(files),
        steps=tuple(steps),
        images=tuple(images),
        debs=tuple(debs),
        apt_sources=tuple(top.items("apt_sources")),
        min_workers=top.size("min_workers") if "min_workers" in top.obj else 0,
        image_roles=_image_roles(top),
        expires=top.size("expires") if "expires" in top.obj else 0,
        **_install(top),
        base=base,
        inherited=tuple(inherited),
        cluster=_cluster(top, binaries),
        system_images=(),
        placed_images=(),
        deb_baseline=_deb_baseline(top),
        deb_roles=_deb_roles(top, debs),
        rpms=tuple(rpm_records),
        rpm_sources=tuple(top.items("rpm_sources")) if "rpm_sources" in top.obj else (),
        rpm_roles=_deb_roles(top, rpm_records, "rpm_roles") if "rpm_roles" in top.obj else {},
    )
    lock = replace(
        lock,
        system_images=_roled_images(top, lock, "system_images"),
        placed_images=_roled_images(top, lock, "placed_images"),
    )
    misplaced = lock.misplaced()
    if misplaced:
        raise LockError(
            f"{LOCK_NAME}: placed_images: {misplaced[0]!r} is a system image or the registry image, "
            "whose nodes are decided otherwise"
        )
    return lock
