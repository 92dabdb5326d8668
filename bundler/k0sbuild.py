"""The build's side of a k0s cluster: the image list from the manifest's pinned k0s binary.

It runs the pinned ``k0s`` (copied out of the cache, its SHA-256 checked again) as ``k0s version``
(it must be the release ``cluster.version`` names: the list belongs to that release) and ``k0s
airgap list-images`` (the images of k0s's default configuration, one a line), and returns the
references. ``cluster.system_images`` replaces the list when the binary cannot run here. It does
not pull the images (``registry``) nor decide their nodes (``k0simages.select``: the workers).
"""

from __future__ import annotations

import hashlib
import subprocess
import tempfile
from pathlib import Path

from bundler import k0simages, oci
from bundler.errors import FetchError, InputError
from bundler.manifest import ClusterSpec, Manifest

TIMEOUT = 300


def _run(exe: Path, args: list[str], cluster: ClusterSpec) -> str:
    command = " ".join([cluster.tool, *args])
    try:
        run = subprocess.run(
            [str(exe), *args],
            capture_output=True,
            timeout=TIMEOUT,
            stdin=subprocess.DEVNULL,
            env={"PATH": "/usr/bin:/bin"},
        )
    except subprocess.TimeoutExpired as exc:
        raise InputError(f"{cluster.where}: `{command}` did not answer within {TIMEOUT} s") from exc
    text = (run.stdout + run.stderr).decode(errors="replace").strip()
    if run.returncode != 0:
        raise InputError(
            f"{cluster.where}: the pinned {cluster.tool} refused `{command}` (exit {run.returncode}): "
            f"{text[-800:] or 'no output'}; list the images under cluster.system_images instead"
        )
    return run.stdout.decode(errors="replace")


def list_images(manifest: Manifest, binary: Path) -> list[str]:
    """The image references the pinned k0s prints for its airgap bundle (normalized).

    Raises:
        OSError: the binary cannot run here.
        FetchError: the cached binary no longer matches its sha256 (exit 5).
        InputError: it is another k0s release than ``cluster.version``, refused, or printed
            something that is no image reference (exit 2).
    """
    cluster = manifest.cluster
    assert cluster is not None
    spec = next(b for b in manifest.binaries if b.name == cluster.tool)
    with tempfile.TemporaryDirectory(prefix="airbundle-k0s-") as tmp:
        exe = Path(tmp) / spec.name
        data = binary.read_bytes()
        if hashlib.sha256(data).hexdigest() != spec.sha256:
            raise FetchError(f"{binary}: the cached {spec.name} no longer matches its sha256; build again")
        exe.write_bytes(data)
        exe.chmod(0o700)
        said = _run(exe, ["version"], cluster).strip()
        if said != cluster.kubernetes_version:
            raise InputError(
                f"{cluster.where}: cluster.version is {cluster.kubernetes_version}, but the pinned "
                f"{spec.name} is {said or 'silent'} (`{spec.name} version`); pin the k0s binary of that "
                "release, or change the version"
            )
        listed = _run(exe, list(k0simages.LIST_IMAGES), cluster)
    refs = []
    for line in k0simages.parse_list(listed):
        try:
            refs.append(str(oci.parse_reference(line)))
        except oci.ImageFormatError:
            raise InputError(
                f"{cluster.where}: `{spec.name} airgap list-images` printed {line!r}, which is not an image "
                "reference"
            ) from None
    if not refs:
        raise InputError(f"{cluster.where}: `{spec.name} airgap list-images` printed no image references")
    return refs
