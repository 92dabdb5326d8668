"""The build flow: manifest → fetched, cached content → signed lock → one bundle tar.

``build_bundle`` validates the manifest, fetches every pinned binary (in
parallel, into the content-addressed cache), hashes payload files and
scripts (stat-cached), writes ``lock.json`` and its SSHSIG, then writes the
deterministic tar to a temp name beside the output, fsyncs and renames it,
and writes ``NAME-VERSION.tar.sha256`` the same way. An interrupted build
leaves no file at either final path.

Every member is checked on its way into the tar against the digest the lock
signs (``archive.write_tar`` reads the written bytes back), so a cache entry or
payload file that changed after its digest was cached fails the build, exit 5,
and is evicted. The ``.tar`` and its ``.sha256`` appear together or not at all:
the old ``.sha256`` goes before the new ``.tar`` is renamed in, the new one is
written right after, and the next build removes what a killed one left. Disk
full, unreadable or misplaced files are errors naming the path (exit 5), never
tracebacks.

Printing, progress bars and exit codes belong to the CLI.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import fcntl
import hashlib
import logging
import os
import platform as host_platform
import re
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from bundler import (
    __version__,
    aptsource,
    archive,
    debs,
    images,
    k0sbuild,
    k0simages,
    kinds,
    oci,
    pinnedtool,
    registry,
    rkeimages,
    rpmrepo,
    rpms,
    rpmsolve,
    rpmsource,
    sbom,
    signing,
)
from bundler.cache import Cache, atomic_write, fsync_dir
from bundler.errors import BundlerError, FetchError, InputError, IntegrityError, from_os_error, several
from bundler.fetch import Fetcher, FetchPolicy, FetchProgress
from bundler.files import open_regular, read_capped
from bundler.lock import (
    INSTALL_SH,
    LOCK_NAME,
    SIG_NAME,
    Binary,
    Deb,
    FileSet,
    Lock,
    Member,
    RoledImage,
    Rpm,
    Step,
    SystemImage,
    fold,
)
from bundler.manifest import ImageSpec, Manifest, Mirror, load_manifest, parse_mirror

log = logging.getLogger(__name__)


def _no_fetch_progress(_url: str, _done: int, _total: int | None) -> None:
    pass


@dataclass(frozen=True)
class BuildResult:
    """What a build wrote."""

    path: Path  # the bundle (gone when it was split)
    sha256_path: Path
    sha256: str
    lock: Lock
    size: int = 0  # the whole bundle's bytes
    parts: Path | None = None  # NAME-VERSION.parts.json when it was split


def source_date_epoch() -> int:
    """``SOURCE_DATE_EPOCH`` as an int, or 0; raises ``InputError`` when malformed."""
    raw = os.environ.get("SOURCE_DATE_EPOCH", "").strip()
    if not raw:
        return 0
    if not raw.isdigit():
        raise InputError(f"SOURCE_DATE_EPOCH={raw!r} must be a non-negative integer (seconds)")
    return int(raw)


# The installer that travels in every bundle: bundle member -> file of this package. Only the
# site-safe core (standard library, 3.6+; cryptography optional) goes along.
INSTALLER_FILES = {
    "installer/run.py": "installer/run.py",
    "installer/bundler/__init__.py": "__init__.py",
    "installer/bundler/errors.py": "errors.py",
    "installer/bundler/compat.py": "compat.py",
    "installer/bundler/text.py": "text.py",
    "installer/bundler/oci.py": "oci.py",
    "installer/bundler/lock.py": "lock.py",
    "installer/bundler/signing.py": "signing.py",
    "installer/bundler/versions.py": "versions.py",
    "installer/bundler/archive.py": "archive.py",
    "installer/bundler/files.py": "files.py",
    "installer/bundler/trust.py": "trust.py",
    "installer/bundler/rkeimages.py": "rkeimages.py",
    "installer/bundler/kinds.py": "kinds.py",
    "installer/bundler/k0simages.py": "k0simages.py",
    "installer/bundler/installer/__init__.py": "installer/__init__.py",
    "installer/bundler/installer/main.py": "installer/main.py",
    "installer/bundler/installer/progress.py": "installer/progress.py",
    "installer/bundler/installer/inventory.py": "installer/inventory.py",
    "installer/bundler/installer/journal.py": "installer/journal.py",
    "installer/bundler/installer/plan.py": "installer/plan.py",
    "installer/bundler/installer/remote.py": "installer/remote.py",
    "installer/bundler/installer/apply.py": "installer/apply.py",
    "installer/bundler/installer/dockerload.py": "installer/dockerload.py",
    "installer/bundler/installer/ctrimport.py": "installer/ctrimport.py",
    "installer/bundler/installer/containerdconf.py": "installer/containerdconf.py",
    "installer/bundler/installer/kubeadmup.py": "installer/kubeadmup.py",
    "installer/bundler/installer/lbconfig.py": "installer/lbconfig.py",
    "installer/bundler/installer/lbsetup.py": "installer/lbsetup.py",
    "installer/bundler/installer/kubeconfig.py": "installer/kubeconfig.py",
    "installer/bundler/installer/options.py": "installer/options.py",
    "installer/bundler/installer/preflight.py": "installer/preflight.py",
    "installer/bundler/installer/results.py": "installer/results.py",
    "installer/bundler/installer/rpmroute.py": "installer/rpmroute.py",
    "installer/bundler/installer/nodeos.py": "installer/nodeos.py",
    "installer/bundler/installer/steps.py": "installer/steps.py",
    "installer/bundler/installer/push.py": "installer/push.py",
    "installer/bundler/installer/siteregistry.py": "installer/siteregistry.py",
    "installer/bundler/installer/topology.py": "installer/topology.py",
    "installer/bundler/installer/k0sctl.py": "installer/k0sctl.py",
    "installer/bundler/installer/k0s.py": "installer/k0s.py",
    **{
        f"installer/bundler/installer/_vendor/{name}": f"installer/_vendor/{name}"
        for name in ["__init__.py", "yaml/LICENSE", "dataclasses.py", "dataclasses.LICENSE"]
        + [
            f"yaml/{m}.py"
            for m in (
                "__init__",
                "composer",
                "constructor",
                "dumper",
                "emitter",
                "error",
                "events",
                "loader",
                "nodes",
                "parser",
                "reader",
                "representer",
                "resolver",
                "scanner",
                "serializer",
                "tokens",
            )
        ]
    },
}


_DURATION = {"h": 3600, "d": 86400, "w": 7 * 86400}


def parse_expiry(text: str, base: int) -> int:
    """``--expires``: a duration after ``base`` (``180d``, ``12w``, ``36h``) or a UTC date (``2027-06-30``).

    Raises:
        InputError: neither form.
    """
    text = text.strip()
    if text[:-1].isdigit() and text[-1:] in _DURATION:
        return base + int(text[:-1]) * _DURATION[text[-1]]
    try:
        day = datetime.datetime.strptime(text, "%Y-%m-%d").replace(tzinfo=datetime.timezone.utc)
    except ValueError:
        raise InputError(
            f"--expires {text!r}: give a duration like 180d, 12w, 36h or a date like 2027-06-30"
        ) from None
    return int(day.timestamp())


MIN_PART_SIZE = 64 * 1024


@dataclass(frozen=True)
class Inputs:
    """A build's manifest and options, every one checked before anything is fetched."""

    manifest: Manifest
    mirrors: dict[str, Mirror]
    expires: int = 0  # the signed expiry (seconds since the epoch), 0 for none
    split: int = 0  # part size in bytes, 0 for one whole bundle
    existing: str | None = None  # SHA-256 of the bundle already at the output path, if any
    existing_path: Path | None = None  # that bundle (its .tar or .parts.json)


def check_inputs(
    manifest_path: Path,
    outdir: Path | None = None,
    expires: str | None = None,
    split: int | str | None = None,
    mirrors: Sequence[str] = (),
    force: bool = True,
    problems: Sequence[InputError] = (),
    now: float | None = None,
    base: Path | None = None,
    key: signing.PublicKey | None = None,
) -> Inputs:
    """The manifest and every build option, checked together so that one run names every mistake.

    ``problems`` are the caller's own (a key file that cannot be read, a missing option) and are
    listed with these. A past ``--expires`` date, a malformed one, ``-o`` naming a file, a
    ``--split`` size that is no size or too small, a malformed ``--mirror``, and (unless
    ``force``) an earlier bundle of this NAME-VERSION from another manifest at the output path,
    and a ``base`` that ``key`` did not sign are each a problem.

    Raises:
        InputError / ManifestError: every problem at once (exit 2); ``problems`` lists them.
    """
    errors: list[InputError] = list(problems)
    manifest = None
    try:
        manifest = load_manifest(manifest_path)
    except InputError as exc:
        errors.append(exc)
    given: dict[str, Mirror] = {}
    for item in mirrors:
        try:
            given.update(_mirror_option(item))
        except InputError as exc:
            errors.append(exc)
    stamp = 0
    if expires:
        try:
            start = source_date_epoch() or int(time.time() if now is None else now)
            stamp = parse_expiry(expires, start)
            _refuse_past(expires, stamp, time.time() if now is None else now)
        except InputError as exc:
            errors.append(exc)
    if base is not None and key is not None:
        try:
            base_lock(base, key)
        except InputError as exc:
            errors.append(exc)
    part_size = 0
    if split:
        try:
            part_size = _part_size(split)
        except InputError as exc:
            errors.append(exc)
    if outdir is not None and outdir.exists() and not outdir.is_dir():
        errors.append(
            InputError(
                f"-o {outdir}: is a file, not a folder; -o names the folder the bundle is written into "
                "(OUTDIR/NAME-VERSION.tar): give a folder, or move the file away"
            )
        )
    existing: tuple[str, Path] | None = None
    if manifest is not None and outdir is not None and outdir.is_dir():
        try:
            existing = _existing_bundle(manifest, outdir, force)
        except InputError as exc:
            errors.append(exc)
    if errors:
        raise several(errors)
    assert manifest is not None
    old, old_path = existing or (None, None)
    return Inputs(manifest, {**manifest.mirrors, **given}, stamp, part_size, old, old_path)


def _mirror_option(item: str) -> dict[str, Mirror]:
    """One ``--mirror REGISTRY=MIRROR`` as ``{registry: mirror}``."""
    registry_name, sep, mirror = item.partition("=")
    if not sep:
        raise InputError(f"--mirror {item!r}: give REGISTRY=MIRROR, e.g. docker.io=127.0.0.1:5000")
    return {registry_name: parse_mirror(registry_name, mirror, where=f"--mirror {item}")}


def _refuse_past(text: str, stamp: int, now: float) -> None:
    """A bundle that would be expired when it is built is a mistake, unless a duration counts
    from ``SOURCE_DATE_EPOCH`` (a reproducible rebuild of an old release stays possible)."""
    if stamp > now:
        return
    if source_date_epoch() and not _is_date(text):
        log.warning("--expires %s: counted from SOURCE_DATE_EPOCH, the bundle is already expired", text)
        return
    raise InputError(
        f"--expires {text}: {signing.utc_text(stamp)} is not in the future (the host clock says "
        f"{signing.utc_text(int(now))}), so every site would refuse the bundle; give a later date or "
        "a duration such as 180d"
    )


def _is_date(text: str) -> bool:
    return not (text.strip()[:-1].isdigit() and text.strip()[-1:] in _DURATION)


def _part_size(split: int | str) -> int:
    """``--split``: ``4G``, ``4400M``, ``512K`` or bytes; at least 64K."""
    if isinstance(split, int):
        size = split
    else:
        try:
            size = archive.parse_size(split)
        except ValueError as exc:
            raise InputError(f"--split {exc}") from None
    if size < MIN_PART_SIZE:
        raise InputError(f"--split {split}: parts must be at least 64K (e.g. --split 4400M for a DVD)")
    return size


def _existing_bundle(manifest: Manifest, outdir: Path, force: bool) -> tuple[str, Path] | None:
    """The SHA-256 and path of an earlier build of this NAME-VERSION in ``outdir`` (whole or in
    parts), or None.

    Without ``force``, a bundle from another manifest there is refused now, before anything is
    fetched; one from the same manifest is compared by its SHA-256 once the new one is written.

    Raises:
        InputError: a different (or unreadable) bundle is in the way and ``force`` is not set.
    """
    final = outdir / f"{manifest.name}-{manifest.version}.tar"
    index = outdir / f"{manifest.name}-{manifest.version}{archive.PARTS_SUFFIX}"
    sha_file = Path(f"{final}.sha256")
    # A .tar without its .sha256 is what a killed build left (the next build removes it).
    path = final if final.exists() and sha_file.exists() else index if index.exists() else None
    if path is None:
        return None
    try:
        with archive.Bundle(path) as old:
            lock, _ = old.unverified()
        whole = archive.load_parts(index)[1] if path == index else sha_file.read_text().split()[0]
    except (BundlerError, OSError, IndexError) as exc:
        if force:
            return None
        raise InputError(
            f"{path}: an earlier bundle of {manifest.name} {manifest.version} is there and cannot be read "
            f"({exc}); pass --force to replace it, or choose another -o folder"
        ) from exc
    if lock.manifest_sha256 != manifest.sha256 and not force:
        raise _replace_refused(path, manifest, "it was built from another manifest")
    return whole, path


def _replace_refused(path: Path, manifest: Manifest, why: str) -> InputError:
    return InputError(
        f"{path}: holds another bundle of {manifest.name} {manifest.version} ({why}); a version "
        "should name one bundle: raise the version (e.g. add +b2), pass --force to replace it, or "
        "choose another -o folder"
    )


def installer_payload() -> bytes:
    """The ``install.sh`` that travels in every bundle."""
    return resources.files("bundler.installer").joinpath("install.sh").read_bytes()


def installer_entries() -> list[archive.Entry]:
    """``install.sh`` and the installer package, as bundle members."""
    root = resources.files("bundler")
    entries = [archive.Entry(INSTALL_SH, "0755", len(installer_payload()), data=installer_payload())]
    for member, source in INSTALLER_FILES.items():
        data = root.joinpath(source).read_bytes()
        entries.append(archive.Entry(member, "0644", len(data), data=data))
    return entries


# DESIGN.md order after install.sh: installer/, debs/, bin/, images/, files/, scripts/;
# sorted within each group so the bundle does not depend on manifest order.
_GROUPS = {"installer": 1, "debs": 2, "bin": 3, "images": 4, "files": 5, "scripts": 6}
_KINDS = {
    "bin": "binary",
    "files": "file",
    "scripts": "script",
    "images": "image",
    "debs": "deb",
    "rpms": "rpm",
}


def _bundle_order(entry: archive.Entry) -> tuple[int, str]:
    return _GROUPS.get(entry.path.split("/", 1)[0], 9), entry.path


def _digests(
    cache: Cache, entries: list[archive.Entry], jobs: int, on_hash: Callable[[int, int], None] | None
) -> dict[str, str]:
    """SHA-256 of each local file entry (stat-cached; cold ones hashed in parallel)."""
    local = [e for e in entries if e.source is not None]
    total = sum(e.size for e in local)

    progress = (lambda n: on_hash(n, total)) if on_hash else None

    def digest(entry: archive.Entry) -> str:
        assert entry.source is not None
        sha, size = cache.file_digest(entry.source, progress)
        if size != entry.size:
            raise InputError(f"{entry.source} changed while the build read it; build again")
        return sha

    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        return dict(zip((e.path for e in local), pool.map(digest, local)))


# Debian architecture names → the OCI/Go names image configs use.
_OCI_ARCH = {
    "amd64": "amd64",
    "arm64": "arm64",
    "armhf": "arm",
    "i386": "386",
    "ppc64el": "ppc64le",
    "s390x": "s390x",
    "riscv64": "riscv64",
}


def _refuse_zstd(where: str, image: oci.Image, blobs: dict[str, Path]) -> None:
    """Refuse zstd layers (by media type or by their bytes) unless the manifest allows them."""
    for layer in image.layers:
        with open(blobs[layer.digest], "rb") as f:
            zstd = f.read(4).startswith(oci.ZSTD_MAGIC)
        if zstd or layer.media_type.endswith("+zstd"):
            raise InputError(
                f"{where}: image {image.ref}: layer {layer.digest} is zstd-compressed, which Docker 20.10 "
                "and older cannot load; use a gzip variant, or set 'zstd: true' on this image if every "
                "target engine reads zstd (Docker 23+, containerd 1.5+)"
            )


def _collect_images(
    manifest: Manifest,
    fetcher: Fetcher,
    jobs: int,
    on_fetch: FetchProgress,
    system: Sequence[ImageSpec] = (),
    mirrors: dict[str, Mirror] | None = None,
) -> images.Collected:
    """Every image the manifest names, then the system images, in that order, each once (an image
    named twice, or both ways, is pulled and stored once), all for its platform. Registry pulls
    go to the registry's mirror when one is given."""
    out = images.Collected()
    by_tag: dict[str, oci.Image] = {}
    want = f"linux/{_OCI_ARCH[manifest.platform.arch]}" + ("/v7" if manifest.platform.arch == "armhf" else "")
    specs = [*manifest.images, *system]
    credentials = registry.Credentials() if any(s.source == "registry" for s in specs) else None
    mirrors = manifest.mirrors if mirrors is None else mirrors
    for spec in specs:
        if spec.source == "archive":
            assert spec.archive is not None
            got = images.from_archive(fetcher.cache, spec.archive)
        elif spec.source == "daemon":
            assert spec.ref is not None
            got = images.from_daemon(fetcher.cache, spec.ref)
        else:
            assert spec.ref is not None
            mirror = mirrors.get(spec.ref.domain)
            got = registry.pull(fetcher, spec.ref, want, spec.insecure, jobs, on_fetch, credentials, mirror)
        for image in got.images:
            if spec.roles:
                out.roles[image.ref] = spec.roles
            if not spec.zstd:
                _refuse_zstd(spec.where, image, got.blobs)
            if image.platform.split("/")[:2] != want.split("/")[:2]:
                raise InputError(
                    f"{spec.where}: image {image.ref} is for {image.platform}, but the bundle is for {want}"
                )
            if any(i.manifest == image.manifest and i.ref == image.ref for i in out.images):
                continue  # the same image by digest, named twice
            clash = next((by_tag[t] for t in image.tags if t in by_tag), None)
            if clash is not None:
                if clash.manifest == image.manifest:
                    continue  # the same image named twice
                raise InputError(
                    f"{spec.where}: tag {image.tags[0]} names two different images ({clash.config}, "
                    f"{image.config}); keep one"
                )
            by_tag.update((t, image) for t in image.tags)
            out.images.append(image)
        out.blobs.update(got.blobs)
    return out


@dataclass(frozen=True)
class SystemImages:
    """The cluster tool's images for the manifest's ``cluster``: where the list came from, what the
    role rule kept (with roles) and what it left out."""

    source: str
    kept: tuple[rkeimages.Choice, ...]
    dropped: tuple[rkeimages.Choice, ...]

    def specs(self, manifest: Manifest) -> list[ImageSpec]:
        assert manifest.cluster is not None
        where = f"{manifest.cluster.where}: cluster system image"
        return [ImageSpec("registry", ref=oci.parse_reference(c.ref), where=where) for c in self.kept]

    def records(self) -> tuple[SystemImage, ...]:
        return tuple(SystemImage(c.ref, c.roles) for c in self.kept)


def _runs_here(manifest: Manifest) -> str:
    """Why the manifest's pinned tool cannot run on this host, or "" when it can."""
    machine = host_platform.machine().lower()
    if host_platform.system() != "Linux" or machine not in ("x86_64", "amd64"):
        return f"this build host is {host_platform.system()}/{machine}, not linux/amd64"
    if manifest.platform.arch != "amd64":
        return f"the bundle's platform is {manifest.platform.arch}, so its binaries are not for this host"
    return ""


def _ask_tool(manifest: Manifest, binary: Path) -> list[str]:
    """The cluster kind's image-list command (``kinds.Kind.images_argv``: ``rke config --system-images
    --version V``, ``kubeadm config images list --kubernetes-version V``) with the manifest's pinned
    binary (checked against its sha256 again as it is copied out of the cache to run): the image
    references it prints.

    rke's log lines go to stdout too (logrus, e.g. ``level=info msg="Generating images list ..."``):
    only whitespace-free lines are image references. ``RANCHER_METADATA_URL`` is dropped from its
    environment, so it answers from the data compiled into the pinned release.

    Raises:
        OSError: the binary cannot run here (not executable for this host, a noexec folder).
        InputError: it ran and refused the version, or printed no images (exit 2).
    """
    cluster = manifest.cluster
    assert cluster is not None
    spec = next(b for b in manifest.binaries if b.name == cluster.tool)
    argv_tail = kinds.kind_of(cluster.kind).images_argv(cluster.kubernetes_version)
    command = " ".join([spec.name, *argv_tail])
    env = {k: v for k, v in os.environ.items() if k != "RANCHER_METADATA_URL"}
    advice = (
        f"pick a kubernetes_version this {spec.name} release supports "
        + (f"(`{spec.name} config --list-version --all`) " if cluster.kind == "rke" else "")
        + "or list cluster.system_images"
    )
    with pinnedtool.pinned(binary, spec, cluster.where, env) as tool:
        listed = tool.run(argv_tail, advice)
    refs = []
    for raw in listed.splitlines():
        line = raw.strip()
        if not line or any(c.isspace() for c in line):
            continue  # a log line
        try:
            refs.append(str(oci.parse_reference(line)))
        except oci.ImageFormatError:
            raise InputError(
                f"{cluster.where}: `{command}` printed {line!r}, which is not an image reference"
            ) from None
    if not refs:
        raise InputError(f"{cluster.where}: `{command}` printed no image references: {listed.strip()[-800:]}")
    return refs


def system_images(manifest: Manifest, binary: Path | None) -> SystemImages | None:
    """The system images the manifest's cluster needs: ``cluster.system_images`` when given, else
    the list the pinned tool prints on a linux/amd64 host; filtered by the kind's rule (``kinds``).

    Raises:
        InputError: neither is possible (exit 2, naming what is needed), or the tool refused.
    """
    cluster = manifest.cluster
    if cluster is None:
        return None
    if cluster.kind == k0simages.KIND:
        return _k0s_images(manifest, binary)
    if cluster.system_images:
        refs, source = list(cluster.system_images), "cluster.system_images"
    else:
        source = " ".join(
            [cluster.tool, *kinds.kind_of(cluster.kind).images_argv(cluster.kubernetes_version)]
        )
        why = _runs_here(manifest) if binary is not None else f"the pinned {cluster.tool} is not at hand"
        if not why:
            try:
                refs = _ask_tool(manifest, binary)  # type: ignore[arg-type]
            except OSError as exc:
                why = f"the pinned {cluster.tool} cannot run here ({exc.strerror or exc})"
        if why:
            raise InputError(
                f"{cluster.where}: cluster: the system images for Kubernetes {cluster.kubernetes_version} "
                f"are needed: {why}. Build on a linux/amd64 host where the pinned {cluster.tool} runs "
                f"(it prints them: `{source}`), or list them under cluster.system_images"
            )
    kept, dropped = kinds.kind_of(cluster.kind).select(refs, cluster.network_plugin)
    for choice in kept:
        if not choice.known:
            log.warning(
                "system image %s: the role rule does not know it; every node gets it (README: the role rule)",
                choice.ref,
            )
    for choice in dropped:
        log.info("system image %s left out: it is for %s", choice.ref, choice.why)
    if not kept:
        raise InputError(f"{cluster.where}: no system image is left for this cluster from {source}")
    return SystemImages(source, tuple(kept), tuple(dropped))


def _k0s_images(manifest: Manifest, binary: Path | None) -> SystemImages:
    """k0s's airgap images: ``cluster.system_images``, else what the pinned k0s lists
    (``k0sbuild.list_images``); every one for the nodes that run workloads (``k0simages.select``)."""
    cluster = manifest.cluster
    assert cluster is not None
    source = f"{cluster.tool} airgap list-images"
    if cluster.system_images:
        refs, source = list(cluster.system_images), "cluster.system_images"
    else:
        why = _runs_here(manifest) if binary is not None else f"the pinned {cluster.tool} is not at hand"
        if not why:
            try:
                refs = k0sbuild.list_images(manifest, binary)  # type: ignore[arg-type]
            except OSError as exc:
                why = f"the pinned {cluster.tool} cannot run here ({exc.strerror or exc})"
        if why:
            raise InputError(
                f"{cluster.where}: cluster: the airgap images of k0s {cluster.kubernetes_version} are "
                f"needed: {why}. Build on a linux/amd64 host where the pinned {cluster.tool} runs (it "
                f"prints them: `{source}`), or list them under cluster.system_images"
            )
    kept = []
    for ref, roles, known in k0simages.select(refs):
        if not known:
            log.warning("k0s image %s: not in a k0s release airbundle knows; the workers get it", ref)
        kept.append(rkeimages.Choice(ref, "k0s", roles, known))
    return SystemImages(source, tuple(kept), ())


@dataclass
class DebsCollected:
    """The ``debs`` section resolved and downloaded: the closure, its cached files, the sources' records."""

    resolution: debs.Resolution
    paths: dict[str, Path]
    sources: tuple[dict[str, Any], ...]  # for the lock: what each source is and who signed it
    baseline: dict[str, str]  # debs.baseline given as a dpkg status: name -> installed version


MAX_STATUS_BYTES = 256 * 1024 * 1024


def _baseline(path: Path) -> list[debs.Package]:
    """The installed packages of a dpkg status file (``debs.baseline: FILE``), read as a stream."""
    fd = open_regular(path, "debs.baseline dpkg status file")
    with os.fdopen(fd, "rb") as f:
        installed = debs.parse_status(iter(lambda: f.read(1 << 20), b""))
    if not installed:
        raise InputError(
            f"{path}: debs.baseline names no installed package; give a copy of a site node's "
            "/var/lib/dpkg/status"
        )
    return installed


def _resolve_debs(
    manifest: Manifest, fetcher: Fetcher
) -> tuple[debs.Resolution, tuple[dict[str, Any], ...], dict[str, str]]:
    """Resolve the ``debs`` section against its (verified) sources; downloads indexes only.

    All sources resolve together (main, updates and security suites of one archive, say):
    apt's candidate rule picks among every source's versions of a package.
    """
    spec = manifest.debs
    assert spec is not None
    arch = manifest.platform.arch
    installed = _baseline(spec.baseline_file) if spec.baseline_file else []
    with aptsource.Indexes(arch) as indexes:
        loaded = [aptsource.load(fetcher, source, indexes) for source in spec.sources]
        resolutions = []
        # One closure per distinct set of requests a node can have (debs.packages, plus those of
        # its roles), each by a fresh resolver as apt on such a node would choose; the bundle's one
        # flat repository carries their union.
        for requests in spec.request_sets():
            resolver = debs.Resolver(
                indexes.catalog, arch, exclude=spec.exclude, installed=installed, recommends=spec.recommends
            )
            if spec.baseline == "required":
                resolver.assumed |= resolver.required_baseline()
            try:
                resolutions.append((requests, resolver.resolve(requests)))
            except debs.ResolveError as exc:
                who = "" if requests == spec.packages else f" (for nodes that request {', '.join(requests)})"
                raise FetchError(f"{manifest.path}: debs: cannot resolve {exc}{who}") from exc
        resolution = _union(manifest, resolutions)
    baseline = {name: pkg.version for name, pkg in resolver.installed.items()}
    return resolution, tuple(_apt_source_record(index) for index in loaded), baseline


def _union(manifest: Manifest, resolutions: list[tuple[tuple[str, ...], debs.Resolution]]) -> debs.Resolution:
    """The closures of every set of requests as one: each package once; "requested" wins over a
    dependency's reason (a node that requests it marks it so). Two closures choosing two versions
    of one package are refused: the flat repository would offer apt both, and apt the newer."""
    chosen: dict[str, debs.Package] = {}
    reasons: dict[str, str] = {}
    first: dict[str, tuple[str, ...]] = {}
    for requests, resolution in resolutions:
        for pkg in resolution.packages:
            had = chosen.get(pkg.name)
            if had is not None and (had.version, had.arch) != (pkg.version, pkg.arch):
                raise InputError(
                    f"{manifest.path}: debs.roles: {pkg.name} resolves to {had.version} for the nodes that "
                    f"request {', '.join(first[pkg.name])} and to {pkg.version} for those that request "
                    f"{', '.join(requests)}; pin it (name=version) in debs.packages"
                )
            chosen.setdefault(pkg.name, pkg)
            first.setdefault(pkg.name, requests)
            reason = resolution.reasons[pkg.name]
            if pkg.name not in reasons or reason == "requested":
                reasons[pkg.name] = reason
    packages = sorted(chosen.values(), key=lambda p: (p.name, p.arch))  # one version of each name
    return debs.Resolution(packages, reasons)


def _apt_source_record(index: aptsource.SourceIndex) -> dict[str, Any]:
    """What the lock records of an apt source, including whether its signature was skipped."""
    s = index.source
    return {
        "url": s.url,
        "suite": s.suite,
        "components": list(s.components),
        "flat": s.flat,
        "trusted": s.trusted,
        "keyring_sha256": index.keyring_sha256,
        "signed_by": list(index.signed_by),
    }


def _collect_debs(manifest: Manifest, fetcher: Fetcher, jobs: int, on_fetch: FetchProgress) -> DebsCollected:
    """Resolve the ``debs`` section and download the closure into the cache."""
    resolution, sources, baseline = _resolve_debs(manifest, fetcher)
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        paths = list(pool.map(lambda p: aptsource.download(fetcher, p, on_fetch), resolution.packages))
    paths_by_name = {pkg.name: path for pkg, path in zip(resolution.packages, paths)}
    return DebsCollected(resolution, paths_by_name, sources, baseline)


def _deb_entries(
    manifest: Manifest, resolution: debs.Resolution, paths: dict[str, Path]
) -> tuple[list[archive.Entry], dict[str, str], list[Deb]]:
    """The ``debs/`` members (the .deb files, then the flat repository's indexes) and lock records."""
    entries, known, records = [], {}, []
    for pkg in resolution.packages:
        member = f"debs/{pkg.deb_name}"
        entries.append(archive.Entry(member, "0644", pkg.size, source=paths[pkg.name]))
        known[member] = pkg.sha256
        records.append(
            Deb(
                pkg.name,
                pkg.version,
                pkg.arch,
                member,
                pkg.sha256,
                pkg.size,
                pkg.url,
                resolution.reasons[pkg.name],
            )
        )
    for name, data in debs.flat_repository(
        resolution.packages, manifest.platform.arch, source_date_epoch()
    ).items():
        entries.append(archive.Entry(f"debs/{name}", "0644", len(data), data=data))
    return entries, known, records


@dataclass
class RpmsCollected:
    """The ``rpms`` section resolved, downloaded and signature-checked."""

    chosen: list[tuple[rpms.Package, str]]  # the closure's packages and why each is there
    paths: dict[str, Path]  # file name -> cached rpm
    sources: tuple[dict[str, Any], ...]  # for the lock: each source's URL, key and signers
    keys: tuple[bytes | None, ...] = ()  # each source's gpgkey bytes (None: none given)


RPM_KEY_PREFIX = "RPM-GPG-KEY-source-"  # rpms/RPM-GPG-KEY-source-N: source N's key, armored
MAX_RPM_QA_BYTES = 64 * 1024 * 1024


def _resolve_rpms(manifest: Manifest, fetcher: Fetcher) -> tuple[list[tuple[rpms.Package, str]], list[Any]]:
    """The closure of every set of requests a node can have (``rpms.packages`` and its roles'),
    decided by libsolv against the verified sources; one version of each package across them."""
    spec = manifest.rpms
    assert spec is not None
    loaded = [rpmsource.load(fetcher, source, i) for i, source in enumerate(spec.sources)]
    files = [rpmsolve.SourceFiles(x.primary, x.primary_name, x.filelists, x.filelists_name) for x in loaded]
    installed: list[rpmsolve.Installed] = []
    if spec.baseline_file is not None:
        text = read_capped(spec.baseline_file, "rpms.baseline (rpm -qa output)", MAX_RPM_QA_BYTES)
        installed = rpmsolve.parse_rpm_qa(text.decode("utf-8", "replace"), str(spec.baseline_file))
    arch = rpmsolve.target_arch(manifest.platform.arch)
    chosen: dict[tuple[str, str], tuple[rpms.Package, str]] = {}
    first: dict[tuple[str, str], tuple[str, ...]] = {}
    for requests in spec.request_sets():
        try:
            result = rpmsolve.resolve(files, arch, requests, installed, spec.exclude)
        except rpmsolve.ResolveError as exc:
            who = "" if requests == spec.packages else f" (for nodes that request {', '.join(requests)})"
            raise FetchError(f"{manifest.path}: rpms: cannot resolve: {exc}{who}") from exc
        for c in result:
            pkg = loaded[c.source].packages.get((c.name, c.evr, c.arch))
            if pkg is None:
                raise FetchError(
                    f"{spec.sources[c.source].describe()}: {c.name}-{c.evr}.{c.arch} is not in primary.xml"
                )
            key = (pkg.name, pkg.arch)
            had = chosen.get(key)
            if had is not None and had[0].evr != pkg.evr:
                raise InputError(
                    f"{manifest.path}: rpms.roles: {pkg.name} resolves to {had[0].evr} for the nodes that "
                    f"request {', '.join(first[key])} and to {pkg.evr} for those that request "
                    f"{', '.join(requests)}; pin it (name=version) in rpms.packages"
                )
            first.setdefault(key, requests)
            if had is None or c.reason == "requested":
                chosen[key] = (pkg, c.reason)
    return sorted(chosen.values(), key=lambda pr: (pr[0].name, pr[0].arch)), loaded


def _collect_rpms(manifest: Manifest, fetcher: Fetcher, jobs: int, on_fetch: FetchProgress) -> RpmsCollected:
    """Resolve the ``rpms`` section, download the closure by primary.xml's SHA-256, and check each
    rpm's own signature against its source's key (rpmkeys, a private database)."""
    spec = manifest.rpms
    assert spec is not None
    chosen, loaded = _resolve_rpms(manifest, fetcher)
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        paths = list(
            pool.map(
                lambda pr: rpmsource.download(fetcher, spec.sources[pr[0].source], pr[0], on_fetch), chosen
            )
        )
    by_file = {pkg.file_name: path for (pkg, _), path in zip(chosen, paths)}
    for i, source in enumerate(loaded):
        if source.gpgkey is None:
            continue
        mine = {pkg.file_name: by_file[pkg.file_name] for pkg, _ in chosen if pkg.source == i}
        rpmsource.check_signatures(source.gpgkey, str(source.source.gpgkey), mine, source.source.describe())
    records = tuple(
        {"url": x.source.url, "gpgkey_sha256": x.gpgkey_sha256, "signed_by": list(x.signed_by)}
        for x in loaded
    )
    return RpmsCollected(chosen, by_file, records, tuple(x.gpgkey for x in loaded))


def _rpm_entries(
    manifest: Manifest, collected: RpmsCollected
) -> tuple[list[archive.Entry], dict[str, str], list[Rpm]]:
    """The ``rpms/`` members (the rpms, then the repository's ``repodata/``) and lock records."""
    spec = manifest.rpms
    assert spec is not None
    entries, known, records = [], {}, []
    for pkg, reason in collected.chosen:
        member = f"rpms/{pkg.file_name}"
        entries.append(archive.Entry(member, "0644", pkg.size, source=collected.paths[pkg.file_name]))
        known[member] = pkg.sha256
        url = f"{spec.sources[pkg.source].url.rstrip('/')}/{pkg.href}"
        records.append(Rpm(pkg.name, pkg.evr, pkg.arch, member, pkg.sha256, pkg.size, url, reason))
    for name, data in rpmrepo.repodata(collected.paths, source_date_epoch()).items():
        entries.append(archive.Entry(f"rpms/{name}", "0644", len(data), data=data))
    # The sources' keys travel with the repository: dnf on the site checks each rpm's signature
    # with them (gpgcheck), as it would from the source itself.
    for i, key in enumerate(collected.keys):
        if key is not None:
            data = rpmsource.armored(key)
            entries.append(archive.Entry(f"rpms/{RPM_KEY_PREFIX}{i}", "0644", len(data), data=data))
    return entries, known, records


def _image_entries(collected: images.Collected) -> tuple[list[archive.Entry], dict[str, str]]:
    """The ``images/`` members: each blob once, then the layout files; and the blob digests."""
    entries = []
    known = {}
    for digest, path in sorted(collected.blobs.items()):
        member = f"images/{oci.blob_path(digest)}"
        entries.append(archive.Entry(member, "0644", path.stat().st_size, source=path))
        known[member] = digest.removeprefix("sha256:")
    sizes = {d: p.stat().st_size for d, p in collected.blobs.items()}
    for name, data in oci.layout_files(collected.images, sizes).items():
        entries.append(archive.Entry(f"images/{name}", "0644", len(data), data=data))
    return entries, known


def _plan(
    manifest: Manifest,
    cache: Cache,
    fetched: dict[str, Path],
    jobs: int = 1,
    on_hash: Callable[[int, int], None] | None = None,
    collected: images.Collected | None = None,
    packages: DebsCollected | None = None,
    system: SystemImages | None = None,
    rpm_packages: RpmsCollected | None = None,
) -> tuple[list[archive.Entry], Lock]:
    """The members in bundle order and the lock that lists them."""
    entries = installer_entries()
    known: dict[str, str] = {}
    deb_records: list[Deb] = []
    rpm_records: list[Rpm] = []
    if rpm_packages is not None:
        rpm_entries, rpm_shas, rpm_records = _rpm_entries(manifest, rpm_packages)
        entries += rpm_entries
        known.update(rpm_shas)
    if packages is not None:
        deb_entries, deb_shas, deb_records = _deb_entries(manifest, packages.resolution, packages.paths)
        entries += deb_entries
        known.update(deb_shas)
    collected = collected or images.Collected()
    if collected.images:
        image_entries, image_shas = _image_entries(collected)
        entries += image_entries
        known.update(image_shas)
    binaries = []
    for spec in manifest.binaries:
        path = fetched[spec.sha256]
        size = path.stat().st_size
        member = f"bin/{spec.name}"
        binaries.append(Binary(spec.name, member, spec.dest, spec.mode, spec.url, spec.sha256, size))
        entries.append(archive.Entry(member, spec.mode, size, source=path))
        known[member] = spec.sha256  # the cache verified it against the pin
    origins: dict[str, str] = {}  # member -> the manifest entry it comes from, for messages
    filesets = []
    for fspec in manifest.files:
        sizes = [pf.source.stat().st_size for pf in fspec.files]
        filesets.append(FileSet(fspec.src, fspec.dest, len(sizes), sum(sizes)))
        entries += [
            archive.Entry(pf.member, pf.mode, n, source=pf.source) for pf, n in zip(fspec.files, sizes)
        ]
        origins.update(
            (pf.member, f"{fspec.where}: files (src {fspec.src}, dest {fspec.dest})") for pf in fspec.files
        )
    scripts = []
    for i, step in enumerate(manifest.steps, start=1):
        member = f"scripts/{i:02d}-{step.name}{step.source.suffix}"
        scripts.append((step, member))
        entries.append(archive.Entry(member, "0755", step.source.stat().st_size, source=step.source))
    entries = entries[:1] + sorted(entries[1:], key=_bundle_order)  # install.sh stays third (after lock, sig)

    _refuse_clashes(manifest, entries, origins)
    known.update((e.path, hashlib.sha256(e.data).hexdigest()) for e in entries if e.data is not None)
    shas = {**_digests(cache, [e for e in entries if e.path not in known], jobs, on_hash), **known}
    # What write_tar checks each member's written bytes against: what the lock signs.
    entries = [dataclasses.replace(e, sha256=shas[e.path]) for e in entries]
    members = tuple(
        Member(e.path, e.size, shas[e.path], _KINDS.get(e.path.split("/", 1)[0], "installer"), e.mode)
        for e in entries
    )
    lock = Lock(
        name=manifest.name,
        version=manifest.version,
        platform={
            "os": manifest.platform.os,
            "codename": manifest.platform.codename,
            "arch": manifest.platform.arch,
        },
        builder=f"airbundle {__version__}",
        manifest_sha256=manifest.sha256,
        source_date_epoch=source_date_epoch(),
        members=members,
        binaries=tuple(binaries),
        files=tuple(filesets),
        steps=tuple(
            Step(s.name, member, shas[member], s.on, s.nodes, s.serial, s.files, s.when, s.fixes)
            for s, member in scripts
        ),
        images=tuple(collected.images),
        debs=tuple(deb_records),
        apt_sources=packages.sources if packages else (),
        min_workers=manifest.min_workers,
        image_roles=manifest.image_roles,
        images_mode=manifest.images_mode,
        registry=manifest.registry,
        registry_image=manifest.registry_image,
        recommends=bool(manifest.debs and manifest.debs.recommends),
        deb_baseline=packages.baseline if packages else {},
        deb_roles={
            role: tuple(p.partition("=")[0] for p in names)
            for role, names in (manifest.debs.roles.items() if manifest.debs else ())
        },
        cluster=_cluster_record(manifest),
        system_images=system.records() if system else (),
        placed_images=tuple(
            RoledImage(i.ref, collected.roles[i.ref]) for i in collected.images if i.ref in collected.roles
        ),
        rpms=tuple(rpm_records),
        rpm_sources=rpm_packages.sources if rpm_packages else (),
        rpm_roles={
            role: tuple(p.partition("=")[0] for p in names)
            for role, names in (manifest.rpms.roles.items() if manifest.rpms else ())
        },
    )
    misplaced = lock.misplaced()
    if misplaced:
        raise InputError(
            f"{manifest.path}: images: {misplaced[0]} has its own roles, but it is also a system image (the "
            "cluster's rule decides its nodes) or install.registry_image (the registry node runs it); "
            "drop its roles:"
        )
    if lock.registry_image and lock.find_image(lock.registry_image) is None:
        raise InputError(
            f"{manifest.path}: install.registry_image {lock.registry_image} is not one of the bundle's "
            "images; add it under images: (e.g. registry:2 from a registry, the engine or an archive)"
        )
    # The SBOM describes what the lock lists, and is then listed by the lock itself.
    bom = sbom.make_sbom(lock)
    bom_member = Member(sbom.SBOM_NAME, len(bom), hashlib.sha256(bom).hexdigest(), "sbom", "0644")
    entries.append(archive.Entry(sbom.SBOM_NAME, "0644", len(bom), data=bom, sha256=bom_member.sha256))
    return entries, dataclasses.replace(lock, members=(*lock.members, bom_member))


def _cluster_record(manifest: Manifest) -> dict[str, str]:
    """What the lock records of the cluster (the site needs the version; mirrors stay out)."""
    cluster = manifest.cluster
    if cluster is None:
        return {}
    out = {
        "kind": cluster.kind,
        "kubernetes_version": cluster.kubernetes_version,
        "network_plugin": cluster.network_plugin,
        "tool": cluster.tool,
    }
    # Only when given: other bundles keep their lock's bytes.
    out.update({k: v for k, v in (("k0sctl", cluster.k0sctl), ("shared_roles", cluster.shared_roles)) if v})
    return out


def _refuse_clashes(manifest: Manifest, entries: list[archive.Entry], origins: dict[str, str]) -> None:
    """Refuse two members at one path, or a file at a path another member needs as a folder.

    A tar holds both ``x`` and ``x/y`` happily; unpacking them cannot. Paths compare
    case-folded, as on a case-insensitive disk. Each member's parents are looked up
    once: linear in the members.
    """
    seen: dict[str, str] = {}
    for entry in entries:
        key = fold(entry.path)
        if key in seen:
            raise InputError(f"{manifest.path}: two entries both ship as {entry.path!r}; rename one")
        seen[key] = entry.path
    for entry in entries:
        parts = entry.path.split("/")
        for depth in range(1, len(parts)):
            file = seen.get(fold("/".join(parts[:depth])))
            if file is not None:
                raise InputError(
                    f"{origins.get(file, manifest.path)}: ships {file!r} as a file, but "
                    f"{origins.get(entry.path, manifest.path)}: needs it as a folder for {entry.path!r}; "
                    "change one of the two dest paths"
                )


# What a delta may leave out: the big, content-addressed parts and the payload files (a large,
# unchanged files: member is as much a waste to carry again as an image layer). Scripts and the
# installer always travel: they are small and the site runs them from the bundle's own copy.
_INHERITABLE = ("image", "deb", "rpm", "binary", "file")


def base_lock(base: Path, key: signing.PublicKey) -> tuple[Lock, str]:
    """``--base``: the earlier bundle's lock and its SHA-256, once ``key`` is shown to have signed it.

    Raises:
        InputError: not a bundle, or not signed with this key (exit 2).
    """
    try:
        # The base's own expiry does not matter here: only that this key signed it.
        with archive.Bundle(base, [key]) as bundle:
            decision = bundle.decide(archive.facts([key], allow_expired=True))
    except BundlerError as exc:
        raise InputError(f"--base {base}: not a bundle signed with this key ({exc})") from exc
    return decision.lock, decision.lock_sha256


def _delta(
    entries: list[archive.Entry], lock: Lock, base: Path, key: signing.PrivateKey
) -> tuple[list[archive.Entry], Lock]:
    """Leave out every blob, package, binary and payload file whose digest the base bundle already
    carries (the site copies it from the base's unpacked folder, checking its SHA-256)."""
    old, old_sha256 = base_lock(base, key.public)
    have = {m.sha256 for m in (*old.members, *old.inherited)}
    inherited = tuple(m for m in lock.members if m.kind in _INHERITABLE and m.sha256 in have)
    gone = {m.path for m in inherited}
    return [e for e in entries if e.path not in gone], dataclasses.replace(
        lock,
        members=tuple(m for m in lock.members if m.path not in gone),
        inherited=inherited,
        base={
            "name": old.name,
            "version": old.version,
            "lock_sha256": old_sha256,
        },
    )


@dataclass(frozen=True)
class PlanItem:
    """One thing a build would bundle: what, how big (None: the server does not say), from where."""

    kind: str  # binary | deb | image | system | file | script  (system: the cluster tool's image)
    name: str
    size: int | None
    source: str
    cached: bool  # already in the cache (or local): nothing to download
    roles: tuple[str, ...] = ()  # system: the node roles that need it
    kubernetes_version: str = ""  # system: the cluster's Kubernetes version


def plan_bundle(
    manifest_path: Path, cache_root: Path, policy: FetchPolicy | None = None, mirrors: Sequence[str] = ()
) -> list[PlanItem]:
    """What ``build_bundle`` would fetch and bundle, without downloading any payload.

    Apt indexes and image manifests are fetched (and verified) to know the
    closure and the sizes; ``.deb`` files, binaries and layers are not, except the
    cluster's pinned tool when it must list the system images (into the cache, where
    the build finds it).

    Raises:
        ManifestError / InputError (exit 2), FetchError (exit 5): as a build would.
    """
    checked = check_inputs(manifest_path, mirrors=mirrors)
    manifest, mirror_map = checked.manifest, checked.mirrors
    cache = Cache(cache_root)
    fetcher = Fetcher(cache, policy)
    system = None
    if manifest.cluster is not None:
        tool = next(b for b in manifest.binaries if b.name == manifest.cluster.tool)
        needs_tool = not manifest.cluster.system_images and not _runs_here(manifest)
        system = system_images(
            manifest, fetcher.fetch(tool.url, tool.sha256, same_url=True) if needs_tool else None
        )
    items = []
    for b in manifest.binaries:
        hit = fetcher.cached(b.url, b.sha256, same_url=True)
        size = hit.stat().st_size if hit else fetcher.content_length(b.url)
        items.append(PlanItem("binary", b.name, size, b.url, hit is not None))
    if manifest.debs:
        for pkg in _resolve_debs(manifest, fetcher)[0].packages:
            cached = cache.get(pkg.sha256) is not None
            items.append(PlanItem("deb", f"{pkg.name} {pkg.version} {pkg.arch}", pkg.size, pkg.url, cached))
    if manifest.rpms:
        for rpm, _reason in _resolve_rpms(manifest, fetcher)[0]:
            cached = cache.get(rpm.sha256) is not None
            url = f"{manifest.rpms.sources[rpm.source].url.rstrip('/')}/{rpm.href}"
            items.append(PlanItem("rpm", f"{rpm.name} {rpm.evr} {rpm.arch}", rpm.size, url, cached))
    want = f"linux/{_OCI_ARCH[manifest.platform.arch]}"
    system_specs = system.specs(manifest) if system else []
    specs = [*manifest.images, *system_specs]
    credentials = registry.Credentials() if any(s.source == "registry" for s in specs) else None
    for spec in specs:
        if spec.source == "archive":
            assert spec.archive is not None
            size = spec.archive.stat().st_size
            items.append(PlanItem("image", spec.archive.name, size, str(spec.archive), True))
        elif spec.source == "daemon":
            assert spec.ref is not None
            items.append(
                PlanItem("image", spec.ref.familiar, images.daemon_size(spec.ref), "local engine", False)
            )
        else:
            assert spec.ref is not None
            mirror = mirror_map.get(spec.ref.domain)
            found = registry.resolve(fetcher, spec.ref, want, spec.insecure, credentials, mirror)
            blobs = [found.config, *(la.digest for la in found.layers)]
            cached = all(cache.get(b.removeprefix("sha256:")) is not None for b in blobs)
            size = sum(la.size for la in found.layers)
            if system is not None and spec in system_specs:
                assert manifest.cluster is not None
                choice = system.kept[system_specs.index(spec)]
                version = manifest.cluster.kubernetes_version
                items.append(PlanItem("system", choice.ref, size, found.api, cached, choice.roles, version))
            else:
                items.append(PlanItem("image", str(spec.ref), size, found.api, cached))
    for fspec in manifest.files:
        items += [
            PlanItem("file", pf.member, pf.source.stat().st_size, str(pf.source), True) for pf in fspec.files
        ]
    items += [
        PlanItem("script", s.name, s.source.stat().st_size, str(s.source), True) for s in manifest.steps
    ]
    return items


def build_bundle(
    manifest_path: Path,
    outdir: Path,
    key: signing.PrivateKey,
    cache_root: Path,
    jobs: int = 4,
    policy: FetchPolicy | None = None,
    on_fetch: FetchProgress = _no_fetch_progress,
    on_write: Callable[[int, int], None] | None = None,
    on_hash: Callable[[int, int], None] | None = None,
    expires: str | None = None,
    base: Path | None = None,
    split: int | str = 0,
    mirrors: Sequence[str] = (),
    force: bool = True,
) -> BuildResult:
    """Build ``OUTDIR/NAME-VERSION.tar`` (and ``.tar.sha256``) from a manifest.

    Args:
        on_fetch: ``(url, done, total)`` while downloading.
        on_write: ``(bytes just written, bytes to write)`` while writing the tar.
        on_hash: ``(bytes just hashed, bytes to hash)`` while hashing changed payload files.
        expires: ``--expires``; relative durations count from SOURCE_DATE_EPOCH when it is
            set (so the build stays reproducible), else from now.
        base: ``--base``: an earlier bundle (signed with the same key) whose blobs,
            packages and binaries this one leaves out; the site takes them from its
            installed copy.
        split: ``--split``: cut the bundle into parts of at most this many bytes
            (``archive.split_bundle``); the whole ``.tar`` and its ``.sha256`` then go.
        mirrors: ``--mirror REGISTRY=MIRROR`` items, over the manifest's ``mirrors:``.
        force: replace an earlier, different bundle of this NAME-VERSION in OUTDIR; without
            it such a bundle is refused (exit 2), before any download when it came from another
            manifest, else once the new bytes are known (the old one stays).

    The manifest and every option are checked first (``check_inputs``), all problems at
    once. Whatever an earlier build of the same NAME-VERSION left in OUTDIR (a whole bundle
    or parts) is replaced, under a lock on OUTDIR, so the folder never holds two builds of
    one version.

    Raises:
        ManifestError / InputError: a bad manifest or input (exit 2), every one at once.
        FetchError: a download failed or did not match its pin (exit 5).
    """
    checked = check_inputs(manifest_path, outdir, expires, split, mirrors, force, base=base, key=key.public)
    manifest, mirror_map = checked.manifest, checked.mirrors
    final = outdir / f"{manifest.name}-{manifest.version}.tar"
    sha_path = outdir / f"{final.name}.sha256"
    with _environment("fetching into the cache", cache_root):
        cache = Cache(cache_root)
        fetcher = Fetcher(cache, policy)
        specs = {b.sha256: b for b in manifest.binaries}
        with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
            # same_url: the lock records each binary's URL, so that URL must have served it.
            futures = {
                sha: pool.submit(fetcher.fetch, b.url, sha, on_fetch, same_url=True)
                for sha, b in specs.items()
            }
            fetched = {sha: fut.result() for sha, fut in futures.items()}
        tool = manifest.cluster and next(b for b in manifest.binaries if b.name == manifest.cluster.tool)
        system = system_images(manifest, fetched[tool.sha256] if tool else None)
        packages = _collect_debs(manifest, fetcher, jobs, on_fetch) if manifest.debs else None
        rpm_packages = _collect_rpms(manifest, fetcher, jobs, on_fetch) if manifest.rpms else None
        system_specs = system.specs(manifest) if system else []
        collected = _collect_images(manifest, fetcher, jobs, on_fetch, system_specs, mirror_map)
    with _environment("reading the bundle's files", manifest.base):
        entries, lock = _plan(
            manifest, cache, fetched, jobs, on_hash, collected, packages, system, rpm_packages
        )
    if checked.expires:
        lock = dataclasses.replace(lock, expires=checked.expires)
    if base is not None:
        entries, lock = _delta(entries, lock, base, key)
    lock_bytes = lock.to_bytes()
    sig = signing.sign(key, lock_bytes)
    entries[:0] = [
        archive.Entry(LOCK_NAME, "0644", len(lock_bytes), data=lock_bytes),
        archive.Entry(SIG_NAME, "0644", len(sig), data=sig),
    ]
    total = sum(e.size for e in entries)
    progress = (lambda n: on_write(n, total)) if on_write else (lambda n: None)
    with _environment("making the output folder", outdir):
        outdir.mkdir(parents=True, exist_ok=True)  # a failed build leaves no folder behind
    with _environment("writing the bundle", final), _outdir_lock(outdir):
        _clean_leftovers(final, sha_path)
        try:
            # write_tar fsyncs while its digest threads finish, so atomic_output need not again.
            # The old .sha256 goes (durably) just before the new .tar is renamed in.
            with archive.atomic_output(final, fsync=False, stale=(sha_path,)) as fd:
                digest = archive.write_tar(
                    fd, entries, mtime=lock.source_date_epoch, progress=progress, fsync=True
                )
                if not force and checked.existing_path and checked.existing != digest:
                    # The same manifest, other bytes (options, SOURCE_DATE_EPOCH, the cache's
                    # content): the old bundle stays and the new one is not renamed in.
                    raise _replace_refused(
                        checked.existing_path, manifest, "its content differs from this build's"
                    )
        except IntegrityError as exc:
            raise _evict(cache, entries, exc) from exc
        try:
            fsync_dir(outdir)
            atomic_write(sha_path, f"{digest}  {final.name}\n".encode())
        except BaseException:
            final.unlink(missing_ok=True)  # never a .tar without its .sha256
            raise
        size = final.stat().st_size
        _remove_old_parts(final)
        index = archive.split_bundle(final, checked.split, key) if checked.split else None
    log.info("wrote %s (%d bytes, sha256 %s)", index or final, size, digest)
    return BuildResult(final, sha_path, digest, lock, size, index)


def _remove_old_parts(final: Path) -> None:
    """Remove an earlier build's parts of this NAME-VERSION (its parts file, signature, sums and
    every ``NAME-VERSION.tar.NNN``), so that no stale part can be taken for this build's."""
    stem = final.name[: -len(".tar")]
    stale = {f"{stem}.parts.json", f"{stem}.parts.json.sig", f"{stem}.parts.sha256"}
    for name in os.listdir(final.parent):
        if name in stale or re.fullmatch(re.escape(final.name) + r"\.[0-9]{3,}", name):
            log.info("removing %s, from an earlier build of %s", name, stem)
            os.unlink(final.parent / name)


@contextlib.contextmanager
def _environment(doing: str, where: Path) -> Iterator[None]:
    """OSErrors of the block (disk full, permissions, a folder where a file belongs, …) as
    ``FetchError`` (exit 5) naming the path, what was being done and what to do."""
    try:
        yield
    except OSError as exc:
        raise from_os_error(exc, doing, FetchError, exc.filename or where) from exc


@contextlib.contextmanager
def _outdir_lock(outdir: Path) -> Iterator[None]:
    """One build at a time writes into ``outdir`` (``flock`` on the folder), so cleaning up
    after a killed build never removes the temp file of a running one."""
    fd = os.open(outdir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with contextlib.suppress(OSError):  # a filesystem without flock: no lock, as before
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                log.warning("waiting for another build writing into %s to finish", outdir)
                fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _clean_leftovers(final: Path, sha_path: Path) -> None:
    """Remove what a killed build of this bundle left in its folder: temp files, and a
    ``.tar`` or ``.sha256`` without the other (the pair is published ``.tar`` first)."""
    for name in os.listdir(final.parent):
        if (name.startswith(f".{final.name}.") and name.endswith(".partial")) or (
            name.startswith(f".{sha_path.name}.") and name.endswith(".tmp")
        ):
            log.info("removing %s, left by an interrupted build", name)
            os.unlink(final.parent / name)
    if final.exists() != sha_path.exists():
        alone = final if final.exists() else sha_path
        log.info("removing %s: its pair is missing (an interrupted build)", alone)
        alone.unlink()


def _evict(cache: Cache, entries: list[archive.Entry], exc: IntegrityError) -> BundlerError:
    """A member whose written bytes are not what the lock signs: evict its source, say so (exit 5)."""
    entry = next((e for e in entries if e.path == exc.member), None)
    if entry is None or entry.source is None:
        return exc  # an in-memory member: a bug, not the environment
    if entry.source.parent.parent == cache.root / "sha256":
        cache.evict(entry.source.name)
        what = f"cache entry {entry.source} evicted; the next build fetches it again"
    else:
        cache.forget(entry.source)
        what = f"{entry.source} changed after it was hashed; the next build hashes it again"
    return FetchError(f"{exc}: nothing was written ({what})")
