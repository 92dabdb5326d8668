"""What the tests' stand-ins for k0s and k0sctl (tests/standins/k0s, tests/standins/k0sctl) know: one place.

They play k0s v1.28.15+k0s.0 (the release ``manifests/kuma-k0s.yaml`` pins) and k0sctl v0.17.4.
``AIRGAP_IMAGES`` is what that k0s prints for ``k0s airgap list-images`` with its default
configuration, written from k0s's source apart from ``bundler/k0simages.py`` (the code under test;
a test checks the two agree): ``pkg/airgap/images.go`` lists calico's CNI, kube-controllers and
node, CoreDNS, konnectivity's agent, kube-proxy, kube-router and its CNI installer, metrics-server
and pause, in that order, with the versions of ``pkg/constant`` at tag v1.28.15+k0s.0.

k0s imports every image bundle it finds in ``<data-dir>/images`` (``/var/lib/k0s/images``) into
containerd on the nodes that run workloads; the stand-in's worker refuses to start when a listed
image is missing there, naming it (in an isolated site the kubelet could not pull it). The bundle
may be a docker-archive (``docker image save``: ``manifest.json`` with ``RepoTags``) or an OCI
image layout tar (``index.json``, names in ``io.containerd.image.name`` or
``org.opencontainers.image.ref.name``), uncompressed, as k0s's "Airgap install" page says.

The stand-ins travel into bundles as the pinned binaries: ``standin_bytes(NAME)`` gives one with
these constants written in.
"""

from __future__ import annotations

from pathlib import Path

K0S_VERSION = "v1.28.15+k0s.0"
K0SCTL_VERSION = "v0.17.4"
_Q = "quay.io/k0sproject/"
AIRGAP_IMAGES = [
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
]

STANDINS = Path(__file__).resolve().parent / "standins"


def standin_bytes(name: str) -> bytes:
    """``tests/standins/NAME`` (k0s or k0sctl) as one self-contained file, these constants written in."""
    text = (STANDINS / name).read_text()
    embedded = repr(
        {"K0S_VERSION": K0S_VERSION, "K0SCTL_VERSION": K0SCTL_VERSION, "AIRGAP_IMAGES": AIRGAP_IMAGES}
    )
    marker = "EMBEDDED = None  # filled in by tests/k0s_standin.py:standin_bytes()\n"
    assert marker in text
    return text.replace(marker, f"EMBEDDED = {embedded}\n").encode()
