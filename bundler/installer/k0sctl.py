"""k0sctl's own ``k0sctl.yaml``, read unchanged as the installer's inventory for a k0s bundle.

It takes what k0sctl itself reads (``apiVersion: k0sctl.k0sproject.io/v1beta1``, ``kind:
Cluster``, ``spec.hosts[]`` with ``role`` and ``ssh: {address, user, port, keyPath}``, optional
``hostname``, ``privateAddress``, ``dataDir``, ``kubeletRootDir``, ``noTaints``, ``installFlags``;
``spec.k0s.version`` and ``spec.k0s.config``)
and checks it as strictly as the RKE ``cluster.yml`` is checked (``inventory``): a key k0sctl does
not know is refused with the keys it takes and ``FILE:LINE``, as are a role k0sctl does not know,
a host listed twice, a file without a controller or without a host that runs workloads, and the
connection kinds the installer cannot use (it reaches nodes with the system OpenSSH client).
Each host becomes an ``inventory.Node`` (roles ``controller`` and/or ``worker``) with its line.
It also holds k0sctl's own rules for what it gives k0s (``Host.install_flags_for``: the flags of
``k0s install``; ``K0sctlConfig.k0s_yaml``: the k0s config a controller gets), pure data, so that
the installer's bring-up without k0sctl does what k0sctl would. It does not run k0sctl or k0s nor
decide about the topology's quorum (``topology``).

Carried into bundles: standard library only (and the vendored YAML), python3 3.6 syntax.
"""

import copy
import re
import shlex
from pathlib import Path
from typing import Any, Dict, List, NamedTuple, Optional, Tuple

from bundler import files
from bundler.errors import InputError
from bundler.installer._vendor import yaml
from bundler.installer.inventory import MAX_INVENTORY_BYTES, Node, field_problem, load_inventory

API_VERSION = "k0sctl.k0sproject.io/v1beta1"
KINDS = ("Cluster", "cluster")  # k0sctl accepts both spellings
ROLES = ("controller", "worker", "controller+worker", "single")
# k0sctl's own schema (pkg/apis/k0sctl.k0sproject.io/v1beta1): any other key is a typo it would
# refuse or, worse, ignore; the installer names it with the keys each level takes.
TOP_KEYS = ("apiVersion", "kind", "metadata", "spec")
SPEC_KEYS = ("hosts", "k0s", "options")
HOST_KEYS = (
    "role",
    "ssh",
    "openSSH",
    "winRM",
    "localhost",
    "reset",
    "privateInterface",
    "privateAddress",
    "dataDir",
    "kubeletRootDir",
    "environment",
    "uploadBinary",
    "useExistingK0s",
    "k0sBinaryPath",
    "k0sInstallPath",
    "k0sDownloadURL",
    "installFlags",
    "files",
    "os",
    "hostname",
    "noTaints",
    "hooks",
)
SSH_KEYS = ("address", "user", "port", "keyPath", "hostKey", "bastion")
K0S_KEYS = ("version", "versionChannel", "dynamicConfig", "config")
_PATH_RE = re.compile(r"/[A-Za-z0-9._/-]*")  # a folder on a node, safe in a shell word
# The ways of reaching a host that k0sctl knows but the installer does not use: it runs every
# node command over the system OpenSSH client, as the rke inventory's nodes.
UNSUPPORTED_CONNECTIONS = ("openSSH", "winRM", "localhost")


# Where k0sctl's Linux configurer puts things on a host when the file does not say otherwise.
DEFAULT_DATA_DIR = "/var/lib/k0s"
DEFAULT_CONFIG_PATH = "/etc/k0s/k0s.yaml"
K0S_CONFIG_API = "k0s.k0sproject.io/v1beta1"


def flag_value(flags: Tuple[str, ...], name: str) -> Optional[str]:
    """The value of flag ``name`` among k0sctl ``installFlags`` (``--name=V`` or ``--name V``; a
    bare ``--name`` is "true"), as k0sctl's ``Flags.GetValue`` reads them; None when absent."""
    for flag in flags:
        if flag == name:
            return "true"
        for sep in ("=", " "):
            if flag.startswith(name + sep):
                return flag[len(name) + 1 :].strip().strip("\"'")
    return None


def normalized_flag(flag: str) -> str:
    """One ``installFlags`` entry as k0sctl hands it to ``k0s install``: ``--name=value``, the name
    ending at the first ``=`` or space and the value's surrounding quotes removed (k0sctl's
    ``Flags``), so ``--labels="a=b"`` reaches k0s as ``--labels=a=b``, one argument."""
    flag = flag.strip()
    for i, char in enumerate(flag):
        if char in "= ":
            name, value = flag[:i], flag[i + 1 :].strip()
            if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
                value = value[1:-1]
            return f"{name}={value}"
    return flag


def _without(flags: Tuple[str, ...], *names: str) -> Tuple[str, ...]:
    return tuple(f for f in flags if not any(f == n or f.startswith((n + "=", n + " ")) for n in names))


class Host(NamedTuple):
    """One ``spec.hosts[]`` entry: k0sctl's role and what the bring-up needs beyond the node."""

    node: Node
    role: str  # controller | worker | controller+worker | single
    install_flags: Tuple[str, ...] = ()  # as written, less --data-dir/--kubelet-root-dir (k0sctl moves them)
    private_address: str = ""
    line: int = 0
    data_dir: str = DEFAULT_DATA_DIR  # dataDir, or installFlags' --data-dir (k0sctl's SetDefaults)
    kubelet_root_dir: str = ""
    no_taints: bool = False

    @property
    def images_dir(self) -> str:
        """Where k0s imports image bundles from on this host: ``DATADIR/images``."""
        return self.data_dir.rstrip("/") + "/images"

    @property
    def is_controller(self) -> bool:
        return self.role in ("controller", "controller+worker", "single")

    @property
    def config_path(self) -> str:
        """Where k0sctl writes the k0s config on a controller (installFlags' --config, else its own)."""
        return (
            flag_value(self.install_flags, "--config")
            or flag_value(self.install_flags, "-c")
            or (DEFAULT_CONFIG_PATH)
        )

    def install_flags_for(self, leader: bool, token_path: str) -> List[str]:
        """The flags k0sctl gives ``k0s install ROLE`` on this host (its ``K0sInstallFlags``): the
        host's installFlags, ``--data-dir`` always, the role's own (``--enable-worker``, ``--single``,
        ``--no-taints``), ``--token-file`` on every host but the first controller, ``--config`` on
        controllers, and for hosts that run a kubelet ``--kubelet-extra-args`` with ``--node-ip`` (the
        privateAddress) and ``--hostname-override`` (the hostname)."""
        flags = list(self.install_flags)

        def add_unless_exist(flag: str) -> None:
            name = flag.split("=", 1)[0]
            if flag_value(tuple(flags), name) is None:
                flags.append(flag)

        def add_or_replace(flag: str) -> None:
            name = flag.split("=", 1)[0]
            flags[:] = [*_without(tuple(flags), name), flag]

        add_or_replace(f"--data-dir={self.data_dir}")
        if self.kubelet_root_dir:
            add_or_replace(f"--kubelet-root-dir={self.kubelet_root_dir}")
        if self.role == "controller+worker":
            add_unless_exist("--enable-worker=true")
            if self.no_taints:
                add_unless_exist("--no-taints=true")
        elif self.role == "single":
            add_unless_exist("--single=true")
        if not leader:
            add_unless_exist(f"--token-file={token_path}")
        if self.is_controller:
            add_unless_exist(f"--config={self.config_path}")
        if self.role.endswith("worker"):
            old = flag_value(tuple(flags), "--kubelet-extra-args")
            extra = shlex.split(old) if old else []
            cloud = (flag_value(self.install_flags, "--enable-cloud-provider") or "false") == "true"
            if not cloud and self.private_address and not any(x.startswith("--node-ip") for x in extra):
                extra.append(f"--node-ip={self.private_address}")
            if self.node.hostname_override:
                extra = [x for x in extra if not x.startswith("--hostname-override")]
                extra.append(f"--hostname-override={self.node.hostname_override}")
            if extra:
                add_or_replace("--kubelet-extra-args=" + " ".join(extra))
        return flags


class K0sctlConfig(NamedTuple):
    """A ``k0sctl.yaml``: its hosts in file order, the k0s version it pins, its k0s config."""

    path: Path
    hosts: Tuple[Host, ...]
    version: str = ""  # spec.k0s.version, e.g. v1.28.15+k0s.0; "" when the file names none
    config: Optional[Dict[str, Any]] = None  # spec.k0s.config, for k0s itself
    version_at: str = ""  # FILE:LINE of spec.k0s.version (or of spec.k0s / spec when absent)

    def version_problem(self, bundled: str) -> Optional[str]:
        """Why this file's k0s version cannot be brought up by the bundle's k0s (None when it can):
        k0sctl installs the version the file names, and an absent or other one is a download,
        which an isolated site cannot make (it fails after the images are placed)."""
        if self.version == bundled:
            return None
        said = f"names {self.version}" if self.version else "names no k0s version"
        return (
            f"{self.version_at}: spec.k0s.version: the file {said}, the bundle carries k0s {bundled}; "
            f"write spec.k0s.version: {bundled} (k0sctl would download any other)"
        )

    def k0s_yaml(self, host: Host) -> str:
        """The k0s configuration k0sctl writes to ``host.config_path`` on a controller: spec.k0s.config
        (or an empty ClusterConfig, which k0s completes with its defaults), with ``spec.api.address``
        the host's own (privateAddress, else address), every controller's address and 127.0.0.1 added
        to ``spec.api.sans``, and ``spec.storage.etcd.peerAddress``, when given, the host's own
        (k0sctl's ``configFor``)."""
        config = copy.deepcopy(self.config) if self.config else {}
        config.setdefault("apiVersion", K0S_CONFIG_API)
        config.setdefault("kind", "ClusterConfig")
        spec = config.setdefault("spec", {})
        api = spec.setdefault("api", {})
        own = host.private_address or host.node.address
        api["address"] = own
        sans = [s for s in (api.get("sans") or []) if isinstance(s, str)]
        for other in [*(c.private_address or c.node.address for c in self.controllers), "127.0.0.1"]:
            if other not in sans:
                sans.append(other)
        api["sans"] = sans
        etcd = (spec.get("storage") or {}).get("etcd")
        if isinstance(etcd, dict) and etcd.get("peerAddress") is not None:
            etcd["peerAddress"] = own
        return (
            "# generated-by-airbundle from "
            + self.path.name
            + "\n"
            + yaml.safe_dump(config, default_flow_style=False, sort_keys=False)
        )

    @property
    def nodes(self) -> List[Node]:
        return [h.node for h in self.hosts]

    @property
    def controllers(self) -> List[Host]:
        return [h for h in self.hosts if h.role in ("controller", "controller+worker", "single")]

    @property
    def workers(self) -> List[Host]:
        """The hosts that run workloads (and so need the airgap images)."""
        return [h for h in self.hosts if h.role in ("worker", "controller+worker", "single")]


def node_roles(role: str) -> Tuple[str, ...]:
    """The installer's roles of a k0sctl role: controller, worker, or both."""
    return {
        "controller": ("controller",),
        "worker": ("worker",),
        "controller+worker": ("controller", "worker"),
        "single": ("controller", "worker"),
    }[role]


def _text(path: Path) -> str:
    data = files.read_capped(path, "inventory (k0sctl.yaml)", MAX_INVENTORY_BYTES)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: not a valid inventory (k0sctl.yaml): not UTF-8 ({exc})") from None


def _parse(path: Path, text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except RecursionError:
        raise InputError(f"{path}: not a valid k0sctl.yaml: nested too deeply") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        raise InputError(
            f"{path}{line}: not a valid k0sctl.yaml: {getattr(exc, 'problem', None) or exc}"
        ) from None


def is_k0sctl(path: Path) -> bool:
    """Whether ``path`` is a k0sctl file (its ``apiVersion`` is k0sctl's, any version), not an
    RKE ``cluster.yml``. An unreadable or malformed file is not: the reader that follows says why."""
    try:
        doc = yaml.safe_load(_text(path))
    except (InputError, yaml.YAMLError, RecursionError):
        return False
    version = doc.get("apiVersion") if isinstance(doc, dict) else None
    return isinstance(version, str) and version.startswith("k0sctl.k0sproject.io/")


def _lines(
    node: Any, prefix: Tuple[Any, ...], out: Dict[Tuple[Any, ...], int], seen: Optional[set] = None
) -> None:
    """(path of keys and indexes) → 1-based line, from the YAML's node tree (the data has none).
    Each node is walked once: an alias is the node it names, and walking it again at every
    place it is used would take exponential time for a file of nested aliases."""
    seen = set() if seen is None else seen
    if id(node) in seen:
        return
    seen.add(id(node))
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            here = (*prefix, str(key.value))
            out[here] = key.start_mark.line + 1
            _lines(value, here, out, seen)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            here = (*prefix, i)
            out[here] = item.start_mark.line + 1
            _lines(item, here, out, seen)


class _Where:
    """FILE:LINE of a path in the file, falling back to the nearest enclosing line."""

    def __init__(self, path: Path, text: str) -> None:
        self.path = path
        self.lines: Dict[Tuple[Any, ...], int] = {}
        try:
            _lines(yaml.compose(text, Loader=yaml.SafeLoader), (), self.lines)
        except (yaml.YAMLError, RecursionError):  # lines are a help; the parse says what is wrong
            pass

    def line(self, *keys: Any) -> int:
        for end in range(len(keys), 0, -1):
            if keys[:end] in self.lines:
                return self.lines[keys[:end]]
        return 0

    def __call__(self, *keys: Any) -> str:
        line = self.line(*keys)
        return f"{self.path}:{line}" if line else str(self.path)


def _unknown(
    where: _Where, raw: Dict[Any, Any], allowed: Tuple[str, ...], keys: Tuple[Any, ...], what: str
) -> None:
    for key in raw:
        if key not in allowed:
            raise InputError(
                f"{where(*keys, str(key))}: {what}: unknown key {key!r} (k0sctl does not know it); "
                f"{what} takes {', '.join(allowed)}"
            )


def _host(where: _Where, raw: Any, i: int) -> Host:
    at = ("spec", "hosts", i)
    if not isinstance(raw, dict):
        raise InputError(f"{where(*at)}: spec.hosts[{i}] is not a mapping")
    label = f"spec.hosts[{i}]"
    _unknown(where, raw, HOST_KEYS, at, label)
    for other in UNSUPPORTED_CONNECTIONS:
        if other in raw:
            raise InputError(
                f"{where(*at, other)}: {label}: {other}: the installer reaches every host with the system "
                "OpenSSH client; describe the host with ssh: {address, user, port, keyPath}"
            )
    role = raw.get("role")
    if role not in ROLES:
        raise InputError(
            f"{where(*at, 'role')}: {label}: role {role!r} is not one k0sctl knows; "
            f"give one of {', '.join(ROLES)}"
        )
    ssh = raw.get("ssh")
    if not isinstance(ssh, dict):
        raise InputError(f"{where(*at)}: {label}: needs ssh: {{address, user, port, keyPath}}")
    _unknown(where, ssh, SSH_KEYS, (*at, "ssh"), f"{label}.ssh")
    if "bastion" in ssh:
        raise InputError(
            f"{where(*at, 'ssh', 'bastion')}: {label}.ssh.bastion: give the jump host in the ssh "
            "config (--ssh-config, ProxyJump) instead: the installer uses the system OpenSSH client"
        )
    address = ssh.get("address")
    if not isinstance(address, str) or not address:
        raise InputError(f"{where(*at, 'ssh')}: {label}.ssh needs an address")
    if field_problem("address", address):
        raise InputError(
            f"{where(*at, 'ssh', 'address')}: {label}.ssh.address {field_problem('address', address)}"
        )
    user = ssh.get("user", "root")  # k0sctl's (rig's) default
    if not isinstance(user, str) or not user or field_problem("login", user):
        raise InputError(f"{where(*at, 'ssh', 'user')}: {label}.ssh.user {user!r} must be a login name")
    port = ssh.get("port", 22)
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        raise InputError(f"{where(*at, 'ssh', 'port')}: {label}.ssh.port {port!r} is not a TCP port")
    key = ssh.get("keyPath")
    if key is not None and (not isinstance(key, str) or not key):
        raise InputError(f"{where(*at, 'ssh', 'keyPath')}: {label}.ssh.keyPath must be a file name")
    hostname = raw.get("hostname")
    if hostname is not None and (
        not isinstance(hostname, str) or not hostname or field_problem("name", hostname)
    ):
        raise InputError(f"{where(*at, 'hostname')}: {label}.hostname must be a name")
    flags = raw.get("installFlags") or []
    if not isinstance(flags, list) or not all(isinstance(f, str) for f in flags):
        raise InputError(f"{where(*at, 'installFlags')}: {label}.installFlags must be a list of flags")
    private = raw.get("privateAddress") or ""
    if not isinstance(private, str) or (private and field_problem("address", private)):
        raise InputError(f"{where(*at, 'privateAddress')}: {label}.privateAddress must be an address")
    install_flags = tuple(normalized_flag(f) for f in flags)
    for name in ("--config", "-c", "--token-file"):  # files the installer writes there, as root
        value = flag_value(install_flags, name)
        if value is not None and not _PATH_RE.fullmatch(value):
            raise InputError(
                f"{where(*at, 'installFlags')}: {label}.installFlags {name} {value!r} must be an absolute "
                "path (letters, digits, / . _ -)"
            )
    # k0sctl's SetDefaults: --single / --enable-worker in installFlags change the role, and
    # --data-dir / --kubelet-root-dir move to dataDir / kubeletRootDir.
    if (flag_value(install_flags, "--single") or "false") != "false":
        role = "single"
    elif (flag_value(install_flags, "--enable-worker") or "false") != "false":
        role = "controller+worker"
    dirs = {}
    for name, flag in (("dataDir", "--data-dir"), ("kubeletRootDir", "--kubelet-root-dir")):
        value = flag_value(install_flags, flag) or raw.get(name) or ""
        if not isinstance(value, str) or (value and not _PATH_RE.fullmatch(value)):
            raise InputError(
                f"{where(*at, name)}: {label}.{name} {value!r} must be an absolute path (letters, digits, "
                "/ . _ -)"
            )
        dirs[name] = value.rstrip("/") or value
    install_flags = _without(install_flags, "--data-dir", "--kubelet-root-dir")
    no_taints = (
        raw.get("noTaints", False) is True or (flag_value(install_flags, "--no-taints") or "false") != "false"
    )
    line = where.line(*at)
    node = Node(address, user, node_roles(role), port, key, hostname, line)
    return Host(
        node, role, install_flags, private, line, dirs["dataDir"] or DEFAULT_DATA_DIR,
        dirs["kubeletRootDir"], no_taints,
    )  # fmt: skip


def load(path: Path) -> K0sctlConfig:
    """The hosts of a ``k0sctl.yaml``, checked as k0sctl checks them and as strictly as the RKE
    inventory (every error names the file and line and what to write instead).

    Raises:
        InputError: unreadable, not k0sctl's apiVersion or kind, an unknown key, an unknown role,
            a host twice (address and port, or name), no controller, no host that runs workloads,
            ``single`` beside other hosts, a connection other than ``ssh``.
    """
    text = _text(path)
    doc = _parse(path, text)
    where = _Where(path, text)
    if not isinstance(doc, dict):
        raise InputError(f"{path}: not a k0sctl.yaml: expected a mapping with apiVersion, kind, spec")
    _unknown(where, doc, TOP_KEYS, (), "a k0sctl.yaml")
    if doc.get("apiVersion") != API_VERSION:
        raise InputError(f"{where('apiVersion')}: apiVersion must equal {API_VERSION} (k0sctl's words)")
    if doc.get("kind") not in KINDS:
        raise InputError(f"{where('kind')}: kind must equal Cluster; got {doc.get('kind')!r}")
    spec = doc.get("spec")
    if not isinstance(spec, dict):
        raise InputError(f"{where('spec')}: spec must be a mapping with hosts:")
    _unknown(where, spec, SPEC_KEYS, ("spec",), "spec")
    raw_hosts = spec.get("hosts")
    if not isinstance(raw_hosts, list) or not raw_hosts:
        raise InputError(f"{where('spec', 'hosts')}: spec.hosts: at least one host required (k0sctl's words)")
    hosts = [_host(where, raw, i) for i, raw in enumerate(raw_hosts)]
    seen: Dict[Tuple[str, int], int] = {}
    names: Dict[str, int] = {}
    for h in hosts:
        n = h.node
        if (n.address, n.port) in seen:
            raise InputError(
                f"{path}:{h.line}: {n.address}:{n.port}: is not unique (k0sctl's words): also the host "
                f"on line {seen[(n.address, n.port)]}; list each host once"
            )
        seen[(n.address, n.port)] = h.line
        if n.name in names:
            raise InputError(
                f"{path}:{h.line}: hostname is not unique: {n.name} (also line {names[n.name]}); "
                "give each host its own hostname"
            )
        names[n.name] = h.line
    single = [h for h in hosts if h.role == "single"]
    if single and len(hosts) > 1:
        raise InputError(
            f"{path}:{single[0].line}: {len(hosts)} hosts defined but includes a host with role 'single' "
            "(k0sctl's words): a single host is the whole cluster; make it a controller+worker, or "
            "list it alone"
        )
    config = K0sctlConfig(
        path, tuple(hosts), *_k0s(where, spec.get("k0s")), version_at=where("spec", "k0s", "version")
    )
    if not config.controllers:
        raise InputError(
            f"{where('spec', 'hosts')}: no hosts with a controller role defined (k0sctl's words); "
            "give at least one host role: controller"
        )
    if not config.workers:
        raise InputError(
            f"{where('spec', 'hosts')}: no host runs workloads: give at least one host role: worker "
            "(or controller+worker, for a demo)"
        )
    return config


def _k0s(where: _Where, raw: Any) -> Tuple[str, Optional[Dict[str, Any]]]:
    if raw is None:
        return "", None
    if not isinstance(raw, dict):
        raise InputError(f"{where('spec', 'k0s')}: spec.k0s must be a mapping (version, config)")
    _unknown(where, raw, K0S_KEYS, ("spec", "k0s"), "spec.k0s")
    version = raw.get("version", "")
    if not isinstance(version, str):
        raise InputError(
            f"{where('spec', 'k0s', 'version')}: spec.k0s.version must be a string such as v1.28.15+k0s.0"
        )
    config = raw.get("config")
    if config is not None and not isinstance(config, dict):
        raise InputError(
            f"{where('spec', 'k0s', 'config')}: spec.k0s.config must be a k0s ClusterConfig mapping"
        )
    return version, config


def load_nodes(path: Path) -> List[Node]:
    """The nodes of the inventory at ``path``: a ``k0sctl.yaml`` (told by its apiVersion) or an RKE
    ``cluster.yml`` (``inventory.load_inventory``)."""
    return load(path).nodes if is_k0sctl(path) else load_inventory(path)
