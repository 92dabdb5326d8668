"""The install phases: preflight, binaries and images on the nodes, steps on this node.

``preflight`` asks every node (in parallel, changing nothing) for its
architecture, OS codename, clock, sudo, Docker and free space, and fails the
install before anything changes when one does not fit. ``binaries`` writes each
binary beside its destination, re-checks its SHA-256 on the node and renames it
into place. ``steps`` runs the staged scripts here, in order, each logged.

``images`` asks each target node's Docker engine which locked image IDs it
already has, streams only the missing images over SSH into ``docker load`` (a
tar made on the fly from the unpacked ``images/`` folder, no temporary copy),
then checks that every tag resolves to its locked image ID, tagging where an
image was present under another name. Nodes run in parallel; one node failing
does not stop the others, and the report names each node's outcome.
"""

from __future__ import annotations

import io
import json
import os
import posixpath
import shlex
import shutil
import subprocess
import tarfile
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, Callable

from bundler import archive, oci
from bundler.errors import InstallError
from bundler.installer import remote
from bundler.installer.inventory import ClusterOptions, Node, with_kubernetes_version, with_private_registries
from bundler.installer.journal import Journal
from bundler.installer.plan import Route, baseline_gaps, kubernetes_version_problem
from bundler.lock import Lock


@dataclass
class NodeResult:
    """What one phase did on one node."""

    node: Node
    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    error: str | None = None
    warnings: list[str] = field(default_factory=list)  # what the node could not tell, or advice
    sent: int = 0  # bytes this node was sent (image streams)
    verb: str = "loaded"  # how images reached it: loaded (ssh-load) or pulled (registry)


class _Counter:
    """A write-only file that counts what passes through it to ``out``."""

    def __init__(self, out: IO[bytes]) -> None:
        self.out, self.count = out, 0

    def write(self, data: bytes) -> int:
        self.count += len(data)
        return self.out.write(data)


def docker_load_tar(images: list[oci.Image], images_dir: Path, out: IO[bytes]) -> int:
    """Write a ``docker load`` archive of ``images`` to ``out``, streaming the blobs from ``images_dir``;
    returns the bytes written."""
    counter = _Counter(out)
    manifest = json.dumps(
        [
            {
                "Config": oci.blob_path(i.config),
                "RepoTags": list(i.tags),
                "Layers": [oci.blob_path(la.digest) for la in i.layers],
            }
            for i in images
        ]
    ).encode()
    with tarfile.open(fileobj=counter, mode="w|", format=tarfile.PAX_FORMAT) as tar:  # type: ignore[call-overload]  # stream mode only writes
        info = tarfile.TarInfo("manifest.json")
        info.size = len(manifest)
        tar.addfile(info, io.BytesIO(manifest))
        seen = set()
        for image in images:
            for digest in [image.config, *(la.digest for la in image.layers)]:
                if digest in seen:
                    continue  # a layer shared by two images goes once
                seen.add(digest)
                path = images_dir / oci.blob_path(digest)
                tar.add(str(path), arcname=oci.blob_path(digest), recursive=False)
    return counter.count


def present_ids(node: Node, opts: remote.SshOptions) -> set[str]:
    """The image IDs the node's engine holds."""
    return set(remote.lines(remote.run(node, opts, "docker images --no-trunc --quiet")))


def load_missing(
    node: Node, images: list[oci.Image], images_dir: Path, opts: remote.SshOptions
) -> tuple[list[oci.Image], int]:
    """``docker load`` on ``node`` those of ``images`` its engine lacks; (those loaded, bytes sent)."""
    present = present_ids(node, opts)
    missing = [i for i in images if i.config not in present]
    sent = 0
    if missing:

        def send(out: IO[bytes]) -> None:
            nonlocal sent
            sent = docker_load_tar(missing, images_dir, out)

        remote.stream(node, opts, "docker load --quiet", send)
    return missing, sent


def ensure_tags(node: Node, opts: remote.SshOptions, image: oci.Image) -> None:
    """Point each of ``image``'s tags at its locked ID, where the node's engine has them elsewhere."""
    for tag in image.tags:
        found = remote.run(
            node, opts, f"docker image inspect --format '{{{{.Id}}}}' {shlex.quote(tag)} || true"
        ).strip()
        if found != image.config:
            remote.run(node, opts, f"docker tag {image.config} {shlex.quote(tag)}")


def _images_on(
    node: Node,
    images: tuple[oci.Image, ...],
    images_dir: Path,
    opts: remote.SshOptions,
    journal: Journal,
    lock_: threading.Lock,
) -> NodeResult:
    result = NodeResult(node)
    try:
        missing, result.sent = load_missing(node, list(images), images_dir, opts)
        result.skipped = [t for i in images if i not in missing for t in i.tags]
        for image in images:
            ensure_tags(node, opts, image)
            with lock_:
                journal.mark_done("images", node.name, image.config)
        result.done = [t for i in missing for t in i.tags]
    except InstallError as exc:
        result.error = str(exc)
    return result


def images_phase(
    per_node: dict[str, tuple[oci.Image, ...]],
    bundle_dir: Path,
    targets: list[Node],
    opts: remote.SshOptions,
    journal: Journal,
) -> list[NodeResult]:
    """Load on every target node, in parallel, the images ``per_node`` names for it
    (``plan.node_images``: its roles' system images, and the workloads on ``image_roles`` nodes);
    a result per node."""
    guard = threading.Lock()
    with ThreadPoolExecutor(max_workers=max(1, len(targets))) as pool:
        return list(
            pool.map(
                lambda n: (
                    _images_on(n, per_node.get(n.name, ()), bundle_dir / "images", opts, journal, guard)
                    if per_node.get(n.name)
                    else NodeResult(n)
                ),
                targets,
            )
        )


# ---------------------------------------------------------------- preflight

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
    'uname -m; . /etc/os-release 2>/dev/null; echo "${VERSION_CODENAME:-unknown}"; date +%s; '
    "command -v docker >/dev/null 2>&1 && echo docker || echo no-docker; "
    "df -Pk /var/lib 2>/dev/null | awk 'NR==2 {print $4}'; "
    "swapon --noheadings --show=NAME 2>/dev/null | wc -l; "
    'if [ "$(id -u)" = 0 ] || sudo -n true 2>/dev/null; then echo root-ok; else echo no-sudo; fi; '
    "(ss -Htln 2>/dev/null || netstat -tln 2>/dev/null | tail -n +3) | awk '{print $4}' | sed 's/.*://' "
    "| sort -un | tr '\\n' ' '; echo"
)
# Ports Kubernetes (RKE) needs free on a node, by role.
ROLE_PORTS: dict[str, list[int | tuple[int, int]]] = {
    "controlplane": [6443, 10251, 10252],
    "etcd": [2379, 2380],
    "worker": [10250, (30000, 32767)],
}


def busy_ports(node: Node, listening: set[int]) -> list[str]:
    """The ports this node's roles need that something already listens on."""
    busy = []
    for role in node.roles:
        for port in ROLE_PORTS.get(role, []):
            low, high = port if isinstance(port, tuple) else (port, port)
            busy += [f"{p} ({role})" for p in sorted(listening) if low <= p <= high]
    return busy


# What Rancher's rke needs on every node: its requirements page ("Requirements": the SSH user
# in the docker group, the kernel modules, the sysctl, AllowTcpForwarding) and the checks rke
# itself makes when it opens its SSH tunnel to each node's Docker (hosts/tunnel.go:
# checkDockerVersion, docker/docker.go: IsSupportedDockerVersion).

# Docker versions rke accepts, by Kubernetes minor version: rke compares major.minor only.
# From rancher/kontainer-driver-metadata pkg/rke/k8s_docker_info.go, which rke releases embed.
_RKE_DOCKER_LEGACY = ("1.13", "17.03", "17.06", "17.09", "18.06", "18.09", "19.03", "20.10")
_RKE_DOCKER_OLD = ("1.11", "1.12", "1.13", "17.03")
RKE_DOCKER_VERSIONS: dict[str, tuple[str, ...]] = {
    "1.8": _RKE_DOCKER_OLD,
    **{f"1.{m}": (*_RKE_DOCKER_OLD, "18.06", "18.09", "19.03", "20.10") for m in (9, 10, 11)},
    **{f"1.{m}": (*_RKE_DOCKER_OLD, "17.06", "17.09", "18.06", "18.09", "19.03", "20.10") for m in (12, 13)},
    **{f"1.{m}": _RKE_DOCKER_LEGACY for m in range(14, 23)},
    "1.23": (*_RKE_DOCKER_LEGACY, "23.0", "24.0"),
    "1.24": (*_RKE_DOCKER_LEGACY, "23.0", "24.0"),
    **{f"1.{m}": (*_RKE_DOCKER_LEGACY, "23.0", "24.0", "25.0") for m in range(25, 30)},
}
RKE_DEFAULT_K8S_MINOR = "1.28"  # when cluster.yml names no kubernetes_version
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


def parse_facts(text: str) -> dict[str, list[str]]:
    """KEY=VALUE lines (``sshd KEY VALUE`` lines under ``sshd``), each key's values in order."""
    facts: dict[str, list[str]] = {}
    for line in remote.lines(text):
        key, _, value = line.partition(" ") if line.startswith("sshd ") else line.partition("=")
        facts.setdefault(key, []).append(value.strip())
    return facts


def _first(facts: dict[str, list[str]], key: str, default: str = "") -> str:
    return (facts.get(key) or [default])[0]


def rke_docker_accepted(version: str, kubernetes_version: str | None) -> tuple[bool, tuple[str, ...]]:
    """Whether rke accepts Docker ``version`` for ``kubernetes_version``, as rke compares (major.minor)."""
    minor = RKE_DEFAULT_K8S_MINOR
    if kubernetes_version:
        minor = ".".join(kubernetes_version.lstrip("v").split(".")[:2])
    accepted = RKE_DOCKER_VERSIONS.get(minor, ())
    mine = ".".join(version.split("+")[0].split("-")[0].split(".")[:2])
    return mine in accepted, accepted


def rke_problems(
    node: Node, facts: dict[str, list[str]], cluster: ClusterOptions, docker_from_bundle: bool
) -> tuple[list[str], list[str]]:
    """What stops rke on ``node`` (problems) and what the node cannot tell (warnings), from its facts."""
    problems: list[str] = []
    warnings: list[str] = []
    user = node.user
    docker = _first(facts, "docker", "missing")
    if docker == "missing":
        if docker_from_bundle:
            warnings.append(
                "no docker yet (the bundle installs docker-ce): rke's Docker checks wait for rke up"
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
    settings: dict[str, str] = {}
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


def duplicate_names(nodes: list[Node], hostnames: dict[str, str]) -> dict[str, str]:
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
    node: Node, opts: remote.SshOptions, route: Route, lock: Lock, listening: set[int]
) -> list[str]:
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
    node: Node, opts: remote.SshOptions, baseline: dict[str, str], root: str | None
) -> tuple[list[str], list[str]]:
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


def _preflight_on(
    node: Node,
    lock: Lock,
    opts: remote.SshOptions,
    images: tuple[oci.Image, ...],
    needs_docker: bool,
    now: float,
    registry: Route | None,
    cluster: ClusterOptions | None,
    hostnames: dict[str, str],
    apt_root: str | None = None,
) -> NodeResult:
    result = NodeResult(node)
    try:
        fields = list(remote.lines(remote.run(node, opts, PREFLIGHT_SCRIPT, timeout=60)))
        if len(fields) < 7:
            raise InstallError(f"{node.name}: unexpected preflight answer: {fields}")
        machine, codename, clock, docker, free_kib, swaps, sudo = fields[:7]
        listening = {int(p) for p in (fields[7] if len(fields) > 7 else "").split() if p.isdigit()}
        problems = []
        want_arch = lock.platform.get("arch")
        if _UNAME_ARCH.get(machine, machine) != want_arch:
            problems.append(f"architecture {machine}, the bundle is for {want_arch}")
        if codename != lock.platform.get("codename"):
            problems.append(f"OS codename {codename}, the bundle is for {lock.platform.get('codename')}")
        if abs(int(clock) - now) > MAX_CLOCK_SKEW:
            problems.append(
                f"clock is {int(clock) - now:+.0f} s off this node's (more than {MAX_CLOCK_SKEW} s)"
            )
        if sudo != "root-ok":
            problems.append(f"{node.user} cannot use sudo without a password")
        if needs_docker and docker != "docker" and not any(d.name == "docker-ce" for d in lock.debs):
            problems.append("no docker, and the bundle does not carry docker-ce")
        need_kib = sum(i.size for i in images) * 2 // 1024  # docker load unpacks beside the layers
        if needs_docker and free_kib.isdigit() and int(free_kib) < need_kib:
            problems.append(
                f"{int(free_kib) // 1024} MiB free under /var/lib, images need {need_kib // 1024} MiB"
            )
        if swaps.isdigit() and int(swaps) > 0:
            problems.append(
                "swap is on (the kubelet refuses to run with swap; swapoff -a and remove it from fstab)"
            )
        busy = busy_ports(node, listening)
        if busy:
            problems.append(f"ports already in use: {', '.join(busy)}")
        if registry is not None and registry.node == node:
            problems += _registry_problems(node, opts, registry, lock, listening)
        if cluster is not None:  # the bundle brings the cluster up with rke: what rke needs here
            facts = parse_facts(remote.run(node, opts, RKE_PREFLIGHT_SCRIPT, timeout=60))
            hostnames[node.name] = _first(facts, "hostname")
            more, result.warnings = rke_problems(
                node, facts, cluster, any(d.name == "docker-ce" for d in lock.debs)
            )
            problems += more
        if lock.deb_baseline:
            root = apt_root.replace("{node}", node.name) if apt_root else None
            more, warnings = _baseline_problems(node, opts, lock.deb_baseline, root)
            problems += more
            result.warnings += warnings
        if problems:
            result.error = "; ".join(problems)
        else:
            result.done.append(f"{machine} {codename}")
    except (InstallError, ValueError) as exc:
        result.error = str(exc)
    return result


def preflight_phase(
    lock: Lock,
    nodes: list[Node],
    per_node: dict[str, tuple[oci.Image, ...]],
    opts: remote.SshOptions,
    now: float,
    registry: Route | None = None,
    cluster: ClusterOptions | None = None,
    apt_root: str | None = None,
) -> list[NodeResult]:
    """Check every node before anything changes: Docker and room for the images ``per_node`` names
    for it (``plan.node_images``); the node that will host the site registry: its port and disk;
    given the ``cluster`` options of an rke bundle, what rke requires of every node; and, for a
    bundle built for a dpkg-status baseline, that each node has what it assumes (``apt_root``:
    the packages phase's private roots). A result per node (no node is touched)."""
    if cluster is not None:
        problem = kubernetes_version_problem(lock, cluster.kubernetes_version)
        if problem:
            raise InstallError(f"preflight: {problem}")
        if not cluster.kubernetes_version and lock.cluster.get("kubernetes_version"):
            cluster = replace(cluster, kubernetes_version=lock.cluster["kubernetes_version"])
    targets = {name for name, images in per_node.items() if images}
    if registry is not None and registry.node is not None:
        targets.add(registry.node.name)  # it runs the registry's container
    else:
        registry = None
    hostnames: dict[str, str] = {}
    with ThreadPoolExecutor(max_workers=max(1, len(nodes))) as pool:
        results = list(
            pool.map(
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
                ),
                nodes,
            )
        )
    if cluster is not None:
        for result in results:
            twin = duplicate_names(nodes, hostnames).get(result.node.name)
            if twin and result.node.name in hostnames:
                result.error = f"{result.error}; {twin}" if result.error else twin
                result.done = []
    return results


# ---------------------------------------------------------------- binaries


def sudo_prefix(node: Node) -> str:
    return "" if node.user == "root" else "sudo -n "


def _copy_from(source: Path) -> Callable[[IO[bytes]], None]:
    def write(out: IO[bytes]) -> None:
        with open(source, "rb") as f:
            shutil.copyfileobj(f, out, 1 << 20)

    return write


def _binaries_on(node: Node, lock: Lock, bundle_dir: Path, opts: remote.SshOptions) -> NodeResult:
    result = NodeResult(node)
    try:
        for binary in lock.binaries:
            dest = shlex.quote(binary.dest)
            have = remote.run(node, opts, f"{sudo_prefix(node)}sha256sum {dest} 2>/dev/null || true").split()
            if have and have[0] == binary.sha256:
                result.skipped.append(binary.dest)
                continue
            folder = shlex.quote(posixpath.dirname(binary.dest) or "/")
            # Written beside its destination, checked, then renamed: never half a binary at dest.
            script = (
                f"set -e; mkdir -p {folder}; t=$(mktemp {folder}/.airbundle.XXXXXX); "
                "trap 'rm -f \"$t\"' EXIT; "
                f'cat > "$t"; echo \'{binary.sha256}  \'"$t" | sha256sum -c --quiet; '
                f'chmod {binary.mode} "$t"; mv "$t" {dest}; trap - EXIT'
            )
            remote.stream(
                node,
                opts,
                f"{sudo_prefix(node)}sh -c {shlex.quote(script)}",
                _copy_from(bundle_dir / binary.path),
            )
            result.done.append(binary.dest)
    except InstallError as exc:
        result.error = str(exc)
    return result


def binaries_phase(
    lock: Lock, bundle_dir: Path, nodes: list[Node], opts: remote.SshOptions
) -> list[NodeResult]:
    """Install every binary at its destination on every node, checksum re-checked on the node."""
    with ThreadPoolExecutor(max_workers=max(1, len(nodes))) as pool:
        return list(pool.map(lambda n: _binaries_on(n, lock, bundle_dir, opts), nodes))


# ---------------------------------------------------------------- steps (on this node)


def run_steps(
    lock: Lock,
    bundle_dir: Path,
    logs: Path,
    env: dict[str, str],
    journal: Journal,
    echo: Callable[[str], None],
    private: Path,
) -> list[str]:
    """Run the staged scripts in order here; skip those the journal has; stop at the first failure.

    Each script runs from a copy in ``private`` (a folder only this installer can write), made
    while its bytes are checked against the lock, so nothing can swap it between check and run.

    Returns:
        The names of the steps run now.

    Raises:
        InstallError: a step failed (names the step and its log; exit 6).
    """
    logs.mkdir(parents=True, exist_ok=True)
    ran = []
    for index, step in enumerate(lock.steps, start=1):
        if journal.is_done("steps", "local", step.name):
            echo(f"step {step.name}: done before, skipped")
            continue
        script = archive.verified_copy(
            bundle_dir / step.script, lock.member(step.script), private / f"{index:02d}-{step.name}"
        )
        log_path = logs / f"{index:02d}-{step.name}.log"
        with open(script, "rb") as f:
            argv = [str(script)] if f.read(2) == b"#!" else ["sh", str(script)]
        echo(f"step {step.name}: {step.script} (log: {log_path})")
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                argv, cwd=str(bundle_dir), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
            )
            assert proc.stdout is not None
            for line in proc.stdout:
                log.write(line)
                echo("  | " + line.decode(errors="replace").rstrip("\n"))
            code = proc.wait()
        if code != 0:
            raise InstallError(
                f"step {step.name} failed with exit code {code}; see {log_path}; "
                "fix it and run again with --resume to continue from this step"
            )
        journal.mark_done("steps", "local", step.name)
        ran.append(step.name)
    return ran


# ---------------------------------------------------------------- cluster (rke up, on this node)


def rke_up(
    rke: Path,
    inventory: Path,
    workdir: Path,
    env: dict[str, str],
    echo: Callable[[str], None],
    registries: list[dict[str, object]] | None = None,
    kubernetes_version: str = "",
) -> Path:
    """``rke up --config`` with the bundle's own rke (verified), here; returns the kubeconfig it wrote.

    The inventory is copied into ``workdir`` first, so rke keeps its state file
    (``cluster.rkestate``) and ``kube_config_cluster.yml`` there, beside the journal.
    ``registries`` go into that copy's ``private_registries`` (the site registry of
    the registry route), which is then 0600: it may hold the registry's password; and
    ``kubernetes_version`` (the lock's) when the site's file names none.

    Raises:
        InstallError: rke failed or wrote no kubeconfig (exit 6; the log is named).
    """
    config = workdir / "cluster.yml"
    original = inventory.read_text()
    text = with_kubernetes_version(with_private_registries(original, registries or []), kubernetes_version)
    if text != original:
        fd = os.open(str(config), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(config, 0o600)
    elif inventory.resolve() != config.resolve():
        shutil.copyfile(inventory, config)
    log_path = workdir / "logs" / "rke-up.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    echo(f"rke up --config {config} (log: {log_path})")
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [str(rke), "up", "--config", str(config)],
            cwd=str(workdir),
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        assert proc.stdout is not None
        for line in proc.stdout:
            log.write(line)
            echo("  | " + line.decode(errors="replace").rstrip("\n"))
        code = proc.wait()
    kubeconfig = workdir / "kube_config_cluster.yml"
    if code != 0:
        raise InstallError(f"cluster: rke up failed with exit code {code}; see {log_path}")
    if not kubeconfig.exists():
        raise InstallError(f"cluster: rke up wrote no {kubeconfig}; see {log_path}")
    return kubeconfig


# ---------------------------------------------------------------- packages


def _debs_tar(lock: Lock, bundle_dir: Path, out: IO[bytes]) -> None:
    """The bundle's flat apt repository plus a SHA256SUMS of its .debs, as a tar stream."""
    sums = "".join(f"{d.sha256}  {posixpath.basename(d.path)}\n" for d in lock.debs).encode()
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("SHA256SUMS")
        info.size = len(sums)
        tar.addfile(info, io.BytesIO(sums))
        for path in sorted((bundle_dir / "debs").iterdir()):
            tar.add(str(path), arcname=path.name, recursive=False)


def _packages_script(repo: str, packages: list[str], root: str | None, recommends: bool = False) -> str:
    """Shell that installs ``packages`` with apt from ``repo`` only (its own source list and lists).

    Every requested package is named, so apt marks each as manually installed (a later
    ``apt-get autoremove`` keeps it); with ``recommends`` apt also installs the Recommends the
    bundle carries (the build resolved them as apt would)."""
    q = shlex.quote
    opts = [
        f"-o Dir::Etc::SourceList={q(repo + '.list')}",
        "-o Dir::Etc::SourceParts=/dev/null",
        f"-o Dir::State::Lists={q(repo + '.lists')}",
        "-o DPkg::Lock::Timeout=120",
        "-o Acquire::Languages=none",
        "-o APT::Get::AllowUnauthenticated=false",
    ]
    prepare = ""
    if root:  # a private root instead of the node's system (tests, image builds)
        opts += [
            f"-o Dir::State={q(root + '/var/lib/apt')}",
            f"-o Dir::Cache={q(root + '/var/cache/apt')}",
            f"-o Dir::State::status={q(root + '/var/lib/dpkg/status')}",
            f"-o DPkg::Options::=--root={q(root)}",
            f"-o DPkg::Options::=--admindir={q(root + '/var/lib/dpkg')}",
            "-o DPkg::Options::=--force-script-chrootless",
            "-o DPkg::Options::=--force-not-root",
            "-o Debug::NoLocking=1",
        ]
        prepare = (
            f"mkdir -p {q(root)}/var/lib/dpkg/updates {q(root)}/var/lib/dpkg/info "
            f"{q(root)}/var/lib/apt/lists/partial {q(root)}/var/cache/apt/archives/partial; "
            f"touch {q(root)}/var/lib/dpkg/status; "
        )
    apt = "DEBIAN_FRONTEND=noninteractive apt-get -qq " + " ".join(opts)
    # The repository was verified on the control node and its .debs again here (SHA256SUMS),
    # which is why apt may take it as trusted.
    return (
        f"set -e; {prepare}mkdir -p {q(repo + '.lists')}/partial; "
        f"cd {q(repo)} && sha256sum -c --quiet SHA256SUMS; "
        f"echo 'deb [trusted=yes] file:{repo} ./' > {q(repo + '.list')}; "
        f"{apt} update; {apt} -y --{'' if recommends else 'no-'}install-recommends install "
        f"{' '.join(q(p) for p in packages)}"
    )


def _packages_on(
    node: Node, lock: Lock, bundle_dir: Path, opts: remote.SshOptions, root_pattern: str | None
) -> NodeResult:
    result = NodeResult(node)
    repo = f"/var/lib/airbundle/debs/{lock.name}-{lock.version}"
    root = root_pattern.replace("{node}", node.name) if root_pattern else None
    if root:
        repo = root + repo
    requested = [f"{d.name}={d.version}" for d in lock.debs if d.reason == "requested"]
    try:
        remote.stream(
            node,
            opts,
            f"{sudo_prefix(node)}sh -c {shlex.quote(f'mkdir -p {repo} && tar -x -C {repo}')}",
            lambda out: _debs_tar(lock, bundle_dir, out),
        )
        remote.run(
            node,
            opts,
            f"{sudo_prefix(node)}sh -c "
            + shlex.quote(_packages_script(repo, requested, root, lock.recommends)),
            timeout=3600,
        )
        result.done = requested
    except InstallError as exc:
        result.error = str(exc)
    return result


def packages_phase(
    lock: Lock, bundle_dir: Path, nodes: list[Node], opts: remote.SshOptions, root_pattern: str | None = None
) -> list[NodeResult]:
    """Install the bundle's requested packages on every node with apt, from the bundled repository only."""
    with ThreadPoolExecutor(max_workers=max(1, len(nodes))) as pool:
        return list(pool.map(lambda n: _packages_on(n, lock, bundle_dir, opts, root_pattern), nodes))
