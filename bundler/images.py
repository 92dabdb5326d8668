"""Collect container images into the content-addressed cache; the only user of the docker SDK.

Two sources land here: the local Docker engine (``from: daemon``, a streamed
``docker save``) and vendor archives (``archive:``: ``docker save`` output in
the old or the new layout, plain or gzipped, or an OCI image-layout tar).
Each archive is read once as a stream, never extracted: every regular member
goes into the cache under its SHA-256, names are checked (no absolute or
``..`` paths, links only to members inside), and the images it holds come
back as ``oci.Image`` records whose blobs are all in the cache. Images saved
without a registry manifest get a canonical OCI manifest synthesized.

Registry pulls, and writing the bundle's ``images/`` folder, are not here.
"""

from __future__ import annotations

import gzip
import io
import logging
import os
import posixpath
import tarfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from bundler import oci
from bundler.cache import Cache
from bundler.errors import FetchError, InputError

log = logging.getLogger(__name__)

MAX_LINK_HOPS = 16
DOCKER_TIMEOUT = 900  # seconds: saving a multi-GB image takes minutes


class ArchiveError(InputError):
    """A vendor image archive is unreadable or unsafe (exit 2); names the file and member."""


@dataclass
class Collected:
    """Images gathered from one source, with the cache path of every blob they use."""

    images: list[oci.Image] = field(default_factory=list)
    blobs: dict[str, Path] = field(default_factory=dict)  # digest -> cache path
    roles: dict[str, tuple[str, ...]] = field(default_factory=dict)  # ref -> its entry's own roles


class _ChunkReader(io.RawIOBase):
    """A read-only file over an iterator of byte chunks (the docker SDK's save stream)."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks: Iterator[bytes] = iter(chunks)
        self._buf = b""

    def readable(self) -> bool:
        return True

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        while not self._buf:
            try:
                self._buf = next(self._chunks)
            except StopIteration:
                return 0
        n = min(len(b), len(self._buf))
        b[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        return n


def _member_name(name: str, where: str) -> str:
    clean = name[2:] if name.startswith("./") else name
    clean = clean.rstrip("/")
    parts = clean.split("/")
    if not clean or clean.startswith("/") or "\0" in clean or ".." in parts:
        raise ArchiveError(f"{where}: unsafe member name {name!r} (absolute or '..'); the archive is refused")
    return clean


def _chunks(f: IO[bytes], size: int = 1 << 20) -> Iterator[bytes]:
    while chunk := f.read(size):
        yield chunk


class _Archive:
    """The regular members of one image archive, each stored in the cache, plus its links."""

    def __init__(self, cache: Cache, where: str) -> None:
        self.cache = cache
        self.where = where
        self.files: dict[str, tuple[str, int]] = {}  # name -> (sha256 hex, size)
        self.links: dict[str, str] = {}  # name -> target name

    def read(self, stream: IO[bytes]) -> None:
        try:
            with tarfile.open(fileobj=stream, mode="r|") as tar:
                for member in tar:
                    self._take(tar, member)
        except (tarfile.TarError, EOFError, OSError, gzip.BadGzipFile) as exc:
            raise ArchiveError(f"{self.where}: not a readable image archive: {exc}") from exc

    def _take(self, tar: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        name = _member_name(member.name, self.where)
        if member.isdir():
            return
        if member.issym() or member.islnk():
            base = posixpath.dirname(name) if member.issym() else ""
            target = posixpath.normpath(posixpath.join(base, member.linkname))
            if target.startswith(("../", "/")) or target == "..":
                raise ArchiveError(
                    f"{self.where}: link {name!r} points outside the archive ({member.linkname!r})"
                )
            self.links[name] = target
            return
        if not member.isreg():
            raise ArchiveError(f"{self.where}: member {name!r} is not a regular file, directory or link")
        f = tar.extractfile(member)
        assert f is not None
        sha, size, _ = self.cache.put(_chunks(f))
        self.files[name] = (sha, size)

    def resolve(self, name: str, what: str) -> tuple[str, int]:
        """(sha256, size) of member ``name``, following links inside the archive."""
        name = posixpath.normpath(name)
        for _ in range(MAX_LINK_HOPS):
            if name in self.files:
                return self.files[name]
            if name not in self.links:
                break
            name = self.links[name]
        raise ArchiveError(f"{self.where}: {what} {name!r} is not in the archive")

    def data(self, name: str, what: str) -> bytes:
        sha, size = self.resolve(name, what)
        if size > oci.MAX_JSON_BYTES:
            raise ArchiveError(f"{self.where}: {what} {name!r} is {size} bytes; refusing to parse")
        return self.cache.path(sha).read_bytes()

    def head(self, sha: str) -> bytes:
        with open(self.cache.path(sha), "rb") as f:
            return f.read(8)


def _open_stream(f: IO[bytes], where: str) -> IO[bytes]:
    """The tar stream inside ``f``: as is, or through gzip; zstd is refused with advice."""
    peek = f.read(4)
    rest: IO[bytes] = io.BufferedReader(_Prefixed(peek, f))
    if peek.startswith(oci.GZIP_MAGIC):
        return gzip.GzipFile(fileobj=rest, mode="rb")  # type: ignore[return-value]
    if peek.startswith(oci.ZSTD_MAGIC):
        raise ArchiveError(
            f"{where}: zstd-compressed archive; decompress it first (zstd -d) and name the .tar"
        )
    return rest


class _Prefixed(io.RawIOBase):
    """``prefix`` followed by the rest of ``f`` (to peek at magic bytes of a stream)."""

    def __init__(self, prefix: bytes, f: IO[bytes]) -> None:
        self._prefix = prefix
        self._f = f

    def readable(self) -> bool:
        return True

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        if self._prefix:
            n = min(len(b), len(self._prefix))
            b[:n] = self._prefix[:n]
            self._prefix = self._prefix[n:]
            return n
        data = self._f.read(len(b))
        b[: len(data)] = data
        return len(data)


def _saved_images(archive: _Archive, manifest: bytes, source: str, out: Collected) -> None:
    """Images listed in a ``docker save`` ``manifest.json``."""
    try:
        entries = oci.parse_docker_manifest(manifest, f"{archive.where}: manifest.json")
    except oci.ImageFormatError as exc:
        raise ArchiveError(str(exc)) from exc
    for entry in entries:
        label = entry.repo_tags[0] if entry.repo_tags else entry.config
        config_sha, config_size = archive.resolve(entry.config, f"config of {label}")
        try:
            platform, diff_ids = oci.config_platform(
                archive.data(entry.config, "config"), f"{archive.where}: config of {label}"
            )
        except oci.ImageFormatError as exc:
            raise ArchiveError(str(exc)) from exc
        if len(diff_ids) != len(entry.layers):
            raise ArchiveError(
                f"{archive.where}: image {label}: {len(entry.layers)} layers but its config lists "
                f"{len(diff_ids)} diff_ids; the archive is corrupt"
            )
        layers = []
        for path, diff_id in zip(entry.layers, diff_ids):
            sha, size = archive.resolve(path, f"layer of {label}")
            media = oci.layer_media_type(archive.head(sha))
            layer = oci.Layer("sha256:" + sha, size, media)
            if media == oci.OCI_LAYER and layer.digest != diff_id:
                raise ArchiveError(
                    f"{archive.where}: image {label}: layer {path!r} hashes to {layer.digest}, "
                    f"but its config says {diff_id}; the archive is corrupt"
                )
            layers.append(layer)
        manifest_bytes = oci.synthesize_manifest("sha256:" + config_sha, config_size, layers)
        _add(
            archive,
            out,
            source,
            entry.repo_tags,
            manifest_bytes,
            oci.OCI_MANIFEST,
            config_sha,
            platform,
            layers,
        )


def _oci_images(archive: _Archive, index: bytes, source: str, out: Collected) -> None:
    """Images listed in an OCI layout's ``index.json`` (an archive without ``manifest.json``)."""
    where = f"{archive.where}: index.json"
    try:
        entries = oci.parse_index(index, where)
    except oci.ImageFormatError as exc:
        raise ArchiveError(str(exc)) from exc
    for media_type, digest, notes in entries:
        if media_type in oci.INDEX_TYPES:
            raise ArchiveError(f"{where}: {digest} is a multi-platform index; save one platform's image")
        manifest = archive.data(oci.blob_path(digest), f"manifest {digest}")
        if oci.sha256_digest(manifest) != digest:
            raise ArchiveError(f"{where}: blob {digest} does not match its digest; the archive is corrupt")
        try:
            media, config, layers = oci.parse_manifest(manifest, f"{archive.where}: manifest {digest}")
            platform, _ = oci.config_platform(
                archive.data(oci.blob_path(config), "config"), f"config {config}"
            )
        except oci.ImageFormatError as exc:
            raise ArchiveError(str(exc)) from exc
        for blob in [config, *(la.digest for la in layers)]:
            sha, _ = archive.resolve(oci.blob_path(blob), f"blob {blob}")
            if "sha256:" + sha != blob:
                raise ArchiveError(
                    f"{archive.where}: blob {blob} does not match its digest; the archive is corrupt"
                )
        name = notes.get("io.containerd.image.name") or notes.get("org.opencontainers.image.ref.name")
        tags: tuple[str, ...] = ()
        if isinstance(name, str):
            try:
                tags = (oci.parse_reference(name).familiar,)
            except oci.ImageFormatError:
                tags = ()  # a bare tag like "1.0" names no repository
        config_sha = config.removeprefix("sha256:")
        _add(archive, out, source, tags, manifest, media, config_sha, platform, layers)


def _add(
    archive: _Archive,
    out: Collected,
    source: str,
    tags: Iterable[str],
    manifest: bytes,
    media_type: str,
    config_sha: str,
    platform: str,
    layers: list[oci.Layer],
) -> None:
    manifest_path = archive.cache.put_bytes(manifest)
    digest = oci.sha256_digest(manifest)
    try:
        refs = [oci.parse_reference(tag) for tag in tags]
    except oci.ImageFormatError as exc:
        raise ArchiveError(f"{archive.where}: {exc}") from exc
    image = oci.Image(
        ref=str(refs[0]) if refs else "sha256:" + config_sha,
        tags=tuple(r.familiar for r in refs),
        source=source,
        manifest=digest,
        media_type=media_type,
        config="sha256:" + config_sha,
        platform=platform,
        layers=tuple(layers),
    )
    out.images.append(image)
    out.blobs[digest] = manifest_path
    for blob in [image.config, *(la.digest for la in layers)]:
        out.blobs[blob] = archive.cache.path(blob.removeprefix("sha256:"))


def _ingest(cache: Cache, stream: IO[bytes], where: str, source: str) -> Collected:
    archive = _Archive(cache, where)
    archive.read(_open_stream(stream, where))
    out = Collected()
    if "manifest.json" in archive.files:
        _saved_images(archive, archive.data("manifest.json", "manifest.json"), source, out)
    elif "index.json" in archive.files:
        _oci_images(archive, archive.data("index.json", "index.json"), source, out)
    else:
        raise ArchiveError(f"{where}: neither manifest.json nor index.json: not a docker save or OCI archive")
    return out


def from_archive(cache: Cache, path: Path) -> Collected:
    """Every image in a vendor archive (``docker save``, gzipped or not, or an OCI layout tar).

    Raises:
        ArchiveError: unreadable, unsafe or inconsistent archive (exit 2).
    """
    try:
        with open(path, "rb") as f:
            return _ingest(cache, f, str(path), "archive")
    except OSError as exc:
        raise ArchiveError(f"{path}: cannot read the archive: {exc.strerror}") from exc


def _engine(docker: Any, name: str, timeout: int) -> Any:
    """A client of the local Docker engine that has answered a ping.

    Raises:
        FetchError: the engine cannot be reached, said in words (where it was looked for, what
            to do) rather than the SDK's connection text, which goes to the debug log (exit 5).
    """
    host = os.environ.get("DOCKER_HOST")
    where = f"DOCKER_HOST={host}" if host else "unix:///var/run/docker.sock (DOCKER_HOST is not set)"
    try:
        client = docker.from_env(timeout=timeout)
        client.ping()
    except docker.errors.DockerException as exc:
        log.debug("the Docker SDK said: %s", exc)
        raise FetchError(
            f"image {name} (from: daemon): cannot reach the local Docker engine at {where}: start it "
            "(e.g. systemctl start docker), make sure this user may use it (root or the docker group), "
            "or set DOCKER_HOST to the engine that has the image"
        ) from exc
    return client


def daemon_size(ref: oci.Reference) -> int:
    """What the local engine says ``ref`` occupies (for ``build --dry-run``).

    Raises:
        FetchError: the engine is unreachable or does not have the image (exit 5).
    """
    import docker

    try:
        image = _engine(docker, ref.familiar, 60).images.get(ref.familiar)
    except docker.errors.ImageNotFound as exc:
        raise FetchError(f"image {ref.familiar} is not in the local Docker engine") from exc
    except docker.errors.DockerException as exc:
        raise FetchError(f"image {ref.familiar}: the local Docker engine failed: {exc}") from exc
    return int(image.attrs.get("Size") or 0)


def from_daemon(cache: Cache, ref: oci.Reference) -> Collected:
    """One image saved from the local Docker engine (``DOCKER_HOST`` or the default socket).

    Raises:
        FetchError: the engine is unreachable or does not have the image (exit 5).
    """
    import docker  # imported here: only daemon images need the SDK

    name = ref.familiar
    try:
        client = _engine(docker, name, DOCKER_TIMEOUT)
        try:
            image = client.images.get(name)
        except docker.errors.ImageNotFound as exc:
            raise FetchError(
                f"image {name} is not in the local Docker engine; 'docker pull' or 'docker build' it first"
            ) from exc
        if name not in image.tags:
            raise FetchError(f"image {name}: the engine knows it only as {image.tags or image.id}; tag it")
        return _ingest(cache, _ChunkReader(image.save(named=name)), f"docker engine image {name}", "daemon")  # type: ignore[arg-type]
    except docker.errors.DockerException as exc:
        raise FetchError(f"image {name}: the local Docker engine failed: {exc}") from exc
