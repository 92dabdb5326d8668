"""What Rancher's rke needs on each node: the installer's preflight checks it, the stand-in enforces it.

Real loopback nodes (sshd + dockerd each, tests/nodes.py), some made to break one of rke's
requirements: an SSH user outside the docker group, an sshd with ``AllowTcpForwarding no``,
a node whose ``net.bridge.bridge-nf-call-iptables`` reads 0 (a file bound over it in the
node's own mount namespace). The stand-in for rke (tests/standins/rke) runs ``up`` against
them over real SSH tunnels to each node's Docker socket.
"""

from __future__ import annotations

import hashlib
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from . import rke_standin
from .conftest import Keys
from .engines import busybox_rootfs

STANDIN = str(rke_standin.STANDIN)
# name → (address, user, in the docker group, sshd_config lines, roles)
NODES = {
    "cp-1": ("127.0.0.41", "root", True, "", "[controlplane, etcd]"),
    "wk-1": ("127.0.0.42", "abdocker", True, "", "[worker]"),
    "nodock": ("127.0.0.43", "abnodock", False, "", "[worker]"),
    "nofwd": ("127.0.0.44", "root", True, "AllowTcpForwarding no\n", "[worker]"),
    "bridge0": ("127.0.0.45", "root", True, "", "[worker]"),
}
ROLES = {name: spec[4] for name, spec in NODES.items()}


@pytest.fixture(scope="module")
def rke_nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[object, dict[str, object]]]:
    from .nodes import Client, Node

    client = Client(tmp_path_factory.mktemp("rke-client"))
    client.key.chmod(0o600)
    nodes: dict[str, Node] = {}
    try:
        for name, (address, user, group, extra, _) in NODES.items():
            nodes[name] = Node(address, name, client, user=user, docker_group=group, sshd_extra=extra)
        zero = nodes["bridge0"].root / "bridge-nf-call-iptables"
        zero.write_text("0\n")
        subprocess.run(
            ["nsenter", "-t", str(nodes["bridge0"].engine.proc.pid), "-m", "mount", "--bind", str(zero),
             "/proc/sys/net/bridge/bridge-nf-call-iptables"],
            check=True,
        )  # fmt: skip
        yield client, nodes
    finally:
        for node in nodes.values():
            node.stop()


def _cluster(tmp_path: Path, client, nodes: list, extra: str = "") -> Path:
    from .nodes import rke_cluster_yml

    path = tmp_path / "site-cluster.yml"
    path.write_text(rke_cluster_yml(nodes, ROLES, client.key, extra))
    return path


def _rke_up(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [STANDIN, "up", "--config", str(config)],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "HOME": str(config.parent)},
        timeout=300,
    )


def _give_images(node, roles: tuple[str, ...], without: set[str] = frozenset()) -> None:  # type: ignore[assignment]
    """Tiny busybox images under the system image names ``roles`` need, in the node's own engine."""
    api = node.engine.client.api
    _clear(node)
    for image in node.engine.client.images.list():
        node.engine.client.images.remove(image.id, force=True)
    api.import_image_from_data(busybox_rootfs(), repository="test/base", tag="1")
    for ref in rke_standin.images_for(roles) - set(without):
        repo, _, tag = ref.rpartition(":")
        api.tag("test/base:1", repo, tag)


def _clear(node) -> None:
    for container in node.engine.client.containers.list(all=True):
        container.remove(force=True)


def _roles(name: str) -> tuple[str, ...]:
    return tuple(r.strip() for r in ROLES[name].strip("[]").split(","))


# ---------------------------------------------------------------- the stand-in fails where rke fails


def test_standin_lists_the_system_images() -> None:
    """`rke config --system-images --version V` prints one image per line on stdout, after rke's log
    line (logrus writes to stdout too); an unknown version is fatal."""
    run = subprocess.run(
        [STANDIN, "config", "--system-images", "--version", rke_standin.KUBERNETES_VERSION],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    lines = run.stdout.splitlines()
    assert 'level=info msg="Generating images list for version [v1.26.9-rancher1-1]:"' in lines[0]
    assert lines[1:] == rke_standin.system_images()
    other = subprocess.run(
        [STANDIN, "config", "--system-images", "--version", "v1.28.15-rancher1-1"],
        capture_output=True,
        text=True,
    )
    assert (
        other.returncode == 1
        and "level=fatal" in other.stdout
        and "k8s version is not supported" in other.stdout
    )
    assert subprocess.run([STANDIN, "--version"], capture_output=True, text=True).stdout.startswith(
        "rke version v"
    )


def test_standin_brings_up_nodes_that_have_what_their_roles_need(rke_nodes, tmp_path: Path) -> None:
    """rke tunnels to each node's Docker as the node's user (root, or a user in the docker group),
    finds every image its roles need there, starts the components with --network none and
    writes kube_config_<name>.yml beside cluster.yml; a second `up` leaves them running."""
    client, nodes = rke_nodes
    chosen = [nodes["cp-1"], nodes["wk-1"]]
    for node in chosen:
        _clear(node)
        _give_images(node, _roles(node.name))
    config = _cluster(tmp_path, client, chosen)
    run = _rke_up(config)
    assert run.returncode == 0, run.stdout + run.stderr
    assert (tmp_path / "kube_config_site-cluster.yml").read_text().startswith("apiVersion: v1")
    want = {
        "cp-1": {
            "etcd",
            "kube-apiserver",
            "kube-controller-manager",
            "kube-scheduler",
            "kubelet",
            "kube-proxy",
        },
        "wk-1": {"nginx-proxy", "kubelet", "kube-proxy"},
    }
    for node in chosen:
        running = node.engine.client.containers.list()
        assert {c.name for c in running} == want[node.name]
        assert all(c.attrs["HostConfig"]["NetworkMode"] == "none" for c in running)
    again = _rke_up(config)
    assert again.returncode == 0 and "is already running on host [127.0.0.42]" in again.stdout


def test_standin_fails_on_control_plane_nodes_with_workers_only_images(rke_nodes, tmp_path: Path) -> None:
    """The OLD behaviour: the bundle's images loaded on workers only. rke pulls the system images
    onto every node, the etcd and control-plane ones too; on an isolated site with no private
    registry the pull fails, and rke stops naming the image and the host."""
    client, nodes = rke_nodes
    chosen = [nodes["cp-1"], nodes["wk-1"]]
    for node in chosen:
        _clear(node)
    _give_images(nodes["wk-1"], _roles("wk-1"))
    for image in nodes["cp-1"].engine.client.images.list():
        nodes["cp-1"].engine.client.images.remove(image.id, force=True)
    run = _rke_up(_cluster(tmp_path, client, chosen))
    assert run.returncode == 1
    assert "level=fatal" in run.stdout and "Failed to pull image [rancher/" in run.stdout
    failed = [ln for ln in run.stdout.splitlines() if "level=error" in ln]
    assert failed and all("on host [127.0.0.41]" in ln for ln in failed)  # the worker had what it needs
    # An etcd node with everything but the etcd image fails on exactly that image.
    _give_images(nodes["cp-1"], _roles("cp-1"), without={rke_standin.canonical(rke_standin.KDM["etcd"])})
    run = _rke_up(_cluster(tmp_path, client, chosen))
    assert run.returncode == 1
    assert f"Failed to pull image [{rke_standin.KDM['etcd']}] on host [127.0.0.41]" in run.stdout


@pytest.mark.parametrize(("node", "address"), [("nodock", "127.0.0.43"), ("nofwd", "127.0.0.44")])
def test_standin_drops_a_node_whose_tunnel_to_docker_is_refused(
    rke_nodes, tmp_path: Path, node: str, address: str
) -> None:
    """rke opens a channel to /var/run/docker.sock as the SSH user. A user outside the docker group
    cannot open the socket (``nodock``), and an sshd with `AllowTcpForwarding no` refuses the
    channel (``nofwd``): either way "Failed to set up SSH tunneling for host [...]: Can't retrieve
    Docker Info: ... ssh: rejected: administratively prohibited (open failed)" (Rancher's
    troubleshooting page lists both causes for that message). As rke does (cluster/hosts.go), that
    is a warning: the node is removed from the node lists and rke goes on, and exits 0, with the
    others; only when no etcd node is left is it fatal."""
    client, nodes = rke_nodes
    _give_images(nodes["cp-1"], _roles("cp-1"))
    run = _rke_up(_cluster(tmp_path, client, [nodes["cp-1"], nodes[node]]))
    assert run.returncode == 0, run.stdout
    warned = [ln for ln in run.stdout.splitlines() if "level=warning" in ln]
    assert any(
        f"Failed to set up SSH tunneling for host [{address}]: Can't retrieve Docker Info" in ln
        for ln in warned
    )
    assert any("administratively prohibited (open failed)" in ln for ln in warned)
    assert any(f"Removing host [{address}] from node lists" in ln for ln in warned)
    assert not any("127.0.0.41" in ln for ln in warned)
    assert "Finished building Kubernetes cluster successfully (stand-in: 1 nodes)" in run.stdout
    # The etcd node unreachable: nothing is left to hold the cluster's state, and rke stops.
    from .nodes import rke_cluster_yml

    only = tmp_path / "only.yml"
    only.write_text(rke_cluster_yml([nodes[node]], {node: "[controlplane, etcd, worker]"}, client.key))
    fatal = _rke_up(only)
    assert fatal.returncode == 1
    assert (
        "Cluster must have at least one etcd plane host: failed to connect to the following etcd host(s) "
        f"[{address}]" in fatal.stdout
    )


def test_standin_checks_the_docker_version_unless_told_not_to(rke_nodes, tmp_path: Path) -> None:
    """rke refuses a Docker its metadata does not list for the Kubernetes minor version (Docker
    20.10 is not one for Kubernetes 1.8), unless cluster.yml says ignore_docker_version: true."""
    client, nodes = rke_nodes
    _clear(nodes["cp-1"])
    _give_images(nodes["cp-1"], _roles("cp-1"))
    old = "kubernetes_version: v1.8.11-rancher1-1\n"
    run = _rke_up(_cluster(tmp_path, client, [nodes["cp-1"]], old))
    assert run.returncode == 1 and "Unsupported Docker version found [20.10" in run.stdout
    assert "on host [127.0.0.41], supported versions are [1.11.x 1.12.x 1.13.x 17.03.x]" in run.stdout
    run = _rke_up(_cluster(tmp_path, client, [nodes["cp-1"]], old + "ignore_docker_version: true\n"))
    assert run.returncode == 0, run.stdout


# ---------------------------------------------------------------- preflight: what rke requires


@pytest.fixture
def rke_site(project, keys: Keys, tmp_path: Path, cache_dir: Path, rke_nodes):
    """A bundle whose rke is the stand-in, built and laid out on a site (install.sh beside it)."""
    from .conftest import run_cli
    from .test_installer import _site

    data = rke_standin.standin_bytes()
    url = project.origin.add("/rke-faithful", data)
    manifest = project.write_manifest(
        "apiVersion: airbundle/v1\nkind: Bundle\nname: rkesite\nversion: '1.0'\n"
        "platform: {os: debian, codename: bookworm, arch: amd64}\n"
        f"binaries:\n  - name: rke\n    url: {url}\n    sha256: {hashlib.sha256(data).hexdigest()}\n"
        f"    dest: {tmp_path / 'node-bin' / 'rke'}\n",
        "rkesite.yaml",
    )
    built = run_cli("build", manifest, "-o", tmp_path / "out", "--key", keys.key_path, "--cache", cache_dir)
    assert built.exit_code == 0, built.stderr
    return _site(Path(built.stdout.strip()), tmp_path)


def _preflight(site: Path, keys: Keys, client, text: str) -> subprocess.CompletedProcess[str]:
    from .test_installer import _install

    (site / "cluster.yml").write_text(text)
    return _install(site, keys, "--only", "preflight", "--ssh-config", str(client.config))


def _line(out: str, name: str) -> str:
    return next(ln for ln in out.splitlines() if ln.strip().startswith(name + " ") and "warning:" not in ln)


def test_preflight_refuses_each_rke_requirement_naming_the_node(rke_nodes, rke_site, keys: Keys) -> None:
    """Each node made to break one of rke's requirements is refused (exit 6), naming the node and the
    fix: rke itself would stop at its SSH tunnel (user outside the docker group, forwarding refused)
    or leave a cluster whose pod network drops bridged traffic (bridge-nf-call-iptables 0)."""
    from .nodes import rke_cluster_yml

    client, nodes = rke_nodes
    run = _preflight(rke_site, keys, client, rke_cluster_yml(list(nodes.values()), ROLES, client.key))
    assert run.returncode == 6, run.stdout + run.stderr
    out = run.stdout
    assert "ok" in _line(out, "cp-1")
    # A user in the docker group meets what rke needs (no sudo on this machine: the installer's own rule).
    assert _line(out, "wk-1").endswith("FAILED: abdocker cannot use sudo without a password")
    assert "abnodock cannot use Docker without sudo (not in the docker group: permission denied" in _line(
        out, "nodock"
    )
    assert "usermod -aG docker abnodock" in _line(out, "nodock")
    assert "FAILED: sshd refuses forwarding (AllowTcpForwarding no, from sshd -T)" in _line(out, "nofwd")
    assert "set 'AllowTcpForwarding yes' in " in _line(out, "nofwd")
    assert "FAILED: net.bridge.bridge-nf-call-iptables is 0" in _line(out, "bridge0")
    assert "preflight: failed on wk-1, nodock, nofwd, bridge0" in run.stderr
    # What a node in a container cannot tell is a warning, not a refusal.
    assert "cp-1                 warning: cannot tell which kernel modules are loaded" in out
    assert "cp-1                 warning: /var/lib/docker is on the filesystem of /" in out


def test_preflight_docker_version_and_unique_names(rke_nodes, rke_site, keys: Keys) -> None:
    """rke refuses a Docker its metadata does not accept for the cluster's Kubernetes version
    (unless ignore_docker_version: true); two nodes reporting one hostname, with no
    hostname_override, would register as one Kubernetes node."""
    client, nodes = rke_nodes
    pair = [nodes["cp-1"], nodes["bridge0"]]
    from .nodes import rke_cluster_yml

    old = rke_cluster_yml(pair[:1], ROLES, client.key, "kubernetes_version: v1.8.11-rancher1-1\n")
    refused = _preflight(rke_site, keys, client, old)
    assert refused.returncode == 6
    assert "FAILED: Docker 20.10" in _line(refused.stdout, "cp-1")
    assert "is not one rke accepts for Kubernetes v1.8.11-rancher1-1 (1.11.x, 1.12.x, 1.13.x, 17.03.x)" in (
        refused.stdout
    )
    ignored = _preflight(rke_site, keys, client, old + "ignore_docker_version: true\n")
    assert ignored.returncode == 0, ignored.stdout + ignored.stderr
    twins = (
        rke_cluster_yml(pair, ROLES, client.key)
        .replace(", hostname_override: cp-1", "")
        .replace(", hostname_override: bridge0", "")
    )
    run = _preflight(rke_site, keys, client, twins)
    assert run.returncode == 6
    assert "is also the name of 127.0.0.45: give each node its own hostname" in _line(
        run.stdout, "127.0.0.41"
    )


# ---------------------------------------------------------------- the rules on a node's facts


def _facts(**over: str) -> dict[str, list[str]]:
    from bundler.installer.preflight import parse_facts

    base = {
        "uid": "0",
        "groups": "root",
        "hostname": "kn0",
        "docker": "ok 24.0.7",
        "bridge": "1",
        "modules": "ok",
        "docker_mount": "/var/lib/docker",
        "sshd_config": "/etc/ssh/sshd_config",
        "sshd_from": "sshd -T",
    }
    base.update(over)
    return parse_facts("\n".join(f"{k}={v}" for k, v in base.items()) + "\nsshd allowtcpforwarding yes\n")


def test_kernel_modules_rule_on_a_host_that_can_tell() -> None:
    """On a host with /proc/modules, a module RKE's requirements page lists and the node lacks is
    refused with the modprobe fix; the *_ipv4 modules that kernels from 4.19 merged into
    nf_conntrack / nf_nat count as loaded when those are."""
    from bundler.installer.inventory import ClusterOptions, Node
    from bundler.installer.preflight import rke_problems

    node = Node("10.0.0.1", "root", ("worker",))
    merged = "ok nf_conntrack_ipv4 nf_nat_ipv4 nf_nat_masquerade_ipv4"
    assert rke_problems(node, _facts(modules=merged), ClusterOptions(), None) == ([], [])
    problems, _ = rke_problems(node, _facts(modules="ok br_netfilter vxlan"), ClusterOptions(), None)
    assert problems == [
        "kernel modules rke needs are not loaded: br_netfilter vxlan (modprobe each, and list them in "
        "/etc/modules-load.d/)"
    ]
    problems, _ = rke_problems(node, _facts(bridge="unknown"), ClusterOptions(), None)
    assert problems[0].startswith("net.bridge.bridge-nf-call-iptables is not set (br_netfilter not loaded)")


def test_the_bundles_docker_ce_must_be_one_rke_accepts() -> None:
    """rke v1.4.11 accepts Docker up to 24.0 for Kubernetes 1.26: a bundle carrying docker-ce 25.0 (or
    an unpinned, newest one) would stop rke up on every node, so the preflight refuses it on every
    node before anything is installed, unless cluster.yml says ignore_docker_version."""
    from bundler.installer.inventory import ClusterOptions, Node
    from bundler.installer.preflight import rke_docker_accepted, rke_problems

    assert rke_docker_accepted("24.0.9", "v1.26.9-rancher1-1")[0]
    assert not rke_docker_accepted("25.0.3", "v1.26.9-rancher1-1")[0]
    assert rke_docker_accepted("25.0.3", "v1.27.16-rancher1-1")[0]
    node = Node("10.0.0.1", "rke", ("worker",))
    cluster = ClusterOptions("v1.26.9-rancher1-1")
    problems, warnings = rke_problems(node, {"docker": ["missing"]}, cluster, "25.0.3")
    assert problems[0].startswith(
        "the bundle's docker-ce 25.0.3 is not one rke accepts for Kubernetes v1.26.9"
    )
    assert "docker-ce pinned to one of those" in problems[0]
    problems, warnings = rke_problems(node, {"docker": ["missing"]}, cluster, "24.0.9")
    assert not any("docker-ce" in p for p in problems)
    assert any("adds rke to the docker group" in w for w in warnings)
    ignored = ClusterOptions("v1.26.9-rancher1-1", ignore_docker_version=True)
    assert not any(
        "docker-ce" in p for p in rke_problems(node, {"docker": ["missing"]}, ignored, "25.0.3")[0]
    )


def test_the_packages_phase_puts_the_ssh_user_in_the_docker_group() -> None:
    """Once docker-ce is installed (its package makes the group), the installer's snippet adds the
    inventory's non-root SSH user to it, once: rke needs Docker without sudo."""
    from bundler.installer.apply import _docker_group

    user = "abgroup"
    subprocess.run(["useradd", "-M", "-d", "/nonexistent", "-s", "/bin/sh", user], capture_output=True)
    subprocess.run(["gpasswd", "-d", user, "docker"], capture_output=True)
    try:
        first = subprocess.run(["sh", "-c", _docker_group(user)], capture_output=True, text=True, check=True)
        assert first.stdout.strip() == f"added {user} to the docker group"
        assert "docker" in subprocess.run(["id", "-nG", user], capture_output=True, text=True).stdout.split()
        again = subprocess.run(["sh", "-c", _docker_group(user)], capture_output=True, text=True, check=True)
        assert again.stdout == ""  # already there: nothing done
    finally:
        subprocess.run(["userdel", user], capture_output=True)


def test_installer_and_standin_agree_on_rkes_docker_versions() -> None:
    """One table in the installer (apply.RKE_DOCKER_VERSIONS), one in the stand-in's model of rke:
    both are rke's metadata (kontainer-driver-metadata k8s_docker_info.go)."""
    from bundler.installer.preflight import RKE_DOCKER_VERSIONS

    assert {k: [f"{v}.x" for v in vs] for k, vs in RKE_DOCKER_VERSIONS.items()} == rke_standin.DOCKER_VERSIONS


def test_the_demo_serves_this_standin_as_its_pinned_rke() -> None:
    """`make demo` pins tools/demo-upstream/rke_linux-amd64 by sha256 in manifests/demo.yaml: it must be
    this stand-in, as `python -m tests.rke_standin` writes it (run that, then update the sha256)."""
    root = Path(__file__).resolve().parent.parent
    served = (root / "tools/demo-upstream/rke_linux-amd64").read_bytes()
    assert served == rke_standin.standin_bytes(), (
        "regenerate: python -m tests.rke_standin > tools/demo-upstream/rke_linux-amd64"
    )
    assert hashlib.sha256(served).hexdigest() in (root / "manifests/demo.yaml").read_text()
    assert (
        f"kubernetes_version: {rke_standin.KUBERNETES_VERSION}" in (root / "manifests/demo.yaml").read_text()
    )


def test_preflight_logs_in_as_rke_would(rke_nodes, rke_site, keys: Keys, tmp_path: Path) -> None:
    """rke logs in with cluster.yml's ssh_key_path alone (no ssh config, no agent): a node that does
    not accept that key, or a key missing here, stops the install at the preflight (exit 6), naming
    the node and the key, although the installer's own ssh (the operator's config) gets in; nothing
    is installed."""
    from .nodes import rke_cluster_yml
    from .test_installer import _install

    client, nodes = rke_nodes
    other = tmp_path / "other_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    missing = tmp_path / "no-such-key"
    pair = [nodes["cp-1"], nodes["wk-1"]]
    text = (
        rke_cluster_yml(pair, ROLES, client.key)
        .replace(", hostname_override: cp-1", f", hostname_override: cp-1, ssh_key_path: {other}")
        .replace(", hostname_override: wk-1", f", hostname_override: wk-1, ssh_key_path: {missing}")
    )
    (rke_site / "cluster.yml").write_text(text)
    run = _install(rke_site, keys, "--ssh-config", str(client.config), "--yes")
    assert run.returncode == 6, run.stdout + run.stderr
    cp = _line(run.stdout, "cp-1")
    assert f"FAILED: rke could not log in as root@127.0.0.41:2222 with key {other}" in cp
    assert "the node refuses it" in cp and f"put {other}.pub in ~root/.ssh/authorized_keys" in cp
    wk = _line(run.stdout, "wk-1")
    assert f"rke could not log in: its key {missing} (ssh_key_path {missing}) is missing or unreadable" in wk
    assert "preflight: failed on cp-1, wk-1" in run.stderr and "Traceback" not in run.stderr
    assert not (tmp_path / "node-bin" / "rke").exists()  # the binaries phase never ran
    # With the key the nodes accept, rke's login is no problem.
    (rke_site / "cluster.yml").write_text(rke_cluster_yml(pair[:1], ROLES, client.key))
    ok = _install(rke_site, keys, "--only", "preflight", "--ssh-config", str(client.config))
    assert ok.returncode == 0, ok.stdout + ok.stderr


def test_rke_login_check_leaves_agent_and_inline_keys_to_rke(tmp_path: Path) -> None:
    """A node rke reaches through the agent (ssh_agent_auth) or an inline ssh_key is not checked
    with a key file; one with neither falls back to rke's default ~/.ssh/id_rsa."""
    from bundler.installer import remote
    from bundler.installer.inventory import load_inventory

    inventory = tmp_path / "cluster.yml"
    inventory.write_text(
        "ssh_agent_auth: true\nnodes:\n  - {address: 127.0.0.170, user: root, role: [worker]}\n"
    )
    assert remote.rke_login_problem(load_inventory(inventory)[0]) is None
    inventory.write_text("nodes:\n  - {address: 127.0.0.170, user: root, role: [worker]}\n")
    node = load_inventory(inventory)[0]
    assert remote.rke_key_path(node).endswith("/.ssh/id_rsa")
