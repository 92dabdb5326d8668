"""Container image formats as data: references, manifests, configs and the bundle's image layout.

Pure functions over bytes and plain objects, no I/O: normalizing image
references the way Docker does, reading ``docker save`` ``manifest.json``
and OCI ``index.json`` documents, synthesizing a canonical OCI manifest for
images that arrive without one, and writing the three small files of the
bundle's ``images/`` folder (``oci-layout``, ``index.json`` and Docker's
``manifest.json``) so that a tar of that folder both ``docker load``s
(Docker 18.09 and later) and imports as an OCI layout.

Fetching, saving and ingesting images happen in ``bundler.images``.
"""

import hashlib
import json
import re
from bundler.compat import dataclass
from typing import Any, Dict, List, Optional, Tuple

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
MANIFEST_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST)
INDEX_TYPES = (OCI_INDEX, DOCKER_LIST)
MAX_JSON_BYTES = 4 * 1024 * 1024  # manifests and configs are kilobytes; refuse absurd ones

GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
DEFAULT_DOMAIN = "docker.io"
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
# distribution/reference grammar, simplified: lowercase path components, tag, digest.
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_REFERENCE = re.compile(
    rf"(?P<name>{_COMPONENT}(?:/{_COMPONENT})*)(?::(?P<tag>[\w][\w.-]{{0,127}}))?(?:@(?P<digest>sha256:[0-9a-f]{{64}}))?"
)
_DOMAIN = re.compile(r"(?:localhost|[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.?[A-Za-z0-9-]*)(?::\d+)?")


class ImageFormatError(ValueError):
    """An image document or reference is malformed (callers add file and image context)."""


def sha256_digest(data: bytes) -> str:
    """``sha256:<hex>`` of ``data``."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def check_digest(value: Any, what: str) -> str:
    """``value`` when it is a ``sha256:<64 hex>`` digest; raises ``ImageFormatError``."""
    if not isinstance(value, str) or not _DIGEST.fullmatch(value):
        raise ImageFormatError(f"{what}: {value!r} is not a sha256 digest")
    return value


@dataclass(frozen=True)
class Reference:
    """A normalized image reference: ``domain/path[:tag][@digest]``."""

    domain: str
    path: str
    tag: Optional[str] = None
    digest: Optional[str] = None

    @property
    def name(self) -> str:
        """Fully qualified repository name, e.g. ``docker.io/library/busybox``."""
        return f"{self.domain}/{self.path}"

    def __str__(self) -> str:
        out = self.name
        if self.tag:
            out += f":{self.tag}"
        if self.digest:
            out += f"@{self.digest}"
        return out

    @property
    def familiar(self) -> str:
        """The short form Docker shows (``busybox:latest``, ``rancher/rancher:v2.7.9``)."""
        path = self.path
        if self.domain == DEFAULT_DOMAIN:
            path = path[len("library/") :] if path.startswith("library/") else path
            name = path
        else:
            name = self.name
        return f"{name}:{self.tag}" if self.tag else name


def parse_reference(text: str) -> Reference:
    """Normalize a reference as Docker does (``busybox`` → ``docker.io/library/busybox:latest``).

    Raises:
        ImageFormatError: not a valid reference.
    """
    domain, rest = DEFAULT_DOMAIN, text
    first, sep, remainder = text.partition("/")
    if sep and (("." in first or ":" in first or first == "localhost") and _DOMAIN.fullmatch(first)):
        domain, rest = first, remainder
    match = _REFERENCE.fullmatch(rest)
    if not match:
        raise ImageFormatError(
            f"{text!r} is not an image reference (expected [registry/]name[:tag][@sha256:...], lowercase)"
        )
    path = match.group("name")
    if domain in (DEFAULT_DOMAIN, "index.docker.io") and "/" not in path:
        path = f"library/{path}"
    domain = DEFAULT_DOMAIN if domain == "index.docker.io" else domain
    tag, digest = match.group("tag"), match.group("digest")
    if tag is None and digest is None:
        tag = "latest"
    return Reference(domain, path, tag, digest)


def no_duplicate_keys(pairs: List[Tuple[str, Any]]) -> Dict[str, Any]:
    """``json.loads`` object hook refusing duplicate keys (which JSON parsers resolve differently)."""
    out: Dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def load_json(data: bytes, what: str) -> Any:
    """Parse a small JSON document, refusing huge ones and duplicate keys."""
    if len(data) > MAX_JSON_BYTES:
        raise ImageFormatError(f"{what} is {len(data)} bytes; refusing to parse")
    try:
        return json.loads(data.decode("utf-8"), object_pairs_hook=no_duplicate_keys)
    except (UnicodeDecodeError, ValueError) as exc:
        raise ImageFormatError(f"{what} is not valid JSON: {exc}") from exc


def canonical(doc: Any) -> bytes:
    """Deterministic JSON bytes for documents we write ourselves."""
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


@dataclass(frozen=True)
class Layer:
    """A layer blob: its digest and size as stored, and its media type."""

    digest: str
    size: int
    media_type: str


@dataclass(frozen=True)
class Image:
    """One image in the bundle's store (the lock records these fields)."""

    ref: str  # fully qualified, e.g. docker.io/rancher/rancher:v2.7.9
    tags: Tuple[str, ...]  # familiar names written to manifest.json RepoTags
    source: str  # registry | daemon | archive
    manifest: str  # digest of the manifest blob
    media_type: str  # the manifest's media type
    config: str  # digest of the config blob = the image ID
    platform: str  # os/arch[/variant]
    layers: Tuple[Layer, ...]

    @property
    def size(self) -> int:
        """Bytes of all layers as stored."""
        return sum(layer.size for layer in self.layers)


def layer_media_type(head: bytes) -> str:
    """The OCI layer media type for a blob starting with ``head`` (tar, gzip or zstd)."""
    if head.startswith(GZIP_MAGIC):
        return OCI_LAYER_GZIP
    if head.startswith(ZSTD_MAGIC):
        return OCI_LAYER_ZSTD
    return OCI_LAYER


def config_platform(config: bytes, what: str) -> Tuple[str, List[str]]:
    """(``os/arch[/variant]``, the rootfs diff IDs) from an image config."""
    doc = load_json(config, what)
    if not isinstance(doc, dict):
        raise ImageFormatError(f"{what} is not an image config")
    os_, arch = doc.get("os"), doc.get("architecture")
    if not isinstance(os_, str) or not isinstance(arch, str):
        raise ImageFormatError(f"{what} lacks os/architecture")
    platform = f"{os_}/{arch}" + (f"/{doc['variant']}" if isinstance(doc.get("variant"), str) else "")
    rootfs = doc.get("rootfs")
    diff_ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
    if not isinstance(diff_ids, list):
        raise ImageFormatError(f"{what} lacks rootfs.diff_ids")
    return platform, [check_digest(d, f"{what} diff_id") for d in diff_ids]


def synthesize_manifest(config_digest: str, config_size: int, layers: List[Layer]) -> bytes:
    """A canonical OCI image manifest for an image that came without one (``docker save``)."""
    return canonical(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": config_size},
            "layers": [{"mediaType": la.media_type, "digest": la.digest, "size": la.size} for la in layers],
        }
    )


@dataclass(frozen=True)
class SavedImage:
    """One entry of a ``docker save`` ``manifest.json``: member paths inside the archive."""

    config: str
    layers: Tuple[str, ...]
    repo_tags: Tuple[str, ...]


def parse_docker_manifest(data: bytes, what: str) -> List[SavedImage]:
    """Parse a ``docker save`` ``manifest.json``."""
    doc = load_json(data, what)
    if not isinstance(doc, list) or not doc:
        raise ImageFormatError(f"{what} is not a non-empty list of images")
    out = []
    for i, item in enumerate(doc):
        if not isinstance(item, dict):
            raise ImageFormatError(f"{what}[{i}] is not an object")
        config, layers, tags = item.get("Config"), item.get("Layers"), item.get("RepoTags") or []
        if not isinstance(config, str) or not isinstance(layers, list) or not isinstance(tags, list):
            raise ImageFormatError(f"{what}[{i}] needs Config, Layers and RepoTags")
        if not all(isinstance(x, str) for x in [*layers, *tags]):
            raise ImageFormatError(f"{what}[{i}]: Layers and RepoTags must be strings")
        out.append(SavedImage(config, tuple(layers), tuple(tags)))
    return out


def parse_index(data: bytes, what: str) -> List[Tuple[str, str, Dict[str, Any]]]:
    """(media type, digest, annotations) of each entry of an OCI ``index.json``."""
    doc = load_json(data, what)
    manifests = doc.get("manifests") if isinstance(doc, dict) else None
    if not isinstance(manifests, list):
        raise ImageFormatError(f"{what} has no manifests list")
    out = []
    for i, entry in enumerate(manifests):
        if not isinstance(entry, dict):
            raise ImageFormatError(f"{what}: manifests[{i}] is not an object")
        notes = entry.get("annotations")
        annotations: Dict[str, Any] = notes if isinstance(notes, dict) else {}
        out.append(
            (
                str(entry.get("mediaType", "")),
                check_digest(entry.get("digest"), f"{what}: manifests[{i}]"),
                annotations,
            )
        )
    return out


def parse_manifest(data: bytes, what: str) -> Tuple[str, str, List[Layer]]:
    """(media type, config digest, layers) of an image manifest (OCI or Docker schema 2)."""
    doc = load_json(data, what)
    if not isinstance(doc, dict) or doc.get("schemaVersion") != 2:
        raise ImageFormatError(f"{what} is not a schema 2 image manifest")
    media_type = doc.get("mediaType") or OCI_MANIFEST
    if media_type in INDEX_TYPES or "manifests" in doc:
        raise ImageFormatError(f"{what} is an index, not an image manifest")
    config = doc.get("config")
    layers = doc.get("layers")
    if not isinstance(config, dict) or not isinstance(layers, list):
        raise ImageFormatError(f"{what} lacks config or layers")
    out = []
    for i, layer in enumerate(layers):
        if not isinstance(layer, dict) or not isinstance(layer.get("size"), int) or layer["size"] < 0:
            raise ImageFormatError(f"{what}: layers[{i}] is malformed")
        out.append(
            Layer(
                check_digest(layer.get("digest"), f"{what}: layers[{i}]"),
                layer["size"],
                str(layer.get("mediaType", OCI_LAYER)),
            )
        )
    return str(media_type), check_digest(config.get("digest"), f"{what}: config"), out


def blob_path(digest: str) -> str:
    """Where a blob lives inside ``images/``."""
    return "blobs/sha256/" + digest.split(":", 1)[-1]


def layout_files(images: List[Image], manifest_sizes: Dict[str, int]) -> Dict[str, bytes]:
    """``oci-layout``, ``index.json`` and Docker's ``manifest.json`` for the bundle's store.

    ``manifest.json`` lists each image once with all its tags, in the order given,
    pointing at the shared blobs, so ``docker load`` (which reads only this file)
    loads every image; ``index.json`` names each tag for OCI tools and containerd.
    """
    docker = []
    index = []
    for image in images:
        docker.append(
            {
                "Config": blob_path(image.config),
                "RepoTags": list(image.tags),
                "Layers": [blob_path(layer.digest) for layer in image.layers],
            }
        )
        names = [str(parse_reference(tag)) for tag in image.tags] or [image.ref]
        for name in names:
            os_, _, arch_variant = image.platform.partition("/")
            arch, _, variant = arch_variant.partition("/")
            platform = {"os": os_, "architecture": arch, **({"variant": variant} if variant else {})}
            index.append(
                {
                    "mediaType": image.media_type,
                    "digest": image.manifest,
                    "size": manifest_sizes[image.manifest],
                    "platform": platform,
                    "annotations": {
                        "io.containerd.image.name": name,
                        # The full name, not just the tag: tags repeat across images.
                        "org.opencontainers.image.ref.name": name,
                    },
                }
            )
    return {
        "oci-layout": canonical({"imageLayoutVersion": "1.0.0"}),
        "index.json": canonical({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": index}),
        "manifest.json": canonical(docker),
    }
