"""The topology rules of a cluster: quorum, role separation, worker count, control-plane endpoint.

Pure: nodes (a name, the roles a kind gives them, the inventory line) and the rules of the kind
and the product in, findings out (a problem stops a real install until confirmed, a warning is
only said). It knows the quorum arithmetic of etcd-like stores (``quorum``, ``quorum_table``:
n nodes keep working while a majority, n//2+1, is up) and which role holds the quorum per cluster
kind (rke: etcd; kubeadm: the control planes, stacked etcd; k0s: the controllers). It does not read
inventories (``inventory``, ``k0sctl``), talk to nodes or decide what a confirmation is (the CLI).

Carried into bundles: standard library only, python3 3.6 syntax.
"""

from typing import Dict, List, NamedTuple, Sequence, Tuple

# The role whose members vote (the quorum) and the role that runs the control plane, per kind.
QUORUM_ROLE = {"rke": "etcd", "kubeadm": "controlplane", "k0s": "controller"}
CONTROL_ROLE = {"rke": "controlplane", "kubeadm": "controlplane", "k0s": "controller"}
# Below this many voting members a cluster tolerates no failure at all.
FAULT_TOLERANT = 3


class Member(NamedTuple):
    """One node as the rules see it: its name, its roles in the kind's words, its inventory line."""

    name: str
    roles: Tuple[str, ...]
    line: int = 0  # 1-based line of the node in the inventory; 0 when unknown


class Rules(NamedTuple):
    """What the kind and the product require of the topology."""

    kind: str = "rke"  # rke | kubeadm | k0s; "" for a bundle that brings no cluster up itself
    min_workers: int = 0  # the product's minimum (the lock's min_workers)
    forbid_shared: bool = False  # the product forbids a node with both control and worker roles
    demo: bool = False  # --demo: the operator says this is a demonstration install
    vip: str = ""  # kubeadm: the control-plane endpoint's virtual IP, if the inventory gives one


class Finding(NamedTuple):
    """A problem (stops a real install until confirmed) or a warning, with the line at fault."""

    severity: str  # "problem" | "warning"
    message: str
    line: int = 0

    def text(self, path: str = "") -> str:
        """``FILE:LINE: message`` (or less, when the file or the line is not known)."""
        where = path + (":" + str(self.line) if path and self.line else "")
        return where + ": " + self.message if where else self.message


def quorum(members: int) -> Tuple[int, int]:
    """(quorum, failures tolerated) of ``members`` voting nodes: 3 → (2, 1), 4 → (3, 1), 5 → (3, 2)."""
    need = members // 2 + 1
    return need, max(0, members - need)


def quorum_table(upto: int = 9) -> List[Tuple[int, int, int]]:
    """Rows (nodes, quorum, failures tolerated) for 1..upto nodes, as KUMA's guide prints them."""
    return [(n, *quorum(n)) for n in range(1, upto + 1)]


def quorum_summary(kind: str, members: int) -> str:
    """One line for the dry run: this inventory's row of the quorum table and its neighbours."""
    role = QUORUM_ROLE.get(kind, "etcd")
    need, tolerated = quorum(members)
    rows = ", ".join(f"{n}→{q}/{t}" for n, q, t in quorum_table(max(members + 2, 5)))
    return (
        f"quorum: {members} {role} node(s): quorum {need}, tolerates {tolerated} failure(s) "
        f"(nodes→quorum/failures tolerated: {rows})"
    )


def count_problems(members: int, noun: str = "etcd") -> List[str]:
    """What is wrong with ``members`` voting nodes (none: nothing; a missing role is said apart):
    fewer than 3 (no failure tolerated), or even (no better than one fewer), with the figures."""
    need, tolerated = quorum(members)
    if 0 < members < FAULT_TOLERANT:
        return [
            f"{members} {noun} node(s): quorum {need}, tolerates {tolerated} failure(s); "
            f"a fault-tolerant cluster needs at least {FAULT_TOLERANT}"
        ]
    if members and members % 2 == 0:
        less = quorum(members - 1)
        return [
            f"{members} {noun} nodes (even): quorum {need}, tolerates {tolerated} failure(s), no better "
            f"than {members - 1} (quorum {less[0]}, tolerates {less[1]}); use an odd number"
        ]
    return []


def _first_line(members: Sequence[Member]) -> int:
    lines = [m.line for m in members if m.line]
    return min(lines) if lines else 0


def check(members: Sequence[Member], rules: Rules) -> List[Finding]:
    """Every finding of the topology under ``rules``, problems first in a fixed order:
    a role nobody has, too few workers, a quorum too small or even, shared roles the product
    forbids (a warning with ``--demo`` or when it allows them), kubeadm control planes without a VIP.
    """
    out: List[Finding] = []
    kind = rules.kind
    control, voting = CONTROL_ROLE.get(kind, "controlplane"), QUORUM_ROLE.get(kind, "etcd")
    wanted: List[str] = []
    if kind:
        wanted = [voting] + ([control] if control != voting else [])
    for role in [*wanted, "worker"]:
        if not any(role in m.roles for m in members):
            out.append(Finding("problem", f"no node has the {role} role"))
    workers = [m for m in members if "worker" in m.roles]
    if rules.min_workers and len(workers) < rules.min_workers:
        out.append(
            Finding(
                "problem",
                f"{len(workers)} worker(s), fewer than the bundle's min_workers ({rules.min_workers})",
                _first_line(workers),
            )
        )
    if kind:
        voters = [m for m in members if voting in m.roles]
        for message in count_problems(len(voters), voting):
            out.append(Finding("problem", message, _first_line(voters)))
    shared = [m for m in members if control in m.roles and "worker" in m.roles]
    if shared:
        names = ", ".join(m.name for m in shared)
        if rules.forbid_shared and not rules.demo:
            out.append(
                Finding(
                    "problem",
                    f"{control} and worker roles share {names}: this product allows that only for a "
                    f"demo; give the {control}s nodes of their own, or pass --demo for a demonstration "
                    "install",
                    _first_line(shared),
                )
            )
        elif rules.forbid_shared:
            out.append(
                Finding(
                    "warning",
                    f"{control} and worker roles share {names}: a demonstration install (--demo); "
                    "this product cannot be upgraded or extended without reinstalling the cluster",
                    _first_line(shared),
                )
            )
        else:
            out.append(
                Finding(
                    "warning",
                    f"{control} and worker roles share {names}: fine for a demo, not for production",
                    _first_line(shared),
                )
            )
    planes = [m for m in members if control in m.roles]
    if kind == "kubeadm" and len(planes) > 1 and not rules.vip:
        out.append(
            Finding(
                "problem",
                f"{len(planes)} control-plane nodes and no vip: kubeadm joins them behind one control-plane "
                "endpoint; add vip: ADDRESS (a free address on their network) to the inventory",
                _first_line(planes),
            )
        )
    return out


def problems(findings: Sequence[Finding], path: str = "") -> List[str]:
    """The problems' texts (``FILE:LINE: ...`` when ``path`` is given)."""
    return [f.text(path) for f in findings if f.severity == "problem"]


def warnings(findings: Sequence[Finding], path: str = "") -> List[str]:
    """The warnings' texts."""
    return [f.text(path) for f in findings if f.severity == "warning"]


def roles_of(kind: str, roles: Sequence[str]) -> Tuple[str, ...]:
    """A node's roles in the words of ``kind``: an rke ``cluster.yml`` node's roles as they are;
    k0sctl's ``controller+worker`` and ``single`` are both roles (controller and worker)."""
    mapping: Dict[str, Tuple[str, ...]] = {
        "controller+worker": ("controller", "worker"),
        "single": ("controller", "worker"),
    }
    out: List[str] = []
    for role in roles:
        for r in mapping.get(role, (role,)):
            if r not in out:
                out.append(r)
    return tuple(out)
