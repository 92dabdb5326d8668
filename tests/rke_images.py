"""RKE's system images for the tests: the one list the rke stand-ins print, and tiny real images
for those names in a loopback registry (reached by the build through ``--mirror docker.io=...``).

``SYSTEM_IMAGES`` is what ``rke config --system-images --version KUBERNETES_VERSION`` prints in
the tests (``tests/standins/rke``): canonical ``docker.io/rancher/...`` names, as rke v1.6 lists
them for a Kubernetes 1.28 cluster, including the ones a canal cluster leaves out (kube-dns,
NodeLocal DNS, calico-ctl, flannel-cni). Each image is a static busybox (one layer all share)
plus a layer holding ``/etc/component`` (its own name), so it runs with ``--network none``.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from dataclasses import dataclass
from pathlib import Path

import requests

from .engines import busybox_rootfs

KUBERNETES_VERSION = "v1.28.15-rancher1-1"
RKE_VERSION = "v1.6.3"
STANDIN = Path(__file__).resolve().parent / "standins" / "rke"

SYSTEM_IMAGES = (
    "docker.io/rancher/mirrored-coreos-etcd:v3.5.12",
    "docker.io/rancher/rke-tools:v0.1.100",
    "docker.io/rancher/mirrored-k8s-dns-kube-dns:1.22.28",
    "docker.io/rancher/mirrored-k8s-dns-dnsmasq-nanny:1.22.28",
    "docker.io/rancher/mirrored-k8s-dns-sidecar:1.22.28",
    "docker.io/rancher/mirrored-cluster-proportional-autoscaler:v1.8.9",
    "docker.io/rancher/mirrored-coredns-coredns:1.10.1",
    "docker.io/rancher/mirrored-k8s-dns-node-cache:1.22.28",
    "docker.io/rancher/hyperkube:v1.28.15-rancher1",
    "docker.io/rancher/mirrored-flannel-flannel:v0.25.1",
    "docker.io/rancher/flannel-cni:v1.4.1-rancher1",
    "docker.io/rancher/mirrored-calico-node:v3.27.4",
    "docker.io/rancher/mirrored-calico-cni:v3.27.4",
    "docker.io/rancher/mirrored-calico-kube-controllers:v3.27.4",
    "docker.io/rancher/mirrored-calico-ctl:v3.27.4",
    "docker.io/rancher/mirrored-calico-pod2daemon-flexvol:v3.27.4",
    "docker.io/rancher/mirrored-pause:3.7",
    "docker.io/rancher/nginx-ingress-controller:nginx-1.11.5-rancher1",
    "docker.io/rancher/mirrored-nginx-ingress-controller-defaultbackend:1.5-rancher1",
    "docker.io/rancher/mirrored-ingress-nginx-kube-webhook-certgen:v1.4.4",
    "docker.io/rancher/mirrored-metrics-server:v0.7.1",
)

# What a canal cluster keeps of SYSTEM_IMAGES, with the node roles (bundler/rkeimages.py's rule).
ALL = ("controlplane", "etcd", "worker")
CANAL_ROLES = {
    "docker.io/rancher/mirrored-coreos-etcd:v3.5.12": ("etcd",),
    "docker.io/rancher/rke-tools:v0.1.100": ALL,
    "docker.io/rancher/mirrored-cluster-proportional-autoscaler:v1.8.9": ("worker",),
    "docker.io/rancher/mirrored-coredns-coredns:1.10.1": ("worker",),
    "docker.io/rancher/hyperkube:v1.28.15-rancher1": ALL,
    "docker.io/rancher/mirrored-flannel-flannel:v0.25.1": ALL,
    "docker.io/rancher/mirrored-calico-node:v3.27.4": ALL,
    "docker.io/rancher/mirrored-calico-cni:v3.27.4": ALL,
    "docker.io/rancher/mirrored-calico-kube-controllers:v3.27.4": ALL,
    "docker.io/rancher/mirrored-calico-pod2daemon-flexvol:v3.27.4": ALL,
    "docker.io/rancher/mirrored-pause:3.7": ALL,
    "docker.io/rancher/nginx-ingress-controller:nginx-1.11.5-rancher1": ("worker",),
    "docker.io/rancher/mirrored-nginx-ingress-controller-defaultbackend:1.5-rancher1": ("worker",),
    "docker.io/rancher/mirrored-ingress-nginx-kube-webhook-certgen:v1.4.4": ("worker",),
    "docker.io/rancher/mirrored-metrics-server:v0.7.1": ("worker",),
}
# An application image served beside them (e.g. the agent Rancher runs on imported clusters).
APP_IMAGE = "docker.io/rancher/rancher-agent:v2.9.3"

MANIFEST_V2 = "application/vnd.docker.distribution.manifest.v2+json"


def standin_rke() -> bytes:
    """The stand-in rke as the pinned binary's bytes, with SYSTEM_IMAGES put in."""
    text = STANDIN.read_text()
    filled = text.replace(
        "SYSTEM_IMAGES = []  # filled in by tests/rke_images.py",
        "SYSTEM_IMAGES = " + json.dumps(list(SYSTEM_IMAGES)),
    )
    assert filled != text
    return filled.encode()


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
    """Push SYSTEM_IMAGES and APP_IMAGE into the registry at ``host`` (under ``prefix``);
    ref -> what was pushed. The same bytes every time, so digests match across registries."""
    pusher = Pusher(host, auth)
    return {ref: pusher.push(ref, prefix) for ref in (*SYSTEM_IMAGES, APP_IMAGE)}
