"""Images into a node's containerd over SSH: what its ``k8s.io`` namespace holds, import of what it lacks.

The kubelet of a containerd cluster (kubeadm, k0s) finds images through containerd's CRI
plugin, which looks in the ``k8s.io`` namespace under the images' full names
(``registry.k8s.io/pause:3.9``, ``docker.io/library/busybox:1``). ``present`` asks a
node's containerd which names it holds and at which manifest digest; ``import_missing``
streams the images it lacks, as an OCI image layout tar made on the fly from the unpacked
``images/`` folder (the manifests travel as locked, so containerd keeps their digests),
into ``ctr -n k8s.io images import -``; ``ensure_names`` points a name at its locked
manifest where the content is there under another name; ``check`` reads the names back
and fails naming the image whose digest is not the locked one. ``ctr`` finds containerd
through its own defaults or the node's ``CONTAINERD_ADDRESS``.

It does not choose which images a node gets (``plan``) and does not configure containerd
(registry trust: ``siteregistry``). Carried in bundles: python3 3.6, stdlib only.
"""

import json
import shlex
from pathlib import Path
from typing import IO, Callable, Dict, FrozenSet, List, Optional, Tuple

from bundler import oci
from bundler.installer import remote
from bundler.installer.dockerload import Counter, blob_tar, blobs_size
from bundler.installer.inventory import Node

NAMESPACE = "k8s.io"  # the namespace containerd's CRI plugin (the kubelet's images) uses
CTR = "ctr -n " + NAMESPACE
IMAGE_NAME = "io.containerd.image.name"  # the index annotation ctr import names an image by


def _blob(images_dir: Path, digest: str) -> Path:
    return images_dir / oci.blob_path(digest)


def oci_tar(
    images: List[oci.Image],
    images_dir: Path,
    out: IO[bytes],
    progress: Callable[[int], None] = lambda _n: None,
) -> int:
    """Write an OCI image layout tar of ``images`` (each named by ``IMAGE_NAME``) to ``out``, the
    blobs streamed from ``images_dir``; returns the bytes written."""
    counter = Counter(out, progress)
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": i.media_type,
                "digest": i.manifest,
                "size": _blob(images_dir, i.manifest).stat().st_size,
                "annotations": {IMAGE_NAME: name},
            }
            for i in images
            for name in oci.full_names(i)
        ],
    }
    layout = json.dumps({"imageLayoutVersion": "1.0.0"}).encode()
    digests = [d for i in images for d in [i.manifest, i.config] + [la.digest for la in i.layers]]
    return blob_tar(
        counter, [("oci-layout", layout), ("index.json", json.dumps(index).encode())], digests, images_dir
    )


def present(node: Node, opts: remote.SshOptions) -> Tuple[FrozenSet[str], Dict[str, str]]:
    """The manifest digests the node's ``k8s.io`` namespace holds, and the digest each name points at."""
    out = remote.run(node, opts, f"{remote.sudo_prefix(node)}{CTR} images ls")
    digests = set()
    found: Dict[str, str] = {}
    for line in list(remote.lines(out))[1:]:  # a header line first
        fields = line.split()
        if len(fields) >= 3 and fields[2].startswith("sha256:"):
            digests.add(fields[2])
            found[fields[0]] = fields[2]
    return frozenset(digests), found


def import_missing(
    node: Node,
    images: List[oci.Image],
    images_dir: Path,
    opts: remote.SshOptions,
    progress: Optional[Callable[[int, int], None]] = None,
) -> Tuple[List[oci.Image], int]:
    """``ctr -n k8s.io images import`` on ``node`` those of ``images`` whose manifest it lacks;
    (those imported, bytes sent). ``progress(sent, total)`` follows the stream."""
    digests, _ = present(node, opts)
    missing = [i for i in images if i.manifest not in digests]
    sent = [0]
    if missing:
        total = blobs_size(missing, images_dir)

        def tell(n: int) -> None:
            if progress:
                progress(n, total)

        def send(out: IO[bytes]) -> None:
            sent[0] = oci_tar(missing, images_dir, out, tell)

        remote.stream(node, opts, f"{remote.sudo_prefix(node)}{CTR} images import -", send)
    return missing, sent[0]


def ensure_names(node: Node, opts: remote.SshOptions, image: oci.Image, found: Dict[str, str]) -> None:
    """Point each of ``image``'s names at its locked manifest where ``found`` (``present``) has the
    content under another name or the name elsewhere."""
    source = next((n for n, d in found.items() if d == image.manifest), "")
    for name in oci.full_names(image):
        if found.get(name) != image.manifest and source:
            tag = f"images tag --force {shlex.quote(source)} {shlex.quote(name)}"
            remote.run(node, opts, f"{remote.sudo_prefix(node)}{CTR} {tag}")


def check(node: Node, opts: remote.SshOptions, images: List[oci.Image]) -> List[str]:
    """What is wrong on ``node`` after the import: each name of ``images`` missing from ``k8s.io``
    or at another digest than the locked one (empty: all there)."""
    _, found = present(node, opts)
    wrong = []
    for image in images:
        for name in oci.full_names(image):
            if found.get(name) != image.manifest:
                wrong.append(
                    f"{name}: {'missing' if name not in found else 'at ' + found[name]} in containerd's "
                    f"{NAMESPACE} namespace, the bundle locks {image.manifest}"
                )
    return wrong
