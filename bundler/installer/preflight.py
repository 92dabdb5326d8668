"""The preflight: what every node says about itself, checked before anything changes.

``preflight_phase`` asks every node (in parallel, changing nothing) for its
architecture, OS (ID and codename), clock, sudo, Docker and free space, the ports its roles
need, and the cluster kind's own rules (``KIND_RULES``: k0s's ports, data folder and runtime;
RKE's ports otherwise) and, for a bundle that brings the cluster up with rke, what rke
requires; the node that will host the site registry, its port and disk. ``gather`` adds what
each node already has (image IDs and tags, the binaries' SHA-256) and returns the facts
``plan.make_plan`` plans from. It never changes a node and never decides what to install.
"""

import shlex
from typing import Callable, Dict, List, NamedTuple, Optional, Set, Tuple, Union

from bundler import k0simages, oci
from bundler.compat import replace
from bundler.errors import InstallError
from bundler.installer import ctrimport, dockerload, remote
from bundler.installer.inventory import ClusterOptions, Node
from bundler.installer.nodeos import OS_RELEASE_LINE, is_rpm_bundle, os_problem, parse_os
from bundler.installer.plan import (
    NodeFacts,
    Route,
    baseline_gaps,
    cluster_file_problems,
    cluster_kind,
    runtime,
)
from bundler.installer.results import NodeResult
from bundler.lock import Lock

_UNAME_ARCH = {
    "x86_64": "amd64",
    "aarch64": "arm64",
    "armv7l": "armhf",
    "i686": "i386",
    "ppc64le": "ppc64el",
    "s390x": "s390x",
    "riscv64": "riscv64",
}
MAX_CLOCK_SKEW = 5  # seconds; etcd and TLS need clocks that agree
PREFLIGHT_SCRIPT = (
    'uname -m; f=/etc/os-release; r="${AIRBUNDLE_ROOT:-}"; '
    'if [ -n "$r" ] && [ -r "$r/etc/os-release" ]; then f="$r/etc/os-release"; fi; . "$f" 2>/dev/null; '
    'echo "${VERSION_CODENAME:-unknown}"; date +%s; '
    "command -v docker >/dev/null 2>&1 && echo docker || echo no-docker; "
    "df -Pk /var/lib 2>/dev/null | awk 'NR==2 {print $4}'; "
    "swapon --noheadings --show=NAME 2>/dev/null | wc -l; "
    'if [ "$(id -u)" = 0 ] || sudo -n true 2>/dev/null; then echo root-ok; else echo no-sudo; fi; '
    "(ss -Htln 2>/dev/null || netstat -tln 2>/dev/null | tail -n +3) | awk '{print $4}' | sed 's/.*://' "
    "| sort -un | tr '\\n' ' '; echo; " + OS_RELEASE_LINE
)
# Ports Kubernetes (RKE) needs free on a node, by role ("all": every node). The kubelet (10250) and
# kube-proxy's health check (10256) run on every node; the controller manager and the scheduler
# serve 10257 and 10259 (their old insecure ports 10252 and 10251 are gone since Kubernetes 1.24);
# RKE's nginx ingress listens on 80 and 443 of every worker (host network).
ROLE_PORTS: Dict[str, List[Union[int, Tuple[int, int]]]] = {
    "all": [10250, 10256],
    "controlplane": [6443, 10257, 10259],
    "etcd": [2379, 2380],
    "worker": [80, 443, (30000, 32767)],
}


PortTable = Dict[str, List[Union[int, Tuple[int, int]]]]
# k0s's ("Networking": required ports and protocols): the controllers serve etcd's peers (2380; its
# clients' 2379 on the node itself), the Kubernetes API (6443), konnectivity (8132) and k0s's join API
# (9443); a node that runs workloads serves the kubelet (10250) and, with kube-router (k0s's default
# network provider), BGP to the other workers (179). No ingress on 80/443 and no NodePort listener:
# those are RKE's.
K0S_ROLE_PORTS: PortTable = {"controller": [2379, 2380, 6443, 8132, 9443], "worker": [10250]}
K0S_KUBE_ROUTER_PORT = 179


def busy_ports(node: Node, listening: Set[int], table: Optional[PortTable] = None) -> List[str]:
    """The ports this node's roles need (by ``table``, RKE's ``ROLE_PORTS`` unless given) that
    something already listens on."""
    busy = []
    table = ROLE_PORTS if table is None else table
    for role in ("all", *node.roles):
        for port in table.get(role, []):
            low, high = port if isinstance(port, tuple) else (port, port)
            label = "every node" if role == "all" else role
            busy += [f"{p} ({label})" for p in sorted(listening) if low <= p <= high]
    return busy


# What Rancher's rke needs on every node: its requirements page ("Requirements": the SSH user
# in the docker group, the kernel modules, the sysctl, AllowTcpForwarding) and the checks rke
# itself makes when it opens its SSH tunnel to each node's Docker (hosts/tunnel.go:
# checkDockerVersion, docker/docker.go: IsSupportedDockerVersion).

# Docker versions rke accepts, by Kubernetes minor version: rke compares major.minor only.
# From rancher/kontainer-driver-metadata pkg/rke/k8s_docker_info.go, which rke releases embed.
_RKE_DOCKER_LEGACY = ("1.13", "17.03", "17.06", "17.09", "18.06", "18.09", "19.03", "20.10")
_RKE_DOCKER_OLD = ("1.11", "1.12", "1.13", "17.03")
RKE_DOCKER_VERSIONS: Dict[str, Tuple[str, ...]] = {
    "1.8": _RKE_DOCKER_OLD,
    **{f"1.{m}": (*_RKE_DOCKER_OLD, "18.06", "18.09", "19.03", "20.10") for m in (9, 10, 11)},
    **{f"1.{m}": (*_RKE_DOCKER_OLD, "17.06", "17.09", "18.06", "18.09", "19.03", "20.10") for m in (12, 13)},
    **{f"1.{m}": _RKE_DOCKER_LEGACY for m in range(14, 23)},
    # rke v1.4.11 (the release the customer's bundle pins) stops at 24.0 for 1.23-1.26; 25.0 came
    # with the metadata of rke v1.5 (Feb 2024), which also brought 1.27 and later.
    **{f"1.{m}": (*_RKE_DOCKER_LEGACY, "23.0", "24.0") for m in range(23, 27)},
    **{f"1.{m}": (*_RKE_DOCKER_LEGACY, "23.0", "24.0", "25.0") for m in range(27, 30)},
}
RKE_DEFAULT_K8S_MINOR = "1.26"  # when neither cluster.yml nor the bundle names one (rke v1.4.11's)
# The kernel modules RKE's requirements page lists. Kernels from 4.19 (5.1 for NAT) merged the
# *_ipv4 ones into nf_conntrack and nf_nat: there, those count as loaded with them.
RKE_KERNEL_MODULES = tuple(
    [
        "br_netfilter",
        "ip6_udp_tunnel",
        "ip_set",
        "ip_set_hash_ip",
        "ip_set_hash_net",
        "iptable_filter",
        "iptable_nat",
        "iptable_mangle",
        "iptable_raw",
        "nf_conntrack_netlink",
        "nf_conntrack",
        "nf_conntrack_ipv4",
        "nf_defrag_ipv4",
        "nf_nat",
        "nf_nat_ipv4",
        "nf_nat_masquerade_ipv4",
        "nfnetlink",
        "udp_tunnel",
        "veth",
        "vxlan",
        "x_tables",
        "xt_addrtype",
        "xt_conntrack",
        "xt_comment",
        "xt_mark",
        "xt_multiport",
        "xt_nat",
        "xt_recent",
        "xt_set",
        "xt_statistic",
        "xt_tcpudp",
    ]
)
_MERGED_MODULES = {
    "nf_conntrack_ipv4": "nf_conntrack",
    "nf_nat_ipv4": "nf_nat",
    "nf_nat_masquerade_ipv4": "nf_nat",
}
_SSHD_FORWARDING = ("allowtcpforwarding", "allowstreamlocalforwarding", "disableforwarding")
# One SSH call, as the inventory's user, changing nothing; one KEY=VALUE per line.
RKE_PREFLIGHT_SCRIPT = (
    'echo "swap=$(swapon --noheadings --show=NAME 2>/dev/null | wc -l)"; '
    'echo "uid=$(id -u)"; echo "groups=$(id -Gn | tr " " ,)"; echo "hostname=$(hostname)"; '
    "if ! command -v docker >/dev/null 2>&1; then echo docker=missing; "
    "elif v=$(docker version --format '{{.Server.Version}}' 2>&1); then echo \"docker=ok $v\"; "
    'else echo "docker=fail $(echo "$v" | tail -n 1)"; fi; '
    'echo "bridge=$(cat /proc/sys/net/bridge/bridge-nf-call-iptables 2>/dev/null || echo unknown)"; '
    "if [ -r /proc/modules ]; then b=/lib/modules/$(uname -r)/modules.builtin; m=; "
    "for x in " + " ".join(RKE_KERNEL_MODULES) + "; do "
    'grep -q "^$x " /proc/modules || [ -d /sys/module/$x ] || grep -qs "/$x.ko" "$b" || m="$m $x"; done; '
    'echo "modules=ok$m"; else echo modules=unknown; fi; '
    'd=/var/lib/docker; while [ ! -d "$d" ]; do d=$(dirname "$d"); done; '
    'echo "docker_mount=$(df -P "$d" 2>/dev/null | awk \'NR==2 {print $6}\')"; '
    # The running sshd's config: its -f on the listener's command line, else the system file.
    'c=/etc/ssh/sshd_config; p=$PPID; while [ "${p:-1}" -gt 1 ]; do '
    "a=$(tr '\\0' ' ' < /proc/$p/cmdline 2>/dev/null); "
    'case "$a" in *sshd*" -f "*) c=$(echo "$a" | sed "s/.* -f \\([^ ]*\\).*/\\1/"); break;; esac; '
    "p=$(awk '{print $4}' /proc/$p/stat 2>/dev/null); done; "
    'echo "sshd_config=$c"; s=$(command -v sshd || echo /usr/sbin/sshd); '
    'a=$(echo "${SSH_CONNECTION:-127.0.0.1}" | cut -d" " -f1); '
    'k="user=$(id -un),host=$(hostname),addr=$a"; '
    'if [ "$(id -u)" = 0 ]; then t=$($s -T -f "$c" -C "$k" 2>/dev/null); '
    'elif sudo -n true 2>/dev/null; then t=$(sudo -n $s -T -f "$c" -C "$k" 2>/dev/null); '
    "else t=; fi; "
    'if [ -n "$t" ]; then echo "sshd_from=sshd -T"; echo "$t" | '
    "grep -iE '^(" + "|".join(_SSHD_FORWARDING) + ") ' | sed 's/^/sshd /'; "
    'elif [ -r "$c" ]; then echo "sshd_from=$c"; '
    'awk \'tolower($1)=="match" {exit} {print}\' "$c" | '
    "grep -iE '^[[:space:]]*(" + "|".join(_SSHD_FORWARDING) + ")[[:space:]]' | sed 's/^[[:space:]]*/sshd /'; "
    "else echo sshd_from=unreadable; fi"
)


def parse_facts(text: str) -> Dict[str, List[str]]:
    """KEY=VALUE lines (``sshd KEY VALUE`` lines under ``sshd``), each key's values in order."""
    facts: Dict[str, List[str]] = {}
    for line in remote.lines(text):
        key, _, value = line.partition(" ") if line.startswith("sshd ") else line.partition("=")
        facts.setdefault(key, []).append(value.strip())
    return facts


def _first(facts: Dict[str, List[str]], key: str, default: str = "") -> str:
    return (facts.get(key) or [default])[0]


def rke_docker_accepted(version: str, kubernetes_version: Optional[str]) -> Tuple[bool, Tuple[str, ...]]:
    """Whether rke accepts Docker ``version`` for ``kubernetes_version``, as rke compares (major.minor)."""
    minor = RKE_DEFAULT_K8S_MINOR
    if kubernetes_version:
        minor = ".".join(kubernetes_version.lstrip("v").split(".")[:2])
    accepted = RKE_DOCKER_VERSIONS.get(minor, ())
    mine = ".".join(version.split("+")[0].split("-")[0].split(".")[:2])
    return mine in accepted, accepted


def bundled_docker_version(lock: Lock) -> Optional[str]:
    """The upstream version of the bundle's docker-ce (``5:24.0.9-1~ubuntu.22.04~jammy`` → ``24.0.9``),
    or None when the bundle carries none."""
    deb = next((d for d in lock.debs if d.name == "docker-ce"), None)
    if deb is None:
        return None
    return deb.version.split(":", 1)[-1].split("-", 1)[0].split("~", 1)[0]


def rke_problems(
    node: Node, facts: Dict[str, List[str]], cluster: ClusterOptions, docker_from_bundle: Optional[str]
) -> Tuple[List[str], List[str]]:
    """What stops rke on ``node`` (problems) and what the node cannot tell (warnings), from its facts
    and the version of the bundle's docker-ce (``docker_from_bundle``, None without one)."""
    problems: List[str] = []
    warnings: List[str] = []
    user = node.user
    docker = _first(facts, "docker", "missing")
    if docker_from_bundle is not None and not cluster.ignore_docker_version:
        ok, accepted = rke_docker_accepted(docker_from_bundle, cluster.kubernetes_version)
        if not ok:
            problems.append(
                f"the bundle's docker-ce {docker_from_bundle} is not one rke accepts for Kubernetes "
                f"{cluster.kubernetes_version or RKE_DEFAULT_K8S_MINOR} "
                f"({', '.join(v + '.x' for v in accepted)}): rke up would stop on every node; rebuild with "
                "docker-ce pinned to one of those (docker-ce=VERSION), or set 'ignore_docker_version: true' "
                "in cluster.yml"
            )
    if docker == "missing":
        if docker_from_bundle is not None:
            warnings.append(
                "no docker yet (the bundle installs docker-ce"
                + ("" if user == "root" else f" and adds {user} to the docker group")
                + "): rke's checks of it run again before rke up"
            )
        else:
            problems.append(
                "no docker for rke (install Docker on the node, or carry docker-ce in the bundle)"
            )
    elif docker.startswith("fail"):
        groups = _first(facts, "groups").split(",")
        why = "not in the docker group" if "docker" not in groups else "docker info failed"
        problems.append(
            f"{user} cannot use Docker without sudo ({why}: {docker[5:]}); rke talks to Docker as the SSH "
            f"user: run 'usermod -aG docker {user}' on the node (or use root), then log in again"
        )
    else:
        version = docker[3:].strip()
        ok, accepted = rke_docker_accepted(version, cluster.kubernetes_version)
        if not ok and not cluster.ignore_docker_version:
            problems.append(
                f"Docker {version} is not one rke accepts for Kubernetes "
                f"{cluster.kubernetes_version or RKE_DEFAULT_K8S_MINOR} "
                f"({', '.join(v + '.x' for v in accepted)}); "
                "install one of those, or set 'ignore_docker_version: true' in cluster.yml"
            )
    settings: Dict[str, str] = {}
    for line in facts.get("sshd", []):
        key, _, value = line.partition(" ")
        settings.setdefault(key.lower(), value.strip().lower())  # sshd: the first value wins
    source = _first(facts, "sshd_from", "unreadable")
    config = _first(facts, "sshd_config", "/etc/ssh/sshd_config")
    refused = [
        f"{name} {settings[name.lower()]}"
        for name in ("AllowTcpForwarding", "AllowStreamLocalForwarding")
        if settings.get(name.lower()) in ("no", "remote")
    ] + (["DisableForwarding yes"] if settings.get("disableforwarding") == "yes" else [])
    if refused:
        problems.append(
            f"sshd refuses forwarding ({', '.join(refused)}, from {source}); rke reaches Docker through "
            f"an SSH tunnel: set 'AllowTcpForwarding yes' in {config} and reload sshd"
        )
    elif source == "unreadable":
        warnings.append(
            f"cannot read {config}: check that sshd allows TCP forwarding (AllowTcpForwarding yes)"
        )
    bridge = _first(facts, "bridge", "unknown")
    modules = _first(facts, "modules", "unknown")
    if bridge == "unknown" and modules != "unknown":
        problems.append(
            "net.bridge.bridge-nf-call-iptables is not set (br_netfilter not loaded): "
            "modprobe br_netfilter; sysctl -w net.bridge.bridge-nf-call-iptables=1 (and persist both)"
        )
    elif bridge not in ("1", "unknown"):
        problems.append(
            f"net.bridge.bridge-nf-call-iptables is {bridge}: sysctl -w net.bridge.bridge-nf-call-iptables=1 "
            "and persist it in /etc/sysctl.d/"
        )
    elif bridge == "unknown":
        warnings.append("cannot tell net.bridge.bridge-nf-call-iptables (no /proc/sys/net/bridge here)")
    if modules == "unknown":
        warnings.append("cannot tell which kernel modules are loaded (no /proc/modules, as in a container)")
    else:
        loaded_gone = set(modules[2:].split())
        missing = [
            m for m in RKE_KERNEL_MODULES
            if m in loaded_gone and not (m in _MERGED_MODULES and _MERGED_MODULES[m] not in loaded_gone)
        ]  # fmt: skip
        if missing:
            problems.append(
                f"kernel modules rke needs are not loaded: {' '.join(missing)} "
                "(modprobe each, and list them in /etc/modules-load.d/)"
            )
    mount = _first(facts, "docker_mount")
    if mount and mount != "/var/lib/docker":
        warnings.append(
            f"/var/lib/docker is on the filesystem of {mount}: give it a disk or LVM volume of its own"
        )
    return problems, warnings


def duplicate_names(nodes: List[Node], hostnames: Dict[str, str]) -> Dict[str, str]:
    """Node name → problem, for nodes whose Kubernetes name (hostname_override, else the hostname
    they report) another node has too."""
    names = {n.name: n.hostname_override or hostnames.get(n.name, "") for n in nodes}
    out = {}
    for node in nodes:
        others = [
            o.name
            for o in nodes
            if o.name != node.name and names[o.name] and names[o.name] == names[node.name]
        ]
        if others:
            out[node.name] = (
                f"hostname {names[node.name]} is also the name of {', '.join(others)}: "
                "give each node its own hostname or a hostname_override in cluster.yml"
            )
    return out


def _registry_problems(
    node: Node, opts: remote.SshOptions, route: Route, lock: Lock, listening: Set[int]
) -> List[str]:
    """What stops ``node`` hosting the site registry: its port taken by another program, too little disk."""
    q = shlex.quote
    # The nearest existing folder of the data path tells the free space of the disk it will be on.
    script = (
        "docker inspect --format '{{.State.Running}}' airbundle-registry 2>/dev/null || echo none; "
        f'd={q(route.data)}; while [ ! -d "$d" ]; do d=$(dirname "$d"); done; '
        "df -Pk \"$d\" | awk 'NR==2 {print $4}'"
    )
    ours, free_kib = [*remote.lines(remote.run(node, opts, script, timeout=60)), "", ""][:2]
    problems = []
    port = int(route.address.rsplit(":", 1)[1])
    if port in listening and ours != "true":
        problems.append(f"port {port} (site registry) is in use by another program")
    need_kib = sum(m.size for m in lock.members if m.kind == "image") // 1024  # each blob stored once
    if free_kib.isdigit() and int(free_kib) < need_kib:
        problems.append(
            f"{int(free_kib) // 1024} MiB free for the site registry's {route.data}, "
            f"its images need {need_kib // 1024} MiB"
        )
    return problems


def _baseline_problems(
    node: Node, opts: remote.SshOptions, baseline: Dict[str, str], root: Optional[str]
) -> Tuple[List[str], List[str]]:
    """Compare the node's dpkg status with the baseline the bundle was built for (``debs.baseline``):
    a package it lacks, or has older, can leave apt unable to install the bundle offline."""
    q = shlex.quote
    admindir = f" --admindir={q(root + '/var/lib/dpkg')}" if root else ""
    listing = remote.run(
        node,
        opts,
        f"dpkg-query{admindir} -W -f='${{Package}} ${{Version}} ${{db:Status-Status}}\n'; true",
        60,
    )
    installed = {}
    for line in remote.lines(listing):
        name, version, status = [*line.split(), "", "", ""][:3]
        if status == "installed":
            installed[name] = version
    missing, other = baseline_gaps(baseline, installed)
    problems, warnings = [], []
    if missing:
        shown = ", ".join(f"{n} {baseline[n]}" for n in missing[:8]) + (" …" if len(missing) > 8 else "")
        problems.append(
            f"lacks {len(missing)} package(s) the bundle's debs.baseline has ({shown}); build the bundle "
            "with this node's /var/lib/dpkg/status as the baseline, or install them first"
        )
    if other:  # the node's own dpkg orders the versions (the lock's were checked for shell safety)
        script = "".join(f"dpkg --compare-versions {q(h)} lt {q(w)} && echo {q(n)}; " for n, h, w in other)
        older = set(remote.lines(remote.run(node, opts, script + "true", 60)))
        for name, have, want in other:
            if name in older:
                problems.append(f"has {name} {have}, older than the baseline's {want}")
            else:
                warnings.append(f"has {name} {have}, newer than the baseline's {want} (apt keeps it)")
    return problems, warnings


SWAP_ON = "swap is on (the kubelet refuses to run with swap; swapoff -a and remove it from fstab)"


def swap_verdict(swaps: str, lock: Lock, node: Node) -> Tuple[Optional[str], Optional[str]]:
    """The preflight's word on a node's swap (``swaps``: how many swap areas are on): a problem, or,
    when a before-cluster step of the bundle declares it turns swap off on this node (``fixes:
    [swap]``), a warning: that step runs before the cluster, and the check runs again just
    before ``rke up`` (``swap_problem``), so a step that did not do it still stops the install."""
    if not (swaps.isdigit() and int(swaps) > 0):
        return None, None
    step = lock.fixed_before_cluster("swap", node.roles, node.name)
    if step is None:
        return SWAP_ON, None
    return None, f"swap is on; step {step.name} turns it off before the cluster (checked again before rke up)"


def swap_problem(facts: Dict[str, List[str]]) -> Optional[str]:
    """Swap still on just before ``rke up`` (``RKE_PREFLIGHT_SCRIPT``'s ``swap`` fact), with the fix."""
    swaps = _first(facts, "swap", "0")
    if swaps.isdigit() and int(swaps) > 0:
        return (
            "swap is still on after the before-cluster steps (the kubelet refuses to run with swap); "
            "see the swap step's log, or swapoff -a and remove it from fstab, then run the same command again"
        )
    return None


# ---------------------------------------------------------------- the cluster kinds' own rules

# What k0s imports the airgap images into: its own containerd, on its own socket. A system runtime
# on one of these sockets is not the one k0s uses (unless told so with --cri-socket).
K0S_CONTAINERD_SOCKET = "/run/k0s/containerd.sock"
SYSTEM_RUNTIME_SOCKETS = ("/run/containerd/containerd.sock", "/var/run/docker.sock")


def _size(kib: int) -> str:
    return f"{kib // 1024} MiB" if kib >= 1024 else f"{kib} KiB"


def k0s_problems(
    node: Node, opts: remote.SshOptions, lock: Lock, data_dir: str
) -> Tuple[List[str], List[str], bool]:
    """k0s's own rules for ``node``, whose k0s data folder is ``data_dir`` (its dataDir): room there
    for the airgap images on a node that runs workloads (the bundle file, and containerd's copy when
    k0s imports it), and a word on a system container runtime, which k0s does not use. Also whether
    k0s already runs there (then the ports its components hold are its own). No Docker is needed:
    k0s brings its own containerd. (problems, warnings, k0s runs)."""
    q = shlex.quote
    folder = data_dir or "/var/lib/k0s"
    script = (
        f'd={q(folder)}; while [ ! -d "$d" ]; do d=$(dirname "$d"); done; '
        'echo "free=$(df -Pk "$d" 2>/dev/null | awk \'NR==2 {print $4}\')"; echo "at=$d"; '
        + "".join(f"[ -S {s} ] && echo socket={s}; " for s in SYSTEM_RUNTIME_SOCKETS)
        + f"{remote.sudo_prefix(node)}/usr/local/bin/k0s status >/dev/null 2>&1 && echo k0s=running; true"
    )
    facts = parse_facts(remote.run(node, opts, script, timeout=60))
    problems: List[str] = []
    warnings: List[str] = []
    if node.has("worker"):
        images = lock.images_for(k0simages.WORKLOAD_ROLES)
        unique = [i for n, i in enumerate(images) if i not in images[:n]]
        need_kib = sum(i.size for i in unique) * 2 // 1024  # the bundle file, then containerd's copy
        free = _first(facts, "free")
        if free.isdigit() and int(free) < need_kib:
            problems.append(
                f"{_size(int(free))} free for k0s's data folder {folder} (on the filesystem of "
                f"{_first(facts, 'at')}), its airgap images need {_size(need_kib)}: make room there, or "
                "give the host a dataDir on a larger disk in the k0sctl.yaml"
            )
    for socket in facts.get("socket", []):
        warnings.append(
            f"a system container runtime listens on {socket}; k0s runs its own containerd "
            f"({K0S_CONTAINERD_SOCKET}) and imports the airgap images only into that one: the system "
            "runtime is not used by k0s (stop it unless something else on the node needs it)"
        )
    return problems, warnings, _first(facts, "k0s") == "running"


KindCheck = Callable[[Node, remote.SshOptions, Lock, str], Tuple[List[str], List[str], bool]]


class KindRules(NamedTuple):
    """A cluster kind's preflight rules: the ports its components need by node role (``ports(lock)``)
    and its own check of each node (``check(node, opts, lock, data_dir)``: problems, warnings,
    and whether the kind already runs there, which makes its ports its own)."""

    ports: Callable[[Lock], PortTable]
    check: Optional[KindCheck] = None


def _k0s_ports(lock: Lock) -> PortTable:
    table = {role: list(ports) for role, ports in K0S_ROLE_PORTS.items()}
    if lock.cluster.get("network_plugin", k0simages.DEFAULT_NETWORK_PROVIDER) == "kuberouter":
        table["worker"].append(K0S_KUBE_ROUTER_PORT)
    return table


# One entry per kind whose rules differ from RKE's (which kubeadm shares for now).
KIND_RULES: Dict[str, KindRules] = {"k0s": KindRules(_k0s_ports, k0s_problems)}
DEFAULT_RULES = KindRules(lambda lock: ROLE_PORTS)


def _containerd_problems(node: Node, opts: remote.SshOptions, lock: Lock) -> List[str]:
    """A node whose images go into containerd: ``ctr`` must reach it, unless the bundle brings it."""
    if any(d.name in ("containerd", "containerd.io") for d in lock.debs):
        return []  # the packages phase installs it before the images phase
    answer = remote.run(
        node, opts, f"{remote.sudo_prefix(node)}{ctrimport.CTR} version >/dev/null 2>&1 && echo ok || echo no"
    ).strip()
    if answer == "ok":
        return []
    return [
        "ctr cannot reach containerd (the images go into its k8s.io namespace) and the bundle does not "
        "carry containerd: install and start containerd there"
    ]


def _preflight_on(
    node: Node,
    lock: Lock,
    opts: remote.SshOptions,
    images: Tuple[oci.Image, ...],
    needs_docker: bool,
    now: float,
    registry: Optional[Route],
    cluster: Optional[ClusterOptions],
    hostnames: Dict[str, str],
    apt_root: Optional[str] = None,
    data_dirs: Optional[Dict[str, str]] = None,
) -> NodeResult:
    result = NodeResult(node)
    try:
        root = apt_root.replace("{node}", node.name) if apt_root else None
        # A private root (--apt-root) stands for the node's system: its os-release says the OS.
        script = (f"AIRBUNDLE_ROOT={shlex.quote(root)}; " if root else "") + PREFLIGHT_SCRIPT
        answer = list(remote.lines(remote.run(node, opts, script, timeout=60)))
        os_line = next((f for f in reversed(answer) if f.startswith("os=")), "os=")
        fields = [f for f in answer if not f.startswith("os=")]
        if len(fields) < 7:
            raise InstallError(f"{node.name}: unexpected preflight answer: {fields}")
        machine, codename, clock, docker, free_kib, swaps, sudo = fields[:7]
        listening = {int(p) for p in (fields[7] if len(fields) > 7 else "").split() if p.isdigit()}
        node_os = parse_os(os_line)
        problems = []
        want_arch = lock.platform.get("arch")
        if _UNAME_ARCH.get(machine, machine) != want_arch:
            problems.append(f"architecture {machine}, the bundle is for {want_arch}")
        os_wrong = os_problem(lock, node_os, codename)
        if os_wrong:
            problems.append(os_wrong)
        if abs(int(clock) - now) > MAX_CLOCK_SKEW:
            problems.append(
                f"clock is {int(clock) - now:+.0f} s off this node's (more than {MAX_CLOCK_SKEW} s)"
            )
        if sudo != "root-ok":
            problems.append(f"{node.user} cannot use sudo without a password")
        containerd = runtime(lock) == "containerd"
        if needs_docker and containerd:
            problems += _containerd_problems(node, opts, lock)
        elif needs_docker and docker != "docker" and not any(d.name == "docker-ce" for d in lock.debs):
            problems.append("no docker, and the bundle does not carry docker-ce")
        need_kib = sum(i.size for i in images) * 2 // 1024  # docker load unpacks beside the layers
        if needs_docker and free_kib.isdigit() and int(free_kib) < need_kib:
            problems.append(
                f"{int(free_kib) // 1024} MiB free under /var/lib, images need {need_kib // 1024} MiB"
            )
        problem, warning = swap_verdict(swaps, lock, node)
        problems += [problem] if problem else []
        result.warnings += [warning] if warning else []
        rules = KIND_RULES.get(cluster_kind(lock), DEFAULT_RULES)
        runs = False
        if rules.check is not None:
            more, warnings, runs = rules.check(node, opts, lock, (data_dirs or {}).get(node.name, ""))
            problems += more
            result.warnings += warnings
        busy = busy_ports(node, listening, rules.ports(lock))
        if busy and not runs:
            problems.append(f"ports already in use: {', '.join(busy)}")
        if registry is not None and registry.node == node:
            problems += _registry_problems(node, opts, registry, lock, listening)
        if cluster is not None:  # the bundle brings the cluster up with rke: what rke needs here
            login = remote.rke_login_problem(node, opts.connect_timeout)
            problems += [login] if login else []
            facts = parse_facts(remote.run(node, opts, RKE_PREFLIGHT_SCRIPT, timeout=60))
            hostnames[node.name] = _first(facts, "hostname")
            more, warnings = rke_problems(node, facts, cluster, bundled_docker_version(lock))
            problems += more
            result.warnings += warnings
        if lock.deb_baseline:
            more, warnings = _baseline_problems(node, opts, lock.deb_baseline, root)
            problems += more
            result.warnings += warnings
        if problems:
            result.error = "; ".join(problems)
        else:
            result.done.append(
                f"{machine} {node_os['id']} {node_os['version_id']}"
                if is_rpm_bundle(lock)
                else f"{machine} {codename}"
            )
    except (InstallError, ValueError) as exc:
        result.error = str(exc)
    return result


def preflight_phase(
    lock: Lock,
    nodes: List[Node],
    per_node: Dict[str, Tuple[oci.Image, ...]],
    opts: remote.SshOptions,
    now: float,
    registry: Optional[Route] = None,
    cluster: Optional[ClusterOptions] = None,
    apt_root: Optional[str] = None,
    data_dirs: Optional[Dict[str, str]] = None,
) -> List[NodeResult]:
    """Check every node before anything changes: Docker and room for the images ``per_node`` names
    for it (``plan.node_images``); the ports its roles need, and the cluster kind's own rules
    (``KIND_RULES``; ``data_dirs``: node name → the kind's data folder there, k0s's dataDir); the
    node that will host the site registry: its port and disk; given the ``cluster`` options of an
    rke bundle, what rke requires of every node; and, for a bundle built for a dpkg-status
    baseline, that each node has what it assumes (``apt_root``: the packages phase's private
    roots). A result per node (no node is touched)."""
    if cluster is not None:
        problems = cluster_file_problems(lock, cluster)
        if problems:
            raise InstallError(f"preflight: {'; '.join(problems)}")
        if not cluster.kubernetes_version and lock.cluster.get("kubernetes_version"):
            cluster = replace(cluster, kubernetes_version=lock.cluster["kubernetes_version"])
    targets = {name for name, images in per_node.items() if images}
    if registry is not None and registry.node is not None:
        targets.add(registry.node.name)  # it runs the registry's container
    else:
        registry = None
    hostnames: Dict[str, str] = {}
    results = remote.for_each(
        nodes,
        lambda n: _preflight_on(
            n,
            lock,
            opts,
            per_node.get(n.name, ()),
            n.name in targets,
            now,
            registry,
            cluster,
            hostnames,
            apt_root,
            data_dirs,
        ),
    )
    if cluster is not None:
        for result in results:
            twin = duplicate_names(nodes, hostnames).get(result.node.name)
            if twin and result.node.name in hostnames:
                result.error = f"{result.error}; {twin}" if result.error else twin
                result.done = []
    return results


def _binaries_found(node: Node, lock: Lock, opts: remote.SshOptions) -> Dict[str, str]:
    """Each binary's dest -> the SHA-256 of the file there ("" when there is none)."""
    dests = " ".join(shlex.quote(b.dest) for b in lock.binaries)
    out = remote.run(node, opts, f"{remote.sudo_prefix(node)}sha256sum {dests} 2>/dev/null || true")
    found = {b.dest: "" for b in lock.binaries}
    for line in remote.lines(out):
        digest, _, path = line.partition("  ")
        if path in found:
            found[path] = digest
    return found


def _have(node: Node, lock: Lock, opts: remote.SshOptions, images: bool, binaries: bool) -> NodeFacts:
    """What ``node`` already has (image IDs and tags, binaries); nothing when it cannot tell (the
    journal decides then, and the phase that tries the node reports why it failed)."""
    try:
        present = ctrimport.present if runtime(lock) == "containerd" else dockerload.present
        ids, tags = present(node, opts) if images else (None, None)
        found = _binaries_found(node, lock, opts) if binaries else None
    except InstallError:
        return NodeFacts()
    return NodeFacts(images=ids, tags=tags, binaries=found)


def gather(
    lock: Lock,
    nodes: List[Node],
    per_node: Dict[str, Tuple[oci.Image, ...]],
    opts: remote.SshOptions,
    now: float,
    route: Route,
    cluster: Optional[ClusterOptions],
    phases: Tuple[str, ...],
    apt_root: Optional[str] = None,
    data_dirs: Optional[Dict[str, str]] = None,
) -> Dict[str, NodeFacts]:
    """The facts ``plan.make_plan`` plans from, for the ``phases`` to run: the preflight's checks
    (when it is one of them) and what each node already has; nothing on any node changes.

    A node the preflight refused is asked nothing more; one that could not tell what it has
    is left to the journal (its facts say nothing), and its phase will try it and report.

    Raises:
        InstallError: the cluster's ``cluster.yml`` asks for another Kubernetes version (exit 6).
    """
    checked: Dict[str, NodeResult] = {}
    if "preflight" in phases:
        results = preflight_phase(lock, nodes, per_node, opts, now, route, cluster, apt_root, data_dirs)
        checked = {r.node.name: r for r in results}
    want_images = "images" in phases
    want_binaries = "binaries" in phases and bool(lock.binaries)

    def ask(node: Node) -> NodeFacts:
        result = checked.get(node.name)
        if result is not None and result.error:
            return NodeFacts((result.error,), tuple(result.warnings), checked=True)
        have = _have(node, lock, opts, want_images and bool(per_node.get(node.name)), want_binaries)
        if result is None:
            return have
        return replace(have, warnings=tuple(result.warnings), summary=", ".join(result.done), checked=True)

    return dict(zip([n.name for n in nodes], remote.for_each(nodes, ask)))
