"""RKE's system images on the site: which node gets which (``plan.node_images``, pure), and the
bundle's images reaching real loopback nodes by role (``install.sh --only images``)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from bundler import oci
from bundler.installer.inventory import Node, with_kubernetes_version
from bundler.installer.plan import Route, describe, kubernetes_version_problem, node_images
from bundler.lock import Lock, RoledImage, SystemImage

from .conftest import Keys, run_cli
from .rke_standin import ALL, APP_IMAGE, CANAL_ROLES, KDM, KUBERNETES_VERSION, canonical, images_for
from .test_installer import _empty_engines, _install, _site
from .test_rkeimages import _manifest

ETCD = canonical(KDM["etcd"])
HYPERKUBE = canonical(KDM["kubernetes"])
COREDNS = canonical(KDM["coredns"])
RANCHER = "docker.io/rancher/rancher:v2.7.9"
NGINX_PROXY = "docker.io/rancher/rke-nginx-proxy:v0.1.1"  # old RKE releases: its own image


def _image(ref: str) -> oci.Image:
    digest = "sha256:" + hashlib.sha256(ref.encode()).hexdigest()
    return oci.Image(ref, (ref.removeprefix("docker.io/"),), "registry", digest, oci.OCI_MANIFEST, digest,
                     "linux/amd64", ())  # fmt: skip


def _lock(system: dict[str, tuple[str, ...]], apps: tuple[str, ...] = (APP_IMAGE,),
          image_roles: tuple[str, ...] = ("worker",), placed: dict[str, tuple[str, ...]] | None = None) -> Lock:  # fmt: skip
    images = tuple(_image(r) for r in (*apps, *system))
    return Lock("b", "1", {"os": "ubuntu", "codename": "jammy", "arch": "amd64"}, "test", "0" * 64, 0, (),
                images=images, image_roles=image_roles,
                cluster={"kind": "rke", "kubernetes_version": KUBERNETES_VERSION, "network_plugin": "canal",
                         "tool": "rke"} if system else {},
                system_images=tuple(SystemImage(r, roles) for r, roles in system.items()),
                placed_images=tuple(RoledImage(r, roles) for r, roles in (placed or {}).items()))  # fmt: skip


def test_the_standins_rule_agrees_with_the_builds_rule() -> None:
    """The rke stand-in's requirement (from rke's behaviour, by KDM field) and bundler/rkeimages' answer
    (CANAL_ROLES) give every kind of node the same images."""
    for roles in [
        ("controlplane", "etcd"),
        ("worker",),
        ("etcd",),
        ("controlplane",),
        ALL,
        ("controlplane", "worker"),
    ]:
        assert images_for(roles) == {r for r, need in CANAL_ROLES.items() if set(need) & set(roles)}, roles


def test_an_image_with_its_own_roles_goes_to_those_nodes_only() -> None:
    """rancher-agent on every node (its entry's own roles), the Rancher server image on no worker but
    the image_roles ones as usual, and the fallback (no node of image_roles) for the others only."""
    lock = _lock(CANAL_ROLES, apps=(APP_IMAGE, RANCHER), placed={APP_IMAGE: ALL})
    got = _refs(lock, [CP, W])
    assert APP_IMAGE in got["cp1"] and APP_IMAGE in got["w1"]
    assert RANCHER in got["w1"] and RANCHER not in got["cp1"]
    assert [i.ref for i in lock.placed] == [APP_IMAGE]
    only_cp = _refs(_lock({}, apps=(APP_IMAGE, RANCHER), placed={APP_IMAGE: ("etcd",)}), [CP_W])
    assert only_cp["cw"] == {RANCHER}  # fallback takes the image_roles ones, not the placed one
    lines = describe(lock, [CP, W], Route())
    assert any(f"{APP_IMAGE} (controlplane/etcd/worker): cp1, w1" in line for line in lines)
    assert any("1 application images (rancher/rancher:v2.7.9)" in line for line in lines)


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


# ---------------------------------------------------------------- real loopback nodes


@pytest.fixture
def rke_site(project, keys: Keys, tmp_path: Path, cache_dir: Path, ssh_cluster, mirror):
    """A bundle with rke's system images (from the build stand-in, through the mirror) and one
    application image, laid out on a site whose inventory is the test nodes (cp-1: controlplane+etcd)."""
    from .nodes import cluster_yml

    reg, pushed = mirror
    client, nodes = ssh_cluster
    _empty_engines(nodes)
    manifest = _manifest(project)  # the build stand-in as the pinned rke; jammy: no preflight here
    built = run_cli("build", manifest, "-o", tmp_path / "out", "--key", keys.key_path, "--cache", cache_dir,
                    "--mirror", f"docker.io={reg.host}")  # fmt: skip
    assert built.exit_code == 0, built.stderr
    site = _site(Path(built.stdout.strip().splitlines()[-1]), tmp_path)
    (site / "cluster.yml").write_text(cluster_yml(nodes, workers={"worker-1", "worker-2"}))
    return site, client, nodes, pushed


def test_system_images_reach_every_node_by_role(rke_site, keys: Keys) -> None:
    site, client, nodes, pushed = rke_site
    first = _install(site, keys, "--yes", "--only", "images", "--ssh-config", str(client.config))
    assert first.returncode == 0, first.stdout + first.stderr
    workers = {r for r, roles in CANAL_ROLES.items() if "worker" in roles}
    control = {r for r, roles in CANAL_ROLES.items() if {"controlplane", "etcd"} & set(roles)}
    want = {"cp-1": control, "worker-1": workers | {APP_IMAGE}, "worker-2": workers | {APP_IMAGE}}
    assert ETCD in want["cp-1"] and COREDNS not in want["cp-1"] and ETCD not in want["worker-1"]
    for node in nodes:
        engine = node.engine.client
        assert {i.id for i in engine.images.list()} == {pushed[r].config for r in want[node.name]}, node.name
        for ref in want[node.name]:  # each under its familiar name, with the locked ID
            assert engine.images.get(ref.removeprefix("docker.io/")).id == pushed[ref].config
        assert f"{node.name:<20} ok: {len(want[node.name])} loaded, 0 already present, " in first.stdout
    again = _install(site, keys, "--yes", "--only", "images", "--ssh-config", str(client.config))
    assert again.returncode == 0, again.stdout + again.stderr
    for node in nodes:
        assert f"{node.name:<20} ok: 0 loaded, {len(want[node.name])} already present\n" in again.stdout
    assert "bytes sent" not in again.stdout


def test_a_cluster_yml_with_another_kubernetes_version_is_refused(rke_site, keys: Keys) -> None:
    site, client, nodes, _ = rke_site
    inventory = site / "cluster.yml"
    inventory.write_text(inventory.read_text() + "kubernetes_version: v1.27.16-rancher1-1\n")
    run = _install(site, keys, "--yes", "--ssh-config", str(client.config))
    assert run.returncode == 6, run.stdout + run.stderr
    assert "v1.27.16-rancher1-1" in run.stderr and KUBERNETES_VERSION in run.stderr
    assert "system images" in run.stderr
    assert not (site / "work" / "logs").exists()  # nothing ran
    for node in nodes:
        assert node.engine.client.images.list() == []


def test_the_cluster_yml_copy_gets_the_locked_kubernetes_version(tmp_path: Path) -> None:
    site = "nodes:\n  - {address: 10.0.0.1, user: root, role: [worker]}\n"
    text = with_kubernetes_version(site, KUBERNETES_VERSION)
    assert "kubernetes_version: " + KUBERNETES_VERSION in text and "10.0.0.1" in text
    own = site + "kubernetes_version: v1.28.15-rancher1-1\n"
    assert (
        with_kubernetes_version(own, "v1.29.1-rancher1-1") == own
    )  # the site's file wins (preflight checks)
    assert kubernetes_version_problem(_lock(CANAL_ROLES), None) is None
    assert kubernetes_version_problem(_lock(CANAL_ROLES), KUBERNETES_VERSION) is None
    problem = kubernetes_version_problem(_lock(CANAL_ROLES), "v1.27.16-rancher1-1")
    assert problem and "v1.27.16-rancher1-1" in problem and KUBERNETES_VERSION in problem
    assert kubernetes_version_problem(_lock({}), "v1.27.16-rancher1-1") is None  # no cluster in the bundle


def _bundle_lock(site: Path) -> Lock:
    from bundler import archive

    bundle = next(site.glob("*.tar"))
    with archive.Bundle(bundle, None) as opened:
        return opened.unverified()[0]


def test_the_cluster_phase_brings_the_cluster_up_from_the_bundles_images(
    project, keys: Keys, tmp_path: Path, cache_dir: Path, ssh_cluster, mirror
) -> None:
    """The cluster stand-in (fails like rke when a node lacks an image its roles need) as the pinned
    rke: the build asks it for its list (served through the mirror), the images phase gives each node
    its roles' images, and `rke up` on the installer's copy of cluster.yml (no kubernetes_version:
    the lock's goes in) finds them all."""
    from . import rke_standin
    from .nodes import rke_cluster_yml

    reg, _ = mirror
    client, nodes = ssh_cluster
    _empty_engines(nodes)
    manifest = _manifest(project, rke_standin.standin_bytes(), version=rke_standin.KUBERNETES_VERSION)
    built = run_cli("build", manifest, "-o", tmp_path / "out", "--key", keys.key_path, "--cache", cache_dir,
                    "--mirror", f"docker.io={reg.host}")  # fmt: skip
    assert built.exit_code == 0, built.stderr
    site = _site(Path(built.stdout.strip().splitlines()[-1]), tmp_path)
    roles = {"cp-1": "[controlplane, etcd]", "worker-1": "[worker]", "worker-2": "[worker]"}
    (site / "cluster.yml").write_text(rke_cluster_yml(nodes, roles, client.key))
    try:
        images = _install(site, keys, "--yes", "--only", "images", "--ssh-config", str(client.config))
        assert images.returncode == 0, images.stdout + images.stderr
        lock = _bundle_lock(site)
        for node in nodes:
            node_roles = roles[node.name].strip("[]").split(", ")
            want = rke_standin.images_for(node_roles) | ({APP_IMAGE} if "worker" in node_roles else set())
            ids = {i.id for i in node.engine.client.images.list()}
            assert ids == {lock.find_image(r).config for r in want}, node.name  # exactly these, locked IDs
            assert f"{node.name:<20} ok: {len(want)} loaded, 0 already present" in images.stdout
        # rke's requirements are checked again just before rke up (Docker may have come from the
        # bundle since the preflight): worker-1's SSH user outside the docker group stops the phase
        # there, naming the node and the fix, and rke never runs.
        from .nodes import ensure_user

        good = (site / "cluster.yml").read_text()
        ensure_user("abnodock", docker_group=False)
        nodes[1].root.chmod(0o711)  # sshd reads the node's authorized_keys as that user
        (site / "cluster.yml").write_text(
            good.replace(
                f"{nodes[1].address}, port: 2222, user: root",
                f"{nodes[1].address}, port: 2222, user: abnodock",
            )
        )
        early = _install(site, keys, "--yes", "--only", "cluster", "--ssh-config", str(client.config),
                         env={"HOME": str(site)})  # fmt: skip
        assert early.returncode == 6, early.stdout + early.stderr
        assert "abnodock cannot use Docker without sudo" in early.stdout and "worker-1" in early.stdout
        assert "rke up --config" not in early.stdout and not (site / "work/kube_config_cluster.yml").exists()
        # rke drops a node it cannot tunnel to (here: worker-2's Docker socket is not where cluster.yml
        # says) and exits 0; the installer reads its warning and fails, naming the node.
        (site / "cluster.yml").write_text(good.replace(str(nodes[2].engine.sock), "/nonexistent/docker.sock"))
        short = _install(site, keys, "--yes", "--only", "cluster", "--ssh-config", str(client.config),
                         env={"HOME": str(site)})  # fmt: skip
        assert short.returncode == 6, short.stdout + short.stderr
        assert f"cluster: rke up left out {nodes[2].address} (it could not reach Docker there" in short.stderr
        (site / "cluster.yml").write_text(good)
        up = _install(site, keys, "--yes", "--only", "cluster", "--ssh-config", str(client.config),
                      env={"HOME": str(site)})  # fmt: skip
        assert up.returncode == 0, up.stdout + up.stderr
        copy = (site / "work/cluster.yml").read_text()
        assert f"kubernetes_version: {rke_standin.KUBERNETES_VERSION}" in copy
        assert "network:\n  plugin: canal\n" in copy  # the bundle's plugin, which the site named not
        assert (site / "work/kube_config_cluster.yml").exists()
        running = {n.name: {c.name for c in n.engine.client.containers.list()} for n in nodes}
        assert {"etcd", "kube-apiserver", "kubelet"} <= running["cp-1"]
        assert {"nginx-proxy", "kubelet", "kube-proxy"} <= running["worker-1"]
        again = _install(site, keys, "--yes", "--only", "images", "--ssh-config", str(client.config))
        assert again.returncode == 0, again.stdout + again.stderr
        for node in nodes:  # a re-run sends nothing
            assert f"{node.name:<20} ok: 0 loaded, " in again.stdout, node.name
    finally:
        for node in nodes:
            for container in node.engine.client.containers.list(all=True):
                container.remove(force=True)


def test_system_images_reach_every_node_through_the_site_registry(rke_site, keys: Keys) -> None:
    """The registry route with a cluster bundle: every image is pushed once into the site registry,
    each node pulls by digest exactly the images its roles need (none is loaded over SSH), and
    a re-run sends no blob."""
    from .registries import Registry

    site, client, nodes, pushed = rke_site
    registry = Registry("open")
    try:
        args = ("--only", "images", "--ssh-config", str(client.config), "--registry", registry.host)
        first = _install(site, keys, "--yes", *args)
        assert first.returncode == 0, first.stdout + first.stderr
        assert "loaded" not in first.stdout  # pulled from the registry, not streamed over SSH
        workers = {r for r, roles in CANAL_ROLES.items() if "worker" in roles}
        control = {r for r, roles in CANAL_ROLES.items() if {"controlplane", "etcd"} & set(roles)}
        want = {"cp-1": control, "worker-1": workers | {APP_IMAGE}, "worker-2": workers | {APP_IMAGE}}
        for node in nodes:
            ids = {i.id for i in node.engine.client.images.list()}
            assert ids == {pushed[r].config for r in want[node.name]}, node.name
            assert f"{node.name:<20} ok: {len(want[node.name])} pulled" in first.stdout
        again = _install(site, keys, "--yes", *args)
        assert again.returncode == 0, again.stdout + again.stderr
        assert ": 0 blobs sent (0 bytes)" in again.stdout
    finally:
        registry.stop()


def test_the_site_cluster_yml_may_not_ask_for_other_images() -> None:
    """What in cluster.yml makes rke want images the bundle does not carry is refused, naming both
    sides; a plugin the site names none of is written into the installer's copy (rke would take canal)."""
    from bundler.installer.inventory import ClusterOptions, with_network_plugin
    from bundler.installer.plan import cluster_file_problems

    lock = _lock(CANAL_ROLES)
    assert cluster_file_problems(lock, ClusterOptions()) == []
    assert (
        cluster_file_problems(
            lock, ClusterOptions(KUBERNETES_VERSION, network_plugin="canal", dns_provider="coredns")
        )
        == []
    )
    problems = cluster_file_problems(
        lock,
        ClusterOptions("v1.25.14-rancher1-1", network_plugin="flannel", dns_provider="kube-dns", nodelocal=True,
                       system_images=True),
    )  # fmt: skip
    assert len(problems) == 5
    assert "kubernetes_version v1.25.14-rancher1-1" in problems[0]
    assert "network plugin flannel, the bundle carries canal's images" in problems[1]
    assert (
        "dns.provider kube-dns" in problems[2]
        and "NodeLocal" in problems[3]
        and "system_images" in problems[4]
    )
    site = "nodes: []\n"
    assert "plugin: canal" in with_network_plugin(site, "canal")
    assert with_network_plugin("network:\n  plugin: calico\n", "canal") == "network:\n  plugin: calico\n"


def test_cluster_yml_settings_are_read(tmp_path: Path) -> None:
    from bundler.installer.inventory import load_cluster_options

    path = tmp_path / "cluster.yml"
    path.write_text(
        "nodes: []\nnetwork: {plugin: calico}\ndns: {provider: kube-dns, nodelocal: {ip_address: 169.254.20.10}}\n"
        "system_images: {etcd: rancher/etcd:x}\n"
    )
    options = load_cluster_options(path)
    assert (options.network_plugin, options.dns_provider, options.nodelocal, options.system_images) == (
        "calico", "kube-dns", True, True,
    )  # fmt: skip
