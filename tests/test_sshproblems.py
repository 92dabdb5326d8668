"""What the installer says when OpenSSH itself fails, against a real sshd: an unknown host key
(with the ssh-keyscan line to add it), a changed one, a refused login (which key, which user), a
node that does not answer (address and port); and the roles an inventory lacks (pure)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from bundler.installer.inventory import Node, role_problems
from bundler.installer.remote import RemoteError, SshOptions, run

from .nodes import SSH_PORT, Client
from .nodes import Node as LoopbackNode

ADDRESS = "127.0.0.61"


@pytest.fixture(scope="module")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Client, LoopbackNode]]:
    client = Client(tmp_path_factory.mktemp("ssh-client"))
    node = LoopbackNode(ADDRESS, "lonely", client, docker=False)
    try:
        yield client, node
    finally:
        node.stop()


def _refusal(node: Node, config: Path) -> str:
    with pytest.raises(RemoteError) as info:
        run(node, SshOptions(config=config, connect_timeout=5), "true", timeout=30)
    return str(info.value)


def test_a_known_node_answers(sshd) -> None:
    client, _ = sshd
    assert run(Node(ADDRESS, "root", ("worker",), SSH_PORT), SshOptions(client.config), "echo hi") == "hi\n"


def test_an_unknown_host_key_says_how_to_add_it(sshd, tmp_path: Path) -> None:
    client, _ = sshd
    config = tmp_path / "ssh_config"
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    config.write_text(client.config.read_text().replace(str(client.known_hosts), str(empty)))
    message = _refusal(Node(ADDRESS, "root", ("worker",), SSH_PORT), config)
    assert f"the host key of {ADDRESS}:{SSH_PORT} is not known to ssh" in message
    assert f"ssh-keyscan -p {SSH_PORT} {ADDRESS} >> ~/.ssh/known_hosts" in message


def test_a_changed_host_key_says_stop(sshd, tmp_path: Path) -> None:
    client, _ = sshd
    config = tmp_path / "ssh_config"
    other = tmp_path / "known_hosts"
    stranger = (client.folder / "id_ed25519.pub").read_text().split()  # some other ed25519 key
    other.write_text(f"[{ADDRESS}]:{SSH_PORT} {stranger[0]} {stranger[1]}\n")
    config.write_text(client.config.read_text().replace(str(client.known_hosts), str(other)))
    message = _refusal(Node(ADDRESS, "root", ("worker",), SSH_PORT), config)
    assert "has CHANGED since it was recorded" in message and f"ssh-keygen -R {ADDRESS}" in message


def test_a_refused_login_names_the_user_and_the_key(sshd, tmp_path: Path) -> None:
    client, _ = sshd
    message = _refusal(Node(ADDRESS, "nobody", ("worker",), SSH_PORT, str(client.key)), client.config)
    assert f"SSH login as nobody@{ADDRESS} refused" in message
    assert f"put the public half of {client.key} in ~nobody/.ssh/authorized_keys" in message


def test_a_node_that_does_not_answer_names_address_and_port(sshd) -> None:
    client, _ = sshd
    message = _refusal(Node(ADDRESS, "root", ("worker",), 2299), client.config)
    assert f"unreachable over SSH at {ADDRESS}:2299" in message and "Connection refused" in message
    assert "is the node up, sshd running, and the port right?" in message


def test_roles_an_inventory_lacks() -> None:
    cp = Node("a", "u", ("controlplane", "etcd"))
    worker = Node("b", "u", ("worker",))
    assert role_problems([cp, worker], cluster=True) == []
    assert role_problems([cp], cluster=True) == ["no node has the worker role"]
    assert role_problems([worker], cluster=True) == [
        "no node has the etcd role",
        "no node has the controlplane role",
    ]
    assert role_problems([worker], cluster=False) == []
    assert role_problems([cp], cluster=False) == ["no node has the worker role"]
