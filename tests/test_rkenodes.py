"""RKE's system images on the site: which node gets which (``plan.node_images``, pure), and the
bundle's images reaching real loopback nodes by role (``install.sh --only images``)."""

from __future__ import annotations

import hashlib

from bundler import oci
from bundler.installer.inventory import Node
from bundler.installer.plan import Route, describe, node_images
from bundler.lock import Lock, SystemImage

from .rke_images import APP_IMAGE, CANAL_ROLES, KUBERNETES_VERSION

ETCD = "docker.io/rancher/mirrored-coreos-etcd:v3.5.12"
HYPERKUBE = "docker.io/rancher/hyperkube:v1.28.15-rancher1"
COREDNS = "docker.io/rancher/mirrored-coredns-coredns:1.10.1"
NGINX_PROXY = "docker.io/rancher/rke-nginx-proxy:v0.1.1"  # old RKE releases: its own image


def _image(ref: str) -> oci.Image:
    digest = "sha256:" + hashlib.sha256(ref.encode()).hexdigest()
    return oci.Image(ref, (ref.removeprefix("docker.io/"),), "registry", digest, oci.OCI_MANIFEST, digest,
                     "linux/amd64", ())  # fmt: skip


def _lock(system: dict[str, tuple[str, ...]], apps: tuple[str, ...] = (APP_IMAGE,),
          image_roles: tuple[str, ...] = ("worker",)) -> Lock:  # fmt: skip
    images = tuple(_image(r) for r in (*apps, *system))
    return Lock("b", "1", {"os": "ubuntu", "codename": "jammy", "arch": "amd64"}, "test", "0" * 64, 0, (),
                images=images, image_roles=image_roles,
                cluster={"kind": "rke", "kubernetes_version": KUBERNETES_VERSION, "network_plugin": "canal",
                         "tool": "rke"} if system else {},
                system_images=tuple(SystemImage(r, roles) for r, roles in system.items()))  # fmt: skip


def _refs(lock: Lock, nodes: list[Node]) -> dict[str, set[str]]:
    return {name: {i.ref for i in images} for name, images in node_images(lock, nodes).items()}


CP = Node("cp1", "u", ("controlplane", "etcd"))
W = Node("w1", "u", ("worker",))
ETCD_ONLY = Node("e1", "u", ("etcd",))
CP_W = Node("cw", "u", ("controlplane", "worker"))


def test_controlplane_nodes_get_system_images_only_workers_get_workloads_too() -> None:
    lock = _lock(CANAL_ROLES)
    got = _refs(lock, [CP, W])
    every = {r for r, roles in CANAL_ROLES.items() if "controlplane" in roles}
    workers = {r for r, roles in CANAL_ROLES.items() if "worker" in roles}
    assert got["cp1"] == every | {ETCD}  # no application image, no addon
    assert APP_IMAGE not in got["cp1"] and COREDNS not in got["cp1"]
    assert got["w1"] == workers | {APP_IMAGE}
    assert ETCD not in got["w1"] and HYPERKUBE in got["w1"]
    ordered = node_images(lock, [CP, W])["w1"]
    assert list(ordered) == [i for i in lock.images if i in ordered]  # lock order, each once


def test_nginx_proxy_goes_to_nodes_without_the_controlplane_role() -> None:
    lock = _lock({**CANAL_ROLES, NGINX_PROXY: ("etcd", "worker")})
    got = _refs(lock, [CP, W, ETCD_ONLY, CP_W])
    assert NGINX_PROXY in got["w1"] and NGINX_PROXY in got["e1"]
    assert NGINX_PROXY in got["cp1"]  # an etcd role too: recorded for etcd nodes
    assert NGINX_PROXY in got["cw"]  # controlplane+worker: as the rule records it (worker)
    assert APP_IMAGE not in got["e1"] and ETCD in got["e1"]


def test_without_a_worker_every_node_gets_the_workloads_as_before() -> None:
    lock = _lock(CANAL_ROLES)
    got = _refs(lock, [CP])
    assert APP_IMAGE in got["cp1"] and ETCD in got["cp1"]
    plain = _lock({}, apps=("docker.io/test/a:1", "docker.io/test/b:1"))
    assert _refs(plain, [CP, W]) == {"cp1": set(), "w1": {"docker.io/test/a:1", "docker.io/test/b:1"}}
    assert _refs(plain, [CP]) == {"cp1": {"docker.io/test/a:1", "docker.io/test/b:1"}}
    roles = _lock({}, apps=("docker.io/test/a:1",), image_roles=("controlplane",))
    assert _refs(roles, [CP, W]) == {"cp1": {"docker.io/test/a:1"}, "w1": set()}


def test_dry_run_plan_shows_system_and_application_images_apart() -> None:
    lines = describe(_lock(CANAL_ROLES), [CP, W], Route())
    images = [line for line in lines if line.startswith("images ")]
    assert images == [f"images     on w1: 1 application images ({APP_IMAGE.removeprefix('docker.io/')}), "
                      "only those missing, in parallel, over SSH into docker load"]  # fmt: skip
    assert any(f"{len(CANAL_ROLES)} system images for rke {KUBERNETES_VERSION}" in line for line in lines)
    assert any(line.strip() == f"{ETCD} (etcd): cp1" for line in lines)
    assert any(line.strip() == f"{HYPERKUBE} (controlplane/etcd/worker): cp1, w1" for line in lines)
    assert any(line.strip() == f"{COREDNS} (worker): w1" for line in lines)
