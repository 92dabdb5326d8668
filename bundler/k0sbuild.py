"""The build's side of a k0s cluster: the image list from the manifest's pinned k0s binary.

It runs the pinned ``k0s`` (copied out of the cache, its SHA-256 checked again) as ``k0s version``
(it must be the release ``cluster.version`` names: the list belongs to that release) and ``k0s
airgap list-images`` (the images of k0s's default configuration, one a line), and returns the
references. ``cluster.system_images`` replaces the list when the binary cannot run here. It does
not pull the images (``registry``) nor decide their nodes (``k0simages.select``: the workers).
"""

from __future__ import annotations

from pathlib import Path

from bundler import k0simages, oci, pinnedtool
from bundler.errors import InputError
from bundler.manifest import Manifest


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
    advice = "list the images under cluster.system_images instead"
    with pinnedtool.pinned(binary, spec, cluster.where, {"PATH": "/usr/bin:/bin"}) as tool:
        said = tool.run(["version"], advice).strip()
        if said != cluster.kubernetes_version:
            raise InputError(
                f"{cluster.where}: cluster.version is {cluster.kubernetes_version}, but the pinned "
                f"{spec.name} is {said or 'silent'} (`{spec.name} version`); pin the k0s binary of that "
                "release, or change the version"
            )
        listed = tool.run(list(k0simages.LIST_IMAGES), advice)
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
