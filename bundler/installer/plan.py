"""What an install will do, as pure data: the plan, phase by phase and node by node.

``make_plan`` takes the lock, the inventory's nodes, the chosen image route, what the
journal says is done and the facts the nodes gave (``preflight.gather``; none with
``--dry-run --offline``) and returns the ordered phases, each with the actions still
to do on each node. ``--dry-run`` renders that plan; ``apply`` executes it. Also the
topology warnings and the prose overview of what the bundle brings (``describe``).
No I/O here: data in, data out (``tests/test_layers.py`` checks it).
"""

from pathlib import Path
from typing import Any, Dict, FrozenSet, Iterable, List, Mapping, Optional, Set, Tuple, Union

from bundler import kinds, oci
from bundler.compat import dataclass, field, replace
from bundler.installer import lbconfig, topology
from bundler.installer.inventory import ClusterOptions, Endpoint, Node
from bundler.lock import Lock, RoledImage, Step

# ``prepare`` runs the steps marked ``when: before-cluster`` (the nodes' preparation: users, swap,
# hosts, NTP, a package's configuration): after packages and binaries, whose tools such steps
# use, and before the images and the cluster tool, which need the prepared nodes. ``steps`` runs
# the others once the cluster is up.
K0S = "k0s"  # the cluster kind whose phases branch here (the lead wires it into the kind interface)
PHASES = ("preflight", "packages", "binaries", "prepare", "images", "cluster", "steps")


@dataclass(frozen=True)
class Route:
    """How images reach the nodes: ``ssh-load``, or ``registry`` (where it is, how to trust and log in)."""

    mode: str = "ssh-load"
    address: str = ""  # HOST:PORT of the site registry
    node: Optional[Node] = None  # the node the installer runs the registry on (--registry-node)
    data: str = ""  # the registry's data folder on that node
    ca: Optional[Path] = None  # the CA the nodes' Docker must trust for ``address``
    cert: Optional[Path] = None  # a site certificate and key for the registry the installer runs
    key: Optional[Path] = None
    user: str = ""  # credentials for an existing registry
    password: str = field(default="", repr=False)
    chunk: int = 0  # upload blobs above this size in chunks

    def describe(self, runtime: str = "docker") -> str:
        if self.mode != "registry":
            return "over SSH into " + (
                "ctr -n k8s.io images import" if runtime == "containerd" else "docker load"
            )
        where = (
            f"a registry the installer runs on {self.node.name} ({self.data})"
            if self.node
            else "the site registry"
        )
        tls = (
            "its own site CA"
            if self.node and not self.cert
            else (str(self.ca) if self.ca else "this node's CAs")
        )
        return (
            f"pushed once to {where} at {self.address} (TLS trusted via {tls}"
            f"{', as ' + self.user if self.user else ''}) and pulled by digest"
        )


def etcd_quorum(members: int) -> Tuple[int, int]:
    """(quorum, failures tolerated) of an etcd cluster: 3 → (2, 1), 5 → (3, 2) (``topology.quorum``)."""
    return topology.quorum(members)


def _etcd_count(members: int) -> List[str]:
    """What is wrong with ``members`` etcd nodes (``topology.count_problems``)."""
    return topology.count_problems(members, "etcd")


def topology_warnings(nodes: List[Node], min_workers: int = 0) -> List[str]:
    """What the cluster documents warn about: etcd count, shared roles, too few workers."""
    out = []
    etcd = [n for n in nodes if n.has("etcd")]
    if not etcd:
        out.append("no node has the etcd role: rke cannot build a cluster")
    out += _etcd_count(len(etcd))
    if not any(n.has("controlplane") for n in nodes):
        out.append("no node has the controlplane role: rke cannot build a cluster")
    shared = [n.name for n in nodes if n.has("controlplane") and n.has("worker")]
    if shared:
        out.append(
            f"controlplane and worker roles share {', '.join(shared)}: fine for a demo, not for production"
        )
    workers = [n for n in nodes if n.has("worker")]
    if min_workers and len(workers) < min_workers:
        out.append(f"{len(workers)} worker(s), fewer than the bundle's min_workers ({min_workers})")
    return out


def runtime(lock: Lock) -> str:
    """Where the nodes' images go: the cluster kind's runtime (``kinds.Kind.runtime``), else Docker."""
    kind = lock.cluster.get("kind", "")
    return kinds.KINDS[kind].runtime if kind in kinds.KINDS else "docker"


def cluster_kind(lock: Lock) -> str:
    """The kind whose bring-up the cluster phase runs: the lock's ``cluster.kind``, or ``rke`` for a
    bundle that carries an ``rke`` binary without a ``cluster:`` section (the first bundles); "" none."""
    kind = lock.cluster.get("kind", "")
    if not kind and any(b.name == "rke" for b in lock.binaries):
        return "rke"
    return kind


def brings_up_cluster(lock: Lock) -> bool:
    """Whether the bundle brings a cluster up itself (a cluster kind, or its own rke)."""
    return bool(lock.cluster.get("kind")) or any(b.name == "rke" for b in lock.binaries)


def topology_rules(lock: Lock, demo: bool = False, vip: str = "") -> topology.Rules:
    """The topology rules of the bundle's cluster kind and product (``topology.Rules``); ``vip``:
    the inventory's control-plane endpoint, if it gives one (kubeadm)."""
    kind = lock.cluster.get("kind") or ("rke" if brings_up_cluster(lock) else "")
    forbid = lock.cluster.get("shared_roles") == "demo-only"
    return topology.Rules(kind, lock.min_workers, forbid, demo, vip)


def topology_findings(
    lock: Lock, nodes: List[Node], demo: bool = False, vip: str = ""
) -> List[topology.Finding]:
    """Problems and warnings of the inventory's topology under the bundle's rules (with lines)."""
    rules = topology_rules(lock, demo, vip)
    members = [topology.Member(n.name, topology.roles_of(rules.kind, n.roles), n.line) for n in nodes]
    return topology.check(members, rules)


def topology_problems(lock: Lock, nodes: List[Node], demo: bool = False, vip: str = "") -> List[str]:
    """What in the inventory's topology stops a real install until the operator confirms it:
    a role the bundle needs that no node has, fewer workers than the lock's ``min_workers`` and,
    when the bundle brings the cluster up, a quorum that is too small or even, and shared roles
    the product forbids without ``--demo`` (``topology.check``). Other shared roles stay a
    warning (``topology_warnings``)."""
    return [f.message for f in topology_findings(lock, nodes, demo, vip) if f.severity == "problem"]


def located_topology_problems(
    lock: Lock, nodes: List[Node], inventory: str, nodes_line: int, demo: bool = False, vip: str = ""
) -> List[str]:
    """``topology_problems`` as ``INVENTORY:LINE: problem``: at the line of the nodes at fault (a
    quorum's first voting node, the first worker), a problem of the whole list at the ``nodes:``
    key's line (``nodes_line``; 0 when unknown, then ``INVENTORY:`` alone)."""
    kind = topology_rules(lock, demo, vip).kind
    voting = topology.QUORUM_ROLE.get(kind, "etcd")
    lines = [n.line for n in nodes if n.line and voting in topology.roles_of(kind, n.roles)]
    out = []
    for found in topology_findings(lock, nodes, demo, vip):
        if found.severity != "problem":
            continue
        text = found.message
        if len(lines) > 1 and text.startswith(f"{len(lines)} {voting} node"):  # a quorum problem: say where
            text += f" ({voting} nodes on lines {', '.join(map(str, lines))})"
        line = found.line or nodes_line
        out.append(f"{inventory}:{line}: {text}" if line else f"{inventory}: {text}")
    return out


def image_targets(nodes: List[Node], roles: Tuple[str, ...] = ("worker",)) -> List[Node]:
    """The nodes that receive the bundle's images: those with one of ``roles`` (the manifest's
    ``image_roles``, workers by default), or every node when none has such a role."""
    targets = [n for n in nodes if any(n.has(r) for r in roles)]
    return targets or list(nodes)


def kubernetes_version_problem(lock: Lock, site_version: Optional[str]) -> Optional[str]:
    """Why the site's ``cluster.yml`` cannot be used with this bundle: it names a Kubernetes version
    other than the lock's, whose system images the bundle carries (rke would want others)."""
    locked = lock.cluster.get("kubernetes_version", "")
    if not locked or not site_version or site_version == locked:
        return None
    return (
        f"cluster.yml asks for kubernetes_version {site_version}, the bundle carries the system images "
        f"of {locked}: rke would pull images the bundle does not have; remove kubernetes_version "
        f"from cluster.yml (the installer then uses {locked}) or set it to {locked}"
    )


def cluster_file_problems(lock: Lock, options: ClusterOptions) -> List[str]:
    """What in the site's ``cluster.yml`` would make rke want images the bundle does not carry:
    another Kubernetes version, another network plugin, kube-dns, NodeLocal DNS, or its own
    ``system_images``. rke up itself would finish; pods would then wait for images forever."""
    problems = []
    version = kubernetes_version_problem(lock, options.kubernetes_version)
    if version:
        problems.append(version)
    plugin = lock.cluster.get("network_plugin", "")
    if plugin and options.network_plugin and options.network_plugin != plugin:
        problems.append(
            f"cluster.yml asks for network plugin {options.network_plugin}, the bundle carries {plugin}'s "
            f"images: remove network.plugin from cluster.yml (the installer then writes {plugin}) or set it "
            f"to {plugin}"
        )
    if options.dns_provider and options.dns_provider != "coredns":
        problems.append(
            f"cluster.yml asks for dns.provider {options.dns_provider}; the bundle carries CoreDNS only: "
            "remove it or set it to coredns"
        )
    if options.nodelocal:
        problems.append("cluster.yml enables dns.nodelocal; the bundle does not carry NodeLocal DNS's image")
    if options.system_images:
        problems.append(
            "cluster.yml has its own system_images: rke would use those instead of the bundle's; remove them"
        )
    return problems


def baseline_gaps(
    baseline: Dict[str, str], installed: Dict[str, str]
) -> Tuple[List[str], List[Tuple[str, str, str]]]:
    """What a node lacks of the dpkg-status baseline a bundle was built for (names), and what it
    has at another version than the baseline's: (name, the node's version, the baseline's)."""
    missing = sorted(name for name in baseline if name not in installed)
    other = sorted(
        (name, installed[name], version)
        for name, version in baseline.items()
        if name in installed and installed[name] != version
    )
    return missing, other


def node_images(lock: Lock, nodes: List[Node]) -> Dict[str, Tuple[oci.Image, ...]]:
    """Node name → the images that node gets, in lock order: the workloads on the ``image_roles``
    nodes (on every node when none has such a role, as ``image_targets``) and the system images
    whose roles meet the node's (``Lock.images_for``). A node that gets nothing maps to ``()``."""
    if lock.cluster.get("kind") == K0S:  # k0s imports its own bundle file: no engine gets images
        return {n.name: () for n in nodes}
    targets = {n.name for n in image_targets(nodes, lock.image_roles)}
    unplaced = set(lock.workloads) - set(lock.placed)  # the image_roles ones; placed ones keep theirs
    out = {}
    for node in nodes:
        chosen = set(lock.images_for(node.roles))
        if node.name in targets:
            chosen |= unplaced  # the fallback: no node has one of image_roles
        else:
            chosen -= unplaced
        out[node.name] = tuple(i for i in lock.images if i in chosen)
    return out


def _images_lines(lock: Lock, nodes: List[Node], route: Route) -> List[str]:
    """The images phase for ``--dry-run``: application and system images apart, and who gets which."""
    per_node = node_images(lock, nodes)
    unplaced = [i for i in lock.workloads if i not in set(lock.placed)]
    app_nodes = [n.name for n in nodes if set(unplaced) & set(per_node[n.name])]
    tags = ", ".join(t for i in unplaced for t in i.tags) or "none"
    lines = [
        f"images     on {', '.join(app_nodes) or 'no node'}: {len(unplaced)} "
        f"{'application ' if lock.system_images else ''}images ({tags}), only those missing, in parallel, "
        + route.describe(runtime(lock))
    ]

    def by_role(records: Tuple[RoledImage, ...]) -> List[str]:
        out = []
        for record in records:
            image = lock.find_image(record.ref)
            have = [n.name for n in nodes if image is not None and image in per_node[n.name]]
            roles = "/".join(record.roles)
            out.append(f"             {record.ref} ({roles}): {', '.join(have) or 'no node'}")
        return out

    if lock.placed_images:
        lines.append(f"           {len(lock.placed_images)} application images with their own roles:")
        lines += by_role(lock.placed_images)
    if lock.system_images:
        kind, version = lock.cluster.get("kind", "the cluster"), lock.cluster.get("kubernetes_version", "")
        lines.append(f"           {len(lock.system_images)} system images for {kind} {version}, by role:")
        lines += by_role(lock.system_images)
    return lines


def _k0s_lines(lock: Lock, nodes: List[Node]) -> List[str]:
    """The images phase of a k0s bundle for ``--dry-run``: one bundle file, on the workload nodes."""
    workers = ", ".join(n.name for n in nodes if n.has("worker")) or "no node"
    return [
        f"images     {len(lock.system_images)} k0s airgap images (and the workloads' own) as one file into "
        f"/var/lib/k0s/images (DATADIR/images for a host with a dataDir) on {workers} (k0s imports it; "
        "controllers run no pods)"
    ]


def _k0s_cluster_line(lock: Lock) -> str:
    version = lock.cluster.get("kubernetes_version", "")
    if lock.cluster.get("k0sctl"):
        return f"k0sctl apply --config <inventory> on this node (k0s {version}), then k0sctl kubeconfig"
    return (
        f"k0s {version}: install controller on the first controller, then the other controllers and "
        "the workers joined with tokens created there"
    )


def _cluster_line(lock: Lock, rke: bool, route: Route) -> str:
    if lock.cluster.get("kind") == K0S:
        return _k0s_cluster_line(lock)
    if not rke:
        return "skipped (no rke in the bundle)"
    registry = f", with private_registries: {route.address} (default)" if route.mode == "registry" else ""
    return "rke up --config <inventory> on this node" + registry


def _packages_line(lock: Lock) -> str:
    """What the packages phase installs, by what the bundle carries: rpms, debs, or nothing (a k0s
    bundle brings its cluster as binaries)."""
    if lock.rpms:
        return f"{len(lock.rpms)} rpm packages with dnf (or yum) from the bundled repository only"
    if lock.debs:
        return f"{len(lock.debs)} deb packages with apt from the bundled repository only"
    return "none (the bundle carries no packages)"


def describe(lock: Lock, nodes: List[Node], route: Route = Route()) -> List[str]:
    """The plan, phase by phase and node by node (``--dry-run`` prints it)."""
    plat = lock.platform
    rke = any(b.name == "rke" for b in lock.binaries)
    every = ", ".join(n.name for n in nodes)
    after = [s for s in lock.steps if s.when != "before-cluster"]
    lines = [
        f"preflight  on {every}: reachable over SSH, sudo, {plat.get('os')} {plat.get('codename')} "
        f"{plat.get('arch')}, swap off, free space, ports by role, clock",
        f"packages   on {every}: " + _packages_line(lock),
        *[
            f"             {', '.join(names)} only on {role} nodes: "
            + (", ".join(n.name for n in nodes if n.has(role)) or "no node")
            for role, names in sorted({**lock.deb_roles, **lock.rpm_roles}.items())
        ],
        f"binaries   on {every}: " + (", ".join(f"{b.dest} ({b.mode})" for b in lock.binaries) or "none"),
        "prepare    before the cluster, in order: "
        + (
            ", ".join(f"{s.name} (on {s.target})" for s in lock.steps if s.when == "before-cluster") or "none"
        ),
        *(_k0s_lines(lock, nodes) if lock.cluster.get("kind") == K0S else _images_lines(lock, nodes, route)),
        "cluster    " + _cluster_line(lock, rke, route),
        "steps      in order: "
        + (", ".join(s.name + ("" if s.on == "control" else f" (on {s.target})") for s in after) or "none")
        + (", the others on this node" if any(s.on != "control" for s in after) else ""),
    ]
    return lines


# ---------------------------------------------------------------- the plan as data

# kubeadm's bring-up over SSH (installer/kubeadmup.py: containerd configured, then kubeadm), after
# keepalived + haproxy on the load balancers (installer/lbsetup.py).
KUBEADM_UP = (
    "containerd's config.toml for the kubelet on every node, kubeadm init --config on the first control "
    "plane (controlPlaneEndpoint VIP:PORT, --upload-certs with a vip:), the other control planes joined one "
    "at a time, the workers in parallel, the bootstrap token deleted"
)
LOAD_BALANCER = "loadbalancer"  # the cluster phase's item on a load-balancer node (keepalived + haproxy)
LOCAL = "local"  # in actions and the journal: the node the installer runs on (rke up, steps)


@dataclass(frozen=True)
class NodeFacts:
    """What one node said before the plan was made (``preflight.gather``); ``None``: not asked."""

    problems: Tuple[str, ...] = ()  # why the preflight refuses it (unreachable included)
    warnings: Tuple[str, ...] = ()  # what it could not tell, or advice
    summary: str = ""  # what the preflight found, e.g. "x86_64 bookworm"
    checked: bool = False  # the preflight's checks ran on it
    # Docker: the image IDs its engine holds; containerd: the manifest digests its k8s.io namespace holds
    images: Optional[FrozenSet[str]] = None
    # Docker: tag -> the image ID it points at there; containerd: full name -> manifest digest
    tags: Optional[Mapping[str, str]] = None
    binaries: Optional[Mapping[str, str]] = None  # a binary's dest -> the SHA-256 found there ("" if none)


@dataclass(frozen=True)
class Action:
    """One thing still to do: what the journal records once done (``key``) and how it reads."""

    phase: str
    node: str  # a node's name, or LOCAL
    item: str  # package=version, a binary's dest, an image ID, "rke-up", a step's name
    kind: str  # install | load | pull | tag | run
    what: str  # for people, after ``kind``: "test/app-a:1", "/usr/local/bin/rke (0755)"

    @property
    def key(self) -> str:
        """The journal's key for it (``Journal.mark_done(phase, node, item)``)."""
        return f"{self.phase}/{self.node}/{self.item}"


@dataclass(frozen=True)
class PhasePlan:
    """One phase: the nodes it reports on, the actions left, what each node already has."""

    name: str
    nodes: Tuple[Node, ...] = ()  # one report line each
    actions: Tuple[Action, ...] = ()
    present: Mapping[str, Tuple[str, ...]] = field(default_factory=dict)  # node -> items already there
    problems: Mapping[str, str] = field(default_factory=dict)  # node -> why it fails (preflight)
    warnings: Mapping[str, Tuple[str, ...]] = field(default_factory=dict)
    notes: Tuple[str, ...] = ()  # phase-wide lines: "no packages in the bundle", "step x: done before"
    refusals: Tuple[str, ...] = ()  # cluster-wide reasons to stop (preflight)

    def of(self, node: str) -> Tuple[Action, ...]:
        """The actions left on ``node``."""
        return tuple(a for a in self.actions if a.node == node)


@dataclass(frozen=True)
class Plan:
    """The ordered phases of an install of ``name`` ``version``; ``offline``: no node was asked."""

    name: str
    version: str
    phases: Tuple[PhasePlan, ...]
    offline: bool = False

    @property
    def actions(self) -> Tuple[Action, ...]:
        return tuple(a for p in self.phases for a in p.actions)

    def refusal(self) -> Optional[str]:
        """Why the install stops before changing anything (the preflight's failures), or None."""
        for phase in self.phases:
            message = failure_message(phase.name, list(phase.problems), phase.refusals)
            if message:
                return message
        return None

    def as_dict(self) -> Dict[str, Any]:
        """The plan as JSON-ready data (``--dry-run --json``)."""
        return {
            "bundle": self.name,
            "version": self.version,
            "offline": self.offline,
            "refused": self.refusal(),
            "phases": [
                {
                    "name": p.name,
                    "nodes": [n.name for n in p.nodes],
                    "actions": [
                        {"key": a.key, "node": a.node, "item": a.item, "kind": a.kind, "what": a.what}
                        for a in p.actions
                    ],
                    "present": {k: list(v) for k, v in p.present.items()},
                    "problems": dict(p.problems),
                    "notes": list(p.notes) + list(p.refusals),
                }
                for p in self.phases
            ],
        }


def failure_message(phase: str, failed: List[str], refusals: Tuple[str, ...] = ()) -> Optional[str]:
    """The error that stops an install at ``phase``: the nodes that failed, and cluster-wide reasons."""
    if not failed and not refusals:
        return None
    parts = ([f"failed on {', '.join(failed)}"] if failed else []) + list(refusals)
    return f"{phase}: {'; '.join(parts)}; fix that and run the same command again (finished work is skipped)"


def journal_done(state: Mapping[str, Any], name: str, lock_sha256: str) -> FrozenSet[str]:
    """The journal's finished items that count for this bundle: none when it recorded another one."""
    entry = state.get("installed", {}).get(name)
    if not isinstance(entry, dict) or entry.get("lock_sha256") != lock_sha256:
        return frozenset()
    return frozenset(k for k, v in state.get("done", {}).items() if v)


@dataclass(frozen=True)
class _Inputs:
    lock: Lock
    nodes: Tuple[Node, ...]
    route: Route
    done: FrozenSet[str]
    facts: Optional[Mapping[str, NodeFacts]]
    per_node: Mapping[str, Tuple[oci.Image, ...]]
    endpoint: Optional[Endpoint] = None  # kubeadm's vip: (the load balancers' VIP)

    def fact(self, node: Node) -> NodeFacts:
        return (self.facts or {}).get(node.name) or NodeFacts()


def _preflight(x: _Inputs) -> PhasePlan:
    if x.facts is None:
        return PhasePlan("preflight", notes=("not run: --offline, no node was contacted",))
    problems = {n.name: "; ".join(x.fact(n).problems) for n in x.nodes if x.fact(n).problems}
    refusals: Tuple[str, ...] = ()
    if x.lock.cluster.get("kind") == "rke" or any(b.name == "rke" for b in x.lock.binaries):
        refusals = tuple(w for w in topology_warnings(list(x.nodes)) if "cannot build a cluster" in w)
    return PhasePlan(
        "preflight",
        x.nodes,
        present={n.name: (x.fact(n).summary,) for n in x.nodes if n.name not in problems},
        problems=problems,
        warnings={n.name: x.fact(n).warnings for n in x.nodes if x.fact(n).warnings},
        refusals=refusals,
    )


def _split(
    x: _Inputs, phase: str, wanted: Mapping[str, List[Tuple[str, str, str, Optional[bool]]]]
) -> PhasePlan:
    """Per node, (item, kind, what, there) -> actions and present items; ``there`` is what the node
    said (None: not asked, then the journal tells)."""
    actions, present = [], {}
    for node in x.nodes:
        if node.name not in wanted:
            continue
        have = []
        for item, kind, what, there in wanted[node.name]:
            done = there if there is not None else f"{phase}/{node.name}/{item}" in x.done
            if done:
                have.append(item)
            else:
                actions.append(Action(phase, node.name, item, kind, what))
        present[node.name] = tuple(have)
    return PhasePlan(phase, tuple(n for n in x.nodes if n.name in wanted), tuple(actions), present)


def rpm_requests(lock: Lock, roles: Iterable[str]) -> List[str]:
    """The rpms a node with ``roles`` names to dnf, as ``name-[epoch:]version-release.arch``."""
    return [f"{r.name}-{r.version}.{r.arch}" for r in lock.rpms_for(roles)]


def _packages(x: _Inputs) -> PhasePlan:
    if not x.lock.debs and not x.lock.rpms:
        return PhasePlan("packages", notes=("no packages in the bundle",))
    wanted: Dict[str, List[Tuple[str, str, str, Optional[bool]]]] = {}
    for node in x.nodes:  # every node's requests, and its roles' (``debs.roles``, Lock.debs_for)
        requested = [f"{d.name}={d.version}" for d in x.lock.debs_for(node.roles)]
        requested += rpm_requests(x.lock, node.roles)  # rpms.roles likewise (Lock.rpms_for)
        wanted[node.name] = [(p, "install", p, None) for p in requested]
    return _split(x, "packages", wanted)


def _binaries(x: _Inputs) -> PhasePlan:
    if not x.lock.binaries:
        return PhasePlan("binaries", notes=("no binaries in the bundle",))
    wanted: Dict[str, List[Tuple[str, str, str, Optional[bool]]]] = {}
    for node in x.nodes:
        found = x.fact(node).binaries
        wanted[node.name] = [
            (
                b.dest,
                "install",
                f"{b.dest} ({b.mode})",
                None if found is None else found.get(b.dest) == b.sha256,
            )
            for b in x.lock.binaries
        ]
    return _split(x, "binaries", wanted)


def _k0s_images(x: _Inputs) -> PhasePlan:
    """k0s: one image bundle file into /var/lib/k0s/images on every node that runs workloads."""
    nodes = tuple(n for n in x.nodes if n.has("worker"))
    todo = tuple(
        Action("images", n.name, "k0s-airgap", "place", "airgap images into /var/lib/k0s/images")
        for n in nodes
        if f"images/{n.name}/k0s-airgap" not in x.done
    )
    return PhasePlan("images", nodes, todo)


def _images(x: _Inputs) -> PhasePlan:
    if x.lock.cluster.get("kind") == K0S:
        return _k0s_images(x)
    containerd = runtime(x.lock) == "containerd"
    verb = "pull" if x.route.mode == "registry" else ("import" if containerd else "load")
    wanted: Dict[str, List[Tuple[str, str, str, Optional[bool]]]] = {}
    for node in x.nodes:
        if not x.per_node.get(node.name):
            continue
        fact = x.fact(node)
        items: List[Tuple[str, str, str, Optional[bool]]] = []
        for image in x.per_node[node.name]:
            names = ", ".join(image.tags) or image.ref
            # containerd holds manifests under full names; Docker image IDs under familiar tags
            key = image.manifest if containerd else image.config
            labels = oci.full_names(image) if containerd else image.tags
            if fact.images is None or fact.tags is None:
                items.append((image.config, verb, names, None))
            elif key not in fact.images:
                items.append((image.config, verb, names, False))
            elif any(fact.tags.get(t) != key for t in labels):
                items.append((image.config, "tag", names, False))
            else:
                items.append((image.config, verb, names, True))
        wanted[node.name] = items
    if not wanted:
        return PhasePlan("images", notes=("no images for any node",))
    return _split(x, "images", wanted)


def _cluster(x: _Inputs) -> PhasePlan:
    kind = cluster_kind(x.lock)
    if kind == K0S:
        if f"cluster/{LOCAL}/k0s-up" in x.done:
            return PhasePlan("cluster", notes=("k0s: brought up before, skipped",))
        how = "k0sctl apply" if x.lock.cluster.get("k0sctl") else "k0s install, joined with tokens"
        return PhasePlan("cluster", actions=(Action("cluster", LOCAL, "k0s-up", "run", how),))
    if kind == "kubeadm":
        if f"cluster/{LOCAL}/kubeadm-up" in x.done:
            return PhasePlan("cluster", notes=("kubeadm init and joins: done before, skipped",))
        lb = _load_balancers(x)
        return replace(lb, actions=(*lb.actions, Action("cluster", LOCAL, "kubeadm-up", "run", KUBEADM_UP)))
    if kind != "rke" or not any(b.name == "rke" for b in x.lock.binaries):
        return PhasePlan("cluster", notes=("no rke in the bundle: skipped",))
    if f"cluster/{LOCAL}/rke-up" in x.done:
        return PhasePlan("cluster", notes=("rke up: done before, skipped",))
    registry = f", private_registries: {x.route.address}" if x.route.mode == "registry" else ""
    return PhasePlan("cluster", actions=(Action("cluster", LOCAL, "rke-up", "run", f"rke up{registry}"),))


def _load_balancers(x: _Inputs) -> PhasePlan:
    """kubeadm with load-balancer nodes: keepalived + haproxy configured on each before ``kubeadm
    init`` (``lbsetup``), unless the journal has it done; the nodes without them have nothing here."""
    lbs = lbconfig.balancers(list(x.nodes))
    if x.endpoint is None or not lbs:
        return PhasePlan("cluster")
    wanted: Dict[str, List[Tuple[str, str, str, Optional[bool]]]] = {
        n.name: [(LOAD_BALANCER, "configure", lbconfig.describe(x.endpoint, lbs, n), None)] for n in lbs
    }
    return _split(x, "cluster", wanted)


def step_nodes(step: Step, nodes: Union[List[Node], Tuple[Node, ...]]) -> Tuple[Node, ...]:
    """The nodes a step on nodes runs on (inventory order): all, those of its role, or those it names."""
    if step.on == "all":
        return tuple(nodes)
    if step.on == "nodes":
        return tuple(n for n in nodes if n.name in step.nodes or n.address in step.nodes)
    return tuple(n for n in nodes if n.has(step.on))


def step_problems(lock: Lock, nodes: List[Node]) -> List[str]:
    """What in the lock's steps does not fit the inventory: a node name no node has."""
    known = {n.name for n in nodes} | {n.address for n in nodes}
    return [
        f"step {s.name}: on names {name}, which is not a node of the inventory "
        f"(nodes: {', '.join(n.name for n in nodes)})"
        for s in lock.steps
        for name in s.nodes
        if name not in known
    ]


def _prepare(x: _Inputs) -> PhasePlan:
    return _step_phase(x, "prepare", "before-cluster")


def _steps(x: _Inputs) -> PhasePlan:
    return _step_phase(x, "steps", "after-cluster")


def _step_phase(x: _Inputs, phase: str, when: str) -> PhasePlan:
    """The steps of ``phase`` (those whose ``when`` is ``when``), each here or on its nodes."""
    notes: List[str] = []
    actions: List[Action] = []
    present: Dict[str, List[str]] = {}
    on_nodes: Set[str] = set()
    for step in x.lock.steps:
        if step.when != when:
            continue
        what = f"{step.name} ({step.script})"
        if step.on == "control":
            if f"{phase}/{LOCAL}/{step.name}" in x.done:
                notes.append(f"step {step.name}: done before, skipped")
            else:
                actions.append(Action(phase, LOCAL, step.name, "run", what))
            continue
        targets = step_nodes(step, x.nodes)
        if not targets:
            notes.append(f"step {step.name}: no node is {step.on}: nothing to run")
        for node in targets:
            on_nodes.add(node.name)
            if f"{phase}/{node.name}/{step.name}" in x.done:
                present.setdefault(node.name, []).append(step.name)
            else:
                actions.append(Action(phase, node.name, step.name, "run", what))
    return PhasePlan(
        phase,
        tuple(n for n in x.nodes if n.name in on_nodes),
        tuple(actions),
        {k: tuple(v) for k, v in present.items()},
        notes=tuple(notes)
        or (() if actions or on_nodes else ("no steps" if phase == "steps" else f"no {when} steps",)),
    )


# One builder per phase, in the order of PHASES (``apply.RUNNERS`` follows the same order).
_BUILDERS = dict(zip(PHASES, (_preflight, _packages, _binaries, _prepare, _images, _cluster, _steps)))


def make_plan(
    lock: Lock,
    nodes: List[Node],
    route: Route = Route(),
    done: FrozenSet[str] = frozenset(),
    facts: Optional[Mapping[str, NodeFacts]] = None,
    phases: Tuple[str, ...] = PHASES,
    endpoint: Optional[Endpoint] = None,
) -> Plan:
    """The install of ``lock`` on ``nodes`` as ordered phases of the actions still to do.

    An item is still to do unless the node says it has it (``facts``: an image ID with its
    tags, a binary with its SHA-256) or, where the node was not asked, the journal's ``done``
    (``journal_done``) holds it. ``facts`` None is the offline view: no preflight, the journal
    alone. ``phases`` is every phase, or the one ``--only`` names. ``endpoint``: a kubeadm
    inventory's ``vip:``, which its load-balancer nodes carry (their actions in ``cluster``).
    """
    inputs = _Inputs(lock, tuple(nodes), route, done, facts, node_images(lock, nodes), endpoint)
    return Plan(lock.name, lock.version, tuple(_BUILDERS[p](inputs) for p in phases), facts is None)


def _grouped(actions: Tuple[Action, ...]) -> List[str]:
    """``load a, b; tag c``: the actions of one node, those of a kind together, in order."""
    kinds: Dict[str, List[str]] = {}
    for action in actions:
        kinds.setdefault(action.kind, []).append(action.what)
    return [f"{kind} {', '.join(whats)}" for kind, whats in kinds.items()]


def render(plan: Plan) -> List[str]:
    """The plan for people, phase by phase and node by node (``--dry-run`` prints it)."""
    lines = []
    for phase in plan.phases:
        head = f"{phase.name:<10} "
        rows = []
        for node in phase.nodes:
            if node.name in phase.problems:
                rows.append(f"{node.name:<20} FAILED: {phase.problems[node.name]}")
                continue
            todo = phase.of(node.name)
            have = phase.present.get(node.name, ())
            if phase.name == "preflight":
                text = f"ok: {', '.join(h for h in have if h) or 'checked'}"
            else:
                text = "; ".join(_grouped(todo)) or "nothing to do"
                text += f" ({len(have)} already there)" if have else ""
            rows.append(f"{node.name:<20} {text}")
            rows += [f"{node.name:<20} warning: {w}" for w in phase.warnings.get(node.name, ())]
        rows += [f"here: {a.kind} {a.what}" for a in phase.actions if a.node == LOCAL]
        rows += list(phase.notes) + [f"REFUSED: {r}" for r in phase.refusals]
        lines += [
            (head if i == 0 else " " * len(head)) + row for i, row in enumerate(rows or ["nothing to do"])
        ]
    return lines
