"""The kubeadm kind's inventory: RKE's cluster.yml with the ``loadbalancer`` role and a ``vip:``
(the control-plane endpoint), and the refusal of more than one control plane without one."""

from __future__ import annotations

from pathlib import Path

import pytest

from bundler.errors import InputError, InstallError
from bundler.installer.inventory import Endpoint, load_endpoint, load_inventory, vip_problem

HA = """\
ssh_key_path: /root/.ssh/id_ed25519
vip: 10.10.0.5
nodes:
  - {address: 10.10.0.11, user: ubuntu, role: [loadbalancer]}
  - {address: 10.10.0.12, user: ubuntu, role: [loadbalancer]}
  - {address: 10.10.0.21, user: ubuntu, role: [controlplane, etcd]}
  - {address: 10.10.0.22, user: ubuntu, role: [controlplane, etcd]}
  - {address: 10.10.0.23, user: ubuntu, role: [controlplane, etcd]}
  - {address: 10.10.0.31, user: ubuntu, role: [worker]}
"""


def _file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cluster.yml"
    path.write_text(text)
    return path


def test_an_ha_inventory_with_load_balancers_and_a_vip_is_read(tmp_path: Path) -> None:
    path = _file(tmp_path, HA)
    nodes = load_inventory(path)
    assert [n.roles for n in nodes][:2] == [("loadbalancer",), ("loadbalancer",)]
    endpoint = load_endpoint(path)
    assert endpoint == Endpoint("10.10.0.5", 6443) and str(endpoint) == "10.10.0.5:6443"
    assert vip_problem(path, nodes, endpoint) is None
    assert load_endpoint(_file(tmp_path, HA.replace("vip: 10.10.0.5", "vip: 10.10.0.5:8443"))) == Endpoint(
        "10.10.0.5", 8443
    )


def test_more_than_one_control_plane_without_a_vip_is_refused_with_its_line(tmp_path: Path) -> None:
    text = HA.replace("vip: 10.10.0.5\n", "").replace("role: [loadbalancer]", "role: [worker]")
    path = _file(tmp_path, text)
    problem = vip_problem(path, load_inventory(path), load_endpoint(path))
    assert problem is not None
    assert problem.startswith(f"{path}:6: 3 control-plane nodes (10.10.0.21, 10.10.0.22, 10.10.0.23)")
    assert "vip: ADDRESS[:PORT]" in problem
    one = _file(tmp_path, "nodes:\n  - {address: 10.0.0.1, user: u, role: [controlplane, etcd, worker]}\n")
    assert vip_problem(one, load_inventory(one), None) is None  # one control plane needs no endpoint


def test_load_balancer_nodes_without_a_vip_are_refused(tmp_path: Path) -> None:
    path = _file(tmp_path, HA.replace("vip: 10.10.0.5\n", ""))
    problem = vip_problem(path, load_inventory(path), load_endpoint(path))
    assert problem is not None and problem.startswith(f"{path}:3: node 10.10.0.11 has the loadbalancer role")


@pytest.mark.parametrize(
    "bad", ["vip: 10.10.0\n", "vip: ten\n", "vip: 10.10.0.5:http\n", "vip: 10.1.1.1:70000\n"]
)
def test_a_malformed_vip_names_the_file_and_line(tmp_path: Path, bad: str) -> None:
    path = _file(tmp_path, "nodes:\n  - {address: 10.0.0.1, user: u, role: [worker]}\n" + bad)
    with pytest.raises(InputError, match=rf"^{path}:3: vip: "):
        load_endpoint(path)


def test_kubeadm_ports_are_kubeadms_own() -> None:
    """kubeadm's "Ports and Protocols": no ingress on 80/443 (RKE's), the NodePorts on workers."""
    from dataclasses import replace

    from bundler.installer.inventory import Node
    from bundler.installer.preflight import KIND_RULES, busy_ports

    from .test_plan import _lock

    table = KIND_RULES["kubeadm"].ports(replace(_lock(), cluster={"kind": "kubeadm"}))
    worker = Node("10.0.0.4", "root", ("worker",))
    control = Node("10.0.0.1", "root", ("controlplane", "etcd"))
    lb = Node("10.0.0.9", "root", ("loadbalancer",))
    assert busy_ports(worker, {80, 443, 31000, 10250}, table) == ["10250 (every node)", "31000 (worker)"]
    assert busy_ports(control, {2379, 6443, 10259, 31000}, table) == [
        "6443 (controlplane)", "2379 (controlplane)", "10259 (controlplane)"
    ]  # fmt: skip
    assert busy_ports(lb, {6443, 8443}, table) == []  # haproxy's own port: the installer puts it there


def test_kubeadm_config_files_are_v1beta3_documents_with_the_secrets() -> None:
    """What ``kubeadm init/join --config`` reads (read here with PyYAML, as kubeadm reads YAML)."""
    import yaml

    from bundler.installer.inventory import Node
    from bundler.installer.kubeadmup import init_config, join_config, with_config

    node = Node("10.10.0.21", "ubuntu", ("controlplane", "etcd"), hostname_override="cp1")
    token, key, ca_hash = "abcdef.0123456789abcdef", "ab" * 32, "sha256:" + "c" * 64
    init, cluster, kubelet = yaml.safe_load_all(
        init_config(node, "v1.28.15", Endpoint("10.10.0.5", 6443), token, key)
    )
    assert init == {
        "apiVersion": "kubeadm.k8s.io/v1beta3",
        "kind": "InitConfiguration",
        "bootstrapTokens": [{"token": token, "ttl": "1h0m0s"}],
        "nodeRegistration": {"name": "cp1"},
        "certificateKey": key,
    }
    assert cluster == {
        "apiVersion": "kubeadm.k8s.io/v1beta3",
        "kind": "ClusterConfiguration",
        "kubernetesVersion": "v1.28.15",
        "controlPlaneEndpoint": "10.10.0.5:6443",
    }
    # the kubelet's cgroup driver said outright: containerd's runc uses the same (SystemdCgroup = true)
    assert kubelet == {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "cgroupDriver": "systemd",
    }
    single = list(yaml.safe_load_all(init_config(node, "v1.28.15", None, token, key)))
    assert "certificateKey" not in single[0] and "controlPlaneEndpoint" not in single[1]
    join = yaml.safe_load(join_config(node, "10.10.0.5:6443", token, ca_hash, key))
    assert join["discovery"] == {
        "bootstrapToken": {"apiServerEndpoint": "10.10.0.5:6443", "token": token, "caCertHashes": [ca_hash]}
    }
    assert join["controlPlane"] == {"certificateKey": key} and join["nodeRegistration"] == {"name": "cp1"}
    assert "controlPlane" not in yaml.safe_load(join_config(node, "10.10.0.5:6443", token, ca_hash))
    # the command that runs kubeadm holds no secret: the file comes on stdin, 0600 under /run, then removed
    script = with_config("/usr/local/bin/kubeadm", ["init", "--upload-certs"])
    assert "mktemp /run/airbundle-kubeadm.XXXXXX" in script and "umask 077" in script and "rm -f" in script
    assert "--config" in script and "--token" not in script and "--certificate-key" not in script


def test_a_bundle_without_a_pause_image_is_refused_before_any_node_is_touched(tmp_path: Path) -> None:
    from bundler.installer import remote
    from bundler.installer.inventory import Node
    from bundler.installer.kubeadmup import bring_up

    node = Node("127.0.0.209", "root", ("controlplane", "etcd", "worker"), port=1)  # never reached
    with pytest.raises(InstallError, match=r"^cluster: the bundle carries no pause image") as caught:
        bring_up([node], None, "/usr/local/bin/kubeadm", "v1.28.15", remote.SshOptions(), tmp_path, print, "")
    assert "registry.k8s.io/pause" in str(caught.value)


def test_node_names_kubernetes_would_refuse_are_named_with_a_fix(tmp_path: Path) -> None:
    from bundler.installer.inventory import kube_name_problem

    path = _file(
        tmp_path,
        HA.replace("role: [controlplane, etcd]}", "role: [controlplane, etcd], hostname_override: CP_1}", 1),
    )
    nodes = load_inventory(path)
    problems = [p for p in (kube_name_problem(path, n) for n in nodes) if p]
    assert len(problems) == 1
    assert problems[0].startswith(f"{path}:6: ")
    assert "node CP_1: Kubernetes registers the node under this name" in problems[0]
    assert problems[0].endswith("write hostname_override: cp-1")
    from bundler.installer.inventory import Node

    assert kube_name_problem(path, Node("10.0.0.1", "root", ("worker",))) is None  # an address will do


def test_an_ipv6_endpoint_is_bracketed_as_go_reads_host_port() -> None:
    assert str(Endpoint("fd00::1")) == "[fd00::1]:6443" and str(Endpoint("10.0.0.1", 8443)) == "10.0.0.1:8443"
