"""RKE's system images: which node roles need which image, and which ones a cluster needs at all.

``rke config --system-images --version V`` lists every image a Kubernetes version
*could* use: every network plugin's, both DNS providers', Windows' and Cisco ACI's.
A cluster uses one network plugin, CoreDNS and the nginx ingress, so the build keeps
those plus the core ones, and records for each the node roles that need it:

- every node: the Kubernetes image (``rancher/hyperkube``), ``rancher/rke-tools``
  (RKE's helpers: cert deployer, sidecar, nginx-proxy in current releases), the pod
  infra image (``pause``) and the chosen network plugin's images;
- etcd nodes: the etcd image;
- nodes without the controlplane role: the nginx-proxy image (a separate image only in
  old RKE releases; recorded for the etcd and worker roles, so a node that is both
  controlplane and worker gets it too);
- worker nodes: the addons: CoreDNS and its autoscaler, the nginx ingress controller with
  its default backend and admission webhook, metrics-server.

Images are classified by their repository's last path part, without Rancher's
``mirrored-`` prefix (``docker.io/rancher/mirrored-coreos-etcd:v3.5.9`` is ``coreos-etcd``).
An image the rule does not know goes to every node (``Choice.known`` is False, and the
build says so). Pure: no I/O; carried in bundles (python3 3.7).
"""

from typing import Iterable, List, Tuple


from bundler.compat import dataclass

ROLES = ("controlplane", "etcd", "worker")
CLUSTER_KINDS = ("rke",)  # more kinds come later (kubeadm, k0s), each with its own rule
NETWORK_PLUGINS = ("canal", "calico", "flannel", "weave", "none")
DEFAULT_NETWORK_PLUGIN = "canal"

EVERY_NODE = ROLES
_NOT_CONTROLPLANE = ("etcd", "worker")
_WORKERS = ("worker",)

# component -> the roles of the nodes that need it
COMPONENT_ROLES = {
    "kubernetes": EVERY_NODE,
    "rke-tools": EVERY_NODE,
    "pause": EVERY_NODE,
    "network": EVERY_NODE,
    "etcd": ("etcd",),
    "nginx-proxy": _NOT_CONTROLPLANE,
    "coredns": _WORKERS,
    "ingress": _WORKERS,
    "metrics-server": _WORKERS,
}

# repository key -> component (core and addons)
_COMPONENTS = {
    "hyperkube": "kubernetes",
    "rke-tools": "rke-tools",
    "pause": "pause",
    "pause-amd64": "pause",
    "coreos-etcd": "etcd",
    "etcd": "etcd",
    "rke-nginx-proxy": "nginx-proxy",
    "coredns-coredns": "coredns",
    "coredns": "coredns",
    "cluster-proportional-autoscaler": "coredns",
    "nginx-ingress-controller": "ingress",
    "nginx-ingress-controller-defaultbackend": "ingress",
    "ingress-nginx-kube-webhook-certgen": "ingress",
    "jettech-kube-webhook-certgen": "ingress",
    "metrics-server": "metrics-server",
}

# repository key -> the network plugins that run it
_NETWORK = {
    "calico-node": ("canal", "calico"),
    "calico-cni": ("canal", "calico"),
    "calico-kube-controllers": ("canal", "calico"),
    "calico-pod2daemon-flexvol": ("canal", "calico"),
    "calico-ctl": ("calico",),
    "flannel-flannel": ("canal", "flannel"),
    "flannelcni-flannel": ("canal", "flannel"),
    "coreos-flannel": ("canal", "flannel"),
    "flannel": ("canal", "flannel"),
    "flannel-cni": ("flannel",),
    "weave-kube": ("weave",),
    "weave-npc": ("weave",),
    "weaveworks-weave-kube": ("weave",),
    "weaveworks-weave-npc": ("weave",),
}

# repository key -> why a cluster of this rule never needs it
_UNUSED = {
    "k8s-dns-kube-dns": "kube-dns (the cluster uses CoreDNS)",
    "k8s-dns-dnsmasq-nanny": "kube-dns (the cluster uses CoreDNS)",
    "k8s-dns-sidecar": "kube-dns (the cluster uses CoreDNS)",
    "k8s-dns-node-cache": "NodeLocal DNSCache (not enabled)",
    "kubelet-pause": "Windows nodes",
    "pause-windows": "Windows nodes",
}


@dataclass(frozen=True)
class Choice:
    """What the rule decided for one image reference."""

    ref: str
    component: str  # a COMPONENT_ROLES key, or "unknown", or "unused"
    roles: Tuple[str, ...]  # the node roles that need it; empty when the cluster does not
    known: bool = True  # False: the rule does not know the image (it goes to every node)
    why: str = ""  # for an unused image: what it is for


def repository_key(ref: str) -> Tuple[str, str]:
    """(namespace, key) of a reference: ``docker.io/rancher/mirrored-calico-node:v3.26.3`` →
    ``("rancher", "calico-node")``."""
    name = ref.split("@", 1)[0]
    last = name.rsplit("/", 1)[-1]
    if ":" in last:
        name = name[: len(name) - len(last)] + last.split(":", 1)[0]
    parts = name.split("/")
    key = parts[-1]
    if key.startswith("mirrored-"):
        key = key[len("mirrored-") :]
    namespace = parts[-2] if len(parts) > 1 else ""
    return namespace, key


def classify(ref: str, network_plugin: str) -> Choice:
    """The rule for one image of a cluster using ``network_plugin``."""
    namespace, key = repository_key(ref)
    if namespace == "noiro":  # Cisco ACI's images
        return Choice(ref, "unused", (), why="the aci network plugin")
    if key in _NETWORK:
        plugins = _NETWORK[key]
        if network_plugin in plugins:
            return Choice(ref, "network", COMPONENT_ROLES["network"])
        return Choice(ref, "unused", (), why=f"the {' or '.join(plugins)} network plugin")
    if key in _COMPONENTS:
        component = _COMPONENTS[key]
        return Choice(ref, component, COMPONENT_ROLES[component])
    if key in _UNUSED:
        return Choice(ref, "unused", (), why=_UNUSED[key])
    return Choice(ref, "unknown", EVERY_NODE, known=False)


def select(refs: Iterable[str], network_plugin: str) -> Tuple[List[Choice], List[Choice]]:
    """(kept, left out): the images a cluster with ``network_plugin`` needs, in the given order,
    each once, with their roles; and those it does not need."""
    kept: List[Choice] = []
    dropped: List[Choice] = []
    seen = set()
    for ref in refs:
        if ref in seen:
            continue
        seen.add(ref)
        choice = classify(ref, network_plugin)
        (kept if choice.roles else dropped).append(choice)
    return kept, dropped


def needed_by(image_roles: Iterable[str], node_roles: Iterable[str]) -> bool:
    """True when a node with ``node_roles`` needs an image recorded for ``image_roles``."""
    return bool(set(image_roles) & set(node_roles))
