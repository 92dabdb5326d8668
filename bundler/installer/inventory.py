"""The site's inventory (Rancher RKE ``cluster.yml``) and ``--values`` files, read safely.

Only what the installer needs is taken from ``cluster.yml``: each node's
``address``, ``user``, ``role`` list, ``port``, ``ssh_key_path`` (else the file's
top-level ``ssh_key_path``, as rke reads it) and ``hostname_override``; and, for
the preflight of what rke requires, the top-level ``kubernetes_version`` and
``ignore_docker_version`` (``load_cluster_options``). Everything else in the file
is left for ``rke up``.
Parsing uses the PyYAML the installer carries (``safe_load``: no Python
tags). Errors name the file, the node and what to fix (exit 2).
"""

import re
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from bundler import files, kinds
from bundler.compat import dataclass, field
from bundler.errors import InputError
from bundler.installer._vendor import yaml

# RKE's three, and ``loadbalancer`` (a kubeadm cluster's keepalived + haproxy nodes in front of the
# control planes, as in Kubitect's HA example): one inventory format for both kinds.
ROLES = kinds.ALL_ROLES
MAX_INVENTORY_BYTES = 1024 * 1024
# The keys rke reads on a node (RKEConfigNode); any other one is a typo rke would ignore in silence
# (``prot: 22`` would mean port 22), so the installer refuses it.
NODE_KEYS = (
    "address",
    "port",
    "user",
    "role",
    "hostname_override",
    "internal_address",
    "ssh_key_path",
    "ssh_key",
    "ssh_cert_path",
    "ssh_cert",
    "ssh_agent_auth",
    "docker_socket",
    "labels",
    "taints",
    "node_id",
    "nodeName",
)
_VALUE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


# What an inventory may give as a login, an address and a node name. They reach ssh's command line
# (and, as names, remote paths): a value that starts with "-" would be read as an ssh option
# (-oProxyCommand=... runs a command here), and shell characters have no place in any of them.
LOGIN_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,31}")
ADDRESS_RE = re.compile(r"(?!-)[A-Za-z0-9.:_\[\]-]{1,253}")  # a name, IPv4 or IPv6; never "-..."
NODE_NAME_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9_.-]{0,62})")
# What Kubernetes takes as a node's name (an RFC 1123 subdomain, lowercase): the kubelet registers
# the node under it, so kubeadm, k0s and rke all stop on another, late, after nodes were changed.
KUBE_NAME_RE = re.compile(r"[a-z0-9](?:[-a-z0-9]*[a-z0-9])?(?:\.[a-z0-9](?:[-a-z0-9]*[a-z0-9])?)*")


def field_problem(what: str, value: str) -> Optional[str]:
    """Why ``value`` cannot be a node's ``login``, ``address`` or ``name`` (None when it can)."""
    pattern = {"login": LOGIN_RE, "address": ADDRESS_RE, "name": NODE_NAME_RE}[what]
    if pattern.fullmatch(value):
        return None
    allowed = {
        "login": "letters, digits, '_', '.', '-' (not first), at most 32",
        "address": "a host name or an IP address",
        "name": "letters, digits, '_', '.', '-' (not first), at most 63",
    }[what]
    return f"{value!r} is not a {what} ({allowed})"


@dataclass(frozen=True)
class Node:
    """One node of the cluster as the inventory describes it."""

    address: str
    user: str
    roles: Tuple[str, ...]
    port: int = 22
    ssh_key_path: Optional[str] = None
    hostname_override: Optional[str] = None
    # The node's line in the inventory (0: not read from a file), for FILE:LINE in messages
    # about it; not part of what a node is, so two equal nodes on two lines compare equal.
    line: int = field(default=0, compare=False)
    # rke logs in with something other than ssh_key_path (``ssh_agent_auth: true`` or an inline
    # ``ssh_key``): the preflight's rke-login check cannot stand in for it and is left out.
    rke_key_elsewhere: bool = field(default=False, compare=False)

    @property
    def name(self) -> str:
        return self.hostname_override or self.address

    def has(self, role: str) -> bool:
        return role in self.roles


@dataclass(frozen=True)
class ClusterOptions:
    """The cluster-wide settings of ``cluster.yml`` that the preflight checks against."""

    kubernetes_version: Optional[str] = None
    ignore_docker_version: bool = False
    # What else in cluster.yml changes which images rke wants (checked against the bundle's).
    network_plugin: Optional[str] = None  # network.plugin
    dns_provider: Optional[str] = None  # dns.provider
    nodelocal: bool = False  # dns.nodelocal names an address: NodeLocal DNSCache
    system_images: bool = False  # a system_images: override


def _load(path: Path, what: str) -> Any:
    data = files.read_capped(path, what, MAX_INVENTORY_BYTES)  # a FIFO or /dev/zero is refused
    try:
        return yaml.safe_load(data.decode("utf-8"))
    except RecursionError:
        raise InputError(f"{path}: not a valid {what}: nested too deeply") from None
    except (UnicodeDecodeError, yaml.YAMLError) as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        raise InputError(f"{path}{line}: not a valid {what}: {getattr(exc, 'problem', None) or exc}") from exc


def load_inventory(path: Path) -> List[Node]:
    """The nodes of an RKE ``cluster.yml``.

    Raises:
        InputError: unreadable, no nodes, a node without address/user/role, an
            unknown role, a bad port, or the same address and port twice.
    """
    doc = _load(path, "inventory (RKE cluster.yml)")
    raw_nodes = doc.get("nodes") if isinstance(doc, dict) else None
    if not isinstance(raw_nodes, list) or not raw_nodes:
        raise InputError(f"{path}: no 'nodes:' list; the inventory is an RKE cluster.yml with nodes")
    lines = _node_lines(path)
    nodes = []
    seen: Dict[Tuple[str, int], int] = {}
    names: Dict[str, int] = {}
    for i, raw in enumerate(raw_nodes):
        at = lines.get((i, ""), 0)
        where = f"{path}:{at}: nodes[{i}]" if at else f"{path}: nodes[{i}]"
        if not isinstance(raw, dict):
            raise InputError(f"{where} is not a mapping")
        address, user, role = raw.get("address"), raw.get("user"), raw.get("role")
        if not isinstance(address, str) or not address:
            raise InputError(f"{where} needs an address")
        where = f"{path}:{at}: node {address}" if at else f"{path}: node {address}"
        unknown = [str(k) for k in raw if k not in NODE_KEYS]
        if unknown:
            line = lines.get((i, unknown[0]), at)
            raise InputError(
                f"{path}:{line}: node {address}: unknown key {unknown[0]!r} (rke would ignore it); "
                f"a node takes {', '.join(NODE_KEYS)}"
            )
        if not isinstance(user, str) or not user:
            raise InputError(f"{where} needs a user (the SSH login)")
        for what, value in (("address", address), ("login", user)):
            problem = field_problem(what, value)
            if problem:
                raise InputError(f"{where}: {problem}")
        roles = role if isinstance(role, list) else [role]
        wrong = [r for r in roles if not (isinstance(r, str) and r in ROLES)]
        if not roles or wrong:
            raise InputError(
                f"{where}: role {wrong[0] if wrong else role!r} is not one of {', '.join(ROLES)}"
                if wrong and isinstance(wrong[0], str)
                else f"{where}: role must list some of {', '.join(ROLES)}; got {role!r}"
            )
        raw_port = raw.get("port", 22)
        # rke reads the port as a string ("22" in its docs) or a number; true or 22.9 is a mistake
        port = int(raw_port) if isinstance(raw_port, int) and not isinstance(raw_port, bool) else -1
        if isinstance(raw_port, str) and raw_port.isdigit():
            port = int(raw_port)
        if not 0 < port < 65536:
            raise InputError(f"{where}: port {raw_port!r} is not a TCP port (1-65535)")
        for text_key in ("ssh_key_path", "hostname_override", "user"):
            if text_key in raw and raw[text_key] is not None and not isinstance(raw[text_key], str):
                raise InputError(f"{where}: {text_key} {raw[text_key]!r} must be a string (quote it)")
        if (address, port) in seen:
            raise InputError(f"{where}: listed twice (also line {seen[(address, port)]})")
        seen[(address, port)] = at
        key, host = raw.get("ssh_key_path") or doc.get("ssh_key_path"), raw.get("hostname_override")
        if isinstance(host, str) and field_problem("name", host):
            raise InputError(f"{where}: hostname_override {field_problem('name', host)}")
        node = Node(
            address,
            user,
            tuple(str(r) for r in roles),
            port,
            key if isinstance(key, str) else None,
            host if isinstance(host, str) else None,
            at,
            any(bool(raw.get(k) or doc.get(k)) for k in ("ssh_agent_auth", "ssh_key")),
        )
        if node.name in names:
            # The reports, the journal and Kubernetes itself tell nodes apart by this name.
            raise InputError(
                f"{where}: name {node.name!r} is also the name of the node on line {names[node.name]}; "
                "give each node its own hostname_override"
            )
        names[node.name] = at
        nodes.append(node)
    return nodes


def nodes_line(path: Path) -> int:
    """The 1-based line of the inventory's ``nodes:`` key (0 when unknown): where a problem of the
    whole node list (no worker, too few workers) is, for ``FILE:LINE``."""
    return _node_lines(path).get((-1, ""), 0)


def _node_lines(path: Path) -> Dict[Tuple[int, str], int]:
    """(node index, key) → 1-based line of that key in the file; (index, "") → the node's own line;
    (-1, "") → the ``nodes:`` key's line. Read from the YAML's node tree (marks), since the loaded
    data has no lines."""
    try:
        text = files.read_capped(path, "inventory", MAX_INVENTORY_BYTES).decode("utf-8")
        tree = yaml.compose(text, Loader=yaml.SafeLoader)
    except (UnicodeDecodeError, yaml.YAMLError, RecursionError):
        return {}
    out: Dict[Tuple[int, str], int] = {}
    if not isinstance(tree, yaml.MappingNode):
        return out
    for key, value in tree.value:
        if getattr(key, "value", None) == "nodes" and isinstance(value, yaml.SequenceNode):
            out[(-1, "")] = key.start_mark.line + 1
            for i, item in enumerate(value.value):
                out[(i, "")] = item.start_mark.line + 1
                if isinstance(item, yaml.MappingNode):
                    for k, _ in item.value:
                        out[(i, str(k.value))] = k.start_mark.line + 1
    return out


def role_problems(nodes: List[Node], cluster: bool) -> List[str]:
    """What the inventory's roles lack: a cluster brought up by the bundle needs an etcd and a
    controlplane node (rke: "Cluster must have at least one etcd plane host"), and every
    inventory a worker (without one, workloads have nowhere to run). Pure."""
    problems = []
    wanted = ("etcd", "controlplane", "worker") if cluster else ("worker",)
    for role in wanted:
        if not any(role in n.roles for n in nodes):
            problems.append(f"no node has the {role} role")
    return problems


@dataclass(frozen=True)
class Endpoint:
    """The control-plane endpoint of a kubeadm cluster: ``vip:`` in cluster.yml, ADDRESS[:PORT]."""

    address: str
    port: int = 6443  # the API servers' port, which haproxy forwards

    def __str__(self) -> str:
        # an IPv6 literal in brackets, as Go's net.SplitHostPort (kubeadm, k0s) reads HOST:PORT
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"{host}:{self.port}"


def load_endpoint(path: Path) -> Optional[Endpoint]:
    """The ``vip:`` of cluster.yml (``10.0.0.100`` or ``10.0.0.100:6443``), or None when absent.

    Raises:
        InputError: a ``vip:`` that is not ADDRESS[:PORT] (the file and line named).
    """
    doc = _load(path, "inventory (RKE cluster.yml)")
    raw = doc.get("vip") if isinstance(doc, dict) else None
    if raw is None:
        return None
    line = _top_line(path, "vip")
    text = str(raw)
    address, _, port = text.rpartition(":") if text.count(":") == 1 else (text, "", "")
    octets = address.split(".")
    ipv4 = re.fullmatch(r"[0-9]{1,3}(?:\.[0-9]{1,3}){3}", address) and all(int(o) <= 255 for o in octets)
    if not ipv4 or (port and not (re.fullmatch(r"[0-9]{1,5}", port) and 0 < int(port) < 65536)):
        raise InputError(
            f"{path}:{line}: vip: {text!r} is not an IPv4 address with an optional port "
            "(e.g. vip: 10.0.0.100 or vip: 10.0.0.100:6443)"
        )
    number = int(port) if port else 6443
    if not 0 < number < 65536:
        raise InputError(f"{path}:{line}: vip: port {number} is not a TCP port")
    return Endpoint(address, number)


def vip_problem(path: Path, nodes: List[Node], endpoint: Optional[Endpoint]) -> Optional[str]:
    """Why a kubeadm inventory cannot work: more than one control plane without a ``vip:``
    (``kubeadm init --control-plane-endpoint`` needs one address that reaches them all, and
    ``kubeadm join --control-plane`` refuses a cluster initialised without it), or load-balancer
    nodes without a ``vip:`` to carry. None when it fits."""
    control = [n for n in nodes if n.has("controlplane")]
    balancers = [n for n in nodes if n.has("loadbalancer")]
    if endpoint is not None or (len(control) < 2 and not balancers):
        return None
    lines = _node_lines(path)
    if balancers:
        at = lines.get((nodes.index(balancers[0]), ""), 0)
        return (
            f"{path}:{at}: node {balancers[0].name} has the loadbalancer role but cluster.yml has no "
            "vip: (the address keepalived holds): add vip: ADDRESS[:PORT] at the top level"
        )
    at = lines.get((nodes.index(control[1]), ""), 0)
    return (
        f"{path}:{at}: {len(control)} control-plane nodes ({', '.join(n.name for n in control)}) need one "
        "endpoint in front of them: add vip: ADDRESS[:PORT] at the top level of cluster.yml (kubeadm init "
        "--control-plane-endpoint) and give nodes the loadbalancer role, or keep one control plane"
    )


def kube_name_problem(path: Path, node: Node) -> Optional[str]:
    """Why Kubernetes would refuse ``node``'s name (``FILE:LINE: ...``), or None."""
    if len(node.name) <= 253 and KUBE_NAME_RE.fullmatch(node.name):
        return None
    better = re.sub(r"[^-a-z0-9.]", "-", node.name.lower()).strip("-.") or "node-1"
    return (
        f"{path}:{node.line}: node {node.name}: Kubernetes registers the node under this name and takes "
        f"only lowercase letters, digits, '-' and '.' (RFC 1123); write hostname_override: {better}"
    )


def vip_line(path: Path) -> int:
    """The 1-based line of the inventory's ``vip:`` (0 when absent), for FILE:LINE in messages about it."""
    return _top_line(path, "vip")


def _top_line(path: Path, key: str) -> int:
    """The 1-based line of a top-level ``key`` of the YAML file (0 when not found)."""
    try:
        tree = yaml.compose(files.read_capped(path, "inventory", MAX_INVENTORY_BYTES).decode("utf-8"),
                            Loader=yaml.SafeLoader)  # fmt: skip
    except (UnicodeDecodeError, yaml.YAMLError):
        return 0
    if isinstance(tree, yaml.MappingNode):
        for k, _ in tree.value:
            if getattr(k, "value", None) == key:
                return int(k.start_mark.line) + 1
    return 0


def load_cluster_options(path: Path) -> ClusterOptions:
    """``kubernetes_version`` and ``ignore_docker_version`` of an RKE ``cluster.yml``.

    Raises:
        InputError: unreadable, or either setting of the wrong type.
    """
    doc = _load(path, "inventory (RKE cluster.yml)")
    doc = doc if isinstance(doc, dict) else {}
    version, ignore = doc.get("kubernetes_version"), doc.get("ignore_docker_version", False)
    if version is not None and not isinstance(version, str):
        raise InputError(f"{path}: kubernetes_version must be a string such as v1.28.15-rancher1-1")
    if not isinstance(ignore, bool):
        raise InputError(f"{path}: ignore_docker_version must be true or false; got {ignore!r}")
    network, dns = _mapping(doc, "network"), _mapping(doc, "dns")
    plugin, provider = network.get("plugin"), dns.get("provider")
    nodelocal = dns.get("nodelocal")
    return ClusterOptions(
        version or None,
        ignore,
        str(plugin) if plugin else None,
        str(provider) if provider else None,
        bool(isinstance(nodelocal, dict) and nodelocal.get("ip_address")),
        bool(doc.get("system_images")),
    )


@dataclass(frozen=True)
class SiteValues:
    """The ``--values`` file: site variables for every step, and per node (``nodes: {NAME: {...}}``)."""

    shared: Dict[str, str] = field(default_factory=dict)
    nodes: Dict[str, Dict[str, str]] = field(default_factory=dict)

    def for_node(self, name: str) -> Dict[str, str]:
        """The variables a step on node ``name`` gets: the shared ones, overridden by the node's own."""
        return {**self.shared, **self.nodes.get(name, {})}


def with_inventory(values: SiteValues, nodes: List[Node]) -> SiteValues:
    """``values`` plus ``AIRBUNDLE_NODES`` for every step: one line per node, "NAME ADDRESS ROLES"
    (roles comma-separated), so that a step can write /etc/hosts or a cluster's peers."""
    table = "\n".join(f"{n.name} {n.address} {','.join(n.roles)}" for n in nodes)
    return SiteValues({**values.shared, "AIRBUNDLE_NODES": table}, values.nodes)


def _variables(doc: Dict[Any, Any], where: str) -> Dict[str, str]:
    out = {}
    for key, value in doc.items():
        if not isinstance(key, str) or not _VALUE_NAME.fullmatch(key):
            raise InputError(f"{where}: {key!r} is not a variable name ([A-Za-z_][A-Za-z0-9_]*)")
        if isinstance(value, (dict, list)):
            value = " ".join(str(v) for v in value) if isinstance(value, list) else None
            if value is None:
                raise InputError(f"{where}: {key} must be a string, a number or a list")
        out[key] = "" if value is None else str(value)
    return out


def load_values(path: Optional[Path]) -> SiteValues:
    """Site variables for the staged steps: NAME: value (exported as environment variables), and
    under ``nodes:`` the same per node name, for the steps that run on that node."""
    if path is None:
        return SiteValues()
    doc = _load(path, "values file")
    if doc is None:
        return SiteValues()
    if not isinstance(doc, dict):
        raise InputError(f"{path}: the values file must be a mapping of NAME: value")
    per_node = doc.pop("nodes", None) or {}
    if not isinstance(per_node, dict) or not all(isinstance(v, dict) or v is None for v in per_node.values()):
        raise InputError(f"{path}: nodes: must map node names to mappings of NAME: value")
    return SiteValues(
        _variables(doc, str(path)),
        {str(name): _variables(v or {}, f"{path}: nodes: {name}") for name, v in per_node.items()},
    )


def with_private_registries(text: str, entries: List[Dict[str, object]]) -> str:
    """``cluster.yml`` text with ``entries`` in its ``private_registries`` (same ``url`` replaced).

    Only the default flag is exclusive: an entry marked ``is_default`` clears the
    flag of the others, as RKE takes a single default registry.
    """
    if not entries:
        return text
    doc = yaml.safe_load(text) or {}
    urls = {e["url"] for e in entries}
    kept = [
        r for r in doc.get("private_registries") or [] if isinstance(r, dict) and r.get("url") not in urls
    ]
    if any(e.get("is_default") for e in entries):
        kept = [{**r, "is_default": False} if r.get("is_default") else r for r in kept]
    doc["private_registries"] = kept + list(entries)
    return str(yaml.safe_dump(doc, default_flow_style=False, sort_keys=False))


def _mapping(doc: Dict[str, Any], key: str) -> Dict[str, Any]:
    value = doc.get(key)
    return value if isinstance(value, dict) else {}


def _with_default(text: str, keys: Tuple[str, ...], value: str) -> str:
    """``cluster.yml`` text with ``value`` at ``keys`` (a path of mappings) when the file names
    nothing there; unchanged when it names something, or when ``value`` is empty."""
    if not value:
        return text
    loaded = yaml.safe_load(text) or {}
    doc: Dict[str, Any] = loaded if isinstance(loaded, dict) else {}
    node = doc
    for key in keys[:-1]:
        if not isinstance(node.get(key), dict):
            node[key] = {}
        node = node[key]
    if node.get(keys[-1]):
        return text
    node[keys[-1]] = value
    return str(yaml.safe_dump(doc, default_flow_style=False, sort_keys=False))


def with_network_plugin(text: str, plugin: str) -> str:
    """``cluster.yml`` text with ``network: {plugin: plugin}`` when it names none (rke would take
    canal, whose images a bundle for another plugin does not carry); unchanged when it names one."""
    return _with_default(text, ("network", "plugin"), plugin)


def with_kubernetes_version(text: str, version: str) -> str:
    """``cluster.yml`` text with ``kubernetes_version: version`` when it names none (the bundle's
    version: the one whose system images it carries); unchanged when it names one."""
    return _with_default(text, ("kubernetes_version",), version)
