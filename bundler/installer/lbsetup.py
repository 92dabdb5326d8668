"""keepalived + haproxy on a kubeadm cluster's load balancers over SSH, before ``kubeadm init``.

On each load-balancer node (in parallel): the interface that holds or reaches the VIP is asked
(``ip -o addr``, ``ip -o route get VIP``), the files ``lbconfig`` renders for that node are compared with
what is there, and only the changed ones are written, each beside its final path
(``FILE.airbundle-new``). The new files are checked on the node with the real tools before
any of them lands (``haproxy -c -f``, ``keepalived --config-test -f``): a bad configuration is
removed and the node's files stay as they were. Then each file is renamed into place (the
operator's own earlier file kept once as ``FILE.airbundle-orig``), and ``systemctl enable`` and
``restart`` run for the units whose files changed or that are not running. The same
configuration already in place and running: nothing is written, nothing restarted. Last, the
first control plane must reach the VIP's port (TCP) within a bounded wait, else every load
balancer's result says what to check. Each node's tool output goes to
``logs/loadbalancer-NODE.log``.

It decides nothing about which nodes are load balancers (``lbconfig``, the inventory) and does not
install the packages (the packages phase, from the bundle's ``loadbalancer`` role). Carried in
bundles: python3 3.6, stdlib only.
"""

import base64
import posixpath
import shlex
from pathlib import Path
from typing import Callable, Dict, List, Tuple

from bundler.errors import InstallError
from bundler.installer import lbconfig, remote
from bundler.installer.inventory import Endpoint, Node
from bundler.installer.results import NodeResult

VIP_WAIT = 120  # seconds the VIP may take to answer once keepalived and haproxy are started
ITEM = "loadbalancer"  # the plan's item on a load-balancer node (plan.LOAD_BALANCER)
_MARK = "airbundle-"

# (final path, mode, the check of its new copy; "" none). The check script first: keepalived.conf
# names it, and keepalived's own check reads it.
_CHECKS = {
    lbconfig.HAPROXY_CFG: "haproxy -c -f",
    lbconfig.KEEPALIVED_CONF: "keepalived --config-test -f",
}


def _put(path: str, mode: str, text: str, key: str) -> str:
    """Shell: ``path.airbundle-new`` written with ``text`` unless ``path`` already holds it;
    ``new_KEY`` is 1 when it was."""
    q = shlex.quote
    data = base64.b64encode(text.encode()).decode()
    new = q(path + ".airbundle-new")
    return (
        f"new_{key}=0; mkdir -p {q(posixpath.dirname(path))} || exit 1\n"
        f"if ! {{ [ -f {q(path)} ] && printf %s {data} | base64 -d | cmp -s - {q(path)}; }}; then\n"
        f"  printf %s {data} | base64 -d > {new} && chmod {mode} {new} && sync {new} "
        f"|| {{ echo '{_MARK}fail=cannot write {path}.airbundle-new'; rm -f {new}; exit 1; }}\n"
        f"  new_{key}=1\n"
        "fi\n"
    )


def _check(path: str, command: str, key: str, cleanup: str) -> str:
    """Shell: the new copy of ``path`` checked with ``command``; on failure every new copy removed.

    keepalived 2.2.7 (Debian 12) ends ``--config-test`` with SIGTERM (exit 143) whatever it found
    (acassen/keepalived#2587, fixed in 2.2.8): there, a clean check is one that printed nothing."""
    q = shlex.quote
    new = q(path + ".airbundle-new")
    ok = (
        '[ "$rc" = 0 ]'
        if command.startswith("haproxy")
        else '{ [ "$rc" = 0 ] || [ "$rc" = 143 ]; } && [ -z "$out" ]'
    )
    return (
        f'if [ "$new_{key}" = 1 ]; then\n'
        f"  out=$({command} {new} 2>&1); rc=$?\n"
        f'  if ! {{ {ok}; }}; then echo "$out"; echo "{_MARK}fail={path} refused by {command.split()[0]} '
        f'(exit $rc): nothing was changed"; {cleanup}; exit 3; fi\n'
        "fi\n"
    )


def _land(path: str, key: str) -> str:
    """Shell: the checked new copy renamed into place; the operator's own file kept once."""
    q = shlex.quote
    return (
        f'if [ "$new_{key}" = 1 ]; then\n'
        f"  if [ -e {q(path)} ] && [ ! -e {q(path + '.airbundle-orig')} ]; then "
        f"cp -p {q(path)} {q(path + '.airbundle-orig')} || exit 1; fi\n"
        f"  mv -f {q(path + '.airbundle-new')} {q(path)} || exit 1; echo '{_MARK}changed={path}'\n"
        "fi\n"
    )


def apply_script(files: List[Tuple[str, str, str]]) -> str:
    """The shell that lands ``files`` ((path, mode, text)) on a load balancer and (re)starts
    haproxy and keepalived when needed. Its verdicts are ``airbundle-…`` lines on stdout."""
    keys = {path: f"f{i}" for i, (path, _, _) in enumerate(files)}
    cleanup = "rm -f " + " ".join(shlex.quote(p + ".airbundle-new") for p, _, _ in files)
    # what the packages phase installs from the bundle's loadbalancer role; without it, say so
    missing = (
        "{_MARK}fail={tool} is not installed here: the packages of the bundle for the loadbalancer role "
        "bring it (manifest: debs.roles: loadbalancer: [keepalived, haproxy, curl])"
    )
    script = "umask 022\n"
    for tool in ("haproxy", "keepalived", "systemctl"):
        said = shlex.quote(missing.format(_MARK=_MARK, tool=tool))
        script += f"command -v {tool} >/dev/null 2>&1 || {{ echo {said}; exit 2; }}\n"
    script += "".join(_put(p, m, t, keys[p]) for p, m, t in files)
    script += "".join(_check(p, _CHECKS[p], keys[p], cleanup) for p, _, _ in files if p in _CHECKS)
    haproxy = f"$new_{keys[lbconfig.HAPROXY_CFG]}"
    keepalived = " ".join(f"$new_{keys[p]}" for p, _, _ in files if p != lbconfig.HAPROXY_CFG)
    units = (("haproxy", haproxy), ("keepalived", keepalived))
    # A unit owes a restart from before its file lands until the restart succeeds: a run cut off in
    # between (a failed restart, a dropped connection) leaves the marker, and the next run restarts
    # it though its file is already in place.
    for unit, changed in units:
        script += f'case "{changed}" in *1*) : > {_pending(unit)} || exit 1;; esac\n'
    script += "".join(_land(p, keys[p]) for p, _, _ in files)
    for unit, _ in units:
        script += (
            f"restart=0; [ -e {_pending(unit)} ] && restart=1\n"
            f"systemctl is-active --quiet {unit} || restart=1\n"
            f'if [ "$restart" = 1 ]; then\n'
            f"  systemctl enable {unit} || {{ echo '{_MARK}fail=systemctl enable {unit} failed'; exit 4; }}\n"
            f"  systemctl restart {unit} || {{ echo '{_MARK}fail=systemctl restart {unit} failed: see "
            f"systemctl status {unit} and journalctl -u {unit} there'; exit 4; }}\n"
            f"  rm -f {_pending(unit)}; echo '{_MARK}restarted={unit}'\n"
            "fi\n"
        )
    return script


def _pending(unit: str) -> str:
    """The marker of a restart ``unit`` owes, in its own configuration folder (the node's own)."""
    return f"/etc/{unit}/.airbundle-restart-pending"


def _files(endpoint: Endpoint, lbs: List[Node], control: List[Node], node: Node, interface: str,
           bundle: str) -> List[Tuple[str, str, str]]:  # fmt: skip
    return [
        (lbconfig.CHECK_SCRIPT, "0755", lbconfig.check_script(endpoint)),
        (lbconfig.HAPROXY_CFG, "0644", lbconfig.haproxy_cfg(endpoint, control, bundle)),
        (lbconfig.KEEPALIVED_CONF, "0644", lbconfig.keepalived_conf(endpoint, lbs, node, interface, bundle)),
    ]


def _one(
    node: Node,
    lbs: List[Node],
    control: List[Node],
    endpoint: Endpoint,
    bundle: str,
    opts: remote.SshOptions,
    logs: Path,
) -> NodeResult:
    result = NodeResult(node, items=[ITEM])
    log = logs / f"loadbalancer-{node.name}.log"
    try:
        # no route at all ("Network is unreachable") is the same answer as one through a gateway
        said = remote.run(
            node,
            opts,
            f"ip -o -4 addr show; echo ---; ip -o route get {endpoint.address} 2>&1 || true",
            timeout=60,
        )
        addresses, _, route = said.partition("---\n")
        interface = lbconfig.interface_of(route, addresses, endpoint.address)
        if interface is None:
            raise InstallError(
                f"cluster: the VIP {endpoint.address} is not on a subnet of {node.name} ('ip -o route get "
                f"{endpoint.address}' there says: {route.strip()[:300] or 'nothing'}): keepalived can only "
                "hold an address of the load balancers' own link; give vip: a free address on their subnet"
            )
        script = apply_script(_files(endpoint, lbs, control, node, interface, bundle))
        command = f"{remote.sudo_prefix(node)}sh -c {shlex.quote(script)} 2>&1; echo {_MARK}exit=$?"
        out = remote.run(node, opts, command, timeout=300)
    except InstallError as exc:
        result.error = str(exc)
        return result
    verdicts: Dict[str, List[str]] = {}
    lines = []
    for line in out.splitlines():
        if line.startswith(_MARK) and "=" in line:
            key, _, value = line[len(_MARK) :].partition("=")
            verdicts.setdefault(key, []).append(value)
        else:
            lines.append(line)
    with open(log, "a") as f:
        f.write(f"interface {interface}\n" + "\n".join(lines) + ("\n" if lines else ""))
        f.writelines(f"{k}: {v}\n" for k, vs in verdicts.items() for v in vs)
    if verdicts.get("exit", ["?"])[-1] != "0":
        said = "; ".join(verdicts.get("fail", [])) or f"exit {verdicts.get('exit', ['?'])[-1]}"
        detail = " / ".join(ln.strip() for ln in lines if ln.strip())[-1500:]
        result.error = f"cluster: keepalived + haproxy on {node.name}: {said}" + (
            f" ({detail})" if detail else ""
        ) + f" (log: {log})"  # fmt: skip
        return result
    result.done = [posixpath.basename(p) for p in verdicts.get("changed", [])]
    result.done += [f"restarted {u}" for u in verdicts.get("restarted", [])]
    if not result.done:
        result.skipped = ["keepalived + haproxy: configuration unchanged and running"]
    return result


def wait_script(endpoint: Endpoint, seconds: int) -> str:
    """Shell (bash's /dev/tcp; Ubuntu, Astra and Rocky all have bash) that says within ``seconds``
    whether ``endpoint`` accepts a TCP connection."""
    probe = shlex.quote(f"exec 3<>/dev/tcp/{endpoint.address}/{endpoint.port}")
    return (
        f"end=$(( $(date +%s) + {int(seconds)} )); while :; do "
        f"if timeout 3 bash -c {probe} 2>/dev/null; then echo {_MARK}answered; exit 0; fi; "
        f'if [ "$(date +%s)" -ge "$end" ]; then echo {_MARK}silent; exit 0; fi; sleep 1; done'
    )


def configure(
    lbs: List[Node],
    control: List[Node],
    endpoint: Endpoint,
    bundle: str,
    opts: remote.SshOptions,
    workdir: Path,
    echo: Callable[[str], None],
    wait: int = VIP_WAIT,
) -> List[NodeResult]:
    """keepalived + haproxy on every node of ``lbs`` (all of the cluster's load balancers: each one's
    keepalived.conf names its peers' roles), then the VIP waited for from the first of ``control``.
    One result per load balancer."""
    logs = workdir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    echo(f"  keepalived + haproxy for {endpoint} on {', '.join(n.name for n in lbs)} (logs: {logs})")
    results = remote.for_each(lbs, lambda n: _one(n, lbs, control, endpoint, bundle, opts, logs))
    if any(r.error for r in results) or not control:
        return results
    first = control[0]
    try:
        said = remote.run(first, opts, wait_script(endpoint, wait), timeout=wait + 60)
    except InstallError as exc:
        said = f"{_MARK}silent ({exc})"
    if f"{_MARK}answered" in said:
        echo(f"  {endpoint} answers from {first.name}")
        return results
    names = ", ".join(n.name for n in lbs)
    problem = (
        f"cluster: the control-plane endpoint {endpoint} did not answer within {wait} s from {first.name} "
        f"after keepalived + haproxy were set up on {names}: check on them 'systemctl status keepalived "
        f"haproxy' and 'ip -o addr' (the MASTER, {lbs[0].name}, should hold {endpoint.address}), that "
        f"{endpoint.address} is a free address on their subnet, that VRRP (IP protocol 112) passes between "
        f"them and that TCP port {endpoint.port} is open from {first.name}"
    )
    for result in results:
        result.error = problem
    return results
