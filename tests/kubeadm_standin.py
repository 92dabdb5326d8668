"""What the tests' stand-in for kubeadm (tests/standins/kubeadm) knows about kubeadm: one place.

The stand-in plays kubeadm v1.28.15 (the Kubernetes version ``manifests/fmp-k8s.yaml`` pins).
``IMAGES`` is what ``kubeadm config images list --kubernetes-version v1.28.15`` prints, in its
order (cmd/kubeadm/app/images: GetControlPlaneImages: kube-apiserver, kube-controller-manager,
kube-scheduler, kube-proxy, then CoreDNS, pause and etcd; the versions from
cmd/kubeadm/app/constants: CoreDNSVersion v1.10.1, PauseVersion 3.9, SupportedEtcdVersion[28]
3.5.15-0), all under ``registry.k8s.io``. The etcd tag was checked against kubernetes' history:
release-1.28's constants.go maps 28 to "3.5.12-0" until the cherry-pick of "Update etcd from
v3.5.14 to v3.5.15" (kubernetes/kubernetes#126399, approved in September 2024), and to "3.5.15-0"
from then on; v1.28.15 (October 2024) came after it and lists ``registry.k8s.io/etcd:3.5.15-0``. ``ROLES`` is which node roles run each, written from
kubeadm's behaviour apart from ``bundler/kinds.py`` (the code under test): the static pods and
stacked etcd on control planes, kube-proxy (a DaemonSet) and the pod sandbox on every node,
CoreDNS (a Deployment tolerating the control-plane taint) on any node.

The stand-in travels inside test bundles as the pinned ``kubeadm`` binary, where this module is
not beside it: ``standin_bytes()`` gives it with these constants written in.
"""

from __future__ import annotations

from pathlib import Path

KUBERNETES_VERSION = "v1.28.15"
_K = "registry.k8s.io/"
IMAGES = [
    _K + "kube-apiserver:" + KUBERNETES_VERSION,
    _K + "kube-controller-manager:" + KUBERNETES_VERSION,
    _K + "kube-scheduler:" + KUBERNETES_VERSION,
    _K + "kube-proxy:" + KUBERNETES_VERSION,
    _K + "coredns/coredns:v1.10.1",
    _K + "pause:3.9",
    _K + "etcd:3.5.15-0",
]
_CONTROL = ("controlplane", "etcd")
_EVERY = ("controlplane", "etcd", "worker")
ROLES: dict[str, tuple[str, ...]] = {
    IMAGES[0]: _CONTROL,
    IMAGES[1]: _CONTROL,
    IMAGES[2]: _CONTROL,
    IMAGES[3]: _EVERY,
    IMAGES[4]: _EVERY,
    IMAGES[5]: _EVERY,
    IMAGES[6]: _CONTROL,
}

STANDIN = Path(__file__).resolve().parent / "standins" / "kubeadm"


def standin_bytes() -> bytes:
    """The stand-in as one self-contained file (these constants written in), to serve as kubeadm."""
    text = STANDIN.read_text()
    marker = "EMBEDDED = None  # filled in by tests/kubeadm_standin.py:standin_bytes()\n"
    assert marker in text
    embedded = repr({"KUBERNETES_VERSION": KUBERNETES_VERSION, "IMAGES": IMAGES})
    return text.replace(marker, f"EMBEDDED = {embedded}\n").encode()
