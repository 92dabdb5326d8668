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
from bundler.compat import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from bundler import files
from bundler.errors import InputError
from bundler.installer._vendor import yaml

ROLES = ("controlplane", "etcd", "worker")
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


@dataclass(frozen=True)
class Node:
    """One node of the cluster as the inventory describes it."""

    address: str
    user: str
    roles: Tuple[str, ...]
    port: int = 22
    ssh_key_path: Optional[str] = None
    hostname_override: Optional[str] = None
    # The node's line in the inventory, for FILE:LINE in the topology's findings; not part of its identity.
    line: int = field(default=0, compare=False)

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
        roles = role if isinstance(role, list) else [role]
        if not roles or not all(isinstance(r, str) and r in ROLES for r in roles):
            raise InputError(f"{where}: role must list some of {', '.join(ROLES)}; got {role!r}")
        port = raw.get("port", 22)
        try:
            port = int(port)
        except (TypeError, ValueError):
            port = -1
        if not 0 < port < 65536:
            raise InputError(f"{where}: port {raw.get('port')!r} is not a TCP port")
        if (address, port) in seen:
            raise InputError(f"{where}: listed twice (also line {seen[(address, port)]})")
        seen[(address, port)] = at
        key, host = raw.get("ssh_key_path") or doc.get("ssh_key_path"), raw.get("hostname_override")
        node = Node(
            address,
            user,
            tuple(str(r) for r in roles),
            port,
            key if isinstance(key, str) else None,
            host if isinstance(host, str) else None,
            at,
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


def _node_lines(path: Path) -> Dict[Tuple[int, str], int]:
    """(node index, key) → 1-based line of that key in the file; (index, "") → the node's own line.
    Read from the YAML's node tree (marks), since the loaded data has no lines."""
    try:
        text = files.read_capped(path, "inventory", MAX_INVENTORY_BYTES).decode("utf-8")
        tree = yaml.compose(text, Loader=yaml.SafeLoader)
    except (UnicodeDecodeError, yaml.YAMLError):
        return {}
    out: Dict[Tuple[int, str], int] = {}
    if not isinstance(tree, yaml.MappingNode):
        return out
    for key, value in tree.value:
        if getattr(key, "value", None) == "nodes" and isinstance(value, yaml.SequenceNode):
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
