"""Tiny real images for RKE's system images (tests/rke_standin.py's list), pushed into a loopback
registry with the Registry HTTP API, for builds that reach them through ``--mirror docker.io=...``.

Each image is a static busybox (one layer all share) plus a layer holding ``/etc/component``
(its own name), so it runs with ``--network none``.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from dataclasses import dataclass

import requests

from .engines import busybox_rootfs
from .rke_standin import APP_IMAGE, CANAL_ROLES

MANIFEST_V2 = "application/vnd.docker.distribution.manifest.v2+json"


def _tar(files: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


@dataclass(frozen=True)
class Pushed:
    """One image pushed: its canonical name, manifest digest and config digest (the image ID)."""

    ref: str
    manifest: str
    config: str


class Pusher:
    """Pushes tiny images into a registry with the Registry HTTP API (no Docker engine needed)."""

    def __init__(self, host: str, auth: tuple[str, str] | None = None) -> None:
        self.base = f"http://{host}/v2"
        self.session = requests.Session()
        if auth:
            self.session.auth = auth
        self._base_layer = gzip.compress(busybox_rootfs(), mtime=0)
        self._base_diff = "sha256:" + hashlib.sha256(gzip.decompress(self._base_layer)).hexdigest()

    def _blob(self, repo: str, data: bytes) -> str:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        if self.session.head(f"{self.base}/{repo}/blobs/{digest}", timeout=10).status_code == 200:
            return digest
        upload = self.session.post(f"{self.base}/{repo}/blobs/uploads/", timeout=10)
        upload.raise_for_status()
        location = upload.headers["Location"]
        if not location.startswith("http"):
            location = self.base.removesuffix("/v2") + location
        sep = "&" if "?" in location else "?"
        put = self.session.put(
            f"{location}{sep}digest={digest}",
            data=data,
            headers={"Content-Type": "application/octet-stream"},
            timeout=30,
        )
        assert put.status_code == 201, put.text
        return digest

    def push(self, ref: str, prefix: str = "") -> Pushed:
        """``ref`` (``docker.io/NAMESPACE/NAME:TAG``) as ``[PREFIX/]NAMESPACE/NAME:TAG`` here."""
        name, tag = ref.removeprefix("docker.io/").rsplit(":", 1)
        repo = f"{prefix}/{name}" if prefix else name
        top = _tar({"etc/component": f"{ref}\n".encode()})
        layer = gzip.compress(top, mtime=0)
        config = json.dumps(
            {
                "architecture": "amd64",
                "os": "linux",
                "config": {"Cmd": ["/bin/sh", "-c", "cat /etc/component; exec sleep 3600"]},
                "rootfs": {
                    "type": "layers",
                    "diff_ids": [self._base_diff, "sha256:" + hashlib.sha256(top).hexdigest()],
                },
            },
            sort_keys=True,
        ).encode()
        layers = []
        for data in (self._base_layer, layer):
            layers.append(
                {
                    "mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip",
                    "size": len(data),
                    "digest": self._blob(repo, data),
                }
            )
        manifest = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": MANIFEST_V2,
                "config": {
                    "mediaType": "application/vnd.docker.container.image.v1+json",
                    "size": len(config),
                    "digest": self._blob(repo, config),
                },
                "layers": layers,
            },
            sort_keys=True,
        ).encode()
        put = self.session.put(
            f"{self.base}/{repo}/manifests/{tag}",
            data=manifest,
            headers={"Content-Type": MANIFEST_V2},
            timeout=10,
        )
        assert put.status_code == 201, put.text
        return Pushed(
            ref,
            "sha256:" + hashlib.sha256(manifest).hexdigest(),
            "sha256:" + hashlib.sha256(config).hexdigest(),
        )


def serve_system_images(
    host: str, prefix: str = "", auth: tuple[str, str] | None = None
) -> dict[str, Pushed]:
    """Push the system images a canal cluster keeps (CANAL_ROLES) and APP_IMAGE into the registry at
    ``host`` (under ``prefix``); ref -> what was pushed. The same bytes every time, so digests match
    across registries. The images the build must leave out are not served: pulling one fails."""
    pusher = Pusher(host, auth)
    return {ref: pusher.push(ref, prefix) for ref in (*CANAL_ROLES, APP_IMAGE)}
