"""Commands on the cluster's nodes through the system OpenSSH client (the installer's only ssh user).

Every call uses ``BatchMode`` (never a password prompt), a connect timeout
and keep-alives; host keys are checked as the operator's ssh config says
(``--ssh-config``, else ``~/.ssh/config`` and ``known_hosts``). Data goes to a
node through ssh's stdin as a stream, never through a temporary copy.
"""

import os
import subprocess
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO, Callable, Iterator, List, Optional, TypeVar

from bundler.compat import dataclass
from bundler.errors import InstallError
from bundler.installer.inventory import Node
from bundler.text import printable

T = TypeVar("T")


class RemoteError(InstallError):
    """A command on a node failed, or the node could not be reached; names the node."""

    def __init__(self, node: Node, message: str) -> None:
        super().__init__(f"{node.name}: {message}")
        self.node = node


@dataclass(frozen=True)
class SshOptions:
    """How to reach the nodes."""

    config: Optional[Path] = None
    connect_timeout: int = 10


def ssh_argv(node: Node, opts: SshOptions, command: str) -> List[str]:
    argv = ["ssh"]
    if opts.config is not None:
        argv += ["-F", str(opts.config)]
    argv += [
        "-o",
        "BatchMode=yes",
        "-o",
        f"ConnectTimeout={opts.connect_timeout}",
        "-o",
        "ServerAliveInterval=15",
        "-o",
        "ServerAliveCountMax=4",
        "-p",
        str(node.port),
    ]
    if node.ssh_key_path:
        argv += ["-i", node.ssh_key_path]
    return [*argv, "--", f"{node.user}@{node.address}", command]  # "--": never an option (defence in depth)


# rke v1.4.11 (hosts/tunnel.go) reads the key at ssh_key_path (``~/`` is $HOME), logs in as the
# node's user on its port with that key alone, and accepts any host key (InsecureIgnoreHostKey):
# no ssh config, no agent (unless ssh_agent_auth), no known_hosts.
RKE_DEFAULT_KEY = "~/.ssh/id_rsa"


def rke_key_path(node: Node) -> str:
    """The key file rke logs in to ``node`` with: its ``ssh_key_path`` (or the file's), else rke's default."""
    return os.path.expanduser(node.ssh_key_path or RKE_DEFAULT_KEY)


def rke_login_argv(node: Node, connect_timeout: int = 10) -> List[str]:
    """An ssh that logs in as rke would: only cluster.yml's key, the node's user and port."""
    return [
        "ssh", "-F", "/dev/null", "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes",
        "-o", "IdentityAgent=none", "-o", "PreferredAuthentications=publickey",
        "-o", "StrictHostKeyChecking=no",
        "-o", "UserKnownHostsFile=/dev/null", "-o", "GlobalKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
        "-o", f"ConnectTimeout={connect_timeout}", "-i", rke_key_path(node), "-p", str(node.port),
        "--", f"{node.user}@{node.address}", "true",
    ]  # fmt: skip


def rke_login_problem(node: Node, connect_timeout: int = 10) -> Optional[str]:
    """Why rke could not log in to ``node`` (None when it can): the key cluster.yml names is missing
    or unreadable here, or the node refuses it, or the node cannot be reached the way rke dials it.
    The installer's own ssh may still get in (through the operator's ssh config or agent), which
    is why this is checked apart: ``rke up`` would leave such a node out."""
    if node.rke_key_elsewhere:  # the agent or an inline key: what rke reads there is not ours to see
        return None
    key = rke_key_path(node)
    said = (
        f"ssh_key_path {node.ssh_key_path}" if node.ssh_key_path else f"no ssh_key_path (rke's default {key})"
    )
    if not os.access(key, os.R_OK):
        return (
            f"rke could not log in: its key {key} ({said}) is missing or unreadable on this host; "
            "set ssh_key_path in cluster.yml (for the node or the whole file) to the private key whose "
            f"public half is in ~{node.user}/.ssh/authorized_keys on the node"
        )
    try:
        done = subprocess.run(  # Python 3.6 on the site: no capture_output, no text
            rke_login_argv(node, connect_timeout),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            universal_newlines=True,  # noqa: UP021
            timeout=connect_timeout + 20,
        )
    except subprocess.TimeoutExpired:
        return f"rke could not log in as {node.user}@{node.address}:{node.port} with {key}: no answer"
    if done.returncode == 0:
        return None
    detail = [line.strip() for line in done.stderr.strip().splitlines() if line.strip()]
    tail = " / ".join(detail[-2:]) or f"ssh exit code {done.returncode}"
    if "Permission denied" in done.stderr:
        return (
            f"rke could not log in as {node.user}@{node.address}:{node.port} with key {key} ({said}): "
            f"the node refuses it ({tail}); put {key}.pub in ~{node.user}/.ssh/authorized_keys on the "
            "node, or set ssh_key_path in cluster.yml to the key the node accepts (rke uses no ssh "
            "config and no agent)"
        )
    return f"rke could not log in as {node.user}@{node.address}:{node.port} with key {key} ({tail})"


def unknown_host_key(node: Node) -> str:
    """What to do about a node whose host key the installer's ssh does not know (one wording for
    the installer's own ssh and for the tools it runs, such as k0sctl)."""
    return (
        f"the host key of {node.address}:{node.port} is not known to ssh; add it after checking its "
        f"fingerprint with the node's administrator: 'ssh-keyscan -p {node.port} {node.address} >> "
        "~/.ssh/known_hosts' (or the UserKnownHostsFile your --ssh-config names)"
    )


def known_hosts_pattern(node: Node) -> str:
    """How known_hosts names ``node``: its address, or ``[ADDRESS]:PORT`` off port 22."""
    return node.address if node.port == 22 else f"[{node.address}]:{node.port}"


def known_host_entries(node: Node, opts: SshOptions) -> List[str]:
    """The known_hosts lines the installer's own ssh would check ``node``'s host key against; [] when
    it knows none (its first connection would fail: the installer never trusts on first use).

    The files are the ones the ssh config gives for this node (``ssh -G``: ``UserKnownHostsFile``
    and ``GlobalKnownHostsFile``, ``--ssh-config`` or ``~/.ssh/config``); the lines are what
    ``ssh-keygen -F`` finds there (hashed names included), so no known_hosts syntax is parsed here.
    A file name with a space in it is not supported (``ssh -G`` prints the list space-separated)."""
    argv = ["ssh", "-G"] + (["-F", str(opts.config)] if opts.config is not None else [])
    argv += ["-p", str(node.port), "--", f"{node.user}@{node.address}"]
    shown = subprocess.run(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        universal_newlines=True, timeout=30,  # noqa: UP021 - Python 3.6 on the site
    )  # fmt: skip
    if shown.returncode != 0:
        raise RemoteError(node, f"ssh -G could not read the ssh config: {shown.stderr.strip()[-300:]}")
    files: List[str] = []
    for line in shown.stdout.splitlines():
        key, _, value = line.partition(" ")
        if key in ("userknownhostsfile", "globalknownhostsfile"):
            files += [f for f in value.split() if f != "none"]
    found: List[str] = []
    for name in files:
        if not os.path.isfile(name):
            continue
        done = subprocess.run(
            ["ssh-keygen", "-F", known_hosts_pattern(node), "-f", name],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            universal_newlines=True, timeout=30,  # noqa: UP021
        )  # fmt: skip
        found += [x for x in done.stdout.splitlines() if x.strip() and not x.startswith("#")]
    return found


def ssh_problem(node: Node, stderr: str) -> str:
    """What OpenSSH's own failure (exit 255) means for ``node``, and what to do about it.

    Classified from ssh's messages, which are stable across OpenSSH releases: an unknown or
    changed host key, a refused login, a node that cannot be reached at all."""
    detail = [line.strip() for line in stderr.strip().splitlines() if line.strip()]
    tail = " / ".join(detail[-3:]) or "ssh exit code 255"
    where = f"{node.address}" + (f" -p {node.port}" if node.port != 22 else "")
    if "REMOTE HOST IDENTIFICATION HAS CHANGED" in stderr:
        return (
            f"the host key of {node.address}:{node.port} has CHANGED since it was recorded; if the node "
            f"was reinstalled, check the new key with its administrator, then 'ssh-keygen -R {node.address}' "
            "and add the new one; otherwise someone may be in the way: stop"
        )
    if "Host key verification failed" in stderr or "No ED25519 host key is known" in stderr:
        return unknown_host_key(node)
    if "Permission denied" in stderr:
        key = node.ssh_key_path or "the keys of your ssh config or agent"
        return (
            f"SSH login as {node.user}@{node.address} refused ({tail}): put the public half of {key} "
            f"in ~{node.user}/.ssh/authorized_keys on the node, or fix user/ssh_key_path in the inventory"
        )
    if any(m in stderr for m in ("Connection refused", "timed out", "No route to host", "Could not resolve")):
        return (
            f"unreachable over SSH at {node.address}:{node.port} ({tail}): is the node up, sshd running, "
            f"and the port right? ('ssh {node.user}@{where}' should log in)"
        )
    return f"unreachable over SSH ({tail})"


def _tool(command: str) -> str:
    """What ran, for a message: the command's first word past ``sudo -n`` (``sh -c`` scripts carry
    whole files: never the whole command)."""
    words = command.split()
    while words and words[0] in ("sudo", "-n"):
        words = words[1:]
    return (words[0] if words else command)[:80]


def _failure(node: Node, command: str, code: int, stderr: bytes) -> RemoteError:
    text = printable(stderr.decode(errors="replace"))
    if code == 255:
        return RemoteError(node, ssh_problem(node, text))
    detail = text.strip().splitlines()
    tail = " / ".join(detail[-3:]) or f"exit code {code}"
    return RemoteError(node, f"'{_tool(command)}' failed with exit code {code}: {tail[-600:]}")


MAX_ANSWER = 16 * 1024 * 1024  # bytes a node may answer on stdout (and on stderr) to one command


class _Capped:
    """Reads one of the node's streams into memory up to ``MAX_ANSWER`` bytes: a node is not
    trusted to answer briefly, and the control node must not run out of memory because one did."""

    def __init__(self, stream: IO[bytes], proc: "subprocess.Popen[bytes]") -> None:
        self.chunks: List[bytes] = []
        self.size = 0
        self.over = False
        self.thread = threading.Thread(target=self._read, args=(stream, proc), daemon=True)
        self.thread.start()

    def _read(self, stream: IO[bytes], proc: "subprocess.Popen[bytes]") -> None:
        while True:
            chunk = stream.read(65536)
            if not chunk:
                return
            self.size += len(chunk)
            if self.size > MAX_ANSWER:
                self.over = True
                proc.kill()  # stop the stream at its source; the caller says which node and command
                return
            self.chunks.append(chunk)

    def data(self) -> bytes:
        self.thread.join()
        return b"".join(self.chunks)


def _wait(
    node: Node, command: str, proc: "subprocess.Popen[bytes]", timeout: float, out: _Capped, err: _Capped
) -> str:
    try:
        code = proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise RemoteError(node, f"'{_tool(command)}' did not finish within {timeout:.0f} s") from None
    stdout, stderr = out.data(), err.data()
    if out.over or err.over:
        raise RemoteError(
            node,
            f"'{_tool(command)}' answered more than {MAX_ANSWER // (1024 * 1024)} MiB; the installer "
            "stopped reading (a node's answers are short: check what runs there as that command)",
        )
    if code != 0:
        raise _failure(node, command, code, stderr)
    # A node's words reach the operator's terminal (the plan, the report, errors): never its controls
    return printable(stdout.decode(errors="replace"))


def run(node: Node, opts: SshOptions, command: str, timeout: float = 600) -> str:
    """Run ``command`` on ``node``; its stdout (at most ``MAX_ANSWER`` bytes), or ``RemoteError``."""
    proc = subprocess.Popen(
        ssh_argv(node, opts, command),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    return _wait(node, command, proc, timeout, _Capped(proc.stdout, proc), _Capped(proc.stderr, proc))


def stream(
    node: Node, opts: SshOptions, command: str, write: Callable[[IO[bytes]], None], timeout: float = 3600
) -> str:
    """Run ``command`` on ``node`` with ``write(stdin)`` feeding it; its stdout, or ``RemoteError``."""
    proc = subprocess.Popen(
        ssh_argv(node, opts, command), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    # Drain stdout and stderr while writing, so a chatty command cannot block the pipe.
    out, err = _Capped(proc.stdout, proc), _Capped(proc.stderr, proc)
    try:
        write(proc.stdin)
    except BrokenPipeError:
        pass  # the remote side stopped reading; its exit code and stderr tell why
    finally:
        try:
            proc.stdin.close()
        except BrokenPipeError:
            pass
    return _wait(node, command, proc, timeout, out, err)


def lines(text: str) -> Iterator[str]:
    return (line.strip() for line in text.splitlines() if line.strip())


def sudo_prefix(node: Node) -> str:
    """What goes before a command that needs root on ``node``: nothing for root, else ``sudo -n``."""
    return "" if node.user == "root" else "sudo -n "


def for_each(nodes: List[Node], work: Callable[[Node], T]) -> List[T]:
    """``work`` on every node at once (a thread each); the answers in the nodes' order."""
    with ThreadPoolExecutor(max_workers=max(1, len(nodes))) as pool:
        return list(pool.map(work, nodes))
