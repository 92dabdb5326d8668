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

Resumable: it first asks every node what kubeadm set up there (``setup_state``) and skips the nodes
it finished before. The joins left get a fresh token and the CA's hash from ``kubeadm token create
--print-join-command --config F`` and, for control planes, certificates uploaded again under a fresh
key (``kubeadm init phase upload-certs``); a node an earlier kubeadm left half set up is reset first.

It does not configure keepalived and haproxy (``lbsetup`` does, before it) and decides nothing
about which nodes exist (the inventory). Carried in bundles: python3 3.6, stdlib only.
"""

import json
import re
import secrets
import shlex
from pathlib import Path
from typing import IO, Callable, List, Optional, Set

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
            if any("[ERROR FileAvailable" in v or "[ERROR DirAvailable" in v for v in verdict):
                detail += (
                    f"; {node.name} holds the files of an earlier kubeadm run that did not finish (a node "
                    f"kubeadm set up completely is skipped): run `kubeadm reset -f` on {node.name}, "
                    "then install again"
                )
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


# What a node that kubeadm has set up holds: kubelet.conf (written by init and by every join),
# admin.conf (written by init, and by a control-plane join). What a kubeadm run that stopped half-way
# leaves (kubeadm's preflight then refuses the node: FileAvailable, DirAvailable): the cluster's CA, the
# kubelet's bootstrap kubeconfig, static pod manifests.
KUBELET_CONF = "/etc/kubernetes/kubelet.conf"
# a control plane's join is done once its stacked etcd member is (control-plane-join/etcd writes this
# static pod after kubelet-start, which writes kubelet.conf)
ETCD_MANIFEST = "/etc/kubernetes/manifests/etcd.yaml"
LEFTOVERS = (
    "/etc/kubernetes/pki/ca.crt",
    "/etc/kubernetes/bootstrap-kubelet.conf",
    "/etc/kubernetes/manifests/*",
)


def setup_state(nodes: List[Node], opts: remote.SshOptions) -> List[NodeResult]:
    """Which nodes kubeadm already set up (a finished init or join): asked on every node at once; each
    result's ``done`` names the files found (``KUBELET_CONF``, ``ADMIN_CONF``), its ``error`` a node
    that did not answer."""

    def one(node: Node) -> NodeResult:
        # a glob that matches nothing stays itself, which is no file
        probe = " ".join(
            f'for f in {f}; do [ -e "$f" ] && echo {shlex.quote(f)} && break; done;'
            for f in (KUBELET_CONF, ADMIN_CONF, ETCD_MANIFEST, *LEFTOVERS)
        )
        try:
            out = remote.run(node, opts, f"{remote.sudo_prefix(node)}sh -c {shlex.quote(probe + ' true')}")
        except remote.RemoteError as exc:
            return NodeResult(node, error=f"cluster: cannot ask {node.name} whether kubeadm set it up: {exc}")
        return NodeResult(
            node,
            done=sorted(
                set(ln for ln in out.split() if ln in (KUBELET_CONF, ADMIN_CONF, ETCD_MANIFEST, *LEFTOVERS))
            ),
        )

    return remote.for_each(nodes, one)


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
    bundle's pause image). The admin kubeconfig is written to ``workdir/admin.conf`` (0600).

    Resumable: the nodes kubeadm already set up (``setup_state``) are skipped. When the first control
    plane was initialised before, the joins left get what init would have given them from it: a
    fresh bootstrap token (``kubeadm token create --print-join-command --config F``: the token in F,
    the CA's discovery hash in kubeadm's answer) and, for control planes, the certificates uploaded
    again under a fresh key (``kubeadm init phase upload-certs --upload-certs --config F``)."""
    control = [n for n in nodes if n.has("controlplane")]
    workers = [n for n in nodes if n.has("worker") and not n.has("controlplane")]
    if not sandbox_image:
        raise InstallError(
            "cluster: the bundle carries no pause image (kubeadm's pod sandbox), so every node's kubelet "
            "would pull one from a registry the site cannot reach; build the bundle with kubeadm's own "
            "image list (leave cluster.system_images out, or add registry.k8s.io/pause to it)"
        )
    if not control:  # the topology check names it too; --yes cannot make kubeadm init run nowhere
        raise InstallError("cluster: no node has the controlplane role; kubeadm init needs one")
    configured = configure_containerd(control + workers, sandbox_image, opts, echo)
    if any(r.error for r in configured):
        return [r for r in configured if r.error]
    found_state = setup_state(control + workers, opts)
    if any(r.error for r in found_state):
        return [r for r in found_state if r.error]
    state = {r.node.name: r.done for r in found_state}
    first = control[0]
    initialised = ADMIN_CONF in state[first.name]
    joined = {n.name for n in workers if KUBELET_CONF in state[n.name]} | {
        n.name for n in control[1:] if KUBELET_CONF in state[n.name] and ETCD_MANIFEST in state[n.name]
    }
    if not initialised and joined:
        return [
            NodeResult(
                first,
                error=f"cluster: {', '.join(sorted(joined))} already belong to a cluster (kubeadm set them "
                f"up: {KUBELET_CONF}), but {first.name}, the inventory's first control plane, has no "
                f"{ADMIN_CONF}: "
                f"kubeadm init would make a second cluster there. Put the control plane that cluster was "
                f"initialised on first among the controlplane nodes of the inventory, or run kubeadm reset "
                f"on {', '.join(sorted(joined))} to start over",
            )
        ]
    done_before = ([first.name] if initialised else []) + sorted(joined)
    if done_before:
        echo(f"  kubeadm set up before (skipped): {', '.join(done_before)}")
    token, key = new_token(), secrets.token_hex(32)
    runner = _Runner(opts, workdir / "logs", echo, [token, key])
    where = str(endpoint if endpoint is not None else Endpoint(first.address))
    to_join = [n for n in control[1:] if n.name not in joined]
    workers_left = [n for n in workers if n.name not in joined]
    results: List[NodeResult] = []
    made_token = False
    # a node that an earlier run's kubeadm left half set up (its init or join stopped after writing
    # files, e.g. at kubelet-start) is not in the cluster; kubeadm refuses it until kubeadm reset
    todo = ([] if initialised else [first]) + to_join + workers_left
    half = [n for n in todo if any(f in state[n.name] for f in (*LEFTOVERS, KUBELET_CONF))]
    for node in half:
        try:
            runner.run(
                node,
                f"{shlex.quote(kubeadm)} reset -f",
                "kubeadm reset -f (an earlier kubeadm stopped half-way)",
            )
        except InstallError as exc:
            return [NodeResult(node, error=str(exc))]
    if initialised:
        results.append(NodeResult(first, skipped=[f"kubeadm init done before ({ADMIN_CONF} there)"]))
        results += _joined_before(control[1:], joined)
        if not to_join and not workers_left:
            return _admin_conf(first, opts, workdir, echo, results + _joined_before(workers, joined))
        config = init_config(first, version, endpoint, token, key)
        try:
            ca_hash = _new_token(runner, first, kubeadm, config)
            made_token = True
            if to_join and endpoint is not None:
                _upload_certs(runner, first, kubeadm, config)
        except InstallError as exc:
            advice = (
                ""
                if made_token
                else f"; {first.name} has the {ADMIN_CONF} of an earlier kubeadm init, whose cluster does "
                f"not answer: if that init failed, run `kubeadm reset -f` on {first.name}, then install again"
            )
            results[0] = NodeResult(first, error=f"{exc}{advice}")
            return _end(runner, first, kubeadm, token, made_token, results)
    else:
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
        made_token = True
        found = _HASH.search(out)
        if not found:
            results.append(
                NodeResult(first, error=f"cluster: kubeadm init on {first.name} printed no discovery hash")
            )
            return _end(runner, first, kubeadm, token, made_token, results)
        ca_hash = found.group(1)
        results.append(NodeResult(first, done=["kubeadm init"]))
    for node in to_join:
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
            return _end(runner, first, kubeadm, token, made_token, results)

    def join(node: Node) -> NodeResult:
        try:
            runner.run(
                node, with_config(kubeadm, ["join"]), "kubeadm join", join_config(node, where, token, ca_hash)
            )
            return NodeResult(node, done=["kubeadm join"])
        except InstallError as exc:
            return NodeResult(node, error=str(exc))

    results += remote.for_each(workers_left, join)
    results += _joined_before(workers, joined)
    results = _end(runner, first, kubeadm, token, made_token, results)
    if any(r.error for r in results):
        return results
    return _admin_conf(first, opts, workdir, echo, results)


def _joined_before(nodes: List[Node], joined: Set[str]) -> List[NodeResult]:
    """The nodes of ``nodes`` kubeadm joined before, reported as skipped."""
    return [
        NodeResult(n, skipped=[f"joined before ({KUBELET_CONF} there)"]) for n in nodes if n.name in joined
    ]


def _new_token(runner: "_Runner", first: Node, kubeadm: str, config: str) -> str:
    """The token of ``config`` (an ``init_config``) registered as a bootstrap token of the cluster
    initialised before on ``first``; the CA's discovery hash returned. kubeadm token create reads the
    token from --config's InitConfiguration.bootstrapTokens, so it is never in argv; its
    --print-join-command answer carries the hash (and the token: masked like every output)."""
    out = runner.run(
        first,
        with_config(kubeadm, ["token", "create", "--print-join-command"]),
        "kubeadm token create",
        config,
    )
    found = _HASH.search(out)
    if not found:
        raise InstallError(f"cluster: kubeadm token create on {first.name} printed no discovery hash")
    return found.group(1)


def _upload_certs(runner: "_Runner", first: Node, kubeadm: str, config: str) -> None:
    """The control-plane certificates uploaded again (the kubeadm-certs Secret), encrypted with the
    ``certificateKey`` of ``config``: the control planes left to join download them with it."""
    upload = ["init", "phase", "upload-certs", "--upload-certs", "--skip-certificate-key-print"]
    runner.run(first, with_config(kubeadm, upload), "kubeadm init phase upload-certs", config)


def _end(
    runner: "_Runner", first: Node, kubeadm: str, token: str, made: bool, results: List[NodeResult]
) -> List[NodeResult]:
    """The bootstrap token deleted once the joins are over (joined or failed: a re-run makes a fresh
    one); its ID alone names it, and the ID is not secret."""
    if not made:
        return results
    token_id = token.split(".")[0]
    try:
        runner.run(first, f"{shlex.quote(kubeadm)} token delete {token_id}", "kubeadm token delete")
    except InstallError as exc:  # a warning: the token expires soon anyway
        mine = next((r for r in results if r.node.name == first.name), None)
        if mine is None:
            mine = NodeResult(first)
            results.insert(0, mine)
        mine.warnings.append(f"{exc}; the bootstrap token expires by itself within {BOOTSTRAP_TTL}")
    return results


def _admin_conf(
    first: Node,
    opts: remote.SshOptions,
    workdir: Path,
    echo: Callable[[str], None],
    results: List[NodeResult],
) -> List[NodeResult]:
    """``ADMIN_CONF`` of the first control plane copied to ``workdir/admin.conf`` (0600)."""
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
