"""The site installer's command line: ``sh install.sh`` and ``airbundle install`` both run this.

It runs on the isolated site with python3 3.7+ and the standard library only
(argparse, not click), importing just the site-safe core carried in the
bundle (errors, oci, lock, signing, archive). It verifies the bundle
(signature, then every member), unpacks exactly the lock's members into
``--workdir``, then runs the phases in order under the journal: preflight,
packages (apt from the bundled repository only), binaries, images, cluster
(``rke up`` with the bundle's rke), steps.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import stat
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bundler import __version__, archive, files, oci, signing, trust
from bundler.errors import BundlerError, InputError, InstallError, IntegrityError, from_os_error
from bundler.installer import siteregistry
from bundler.installer.apply import (
    NodeResult,
    binaries_phase,
    images_phase,
    packages_phase,
    preflight_phase,
    rke_up,
    run_steps,
)
from bundler.installer.inventory import Node, load_cluster_options, load_inventory, load_values
from bundler.installer.journal import Journal
from bundler.installer.plan import PHASES, Route, describe, node_images, topology_warnings
from bundler.installer.remote import SshOptions
from bundler.lock import IMAGES_MODES, MAX_LOCK_BYTES, REGISTRY_RE, Lock

DEFAULT_WORKDIR = "/var/lib/airbundle"
DEFAULT_REGISTRY_DATA = siteregistry.DEFAULT_DATA
EPILOG = """examples (install.sh as the README's first command runs it, after stock tools checked it):
  sh install.sh --bundle fmp-rke-23.12.1.tar --pubkey allowed_signers --inventory cluster.yml --dry-run
  sh install.sh --bundle fmp-rke-23.12.1.tar --pubkey allowed_signers --inventory cluster.yml \\
      --values site.yaml

  # images through a registry the installer runs on node cp-1 (TLS from a CA it makes):
  sh install.sh --pubkey allowed_signers --inventory cluster.yml --registry-node cp-1
  # ... or through the site's own registry, with its CA and credentials:
  AIRBUNDLE_REGISTRY_PASSWORD=... sh install.sh --pubkey allowed_signers --inventory cluster.yml \\
      --registry 10.0.0.5:5000 --registry-ca site-ca.crt --registry-user pusher

Never run an install.sh taken out of a bundle unchecked: the README's first command checks it
(and the installer) with tar, ssh-keygen and sha256sum before it runs.
"""
PASSWORD_ENV = "AIRBUNDLE_REGISTRY_PASSWORD"  # noqa: S105 - the name of a variable, not a password


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="install.sh",
        # No abbreviations: install.sh finds --bundle and --pubkey by their full names, so an
        # abbreviation (--bund) would name a bundle or key here that install.sh never checked.
        allow_abbrev=False,
        description="Verify an airbundle bundle and install it on the site's nodes.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--bundle", required=True, type=Path, help="the bundle .tar (install.sh finds it)")
    p.add_argument(
        "--pubkey",
        required=True,
        type=Path,
        action="append",
        help="the publisher's public key (.pub or allowed_signers); repeatable",
    )
    p.add_argument("--allow-expired", action="store_true", help="accept a bundle past its signed expiry")
    p.add_argument("--inventory", required=True, type=Path, help="RKE cluster.yml naming the nodes")
    p.add_argument("--values", type=Path, help="site variables (YAML) for the staged steps")
    p.add_argument(
        "--workdir", type=Path, default=Path(DEFAULT_WORKDIR), help=f"where to unpack [{DEFAULT_WORKDIR}]"
    )
    p.add_argument("--dry-run", action="store_true", help="verify and show the plan; change nothing")
    p.add_argument("--resume", action="store_true", help="continue a previous install")
    p.add_argument("--only", choices=PHASES, help="run one phase")
    p.add_argument("--allow-downgrade", action="store_true", help="install over a newer installed version")
    p.add_argument("--ssh-config", type=Path, help="ssh_config for reaching the nodes [~/.ssh/config]")
    p.add_argument(
        "--images-mode",
        choices=IMAGES_MODES,
        help="how images reach the nodes: streamed to each over SSH, or pushed once to a "
        "site registry the nodes pull from [the manifest's install.images_mode, else ssh-load]",
    )
    reg = p.add_argument_group("images through a site registry (--images-mode registry)")
    reg.add_argument(
        "--registry",
        metavar="HOST:PORT",
        help="an existing site registry [the manifest's install.registry]",
    )
    reg.add_argument(
        "--registry-node",
        metavar="NAME",
        help="run the registry on this inventory node, from the bundle's install.registry_image",
    )
    reg.add_argument("--registry-port", type=int, default=5000, help="its port, with --registry-node [5000]")
    reg.add_argument(
        "--registry-data",
        metavar="DIR",
        default=DEFAULT_REGISTRY_DATA,
        help=f"its data folder on that node [{DEFAULT_REGISTRY_DATA}]",
    )
    reg.add_argument(
        "--registry-ca",
        type=Path,
        metavar="FILE",
        help="the CA the registry's certificate chains to: trusted for the push and written to "
        "/etc/docker/certs.d/HOST:PORT/ca.crt on every node",
    )
    reg.add_argument(
        "--registry-cert",
        type=Path,
        metavar="FILE",
        help="a site certificate for the registry --registry-node runs (with --registry-key); "
        "else the installer makes a site CA with openssl, kept in WORKDIR/registry-tls",
    )
    reg.add_argument("--registry-key", type=Path, metavar="FILE", help="the key of --registry-cert")
    reg.add_argument(
        "--registry-user",
        metavar="USER",
        help=f"log in to the registry as USER (push and the nodes' pulls); password from {PASSWORD_ENV}",
    )
    reg.add_argument(
        "--registry-chunk",
        metavar="SIZE",
        help="upload blobs larger than SIZE (e.g. 64M) in chunks, for registries behind proxies "
        "that cap request bodies [one request per blob]",
    )
    p.add_argument(
        "--apt-root",
        metavar="DIR",
        help="install packages under DIR ({node} = node name) instead "
        "of the nodes' own systems (tests, image builds)",
    )
    p.add_argument("--version", action="version", version=f"airbundle installer {__version__}")
    return p


def _read_keys(paths: list[Path]) -> list[signing.PublicKey]:
    keys = []
    for path in paths:
        text = files.read_capped(path, "public key", 1 << 20).decode("utf-8", "replace")
        keys += signing.parse_public_keys(text, str(path))
    return keys


def run(argv: list[str] | None = None) -> int:
    """Parse ``argv`` and install; returns the exit code (errors are printed, never raised)."""
    args = parser().parse_args(argv)
    try:
        check_workdir(args.workdir)
        trusted = _read_keys(args.pubkey)
        nodes = load_inventory(args.inventory)
        values = load_values(args.values)  # checked now: a bad file stops the install before anything runs
        if args.dry_run:
            return _dry_run(args, trusted, nodes)
        with Journal(args.workdir) as journal:
            return _install(args, trusted, nodes, values, journal)
    except OSError as exc:  # the machine, not the bundle: disk full, permissions, a folder in the way
        error = from_os_error(exc, "installing", InstallError)
        print(f"airbundle install: error: {error}", file=sys.stderr)
        return error.exit_code
    except BundlerError as exc:
        print(f"airbundle install: error: {exc}", file=sys.stderr)
        return exc.exit_code


def _install(
    args: argparse.Namespace,
    trusted: list[signing.PublicKey],
    nodes: list[Node],
    values: dict[str, str],
    journal: Journal,
) -> int:
    # One open, one read of the head, one decision, one read of every member: the bytes the
    # decision was made on are the bytes unpacked (a file swapped in meanwhile is never read).
    with archive.Bundle(args.bundle, trusted) as bundle:
        decision = bundle.decide(_site_facts(args, trusted, journal.state))
        lock = decision.lock
        route = _images_route(args, lock, nodes)  # a bad choice stops before anything is unpacked
        base = args.workdir / decision.base_folder if decision.base_folder else None
        _remove_stale_staging(args.workdir, f"{lock.name}-{lock.version}")
        final, report = bundle.extract(decision, args.workdir, inherit_from=base)
    installed = decision.installed
    if journal.is_complete(lock.name, decision.lock_sha256) and not args.only:
        print(f"{lock.name} {lock.version} is already installed (verified again); nothing to do")
        return 0
    journal.begin(lock.name, lock.version, decision.lock_sha256)
    print(
        f"{lock.name} {lock.version}: verified (signed by {report.signer.fingerprint}), unpacked to {final}"
        + (f"; {installed} was installed before" if installed and installed != lock.version else "")
    )
    for warning in topology_warnings(nodes, lock.min_workers):
        print(f"warning: {warning}", file=sys.stderr)
    opts = SshOptions(args.ssh_config)
    per_node = node_images(lock, nodes)  # by role: system images, and the workloads on image_roles nodes
    targets = [n for n in nodes if per_node[n.name]]
    # What runs here (rke, the steps) runs from copies checked against the lock as they are made,
    # in a folder only this process can write: the unpacked folder is not read again to run it.
    private = Path(tempfile.mkdtemp(prefix="airbundle-run-"))
    try:
        _phases(args, lock, final, nodes, per_node, targets, opts, route, values, journal, private)
    finally:
        shutil.rmtree(private, ignore_errors=True)
    if not args.only:
        journal.complete(lock.name)
        print(f"{lock.name} {lock.version} is installed")
    return 0


def _phases(
    args: argparse.Namespace,
    lock: Lock,
    final: Path,
    nodes: list[Node],
    per_node: dict[str, tuple[oci.Image, ...]],
    targets: list[Node],
    opts: SshOptions,
    route: Route,
    values: dict[str, str],
    journal: Journal,
    private: Path,
) -> None:
    """Run the phases (or ``--only`` one) in order; raises ``InstallError`` at the first that fails."""
    for phase in [args.only] if args.only else PHASES:
        print(f"== {phase}")
        if phase == "preflight":
            _report(
                phase,
                preflight_phase(
                    lock,
                    nodes,
                    per_node,
                    opts,
                    time.time(),
                    route,
                    load_cluster_options(args.inventory)
                    if any(b.name == "rke" for b in lock.binaries)
                    else None,
                    args.apt_root,
                ),
            )
        elif phase == "packages":
            if not lock.debs:
                print("  no packages in the bundle")
            else:
                _report(phase, packages_phase(lock, final, nodes, opts, args.apt_root), journal)
        elif phase == "binaries":
            _report(phase, binaries_phase(lock, final, nodes, opts), journal)
        elif phase == "images" and not targets:
            print("  no images for any node")
        elif phase == "images" and route.mode == "registry":
            tls = args.workdir / "registry-tls"
            _report(phase, siteregistry.images_phase(lock, final, targets, per_node, opts, route, tls, print))
        elif phase == "images":
            _report(phase, images_phase(per_node, final, targets, opts, journal))
        elif phase == "cluster":
            rke = next((b for b in lock.binaries if b.name == "rke"), None)
            if rke is None:
                print("  no rke in the bundle: skipped")
            elif journal.is_done("cluster", "local", "rke-up"):
                print("  rke up: done before, skipped")
            else:
                registries = [_private_registry(route)] if route.mode == "registry" else []
                tool = archive.verified_copy(final / rke.path, lock.member(rke.path), private / "rke")
                kubeconfig = rke_up(
                    tool,
                    args.inventory,
                    args.workdir,
                    dict(os.environ),
                    print,
                    registries,
                    lock.cluster.get("kubernetes_version", ""),
                )
                journal.mark_done("cluster", "local", "rke-up")
                print(f"  kubeconfig: {kubeconfig}")
        elif phase == "steps":
            env = {**os.environ, **values, "BUNDLE_DIR": str(final)}
            kubeconfig = args.workdir / "kube_config_cluster.yml"
            if kubeconfig.exists():
                env["KUBECONFIG"] = str(kubeconfig)
            ran = run_steps(lock, final, args.workdir / "logs", env, journal, print, private)
            print(f"  {len(ran)} step(s) ran")


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


def _site_facts(
    args: argparse.Namespace, trusted: list[signing.PublicKey], state: dict[str, Any]
) -> trust.SiteFacts:
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


def _report(phase: str, results: list[NodeResult], journal: Journal | None = None) -> None:
    """One line per node (recorded in the journal when given); raises ``InstallError`` naming failed nodes."""
    for r in results:
        if r.error:
            print(f"  {r.node.name:<20} FAILED: {r.error}")
        elif phase == "images":
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
        if journal is not None and not r.error:
            journal.mark_done(phase, r.node.name, "ok")
    failed = [r.node.name for r in results if r.error]
    if failed:
        raise InstallError(f"{phase}: failed on {', '.join(failed)}; fix them and run again with --resume")


def _images_route(args: argparse.Namespace, lock: Lock, nodes: list[Node]) -> Route:
    """How images reach the nodes: the options, else the manifest's ``install`` defaults; checked whole."""
    explicit = args.registry or args.registry_node
    mode = args.images_mode or ("registry" if explicit else lock.images_mode)
    if args.registry and args.registry_node:
        raise InputError("give --registry HOST:PORT (an existing registry) or --registry-node NAME, not both")
    for flag, path in (("--registry-ca", args.registry_ca), ("--registry-cert", args.registry_cert),
                       ("--registry-key", args.registry_key)):  # fmt: skip
        if path is not None and not path.is_file():
            raise InputError(f"{flag} {path}: no such file")
    if bool(args.registry_cert) != bool(args.registry_key):
        raise InputError("--registry-cert and --registry-key go together")
    password = os.environ.get(PASSWORD_ENV, "")
    if args.registry_user and not password:
        raise InputError(f"--registry-user {args.registry_user} needs the password in {PASSWORD_ENV}")
    chunk = 0
    if args.registry_chunk:
        try:
            chunk = archive.parse_size(args.registry_chunk)
        except ValueError as exc:
            raise InputError(f"--registry-chunk {exc}") from None
    if mode != "registry":
        return Route()
    if args.registry_node:
        node = next((n for n in nodes if args.registry_node in (n.name, n.address)), None)
        if node is None:
            raise InputError(
                f"--registry-node {args.registry_node}: no such node in {args.inventory} "
                f"(nodes: {', '.join(n.name for n in nodes)})"
            )
        if not (lock.registry_image and lock.find_image(lock.registry_image)):
            raise InputError(
                "--registry-node needs a registry image in the bundle: list one under images: and name "
                "it in the manifest's install.registry_image (e.g. registry:2); or give an existing site "
                "registry with --registry HOST:PORT"
            )
        if args.registry_ca and not args.registry_cert:
            raise InputError(
                "--registry-ca with --registry-node is the CA of your --registry-cert; without a "
                "certificate the installer makes and uses its own CA"
            )
        if not 0 < args.registry_port < 65536:
            raise InputError(f"--registry-port {args.registry_port} is not a TCP port")
        return Route(
            "registry", f"{node.address}:{args.registry_port}", node, args.registry_data,
            args.registry_ca, args.registry_cert, args.registry_key, "", "", chunk,
        )  # fmt: skip
    registry = args.registry or lock.registry
    if not registry:
        raise InputError(
            "--images-mode registry needs --registry HOST:PORT (the site registry), --registry-node NAME "
            "(a node to run one on), or install.registry in the manifest"
        )
    if not REGISTRY_RE.fullmatch(registry):
        raise InputError(f"--registry {registry!r} is not HOST:PORT (e.g. 10.0.0.5:5000)")
    return Route(
        "registry",
        registry,
        None,
        "",
        args.registry_ca,
        None,
        None,
        args.registry_user or "",
        password,
        chunk,
    )


def _private_registry(route: Route) -> dict[str, object]:
    """The RKE ``private_registries`` entry for the route's registry (the default for system images)."""
    entry: dict[str, object] = {"url": route.address, "is_default": True}
    if route.user:
        entry.update(user=route.user, password=route.password)
    return entry


def _dry_run(args: argparse.Namespace, trusted: list[signing.PublicKey], nodes: list[Node]) -> int:
    with archive.Bundle(args.bundle, trusted) as bundle:
        decision = bundle.decide(_site_facts(args, trusted, Journal.read(args.workdir)))
        report = bundle.verify(decision)
    if report.problems:
        first = report.problems[0]
        raise IntegrityError(f"{args.bundle}: {first}", member=first.member)
    lock = report.lock
    installed = decision.installed
    print(
        f"{lock.name} {lock.version}: signature by {report.signer.fingerprint} and "
        f"{len(lock.members)} members verified; installed now: {installed or 'nothing'}"
    )
    print("nodes: " + ", ".join(f"{n.name} ({'/'.join(n.roles)})" for n in nodes))
    for warning in topology_warnings(nodes, lock.min_workers):
        print(f"warning: {warning}")
    print("the plan:")
    print("\n".join("  " + line for line in describe(lock, nodes, _images_route(args, lock, nodes))))
    return 0


def main() -> None:
    # Line-buffered: the report interleaves with warnings on stderr in the order they happen.
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(line_buffering=True)
    sys.exit(run())
