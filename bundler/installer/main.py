"""The site installer's command line: ``sh install.sh`` and ``airbundle install`` both run this.

It runs on the isolated site with python3 3.6+ and the standard library only
(argparse, not click), importing just the site-safe core carried in the
bundle (errors, oci, lock, signing, archive). It parses the options (``options``),
verifies the bundle (signature, then every member), unpacks exactly the lock's members
into ``--workdir``, asks the nodes what they have and whether they pass the preflight
(``preflight.gather``), makes the plan (``plan.make_plan``) and applies it phase by
phase under the journal (``apply``). ``--dry-run`` does all of that but the unpacking
and the applying: it prints the plan and exits as the install would. It prints; the
modules below it only report through callbacks and raised errors.
"""

import hashlib
import json
import os
import re
import shutil
import stat
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

from bundler import archive, files, signing, trust
from bundler.errors import BundlerError, InputError, InstallError, IntegrityError, from_os_error
from bundler.installer import k0sctl, lbconfig, preflight, topology
from bundler.installer.apply import Context, apply
from bundler.installer.inventory import (
    Endpoint,
    Node,
    SiteValues,
    kube_name_problem,
    load_cluster_options,
    load_endpoint,
    load_values,
    nodes_line,
    vip_line,
    vip_problem,
    with_inventory,
)
from bundler.installer.journal import Journal
from bundler.installer.options import Options, images_route, parse
from bundler.installer.plan import (
    NodeFacts,
    PhasePlan,
    Plan,
    Route,
    brings_up_cluster,
    cluster_kind,
    describe,
    failure_message,
    journal_done,
    located_topology_problems,
    make_plan,
    node_images,
    render,
    step_problems,
    topology_findings,
    topology_problems,
    topology_rules,
    topology_warnings,
)
from bundler.installer.progress import Progress, human
from bundler.installer.remote import SshOptions
from bundler.installer.results import NodeResult
from bundler.lock import MAX_LOCK_BYTES, Lock
from bundler.text import printable

# install.sh passes the SHA-256 of the lock.json it checked (trust.SiteFacts.checked_lock)
CHECKED_LOCK_ENV = "AIRBUNDLE_CHECKED_LOCK"


def _read_keys(paths: List[Path]) -> List[signing.PublicKey]:
    keys = []
    for path in paths:
        text = files.read_capped(path, "public key", 1 << 20).decode("utf-8", "replace")
        keys += signing.parse_public_keys(text, str(path))
    return keys


def run(argv: Optional[List[str]] = None, prog: str = "install.sh") -> int:
    """Parse ``argv`` and install; returns the exit code (errors are printed, never raised)."""
    try:
        options = parse(argv, prog)
    except SystemExit as exc:  # argparse printed the help, the version or a usage error
        return exc.code if isinstance(exc.code, int) else 2
    out = Progress.for_streams(sys.stdout, sys.stderr, quiet=bool(options.quiet))
    try:
        check_workdir(options.workdir)
        trusted = _read_keys(options.pubkey)
        nodes = k0sctl.load_nodes(
            options.inventory
        )  # k0sctl.yaml or RKE cluster.yml, told apart by apiVersion
        values = load_values(options.values)  # checked now: a bad file stops the install before anything runs
        unknown = sorted(set(values.nodes) - {n.name for n in nodes} - {n.address for n in nodes})
        if unknown:
            raise InputError(
                f"{options.values}: nodes: {', '.join(unknown)} is not a node of {options.inventory} "
                f"(nodes: {', '.join(n.name for n in nodes)})"
            )
        if options.dry_run:
            return _dry_run(options, trusted, nodes)
        with Journal(options.workdir) as journal:
            return _install(options, trusted, nodes, values, journal, out)
    except KeyboardInterrupt:
        # Ctrl-C: the journal holds every action that finished (each recorded as it did, atomically),
        # so the same command continues; no traceback, the shell's code for SIGINT.
        out.close()
        print(
            "airbundle install: interrupted; what finished is in the journal: run the same command "
            f"again to continue (logs: {options.workdir / 'logs'})",
            file=sys.stderr,
        )
        return 130
    except BrokenPipeError:
        return _output_closed()
    except OSError as exc:  # the machine, not the bundle: disk full, permissions, a folder in the way
        error = from_os_error(exc, "installing", InstallError)
        print(f"airbundle install: error: {printable(str(error))}", file=sys.stderr)
        return error.exit_code
    except BundlerError as exc:
        print(f"airbundle install: error: {printable(str(exc))}", file=sys.stderr)
        return exc.exit_code


def _output_closed() -> int:
    """The reader of our output went away (``| head``, quitting ``less``): stop as a shell tool
    does on SIGPIPE, quietly, with its exit code; what finished is in the journal."""
    try:  # Python would otherwise complain at exit, flushing into the closed pipe
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except OSError:
        pass
    return 141


def _check_fit(
    options: Options, state: Dict[str, Any], lock: Lock, lock_sha256: str, nodes: List[Node]
) -> None:
    """Refuse (exit 2) steps naming nodes the inventory lacks, and a ``--resume`` with nothing to
    continue (it continues an unfinished install of this very bundle only)."""
    for node in nodes if cluster_kind(lock) else []:  # a cluster the bundle brings up names its nodes
        problem = kube_name_problem(options.inventory, node)
        if problem:
            raise InputError(problem)
    problems = step_problems(lock, nodes)
    if problems:
        raise InputError(f"{options.inventory}: {problems[0]}")
    kind, is_k0sctl = lock.cluster.get("kind", ""), k0sctl.is_k0sctl(options.inventory)
    if is_k0sctl and kind != "k0s":
        raise InputError(
            f"{options.inventory}: a k0sctl.yaml, but {lock.name} {lock.version} brings up "
            f"{kind or 'no cluster of its own'}; give its inventory (an RKE cluster.yml)"
        )
    if kind == "k0s" and not is_k0sctl:
        raise InputError(
            f"{options.inventory}: {lock.name} {lock.version} brings up a k0s cluster: give the cluster's "
            f"k0sctl.yaml (apiVersion: {k0sctl.API_VERSION}, kind: Cluster, spec.hosts)"
        )
    if kind == "k0s":
        problem = k0sctl.load(options.inventory).version_problem(lock.cluster.get("kubernetes_version", ""))
        if problem:
            raise InputError(problem)
    if cluster_kind(lock) == "kubeadm":
        endpoint = load_endpoint(options.inventory)
        problem = vip_problem(options.inventory, nodes, endpoint)
        if problem:
            raise InputError(problem)
        problem = lbconfig.address_problem(nodes, endpoint)
        if problem:  # a node's own address, no unicast address, or a port a node's service holds
            raise InputError(f"{options.inventory}:{vip_line(options.inventory)}: {problem}")
    if not options.resume:
        return
    entry = state["installed"].get(lock.name)
    if not isinstance(entry, dict) or entry.get("lock_sha256") != lock_sha256:
        was = f"{lock.name} {entry.get('version')}" if isinstance(entry, dict) else "nothing of it"
        raise InputError(
            f"--resume: the journal in {options.workdir} holds no unfinished install of "
            f"{lock.name} {lock.version} (it holds {was}); leave --resume out to install it afresh"
        )


def _facts(
    options: Options, lock: Lock, nodes: List[Node], route: Route, opts: SshOptions
) -> Dict[str, NodeFacts]:
    """What the nodes say, for the phases to run (``preflight.gather``)."""
    rke = any(b.name == "rke" for b in lock.binaries)
    cluster = load_cluster_options(options.inventory) if rke and "preflight" in options.phases else None
    data_dirs = None
    if lock.cluster.get("kind") == "k0s":  # where each host's k0s keeps its data (dataDir)
        data_dirs = {h.node.name: h.data_dir for h in k0sctl.load(options.inventory).hosts}
    return preflight.gather(
        lock,
        nodes,
        node_images(lock, nodes),
        opts,
        time.time(),
        route,
        cluster,
        options.phases,
        options.apt_root,
        data_dirs,
    )


def _confirm_topology(options: Options, problems: List[str], out: Progress) -> None:
    """Let an install with topology problems go on only when the operator says so: ``--yes``, or
    "y" typed on a terminal; anything else stops it (exit 6) before anything is unpacked."""
    if not problems:
        return
    listing = "".join(f"\n  - {p}" for p in problems)
    if options.yes:
        out.line(f"warning: {options.inventory}: installing anyway (--yes):{listing}", err=True, always=True)
        return
    refusal = (
        f"{options.inventory}: the inventory's topology has problems:{listing}\n"
        "fix the inventory, or pass --yes to install anyway"
    )
    if sys.stdin.isatty() and sys.stderr.isatty():
        out.line(refusal.split("\nfix")[0], err=True, always=True)
        try:
            answer = input("install anyway? [y/N] ")
        except EOFError:
            answer = ""
        if answer.strip().lower() in ("y", "yes"):
            return
    raise InstallError(refusal)


def _install(
    options: Options,
    trusted: List[signing.PublicKey],
    nodes: List[Node],
    values: SiteValues,
    journal: Journal,
    out: Progress,
) -> int:
    # One open, one read of the head, one decision, one read of every member: the bytes the
    # decision was made on are the bytes unpacked (a file swapped in meanwhile is never read).
    with archive.Bundle(options.bundle, trusted) as bundle:
        decision = bundle.decide(_site_facts(options, trusted, journal.state))
        lock = decision.lock
        _check_fit(options, journal.state, lock, decision.lock_sha256, nodes)
        route = images_route(options, lock, nodes)  # a bad choice stops before anything is unpacked
        if options.only != "preflight":  # the preflight alone changes nothing: no need to confirm
            _confirm_topology(options, _located_problems(options, lock, nodes), out)
        base = options.workdir / decision.base_folder if decision.base_folder else None
        _remove_stale_staging(options.workdir, f"{lock.name}-{lock.version}")
        total = sum(m.size for m in lock.members)
        started = time.monotonic()
        count = out.counter("verify+unpack", total)
        final, report = bundle.extract(decision, options.workdir, count, base)
        out.finish("verify+unpack")
    installed = decision.installed
    if journal.is_complete(lock.name, decision.lock_sha256) and not options.only:
        out.line(
            f"{lock.name} {lock.version} is already installed (verified again); nothing to do "
            "(the journal records this install as complete)"
        )
        return 0
    before = Journal.status(journal.state, lock.name)
    # A preflight-only run installs nothing: the journal does not record it as an install.
    if options.only != "preflight":
        journal.begin(lock.name, lock.version, decision.lock_sha256)
    out.line(
        f"{lock.name} {lock.version}: verified (signed by {report.signer.fingerprint}) and unpacked "
        f"to {final} ({human(total)} in {time.monotonic() - started:.0f} s)"
        + (f"; installed before: {before}" if installed and before != "nothing" else "")
    )
    for warning in _warnings_left(
        nodes, lock, topology_problems(lock, nodes, options.demo, _vip(options, lock)), options.demo
    ):
        out.line(f"warning: {warning}", err=True, always=True)
    opts = SshOptions(options.ssh_config)
    facts = _facts(options, lock, nodes, route, opts)
    plan = make_plan(lock, nodes, route, journal_done(journal.state, lock.name, decision.lock_sha256),
                     facts, options.phases, _endpoint(options, lock))  # fmt: skip
    # What runs here (rke, the steps) runs from copies checked against the lock as they are made,
    # in a folder only this process can write: the unpacked folder is not read again to run it.
    private = Path(tempfile.mkdtemp(prefix="airbundle-run-"))
    logs = options.workdir / "logs"

    def bar(phase: str, node: str, done: int, total: int, note: str = "") -> None:
        if total and done >= total:  # done: off the status line (the node's report line follows)
            out.finish(f"{phase} {node}")
        else:
            out.update(f"{phase} {node}", done, total, note)

    try:
        site = with_inventory(values, nodes)
        context = Context(lock, final, opts, route, options.workdir, options.inventory, site, journal,
                          private, out.line, options.apt_root, bar)  # fmt: skip
        apply(plan, context, lambda phase, results: _report(phase, results, out, logs, options.verbose))
    except InstallError as exc:
        out.close()
        if options.only != "preflight":
            journal.stopped(lock.name, "failed", str(exc).splitlines()[0])
        out.line(f"logs: {logs}", err=True, always=True)
        raise
    except KeyboardInterrupt:
        if options.only != "preflight":
            journal.stopped(lock.name, "interrupted", "Ctrl-C")
        raise
    finally:
        shutil.rmtree(private, ignore_errors=True)
    if options.only == "preflight":
        out.line(f"preflight passed on every node; nothing was installed (logs: {logs})")
    elif not options.only:
        journal.complete(lock.name)
        out.line(f"{lock.name} {lock.version} is installed, complete (logs: {logs})")
    else:
        out.line(f"phase {options.only} done (logs: {logs})")
    return 0


def _remove_stale_staging(workdir: Path, folder: str) -> None:
    """Remove the private folders a killed unpack of ``folder`` left (``.NAME-VERSION.*``); the
    journal's lock is held, so no other installer is unpacking there now."""
    if not workdir.is_dir():
        return
    for entry in workdir.iterdir():
        if entry.name.startswith(f".{folder}.") and entry.is_dir() and not entry.is_symlink():
            print(f"removing {entry}, left by an interrupted unpack")
            shutil.rmtree(entry, ignore_errors=True)


def check_workdir(workdir: Path) -> None:
    """Refuse a work folder others could write into (exit 2), as ssh's StrictModes does.

    Whoever can write it could replace the verified files between the unpack and their use,
    or the journal. Every existing folder from it up to ``/`` must belong to root or to this
    user and not be writable by group or others, unless sticky (like /tmp).
    """
    if workdir.exists() and not workdir.is_dir():
        raise InputError(f"--workdir {workdir}: not a folder; give a folder (it is made if missing)")
    me = os.geteuid()
    for folder in [workdir.absolute(), *workdir.absolute().parents]:
        try:
            st = folder.stat()
        except FileNotFoundError:
            continue
        if st.st_uid not in (0, me):
            raise InputError(
                f"--workdir {workdir}: {folder} belongs to uid {st.st_uid}, who could replace what the "
                "installer verified; use a folder that belongs to root"
            )
        if st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX:
            raise InputError(
                f"--workdir {workdir}: {folder} is writable by group or others (mode "
                f"{stat.S_IMODE(st.st_mode):04o}), who could replace what the installer verified; "
                f"chmod go-w {folder}, or use another folder"
            )


def _site_facts(args: Options, trusted: List[signing.PublicKey], state: Dict[str, Any]) -> trust.SiteFacts:
    """What this site knows for the trust decision: keys, clock, the journal, the unpacked bundles.

    ``unpacked`` maps each ``NAME-VERSION`` folder of an installed name to the SHA-256 of its
    ``lock.json``, so that a delta's base is checked by the decision itself.
    """
    installed = {str(n): e.get("version") for n, e in state["installed"].items() if isinstance(e, dict)}
    unpacked = {}
    if args.workdir.is_dir():
        for folder in args.workdir.iterdir():
            if not any(folder.name.startswith(f"{name}-") for name in installed):
                continue
            lock_file = folder / "lock.json"
            if folder.is_dir() and not folder.is_symlink() and lock_file.is_file():
                try:
                    data = files.read_capped(lock_file, "installed lock", MAX_LOCK_BYTES, InstallError)
                except InstallError:
                    continue  # not an intact unpacked bundle: it cannot be any delta's base
                unpacked[folder.name] = hashlib.sha256(data).hexdigest()
    return trust.SiteFacts(
        tuple(trusted),
        time.time(),
        allow_expired=args.allow_expired,
        installing=True,
        installed=installed,
        installed_locks={
            str(n): str(e.get("lock_sha256"))
            for n, e in state["installed"].items()
            if isinstance(e, dict) and e.get("lock_sha256")
        },
        allow_downgrade=args.allow_downgrade,
        unpacked=unpacked,
        checked_lock=os.environ.get(CHECKED_LOCK_ENV) or None,
    )


def _report(phase: PhasePlan, results: List[NodeResult], out: Progress, logs: Path, verbose: int = 0) -> None:
    """One line per node, also kept in ``logs/PHASE/NODE.log``; raises ``InstallError`` naming the
    failed nodes (and the phase's refusals)."""
    for r in results:
        out.finish(f"{phase.name} {r.node.name}")
        lines = []
        if r.error:
            lines.append(f"FAILED: {r.error}")
        elif phase.name == "images":
            sent = f", {r.sent} bytes sent" if r.sent else ""
            lines.append(f"ok: {len(r.done)} {r.verb}, {len(r.skipped)} already present{sent}")
        elif phase.name == "packages" and r.sent:
            lines.append(f"ok: {', '.join(r.done) or 'nothing to do'} ({human(r.sent)} of packages sent)")
        else:
            notes = "; ".join(r.skipped)
            note = f" (note: {notes})" if notes else ""
            lines.append(f"ok: {', '.join(r.done) or 'nothing to do'}{note}")
        lines += [f"warning: {w}" for w in r.warnings]
        log = _node_log(logs, phase.name, r.node.name, lines)
        for line in lines:
            out.line(f"  {r.node.name:<20} {line}", always=bool(r.error))
        if verbose:
            out.line(f"  {r.node.name:<20} log: {log}")
    message = failure_message(phase.name, [r.node.name for r in results if r.error], phase.refusals)
    if message:
        raise InstallError(message)


def _endpoint(options: Options, lock: Lock) -> Optional[Endpoint]:
    """The inventory's ``vip:`` for a kubeadm bundle (its load balancers carry it); None otherwise."""
    return load_endpoint(options.inventory) if cluster_kind(lock) == "kubeadm" else None


def _vip(options: Options, lock: Lock) -> str:
    """The inventory's control-plane endpoint address for a kubeadm bundle ("" otherwise)."""
    if cluster_kind(lock) != "kubeadm":
        return ""
    endpoint = load_endpoint(options.inventory)
    return endpoint.address if endpoint else ""


def _located_problems(options: Options, lock: Lock, nodes: List[Node]) -> List[str]:
    """The topology problems with the inventory's ``FILE:LINE`` (the node's at fault, or the list's)."""
    return located_topology_problems(
        lock, nodes, str(options.inventory), nodes_line(options.inventory), options.demo, _vip(options, lock)
    )


def _warnings_left(nodes: List[Node], lock: Lock, problems: List[str], demo: bool = False) -> List[str]:
    """The topology warnings that no problem already names (the same subject before its ":"): the
    rke-era warnings, then the kind's own (a --demo install's shared roles)."""
    subjects = {p.split(":")[0] for p in problems}
    rke = topology_rules(lock).kind in ("rke", "")  # the older warnings speak rke's roles
    old = topology_warnings(nodes, lock.min_workers) if rke else []
    out = [w for w in old if w.split(":")[0] not in subjects]
    extra = topology.warnings(topology_findings(lock, nodes, demo))
    return out + [w for w in extra if w.split(":")[0] not in {o.split(":")[0] for o in out}]


def _node_log(logs: Path, phase: str, node: str, lines: List[str]) -> Path:
    """Append a phase's lines for ``node`` to ``logs/PHASE/NODE.log`` (kept across runs, stamped)."""
    folder = logs / phase
    folder.mkdir(parents=True, exist_ok=True)
    # The name comes from the inventory: a path (../../etc/x) or control bytes must not leave logs/.
    path = folder / ((re.sub(r"[^A-Za-z0-9._-]", "_", node).lstrip(".") or "_") + ".log")
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    with open(path, "a") as f:
        f.writelines(f"{stamp} {line}\n" for line in lines)
    return path


def _dry_run(options: Options, trusted: List[signing.PublicKey], nodes: List[Node]) -> int:
    """Verify, gather the nodes' facts (unless ``--offline``), print the plan; change nothing.

    Exits as the install would: 3 or 4 for the bundle, 6 when the preflight would stop it."""
    state = Journal.read(options.workdir)
    with archive.Bundle(options.bundle, trusted) as bundle:
        decision = bundle.decide(_site_facts(options, trusted, state))
        report = bundle.verify(decision)
    if report.problems:
        first = report.problems[0]
        raise IntegrityError(f"{options.bundle}: {first}", member=first.member)
    lock = report.lock
    _check_fit(options, state, lock, decision.lock_sha256, nodes)
    route = images_route(options, lock, nodes)
    out = sys.stderr if options.json else sys.stdout  # --json: stdout is the plan alone
    print(
        f"{lock.name} {lock.version}: signature by {report.signer.fingerprint} and "
        f"{len(lock.members)} members verified; installed now: {Journal.status(state, lock.name)}",
        file=out,
    )
    print("nodes: " + ", ".join(f"{n.name} ({'/'.join(n.roles)})" for n in nodes), file=out)
    problems = (
        topology_problems(lock, nodes, options.demo, _vip(options, lock))
        if options.only != "preflight"
        else []
    )
    for problem in _located_problems(options, lock, nodes) if problems else []:
        anyway = " (--yes: installing anyway)" if options.yes else ""
        print(f"problem: {problem}{anyway}", file=out)
    for warning in _warnings_left(nodes, lock, problems, options.demo):
        print(f"warning: {warning}", file=out)
    if brings_up_cluster(lock):
        kind = topology_rules(lock).kind
        voters = sum(
            1 for n in nodes if topology.QUORUM_ROLE.get(kind, "etcd") in topology.roles_of(kind, n.roles)
        )
        print(topology.quorum_summary(kind, voters), file=out)
    print("the plan:", file=out)
    print("\n".join("  " + line for line in describe(lock, nodes, route)), file=out)
    if Journal.completed(state, lock.name, decision.lock_sha256) and not options.only:
        print(f"{lock.name} {lock.version} is already installed; nothing to do", file=out)
        plan = Plan(lock.name, lock.version, (), options.offline)
    else:
        facts = (
            None if options.offline else _facts(options, lock, nodes, route, SshOptions(options.ssh_config))
        )
        plan = make_plan(lock, nodes, route, journal_done(state, lock.name, decision.lock_sha256), facts,
                         options.phases, _endpoint(options, lock))  # fmt: skip
        where = "the journal only; no node contacted (--offline)" if plan.offline else "what the nodes said"
        print(f"to do ({len(plan.actions)} actions, from {where}):", file=out)
        print("\n".join("  " + line for line in render(plan)), file=out)
    if options.json:
        print(json.dumps(plan.as_dict(), indent=1))
    refusal = plan.refusal()
    if refusal:
        print(f"airbundle install: error: {refusal}", file=sys.stderr)
    if problems and not options.yes:
        print(
            f"airbundle install: error: the install would stop: {options.inventory}: the inventory's "
            f"topology has problems: {'; '.join(problems)}; fix the inventory, or pass --yes to install "
            "anyway",
            file=sys.stderr,
        )
    return InstallError.exit_code if refusal or (problems and not options.yes) else 0


def main() -> None:
    # Line-buffered: the report interleaves with warnings on stderr in the order they happen.
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(line_buffering=True)
    sys.exit(run())
