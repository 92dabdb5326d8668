"""The installer's options: one grammar, parsed and checked into one ``Options`` object.

``install.sh`` and ``airbundle install`` both hand their arguments to ``parse`` unchanged
(one grammar, one help text). ``images_route`` turns the image options and the
manifest's ``install`` defaults into the ``Route`` the plan and the images phase
follow, checked whole (exit 2) before anything is unpacked. It reads no bundle and
contacts no node.
"""

import argparse
import os
from pathlib import Path
from typing import List, Optional, Tuple

from bundler import __version__, archive
from bundler.compat import dataclass
from bundler.errors import InputError
from bundler.installer import siteregistry
from bundler.installer.inventory import Node
from bundler.installer.plan import PHASES, Route
from bundler.lock import IMAGES_MODES, REGISTRY_RE, Lock

DEFAULT_WORKDIR = "/var/lib/airbundle"
DEFAULT_REGISTRY_DATA = siteregistry.DEFAULT_DATA
EPILOG = """Examples:
  {run} --pubkey allowed_signers --inventory cluster.yml --dry-run
  {run} --pubkey allowed_signers --inventory cluster.yml --values site.yaml

  # images through a registry the installer runs on node cp-1 (TLS from a CA it makes):
  {run} --pubkey allowed_signers --inventory cluster.yml --registry-node cp-1
  # ... or through the site's own registry, with its CA and credentials (the password from a file):
  AIRBUNDLE_REGISTRY_PASSWORD="$(cat pusher.password)" {run} --pubkey allowed_signers \\
      --inventory cluster.yml --registry 10.0.0.5:5000 --registry-ca site-ca.crt --registry-user pusher

--dry-run is the go/no-go check: it asks every node, changes nothing and exits as the install
would. Never run an install.sh taken out of a bundle unchecked: the README's first command
checks it (and the installer) with tar, ssh-keygen and sha256sum before it runs it as above.
"""
PASSWORD_ENV = "AIRBUNDLE_REGISTRY_PASSWORD"  # noqa: S105 - the name of a variable, not a password


def parser(prog: str = "install.sh") -> argparse.ArgumentParser:
    """The installer's one grammar (``install.sh`` and ``airbundle install`` both parse with it)."""
    p = argparse.ArgumentParser(
        prog=prog,
        # No abbreviations: install.sh finds --bundle and --pubkey by their full names, so an
        # abbreviation (--bund) would name a bundle or key here that install.sh never checked.
        allow_abbrev=False,
        description="Verify an airbundle bundle and install it on the site's nodes.",
        epilog=EPILOG.format(
            run="sh install.sh --bundle fmp-rke-23.12.1.tar"
            if prog == "install.sh"
            else f"{prog} fmp-rke-23.12.1.tar"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("bundle", nargs="?", type=Path, help="the bundle .tar or .parts.json (or --bundle)")
    p.add_argument(
        "--bundle",
        dest="bundle_option",
        metavar="FILE",
        type=Path,
        help="the same, as an option (install.sh finds it)",
    )
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
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="verify, ask every node what it has and whether it passes the preflight, and show what "
        "the install would do; change nothing; exit as the install would (3 trust, 6 a node fails)",
    )
    p.add_argument(
        "--offline", action="store_true", help="with --dry-run: contact no node (the journal alone)"
    )
    p.add_argument("--json", action="store_true", help="with --dry-run: print the plan as JSON")
    p.add_argument(
        "--resume",
        action="store_true",
        help="only continue an unfinished install of this same bundle: refuse (exit 2) to start "
        "afresh (every run skips what the journal holds, with or without it)",
    )
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
    p.add_argument(
        "--yes",
        action="store_true",
        help="install although the inventory's topology has problems (too few workers, an even or "
        "too small etcd count, a role nobody has); without it a terminal asks, anything else stops",
    )
    p.add_argument(
        "--demo",
        action="store_true",
        help="a demonstration install: nodes may combine the control-plane and worker roles even "
        "where the product allows that only for a demo (a warning instead of a problem)",
    )
    # Counted like the airbundle CLI's, and anywhere on the line (argparse takes options in any order).
    p.add_argument("-q", "--quiet", action="count", default=0, help="errors only: no progress, no node lines")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more: where each node's log is")
    p.add_argument("--version", action="version", version=f"airbundle installer {__version__}")
    return p


@dataclass(frozen=True)
class Options:
    """Everything the installer was told, checked (``parse``)."""

    bundle: Path
    pubkey: List[Path]
    inventory: Path
    values: Optional[Path] = None
    workdir: Path = Path(DEFAULT_WORKDIR)
    allow_expired: bool = False
    dry_run: bool = False
    offline: bool = False
    json: bool = False
    resume: bool = False
    only: Optional[str] = None
    allow_downgrade: bool = False
    ssh_config: Optional[Path] = None
    images_mode: Optional[str] = None
    registry: Optional[str] = None
    registry_node: Optional[str] = None
    registry_port: int = 5000
    registry_data: str = DEFAULT_REGISTRY_DATA
    registry_ca: Optional[Path] = None
    registry_cert: Optional[Path] = None
    registry_key: Optional[Path] = None
    registry_user: Optional[str] = None
    registry_chunk: Optional[str] = None
    apt_root: Optional[str] = None
    yes: bool = False
    demo: bool = False
    quiet: int = 0
    verbose: int = 0

    @property
    def phases(self) -> Tuple[str, ...]:
        """The phases to run: every one, or the one ``--only`` names."""
        return (self.only,) if self.only else PHASES


def parse(argv: Optional[List[str]], prog: str = "install.sh") -> Options:
    """The installer's options from ``argv``; a usage error exits 2 through argparse (``SystemExit``)."""
    p = parser(prog)
    ns = p.parse_args(argv)
    if ns.bundle is not None and ns.bundle_option is not None:
        p.error("give the bundle once: as BUNDLE or as --bundle FILE")
    if ns.bundle is None and ns.bundle_option is None:
        p.error("the bundle is required: BUNDLE or --bundle FILE")
    for flag in ("offline", "json"):
        if getattr(ns, flag) and not ns.dry_run:
            p.error(f"--{flag} goes with --dry-run")
    fields = vars(ns)
    fields["bundle"] = fields.pop("bundle_option") or ns.bundle
    return Options(**fields)


def images_route(args: Options, lock: Lock, nodes: List[Node]) -> Route:
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
