"""The site installer's command line: ``sh install.sh`` and ``airbundle install`` both run this.

It runs on the isolated site with python3 3.7+ and the standard library only
(argparse, not click), importing just the site-safe core carried in the
bundle (errors, oci, lock, signing, archive). It parses the options (``options``),
verifies the bundle (signature, then every member), unpacks exactly the lock's members
into ``--workdir``, asks the nodes what they have and whether they pass the preflight
(``preflight.gather``), makes the plan (``plan.make_plan``) and applies it phase by
phase under the journal (``apply``). ``--dry-run`` does all of that but the unpacking
and the applying: it prints the plan and exits as the install would. It prints; the
modules below it only report through callbacks and raised errors.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bundler import archive, files, signing, trust
from bundler.errors import BundlerError, InputError, InstallError, IntegrityError, from_os_error
from bundler.installer import preflight
from bundler.installer.apply import Context, apply
from bundler.installer.inventory import (
    Node,
    SiteValues,
    load_cluster_options,
    load_inventory,
    load_values,
    with_inventory,
)
from bundler.installer.journal import Journal
from bundler.installer.options import Options, images_route, parse
from bundler.installer.plan import (
    NodeFacts,
    PhasePlan,
    Plan,
    Route,
    describe,
    failure_message,
    journal_done,
    make_plan,
    node_images,
    render,
    step_problems,
    topology_warnings,
)
from bundler.installer.remote import SshOptions
from bundler.installer.results import NodeResult
from bundler.lock import MAX_LOCK_BYTES, Lock


def _read_keys(paths: list[Path]) -> list[signing.PublicKey]:
    keys = []
    for path in paths:
        text = files.read_capped(path, "public key", 1 << 20).decode("utf-8", "replace")
        keys += signing.parse_public_keys(text, str(path))
    return keys


def run(argv: list[str] | None = None, prog: str = "install.sh") -> int:
    """Parse ``argv`` and install; returns the exit code (errors are printed, never raised)."""
    try:
        options = parse(argv, prog)
    except SystemExit as exc:  # argparse printed the help, the version or a usage error
        return exc.code if isinstance(exc.code, int) else 2
    try:
        check_workdir(options.workdir)
        trusted = _read_keys(options.pubkey)
        nodes = load_inventory(options.inventory)
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
            return _install(options, trusted, nodes, values, journal)
    except OSError as exc:  # the machine, not the bundle: disk full, permissions, a folder in the way
        error = from_os_error(exc, "installing", InstallError)
        print(f"airbundle install: error: {error}", file=sys.stderr)
        return error.exit_code
    except BundlerError as exc:
        print(f"airbundle install: error: {exc}", file=sys.stderr)
        return exc.exit_code


def _check_fit(
    options: Options, state: dict[str, Any], lock: Lock, lock_sha256: str, nodes: list[Node]
) -> None:
    """Refuse (exit 2) steps naming nodes the inventory lacks, and a ``--resume`` with nothing to
    continue (it continues an unfinished install of this very bundle only)."""
    problems = step_problems(lock, nodes)
    if problems:
        raise InputError(f"{options.inventory}: {problems[0]}")
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
    options: Options, lock: Lock, nodes: list[Node], route: Route, opts: SshOptions
) -> dict[str, NodeFacts]:
    """What the nodes say, for the phases to run (``preflight.gather``)."""
    rke = any(b.name == "rke" for b in lock.binaries)
    cluster = load_cluster_options(options.inventory) if rke and "preflight" in options.phases else None
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
    )


def _install(
    options: Options,
    trusted: list[signing.PublicKey],
    nodes: list[Node],
    values: SiteValues,
    journal: Journal,
) -> int:
    # One open, one read of the head, one decision, one read of every member: the bytes the
    # decision was made on are the bytes unpacked (a file swapped in meanwhile is never read).
    with archive.Bundle(options.bundle, trusted) as bundle:
        decision = bundle.decide(_site_facts(options, trusted, journal.state))
        lock = decision.lock
        _check_fit(options, journal.state, lock, decision.lock_sha256, nodes)
        route = images_route(options, lock, nodes)  # a bad choice stops before anything is unpacked
        base = options.workdir / decision.base_folder if decision.base_folder else None
        _remove_stale_staging(options.workdir, f"{lock.name}-{lock.version}")
        final, report = bundle.extract(decision, options.workdir, inherit_from=base)
    installed = decision.installed
    if journal.is_complete(lock.name, decision.lock_sha256) and not options.only:
        print(f"{lock.name} {lock.version} is already installed (verified again); nothing to do")
        return 0
    journal.begin(lock.name, lock.version, decision.lock_sha256)
    print(
        f"{lock.name} {lock.version}: verified (signed by {report.signer.fingerprint}), unpacked to {final}"
        + (f"; {installed} was installed before" if installed and installed != lock.version else "")
    )
    for warning in topology_warnings(nodes, lock.min_workers):
        print(f"warning: {warning}", file=sys.stderr)
    opts = SshOptions(options.ssh_config)
    facts = _facts(options, lock, nodes, route, opts)
    plan = make_plan(lock, nodes, route, journal_done(journal.state, lock.name, decision.lock_sha256),
                     facts, options.phases)  # fmt: skip
    # What runs here (rke, the steps) runs from copies checked against the lock as they are made,
    # in a folder only this process can write: the unpacked folder is not read again to run it.
    private = Path(tempfile.mkdtemp(prefix="airbundle-run-"))
    try:
        site = with_inventory(values, nodes)
        context = Context(lock, final, opts, route, options.workdir, options.inventory, site, journal,
                          private, print, options.apt_root)  # fmt: skip
        apply(plan, context, _report)
    finally:
        shutil.rmtree(private, ignore_errors=True)
    if not options.only:
        journal.complete(lock.name)
        print(f"{lock.name} {lock.version} is installed")
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


def _site_facts(args: Options, trusted: list[signing.PublicKey], state: dict[str, Any]) -> trust.SiteFacts:
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
    )


def _report(phase: PhasePlan, results: list[NodeResult]) -> None:
    """One line per node; raises ``InstallError`` naming the failed nodes (and the phase's refusals)."""
    for r in results:
        if r.error:
            print(f"  {r.node.name:<20} FAILED: {r.error}")
        elif phase.name == "images":
            sent = f", {r.sent} bytes sent" if r.sent else ""
            print(f"  {r.node.name:<20} ok: {len(r.done)} {r.verb}, {len(r.skipped)} already present{sent}")
        else:
            notes = "; ".join(r.skipped)
            print(
                f"  {r.node.name:<20} ok: {', '.join(r.done) or 'nothing to do'}"
                + (f" (note: {notes})" if notes else "")
            )
        for warning in r.warnings:
            print(f"  {r.node.name:<20} warning: {warning}")
    message = failure_message(phase.name, [r.node.name for r in results if r.error], phase.refusals)
    if message:
        raise InstallError(message)


def _dry_run(options: Options, trusted: list[signing.PublicKey], nodes: list[Node]) -> int:
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
    installed = decision.installed
    print(
        f"{lock.name} {lock.version}: signature by {report.signer.fingerprint} and "
        f"{len(lock.members)} members verified; installed now: {installed or 'nothing'}",
        file=out,
    )
    print("nodes: " + ", ".join(f"{n.name} ({'/'.join(n.roles)})" for n in nodes), file=out)
    for warning in topology_warnings(nodes, lock.min_workers):
        print(f"warning: {warning}", file=out)
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
                         options.phases)  # fmt: skip
        where = "the journal only; no node contacted (--offline)" if plan.offline else "what the nodes said"
        print(f"to do ({len(plan.actions)} actions, from {where}):", file=out)
        print("\n".join("  " + line for line in render(plan)), file=out)
    if options.json:
        print(json.dumps(plan.as_dict(), indent=1))
    refusal = plan.refusal()
    if refusal:
        print(f"airbundle install: error: {refusal}", file=sys.stderr)
        return InstallError.exit_code
    return 0


def main() -> None:
    # Line-buffered: the report interleaves with warnings on stderr in the order they happen.
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(line_buffering=True)
    sys.exit(run())
