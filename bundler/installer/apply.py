"""The install phases that act on nodes, recorded in the journal (``images`` so far).

``images`` asks each target node's Docker engine which locked image IDs it
already has, streams only the missing images over SSH into ``docker load`` (a
tar made on the fly from the unpacked ``images/`` folder, no temporary copy),
then checks that every tag resolves to its locked image ID, tagging where an
image was present under another name. Nodes run in parallel; one node failing
does not stop the others, and the report names each node's outcome.
"""

from __future__ import annotations

import io
import json
import tarfile
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from bundler import oci
from bundler.errors import InstallError
from bundler.installer import remote
from bundler.installer.inventory import Node
from bundler.installer.journal import Journal
from bundler.lock import Lock


@dataclass
class NodeResult:
    """What one phase did on one node."""

    node: Node
    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    error: str | None = None


def _docker_load_tar(images: list[oci.Image], images_dir: Path, out: IO[bytes]) -> None:
    """Write a ``docker load`` archive of ``images`` to ``out``, streaming the blobs from ``images_dir``."""
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
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("manifest.json")
        info.size = len(manifest)
        tar.addfile(info, io.BytesIO(manifest))
        seen = set()
        for image in images:
            for digest in [image.config, *(la.digest for la in image.layers)]:
                if digest in seen:
                    continue  # a layer shared by two images goes once
                seen.add(digest)
                path = images_dir / oci.blob_path(digest)
                tar.add(str(path), arcname=oci.blob_path(digest), recursive=False)


def _images_on(
    node: Node, lock: Lock, images_dir: Path, opts: remote.SshOptions, journal: Journal, lock_: threading.Lock
) -> NodeResult:
    result = NodeResult(node)
    try:
        present = set(remote.lines(remote.run(node, opts, "docker images --no-trunc --quiet")))
        missing = [i for i in lock.images if i.config not in present]
        result.skipped = [t for i in lock.images if i.config in present for t in i.tags]
        if missing:
            remote.stream(
                node, opts, "docker load --quiet", lambda out: _docker_load_tar(missing, images_dir, out)
            )
        for image in lock.images:
            for tag in image.tags:
                found = remote.run(
                    node, opts, f"docker image inspect --format '{{{{.Id}}}}' {tag} || true"
                ).strip()
                if found != image.config:
                    remote.run(node, opts, f"docker tag {image.config} {tag}")
            with lock_:
                journal.mark_done("images", node.name, image.config)
        result.done = [t for i in missing for t in i.tags]
    except InstallError as exc:
        result.error = str(exc)
    return result


def images_phase(
    lock: Lock, bundle_dir: Path, targets: list[Node], opts: remote.SshOptions, journal: Journal
) -> list[NodeResult]:
    """Load the bundle's images on every target node, in parallel; a result per node."""
    if not lock.images:
        return [NodeResult(n) for n in targets]
    guard = threading.Lock()
    with ThreadPoolExecutor(max_workers=max(1, len(targets))) as pool:
        return list(
            pool.map(lambda n: _images_on(n, lock, bundle_dir / "images", opts, journal, guard), targets)
        )
