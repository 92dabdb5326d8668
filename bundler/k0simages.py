"""What airbundle knows about k0s's own images and versions: one place, pure data and rules.

k0s runs its system components (CoreDNS, kube-proxy, konnectivity's agent, metrics-server, the
network provider, pause) from images; on an isolated site they come from an image bundle that k0s
imports itself from ``/var/lib/k0s/images/`` on every node that runs workloads (k0s docs, "Airgap
install": "Copy the bundle only to the worker nodes. Controller nodes don't use it."). The bundle is
an uncompressed tar of an OCI image layout (``docker image save`` output is taken too).

``LIST_IMAGES`` is the command that prints them (``k0s airgap list-images``, the pinned k0s's own
list for its default configuration). ``KNOWN`` is that list for the releases airbundle was checked
against, from k0s's source (``pkg/constant``; ``pkg/airgap/images.go``: calico CNI, kube
controllers and node, CoreDNS, konnectivity agent, kube-proxy, kube-router and its CNI installer,
metrics-server, pause, in that order). ``select`` gives each image the roles that need it: the
workers. No I/O (the build runs the binary, ``bundler.k0sbuild``); carried in bundles, python3 3.6.
"""

import re
from typing import Dict, Iterable, List, Tuple

KIND = "k0s"
# k0s's release versions: the Kubernetes version, then +k0s.N (e.g. v1.28.15+k0s.0).
VERSION_RE = re.compile(r"v[0-9]+\.[0-9]+\.[0-9]+(?:-rc\.[0-9]+)?\+k0s\.[0-9]+")
NETWORK_PROVIDERS = ("kuberouter", "calico", "custom")  # spec.network.provider
DEFAULT_NETWORK_PROVIDER = "kuberouter"
# The manifest's cluster.shared_roles: whether the product lets a node be controller and worker.
SHARED_ROLES = ("allowed", "demo-only")
LIST_IMAGES = ("airgap", "list-images")
IMAGES_DIR = "/var/lib/k0s/images"  # where k0s imports image bundles from (<data-dir>/images)
WORKLOAD_ROLES = ("worker",)  # controllers run no pods in k0s: they do not use the images

_Q = "quay.io/k0sproject/"
# `k0s airgap list-images` of each release, as its source writes the references.
KNOWN: Dict[str, Tuple[str, ...]] = {
    "v1.28.15+k0s.0": (
        _Q + "calico-cni:v3.26.1-1",
        _Q + "calico-kube-controllers:v3.26.1-1",
        _Q + "calico-node:v3.26.1-1",
        _Q + "coredns:1.11.3",
        _Q + "apiserver-network-proxy-agent:v0.1.4",
        _Q + "kube-proxy:v1.28.15",
        _Q + "kube-router:v1.6.1-iptables1.8.9-0",
        _Q + "cni-node:1.1.1-k0s.1",
        "registry.k8s.io/metrics-server/metrics-server:v0.7.2",
        "registry.k8s.io/pause:3.8",
    ),
}


def kubernetes_version(version: str) -> str:
    """The Kubernetes version a k0s release brings up: v1.28.15+k0s.0 → v1.28.15."""
    return version.split("+", 1)[0]


def parse_list(text: str) -> List[str]:
    """The references ``k0s airgap list-images`` printed: one a line; log lines (with spaces) and
    blank lines skipped."""
    out: List[str] = []
    for raw in text.splitlines():
        line = raw.strip()
        if line and not any(c.isspace() for c in line) and line not in out:
            out.append(line)
    return out


def select(refs: Iterable[str]) -> List[Tuple[str, Tuple[str, ...], bool]]:
    """Each reference once, in order, with the roles that need it (the workers) and whether it is
    one of a known release's list (an unknown one is kept: k0s asked for it)."""
    known = {r for images in KNOWN.values() for r in images}
    out: List[Tuple[str, Tuple[str, ...], bool]] = []
    seen = set()
    for ref in refs:
        if ref not in seen:
            seen.add(ref)
            out.append((ref, WORKLOAD_ROLES, ref in known))
    return out
