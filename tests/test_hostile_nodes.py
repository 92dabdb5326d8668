"""A node that lies, against the real installer code over real OpenSSH: a node is reached, not
trusted. Its sshd runs every command through a script of the test's (``ForceCommand``), which
answers as an attacker who owns that node would:

- an admin kubeconfig whose user is an ``exec`` command (kubectl would run it on the control
  node, as root, when the steps use ``KUBECONFIG``): refused, nothing saved, nothing run;
- an endless answer: the installer stops reading at ``remote.MAX_ANSWER`` and names the node,
  instead of filling the control node's memory;
- terminal control sequences in its answers (a window title, hidden text): shown as ``\\xNN``,
  never obeyed.
"""

from __future__ import annotations

import re
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from bundler.errors import InstallError
from bundler.installer import kubeadmup, kubeconfig, remote
from bundler.installer.inventory import Node
from bundler.text import printable

from .nodes import SSH_PORT, Client
from .nodes import Node as LoopbackNode

ADDRESS = "127.0.0.62"
HASH = "sha256:" + "ab" * 32
GOOD = """apiVersion: v1
kind: Config
clusters:
- cluster:
    certificate-authority-data: Q0E=
    server: https://10.0.0.100:6443
  name: kubernetes
contexts:
- context: {cluster: kubernetes, user: kubernetes-admin}
  name: kubernetes-admin@kubernetes
current-context: kubernetes-admin@kubernetes
preferences: {}
users:
- name: kubernetes-admin
  user:
    client-certificate-data: Q0VSVA==
    client-key-data: S0VZ
"""


def _evil(marker: Path) -> str:
    user = f"  user:\n    exec:\n      apiVersion: client.authentication.k8s.io/v1\n      command: /bin/sh\n      args: [-c, 'touch {marker}']\n"
    return GOOD.replace(GOOD[GOOD.index("  user:\n    client-certificate-data") :], user)


@pytest.fixture(scope="module")
def liar(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Client, Path, Path]]:
    """A node whose every answer comes from ``answers.sh`` (rewritten by each test)."""
    folder = tmp_path_factory.mktemp("liar")
    script = folder / "answers.sh"
    script.write_text("#!/bin/sh\nexit 0\n")
    script.chmod(0o755)
    client = Client(folder / "client")
    node = LoopbackNode(ADDRESS, "liar", client, docker=False, sshd_extra=f"ForceCommand {script}\n")
    try:
        yield client, script, folder
    finally:
        node.stop()


def _answer(script: Path, body: str) -> None:
    script.write_text("#!/bin/sh\n" + body)


NODE = Node(ADDRESS, "root", ("controlplane", "etcd", "worker"), SSH_PORT, hostname_override="cp-1")


def test_a_kubeconfig_that_runs_a_command_is_refused(liar, tmp_path: Path) -> None:
    """kubeadm's bring-up from a node that answers init as kubeadm would, then an exec kubeconfig."""
    client, script, folder = liar
    marker = tmp_path / "PWNED"
    (folder / "admin.conf").write_text(_evil(marker))
    _answer(
        script,
        'case "$SSH_ORIGINAL_COMMAND" in\n'
        "  *config.toml*) cat >/dev/null; echo unchanged ;;\n"  # containerd is configured already
        "  *'kubeadm init'*) cat >/dev/null;"
        f' echo "kubeadm join 10.0.0.100:6443 --token t --discovery-token-ca-cert-hash {HASH}";'
        " echo airbundle-exit=0 ;;\n"
        "  *'token delete'*) echo airbundle-exit=0 ;;\n"
        f"  *admin.conf*) cat {folder / 'admin.conf'} ;;\n"
        "esac\n",
    )
    work = tmp_path / "work"
    work.mkdir()
    results = kubeadmup.bring_up([NODE], None, "/usr/local/bin/kubeadm", "v1.28.15",
                                 remote.SshOptions(client.config), work, lambda _: None,
                                 "registry.k8s.io/pause:3.9")  # fmt: skip
    assert results[0].error is not None
    assert "users[0].user.exec (kubectl would act on it here)" in results[0].error
    assert "cp-1's /etc/kubernetes/admin.conf" in results[0].error and "nothing saved" in results[0].error
    assert not (work / "admin.conf").exists() and not marker.exists()
    assert [p.name for p in work.iterdir()] == ["logs"]  # no temporary file left either


def test_a_plain_admin_kubeconfig_is_kept_0600(tmp_path: Path) -> None:
    target = kubeconfig.save(GOOD, "cp-1", tmp_path / "admin.conf")
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    kept = kubeconfig.checked(target.read_text(), "again")
    assert kept["users"][0]["user"]["client-key-data"] == "S0VZ"
    assert kept["clusters"][0]["cluster"]["server"] == "https://10.0.0.100:6443"
    assert "preferences" not in kept


@pytest.mark.parametrize(
    "swap, field",
    [
        (("client-key-data: S0VZ", "client-key: /root/.ssh/id_ed25519"), "users[0].user.client-key"),
        (("client-key-data: S0VZ", "tokenFile: /etc/shadow"), "users[0].user.tokenFile"),
        (("client-key-data: S0VZ", "auth-provider: {name: oidc}"), "users[0].user.auth-provider"),
        (("certificate-authority-data: Q0E=", "certificate-authority: /etc/ssl/x"),
         "clusters[0].cluster.certificate-authority"),
        (("certificate-authority-data: Q0E=", "proxy-url: http://10.9.9.9:3128"), "clusters[0].cluster.proxy-url"),
    ],
)  # fmt: skip
def test_fields_kubectl_acts_on_are_refused(tmp_path: Path, swap: tuple[str, str], field: str) -> None:
    with pytest.raises(InstallError, match=re.escape(f"has {field} ")):
        kubeconfig.save(GOOD.replace(*swap), "cp-1", tmp_path / "admin.conf")
    assert not list(tmp_path.iterdir())


def test_a_plain_http_server_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InstallError, match=r"server that is not an https:// URL"):
        kubeconfig.checked(GOOD.replace("https://", "http://"), "cp-1")


def test_an_endless_answer_is_cut_and_names_the_node(liar) -> None:
    client, script, _ = liar
    _answer(script, "exec head -c 100000000 /dev/zero\n")
    with pytest.raises(remote.RemoteError) as info:
        remote.run(NODE, remote.SshOptions(client.config), "uname -m")
    assert str(info.value).startswith("cp-1: 'uname' answered more than 16 MiB")


def test_control_sequences_in_answers_are_shown_not_obeyed(liar) -> None:
    client, script, _ = liar
    _answer(script, "printf 'armv7\\033]0;OWNED\\007\\033[8m\\n'; printf 'oops\\033[2A\\n' >&2; exit 3\n")
    with pytest.raises(remote.RemoteError) as info:
        remote.run(NODE, remote.SshOptions(client.config), "uname -m")
    assert "oops\\x1b[2A" in str(info.value) and "\x1b" not in str(info.value)
    _answer(script, "printf 'armv7\\033]0;OWNED\\007\\033[8m\\n'\n")
    said = remote.run(NODE, remote.SshOptions(client.config), "uname -m")
    assert said == "armv7\\x1b]0;OWNED\\x07\\x1b[8m\n"
    assert printable("tab\tand\nnewline \x9b\x7f") == "tab\tand\nnewline \\x9b\\x7f"
    assert printable("abc\u202edcb\u2066") == "abc\\u202edcb\\u2066"  # bidi: shown, not obeyed
