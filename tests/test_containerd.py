"""containerd as the image target of a kubeadm bundle, on real loopback nodes: each node's own
containerd (its own root, state and socket), reached over that node's sshd.

The build asks the pinned kubeadm (tests/standins/kubeadm) for its images and pulls them, through
``--mirror``, from a loopback registry; the installer streams each node's images over SSH into
``ctr -n k8s.io images import`` and reads them back. The cluster phase writes each node's
containerd ``config.toml`` (parsed and run by that node's real containerd, restarted through a
``systemctl`` stand-in) and brings the cluster up with kubeadm's stand-in reading ``--config``
files, which starts the kubelet's stand-in (tests/standins/kubelet) at kubelet-start.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from bundler import archive, kinds

from .conftest import Keys, Project, run_cli
from .kubeadm_standin import IMAGES, KUBERNETES_VERSION, ROLES, standin_bytes
from .rke_images import Pushed, Pusher
from .rke_standin import APP_IMAGE
from .test_installer import _install, _site

# Addresses no other test uses.
NODES = (("127.0.0.51", "kc-cp"), ("127.0.0.52", "kc-w1"), ("127.0.0.53", "kc-w2"))
MORE_NODES = (("127.0.0.55", "kc-cp2"), ("127.0.0.56", "kc-cp3"))
VIP = "127.0.0.60"  # the control-plane endpoint's address

MANIFEST = """
apiVersion: airbundle/v1
kind: Bundle
name: kube
version: "1.0.0"
platform: {{os: ubuntu, codename: jammy, arch: amd64}}
binaries:
  - name: kubeadm
    url: {url}
    sha256: {sha}
    dest: /tmp/ab-kc-bin/kubeadm
images:
  - ref: {app}
cluster:
  kind: kubeadm
  kubernetes_version: {version}
  tool: kubeadm
"""


@pytest.fixture(scope="module")
def kubeadm_state(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The kubeadm stand-in's shared cluster state (what the API server would hold) and its log."""
    return tmp_path_factory.mktemp("kubeadm-state")


@pytest.fixture(scope="module")
def ctr_cluster(
    tmp_path_factory: pytest.TempPathFactory, kubeadm_state: Path
) -> Iterator[tuple[object, list[object]]]:
    """Loopback nodes with sshd and their own containerd (no Docker): kc-cp, kc-w1, kc-w2 (the first
    three, which most tests use), then kc-cp2 and kc-cp3 for the HA bring-up."""
    from .nodes import Client, Node

    client = Client(tmp_path_factory.mktemp("ssh-client"))
    nodes: list[Node] = []
    env = f"KUBEADM_STANDIN_STATE={kubeadm_state}"
    try:
        for address, name in (*NODES, *MORE_NODES):
            nodes.append(Node(address, name, client, docker=False, containerd=True, env=env))
        yield client, nodes
    finally:
        for node in nodes:
            node.stop()


@pytest.fixture(scope="module")
def kube_registry() -> Iterator[tuple[object, dict[str, Pushed]]]:
    """A loopback registry serving kubeadm's images (registry.k8s.io's paths) and the app image."""
    from .registries import Registry

    reg = Registry("open")
    try:
        pusher = Pusher(reg.host)
        pushed = {}
        for ref in [*IMAGES, APP_IMAGE]:
            path = ref.split("/", 1)[1]  # without the registry: Pusher strips docker.io/
            pushed[ref] = pusher.push("docker.io/" + path)
        yield reg, pushed
    finally:
        reg.stop()


def _manifest(project: Project) -> Path:
    data = standin_bytes()
    sha = hashlib.sha256(data).hexdigest()
    url = project.origin.add(f"/kubeadm-{sha[:12]}", data)
    text = MANIFEST.format(url=url, sha=sha, app=APP_IMAGE, version=KUBERNETES_VERSION)
    return project.write_manifest(text, "kube.yaml")


def _build(project: Project, keys: Keys, tmp_path: Path, cache: Path, host: str) -> Path:
    built = run_cli("build", _manifest(project), "-o", tmp_path / "out", "--key", keys.key_path,
                    "--cache", cache, "--mirror", f"registry.k8s.io={host}",
                    "--mirror", f"docker.io={host}")  # fmt: skip
    assert built.exit_code == 0, built.stderr
    return Path(built.stdout.strip().splitlines()[-1])


def test_kubeadm_rule_gives_the_roles_kubeadm_runs_them_on() -> None:
    kept, dropped = kinds.KINDS["kubeadm"].select(IMAGES, "none")
    assert dropped == []
    assert {c.ref: c.roles for c in kept} == ROLES
    assert all(c.known for c in kept)
    assert kinds.pause_image(IMAGES) == "registry.k8s.io/pause:3.9"
    assert kinds.KINDS["kubeadm"].images_argv("v1.28.15") == [
        "config", "images", "list", "--kubernetes-version", "v1.28.15",
    ]  # fmt: skip
    assert kinds.KINDS["rke"].runtime == "docker" and kinds.KINDS["kubeadm"].runtime == "containerd"


def test_the_build_asks_the_pinned_kubeadm_for_its_images(
    project: Project, keys: Keys, tmp_path: Path, cache_dir: Path, kube_registry
) -> None:
    reg, pushed = kube_registry
    bundle = _build(project, keys, tmp_path, cache_dir, reg.host)
    with archive.Bundle(bundle, None) as opened:
        lock = opened.unverified()[0]
    assert lock.cluster["kind"] == "kubeadm" and lock.cluster["network_plugin"] == "none"
    assert {s.ref: s.roles for s in lock.system_images} == ROLES
    for ref in IMAGES:
        image = lock.find_image(ref)
        assert image is not None and image.manifest == pushed[ref].manifest, ref


def test_a_kubernetes_version_kubeadm_refuses_stops_the_build(
    project: Project, keys: Keys, tmp_path: Path, cache_dir: Path
) -> None:
    manifest = _manifest(project)
    manifest.write_text(manifest.read_text().replace(KUBERNETES_VERSION, "v1.26.1"))
    built = run_cli("build", manifest, "-o", tmp_path / "out", "--key", keys.key_path, "--cache", cache_dir)
    assert built.exit_code == 2, built.stderr
    assert "kubeadm config images list --kubernetes-version v1.26.1" in built.stderr
    assert "kube.yaml:" in built.stderr and "Traceback" not in built.stderr


@pytest.fixture
def ctr_site(project, keys: Keys, tmp_path: Path, cache_dir: Path, ctr_cluster, kube_registry):
    from .nodes import cluster_yml

    reg, pushed = kube_registry
    client, every = ctr_cluster
    nodes = every[:3]
    for node in every:
        node.containerd.clear()
        node.containerd.reset_config()
        (node.root / "systemctl.log").unlink(missing_ok=True)
    site = _site(_build(project, keys, tmp_path, cache_dir, reg.host), tmp_path)
    (site / "cluster.yml").write_text(cluster_yml(nodes, workers={"kc-w1", "kc-w2"}))
    return site, client, nodes, pushed


def _over_ssh(client, node, command: str) -> str:
    return subprocess.run(
        ["ssh", "-F", str(client.config), "-p", "2222", f"root@{node.address}", command],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip


def test_images_land_in_containerds_k8s_io_namespace_by_role(ctr_site, keys: Keys) -> None:
    site, client, nodes, pushed = ctr_site
    first = _install(site, keys, "--yes", "--only", "images", "--ssh-config", str(client.config))
    assert first.returncode == 0, first.stdout + first.stderr
    want = {
        "kc-cp": {r for r, roles in ROLES.items() if "controlplane" in roles},
        "kc-w1": {r for r, roles in ROLES.items() if "worker" in roles} | {APP_IMAGE},
        "kc-w2": {r for r, roles in ROLES.items() if "worker" in roles} | {APP_IMAGE},
    }
    assert "registry.k8s.io/etcd:3.5.15-0" in want["kc-cp"] and APP_IMAGE not in want["kc-cp"]
    for node in nodes:
        held = node.containerd.images()
        assert held == {r: pushed[r].manifest for r in want[node.name]}, node.name  # locked digests
        listed = _over_ssh(client, node, "ctr -n k8s.io images ls")  # what an operator sees there
        for ref in want[node.name]:
            assert ref in listed and pushed[ref].manifest in listed
        assert f"{node.name:<20} ok: {len(want[node.name])} imported, 0 already present, " in first.stdout
    assert "bytes sent" in first.stdout or "sent" in first.stdout
    again = _install(site, keys, "--yes", "--only", "images", "--ssh-config", str(client.config))
    assert again.returncode == 0, again.stdout + again.stderr
    for node in nodes:
        assert f"{node.name:<20} ok: 0 imported, {len(want[node.name])} already present\n" in again.stdout


def test_a_name_at_another_digest_is_put_back_and_checked(ctr_site, keys: Keys) -> None:
    """A node whose name points elsewhere (someone re-tagged it) gets the locked image back."""
    site, client, nodes, pushed = ctr_site
    first = _install(site, keys, "--yes", "--only", "images", "--ssh-config", str(client.config))
    assert first.returncode == 0, first.stdout + first.stderr
    worker = nodes[1].containerd
    pause, proxy = "registry.k8s.io/pause:3.9", IMAGES[3]
    subprocess.run(worker.ctr("images", "tag", "--force", proxy, pause), check=True, capture_output=True)
    assert worker.images()[pause] == pushed[proxy].manifest
    again = _install(site, keys, "--yes", "--only", "images", "--ssh-config", str(client.config))
    assert again.returncode == 0, again.stdout + again.stderr
    assert worker.images()[pause] == pushed[pause].manifest


def test_dry_run_says_where_the_images_go(ctr_site, keys: Keys) -> None:
    site, client, _, _ = ctr_site
    run = _install(site, keys, "--yes", "--dry-run", "--offline", "--ssh-config", str(client.config))
    assert run.returncode == 0, run.stdout + run.stderr
    assert "over SSH into ctr -n k8s.io images import" in run.stdout
    assert f"7 system images for kubeadm {KUBERNETES_VERSION}" in run.stdout


def test_the_oci_tar_names_each_image_for_containerd(tmp_path: Path) -> None:
    """The stream ctr imports: an OCI layout whose index names each manifest by its full name."""
    from bundler import oci
    from bundler.installer import ctrimport

    blobs = tmp_path / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    digests = {}
    for name, data in (("manifest", b"{}"), ("config", b'{"c":1}'), ("layer", b"layer")):
        digest = oci.sha256_digest(data)
        (blobs / digest.split(":")[1]).write_bytes(data)
        digests[name] = digest
    image = oci.Image("docker.io/library/busybox:1", ("busybox:1",), "registry", digests["manifest"],
                      oci.OCI_MANIFEST, digests["config"], "linux/amd64",
                      (oci.Layer(digests["layer"], 5, oci.OCI_LAYER),))  # fmt: skip
    out = tmp_path / "x.tar"
    with open(out, "wb") as f:
        sent = ctrimport.oci_tar([image], tmp_path, f)
    assert sent == out.stat().st_size
    import tarfile

    with tarfile.open(out) as tar:
        names = tar.getnames()
        index = json.loads(tar.extractfile("index.json").read())  # type: ignore[union-attr]
    assert names[:2] == ["oci-layout", "index.json"] and len(names) == 5
    assert index["manifests"][0]["annotations"] == {"io.containerd.image.name": "docker.io/library/busybox:1"}
    assert index["manifests"][0]["digest"] == digests["manifest"]


# ---------------------------------------------------------------- registry mode: hosts.toml with the CA

REGISTRY_IP = "127.0.0.54"  # the site registry's own address (no other test uses it)


@pytest.fixture
def tls_registry(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A site registry over TLS with a certificate from a site CA: (HOST:PORT, the CA file)."""
    import shutil
    import time

    import requests

    from .registries import free_port, site_certificate

    folder = tmp_path / "site-registry"
    folder.mkdir()
    ca, cert, key = site_certificate(folder, REGISTRY_IP)
    address = f"{REGISTRY_IP}:{free_port(REGISTRY_IP)}"
    (folder / "config.yml").write_text(
        f"version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {folder / 'data'}\n"
        f"http:\n  addr: {address}\n  tls:\n    certificate: {cert}\n    key: {key}\n"
    )
    log = open(folder / "registry.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([shutil.which("docker-registry") or "docker-registry", "serve",
                             str(folder / "config.yml")], stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                requests.get(f"https://{address}/v2/", timeout=1, verify=str(ca))
                break
            except requests.ConnectionError:
                assert proc.poll() is None and time.monotonic() < deadline, (
                    folder / "registry.log"
                ).read_text()
                time.sleep(0.1)
        yield address, ca
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()


def test_registry_mode_pulls_through_hosts_toml_with_the_site_ca(ctr_site, keys: Keys, tls_registry) -> None:
    site, client, nodes, pushed = ctr_site
    address, ca = tls_registry
    args = ("--yes", "--ssh-config", str(client.config), "--only", "images", "--registry", address)
    without = _install(site, keys, *args, env={"SSL_CERT_FILE": str(ca)})
    assert without.returncode == 6, without.stdout + without.stderr
    assert "give --registry-ca FILE" in without.stderr and "Traceback" not in without.stderr
    run = _install(site, keys, *args, "--registry-ca", str(ca))
    assert run.returncode == 0, run.stdout + run.stderr
    assert f"CA for {address} written to /etc/containerd/certs.d on kc-cp, kc-w1, kc-w2" in run.stdout
    for node in nodes:
        hosts = (node.ctr_certs / address / "hosts.toml").read_text()
        assert f'server = "https://{address}"' in hosts
        assert f'ca = "/etc/containerd/certs.d/{address}/ca.crt"' in hosts
        assert (node.ctr_certs / address / "ca.crt").read_bytes() == ca.read_bytes()
        held = node.containerd.images()
        want = {r for r, roles in ROLES.items() if set(roles) & set(("worker",) if "w" in node.name[3:] else
                                                                     ("controlplane",))}  # fmt: skip
        if node.name != "kc-cp":
            want.add(APP_IMAGE)
        for ref in want:
            assert held.get(ref) == pushed[ref].manifest, (node.name, ref)
    assert "(mirrors for docker.io, registry.k8s.io)" in run.stdout
    for node in nodes:  # the kubelet's pulls by upstream name go to the site registry, with its CA
        mirror = (node.ctr_certs / "registry.k8s.io" / "hosts.toml").read_text()
        assert f'[host."https://{address}"]' in mirror and f"{address}/ca.crt" in mirror
        assert (
            'server = "https://registry-1.docker.io"'
            in (node.ctr_certs / "docker.io" / "hosts.toml").read_text()
        )
    worker = nodes[1]
    subprocess.run(
        worker.containerd.ctr("images", "rm", "registry.k8s.io/pause:3.9"), check=True, capture_output=True
    )
    # real containerd resolves registry.k8s.io through the mirror (the CRI reads the same folder)
    _over_ssh(
        client,
        worker,
        "ctr -n k8s.io images pull --hosts-dir /etc/containerd/certs.d registry.k8s.io/pause:3.9",
    )
    assert (
        worker.containerd.images()["registry.k8s.io/pause:3.9"]
        == pushed["registry.k8s.io/pause:3.9"].manifest
    )
    again = _install(site, keys, *args, "--registry-ca", str(ca))
    assert again.returncode == 0, again.stdout + again.stderr
    assert "CA for" not in again.stdout
    assert "kc-w1                ok: 0 pulled, 4 already present" in again.stdout


def test_two_control_planes_without_a_vip_stop_the_install_before_anything_runs(ctr_site, keys: Keys) -> None:
    site, client, nodes, _ = ctr_site
    inventory = site / "cluster.yml"
    inventory.write_text(inventory.read_text().replace("role: [worker]", "role: [controlplane, etcd]", 1))
    run = _install(site, keys, "--yes", "--ssh-config", str(client.config))
    assert run.returncode == 2, run.stdout + run.stderr
    assert (
        "cluster.yml:4: 2 control-plane nodes (kc-cp, kc-w1) need one endpoint" in run.stderr
    )  # kc-w1's line
    assert "Traceback" not in run.stderr and not (site / "work" / "logs").exists()
    for node in nodes:
        assert node.containerd.images() == {}


# ---------------------------------------------------------------- kubeadm's HA bring-up


class _Listener:
    """Something answering on the control-plane endpoint (in place of haproxy behind keepalived's VIP)."""

    def __init__(self, address: str, port: int) -> None:
        import socket
        import threading

        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((address, port))
        self.sock.listen(16)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            conn.close()

    def close(self) -> None:
        import socket

        self.sock.shutdown(socket.SHUT_RDWR)  # wakes the accept(): a close alone leaves it listening
        self.sock.close()
        self.thread.join(5)


@pytest.fixture
def ha_site(ctr_site, ctr_cluster, kubeadm_state: Path, keys: Keys):
    """The kubeadm bundle's site with an HA inventory: kc-cp, kc-cp2, kc-cp3 behind vip: VIP:6443,
    kc-w1 and kc-w2 workers; the images and the pinned kubeadm already on the nodes."""
    import shutil

    from .nodes import SSH_PORT

    site, client, _, _ = ctr_site
    _, every = ctr_cluster
    for item in kubeadm_state.iterdir():
        item.unlink()
    for node in every:  # empty, not replaced: the node's /etc/kubernetes is a bind mount of it
        (node.root / "kubelet.log").unlink(missing_ok=True)  # its kubelet's journal
        for item in (node.root / "kubernetes").iterdir():
            shutil.rmtree(item) if item.is_dir() else item.unlink()
    roles = {"kc-cp": "[controlplane, etcd]", "kc-cp2": "[controlplane, etcd]", "kc-cp3": "[controlplane, etcd]",
             "kc-w1": "[worker]", "kc-w2": "[worker]"}  # fmt: skip
    lines = [f"vip: {VIP}:6443", "nodes:"] + [
        f"  - {{address: {n.address}, port: {SSH_PORT}, user: root, role: {roles[n.name]}, hostname_override: {n.name}}}"
        for n in every
    ]
    (site / "cluster.yml").write_text("\n".join(lines) + "\n")
    for phase in ("binaries", "images"):
        run = _install(site, keys, "--yes", "--only", phase, "--ssh-config", str(client.config))
        assert run.returncode == 0, run.stdout + run.stderr
    return site, client, every, kubeadm_state


def test_kubeadm_ha_bring_up_in_order_behind_the_vip(ha_site, keys: Keys) -> None:
    site, client, every, state = ha_site
    listener = _Listener(VIP, 6443)
    try:
        run = _install(site, keys, "--yes", "--only", "cluster", "--ssh-config", str(client.config))
    finally:
        listener.close()
    assert run.returncode == 0, run.stdout + run.stderr
    log = (state / "log").read_text().splitlines()
    assert log[0] == f"init kc-cp endpoint={VIP}:6443"
    assert log[1:3] == [
        f"join-control-plane kc-cp2 endpoint={VIP}:6443",
        f"join-control-plane kc-cp3 endpoint={VIP}:6443",
    ]
    assert sorted(log[3:5]) == [
        f"join-worker kc-w1 endpoint={VIP}:6443",
        f"join-worker kc-w2 endpoint={VIP}:6443",
    ]
    cluster = json.loads((state / "cluster.json").read_text())
    token, key = cluster["deleted"], cluster["key"]
    assert (
        log[5:] == [f"token-delete {token.split('.')[0]}"] and cluster["token"] is None
    )  # deleted at the end
    # what ps showed on the nodes: kubeadm's argv never holds the token or the key (they came in --config)
    argvs = [json.loads(line) for line in (state / "argv").read_text().splitlines()]
    assert [a[0] for a in argvs] == ["init", "join", "join", "join", "join", "token"]
    assert argvs[0][:2] == ["init", "--upload-certs"] and argvs[0][2] == "--config"
    assert all(token not in " ".join(a) and key not in " ".join(a) for a in argvs), argvs
    assert argvs[-1] == ["token", "delete", token.split(".")[0]]  # its ID only: not the secret half
    configs = [json.loads(line) for line in (state / "configs").read_text().splitlines()]
    assert len(configs) == 5 and {c["mode"] for c in configs} == {"0600"}
    assert all(
        c["path"].startswith("/run/airbundle-kubeadm.") and not Path(c["path"]).exists() for c in configs
    )
    admin = site / "work" / "admin.conf"
    assert f"https://{VIP}:6443" in admin.read_text() and (admin.stat().st_mode & 0o777) == 0o600
    for node in every:  # containerd configured for the kubelet on every node, before kubeadm ran
        dump = node.containerd.dump()
        assert 'sandbox_image = "registry.k8s.io/pause:3.9"' in dump and "SystemdCgroup = true" in dump
        assert (node.root / "systemctl.log").read_text() == "systemctl restart containerd\n"
    assert (
        "/etc/containerd/config.toml (sandbox registry.k8s.io/pause:3.9) written, containerd restarted"
        in run.stdout
    )
    for text in (
        run.stdout,
        run.stderr,
        *[p.read_text() for p in (site / "work" / "logs").glob("kubeadm-*.log")],
    ):
        assert token not in text and key not in text  # never echoed nor logged
    again = _install(site, keys, "--yes", "--only", "cluster", "--ssh-config", str(client.config))
    assert again.returncode == 0 and "done before, skipped" in again.stdout
    assert len((state / "log").read_text().splitlines()) == 6


def test_a_vip_nobody_answers_on_fails_like_kubeadm(ha_site, keys: Keys) -> None:
    site, client, _, state = ha_site
    run = _install(site, keys, "--yes", "--only", "cluster", "--ssh-config", str(client.config))
    assert run.returncode == 6, run.stdout + run.stderr
    assert "kubeadm init failed on kc-cp" in run.stdout + run.stderr
    assert f"dial tcp {VIP}:6443: connect: connection refused" in run.stdout + run.stderr
    assert "Traceback" not in run.stderr and not (state / "log").exists()


def test_kubeadm_init_refuses_a_node_without_its_images(ha_site, keys: Keys) -> None:
    site, client, every, state = ha_site
    subprocess.run(every[0].containerd.ctr("images", "rm", "registry.k8s.io/etcd:3.5.15-0"), check=True,
                   capture_output=True)  # fmt: skip
    listener = _Listener(VIP, 6443)
    try:
        run = _install(site, keys, "--yes", "--only", "cluster", "--ssh-config", str(client.config))
    finally:
        listener.close()
    assert run.returncode == 6, run.stdout + run.stderr
    out = run.stdout + run.stderr
    assert "[ERROR ImagePull]: failed to pull image registry.k8s.io/etcd:3.5.15-0" in out, out
    assert "kubeadm init failed on kc-cp" in out and not (state / "log").exists()


# ---------------------------------------------------------------- containerd's config.toml for the kubelet


def _inventory_node(node) -> object:
    from bundler.installer.inventory import Node as InventoryNode

    from .nodes import SSH_PORT

    return InventoryNode(node.address, "root", ("worker",), port=SSH_PORT, hostname_override=node.name)


def test_config_toml_is_what_real_containerd_reads_and_lands_once(ctr_site) -> None:
    """The file the installer writes on a node, parsed by that node's real containerd: CRI on, the
    bundle's pause as sandbox image, SystemdCgroup, config_path; containerd.io's file kept once;
    containerd restarted (the systemctl stand-in) only when the file changed."""
    from bundler.installer import containerdconf, remote

    _, client, nodes, _ = ctr_site
    node, target = nodes[1], _inventory_node(nodes[1])
    opts = remote.SshOptions(config=client.config)
    text = containerdconf.render("registry.k8s.io/pause:3.9")
    before = node.containerd.pid()
    assert containerdconf.ensure_on(target, opts, text) is True
    assert (node.ctr_etc / "config.toml").read_text() == text
    assert (node.ctr_etc / "config.toml.airbundle-orig").read_text() == 'disabled_plugins = ["cri"]\n'
    dump = node.containerd.dump()
    assert 'sandbox_image = "registry.k8s.io/pause:3.9"' in dump
    assert "SystemdCgroup = true" in dump
    assert 'config_path = "/etc/containerd/certs.d"' in dump and "disabled_plugins = []" in dump
    restarted = node.containerd.pid()
    assert restarted != before  # the node's containerd runs with the new file: its CRI is on now
    plugins = subprocess.run(node.containerd.ctr("plugins", "ls"), capture_output=True, text=True).stdout
    assert any(line.split()[1:2] == ["cri"] and line.split()[-1] == "ok" for line in plugins.splitlines()[1:])
    assert (node.root / "systemctl.log").read_text() == "systemctl restart containerd\n"
    # again: nothing changes, nothing restarts (systemctl is asked only whether containerd runs)
    assert containerdconf.ensure_on(target, opts, text) is False
    assert node.containerd.pid() == restarted
    assert "restart" not in (node.root / "systemctl.log").read_text().splitlines()[-1]
    # another file later: containerd.io's original stays the one kept
    assert containerdconf.ensure_on(target, opts, containerdconf.render("registry.k8s.io/pause:3.10")) is True
    assert (node.ctr_etc / "config.toml.airbundle-orig").read_text() == 'disabled_plugins = ["cri"]\n'


def test_a_config_containerd_refuses_never_lands(ctr_site) -> None:
    from bundler.errors import InstallError
    from bundler.installer import containerdconf, remote

    _, client, nodes, _ = ctr_site
    node = nodes[2]
    before, pid = (node.ctr_etc / "config.toml").read_text(), node.containerd.pid()
    with pytest.raises(InstallError) as caught:
        containerdconf.ensure_on(_inventory_node(node), remote.SshOptions(config=client.config),
                                 "version = 2\n[plugins\n")  # fmt: skip
    message = str(caught.value)
    assert (
        message.startswith("kc-w2: containerd refuses the /etc/containerd/config.toml") and "TOML" in message
    )
    assert (node.ctr_etc / "config.toml").read_text() == before and node.containerd.pid() == pid
    assert sorted(p.name for p in node.ctr_etc.iterdir()) == ["certs.d", "config.toml"]  # no temp file left
    assert not (node.root / "systemctl.log").exists()


# ---------------------------------------------------------------- the kubelet (its stand-in) at kubelet-start


def test_a_worker_without_the_pause_image_fails_with_the_kubelets_words(ha_site, keys: Keys) -> None:
    """kubeadm join on a worker pulls nothing in its preflight; the kubelet it starts cannot make a pod
    sandbox offline: the installer names the node and quotes the kubelet's journal."""
    site, client, every, state = ha_site
    worker = every[1]
    assert worker.name == "kc-w1"
    subprocess.run(
        worker.containerd.ctr("images", "rm", "registry.k8s.io/pause:3.9"), check=True, capture_output=True
    )
    listener = _Listener(VIP, 6443)
    try:
        run = _install(site, keys, "--yes", "--only", "cluster", "--ssh-config", str(client.config))
    finally:
        listener.close()
    out = run.stdout + run.stderr
    assert run.returncode == 6, out
    assert "kubeadm join failed on kc-w1" in out and "error execution phase kubelet-start" in out
    assert "the kubelet there says:" in out
    assert (
        '"Failed to create sandbox for pod" err="rpc error: code = Unknown desc = failed to get sandbox image'
        in out
    )
    assert '\\"registry.k8s.io/pause:3.9\\": failed to pull image' in out and "Traceback" not in run.stderr
    log = (state / "log").read_text()
    assert "join-worker kc-w1" not in log and "join-worker kc-w2" in log  # the other worker joined


def _runner(client, tmp_path: Path):
    from bundler.installer import kubeadmup, remote

    return kubeadmup._Runner(remote.SshOptions(config=client.config), tmp_path / "logs", lambda _: None, [])


def test_a_node_whose_containerd_disables_cri_fails_kubeadms_preflight(ha_site, tmp_path: Path) -> None:
    """containerd.io's own config.toml (disabled_plugins = ["cri"]), as before the installer writes its own."""
    from bundler.errors import InstallError

    _, client, every, _ = ha_site
    node = every[0]
    assert 'disabled_plugins = ["cri"]' in (node.ctr_etc / "config.toml").read_text()
    with pytest.raises(InstallError) as caught:
        _runner(client, tmp_path).run(
            _inventory_node(node), "/tmp/ab-kc-bin/kubeadm init --node-name kc-cp", "kubeadm init"
        )
    message = str(caught.value)
    assert message.startswith("cluster: kubeadm init failed on kc-cp (exit 1): ")
    assert "[ERROR CRI]: container runtime is not running: output: " in message
    assert (
        f'validate service connection: CRI v1 runtime API is not implemented for endpoint \\"unix://{node.containerd.sock}\\": '
        "rpc error: code = Unimplemented desc = unknown service runtime.v1.RuntimeService" in message
    )


def test_a_node_whose_containerd_names_another_sandbox_image_fails_with_the_kubelets_words(
    ha_site, tmp_path: Path
) -> None:
    """containerd's own default sandbox image (pause:3.6) is not in the bundle: kubeadm warns, and the
    kubelet it starts cannot make the static pods' sandboxes offline."""
    from bundler.errors import InstallError
    from bundler.installer import containerdconf, remote

    _, client, every, _ = ha_site
    target = _inventory_node(every[0])
    containerdconf.ensure_on(
        target, remote.SshOptions(config=client.config), containerdconf.render("registry.k8s.io/pause:3.6")
    )
    with pytest.raises(InstallError) as caught:
        _runner(client, tmp_path).run(target, "/tmp/ab-kc-bin/kubeadm init --node-name kc-cp", "kubeadm init")
    message = str(caught.value)
    assert "kubeadm init failed on kc-cp" in message
    assert "error execution phase wait-control-plane: couldn't initialize a Kubernetes cluster" in message
    assert (
        'the kubelet there says: "RunPodSandbox from runtime service failed" err="rpc error: code = Unknown desc = '
        'failed to get sandbox image \\"registry.k8s.io/pause:3.6\\": failed to pull image' in message
    )
    logged = (tmp_path / "logs" / "kubeadm-kc-cp.log").read_text()
    assert (
        'detected that the sandbox image "registry.k8s.io/pause:3.6" of the container runtime is inconsistent with '
        'that used by kubeadm. It is recommended that using "registry.k8s.io/pause:3.9" as the CRI sandbox image.'
    ) in logged


def test_a_node_whose_runc_uses_another_cgroup_driver_than_the_kubelet_fails(ha_site, tmp_path: Path) -> None:
    from bundler.errors import InstallError
    from bundler.installer import containerdconf, remote

    _, client, every, _ = ha_site
    target = _inventory_node(every[0])
    cgroupfs = containerdconf.render("registry.k8s.io/pause:3.9").replace(
        "SystemdCgroup = true", "SystemdCgroup = false"
    )
    containerdconf.ensure_on(target, remote.SshOptions(config=client.config), cgroupfs)
    with pytest.raises(InstallError) as caught:
        _runner(client, tmp_path).run(target, "/tmp/ab-kc-bin/kubeadm init --node-name kc-cp", "kubeadm init")
    message = str(caught.value)
    assert "kubeadm init failed on kc-cp" in message and "wait-control-plane" in message
    assert (
        'cgroup driver mismatch" kubelet="systemd" containerdRunc="cgroupfs (SystemdCgroup = false' in message
    )


def test_the_kubelets_error_lines_are_read_from_its_journal() -> None:
    from bundler.installer.kubeadmup import kubelet_errors

    journal = (
        'Dec 02 07:19:10 cp1 kubelet[812]: I1202 07:19:10.592314     812 server.go:467] "Kubelet version"\n'
        'Dec 02 07:19:11 cp1 kubelet[812]: E1202 07:19:11.618143     812 remote_runtime.go:193] "RunPodSandbox" err="a"\n'
        'Dec 02 07:19:12 cp1 kubelet[812]: E1202 07:19:12.618143     812 remote_runtime.go:193] "RunPodSandbox" err="a"\n'
        "-- No entries --\n"
    )
    assert kubelet_errors(journal) == ['"RunPodSandbox" err="a"']
    assert kubelet_errors("-- No entries --\n") == []


@pytest.mark.parametrize(
    ("args", "refused"),
    [
        ("init --config {f} --token abcdef.0123456789abcdef --certificate-key 00", "[certificate-key token]"),
        ("join --config {f} --control-plane", "[control-plane]"),
        ("join --config {f} --discovery-token-ca-cert-hash sha256:00", "[discovery-token-ca-cert-hash]"),
    ],
)
def test_the_kubeadm_stand_in_refuses_flags_mixed_with_config_like_kubeadm(
    ha_site, args: str, refused: str
) -> None:
    """kubeadm lets only a few flags go with --config (--node-name, --upload-certs, --skip-*, ...)."""
    _, client, every, _ = ha_site
    node = every[0]
    (node.root / "kubeadm.yaml").write_text("apiVersion: kubeadm.k8s.io/v1beta3\nkind: InitConfiguration\n")
    command = "/tmp/ab-kc-bin/kubeadm " + args.format(f=node.root / "kubeadm.yaml")
    done = subprocess.run(
        ["ssh", "-F", str(client.config), "-p", "2222", f"root@{node.address}", command],
        capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode == 1
    assert done.stderr.startswith(f"can not mix '--config' with arguments {refused}\n"), done.stderr


def test_a_node_with_swap_on_fails_with_the_kubelets_words(ha_site, tmp_path: Path) -> None:
    """Swap on (a /proc/swaps of one swap area, bound over the real one in that node's mount namespace
    only): the kubelet refuses to start, and its reason is quoted with the node's name."""
    from bundler.errors import InstallError
    from bundler.installer import containerdconf, remote

    _, client, every, _ = ha_site
    node, target = every[0], _inventory_node(every[0])
    containerdconf.ensure_on(
        target, remote.SshOptions(config=client.config), containerdconf.render("registry.k8s.io/pause:3.9")
    )
    swaps = tmp_path / "swaps"
    swaps.write_text("Filename\tType\tSize\tUsed\tPriority\n/swap.img\tfile\t2097148\t0\t-2\n")
    enter = ["nsenter", "-t", str(node.containerd.proc.pid), "-m"]
    subprocess.run([*enter, "mount", "--bind", str(swaps), "/proc/swaps"], check=True)
    try:
        with pytest.raises(InstallError) as caught:
            _runner(client, tmp_path).run(
                target, "/tmp/ab-kc-bin/kubeadm init --node-name kc-cp", "kubeadm init"
            )
    finally:
        subprocess.run([*enter, "umount", "/proc/swaps"], check=True)
    message = str(caught.value)
    assert "kubeadm init failed on kc-cp" in message
    assert (
        'the kubelet there says: "command failed" err="failed to run Kubelet: running with swap on is not supported, '
        "please disable swap! or set --fail-swap-on flag to false. /proc/swaps contained: [" in message
    )


# ---------------------------------------------------------------- kubeadm's bring-up, resumed


def _cluster(site: Path, keys: Keys, client) -> subprocess.CompletedProcess[str]:
    return _install(site, keys, "--yes", "--only", "cluster", "--ssh-config", str(client.config))


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def _argvs(state: Path) -> list[list[str]]:
    return [json.loads(line) for line in _lines(state / "argv")]


def _no_secret_anywhere(site: Path, state: Path, runs, secrets: list[str]) -> None:
    """None of ``secrets`` in what ps showed on the nodes (every kubeadm argv), in the installer's
    output, in its logs or its journal."""
    texts = [" ".join(a) for a in _argvs(state)]
    texts += [r.stdout + r.stderr for r in runs]
    texts += [p.read_text() for p in (site / "work" / "logs").rglob("*.log")]
    texts += [p.read_text() for p in (site / "work").glob("*.json")]
    for secret in secrets:
        assert secret and all(secret not in text for text in texts), secret


def test_a_rerun_after_a_failed_worker_join_joins_it_without_a_second_init(ha_site, keys: Keys) -> None:
    """kc-w1's join fails (no pause image: its kubelet cannot start a pod); the rest joined. The next run
    asks every node what kubeadm set up there, runs no init, registers a fresh token (in --config, not
    argv), reads the CA's hash from kubeadm token create's answer, joins kc-w1 alone, deletes the token.
    A run after that (the journal's record of the bring-up gone) finds every node set up and runs no
    kubeadm at all."""
    site, client, every, state = ha_site
    worker = every[1]
    assert worker.name == "kc-w1"
    pause = "registry.k8s.io/pause:3.9"
    subprocess.run(worker.containerd.ctr("images", "rm", pause), check=True, capture_output=True)
    listener = _Listener(VIP, 6443)
    try:
        failed = _cluster(site, keys, client)
        assert failed.returncode == 6, failed.stdout + failed.stderr
        assert "kubeadm join failed on kc-w1" in failed.stdout + failed.stderr
        first_log = _lines(state / "log")
        first_cluster = json.loads((state / "cluster.json").read_text())
        token1, key1 = first_cluster["deleted"], first_cluster["key"]
        # the failed run's token did its work: deleted too (the next run makes its own)
        assert (
            first_log[0] == f"init kc-cp endpoint={VIP}:6443"
            and first_log[-1] == f"token-delete {token1[:6]}"
        )
        assert "join-worker kc-w2" in " ".join(first_log) and "join-worker kc-w1" not in " ".join(first_log)
        assert first_cluster["tokens"] == []
        argv_before = len(_argvs(state))
        images = _install(site, keys, "--yes", "--only", "images", "--ssh-config", str(client.config))
        assert images.returncode == 0 and pause in worker.containerd.images(), images.stdout + images.stderr
        resumed = _cluster(site, keys, client)
        assert resumed.returncode == 0, resumed.stdout + resumed.stderr
        cluster = json.loads((state / "cluster.json").read_text())
        token2 = cluster["deleted"]
        assert token2 != token1 and cluster["tokens"] == []
        assert (
            _lines(state / "log")[len(first_log) :]
            == [
                "reset kc-w1",  # its join stopped at kubelet-start, after writing the cluster's CA there
                f"token-create {token2[:6]}",  # no init, no upload-certs (no control plane left to join)
                f"join-worker kc-w1 endpoint={VIP}:6443",
                f"token-delete {token2[:6]}",
            ]
        )
        argvs = _argvs(state)[argv_before:]
        assert argvs[0] == ["reset", "-f"]
        assert argvs[1][:4] == ["token", "create", "--print-join-command", "--config"] and len(argvs[1]) == 5
        assert argvs[2][:2] == ["join", "--config"] and argvs[3:] == [["token", "delete", token2[:6]]]
        out = resumed.stdout
        assert "kubeadm set up before (skipped): kc-cp, kc-cp2, kc-cp3, kc-w2" in out
        assert "kubeadm init done before (/etc/kubernetes/admin.conf there)" in out
        assert f"https://{VIP}:6443" in (site / "work" / "admin.conf").read_text()
        # the journal skips a finished bring-up; without its record the nodes themselves say it is done
        journal = site / "work" / "state.json"
        data = json.loads(journal.read_text())
        data["done"] = {k: v for k, v in data["done"].items() if not k.startswith("cluster/")}
        journal.write_text(json.dumps(data))
        log_before, argv_before = _lines(state / "log"), len(_argvs(state))
        third = _cluster(site, keys, client)
    finally:
        listener.close()
    assert third.returncode == 0, third.stdout + third.stderr
    assert "kubeadm set up before (skipped): kc-cp, kc-cp2, kc-cp3, kc-w1, kc-w2" in third.stdout
    assert _lines(state / "log") == log_before and len(_argvs(state)) == argv_before  # no kubeadm ran
    _no_secret_anywhere(site, state, [failed, images, resumed, third], [token1, key1, token2])


def test_a_rerun_after_a_failed_control_plane_join_uploads_the_certificates_again(
    ha_site, keys: Keys
) -> None:
    """kc-cp2 lacks etcd's image: its join fails in kubeadm's preflight, and the nodes after it wait. The
    next run uploads the control-plane certificates again under a fresh key (kubeadm init phase
    upload-certs, the key in --config) and joins kc-cp2, kc-cp3 and the workers with a fresh token."""
    site, client, every, state = ha_site
    cp2 = every[3]
    assert cp2.name == "kc-cp2"
    etcd = "registry.k8s.io/etcd:3.5.15-0"
    subprocess.run(cp2.containerd.ctr("images", "rm", etcd), check=True, capture_output=True)
    listener = _Listener(VIP, 6443)
    try:
        failed = _cluster(site, keys, client)
        out = failed.stdout + failed.stderr
        assert failed.returncode == 6, out
        assert (
            "kubeadm join --control-plane failed on kc-cp2" in out
            and f"[ERROR ImagePull]: failed to pull image {etcd}" in out
        )
        first_log = _lines(state / "log")
        key1 = json.loads((state / "cluster.json").read_text())["key"]
        token1 = json.loads((state / "cluster.json").read_text())["deleted"]
        assert [line.split()[0] for line in first_log] == ["init", "token-delete"]
        images = _install(site, keys, "--yes", "--only", "images", "--ssh-config", str(client.config))
        assert images.returncode == 0, images.stdout + images.stderr
        resumed = _cluster(site, keys, client)
    finally:
        listener.close()
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    cluster = json.loads((state / "cluster.json").read_text())
    token2, key2 = cluster["deleted"], cluster["key"]
    assert key2 != key1 and token2 != token1
    log = _lines(state / "log")[len(first_log) :]
    assert log[:4] == [
        f"token-create {token2[:6]}",
        "upload-certs",
        f"join-control-plane kc-cp2 endpoint={VIP}:6443",
        f"join-control-plane kc-cp3 endpoint={VIP}:6443",
    ]
    assert sorted(log[4:6]) == [
        f"join-worker kc-w1 endpoint={VIP}:6443",
        f"join-worker kc-w2 endpoint={VIP}:6443",
    ]
    assert log[6:] == [f"token-delete {token2[:6]}"]
    upload = [a for a in _argvs(state) if a[:3] == ["init", "phase", "upload-certs"]]
    assert len(upload) == 1 and upload[0][3:6] == [
        "--upload-certs",
        "--skip-certificate-key-print",
        "--config",
    ]
    assert "kubeadm set up before (skipped): kc-cp" in [line.strip() for line in resumed.stdout.splitlines()]
    _no_secret_anywhere(site, state, [failed, images, resumed], [token1, key1, token2, key2])


def test_the_kubeadm_stand_in_refuses_to_set_up_a_node_twice_like_kubeadm(
    ha_site, keys: Keys, tmp_path: Path
) -> None:
    """After a bring-up, kubeadm init on the initialised control plane and kubeadm join on a joined worker
    fail in kubeadm's preflight with its words; the installer adds what to do."""
    from bundler.errors import InstallError

    site, client, every, _ = ha_site
    listener = _Listener(VIP, 6443)
    try:
        run = _cluster(site, keys, client)
        assert run.returncode == 0, run.stdout + run.stderr
        with pytest.raises(InstallError) as init:
            _runner(client, tmp_path).run(
                _inventory_node(every[0]), "/tmp/ab-kc-bin/kubeadm init --node-name kc-cp", "kubeadm init"
            )
        with pytest.raises(InstallError) as join:
            _runner(client, tmp_path).run(
                _inventory_node(every[1]),
                f"/tmp/ab-kc-bin/kubeadm join {VIP}:6443 --token abcdef.0123456789abcdef "
                "--discovery-token-ca-cert-hash sha256:" + "0" * 64,
                "kubeadm join",
            )
    finally:
        listener.close()
    logged = (tmp_path / "logs" / "kubeadm-kc-cp.log").read_text()
    manifests = "/etc/kubernetes/manifests/"
    expected = [
        "[ERROR Port-6443]: Port 6443 is in use",
        "[ERROR Port-10259]: Port 10259 is in use",
        "[ERROR Port-10257]: Port 10257 is in use",
        *[f"[ERROR FileAvailable--etc-kubernetes-manifests-{c}.yaml]: {manifests}{c}.yaml already exists"
          for c in ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "etcd")],
        "[ERROR Port-10250]: Port 10250 is in use",
        "[ERROR Port-2379]: Port 2379 is in use",
        "[ERROR Port-2380]: Port 2380 is in use",
    ]  # fmt: skip
    assert [ln.strip() for ln in logged.splitlines() if "[ERROR" in ln] == expected
    assert str(init.value).startswith("cluster: kubeadm init failed on kc-cp (exit 1): ")
    assert "run `kubeadm reset -f` on kc-cp, then install again" in str(init.value)
    logged = (tmp_path / "logs" / "kubeadm-kc-w1.log").read_text()
    assert [ln.strip() for ln in logged.splitlines() if "[ERROR" in ln] == [
        "[ERROR FileAvailable--etc-kubernetes-kubelet.conf]: /etc/kubernetes/kubelet.conf already exists",
        "[ERROR Port-10250]: Port 10250 is in use",
        "[ERROR FileAvailable--etc-kubernetes-pki-ca.crt]: /etc/kubernetes/pki/ca.crt already exists",
    ]
    assert "kubeadm join failed on kc-w1" in str(join.value)


def test_a_rerun_after_a_failed_init_says_to_reset_the_first_control_plane(
    ha_site, keys: Keys, tmp_path: Path
) -> None:
    """kc-cp's init stops at wait-control-plane (swap on: its kubelet refuses to run), after kubeadm's
    kubeconfig phase wrote admin.conf there. The next run does not take that admin.conf for a finished
    init blindly: its cluster does not answer kubeadm token create, and the installer says to reset
    kc-cp. It resets nothing there by itself (an admin.conf whose API is only down for now would be a
    cluster's first control plane)."""
    site, client, every, state = ha_site
    swaps = tmp_path / "swaps"
    swaps.write_text("Filename\tType\tSize\tUsed\tPriority\n/swap.img\tfile\t2097148\t0\t-2\n")
    enter = ["nsenter", "-t", str(every[0].containerd.proc.pid), "-m"]
    listener = _Listener(VIP, 6443)
    try:
        subprocess.run([*enter, "mount", "--bind", str(swaps), "/proc/swaps"], check=True)
        try:
            failed = _cluster(site, keys, client)
        finally:
            subprocess.run([*enter, "umount", "/proc/swaps"], check=True)
        assert failed.returncode == 6, failed.stdout + failed.stderr
        assert "kubeadm init failed on kc-cp" in failed.stdout + failed.stderr
        again = _cluster(site, keys, client)
    finally:
        listener.close()
    out = again.stdout + again.stderr
    assert again.returncode == 6, out
    assert "kubeadm token create failed on kc-cp" in out
    assert (
        "kc-cp has the /etc/kubernetes/admin.conf of an earlier kubeadm init, whose cluster does not answer: "
        "if that init failed, run `kubeadm reset -f` on kc-cp, then install again" in out
    )
    assert [a[0] for a in _argvs(state)] == ["init", "token"] and not (state / "log").exists()
    assert "Traceback" not in again.stderr


def test_a_control_plane_whose_join_stopped_at_kubelet_start_is_reset_and_joined_again(
    ha_site, keys: Keys, tmp_path: Path
) -> None:
    """kc-cp2's kubelet refuses to run (swap on): its join stops at kubelet-start, after kubeadm wrote
    its static pods, admin.conf and the CA there. The next run resets kc-cp2 (kubeadm would refuse it:
    DirAvailable--etc-kubernetes-manifests) and joins it, then the rest."""
    site, client, every, state = ha_site
    cp2 = every[3]
    assert cp2.name == "kc-cp2"
    swaps = tmp_path / "swaps"
    swaps.write_text("Filename\tType\tSize\tUsed\tPriority\n/swap.img\tfile\t2097148\t0\t-2\n")
    enter = ["nsenter", "-t", str(cp2.containerd.proc.pid), "-m"]
    listener = _Listener(VIP, 6443)
    try:
        subprocess.run([*enter, "mount", "--bind", str(swaps), "/proc/swaps"], check=True)
        try:
            failed = _cluster(site, keys, client)
        finally:
            subprocess.run([*enter, "umount", "/proc/swaps"], check=True)
        out = failed.stdout + failed.stderr
        assert failed.returncode == 6 and "kubeadm join --control-plane failed on kc-cp2" in out, out
        assert (cp2.root / "kubernetes" / "manifests" / "kube-apiserver.yaml").exists()
        first_log = _lines(state / "log")
        again = _cluster(site, keys, client)
    finally:
        listener.close()
    assert again.returncode == 0, again.stdout + again.stderr
    token2 = json.loads((state / "cluster.json").read_text())["deleted"]
    log = _lines(state / "log")[len(first_log) :]
    assert log[:5] == [
        "reset kc-cp2",
        f"token-create {token2[:6]}",
        "upload-certs",
        f"join-control-plane kc-cp2 endpoint={VIP}:6443",
        f"join-control-plane kc-cp3 endpoint={VIP}:6443",
    ]
    assert log[-1] == f"token-delete {token2[:6]}" and len(log) == 8
