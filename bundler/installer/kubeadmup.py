"""kubeadm's bring-up over SSH: init on the first control plane, the other control planes joined one
at a time, the workers joined in parallel, the admin kubeconfig fetched.

The kubeadm that runs is the bundle's (the ``cluster.tool`` binary, at its ``dest`` on every node
after the binaries phase); its images are already in each node's containerd (the images phase),
so kubeadm's preflight finds them and pulls nothing. The installer makes the bootstrap token and
the certificate key itself (``kubeadm init --token --certificate-key``), so nothing has to be
read back but the CA's discovery hash, which ``kubeadm init`` prints in its join commands.
With a ``vip:`` the control-plane endpoint is ``VIP:PORT`` (``--control-plane-endpoint``,
``--upload-certs``), which the load balancers must answer on before the joins. Each node's
output goes to ``logs/kubeadm-NODE.log``; the token and key are never echoed.

It does not configure keepalived and haproxy (``lbsetup`` does, before it) or containerd (not
automated yet: README, "kubeadm (HA behind a VIP)") and decides nothing about which nodes exist
(the inventory). Carried in bundles: python3 3.6, stdlib only.
"""

import re
import secrets
import shlex
from pathlib import Path
from typing import Callable, List, Optional

from bundler.errors import InstallError
from bundler.installer import kubeconfig, remote
from bundler.installer.inventory import Endpoint, Node
from bundler.installer.results import NodeResult

ADMIN_CONF = "/etc/kubernetes/admin.conf"
_HASH = re.compile(r"--discovery-token-ca-cert-hash\s+(sha256:[0-9a-f]{64})")


def new_token() -> str:
    """A bootstrap token as kubeadm wants it: ``[a-z0-9]{6}.[a-z0-9]{16}``."""
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
    part = "".join(secrets.choice(alphabet) for _ in range(22))
    return part[:6] + "." + part[6:]


def init_command(
    kubeadm: str, node: Node, version: str, endpoint: Optional[Endpoint], token: str, key: str
) -> str:
    """``kubeadm init`` on the first control plane."""
    argv = [kubeadm, "init", "--kubernetes-version", version, "--node-name", node.name, "--token", token]
    if endpoint is not None:
        argv += ["--control-plane-endpoint", str(endpoint), "--upload-certs", "--certificate-key", key]
    return " ".join(shlex.quote(a) for a in argv)


def join_command(
    kubeadm: str, node: Node, endpoint: str, token: str, ca_hash: str, key: Optional[str] = None
) -> str:
    """``kubeadm join``: as a control plane when ``key`` (the uploaded certificates' key) is given."""
    argv = [kubeadm, "join", endpoint, "--token", token, "--discovery-token-ca-cert-hash", ca_hash]
    argv += ["--node-name", node.name]
    if key is not None:
        argv += ["--control-plane", "--certificate-key", key]
    return " ".join(shlex.quote(a) for a in argv)


def _masked(text: str, secrets_: List[str]) -> str:
    for secret in secrets_:
        text = text.replace(secret, "<hidden>")
    return text


class _Runner:
    """Runs kubeadm on nodes, logging each node's output to its own file."""

    def __init__(
        self, opts: remote.SshOptions, logs: Path, echo: Callable[[str], None], hidden: List[str]
    ) -> None:
        self.opts, self.logs, self.echo, self.hidden = opts, logs, echo, hidden
        logs.mkdir(parents=True, exist_ok=True)

    def run(self, node: Node, command: str, what: str) -> str:
        log = self.logs / f"kubeadm-{node.name}.log"
        self.echo(f"  {node.name}: {what} (log: {log})")
        # kubeadm's whole output (both streams) comes back, then its exit status: its verdict
        # lines are in the middle of a failing run's output, not at its end
        script = f"{remote.sudo_prefix(node)}{command} 2>&1; echo airbundle-exit=$?"
        try:
            out = remote.run(node, self.opts, script, timeout=1800)
        except remote.RemoteError as exc:
            raise InstallError(f"cluster: {what} on {node.name}: {_masked(str(exc), self.hidden)}") from None
        body, _, status = out.rstrip("\n").rpartition("airbundle-exit=")
        text = _masked(body, self.hidden)
        with open(log, "a") as f:
            f.write(text)
        if status.strip() != "0":
            # kubeadm's own verdict lines (its preflight's [ERROR ...], the failing phase) say what to fix
            verdict = [
                ln.strip() for ln in text.splitlines() if "[ERROR" in ln or "error execution phase" in ln
            ]
            detail = "; ".join(verdict)[:2000] or text[-600:].strip()
            raise InstallError(
                f"cluster: {what} failed on {node.name} (exit {status.strip()}): {detail} (log: {log})"
            )
        return body


def bring_up(
    nodes: List[Node],
    endpoint: Optional[Endpoint],
    kubeadm: str,
    version: str,
    opts: remote.SshOptions,
    workdir: Path,
    echo: Callable[[str], None],
) -> List[NodeResult]:
    """The HA bring-up in kubeadm's order; one result per node (a failure stops the nodes after it:
    a join needs the init, and control planes join one at a time as etcd grows by one member).
    The admin kubeconfig is written to ``workdir/admin.conf`` (0600)."""
    control = [n for n in nodes if n.has("controlplane")]
    workers = [n for n in nodes if n.has("worker") and not n.has("controlplane")]
    token, key = new_token(), secrets.token_hex(32)
    runner = _Runner(opts, workdir / "logs", echo, [token, key])
    results = []
    if not control:  # the topology check names it too; --yes cannot make kubeadm init run nowhere
        raise InstallError("cluster: no node has the controlplane role; kubeadm init needs one")
    first = control[0]
    where = str(endpoint) if endpoint is not None else f"{first.address}:6443"
    try:
        out = runner.run(first, init_command(kubeadm, first, version, endpoint, token, key), "kubeadm init")
    except InstallError as exc:
        return [NodeResult(first, error=str(exc))]
    found = _HASH.search(out)
    if not found:
        return [NodeResult(first, error=f"cluster: kubeadm init on {first.name} printed no discovery hash")]
    ca_hash = found.group(1)
    results.append(NodeResult(first, done=["kubeadm init"]))
    for node in control[1:]:
        try:
            runner.run(
                node, join_command(kubeadm, node, where, token, ca_hash, key), "kubeadm join --control-plane"
            )
            results.append(NodeResult(node, done=["kubeadm join --control-plane"]))
        except InstallError as exc:
            results.append(NodeResult(node, error=str(exc)))
            return results

    def join(node: Node) -> NodeResult:
        try:
            runner.run(node, join_command(kubeadm, node, where, token, ca_hash), "kubeadm join")
            return NodeResult(node, done=["kubeadm join"])
        except InstallError as exc:
            return NodeResult(node, error=str(exc))

    results += remote.for_each(workers, join)
    if any(r.error for r in results):
        return results
    try:
        conf = remote.run(first, opts, f"{remote.sudo_prefix(first)}cat {ADMIN_CONF}")
    except remote.RemoteError as exc:
        results[0].error = f"cluster: cannot read {ADMIN_CONF} on {first.name}: {exc}"
        return results
    try:
        target = kubeconfig.save(conf, f"{first.name}'s {ADMIN_CONF}", workdir / "admin.conf")
    except InstallError as exc:
        results[0].error = str(exc)
        return results
    echo(f"  kubeconfig: {target}")
    return results
