"""What the tests' stand-in for Rancher's rke (tests/standins/rke) knows about rke: one place.

The stand-in plays rke v1.4.11, the release ``manifests/fmp-rke.yaml`` pins, for its default
Kubernetes version v1.26.9-rancher1-1. ``KDM`` is that version's system images as rke v1.4.11
embeds them (kontainer-driver-metadata's ``data.json``, field by field, in rke's struct order);
``SYSTEM_IMAGES`` is what ``rke config --system-images --version V`` prints: those references,
each once, in that order, as KDM writes them (``rancher/...``: Docker Hub's short form, which the
build normalizes; the build-side tests serve them from a loopback registry through ``--mirror
docker.io=...``). ``canonical()`` gives the normalized name the lock records. It names every network plugin's images,
kube-dns', NodeLocal DNS' and Cisco ACI's too: the build's role rule has to leave those out.

``ROLE_RULE`` says which node roles need which KDM field's image, as rke brings a cluster up:
every node runs the kubelet and kube-proxy (hyperkube), rke-tools' helpers, pause and the canal
DaemonSet (calico node and CNI, flannel, flexvol, and the kube-controllers it schedules); etcd
nodes run etcd; a node without the controlplane role runs nginx-proxy (an rke-tools image) to
reach the API servers; workers run the add-ons (CoreDNS and its autoscaler, the nginx ingress
with its backend and webhook, metrics-server). It is written from rke's behaviour, apart from
``bundler/rkeimages.py`` (the code under test), and ``CANAL_ROLES`` is the answer that code
must give for this list: a test checks the two agree.

``DOCKER_VERSIONS`` is rke's table of Docker versions accepted per Kubernetes minor version
(kontainer-driver-metadata, ``pkg/rke/k8s_docker_info.go``).

The stand-in travels inside test bundles as the pinned ``rke`` binary, where this module is not
beside it: ``standin_bytes()`` gives the stand-in with these constants written into it.
"""

from __future__ import annotations

from pathlib import Path

KUBERNETES_VERSION = "v1.26.9-rancher1-1"
RKE_VERSION = "v1.4.11"

_R = "rancher/"
_TOOLS = _R + "rke-tools:v0.1.96"
_CALICO = "v3.25.0"
# kontainer-driver-metadata's v1.26.9-rancher1-1, as rke v1.4.11 embeds it (field order of RKESystemImages).
KDM: dict[str, str] = {
    "etcd": _R + "mirrored-coreos-etcd:v3.5.6",
    "alpine": _TOOLS,
    "nginxProxy": _TOOLS,
    "certDownloader": _TOOLS,
    "kubernetesServicesSidecar": _TOOLS,
    "kubedns": _R + "mirrored-k8s-dns-kube-dns:1.22.20",
    "dnsmasq": _R + "mirrored-k8s-dns-dnsmasq-nanny:1.22.20",
    "kubednsSidecar": _R + "mirrored-k8s-dns-sidecar:1.22.20",
    "kubednsAutoscaler": _R + "mirrored-cluster-proportional-autoscaler:1.8.6",
    "coredns": _R + "mirrored-coredns-coredns:1.9.4",
    "corednsAutoscaler": _R + "mirrored-cluster-proportional-autoscaler:1.8.6",
    "nodelocal": _R + "mirrored-k8s-dns-node-cache:1.22.20",
    "kubernetes": _R + "hyperkube:v1.26.9-rancher1",
    "flannel": _R + "mirrored-flannel-flannel:v0.21.4",
    "flannelCni": _R + "flannel-cni:v0.3.0-rancher8",
    "calicoNode": _R + f"mirrored-calico-node:{_CALICO}",
    "calicoCni": _R + f"calico-cni:{_CALICO}-rancher1",
    "calicoControllers": _R + f"mirrored-calico-kube-controllers:{_CALICO}",
    "calicoCtl": _R + f"mirrored-calico-ctl:{_CALICO}",
    "calicoFlexVol": _R + f"mirrored-calico-pod2daemon-flexvol:{_CALICO}",
    "canalNode": _R + f"mirrored-calico-node:{_CALICO}",
    "canalCni": _R + f"calico-cni:{_CALICO}-rancher1",
    "canalControllers": _R + f"mirrored-calico-kube-controllers:{_CALICO}",
    "canalFlannel": _R + "mirrored-flannel-flannel:v0.21.4",
    "canalFlexVol": _R + f"mirrored-calico-pod2daemon-flexvol:{_CALICO}",
    "weaveNode": "weaveworks/weave-kube:2.8.1",
    "weaveCni": "weaveworks/weave-npc:2.8.1",
    "podInfraContainer": _R + "mirrored-pause:3.7",
    "ingress": _R + "nginx-ingress-controller:nginx-1.7.0-rancher1",
    "ingressBackend": _R + "mirrored-nginx-ingress-controller-defaultbackend:1.5-rancher1",
    "ingressWebhook": _R
    + "mirrored-ingress-nginx-kube-webhook-certgen:v20230312-helm-chart-4.5.2-28-g66a760794",
    "metricsServer": _R + "mirrored-metrics-server:v0.6.3",
    "windowsPodInfraContainer": _R + "mirrored-pause:3.7",
    "aciCniDeployContainer": "noiro/cnideploy:6.0.3.1.81c2369",
    "aciHostContainer": "noiro/aci-containers-host:6.0.3.1.81c2369",
    "aciOpflexContainer": "noiro/opflex:6.0.3.1.81c2369",
    "aciMcastContainer": "noiro/opflex:6.0.3.1.81c2369",
    "aciOvsContainer": "noiro/openvswitch:6.0.3.1.81c2369",
    "aciControllerContainer": "noiro/aci-containers-controller:6.0.3.1.81c2369",
}
SYSTEM_IMAGES: tuple[str, ...] = tuple(dict.fromkeys(KDM.values()))


def canonical(ref: str) -> str:
    """A Docker Hub short name as the build normalizes it: ``rancher/x:1`` → ``docker.io/rancher/x:1``."""
    first = ref.split("/", 1)[0]
    return (
        ref if "/" in ref and ("." in first or ":" in first or first == "localhost") else "docker.io/" + ref
    )


# Which KDM fields' images a node needs (canal): "all" nodes, "etcd" nodes, nodes
# "without-controlplane", "worker" nodes.
ROLE_RULE: dict[str, list[str]] = {
    "all": [
        "kubernetes", "alpine", "certDownloader", "kubernetesServicesSidecar", "podInfraContainer",
        "canalNode", "canalCni", "canalControllers", "canalFlannel", "canalFlexVol",
    ],
    "etcd": ["etcd"],
    "without-controlplane": ["nginxProxy"],
    "worker": ["coredns", "corednsAutoscaler", "ingress", "ingressBackend", "ingressWebhook", "metricsServer"],
}  # fmt: skip

# What bundler/rkeimages.py must keep of SYSTEM_IMAGES for a canal cluster, with the node roles.
ALL = ("controlplane", "etcd", "worker")
_WORKER = ("worker",)
_CANAL_FIELDS: dict[str, tuple[str, ...]] = {
    "etcd": ("etcd",),
    "alpine": ALL,
    "corednsAutoscaler": _WORKER,
    "coredns": _WORKER,
    "kubernetes": ALL,
    "flannel": ALL,
    "calicoNode": ALL,
    "calicoCni": ALL,
    "calicoControllers": ALL,
    "calicoFlexVol": ALL,
    "podInfraContainer": ALL,
    "ingress": _WORKER,
    "ingressBackend": _WORKER,
    "ingressWebhook": _WORKER,
    "metricsServer": _WORKER,
}
CANAL_ROLES: dict[str, tuple[str, ...]] = {canonical(KDM[f]): roles for f, roles in _CANAL_FIELDS.items()}
# The agent Rancher runs on every node of an imported cluster: an application image the tests
# serve beside the system images.
APP_IMAGE = "docker.io/rancher/rancher-agent:v2.7.9"

_LEGACY = ["1.13.x", "17.03.x", "17.06.x", "17.09.x", "18.06.x", "18.09.x", "19.03.x", "20.10.x"]
_OLD = ["1.11.x", "1.12.x", "1.13.x", "17.03.x"]
DOCKER_VERSIONS: dict[str, list[str]] = {
    "1.8": _OLD,
    **{f"1.{m}": [*_OLD, "18.06.x", "18.09.x", "19.03.x", "20.10.x"] for m in (9, 10, 11)},
    **{f"1.{m}": [*_OLD, "17.06.x", "17.09.x", "18.06.x", "18.09.x", "19.03.x", "20.10.x"] for m in (12, 13)},
    **{f"1.{m}": _LEGACY for m in range(14, 23)},
    # rke v1.4.11's metadata: 23.0 and 24.0 up to 1.26 (25.0 came with rke v1.5's, as did 1.27+).
    **{f"1.{m}": [*_LEGACY, "23.0.x", "24.0.x"] for m in range(23, 27)},
    **{f"1.{m}": [*_LEGACY, "23.0.x", "24.0.x", "25.0.x"] for m in range(27, 30)},
}

STANDIN = Path(__file__).resolve().parent / "standins" / "rke"


def system_images() -> list[str]:
    """The distinct references, in the order rke prints them."""
    return list(SYSTEM_IMAGES)


def images_for(roles: tuple[str, ...] | list[str]) -> set[str]:
    """The image references a node with ``roles`` needs."""
    groups = ["all"]
    groups += ["etcd"] if "etcd" in roles else []
    groups += ["without-controlplane"] if "controlplane" not in roles else []
    groups += ["worker"] if "worker" in roles else []
    return {canonical(KDM[field]) for g in groups for field in ROLE_RULE[g]}


def standin_bytes() -> bytes:
    """The stand-in as one self-contained file (these constants written in), to serve as rke."""
    text = STANDIN.read_text()
    embedded = repr(
        {
            "KUBERNETES_VERSION": KUBERNETES_VERSION,
            "RKE_VERSION": RKE_VERSION,
            "KDM": KDM,
            "ROLE_RULE": ROLE_RULE,
            "DOCKER_VERSIONS": DOCKER_VERSIONS,
        }
    )
    marker = "EMBEDDED = None  # filled in by tests/rke_standin.py:standin_bytes()\n"
    assert marker in text
    return text.replace(marker, f"EMBEDDED = {embedded}\n").encode()


if __name__ == "__main__":  # `python -m tests.rke_standin > tools/demo-upstream/rke_linux-amd64`
    import sys

    sys.stdout.buffer.write(standin_bytes())
