"""k0sctl's own k0sctl.yaml read unchanged as the inventory (issue 16, point 4): as the k0s docs
write it, and every mistake refused with FILE:LINE and what to write instead."""

from __future__ import annotations

from pathlib import Path

import pytest

from bundler.errors import InputError
from bundler.installer import k0sctl
from bundler.installer.plan import topology_findings

# As `k0sctl init` writes it (k0s docs, "Install using k0sctl"), grown to KUMA's topology.
DOCS = """\
apiVersion: k0sctl.k0sproject.io/v1beta1
kind: Cluster
metadata:
  name: k0s-cluster
spec:
  hosts:
  - role: controller
    ssh:
      address: 10.0.0.1 # replace with the controller's IP address
      user: root
      keyPath: ~/.ssh/id_rsa
  - role: controller
    ssh:
      address: 10.0.0.2
      user: root
      keyPath: ~/.ssh/id_rsa
  - role: controller
    ssh:
      address: 10.0.0.3
      user: root
      keyPath: ~/.ssh/id_rsa
  - role: worker
    ssh:
      address: 10.0.0.4
      user: kuma
      port: 2222
      keyPath: ~/.ssh/id_rsa
    hostname: kuma-w1
    privateAddress: 192.168.0.4
    installFlags:
    - --labels=kuma=core
  - role: worker
    ssh:
      address: 10.0.0.5
      user: root
      keyPath: ~/.ssh/id_rsa
  k0s:
    version: v1.28.15+k0s.0
    config:
      apiVersion: k0s.k0sproject.io/v1beta1
      kind: ClusterConfig
      spec:
        images:
          default_pull_policy: Never
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "k0sctl.yaml"
    path.write_text(text)
    return path


def test_a_k0sctl_yaml_as_the_docs_write_it_is_read_as_written(tmp_path: Path) -> None:
    path = _write(tmp_path, DOCS)
    assert k0sctl.is_k0sctl(path)
    config = k0sctl.load(path)
    assert config.version == "v1.28.15+k0s.0"
    assert config.config and config.config["spec"]["images"]["default_pull_policy"] == "Never"
    assert [h.role for h in config.hosts] == ["controller"] * 3 + ["worker"] * 2
    assert [h.line for h in config.hosts] == [7, 12, 17, 22, 32]
    first, w1 = config.hosts[0].node, config.hosts[3]
    assert (first.address, first.user, first.port, first.ssh_key_path, first.roles) == (
        "10.0.0.1", "root", 22, "~/.ssh/id_rsa", ("controller",),
    )  # fmt: skip
    assert (w1.node.name, w1.node.user, w1.node.port, w1.private_address, w1.install_flags) == (
        "kuma-w1", "kuma", 2222, "192.168.0.4", ("--labels=kuma=core",),
    )  # fmt: skip
    assert [n.address for n in k0sctl.load_nodes(path)] == [f"10.0.0.{i}" for i in range(1, 6)]
    assert len(config.controllers) == 3 and len(config.workers) == 2


def test_minimal_host_takes_k0sctls_defaults(tmp_path: Path) -> None:
    path = _write(tmp_path, "apiVersion: k0sctl.k0sproject.io/v1beta1\nkind: cluster\nspec:\n  hosts:\n"
                  "  - role: single\n    ssh: {address: 10.0.0.9}\n")  # fmt: skip
    (host,) = k0sctl.load(path).hosts
    assert (host.node.user, host.node.port, host.node.roles) == ("root", 22, ("controller", "worker"))


def test_an_rke_cluster_yml_is_still_read_as_one(tmp_path: Path) -> None:
    path = tmp_path / "cluster.yml"
    path.write_text("nodes:\n  - {address: 10.0.0.1, user: rke, role: [controlplane, etcd, worker]}\n")
    assert not k0sctl.is_k0sctl(path)
    assert k0sctl.load_nodes(path)[0].roles == ("controlplane", "etcd", "worker")


MISTAKES = [
    # (what to replace in DOCS, with what, the line named, words of the message)
    ("    hostname: kuma-w1\n", "    hostnme: kuma-w1\n", 28, "unknown key 'hostnme' (k0sctl does not know it); spec.hosts[3] takes role, ssh"),
    ("      user: kuma\n", "      usr: kuma\n", 25, "spec.hosts[3].ssh: unknown key 'usr' (k0sctl does not know it); spec.hosts[3].ssh takes address, user, port, keyPath"),
    ("  - role: worker\n    ssh:\n      address: 10.0.0.5", "  - role: master\n    ssh:\n      address: 10.0.0.5", 32, "role 'master' is not one k0sctl knows; give one of controller, worker, controller+worker, single"),
    ("address: 10.0.0.5", "address: 10.0.0.1", 32, "10.0.0.1:22: is not unique (k0sctl's words): also the host on line 7"),
    ("      port: 2222\n", "      port: twenty\n", 26, "spec.hosts[3].ssh.port 'twenty' is not a TCP port"),
    ("apiVersion: k0sctl.k0sproject.io/v1beta1\nkind", "apiVersion: k0sctl.k0sproject.io/v1beta2\nkind", 1, "apiVersion must equal k0sctl.k0sproject.io/v1beta1"),
    ("kind: Cluster\n", "kind: ClusterConfig\n", 2, "kind must equal Cluster; got 'ClusterConfig'"),
    ("metadata:\n", "metdata:\n", 3, "a k0sctl.yaml: unknown key 'metdata'"),
    ("    version: v1.28.15+k0s.0\n", "    verison: v1.28.15+k0s.0\n", 38, "spec.k0s: unknown key 'verison'"),
    ("      keyPath: ~/.ssh/id_rsa\n    hostname", "      keyPath: ~/.ssh/id_rsa\n      bastion: {address: 10.0.0.100}\n    hostname", 28, "ssh.bastion: give the jump host in the ssh config"),
    ("  - role: worker\n    ssh:\n      address: 10.0.0.5\n      user: root\n      keyPath: ~/.ssh/id_rsa\n",
     "  - role: worker\n    openSSH:\n      address: 10.0.0.5\n", 33, "openSSH: the installer reaches every host with the system OpenSSH client"),
]  # fmt: skip


@pytest.mark.parametrize("old, new, line, words", MISTAKES)
def test_each_mistake_is_refused_with_file_and_line(
    tmp_path: Path, old: str, new: str, line: int, words: str
) -> None:
    assert old in DOCS
    path = _write(tmp_path, DOCS.replace(old, new, 1))
    with pytest.raises(InputError) as caught:
        k0sctl.load(path)
    assert str(caught.value).startswith(f"{path}:{line}: "), caught.value
    assert words in str(caught.value)
    assert caught.value.exit_code == 2


def _hosts(*roles: str) -> str:
    out = "apiVersion: k0sctl.k0sproject.io/v1beta1\nkind: Cluster\nspec:\n  hosts:\n"
    for i, role in enumerate(roles):
        out += f"  - role: {role}\n    ssh: {{address: 10.0.0.{i + 1}}}\n"
    return out


def test_roles_k0sctl_or_k0s_cannot_run_with_are_refused(tmp_path: Path) -> None:
    for roles, words in [
        (("worker", "worker"), ":4: no hosts with a controller role defined (k0sctl's words)"),
        (("controller", "controller"), ":4: no host runs workloads: give at least one host role: worker"),
        (("single", "worker"), ":5: 2 hosts defined but includes a host with role 'single' (k0sctl's words)"),
        ((), ":4: spec.hosts: at least one host required"),
    ]:
        path = _write(tmp_path, _hosts(*roles) if roles else _hosts().replace("  hosts:\n", "  hosts: []\n"))
        with pytest.raises(InputError, match=words.replace("(", r"\(").replace(")", r"\)")):
            k0sctl.load(path)
    path = _write(tmp_path, "apiVersion: k0sctl.k0sproject.io/v1beta1\nkind: Cluster\nspec:\n  hosts: [1\n")
    with pytest.raises(InputError, match=r"k0sctl.yaml:5: not a valid k0sctl.yaml"):
        k0sctl.load(path)


def test_topology_of_a_k0sctl_yaml_for_a_product_that_forbids_shared_roles(tmp_path: Path) -> None:
    """KUMA: combined controller+worker only for a demo; the finding names the host's line."""
    from dataclasses import replace

    from .test_plan import _lock

    lock = replace(_lock(), cluster={"kind": "k0s", "shared_roles": "demo-only"}, min_workers=2)
    nodes = k0sctl.load(_write(tmp_path, DOCS)).nodes
    assert [f for f in topology_findings(lock, nodes) if f.severity == "problem"] == []
    demo = k0sctl.load(_write(tmp_path, _hosts("controller+worker", "worker", "worker"))).nodes
    found = [f for f in topology_findings(lock, demo) if f.severity == "problem"]
    assert found[0].message.startswith("1 controller node(s): quorum 1, tolerates 0 failure(s)")
    (problem,) = [f for f in found if "share" in f.message]
    assert problem.line == 5 and "controller and worker roles share 10.0.0.1" in problem.message
    assert "--demo" in problem.message
    assert [f.severity for f in topology_findings(lock, demo, demo=True) if "share" in f.message] == [
        "warning"
    ]


def test_install_sh_tells_a_k0sctl_yaml_from_a_cluster_yml(built: Path, keys, tmp_path: Path) -> None:
    """install.sh reads the inventory it is given by its apiVersion: a mistake in a k0sctl.yaml is
    refused with its line (exit 2), and a k0sctl.yaml for a bundle that is no k0s bundle is named."""
    from .test_installer import _install, _site

    site = _site(built, tmp_path)
    (site / "cluster.yml").write_text(DOCS.replace("    hostname: kuma-w1\n", "    hostnme: kuma-w1\n"))
    bad = _install(site, keys, "--dry-run", "--offline")
    assert bad.returncode == 2 and "cluster.yml:28: spec.hosts[3]: unknown key 'hostnme'" in bad.stderr, (
        bad.stderr
    )
    assert "Traceback" not in bad.stderr
    (site / "cluster.yml").write_text(DOCS)
    other = _install(site, keys, "--dry-run", "--offline")
    assert other.returncode == 2 and "cluster.yml: a k0sctl.yaml, but demo" in other.stderr, other.stderr


def test_the_readmes_k0sctl_yaml_reads_as_written(tmp_path: Path) -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    block = readme.split("apiVersion: k0sctl.k0sproject.io/v1beta1\n", 1)[1].split("```", 1)[0]
    config = k0sctl.load(_write(tmp_path, "apiVersion: k0sctl.k0sproject.io/v1beta1\n" + block))
    assert [h.role for h in config.hosts] == ["controller"] * 3 + ["worker"] * 2
    assert config.version == "v1.28.15+k0s.0"


@pytest.mark.parametrize("version", ["v1.29.1+k0s.0", None])
def test_a_k0s_version_other_than_the_bundles_is_refused(tmp_path: Path, version: str | None) -> None:
    """k0sctl installs the k0s version its file names and downloads any other: on an isolated site
    that fails after the images are placed. The installer refuses it first, naming the line."""
    k0s = f"  k0s:\n    version: {version}\n" if version else ""
    path = tmp_path / "k0sctl.yaml"
    path.write_text(
        "apiVersion: k0sctl.k0sproject.io/v1beta1\nkind: Cluster\nspec:\n  hosts:\n"
        "  - role: controller\n    ssh: {address: 10.0.0.1}\n  - role: worker\n    ssh: {address: 10.0.0.2}\n"
        + k0s
    )
    config = k0sctl.load(path)
    problem = config.version_problem("v1.28.15+k0s.0")
    assert problem is not None and "write spec.k0s.version: v1.28.15+k0s.0" in problem
    assert problem.startswith(f"{path}:10:" if version else f"{path}:")  # spec.k0s.version's line
    assert k0sctl.load(path).version_problem(version or "") is None


def test_install_flags_are_what_k0sctl_passes(tmp_path: Path) -> None:
    """k0sctl's K0sInstallFlags: --data-dir always (dataDir, or moved out of installFlags), the role's
    own flags, --token-file but on the first controller, --config on controllers, and the kubelet's
    --node-ip / --hostname-override from privateAddress / hostname."""
    text = DOCS.replace("    - --labels=kuma=core\n", "    - --labels=kuma=core\n    - --data-dir=/srv/k0s\n")
    text = text.replace("      address: 10.0.0.2\n      user: root\n      keyPath: ~/.ssh/id_rsa\n",
                        "      address: 10.0.0.2\n      user: root\n      keyPath: ~/.ssh/id_rsa\n"
                        "    dataDir: /data/k0s\n    installFlags: [--enable-worker, --config=/etc/k0s/own.yaml]\n")  # fmt: skip
    config = k0sctl.load(_write(tmp_path, text))
    leader, second, _, w1, w2 = config.hosts
    assert leader.install_flags_for(True, "/etc/k0s/t") == [
        "--data-dir=/var/lib/k0s",
        "--config=/etc/k0s/k0s.yaml",
    ]
    assert (
        second.role == "controller+worker" and second.images_dir == "/data/k0s/images"
    )  # as k0sctl's SetDefaults
    assert second.install_flags_for(False, "/etc/k0s/t") == [
        "--enable-worker", "--config=/etc/k0s/own.yaml", "--data-dir=/data/k0s", "--token-file=/etc/k0s/t",
    ]  # fmt: skip
    assert (w1.data_dir, w1.install_flags) == ("/srv/k0s", ("--labels=kuma=core",))
    assert w1.install_flags_for(False, "/etc/k0s/t") == [
        "--labels=kuma=core", "--data-dir=/srv/k0s", "--token-file=/etc/k0s/t",
        "--kubelet-extra-args=--node-ip=192.168.0.4 --hostname-override=kuma-w1",
    ]  # fmt: skip
    assert w2.install_flags_for(False, "/t") == ["--data-dir=/var/lib/k0s", "--token-file=/t"]


def test_the_k0s_config_is_what_k0sctl_writes(tmp_path: Path) -> None:
    import yaml

    text = DOCS.replace("  - role: controller\n    ssh:\n      address: 10.0.0.2\n",
                        "  - role: controller\n    privateAddress: 192.168.0.2\n    ssh:\n      address: 10.0.0.2\n")  # fmt: skip
    config = k0sctl.load(_write(tmp_path, text))
    doc = yaml.safe_load(config.k0s_yaml(config.hosts[1]))
    assert doc["apiVersion"] == "k0s.k0sproject.io/v1beta1" and doc["kind"] == "ClusterConfig"
    assert doc["spec"]["images"] == {"default_pull_policy": "Never"}  # the file's own settings kept
    assert doc["spec"]["api"] == {
        "address": "192.168.0.2",
        "sans": ["10.0.0.1", "192.168.0.2", "10.0.0.3", "127.0.0.1"],
    }
    assert config.config is not None and "api" not in config.config["spec"]  # the file's data not changed


@pytest.mark.parametrize(
    "old, new, words",
    [
        ("    hostname: kuma-w1\n", "    hostname: kuma-w1\n    dataDir: relative/k0s\n", "dataDir 'relative/k0s' must be an absolute path"),
        ("    privateAddress: 192.168.0.4\n", "    privateAddress: 'a b'\n", "privateAddress must be an address"),
        ("    - --labels=kuma=core\n", "    - --labels=kuma=core\n    - --token-file=worker-token\n",
         "installFlags --token-file 'worker-token' must be an absolute path"),
        ("    - --labels=kuma=core\n", "    - --labels=kuma=core\n    - '--config=\"/etc/k0s/my k0s.yaml\"'\n",
         "installFlags --config '/etc/k0s/my k0s.yaml' must be an absolute path"),
    ],
)  # fmt: skip
def test_host_folders_and_addresses_are_checked(tmp_path: Path, old: str, new: str, words: str) -> None:
    with pytest.raises(InputError, match=words):
        k0sctl.load(_write(tmp_path, DOCS.replace(old, new)))


def test_install_flags_reach_k0s_as_k0sctl_passes_them(tmp_path: Path) -> None:
    """k0sctl's Flags: the name ends at the first = or space, the value's quotes go, one argument."""
    assert k0sctl.normalized_flag('--labels="a=b,c=d"') == "--labels=a=b,c=d"
    assert k0sctl.normalized_flag("--kubelet-extra-args '--node-ip=10.0.0.4 --v=2'") == (
        "--kubelet-extra-args=--node-ip=10.0.0.4 --v=2"
    )
    assert k0sctl.normalized_flag("--debug") == "--debug"
    text = DOCS.replace(
        "    - --labels=kuma=core\n", "    - '--labels=\"kuma=core\"'\n    - --token-file /etc/k0s/t2\n"
    )
    w1 = k0sctl.load(_write(tmp_path, text)).hosts[3]
    assert w1.install_flags == ("--labels=kuma=core", "--token-file=/etc/k0s/t2")


def test_a_join_token_that_inflates_without_end_is_refused() -> None:
    """A leader's answer is not trusted to be a token: a gzip bomb is refused, not inflated."""
    import base64
    import gzip

    from bundler.errors import InstallError
    from bundler.installer import k0s

    bomb = base64.b64encode(gzip.compress(b"\0" * (32 * 1024 * 1024))).decode()
    assert len(bomb) < k0s.MAX_TOKEN
    with pytest.raises(InstallError, match=r"printed no join token \(it inflates past 65536 bytes\)"):
        k0s.token_id(bomb)
    with pytest.raises(InstallError, match=r"printed 70000 bytes, not a join token"):
        k0s.token_id("A" * 70000)
    good = base64.b64encode(gzip.compress(b"users:\n- user:\n    token: abcdef.0123456789abcdef\n")).decode()
    assert k0s.token_id(good) == "abcdef"
