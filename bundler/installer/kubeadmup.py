"""kubeadm's bring-up over SSH: containerd configured for the kubelet on every node, init on the
first control plane, the other control planes joined one at a time, the workers joined in
parallel, the bootstrap token deleted, the admin kubeconfig fetched.

The kubeadm that runs is the bundle's (the ``cluster.tool`` binary, at its ``dest`` on every node
after the binaries phase); its images are already in each node's containerd (the images phase),
so kubeadm's preflight finds them and pulls nothing, and containerd's ``config.toml``
(``containerdconf``) names the bundle's pause image as the kubelet's pod sandbox. The installer
makes the bootstrap token and the certificate key itself, so nothing has to be read back but the
CA's discovery hash, which ``kubeadm init`` prints in its join commands. Neither secret is ever in
a command line (``ps`` on a node shows every process's argv): each kubeadm reads a v1beta3
configuration file (``kubeadm init --config F``: InitConfiguration and ClusterConfiguration;
``kubeadm join --config F``: JoinConfiguration) that reaches the node on ssh's stdin, is 0600 under
/run and is removed when kubeadm returns; at the end ``kubeadm token delete ID`` (its public half)
on the first control plane, and the token's TTL is short anyway. With a ``vip:`` the control-plane
endpoint is ``VIP:PORT`` (``controlPlaneEndpoint``, ``--upload-certs``), which the load balancers
must answer on before the joins. Each node's output goes to ``logs/kubeadm-NODE.log``; the token
and key are never echoed. When kubeadm times out waiting for the kubelet, the kubelet's own error
lines (``journalctl -u kubelet``) are quoted with the node's name.

It does not configure keepalived and haproxy (``lbsetup`` does, before it) and decides nothing
about which nodes exist (the inventory). Carried in bundles: python3 3.6, stdlib only.
"""

import json
import re
import secrets
import shlex
from pathlib import Path
from typing import IO, Callable, List, Optional

from bundler.errors import InstallError
from bundler.installer import containerdconf, kubeconfig, remote
from bundler.installer.inventory import Endpoint, Node
from bundler.installer.results import NodeResult

ADMIN_CONF = "/etc/kubernetes/admin.conf"
_HASH = re.compile(r"--discovery-token-ca-cert-hash\s+(sha256:[0-9a-f]{64})")


def new_token() -> str:
    """A bootstrap token as kubeadm wants it: ``[a-z0-9]{6}.[a-z0-9]{16}``."""
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
    part = "".join(secrets.choice(alphabet) for _ in range(22))
    return part[:6] + "." + part[6:]


# kubeadm's configuration API of Kubernetes 1.22 to 1.30 (cmd/kubeadm/app/apis/kubeadm/v1beta3).
API_VERSION = "kubeadm.k8s.io/v1beta3"
KUBELET_API = "kubelet.config.k8s.io/v1beta1"
CGROUP_DRIVER = "systemd"
BOOTSTRAP_TTL = "1h0m0s"  # the bootstrap token outlives the bring-up only briefly; it is deleted at its end
# The file kubeadm reads its configuration from on the node: under /run (root's, in memory), 0600
# (mktemp), removed when kubeadm returns. Secrets travel in it through ssh's stdin, never in argv.
CONFIG_TEMPLATE = "/run/airbundle-kubeadm.XXXXXX"


def _q(value: str) -> str:
    """A YAML scalar that stays a string whatever it holds (JSON's quoting is YAML's)."""
    return json.dumps(value)


def init_config(node: Node, version: str, endpoint: Optional[Endpoint], token: str, key: str) -> str:
    """``kubeadm init --config``'s file: InitConfiguration (the bootstrap token, the node's name, the
    certificate key for the uploaded certificates), ClusterConfiguration (version, endpoint) and
    KubeletConfiguration (the cgroup driver containerd's runc uses too)."""
    text = (
        f"apiVersion: {API_VERSION}\nkind: InitConfiguration\nbootstrapTokens:\n"
        # kubeadm's default usages (signing, authentication) and group (its default-node-token one)
        f"  - token: {_q(token)}\n    ttl: {_q(BOOTSTRAP_TTL)}\n"
        f"nodeRegistration:\n  name: {_q(node.name)}\n"
    )
    if endpoint is not None:
        text += f"certificateKey: {_q(key)}\n"
    text += f"---\napiVersion: {API_VERSION}\nkind: ClusterConfiguration\nkubernetesVersion: {_q(version)}\n"
    if endpoint is not None:
        text += f"controlPlaneEndpoint: {_q(str(endpoint))}\n"
    # kubeadm's default since 1.22, said here because containerd's runc must use the same driver
    # (containerdconf: SystemdCgroup = true); the joining kubelets take it from the cluster
    text += f"---\napiVersion: {KUBELET_API}\nkind: KubeletConfiguration\ncgroupDriver: {CGROUP_DRIVER}\n"
    return text


def join_config(node: Node, endpoint: str, token: str, ca_hash: str, key: Optional[str] = None) -> str:
    """``kubeadm join --config``'s file: JoinConfiguration, as a control plane when ``key`` (the
    uploaded certificates' key) is given."""
    text = (
        f"apiVersion: {API_VERSION}\nkind: JoinConfiguration\nnodeRegistration:\n  name: {_q(node.name)}\n"
        f"discovery:\n  bootstrapToken:\n    apiServerEndpoint: {_q(endpoint)}\n    token: {_q(token)}\n"
        f"    caCertHashes:\n      - {_q(ca_hash)}\n"
    )
    if key is not None:
        text += f"controlPlane:\n  certificateKey: {_q(key)}\n"
    return text


def with_config(kubeadm: str, args: List[str]) -> str:
    """The script that runs ``kubeadm ARGS --config FILE`` with FILE read from stdin: made 0600 under
    /run, removed when kubeadm returns (or the script is stopped). Its output ends with kubeadm's
    exit status (``airbundle-exit=N``)."""
    argv = " ".join(shlex.quote(a) for a in [kubeadm, *args])
    script = (
        f"umask 077; f=$(mktemp {CONFIG_TEMPLATE}) || exit 1; trap 'rm -f \"$f\"' EXIT; "
        "trap 'exit 129' HUP INT TERM; "
        f'cat > "$f"; {argv} --config "$f" 2>&1; echo airbundle-exit=$?'
    )
    return f"sh -c {shlex.quote(script)}"


def _masked(text: str, secrets_: List[str]) -> str:
    for secret in secrets_:
        text = text.replace(secret, "<hidden>")
    return text


# A klog error line as journald shows it: "... kubelet[123]: E1202 07:06:50.795221  123 a.go:72] MSG"
_KLOG_ERROR = re.compile(r"\bE\d{4} \d\d:\d\d:\d\d\.\d+\s+\d+ [^ \]]+\] (.*)$")


def kubelet_errors(journal: str, most: int = 3) -> List[str]:
    """The kubelet's own error messages in ``journalctl -u kubelet`` output, oldest first, each once."""
    out: List[str] = []
    for line in journal.splitlines():
        found = _KLOG_ERROR.search(line)
        if found and found.group(1) not in out:
            out.append(found.group(1))
    return out[-most:]


class _Runner:
    """Runs kubeadm on nodes, logging each node's output to its own file."""

    def __init__(
        self, opts: remote.SshOptions, logs: Path, echo: Callable[[str], None], hidden: List[str]
    ) -> None:
        self.opts, self.logs, self.echo, self.hidden = opts, logs, echo, hidden
        logs.mkdir(parents=True, exist_ok=True)

    def kubelet_says(self, node: Node) -> str:
        """What the node's kubelet logged as errors (kubeadm only sees its pods never come up)."""
        try:
            journal = remote.run(
                node,
                self.opts,
                f"{remote.sudo_prefix(node)}journalctl -u kubelet --no-pager -n 200 2>/dev/null || true",
            )
        except remote.RemoteError:
            return ""
        errors = kubelet_errors(_masked(journal, self.hidden))
        return f"; the kubelet there says: {' / '.join(errors)[:2000]}" if errors else ""

    def run(self, node: Node, command: str, what: str, config: Optional[str] = None) -> str:
        """``command`` on ``node`` (with ``config`` on its stdin: ``with_config``); its output."""
        log = self.logs / f"kubeadm-{node.name}.log"
        self.echo(f"  {node.name}: {what} (log: {log})")
        # kubeadm's whole output (both streams) comes back, then its exit status: its verdict
        # lines are in the middle of a failing run's output, not at its end
        try:
            if config is not None:
                data = config.encode()

                def send(out: IO[bytes]) -> None:
                    out.write(data)

                script = f"{remote.sudo_prefix(node)}{command}"
                out = remote.stream(node, self.opts, script, send, timeout=1800)
            else:
                script = f"{remote.sudo_prefix(node)}{command} 2>&1; echo airbundle-exit=$?"
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
            if "wait-control-plane" in text or "kubelet-start" in text:
                detail += self.kubelet_says(node)
            raise InstallError(
                f"cluster: {what} failed on {node.name} (exit {status.strip()}): {detail} (log: {log})"
            )
        return body


def configure_containerd(
    nodes: List[Node], sandbox_image: str, opts: remote.SshOptions, echo: Callable[[str], None]
) -> List[NodeResult]:
    """containerd's ``config.toml`` for the kubelet on every node of the cluster (``containerdconf``),
    in parallel; containerd restarted where the file changed. One result per node."""
    text = containerdconf.render(sandbox_image)

    def one(node: Node) -> NodeResult:
        try:
            changed = containerdconf.ensure_on(node, opts, text)
        except InstallError as exc:
            return NodeResult(node, error=f"cluster: {exc}")
        return NodeResult(node, done=[containerdconf.CONFIG] if changed else [])

    results = remote.for_each(nodes, one)
    changed = [r.node.name for r in results if r.done]
    if changed:
        where = ", ".join(changed)
        echo(f"  {containerdconf.CONFIG} (sandbox {sandbox_image}) written, containerd restarted: {where}")
    return results


def bring_up(
    nodes: List[Node],
    endpoint: Optional[Endpoint],
    kubeadm: str,
    version: str,
    opts: remote.SshOptions,
    workdir: Path,
    echo: Callable[[str], None],
    sandbox_image: str = "",
) -> List[NodeResult]:
    """The HA bring-up in kubeadm's order; one result per node (a failure stops the nodes after it:
    a join needs the init, and control planes join one at a time as etcd grows by one member).
    First containerd is configured for the kubelet on every cluster node (``sandbox_image``: the
    bundle's pause image). The admin kubeconfig is written to ``workdir/admin.conf`` (0600)."""
    control = [n for n in nodes if n.has("controlplane")]
    workers = [n for n in nodes if n.has("worker") and not n.has("controlplane")]
    if not sandbox_image:
        raise InstallError(
            "cluster: the bundle carries no pause image (kubeadm's pod sandbox), so every node's kubelet "
            "would pull one from a registry the site cannot reach; build the bundle with kubeadm's own "
            "image list (leave cluster.system_images out, or add registry.k8s.io/pause to it)"
        )
    configured = configure_containerd(control + workers, sandbox_image, opts, echo)
    if any(r.error for r in configured):
        return [r for r in configured if r.error]
    token, key = new_token(), secrets.token_hex(32)
    runner = _Runner(opts, workdir / "logs", echo, [token, key])
    results = []
    if not control:  # the topology check names it too; --yes cannot make kubeadm init run nowhere
        raise InstallError("cluster: no node has the controlplane role; kubeadm init needs one")
    first = control[0]
    where = str(endpoint if endpoint is not None else Endpoint(first.address))
    try:
        init = ["init", "--upload-certs"] if endpoint is not None else ["init"]
        out = runner.run(
            first,
            with_config(kubeadm, init),
            "kubeadm init",
            init_config(first, version, endpoint, token, key),
        )
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
                node,
                with_config(kubeadm, ["join"]),
                "kubeadm join --control-plane",
                join_config(node, where, token, ca_hash, key),
            )
            results.append(NodeResult(node, done=["kubeadm join --control-plane"]))
        except InstallError as exc:
            results.append(NodeResult(node, error=str(exc)))
            return results

    def join(node: Node) -> NodeResult:
        try:
            runner.run(
                node, with_config(kubeadm, ["join"]), "kubeadm join", join_config(node, where, token, ca_hash)
            )
            return NodeResult(node, done=["kubeadm join"])
        except InstallError as exc:
            return NodeResult(node, error=str(exc))

    results += remote.for_each(workers, join)
    if any(r.error for r in results):
        return results
    # every node joined: the token has done its work (its ID alone names it: the ID is not secret)
    token_id = token.split(".")[0]
    try:
        runner.run(first, f"{shlex.quote(kubeadm)} token delete {token_id}", "kubeadm token delete")
    except InstallError as exc:  # the cluster is up: a warning, as the token expires soon anyway
        results[0].warnings.append(f"{exc}; the bootstrap token expires by itself within {BOOTSTRAP_TTL}")
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
