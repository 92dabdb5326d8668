"""What an install would do, as pure data: topology warnings and the per-node plan.

No I/O here: it takes the lock and the inventory's nodes and returns text and
objects that ``--dry-run`` prints and the phases follow.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from bundler import oci
from bundler.installer.inventory import Node
from bundler.lock import Lock

PHASES = ("preflight", "packages", "binaries", "images", "cluster", "steps")


@dataclass(frozen=True)
class Route:
    """How images reach the nodes: ``ssh-load``, or ``registry`` (where it is, how to trust and log in)."""

    mode: str = "ssh-load"
    address: str = ""  # HOST:PORT of the site registry
    node: Node | None = None  # the node the installer runs the registry on (--registry-node)
    data: str = ""  # the registry's data folder on that node
    ca: Path | None = None  # the CA the nodes' Docker must trust for ``address``
    cert: Path | None = None  # a site certificate and key for the registry the installer runs
    key: Path | None = None
    user: str = ""  # credentials for an existing registry
    password: str = field(default="", repr=False)
    chunk: int = 0  # upload blobs above this size in chunks

    def describe(self) -> str:
        if self.mode != "registry":
            return "over SSH into docker load"
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


def etcd_quorum(members: int) -> tuple[int, int]:
    """(quorum, failures tolerated) of an etcd cluster: 3 → (2, 1), 5 → (3, 2)."""
    quorum = members // 2 + 1
    return quorum, max(0, members - quorum)


def topology_warnings(nodes: list[Node], min_workers: int = 0) -> list[str]:
    """What the cluster documents warn about: etcd count, shared roles, too few workers."""
    out = []
    etcd = [n for n in nodes if n.has("etcd")]
    quorum, tolerated = etcd_quorum(len(etcd))
    if not etcd:
        out.append("no node has the etcd role: rke cannot build a cluster")
    elif len(etcd) < 3:
        out.append(
            f"{len(etcd)} etcd node(s): quorum {quorum}, tolerates {tolerated} failure(s); "
            "a fault-tolerant cluster needs at least 3"
        )
    elif len(etcd) % 2 == 0:
        less = etcd_quorum(len(etcd) - 1)
        out.append(
            f"{len(etcd)} etcd nodes (even): quorum {quorum}, tolerates {tolerated} failure(s), "
            f"no better than {len(etcd) - 1} (quorum {less[0]}, tolerates {less[1]}); use an odd number"
        )
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


def image_targets(nodes: list[Node], roles: tuple[str, ...] = ("worker",)) -> list[Node]:
    """The nodes that receive the bundle's images: those with one of ``roles`` (the manifest's
    ``image_roles``, workers by default), or every node when none has such a role."""
    targets = [n for n in nodes if any(n.has(r) for r in roles)]
    return targets or list(nodes)


def kubernetes_version_problem(lock: Lock, site_version: str | None) -> str | None:
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


def baseline_gaps(
    baseline: dict[str, str], installed: dict[str, str]
) -> tuple[list[str], list[tuple[str, str, str]]]:
    """What a node lacks of the dpkg-status baseline a bundle was built for (names), and what it
    has at another version than the baseline's: (name, the node's version, the baseline's)."""
    missing = sorted(name for name in baseline if name not in installed)
    other = sorted(
        (name, installed[name], version)
        for name, version in baseline.items()
        if name in installed and installed[name] != version
    )
    return missing, other


def node_images(lock: Lock, nodes: list[Node]) -> dict[str, tuple[oci.Image, ...]]:
    """Node name → the images that node gets, in lock order: the workloads on the ``image_roles``
    nodes (on every node when none has such a role, as ``image_targets``) and the system images
    whose roles meet the node's (``Lock.images_for``). A node that gets nothing maps to ``()``."""
    targets = {n.name for n in image_targets(nodes, lock.image_roles)}
    workloads = set(lock.workloads)
    out = {}
    for node in nodes:
        chosen = set(lock.images_for(node.roles))
        if node.name in targets:
            chosen |= workloads  # the fallback: no node has one of image_roles
        else:
            chosen -= workloads
        out[node.name] = tuple(i for i in lock.images if i in chosen)
    return out


def _images_lines(lock: Lock, nodes: list[Node], route: Route) -> list[str]:
    """The images phase for ``--dry-run``: application and system images apart, and who gets which."""
    per_node = node_images(lock, nodes)
    workloads = set(lock.workloads)
    app_nodes = [n.name for n in nodes if workloads & set(per_node[n.name])]
    tags = ", ".join(t for i in lock.workloads for t in i.tags) or "none"
    lines = [
        f"images     on {', '.join(app_nodes) or 'no node'}: {len(lock.workloads)} "
        f"{'application ' if lock.system_images else ''}images ({tags}), only those missing, in parallel, "
        + route.describe()
    ]
    if lock.system_images:
        kind, version = lock.cluster.get("kind", "the cluster"), lock.cluster.get("kubernetes_version", "")
        lines.append(f"           {len(lock.system_images)} system images for {kind} {version}, by role:")
        for system in lock.system_images:
            image = lock.find_image(system.ref)
            have = [n.name for n in nodes if image is not None and image in per_node[n.name]]
            lines.append(
                f"             {system.ref} ({'/'.join(system.roles)}): {', '.join(have) or 'no node'}"
            )
    return lines


def describe(lock: Lock, nodes: list[Node], route: Route = Route()) -> list[str]:
    """The plan, phase by phase and node by node (``--dry-run`` prints it)."""
    plat = lock.platform
    rke = any(b.name == "rke" for b in lock.binaries)
    every = ", ".join(n.name for n in nodes)
    lines = [
        f"preflight  on {every}: reachable over SSH, sudo, {plat.get('os')} {plat.get('codename')} "
        f"{plat.get('arch')}, swap off, free space, ports by role, clock",
        f"packages   on {every}: {len(lock.debs)} Debian packages from the bundled repository only",
        f"binaries   on {every}: " + (", ".join(f"{b.dest} ({b.mode})" for b in lock.binaries) or "none"),
        *_images_lines(lock, nodes, route),
        "cluster    "
        + (
            "rke up --config <inventory> on this node"
            + (f", with private_registries: {route.address} (default)" if route.mode == "registry" else "")
            if rke
            else "skipped (no rke in the bundle)"
        ),
        "steps      on this node, in order: " + (", ".join(s.name for s in lock.steps) or "none"),
    ]
    return lines
