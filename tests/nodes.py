"""Simulated cluster nodes for the tests (TESTBED.md): one sshd and one Docker engine per node.

Each node has its own loopback address (127.0.0.x), its own sshd on port 2222 with
its own host key, and its own dockerd; sshd's ``SetEnv`` points ``docker`` at that
node's engine, so ``ssh node docker load`` reaches the right engine. A shared
client key and an ``ssh_config`` (known hosts pinned, BatchMode) are what the
installer gets, like an operator's ``~/.ssh/config``.

A node's sshd and dockerd share a mount namespace in which ``/etc/docker/certs.d``
is the node's own folder (``Node.certs``), so a registry CA written there over
SSH is trusted by that node's engine only. ``SiteNet`` is a network namespace
joined to the host by a veth pair: a node inside it has a non-loopback address,
which Docker treats as a registry whose TLS certificate it must verify.

A node made with ``containerd=True`` runs its own ``containerd`` instead (``Containerd``: its
own root, state and socket; CRI off as Docker's containerd.io package ships it), in a mount
namespace where ``/etc/containerd`` is the node's own folder (``Node.ctr_etc``, with ``certs.d``
as ``Node.ctr_certs``) and ``systemctl`` the stand-in that restarts that containerd; sshd's
``SetEnv CONTAINERD_ADDRESS`` points ``ctr`` at that socket, as ``DOCKER_HOST`` does for ``docker``.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from .engines import Engine

SSH_PORT = 2222


class Client:
    """The operator's SSH identity and config for reaching the nodes."""

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self.key = folder / "id_ed25519"
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "operator", "-f", str(self.key)], check=True
        )
        self.known_hosts = folder / "known_hosts"
        self.known_hosts.write_text("")
        self.config = folder / "ssh_config"
        self.config.write_text(
            f"Host 127.* 10.254.*\n  IdentityFile {self.key}\n  UserKnownHostsFile {self.known_hosts}\n"
            "  StrictHostKeyChecking yes\n  IdentitiesOnly yes\n  LogLevel ERROR\n"
        )


def ensure_user(name: str, docker_group: bool) -> None:
    """A local account for a node's SSH user (every node is this machine): in the docker group or not."""
    if subprocess.run(["id", name], capture_output=True).returncode != 0:
        subprocess.run(["useradd", "-M", "-d", "/nonexistent", "-s", "/bin/sh", name], check=True)
    subprocess.run(["usermod", "-p", "*", name], check=True)  # no password, but not locked: sshd lets keys in
    subprocess.run(["gpasswd", "-a" if docker_group else "-d", name, "docker"], capture_output=True)


class Containerd:
    """A containerd of one node: its own root, state and socket under ``folder``, in its own mount
    namespace where ``etc`` is mounted on /etc/containerd (its ``config.toml`` and ``certs.d``),
    ``kube`` on /etc/kubernetes and the systemctl and journalctl stand-ins (tests/standins) on
    /usr/bin. It starts as Docker's containerd.io package leaves it: ``disabled_plugins =
    ["cri"]``. A loop in that namespace runs it again, with whatever /etc/containerd/config.toml then
    says, whenever it exits: that is what ``systemctl restart containerd`` on the node does."""

    def __init__(self, folder: Path, etc: Path, kube: Path) -> None:
        self.root = folder
        self.sock = folder / "c.sock"
        self.pidfile = folder / "containerd.pid"
        self.etc = etc
        (etc / "certs.d").mkdir(parents=True, exist_ok=True)
        kube.mkdir(parents=True, exist_ok=True)
        Path("/etc/containerd").mkdir(parents=True, exist_ok=True)
        Path("/etc/kubernetes").mkdir(parents=True, exist_ok=True)
        (etc / "config.toml").write_text('disabled_plugins = ["cri"]\n')  # containerd.io's own file
        self.log = open(folder / "containerd.log", "wb")  # noqa: SIM115 - closed in stop()
        standins = Path(__file__).resolve().parent / "standins"
        # its own /etc/containerd and /etc/kubernetes (what kubeadm writes on a node), systemctl, journalctl
        run = (
            'mount --bind "$0" /etc/containerd && mount --bind "$1" /etc/kubernetes && '
            'mount --bind "$2/systemctl-containerd" /usr/bin/systemctl && mount --bind "$2/journalctl" /usr/bin/journalctl && '
            'while [ ! -e "$3/stop" ]; do containerd --config /etc/containerd/config.toml --root "$3/root" '
            '--state "$3/state" --address "$3/c.sock" & echo $! > "$3/containerd.pid"; wait $!; sleep 0.2; done'
        )
        self.proc = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c", run, str(etc), str(kube),
             str(standins), str(folder)],
            stdout=self.log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        self.wait_ready()

    def wait_ready(self, timeout: float = 30) -> None:
        """Until this containerd answers (after a start or a restart)."""
        deadline = time.monotonic() + timeout
        while subprocess.run(self.ctr("version"), capture_output=True).returncode != 0:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"containerd did not start: {(self.root / 'containerd.log').read_text()[-2000:]}")
            time.sleep(0.1)

    def dump(self, config: Path | None = None) -> str:
        """What real containerd makes of ``config`` (default: the node's config.toml): ``config dump``."""
        done = subprocess.run(
            ["containerd", "--config", str(config or self.etc / "config.toml"), "config", "dump"],
            capture_output=True, text=True,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        return done.stdout

    def pid(self) -> int:
        return int(self.pidfile.read_text())

    def reset_config(self) -> None:
        """Back to containerd.io's config.toml (CRI off), restarted when it was not that."""
        config = self.etc / "config.toml"
        (self.etc / "config.toml.airbundle-orig").unlink(missing_ok=True)
        if config.read_text() == 'disabled_plugins = ["cri"]\n':
            return
        config.write_text('disabled_plugins = ["cri"]\n')
        old = self.pid()
        subprocess.run(["kill", str(old)], check=True)
        deadline = time.monotonic() + 30
        while not self.pidfile.exists() or self.pidfile.read_text().strip() in ("", str(old)):
            assert time.monotonic() < deadline, "containerd was not started again"
            time.sleep(0.05)
        self.wait_ready()

    def ctr(self, *args: str) -> list[str]:
        """``ctr`` against this containerd, in the ``k8s.io`` namespace."""
        return ["ctr", "-a", str(self.sock), "-n", "k8s.io", *args]

    def images(self) -> dict[str, str]:
        """name -> manifest digest of what its ``k8s.io`` namespace holds."""
        out = subprocess.run(self.ctr("images", "ls"), capture_output=True, text=True, check=True).stdout
        return {f[0]: f[2] for f in (line.split() for line in out.splitlines()[1:]) if len(f) >= 3}

    def clear(self) -> None:
        """Remove every image (each test starts from an empty namespace)."""
        names = list(self.images())
        if names:
            subprocess.run(self.ctr("images", "rm", *names), capture_output=True, check=True)
        subprocess.run(self.ctr("content", "prune", "references"), capture_output=True)

    def stop(self) -> None:
        (self.root / "stop").touch()  # the loop ends with this containerd
        if self.proc.poll() is None:
            try:
                subprocess.run(["kill", str(self.pid())], capture_output=True)
            except (OSError, ValueError):
                pass
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        # its snapshots may stay mounted in its namespace only, which is gone with it
        subprocess.run(["rm", "-rf", str(self.root)], capture_output=True)


class Node:
    """One node: sshd on ADDRESS:2222 (root by default, key only) and its own Docker engine.

    ``user`` is the SSH user the inventory names (another one than root is made a local
    account, in the ``docker`` group when ``docker_group``); ``sshd_extra`` lines go into
    the node's sshd_config (e.g. ``AllowTcpForwarding no``).
    """

    def __init__(
        self,
        address: str,
        name: str,
        client: Client,
        docker: bool = True,
        netns: str | None = None,
        user: str = "root",
        docker_group: bool = True,
        sshd_extra: str = "",
        os_release: str | None = None,
        containerd: bool = False,
        env: str = "",
        binds: tuple[str, ...] = (),
        overlays: tuple[str, ...] = (),
    ) -> None:
        sshd = shutil.which("sshd") or "/usr/sbin/sshd"
        if not Path(sshd).exists():
            pytest.fail("sshd is not installed; run 'make install' (it installs openssh-server)")
        self.address, self.name, self.user = address, name, user
        self.client_key = client.key
        self.root = Path(tempfile.mkdtemp(prefix=f"ab-{name}-", dir="/tmp"))
        if user != "root":
            ensure_user(user, docker_group)
            self.root.chmod(0o711)  # sshd reads authorized_keys as the user
        self.certs = self.root / "certs.d"
        # Another OS for this node's processes: its own /etc/os-release, bound over the host's in the
        # node's mount namespace (e.g. Astra Linux SE's), so a preflight over SSH reads that one.
        self.os_release = None
        if os_release is not None:
            self.os_release = self.root / "os-release"
            self.os_release.write_text(os_release)
        self.netns = netns
        # Folders of this machine the node sees as its own (e.g. /var/lib/k0s, /usr/local/bin): sshd
        # runs in a private mount namespace where each is bound to ``self.root/binds/PATH``.
        self.binds = {target: self.root / "binds" / target.strip("/").replace("/", "_") for target in binds}
        for own in self.binds.values():
            own.mkdir(parents=True)
        # Folders of this machine the node's engine (and sshd) see with the node's own changes on
        # top (e.g. /var/lib: a registry the installer runs there keeps its data in the node's own).
        own = {target: self.root / "overlays" / target.strip("/").replace("/", "_") for target in overlays}
        self.engine = Engine(f"{name}-d", certs=self.certs, netns=netns, overlays=own) if docker else None
        self.ctr_etc = self.root / "containerd-etc"  # the node's /etc/containerd
        self.ctr_certs = self.ctr_etc / "certs.d"
        self.containerd = (
            Containerd(
                Path(tempfile.mkdtemp(prefix=f"ab-{name}-c", dir="/tmp")),
                self.ctr_etc,
                self.root / "kubernetes",
            )
            if containerd
            else None
        )
        Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege-separation folder
        hostkey = self.root / "hostkey"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(hostkey)], check=True)
        shutil.copy(client.key.with_suffix(".pub"), self.root / "authorized_keys")
        (self.root / "authorized_keys").chmod(0o644)
        if self.engine is not None and user != "root":
            self.engine.root.chmod(0o711)  # the socket itself is root:docker 0660
        # Its own docker client config too: a ``docker login`` on one node is not seen by the others.
        env = (
            f"NODE_NAME={name} DOCKER_CONFIG={self.root / 'docker-config'}"
            + (f" DOCKER_HOST={self.engine.host}" if self.engine else "")
            + (
                f" CONTAINERD_ADDRESS={self.containerd.sock} CONTAINERD_PIDFILE={self.containerd.pidfile}"
                f" SYSTEMCTL_STANDIN_LOG={self.root / 'systemctl.log'} KUBELET_STANDIN_LOG={self.root / 'kubelet.log'}"
                f" KUBELET_STANDIN={Path(__file__).resolve().parent / 'standins' / 'kubelet'}"
                if self.containerd
                else ""
            )
            + (f" {env}" if env else "")
        )
        (self.root / "sshd_config").write_text(
            f"ListenAddress {address}:{SSH_PORT}\nHostKey {hostkey}\n"
            f"AuthorizedKeysFile {self.root / 'authorized_keys'}\nPermitRootLogin prohibit-password\n"
            f"PasswordAuthentication no\nStrictModes no\nPidFile {self.root / 'sshd.pid'}\nSetEnv {env}\n"
            f"UsePAM no\n{sshd_extra}"
        )
        pub = hostkey.with_suffix(".pub").read_text().split()
        with open(client.known_hosts, "a") as f:
            f.write(f"[{address}]:{SSH_PORT} {pub[0]} {pub[1]}\n")
        self.start()

    def start(self) -> None:
        enter: list[str] = []
        if self.engine is not None:  # into the engine's namespaces: its certs.d, its network
            enter = ["nsenter", "-t", str(self.engine.proc.pid), "-m", *(["-n"] if self.netns else [])]
        elif self.containerd is not None:  # into containerd's mount namespace: its certs.d
            enter = ["nsenter", "-t", str(self.containerd.proc.pid), "-m"]
        elif self.netns:
            enter = ["nsenter", f"--net=/run/netns/{self.netns}"]
        if self.binds and self.engine is None:
            mounts = []
            for target, own in self.binds.items():
                Path(target).mkdir(parents=True, exist_ok=True)
                mounts.append(f"mount --bind {own} {target}")
            # inside the namespaces the node already enters (containerd's mounts), then its own
            # binds on top: made before an nsenter, they would be left behind in another namespace
            enter = [*enter, "unshare", "--mount", "--propagation", "private", "sh", "-c",
                     " && ".join([*mounts, 'exec "$@"']), "sh"]  # fmt: skip
        if self.os_release is not None:
            if not enter:  # a mount namespace of its own, as the engine's would be
                enter = ["unshare", "--mount", "--propagation", "private"]
            enter += ["sh", "-c", 'mount --bind "$0" /etc/os-release && exec "$@"', str(self.os_release)]
        subprocess.run(
            [
                *enter,
                "/usr/sbin/sshd",
                "-f",
                str(self.root / "sshd_config"),
                "-E",
                str(self.root / "sshd.log"),
            ],
            check=True,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection((self.address, SSH_PORT), 0.5).close()
                return
            except OSError:
                time.sleep(0.05)
        pytest.fail(f"sshd on {self.address} did not start: {(self.root / 'sshd.log').read_text()}")

    def kill_sshd(self) -> None:
        """A node failure: its sshd stops answering."""
        pid = (self.root / "sshd.pid").read_text().strip()
        subprocess.run(["kill", pid], check=False)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                socket.create_connection((self.address, SSH_PORT), 0.2).close()
                time.sleep(0.05)
            except OSError:
                return

    def stop(self) -> None:
        if (self.root / "sshd.pid").exists():
            self.kill_sshd()
        if self.engine:
            self.engine.stop()
        if self.containerd:
            self.containerd.stop()
        shutil.rmtree(self.root, ignore_errors=True)


def cluster_yml(nodes: list[Node], workers: set[str]) -> str:
    """An RKE cluster.yml for the test nodes: the named ones are workers, the others control plane."""
    # The key rke logs in with (cluster.yml's own; rke reads no ssh config): the operator's.
    lines = [f"ssh_key_path: {nodes[0].client_key}", "nodes:"] if nodes else ["nodes:"]
    for node in nodes:
        role = "[worker]" if node.name in workers else "[controlplane, etcd]"
        lines.append(
            f"  - {{address: {node.address}, port: {SSH_PORT}, user: root, role: {role}, "
            f"hostname_override: {node.name}}}"
        )
    return "\n".join(lines) + "\n"


def rke_cluster_yml(nodes: list[Node], roles: dict[str, str], key: Path, extra: str = "") -> str:
    """A cluster.yml as rke reads it: each node's own user and Docker socket, the operator's key."""
    lines = [f"ssh_key_path: {key}", "nodes:"]
    for node in nodes:
        socket_ = f", docker_socket: {node.engine.sock}" if node.engine else ""
        lines.append(
            f"  - {{address: {node.address}, port: {SSH_PORT}, user: {node.user}, role: {roles[node.name]}, "
            f"hostname_override: {node.name}{socket_}}}"
        )
    return "\n".join(lines) + "\n" + extra


class SiteNet:
    """A network namespace joined to the host by a veth pair: host side .1, namespace side .2 of a /30
    (or the two ends given by ``host`` and ``inside``)."""

    def __init__(
        self, name: str = "ab-site", subnet: str = "10.254.73", host: int = 1, inside: int = 2
    ) -> None:
        # host and inside: the last octets of the two ends, within one /30 (e.g. 6 and 5 for .5 inside)
        self.name, self.host_address, self.address = name, f"{subnet}.{host}", f"{subnet}.{inside}"
        self.link = f"{name[:10]}0"
        subprocess.run(["ip", "netns", "del", name], capture_output=True)  # a leftover of a killed run
        subprocess.run(["ip", "link", "del", self.link], capture_output=True)
        for command in (
            f"ip netns add {name}",
            f"ip link add {self.link} type veth peer name {name[:10]}1",
            f"ip link set {name[:10]}1 netns {name}",
            f"ip addr add {self.host_address}/30 dev {self.link}",
            f"ip link set {self.link} up",
            f"ip -n {name} addr add {self.address}/30 dev {name[:10]}1",
            f"ip -n {name} link set {name[:10]}1 up",
            f"ip -n {name} link set lo up",
        ):
            done = subprocess.run(command.split(), capture_output=True, text=True)
            if done.returncode != 0:
                self.stop()
                pytest.fail(f"{command}: {done.stderr.strip()} (network namespaces need root)")

    def stop(self) -> None:
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True)
        subprocess.run(["ip", "link", "del", self.link], capture_output=True)
