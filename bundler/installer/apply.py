"""Apply the plan: run its phases in order, each on its slice of the plan, and keep the journal.

Every phase has one shape: ``Context`` and its ``PhasePlan`` in, one ``NodeResult`` per node
out (``RUNNERS``); ``apply`` is the loop that runs them, marks in the journal the actions
of every node that succeeded, and hands each phase's results to the caller's ``report``
(which prints them and stops the install at a failure). The phases themselves:
``preflight`` reports what ``preflight.gather`` found (no node is asked again);
``packages`` installs the requested packages with apt from the bundled repository only;
``binaries`` writes each binary beside its destination, re-checks its SHA-256 on the
node and renames it into place; ``images`` delivers each node's images by the chosen
route (streamed over SSH into ``docker load``, ``dockerload``; or through a site
registry, ``siteregistry.deliver``); ``cluster`` runs the bundle's ``rke up`` here (or, for
kubeadm, keepalived + haproxy on the load balancers, ``lbsetup``, then kubeadm over SSH);
``steps`` runs the staged scripts in order, each here or on its nodes (``steps``), each
logged. Nodes run in parallel; one node failing does not stop the others in its phase.
What to do is not decided here (``plan``).
"""

import io
import os
import posixpath
import re
import shlex
import shutil
import subprocess
import tarfile
from pathlib import Path
from typing import IO, Callable, Dict, List, Optional

from bundler import archive, k0simages, kinds, oci
from bundler.compat import dataclass, replace
from bundler.errors import InstallError
from bundler.installer import (
    ctrimport,
    k0s,
    k0sctl,
    kubeadmup,
    lbconfig,
    lbsetup,
    remote,
    rpmroute,
    siteregistry,
)
from bundler.installer.dockerload import ensure_tags, load_missing
from bundler.installer.inventory import (
    Node,
    SiteValues,
    load_cluster_options,
    load_endpoint,
    load_inventory,
    with_kubernetes_version,
    with_network_plugin,
    with_private_registries,
)
from bundler.installer.journal import Journal
from bundler.installer.plan import (
    LOAD_BALANCER,
    LOCAL,
    PHASES,
    PhasePlan,
    Plan,
    Route,
    cluster_kind,
    rpm_requests,
    runtime,
)
from bundler.installer.preflight import RKE_PREFLIGHT_SCRIPT, parse_facts, rke_problems, swap_problem
from bundler.installer.remote import for_each, sudo_prefix
from bundler.installer.results import NodeResult
from bundler.installer.steps import run_on_nodes, run_steps
from bundler.lock import Binary, Lock

HERE = Node(LOCAL, "", ())  # the node the installer runs on, in local phases' results


@dataclass(frozen=True)
class Context:
    """What every phase may use: the verified bundle, the nodes and how to reach them, the site."""

    lock: Lock
    bundle_dir: Path  # the unpacked, verified bundle
    opts: remote.SshOptions
    route: Route
    workdir: Path
    inventory: Path
    values: SiteValues
    journal: Journal
    private: Path  # a folder only this installer can write: checked copies of what runs here
    echo: Callable[[str], None]
    apt_root: Optional[str] = None
    # (phase, node, bytes done, bytes total[, note]) for the CLI's bars; nothing by default. A bar
    # whose done reaches its total leaves the status line.
    progress: Callable[..., None] = lambda phase, node, done, total, note="": None


Runner = Callable[[Context, PhasePlan], "list[NodeResult]"]  # a string: list[...] is 3.9+ at runtime


def apply(plan: Plan, ctx: Context, report: Callable[[PhasePlan, List[NodeResult]], None]) -> None:
    """Run ``plan``'s phases in order; after each, mark in the journal the actions of every node
    that succeeded, then ``report`` the results (it raises to stop the install at a failure)."""
    for phase in plan.phases:
        ctx.echo(f"== {phase.name}")
        for note in phase.notes:
            ctx.echo(f"  {note}")
        results = RUNNERS[phase.name](ctx, phase)
        for result in results:
            if not result.error:
                _mark(ctx.journal, phase, result)
        report(phase, results)


def _mark(journal: Journal, phase: PhasePlan, result: NodeResult) -> None:
    """Record in the journal the actions ``result`` finished (all of its node's, unless it names them)."""
    for action in phase.of(result.node.name):
        if result.items is None or action.item in result.items:
            journal.mark_done(action.phase, action.node, action.item)


# ---------------------------------------------------------------- preflight (facts gathered before)


def _preflight(ctx: Context, phase: PhasePlan) -> List[NodeResult]:
    return [
        NodeResult(
            n,
            done=[s for s in phase.present.get(n.name, ()) if s],
            error=phase.problems.get(n.name),
            warnings=list(phase.warnings.get(n.name, ())),
        )
        for n in phase.nodes
    ]


# ---------------------------------------------------------------- images (either route)


def _images(ctx: Context, phase: PhasePlan) -> List[NodeResult]:
    if ctx.lock.cluster.get("kind") == "k0s":
        return _k0s_images(ctx, phase)
    if ctx.route.mode == "registry":
        tls = ctx.workdir / "registry-tls"

        def pushed(blobs: int, of: int, done: int, total: int) -> None:
            ctx.progress("push", ctx.route.address, done, total, f"{blobs}/{of} blobs")

        return siteregistry.deliver(
            ctx.lock, ctx.bundle_dir, phase, ctx.opts, ctx.route, tls, ctx.echo, pushed, runtime(ctx.lock)
        )
    by_id = {i.config: i for i in ctx.lock.images}
    if runtime(ctx.lock) == "containerd":
        return for_each(list(phase.nodes), lambda node: _import_on(node, phase, by_id, ctx))
    return for_each(list(phase.nodes), lambda node: _load_on(node, phase, by_id, ctx))


def _import_on(node: Node, phase: PhasePlan, by_id: Dict[str, oci.Image], ctx: Context) -> NodeResult:
    """``ctr -n k8s.io images import`` on ``node`` the images its actions name, point their names at
    the locked manifests, then read them back: a digest other than the locked one fails the node."""
    actions = phase.of(node.name)
    result = NodeResult(node, skipped=[t for i in phase.present.get(node.name, ()) for t in by_id[i].tags])
    result.verb = "imported"
    try:
        wanted = [by_id[a.item] for a in actions if a.kind == "import"]
        imported: List[oci.Image] = []
        if wanted:
            imported, result.sent = ctrimport.import_missing(
                node, wanted, ctx.bundle_dir / "images", ctx.opts,
                lambda sent, total: ctx.progress("images", node.name, sent, total),
            )  # fmt: skip
        if actions:
            _, found = ctrimport.present(node, ctx.opts)
            for action in actions:
                ctrimport.ensure_names(node, ctx.opts, by_id[action.item], found)
            wrong = ctrimport.check(node, ctx.opts, [by_id[a.item] for a in actions])
            if wrong:
                raise InstallError(f"images: on {node.name}: " + "; ".join(wrong))
        result.done = [t for i in imported for t in i.tags]
        result.skipped += [t for a in actions if by_id[a.item] not in imported for t in by_id[a.item].tags]
    except InstallError as exc:
        result.error = str(exc)
    return result


def _load_on(node: Node, phase: PhasePlan, by_id: Dict[str, oci.Image], ctx: Context) -> NodeResult:
    """``docker load`` on ``node`` the images its actions name, then point their tags at them."""
    actions = phase.of(node.name)
    result = NodeResult(node, skipped=[t for i in phase.present.get(node.name, ()) for t in by_id[i].tags])
    try:
        wanted = [by_id[a.item] for a in actions if a.kind == "load"]
        loaded: List[oci.Image] = []
        if wanted:
            loaded, result.sent = load_missing(
                node, wanted, ctx.bundle_dir / "images", ctx.opts,
                lambda sent, total: ctx.progress("images", node.name, sent, total),
            )  # fmt: skip
        for action in actions:
            ensure_tags(node, ctx.opts, by_id[action.item])
        result.done = [t for i in loaded for t in i.tags]
        result.skipped += [t for a in actions if by_id[a.item] not in loaded for t in by_id[a.item].tags]
    except InstallError as exc:
        result.error = str(exc)
    return result


# ---------------------------------------------------------------- binaries


def _binaries(ctx: Context, phase: PhasePlan) -> List[NodeResult]:
    by_dest = {b.dest: b for b in ctx.lock.binaries}

    def one(node: Node) -> NodeResult:
        todo = [by_dest[a.item] for a in phase.of(node.name)]
        result = _binaries_on(node, todo, ctx.bundle_dir, ctx.opts) if todo else NodeResult(node)
        result.skipped += list(phase.present.get(node.name, ()))
        return result

    return for_each(list(phase.nodes), one)


def _copy_from(source: Path) -> Callable[[IO[bytes]], None]:
    def write(out: IO[bytes]) -> None:
        with open(source, "rb") as f:
            shutil.copyfileobj(f, out, 1 << 20)

    return write


def _binaries_on(node: Node, binaries: List[Binary], bundle_dir: Path, opts: remote.SshOptions) -> NodeResult:
    """Install ``binaries`` on ``node``, each checked by SHA-256 there before it is renamed into place."""
    result = NodeResult(node)
    try:
        for binary in binaries:
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


# ---------------------------------------------------------------- cluster (rke up, on this node)


# rke's warning when it drops a node it could not reach (cluster/hosts.go).
_RKE_DROPPED = re.compile(r"Removing host \[([^\]]+)\] from node lists")


def rke_up(
    rke: Path,
    inventory: Path,
    workdir: Path,
    env: Dict[str, str],
    echo: Callable[[str], None],
    registries: Optional[List[Dict[str, object]]] = None,
    kubernetes_version: str = "",
    network_plugin: str = "",
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
    text = with_network_plugin(text, network_plugin)
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
        dropped: List[str] = []
        for line in proc.stdout:
            log.write(line)
            text = line.decode(errors="replace").rstrip("\n")
            echo("  | " + text)
            found = _RKE_DROPPED.search(text)
            if found:
                dropped.append(found.group(1))
        code = proc.wait()
    kubeconfig = workdir / "kube_config_cluster.yml"
    if code != 0:
        raise InstallError(f"cluster: rke up failed with exit code {code}; see {log_path}")
    if dropped:
        # rke leaves out a node it cannot tunnel to and still exits 0: a cluster short of nodes.
        raise InstallError(
            f"cluster: rke up left out {', '.join(dropped)} (it could not reach Docker there over SSH: "
            f"see 'Failed to set up SSH tunneling' in {log_path}); fix that node and run the install again"
        )
    if not kubeconfig.exists():
        raise InstallError(f"cluster: rke up wrote no {kubeconfig}; see {log_path}")
    return kubeconfig


# ---------------------------------------------------------------- packages


def _sums(lock: Lock) -> bytes:
    return "".join(f"{d.sha256}  {posixpath.basename(d.path)}\n" for d in lock.debs).encode()


def _debs_tar_size(lock: Lock, bundle_dir: Path) -> int:
    """About the bytes ``_debs_tar`` writes (a header block and the data in 512-byte blocks per
    member, the end blocks, tar's 10240-byte records): the total of the packages' bar."""
    sizes = [len(_sums(lock))] + [p.stat().st_size for p in (bundle_dir / "debs").iterdir()]
    size = sum(512 + -(-n // 512) * 512 for n in sizes) + 1024
    return -(-size // tarfile.RECORDSIZE) * tarfile.RECORDSIZE


class _Counting:
    """A writable that passes every write on and tells ``sent`` the bytes written so far."""

    def __init__(self, out: IO[bytes], sent: Callable[[int], None]) -> None:
        self.out, self.sent, self.written = out, sent, 0

    def write(self, data: bytes) -> int:
        self.out.write(data)
        self.written += len(data)
        self.sent(self.written)
        return len(data)


def _debs_tar(lock: Lock, bundle_dir: Path, out: IO[bytes]) -> None:
    """The bundle's flat apt repository plus a SHA256SUMS of its .debs, as a tar stream."""
    sums = _sums(lock)
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("SHA256SUMS")
        info.size = len(sums)
        tar.addfile(info, io.BytesIO(sums))
        for path in sorted((bundle_dir / "debs").iterdir()):
            tar.add(str(path), arcname=path.name, recursive=False)


def _docker_group(user: str) -> str:
    """Shell that puts ``user`` in the docker group once Docker's package has made it: rke talks to
    Docker as the inventory's SSH user, without sudo (RKE's requirements). Its next login has it."""
    q = shlex.quote
    return (
        f"if getent group docker >/dev/null && ! id -nG {q(user)} | tr ' ' '\\n' | grep -qx docker; "
        f"then usermod -aG docker {q(user)} && echo 'added {user} to the docker group'; fi"
    )


def _packages_script(
    repo: str,
    packages: List[str],
    root: Optional[str],
    recommends: bool = False,
    docker_user: Optional[str] = None,
) -> str:
    """Shell that installs ``packages`` with apt from ``repo`` only (its own source list and lists).

    Every requested package is named, so apt marks each as manually installed (a later
    ``apt-get autoremove`` keeps it); with ``recommends`` apt also installs the Recommends the
    bundle carries (the build resolved them as apt would). Then, for ``docker_user``, the docker
    group (not in a private root: its groups are the machine's)."""
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
        + (f"; {_docker_group(docker_user)}" if docker_user and not root else "")
    )


def _untar_into(node: Node, folder: str) -> str:
    """The remote command that makes ``folder`` and unpacks the tar stream it reads into it."""
    inner = f"mkdir -p {shlex.quote(folder)} && tar -x -C {shlex.quote(folder)}"
    return f"{sudo_prefix(node)}sh -c {shlex.quote(inner)}"


def _rpms_on(
    node: Node, lock: Lock, bundle_dir: Path, opts: remote.SshOptions, root: Optional[str]
) -> NodeResult:
    """The rpm route (Rocky/RHEL nodes): the bundle's rpm-md repository copied to the node and its
    roles' requests installed with dnf (or yum) from it alone (``rpmroute``)."""
    result = NodeResult(node)
    repo = f"/var/lib/airbundle/rpms/{lock.name}-{lock.version}"
    if root:
        repo = root + repo
    requested = rpm_requests(lock, node.roles)
    script = rpmroute.install_script(
        repo, requested, rpmroute.key_files(lock), root, lock.platform.get("codename", "")
    )
    try:
        remote.stream(
            node,
            opts,
            _untar_into(node, repo),
            lambda out: rpmroute.rpms_tar(lock, bundle_dir, out),
        )
        remote.run(node, opts, f"{sudo_prefix(node)}sh -c " + shlex.quote(script), timeout=3600)
        result.done = requested
    except InstallError as exc:
        result.error = str(exc)
    return result


def _packages_on(
    node: Node,
    lock: Lock,
    bundle_dir: Path,
    opts: remote.SshOptions,
    root_pattern: Optional[str],
    progress: Optional[Callable[[int, int], None]] = None,
) -> NodeResult:
    if lock.rpms:
        return _rpms_on(
            node, lock, bundle_dir, opts, root_pattern.replace("{node}", node.name) if root_pattern else None
        )
    result = NodeResult(node)
    repo = f"/var/lib/airbundle/debs/{lock.name}-{lock.version}"
    root = root_pattern.replace("{node}", node.name) if root_pattern else None
    if root:
        repo = root + repo
    requested = [f"{d.name}={d.version}" for d in lock.debs_for(node.roles)]  # its roles' too
    rke = any(b.name == "rke" for b in lock.binaries) and any(d.name == "docker-ce" for d in lock.debs)
    docker_user = node.user if rke and node.user != "root" else None
    total = _debs_tar_size(lock, bundle_dir)
    sent = [0]

    def tell(n: int) -> None:
        sent[0] = n
        if progress is not None:
            progress(min(n, total), total)

    try:
        remote.stream(
            node,
            opts,
            _untar_into(node, repo),
            lambda out: _debs_tar(lock, bundle_dir, _Counting(out, tell)),  # type: ignore[arg-type]
        )
        result.sent = sent[0]
        if progress is not None:
            progress(total, total)  # the bar ends at its total (the estimate may be a block off)
        remote.run(
            node,
            opts,
            f"{sudo_prefix(node)}sh -c "
            + shlex.quote(_packages_script(repo, requested, root, lock.recommends, docker_user)),
            timeout=3600,
        )
        result.done = requested
    except InstallError as exc:
        result.error = str(exc)
    return result


def packages_phase(
    lock: Lock,
    bundle_dir: Path,
    nodes: List[Node],
    opts: remote.SshOptions,
    root_pattern: Optional[str] = None,
    progress: Optional[Callable[[str, int, int], None]] = None,
) -> List[NodeResult]:
    """Install on every node the requested packages its roles need (``Lock.debs_for``) with apt,
    from the bundled repository only (which carries every role's closure); ``progress(node,
    sent, total)`` follows each node's copy of the repository."""

    def one(n: Node) -> NodeResult:
        tell = (lambda done, total: progress(n.name, done, total)) if progress else None
        return _packages_on(n, lock, bundle_dir, opts, root_pattern, tell)

    return for_each(nodes, one)


def _packages(ctx: Context, phase: PhasePlan) -> List[NodeResult]:
    todo = [n for n in phase.nodes if phase.of(n.name)]
    bar = lambda node, sent, total: ctx.progress("packages", node, sent, total)  # noqa: E731
    done = {
        r.node.name: r for r in packages_phase(ctx.lock, ctx.bundle_dir, todo, ctx.opts, ctx.apt_root, bar)
    }
    return [done.get(n.name) or NodeResult(n, skipped=["installed before"]) for n in phase.nodes]


# ---------------------------------------------------------------- cluster and steps (here)


def private_registry(route: Route) -> Dict[str, object]:
    """The RKE ``private_registries`` entry for the route's registry (the default for system images)."""
    entry: Dict[str, object] = {"url": route.address, "is_default": True}
    if route.user:
        entry.update(user=route.user, password=route.password)
    return entry


def _k0s_images(ctx: Context, phase: PhasePlan) -> List[NodeResult]:
    """k0s: the workers' images as one tar, copied into each one's ``DATADIR/images`` (``/var/lib/k0s``
    unless the k0sctl.yaml gives the host a dataDir; ``k0s.place_images``)."""
    todo = [n for n in phase.nodes if phase.of(n.name)]
    if not todo:
        return [NodeResult(n, skipped=["airgap images placed before"]) for n in phase.nodes]
    tar, sha = k0s.write_image_bundle(ctx.lock, ctx.bundle_dir, ctx.workdir / "k0s" / "airgap-images.tar")
    folders = {h.node.name: h.images_dir for h in k0sctl.load(ctx.inventory).hosts}

    def one(node: Node) -> NodeResult:
        result = NodeResult(node)
        try:
            said = k0s.place_images(node, ctx.opts, tar, sha, folders.get(node.name, k0simages.IMAGES_DIR))
            (result.done if said == "placed" else result.skipped).append("k0s-airgap")
        except InstallError as exc:
            result.error = str(exc)
        return result

    return for_each(todo, one)


def _cluster(ctx: Context, phase: PhasePlan) -> List[NodeResult]:
    """The bring-up of the lock's cluster kind (``BRINGUPS``), when the plan has it to do."""
    if not phase.actions:
        return []
    return BRINGUPS[cluster_kind(ctx.lock)](ctx, phase)


def _k0s_bringup(ctx: Context, phase: PhasePlan) -> List[NodeResult]:
    """k0s's bring-up (``installer/k0s.py``): the bundle's k0sctl apply, else k0s's own joins."""
    name = ctx.lock.cluster.get("k0sctl")
    tool = None
    if name:
        binary = next(b for b in ctx.lock.binaries if b.name == name)
        tool = archive.verified_copy(
            ctx.bundle_dir / binary.path, ctx.lock.member(binary.path), ctx.private / name
        )
    kubeconfig = k0s.bring_up(k0sctl.load(ctx.inventory), ctx.opts, ctx.workdir, ctx.echo, tool)
    ctx.echo(f"  kubeconfig: {kubeconfig}")
    return [NodeResult(HERE, done=["k0s-up"])]


def _rke_bringup(ctx: Context, phase: PhasePlan) -> List[NodeResult]:
    """rke's bring-up: its requirements checked again on every node, then ``rke up`` here."""
    rke = next(b for b in ctx.lock.binaries if b.name == "rke")
    registries = [private_registry(ctx.route)] if ctx.route.mode == "registry" else []
    tool = archive.verified_copy(ctx.bundle_dir / rke.path, ctx.lock.member(rke.path), ctx.private / "rke")
    version = ctx.lock.cluster.get("kubernetes_version", "")
    refused = _rke_ready(ctx, version)
    if refused:
        return refused
    plugin = ctx.lock.cluster.get("network_plugin", "")
    kubeconfig = rke_up(
        tool, ctx.inventory, ctx.workdir, dict(os.environ), ctx.echo, registries, version, plugin
    )
    ctx.echo(f"  kubeconfig: {kubeconfig}")
    return [NodeResult(HERE, done=["rke up"])]


def _rke_ready(ctx: Context, version: str) -> List[NodeResult]:
    """rke's requirements checked again on every node just before ``rke up``: Docker may have come
    from the bundle since the preflight (and its group with it). The failing nodes' results, with
    the fix; none when every node is ready."""
    cluster = load_cluster_options(ctx.inventory)
    if not cluster.kubernetes_version and version:
        cluster = replace(cluster, kubernetes_version=version)

    def check(node: Node) -> NodeResult:
        result = NodeResult(node)
        try:
            facts = parse_facts(remote.run(node, ctx.opts, RKE_PREFLIGHT_SCRIPT, timeout=60))
            problems, _ = rke_problems(node, facts, cluster, None)
            swap = swap_problem(facts)  # the preflight let it through for a before-cluster step
            result.error = "; ".join(problems + ([swap] if swap else []))
        except InstallError as exc:
            result.error = str(exc)
        return result

    results = for_each(load_inventory(ctx.inventory), check)
    return results if any(r.error for r in results) else []


def _steps(ctx: Context, phase: PhasePlan) -> List[NodeResult]:
    """The steps in order, each here or on its nodes; a step failing on a node stops the phase
    after that step (the other nodes finish it), one failing here stops it at once."""
    env = {**os.environ, **ctx.values.shared, "BUNDLE_DIR": str(ctx.bundle_dir)}
    kind = kinds.KINDS.get(cluster_kind(ctx.lock))
    kubeconfig = ctx.workdir / (
        kind.kubeconfig
        if kind
        else k0s.KUBECONFIG
        if cluster_kind(ctx.lock) == "k0s"
        else "kube_config_cluster.yml"
    )
    if kubeconfig.exists():
        env["KUBECONFIG"] = str(kubeconfig)
    logs = ctx.workdir / "logs"
    results: List[NodeResult] = []
    for step in ctx.lock.steps:
        todo = [a for a in phase.actions if a.item == step.name]
        if not todo:
            continue
        if step.on == "control":
            ran = run_steps(
                ctx.lock, ctx.bundle_dir, logs, env, ctx.journal, ctx.echo, ctx.private, [step.name]
            )
            results.append(NodeResult(HERE, done=ran, items=ran))
            continue
        nodes = [n for n in phase.nodes if any(a.node == n.name for a in todo)]
        done = run_on_nodes(step, nodes, ctx.lock, ctx.bundle_dir, logs, ctx.values, ctx.opts, ctx.echo)
        for result in done:
            if not result.error:
                _mark(ctx.journal, phase, result)  # now: a later step's failure must not lose it
        results += done
        if any(r.error for r in done):
            break  # the next step does not start
    return results


# A cluster kind's bring-up (``kinds.Kind``'s site half): it runs in the cluster phase, here or
# on the nodes, and leaves the kind's kubeconfig in the work folder. A new kind adds its entry.
def _kubeadm_bringup(ctx: Context, phase: PhasePlan) -> List[NodeResult]:
    """kubeadm's bring-up over SSH with the bundle's kubeadm at its dest on the nodes (kubeadmup),
    after keepalived + haproxy on the load balancers the plan names (lbsetup)."""
    results = _load_balancers(ctx, phase)
    if any(r.error for r in results) or not any(a.node == LOCAL for a in phase.actions):
        return results
    tool = next(b for b in ctx.lock.binaries if b.name == ctx.lock.cluster.get("tool"))
    results += kubeadmup.bring_up(
        load_inventory(ctx.inventory),
        load_endpoint(ctx.inventory),
        tool.dest,
        ctx.lock.cluster.get("kubernetes_version", ""),
        ctx.opts,
        ctx.workdir,
        ctx.echo,
        _sandbox_image(ctx.lock),
    )
    # the plan's one action (here) is done once every node is: the journal then skips it
    return results if any(r.error for r in results) else [*results, NodeResult(HERE, done=["kubeadm up"])]


def _sandbox_image(lock: Lock) -> str:
    """The bundle's pause image under the full name containerd holds it by (containerd's sandbox_image)."""
    pause = kinds.pause_image(s.ref for s in lock.system_images)
    return str(oci.parse_reference(pause)) if pause else ""


def _load_balancers(ctx: Context, phase: PhasePlan) -> List[NodeResult]:
    """keepalived + haproxy on the load balancers the plan has left to do (``lbsetup``): all of the
    inventory's, when any is left (each one's keepalived.conf knows its peers)."""
    if not any(a.item == LOAD_BALANCER for a in phase.actions):
        return []
    nodes = load_inventory(ctx.inventory)
    endpoint = load_endpoint(ctx.inventory)
    if endpoint is None:  # the plan has load-balancer actions only with a vip:
        raise InstallError(f"{ctx.inventory}: no vip: for the load balancers")
    todo = {a.node for a in phase.actions if a.item == LOAD_BALANCER}
    lbs = lbconfig.balancers(nodes)
    results = lbsetup.configure(
        lbs, lbconfig.control_planes(nodes), endpoint, f"{ctx.lock.name} {ctx.lock.version}",
        ctx.opts, ctx.workdir, ctx.echo,
    )  # fmt: skip
    # a load balancer the journal had done was configured again (unchanged: nothing restarted)
    return [r for r in results if r.node.name in todo or r.error]


BRINGUPS: Dict[str, Runner] = {"rke": _rke_bringup, "kubeadm": _kubeadm_bringup, "k0s": _k0s_bringup}

# One runner per phase, in the order of PHASES (the plan's builders follow the same order).
# ``prepare`` and ``steps`` are one runner: each runs the steps its slice of the plan holds.
RUNNERS: Dict[str, Runner] = dict(
    zip(PHASES, (_preflight, _packages, _binaries, _steps, _images, _cluster, _steps))
)
