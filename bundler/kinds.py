"""Cluster kinds behind one interface: what each cluster tool needs, at build time and at the site.

A ``Kind`` says, for one cluster tool (``rke``, ``kubeadm``; ``k0s`` plugs in the same way):

- ``name``: the manifest's and the lock's ``cluster.kind``;
- ``runtime``: where the nodes' images go: ``docker`` (``docker load``, ``dockerload``) or
  ``containerd`` (``ctr -n k8s.io images import``, ``ctrimport``);
- ``roles``: the node roles its inventory may give (the ``role:`` of RKE's ``cluster.yml``);
- ``tool``: the default ``binaries:`` entry that lists the images and brings the cluster up;
- ``images_argv(version)``: the arguments that make the pinned tool print its images, one
  reference a line (``rke config --system-images --version V``,
  ``kubeadm config images list --kubernetes-version V``, ``k0s airgap list-images``);
- ``select(refs, network_plugin)``: (kept, left out) of those, each kept one with the node
  roles that need it (``rkeimages.Choice``);
- ``kubeconfig``: the file the bring-up leaves in the installer's work folder.

``KINDS`` maps each name to its ``Kind``. A new kind is one entry here, built from its own
rule module (``rkeimages`` for rke; kubeadm's rule is below, being short), plus its bring-up
at the site (``installer/bringup.py``). This module does not run any tool, read any file or
talk to a node: pure data and rules, carried in bundles (python3 3.6: no annotations import).
"""

from typing import Callable, Dict, Iterable, List, NamedTuple, Tuple

from bundler import rkeimages
from bundler.rkeimages import Choice

# Every role any kind knows; a kind's own ``roles`` are some of these.
ALL_ROLES = ("controlplane", "etcd", "worker", "loadbalancer")
RUNTIMES = ("docker", "containerd")


class Kind(NamedTuple):
    """One cluster kind (see the module's docstring for each field)."""

    name: str
    runtime: str
    roles: Tuple[str, ...]
    tool: str
    images_argv: Callable[[str], List[str]]
    select: Callable[[Iterable[str], str], Tuple[List[Choice], List[Choice]]]
    kubeconfig: str
    example_version: str  # shown in messages about kubernetes_version


def _rke_argv(version: str) -> List[str]:
    return ["config", "--system-images", "--version", version]


RKE = Kind(
    "rke",
    "docker",
    rkeimages.ROLES,
    "rke",
    _rke_argv,
    rkeimages.select,
    "kube_config_cluster.yml",
    "v1.26.15-rancher1-1",
)


# ---------------------------------------------------------------- kubeadm's rule

# kubeadm (cmd/kubeadm/app/images: GetControlPlaneImages) lists, for a version, the control
# plane's three images, kube-proxy, CoreDNS, pause and etcd, all from registry.k8s.io. With
# stacked etcd (kubeadm's default, and what ``kubeadm join --control-plane`` sets up) the
# control-plane nodes run etcd and the static pods; kube-proxy and pause run on every node;
# CoreDNS is a Deployment that tolerates the control-plane taint, so it may land on any node.
# A load-balancer node (keepalived + haproxy from packages) runs no container.
_KUBEADM_CONTROL = ("controlplane", "etcd")
_KUBEADM_NODES = ("controlplane", "etcd", "worker")
_KUBEADM_COMPONENTS = {
    "kube-apiserver": ("kubernetes", _KUBEADM_CONTROL),
    "kube-controller-manager": ("kubernetes", _KUBEADM_CONTROL),
    "kube-scheduler": ("kubernetes", _KUBEADM_CONTROL),
    "etcd": ("etcd", _KUBEADM_CONTROL),
    "kube-proxy": ("kubernetes", _KUBEADM_NODES),
    "pause": ("pause", _KUBEADM_NODES),
    "coredns": ("coredns", _KUBEADM_NODES),
}


def kubeadm_classify(ref: str) -> Choice:
    """kubeadm's rule for one image: its component and the roles of the nodes that need it."""
    _, key = rkeimages.repository_key(ref)
    if key in _KUBEADM_COMPONENTS:
        component, roles = _KUBEADM_COMPONENTS[key]
        return Choice(ref, component, roles)
    return Choice(ref, "unknown", _KUBEADM_NODES, known=False)


def kubeadm_select(refs: Iterable[str], network_plugin: str = "none") -> Tuple[List[Choice], List[Choice]]:
    """(kept, left out): every image kubeadm lists is needed (it lists only what it runs)."""
    kept: List[Choice] = []
    seen = set()
    for ref in refs:
        if ref not in seen:
            seen.add(ref)
            kept.append(kubeadm_classify(ref))
    return kept, []


def _kubeadm_argv(version: str) -> List[str]:
    return ["config", "images", "list", "--kubernetes-version", version]


KUBEADM = Kind(
    "kubeadm",
    "containerd",
    ALL_ROLES,
    "kubeadm",
    _kubeadm_argv,
    kubeadm_select,
    "admin.conf",
    "v1.28.15",
)

KINDS: Dict[str, Kind] = {k.name: k for k in (RKE, KUBEADM)}


def kind_of(name: str) -> Kind:
    """The ``Kind`` named ``name`` (the lock and the manifest check names against ``KINDS`` first)."""
    return KINDS[name]


def pause_image(refs: Iterable[str]) -> str:
    """The pause (pod sandbox) image among ``refs``, or "": containerd's ``sandbox_image``."""
    for ref in refs:
        if rkeimages.repository_key(ref)[1] in ("pause", "pause-amd64"):
            return ref
    return ""
