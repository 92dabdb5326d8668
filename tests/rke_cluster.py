"""What the tests' cluster stand-in for rke (tests/standins/rke_cluster) knows about Rancher's rke: one place.

``SYSTEM_IMAGES`` is the fixed list ``rke config --system-images --version V`` prints
(canonical names; the build-side tests serve them through a mirror), keyed by the
component RKE uses each image for. ``ROLE_RULE`` says which node roles need which
component's image, as rke pulls them: every node runs the kubelet, kube-proxy and the
CNI from hyperkube, rke-tools, pause and the CNI images; etcd nodes also run etcd; a
node without the controlplane role runs nginx-proxy (an rke-tools image) to reach the
API servers; workers also run the add-ons (CoreDNS, the ingress controller,
metrics-server). ``DOCKER_VERSIONS`` is rke's table of Docker versions accepted per
Kubernetes minor version (kontainer-driver-metadata, ``pkg/rke/k8s_docker_info.go``).

The stand-in travels inside test bundles as the pinned ``rke`` binary, where this
module is not beside it: ``standin_bytes()`` gives the stand-in with these constants
written into it.
"""

from __future__ import annotations

from pathlib import Path

KUBERNETES_VERSION = "v1.28.15-rancher1-1"
RKE_VERSION = "v1.4.11"

SYSTEM_IMAGES: dict[str, str] = {
    "hyperkube": "docker.io/rancher/hyperkube:v1.28.15-rancher1",
    "rke-tools": "docker.io/rancher/rke-tools:v0.1.100",
    "pause": "docker.io/rancher/mirrored-pause:3.7",
    "etcd": "docker.io/rancher/mirrored-coreos-etcd:v3.5.12",
    "calico-node": "docker.io/rancher/mirrored-calico-node:v3.27.4",
    "calico-cni": "docker.io/rancher/mirrored-calico-cni:v3.27.4",
    "flannel": "docker.io/rancher/mirrored-flannel-flannel:v0.25.1",
    "ingress": "docker.io/rancher/nginx-ingress-controller:nginx-1.11.5-rancher1",
    "coredns": "docker.io/rancher/mirrored-coredns-coredns:1.10.1",
    "metrics-server": "docker.io/rancher/mirrored-metrics-server:v0.7.1",
    "nginx-proxy": "docker.io/rancher/rke-tools:v0.1.100",
}

# Which components' images a node needs: "all" nodes, "etcd" nodes, nodes "without-controlplane",
# "worker" nodes.
ROLE_RULE: dict[str, list[str]] = {
    "all": ["hyperkube", "rke-tools", "pause", "calico-node", "calico-cni", "flannel"],
    "etcd": ["etcd"],
    "without-controlplane": ["nginx-proxy"],
    "worker": ["coredns", "ingress", "metrics-server"],
}

_LEGACY = ["1.13.x", "17.03.x", "17.06.x", "17.09.x", "18.06.x", "18.09.x", "19.03.x", "20.10.x"]
_OLD = ["1.11.x", "1.12.x", "1.13.x", "17.03.x"]
DOCKER_VERSIONS: dict[str, list[str]] = {
    "1.8": _OLD,
    **{f"1.{m}": [*_OLD, "18.06.x", "18.09.x", "19.03.x", "20.10.x"] for m in (9, 10, 11)},
    **{f"1.{m}": [*_OLD, "17.06.x", "17.09.x", "18.06.x", "18.09.x", "19.03.x", "20.10.x"] for m in (12, 13)},
    **{f"1.{m}": _LEGACY for m in range(14, 23)},
    "1.23": [*_LEGACY, "23.0.x", "24.0.x"],
    "1.24": [*_LEGACY, "23.0.x", "24.0.x"],
    **{f"1.{m}": [*_LEGACY, "23.0.x", "24.0.x", "25.0.x"] for m in range(25, 30)},
}

STANDIN = Path(__file__).resolve().parent / "standins" / "rke_cluster"


def system_images() -> list[str]:
    """The distinct references, in the order rke prints them."""
    return list(dict.fromkeys(SYSTEM_IMAGES.values()))


def images_for(roles: tuple[str, ...] | list[str]) -> set[str]:
    """The image references a node with ``roles`` needs."""
    groups = ["all"]
    groups += ["etcd"] if "etcd" in roles else []
    groups += ["without-controlplane"] if "controlplane" not in roles else []
    groups += ["worker"] if "worker" in roles else []
    return {SYSTEM_IMAGES[c] for g in groups for c in ROLE_RULE[g]}


def standin_bytes() -> bytes:
    """The stand-in as one self-contained file (these constants written in), to serve as rke."""
    text = STANDIN.read_text()
    embedded = repr(
        {
            "KUBERNETES_VERSION": KUBERNETES_VERSION,
            "RKE_VERSION": RKE_VERSION,
            "SYSTEM_IMAGES": SYSTEM_IMAGES,
            "ROLE_RULE": ROLE_RULE,
            "DOCKER_VERSIONS": DOCKER_VERSIONS,
        }
    )
    marker = "EMBEDDED = None  # filled in by tests/rke_cluster.py:standin_bytes()\n"
    assert marker in text
    return text.replace(marker, f"EMBEDDED = {embedded}\n").encode()
