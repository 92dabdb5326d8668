"""Images into a node's Docker engine over SSH: what it holds, ``docker load`` of what it lacks, tags.

``present`` asks a node's engine which image IDs it holds and which tags point where;
``load_missing`` streams only the images it lacks into ``docker load`` (a tar made on
the fly from the unpacked ``images/`` folder, no temporary copy); ``ensure_tags`` points
each tag at its locked image ID. It does not choose which images a node gets (``plan``).
"""

import io
import json
import shlex
import tarfile
from pathlib import Path
from typing import IO, Callable, Dict, FrozenSet, List, Optional, Set, Tuple

from bundler import oci
from bundler.installer import remote
from bundler.installer.inventory import Node


def _no_progress(_sent: int) -> None:
    pass


class Counter:
    """A write-only file that counts what passes through it to ``out``, telling ``progress``."""

    def __init__(self, out: IO[bytes], progress: Callable[[int], None] = _no_progress) -> None:
        self.out, self.count, self.progress = out, 0, progress

    def write(self, data: bytes) -> int:
        self.count += len(data)
        self.progress(self.count)
        return self.out.write(data)


def blobs_size(images: List[oci.Image], images_dir: Path) -> int:
    """The bytes of ``images``' blobs, each once: what ``docker_load_tar`` sends, headers aside."""
    digests = {d for i in images for d in [i.config, *(la.digest for la in i.layers)]}
    return sum((images_dir / oci.blob_path(d)).stat().st_size for d in digests)


def docker_load_tar(
    images: List[oci.Image], images_dir: Path, out: IO[bytes], progress: Callable[[int], None] = _no_progress
) -> int:
    """Write a ``docker load`` archive of ``images`` to ``out``, streaming the blobs from ``images_dir``;
    returns the bytes written (``progress`` is told the running count)."""
    counter = Counter(out, progress)
    manifest = json.dumps(
        [
            {
                "Config": oci.blob_path(i.config),
                "RepoTags": list(i.tags),
                "Layers": [oci.blob_path(la.digest) for la in i.layers],
            }
            for i in images
        ]
    ).encode()
    digests = [d for i in images for d in [i.config, *(la.digest for la in i.layers)]]
    return blob_tar(counter, [("manifest.json", manifest)], digests, images_dir)


def blob_tar(counter: "Counter", head: List[Tuple[str, bytes]], digests: List[str], images_dir: Path) -> int:
    """A streamed tar to ``counter``: the ``head`` members (name, bytes), then each blob of
    ``digests`` once (a layer shared by two images goes once), read from ``images_dir``; the
    bytes written. What ``docker load`` and ``ctr images import`` archives have in common."""
    with tarfile.open(fileobj=counter, mode="w|", format=tarfile.PAX_FORMAT) as tar:  # type: ignore[call-overload]  # stream mode only writes
        for member, data in head:
            info = tarfile.TarInfo(member)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for digest in dict.fromkeys(digests):  # in order, each once
            tar.add(str(images_dir / oci.blob_path(digest)), arcname=oci.blob_path(digest), recursive=False)
    return counter.count


def present_ids(node: Node, opts: remote.SshOptions) -> Set[str]:
    """The image IDs the node's engine holds."""
    return set(remote.lines(remote.run(node, opts, "docker images --no-trunc --quiet")))


def load_missing(
    node: Node,
    images: List[oci.Image],
    images_dir: Path,
    opts: remote.SshOptions,
    progress: Optional[Callable[[int, int], None]] = None,
) -> Tuple[List[oci.Image], int]:
    """``docker load`` on ``node`` those of ``images`` its engine lacks; (those loaded, bytes sent).

    ``progress(sent, total)`` follows the stream (total: the blobs' bytes, each once)."""
    present = present_ids(node, opts)
    missing = [i for i in images if i.config not in present]
    sent = 0
    if missing:
        total = blobs_size(missing, images_dir)
        tell = (lambda n: progress(n, total)) if progress else _no_progress

        def send(out: IO[bytes]) -> None:
            nonlocal sent
            sent = docker_load_tar(missing, images_dir, out, tell)

        remote.stream(node, opts, "docker load --quiet", send)
    return missing, sent


def ensure_tags(node: Node, opts: remote.SshOptions, image: oci.Image) -> None:
    """Point each of ``image``'s tags at its locked ID, where the node's engine has them elsewhere."""
    for tag in image.tags:
        found = remote.run(
            node, opts, f"docker image inspect --format '{{{{.Id}}}}' {shlex.quote(tag)} || true"
        ).strip()
        if found != image.config:
            remote.run(node, opts, f"docker tag {image.config} {shlex.quote(tag)}")


def present(node: Node, opts: remote.SshOptions) -> Tuple[FrozenSet[str], Dict[str, str]]:
    """The image IDs the node's engine holds, and the image ID each of its tags points at."""
    out = remote.run(node, opts, "docker images --no-trunc --format '{{.ID}} {{.Repository}}:{{.Tag}}'")
    ids: Set[str] = set()
    tags: Dict[str, str] = {}
    for line in remote.lines(out):
        image_id, _, tag = line.partition(" ")
        ids.add(image_id)
        if "<none>" not in tag:
            tags[tag] = image_id
    return frozenset(ids), tags
