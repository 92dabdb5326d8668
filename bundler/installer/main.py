"""The site installer's command line: ``sh install.sh`` and ``airbundle install`` both run this.

It runs on the isolated site with python3 3.7+ and the standard library only
(argparse, not click), importing just the site-safe core carried in the
bundle (errors, oci, lock, signing, archive). This stage verifies the bundle
(signature, then every member), refuses anything else, and unpacks exactly
the lock's members into ``--workdir``. The install phases that follow
(preflight, packages, binaries, images, cluster, steps) are not included
yet: it says so and exits 6 without touching any node.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bundler import __version__, archive, signing
from bundler.errors import BundlerError, InputError, InstallError, IntegrityError

PHASES = ("preflight", "packages", "binaries", "images", "cluster", "steps")
DEFAULT_WORKDIR = "/var/lib/airbundle"
EPILOG = """example:
  tar -xf fmp-rke-23.12.1.tar install.sh
  sh install.sh --pubkey release.pub --inventory cluster.yml --values site.yaml
  sh install.sh --pubkey release.pub --inventory cluster.yml --dry-run
"""


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="install.sh",
        description="Verify an airbundle bundle and install it on the site's nodes.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--bundle", required=True, type=Path, help="the bundle .tar (install.sh finds it)")
    p.add_argument(
        "--pubkey", required=True, type=Path, help="the publisher's public key (.pub or allowed_signers)"
    )
    p.add_argument("--inventory", required=True, type=Path, help="RKE cluster.yml naming the nodes")
    p.add_argument("--values", type=Path, help="site variables (YAML) for the staged steps")
    p.add_argument(
        "--workdir", type=Path, default=Path(DEFAULT_WORKDIR), help=f"where to unpack [{DEFAULT_WORKDIR}]"
    )
    p.add_argument("--dry-run", action="store_true", help="verify and show the plan; change nothing")
    p.add_argument("--resume", action="store_true", help="continue a previous install")
    p.add_argument("--only", choices=PHASES, help="run one phase")
    p.add_argument("--version", action="version", version=f"airbundle installer {__version__}")
    return p


def _read_keys(path: Path) -> list[signing.PublicKey]:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        raise InputError(f"{path}: cannot read the public key: {exc.strerror}") from exc
    return signing.parse_public_keys(text, str(path))


def _plan(lock: object) -> list[str]:
    """What the phases would do with this bundle (shown by --dry-run)."""
    from bundler.lock import Lock

    assert isinstance(lock, Lock)
    tags = ", ".join(t for i in lock.images for t in i.tags)
    cluster = "rke up" if any(b.name == "rke" for b in lock.binaries) else "skipped (no rke in the bundle)"
    return [
        f"  preflight  every node: reachable, OS {lock.platform.get('os')} {lock.platform.get('codename')}"
        f" {lock.platform.get('arch')}, free space, ports, clock",
        f"  packages   {len(lock.debs)} Debian packages from the bundled repository",
        f"  binaries   {', '.join(b.dest for b in lock.binaries) or 'none'}",
        f"  images     {len(lock.images)} images to the workers: {tags}",
        f"  cluster    {cluster}",
        f"  steps      {', '.join(s.name for s in lock.steps) or 'none'}",
    ]


def run(argv: list[str] | None = None) -> int:
    """Parse ``argv`` and install; returns the exit code (errors are printed, never raised)."""
    args = parser().parse_args(argv)
    try:
        trusted = _read_keys(args.pubkey)
        if not args.inventory.is_file():
            raise InputError(f"{args.inventory}: no such inventory file")
        if args.dry_run:
            report = archive.verify_bundle(args.bundle, trusted)
            if report.problems:
                first = report.problems[0]
                raise IntegrityError(f"{args.bundle}: {first}", member=first.member)
            lock = report.lock
            print(
                f"{lock.name} {lock.version}: signature by {report.signer.fingerprint} and "
                f"{len(lock.members)} members verified; the plan:"
            )
            print("\n".join(_plan(lock)))
            return 0
        final, report = archive.extract_bundle(args.bundle, trusted, args.workdir)
        print(
            f"{report.lock.name} {report.lock.version}: verified (signed by {report.signer.fingerprint}) "
            f"and unpacked to {final}"
        )
        raise InstallError(
            "the install phases (" + ", ".join(PHASES) + ") are not included in this installer yet; "
            f"the bundle is verified and unpacked at {final}, and no node was touched"
        )
    except BundlerError as exc:
        print(f"airbundle install: error: {exc}", file=sys.stderr)
        return exc.exit_code


def main() -> None:
    sys.exit(run())
