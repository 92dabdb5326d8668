"""The ``airbundle`` command line (click + tqdm): keygen, build, verify, inspect, install.

Each command parses its options, calls one library function and shows the
result. ``main`` is the one exit-status gate: a ``BundlerError`` becomes its
exit code and a one-line message; anything else is a bug and shows its
traceback (exit 1).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

import click

from bundler import __version__, archive, files, oci, signing
from bundler import lock as lock_
from bundler.cache import atomic_write, default_root
from bundler.errors import (
    BundlerError,
    FetchError,
    InputError,
    InstallError,
    IntegrityError,
    KeyFileError,
    from_os_error,
)
from bundler.text import printable

_PATH = click.Path(path_type=Path)
_EXISTING_FILE = click.Path(exists=True, dir_okay=False, path_type=Path)


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"  # pragma: no cover


def _count(n: int, noun: str) -> str:
    """``1 member``, ``2 members``: the count with its noun, singular for one."""
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _expiry_text(expires: int, now: int) -> str:
    """The signed expiry for ``inspect``, judged by this host's clock as verify and install judge it."""
    if not expires:
        return "never"
    days = abs(expires - now) // 86400
    when = f"{days} days" if days != 1 else "1 day"
    if expires <= now:
        return (
            f"{signing.utc_text(expires)}  EXPIRED {when} ago by this host's clock "
            "(verify and install refuse it unless --allow-expired)"
        )
    return f"{signing.utc_text(expires)}  (in {when})"


def _note(text: str) -> None:
    """What a command tells besides its result (summaries, tables), on stderr; nothing with -q."""
    if not _VERBOSITY["quiet"]:
        click.echo(text, err=True)


def _show_progress() -> bool:
    return sys.stderr.isatty() and not _VERBOSITY["quiet"]


# -v/--verbose and -q/--quiet, given before the subcommand, after it, or both (counts add up).
_VERBOSITY = {"verbose": 0, "quiet": 0}


def _set_verbosity(ctx: click.Context, param: click.Parameter, value: int) -> None:
    if ctx.resilient_parsing or not value:
        return
    assert param.name is not None
    _VERBOSITY[param.name] += int(value)
    level = logging.ERROR if _VERBOSITY["quiet"] else logging.WARNING - 10 * _VERBOSITY["verbose"]
    logging.getLogger().setLevel(max(level, logging.DEBUG))


def _verbosity_options(f: Any) -> Any:
    """``-v`` (repeatable) and ``-q`` on a command as well as on ``airbundle`` itself."""
    f = click.option(
        "-q", "--quiet", count=True, expose_value=False, callback=_set_verbosity,
        help="Errors only: no warnings, no progress bars.",
    )(f)  # fmt: skip
    return click.option(
        "-v", "--verbose", count=True, expose_value=False, callback=_set_verbosity,
        help="More log output (-vv for debug); also before the command.",
    )(f)  # fmt: skip


class _Bars:
    """Byte progress bars by key, opened on first report (so skipped stages show
    nothing), only on a terminal; safe to call from worker threads. tqdm is
    imported only then, which keeps start-up fast for scripts."""

    def __init__(self) -> None:
        self._bars: dict[str, Any] = {}
        self._lock = threading.Lock()

    def get(self, key: str, desc: str, total: int | None) -> Any:
        if not _show_progress():
            return None
        with self._lock:
            if key not in self._bars:
                from tqdm import tqdm

                self._bars[key] = tqdm(
                    total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024, leave=False
                )
            return self._bars[key]

    def advance(self, key: str, n: int, total: int | None) -> None:
        """Move bar ``key`` (titled ``key``) on by ``n`` bytes."""
        bar = self.get(key, key, total)
        if bar is not None:
            bar.update(n)

    def close(self) -> None:
        for bar in self._bars.values():
            bar.close()


_pubkeys_option = click.option(
    "--pubkey",
    "pubkeys",
    required=True,
    multiple=True,
    type=_EXISTING_FILE,
    help="Trusted key(s): a .pub, or an allowed_signers file read as ssh-keygen -Y verify -I airbundle "
    "reads it (principals, valid-after, valid-before, namespaces); repeatable.",
)


def _trusted(paths: tuple[Path, ...]) -> list[signing.PublicKey]:
    return [key for path in paths for key in _pubkeys(path)]


def _passphrase(var: str | None) -> bytes | None:
    if var is None:
        return None
    value = os.environ.get(var)
    if value is None:
        raise InputError(f"--passphrase-env {var}: the variable {var} is not set")
    if not value:
        raise InputError(f"--passphrase-env {var}: the variable {var} is empty")
    return value.encode()


def _read_file(path: Path, what: str, limit: int = 1 << 20) -> bytes:
    return files.read_capped(path, what, limit, KeyFileError)


def _pubkeys(path: Path) -> list[signing.PublicKey]:
    text = _read_file(path, "public key").decode("utf-8", "replace")
    return signing.parse_public_keys(text, str(path))


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="airbundle")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug); also after the command.")
@click.option("-q", "--quiet", count=True, help="Errors only: no warnings, no progress bars.")
def cli(verbose: int, quiet: int) -> None:
    """Build, verify and install signed offline bundles for air-gapped Kubernetes sites.

    The example builds the demo's bundle (`make demo` serves what manifests/demo.yaml fetches).

    \b
    Example:
      airbundle keygen --out release
      airbundle build manifests/demo.yaml --key release.key -o dist
      airbundle verify dist/demo-0.1.0.tar --pubkey release.pub
      airbundle inspect dist/demo-0.1.0.tar
    """
    _VERBOSITY.update(verbose=verbose, quiet=quiet)
    level = logging.ERROR if quiet else logging.WARNING - 10 * verbose
    # force: rebind to this invocation's stderr (matters when main() runs more than once in a process).
    logging.basicConfig(
        level=max(level, logging.DEBUG), format="airbundle: %(levelname)s: %(message)s", force=True
    )


@cli.command()
@_verbosity_options
@click.option("--out", "prefix", required=True, type=_PATH, help="Writes PREFIX.key and PREFIX.pub.")
@click.option("--passphrase-env", metavar="VAR", help="Encrypt the key with the passphrase in $VAR.")
@click.option("--comment", default="airbundle", show_default=True, help="Comment on the public key line.")
@click.option("--force", is_flag=True, help="Overwrite existing key files.")
def keygen(prefix: Path, passphrase_env: str | None, comment: str, force: bool) -> None:
    """Make an Ed25519 signing key pair and print its fingerprint.

    PREFIX.key is PKCS#8 PEM (mode 0600); PREFIX.pub is one OpenSSH line for
    `airbundle verify --pubkey` and for `ssh-keygen -Y verify` allowed_signers.
    PREFIX's folder is made (mode 0700) when it does not exist. Without
    --passphrase-env the key is not encrypted, and keygen says so.

    \b
    Example:
      airbundle keygen --out keys/release
      RELEASE_PASS='a long passphrase' airbundle keygen --out keys/protected --passphrase-env RELEASE_PASS
    """
    key_path = prefix.with_name(prefix.name + ".key")
    pub_path = prefix.with_name(prefix.name + ".pub")
    for path in (key_path, pub_path):
        if path.exists() and not force:
            raise InputError(f"{path} exists; pass --force to replace it")
    passphrase = _passphrase(passphrase_env)
    prefix.parent.mkdir(mode=0o700, parents=True, exist_ok=True)  # keys/ in a fresh clone
    key = signing.PrivateKey.generate(comment=comment)
    atomic_write(key_path, key.to_pem(passphrase), mode=0o600)
    atomic_write(pub_path, (key.public.openssh_line() + "\n").encode())
    how = (
        f"encrypted with the passphrase in ${passphrase_env}"
        if passphrase
        else "NOT encrypted: keep it offline, or make one with --passphrase-env VAR"
    )
    _note(f"wrote {key_path} ({how}) and {pub_path}")
    click.echo(key.public.describe())


@cli.command()
@_verbosity_options
@click.argument("manifest", type=_EXISTING_FILE)
@click.option("-o", "--out", "outdir", type=_PATH, help="Folder for the bundle; required unless --dry-run.")
@click.option(
    "--key", "key_path", type=_EXISTING_FILE, help="Signing key (PREFIX.key); required unless --dry-run."
)
@click.option("--passphrase-env", metavar="VAR", help="The key's passphrase is in $VAR.")
@click.option(
    "--cache", "cache_dir", type=_PATH, help="Cache folder [$AIRBUNDLE_CACHE or ~/.cache/airbundle]."
)
@click.option(
    "--jobs", "-j", default=4, show_default=True, type=click.IntRange(1, 64), help="Parallel downloads."
)
@click.option(
    "--dry-run", is_flag=True, help="Print what would be fetched and bundled, with sizes; write nothing."
)
@click.option("--json", "as_json", is_flag=True, help="With --dry-run: print the plan as JSON.")
@click.option(
    "--expires", metavar="WHEN", help="Sites refuse the bundle after WHEN: 180d, 12w, 36h or 2027-06-30."
)
@click.option("--split", metavar="SIZE", help="Cut the bundle into parts of SIZE (e.g. 4G, 4400M) for media.")
@click.option(
    "--base", "base", type=_EXISTING_FILE, help="Build a delta: leave out what this earlier bundle carries."
)
@click.option(
    "--mirror",
    "mirrors",
    multiple=True,
    metavar="REGISTRY=MIRROR",
    help="Pull REGISTRY's images from MIRROR (HOST[:PORT][/PREFIX]); repeatable, over the manifest's "
    "mirrors:. The bundle keeps the canonical names and digests.",
)
@click.option(
    "--force", is_flag=True, help="Replace a different bundle of the same NAME-VERSION already in OUTDIR."
)
def build(
    manifest: Path,
    outdir: Path | None,
    key_path: Path | None,
    passphrase_env: str | None,
    cache_dir: Path | None,
    jobs: int,
    dry_run: bool,
    as_json: bool,
    expires: str | None,
    split: str | None,
    base: Path | None,
    mirrors: tuple[str, ...],
    force: bool,
) -> None:
    """Build a signed, deterministic bundle from a manifest.

    Writes OUTDIR/NAME-VERSION.tar and OUTDIR/NAME-VERSION.tar.sha256 (with
    --split, the parts, NAME-VERSION.parts.json, its .sig and .parts.sha256
    instead) and prints the bundle's path last. The manifest and every option
    are checked first, and every mistake is listed in one run (exit 2). An
    earlier build of the same NAME-VERSION in OUTDIR is replaced when it is the
    same bundle; a different one stays, and the build stops (exit 2) unless
    --force. The same manifest and cache give the same bytes (set
    SOURCE_DATE_EPOCH to stamp the members; default 0).

    \b
    Example:
      airbundle build manifests/fmp-rke.yaml --key keys/release.key -o dist
      (cd dist && sha256sum -c fmp-rke-23.12.1.tar.sha256)
      airbundle build manifests/fmp-rke.yaml --dry-run
      airbundle build manifests/fmp-rke.yaml --key keys/release.key -o dvd --split 4400M
      airbundle build manifests/fmp-rke.yaml --key keys/release.key -o delta --base dist/fmp-rke-23.12.0.tar
      airbundle build manifests/fmp-rke.yaml --key keys/release.key -o dist --mirror docker.io=mirror.lan/hub
    """
    from bundler.build import build_bundle, check_inputs, plan_bundle  # requests: only the build needs it

    try:
        # Every mistake at once, before anything is fetched: the key, the options, the manifest.
        problems: list[InputError] = []
        key = None
        if not dry_run:
            missing = [o for o, v in (("--key KEY", key_path), ("-o OUTDIR", outdir)) if v is None]
            if missing:
                problems.append(InputError(f"{' and '.join(missing)} needed (or pass --dry-run)"))
            if key_path is not None:
                try:
                    key = signing.load_private_key(
                        _read_file(key_path, "private key"), str(key_path), _passphrase(passphrase_env)
                    )
                except InputError as exc:
                    problems.append(exc)
        checked = check_inputs(
            manifest,
            outdir,
            expires,
            split,
            mirrors,
            force,
            problems,
            base=base,
            key=key.public if key else None,
        )
        if dry_run:
            _print_plan(plan_bundle(manifest, cache_dir or default_root(), mirrors=mirrors), as_json)
            return
    except BundlerError as exc:
        if dry_run and as_json:
            click.echo(json.dumps({"manifest": str(manifest), **_error_json(exc)}, indent=2))
        raise
    assert key is not None and outdir is not None
    bars = _Bars()

    def on_fetch(url: str, done: int, total: int | None) -> None:
        bar = bars.get(url, url.rsplit("/", 1)[-1][:30], total)
        if bar is not None and not bar.disable:
            bar.update(done - bar.n)
            if total is not None and done >= total:
                bar.close()  # done: clear it rather than leave a stale line

    try:
        result = build_bundle(
            manifest,
            outdir,
            key,
            cache_dir or default_root(),
            jobs,
            on_fetch=on_fetch,
            on_hash=lambda n, total: bars.advance("hashing files", n, total),
            on_write=lambda n, total: bars.advance("writing bundle", n, total),
            expires=expires,
            base=base,
            split=split or 0,
            mirrors=mirrors,
            force=force,
        )
    finally:
        bars.close()
    lock = result.lock
    if lock.debs:
        _note("\n".join(_deb_table(lock)))
    if lock.rpms:
        _note("\n".join(_rpm_table(lock)))
    if lock.system_images:
        _note("\n".join(_system_table(lock)))
    _note(
        f"built {lock.name} {lock.version}: {_count(len(lock.members), 'member')}, "
        f"{_human(result.size)}, signed by {key.public.fingerprint}"
    )
    _note(f"sha256 {result.sha256}")
    if result.parts is not None:
        index = result.parts
        count = len(archive.load_parts(index)[0])
        _note(
            f"split into {_count(count, 'part')} of at most {_human(checked.split)}; {index.name} lists them",
        )
        click.echo(str(index))
        return
    click.echo(str(result.path))


def _print_plan(items: list[Any], as_json: bool) -> None:
    """The dry-run plan: one line per item, then totals (or JSON); the cluster's system images
    after the application images, under a heading, each with the node roles that need it."""
    if as_json:
        click.echo(json.dumps([{**vars(i), "roles": list(i.roles)} for i in items], indent=2))
        return
    width = max((len(i.name) for i in items), default=4)
    system = [i for i in items if i.kind == "system"]
    for item in [i for i in items if i.kind != "system"] + system:
        if system and item is system[0]:
            click.echo(f"system images for Kubernetes {item.kubernetes_version} (node roles):")
        size = _human(item.size) if item.size is not None else "?"
        state = "cached" if item.cached else "fetch"
        roles = f"  [{','.join(item.roles)}]" if item.kind == "system" else ""
        click.echo(f"{item.kind:<7} {item.name:<{width}}  {size:>10}  {state:<6}  {item.source}{roles}")
    fetch = [i for i in items if not i.cached]
    known = sum(i.size or 0 for i in fetch)
    unknown = sum(1 for i in fetch if i.size is None)
    total = _human(sum(i.size or 0 for i in items))
    click.echo(
        f"{_count(len(items), 'item')}, {total} in all; "
        f"to fetch: {_count(len(fetch), 'item')}, {_human(known)}"
        + (f" (+{unknown} of unknown size)" if unknown else "")
    )


def _deb_table(lock: Any) -> list[str]:
    """The resolved packages, one line each: name, version, arch, size and why it is there."""
    width = max(len("package"), *(len(d.name) for d in lock.debs))
    vwidth = max(len("version"), *(len(d.version) for d in lock.debs))
    lines = [f"  {'package':<{width}}  {'version':<{vwidth}}  arch   {'size':>10}  needed by"]
    places = lock.deb_places()
    lines += [
        f"  {d.name:<{width}}  {d.version:<{vwidth}}  {d.arch:<5}  {_human(d.size):>10}  ({d.reason})"
        # Which nodes get it, once some packages go to the nodes of a role only (debs.roles).
        + (
            f"  on {'/'.join(places[d.name]) + ' nodes' if places[d.name] else 'every node'}"
            if lock.deb_roles
            else ""
        )
        for d in lock.debs
    ]
    return lines


def _rpm_table(lock: Any) -> list[str]:
    """The rpm closure, one line each: name, epoch:version-release, arch, size and why it is there
    (a requested package of a role says the role: rpms.roles)."""
    width = max(len("rpm"), *(len(r.name) for r in lock.rpms))
    vwidth = max(len("version"), *(len(r.version) for r in lock.rpms))
    roles_of = {name: role for role, names in sorted(lock.rpm_roles.items()) for name in names}
    lines = [f"  {'rpm':<{width}}  {'version':<{vwidth}}  {'arch':<7} {'size':>10}  needed by"]
    lines += [
        f"  {r.name:<{width}}  {r.version:<{vwidth}}  {r.arch:<7} {_human(r.size):>10}  ({r.reason})"
        + (f"  on {roles_of[r.name]} nodes" if r.name in roles_of and r.reason == "requested" else "")
        for r in lock.rpms
    ]
    return lines


def _system_table(lock: Any) -> list[str]:
    """The cluster's system images, one line each, with the node roles that need them."""
    cluster = lock.cluster
    lines = [
        f"  system images for {cluster.get('kind')} Kubernetes {cluster.get('kubernetes_version')} "
        f"(network {cluster.get('network_plugin')}; {_count(len(lock.system_images), 'image')}, node roles):"
    ]
    width = max(len(s.ref) for s in lock.system_images)
    for system in lock.system_images:
        image = lock.find_image(system.ref)
        size = _human(image.size) if image is not None else "?"
        lines.append(f"    {system.ref:<{width}}  {size:>10}  {', '.join(system.roles)}")
    return lines


def _error_json(exc: BundlerError) -> dict[str, Any]:
    out: dict[str, Any] = {"ok": False, "exit_code": exc.exit_code, "error": str(exc)}
    if isinstance(exc, InputError):
        out["problems"] = list(exc.problems)
    fingerprint = getattr(exc, "fingerprint", None)
    if fingerprint:
        out["signer"] = fingerprint
    member = getattr(exc, "member", None)
    if member:
        out["member"] = member
    return out


@cli.command()
@_verbosity_options
@click.argument("bundle", type=_EXISTING_FILE)
@_pubkeys_option
@click.option("--allow-expired", is_flag=True, help="Accept a bundle past its signed expiry.")
@click.option("--json", "as_json", is_flag=True, help="Print a machine-readable report.")
@click.option("--jobs", "-j", type=click.IntRange(1, 64), help="Hashing threads [CPU count].")
def verify(
    bundle: Path, pubkeys: tuple[Path, ...], allow_expired: bool, as_json: bool, jobs: int | None
) -> None:
    """Check a bundle's signature and every member's size and SHA-256.

    Opens the bundle once and writes nothing: first the trust decision on
    lock.json (signature, key window, format, expiry: exit 3 when refused), then
    every member header and byte against the lock (exit 4 naming the member,
    or the part that holds a damaged byte). BUNDLE is a .tar, a
    NAME-VERSION.parts.json, or one of its parts.

    \b
    Example:
      airbundle verify dist/fmp-rke-23.12.1.tar --pubkey keys/release.pub
      airbundle verify dist/fmp-rke-23.12.1.tar --pubkey keys/release.pub --json
    """
    trusted = _trusted(pubkeys)
    try:
        with archive.Bundle(bundle, trusted) as opened:
            decision = opened.decide(archive.facts(trusted, allow_expired))
            total = decision.lock.payload_size  # once: a sum over every member, not per update
            bars = _Bars()
            try:
                report = opened.verify(decision, jobs, lambda n: bars.advance("verifying", n, total))
            finally:
                bars.close()
    except BundlerError as exc:
        if as_json:
            click.echo(json.dumps({"bundle": str(bundle), **_error_json(exc)}, indent=2))
        raise
    lock = report.lock
    summary = {
        "ok": not report.problems,
        "bundle": str(bundle),
        "name": lock.name,
        "version": lock.version,
        "signer": report.signer.fingerprint,
        "members": len(lock.members),
        "bytes": report.bytes,
        "problems": [{"member": p.member, "problem": p.problem} for p in report.problems],
    }
    if as_json:
        click.echo(json.dumps(summary, indent=2))
    elif not report.problems:
        click.echo(
            f"OK {lock.name} {lock.version}: signed by {report.signer.fingerprint}; "
            f"{_count(len(lock.members), 'member')}, {_human(report.bytes)} verified"
        )
    if report.problems:
        if not as_json:
            for problem in report.problems:
                click.echo(f"FAIL {problem}", err=True)
        first = report.problems[0]
        raise IntegrityError(
            f"{bundle}: {_count(len(report.problems), 'member')} failed; first: {first}. "
            "Do not install this bundle; fetch it again from the publisher",
            member=first.member,
        )


@cli.command()
@_verbosity_options
@click.argument("bundle", type=_EXISTING_FILE)
@click.option("--pubkey", type=_EXISTING_FILE, help="Also check the signature against this key.")
@click.option("--json", "as_json", is_flag=True, help="Print the lock's facts as JSON.")
@click.option("--sbom", "show_sbom", is_flag=True, help="Print the bundle's CycloneDX SBOM (sbom.cdx.json).")
def inspect(bundle: Path, pubkey: Path | None, as_json: bool, show_sbom: bool) -> None:
    """Show what a bundle holds, from its lock, without reading the payload.

    The signer shown is the one the signature names; pass --pubkey to check it
    (or run `airbundle verify` to check every byte).

    \b
    Example:
      airbundle inspect dist/fmp-rke-23.12.1.tar
      airbundle inspect dist/fmp-rke-23.12.1.tar --json > fmp-rke-23.12.1.json
      airbundle inspect dist/fmp-rke-23.12.1.tar --sbom > fmp-rke.cdx.json
    """
    trusted = _pubkeys(pubkey) if pubkey else None
    signer: signing.PublicKey | None
    with archive.Bundle(bundle, trusted) as opened:
        parts = opened.src.parts
        if trusted is not None:
            decision = opened.decide(archive.facts(trusted, allow_expired=True))
            lock, signer = decision.lock, decision.signer
        else:
            lock, signer = opened.unverified()
        if show_sbom:
            entry = next((m for m in lock.members if m.kind == "sbom"), None)
            if entry is None:
                raise IntegrityError(
                    f"{bundle}: carries no SBOM (built by an airbundle without SBOM support?)"
                )
            click.echo(opened.member(entry).decode("utf-8"), nl=False)
            return
    system_set = {lock.find_image(s.ref) for s in lock.system_images}
    own_roles = {lock.find_image(p.ref): p.roles for p in lock.placed_images}
    system_roles = {lock.find_image(s.ref): s.roles for s in lock.system_images}
    places = lock.deb_places()
    sizes: dict[str, int] = {}
    for m in lock.members:
        sizes[m.kind] = sizes.get(m.kind, 0) + m.size
    facts = {
        "name": lock.name,
        "version": lock.version,
        "platform": lock.platform,
        "builder": lock.builder,
        "signer": signer.fingerprint if signer else None,
        "signature_checked": trusted is not None,
        "manifest_sha256": lock.manifest_sha256,
        "expires": lock.expires or None,
        # By this host's clock, as verify and install judge it.
        "expired": bool(lock.expires) and lock.expires <= int(time.time()),
        "delta": (
            {
                "base": dict(lock.base),
                "inherited": len(lock.inherited),
                "inherited_bytes": sum(m.size for m in lock.inherited),
            }
            if lock.base
            else None
        ),
        "parts": [{"name": p.name, "size": p.size, "sha256": p.sha256} for p in parts] if parts else None,
        "members": len(lock.members),
        "payload_bytes": lock.payload_size,
        "bytes_by_kind": dict(sorted(sizes.items())),
        "binaries": [
            {"name": b.name, "dest": b.dest, "mode": b.mode, "size": b.size, "sha256": b.sha256, "url": b.url}
            for b in lock.binaries
        ],
        "files": [{"src": f.src, "dest": f.dest, "count": f.count, "size": f.size} for f in lock.files],
        "steps": [
            {
                "name": s.name,
                "script": s.script,
                "on": list(s.nodes) or s.on,
                "serial": s.serial,
                "files": list(s.files),
                "when": s.when,
                "fixes": list(s.fixes),
            }
            for s in lock.steps
        ],
        "cluster": dict(lock.cluster) or None,
        "system_images": [
            {
                "ref": s.ref,
                "roles": list(s.roles),
                "config": image.config if image else None,
                "size": image.size if image else None,
            }
            for s in lock.system_images
            for image in [lock.find_image(s.ref)]
        ],
        "images": [
            {
                "ref": im.ref,
                "system": im in system_set,
                # the node roles that get it: the system rule's, its entry's own, else image_roles
                "roles": list(system_roles.get(im) or own_roles.get(im, lock.image_roles)),
                "tags": list(im.tags),
                "config": im.config,
                "manifest": im.manifest,
                "platform": im.platform,
                "source": im.source,
                "layers": len(im.layers),
                "size": im.size,
                # plain `skopeo inspect` parses only OCI manifests; --raw reads every image
                "skopeo_inspect": "--raw" if _docker_manifest(im) else "yes",
            }
            for im in lock.images
        ],
        "debs": [
            {
                "name": d.name,
                "version": d.version,
                "arch": d.arch,
                "size": d.size,
                "sha256": d.sha256,
                "url": d.url,
                "needed_by": d.reason,
                "roles": list(places[d.name]) or None,  # the nodes of these roles get it; None: every node
            }
            for d in lock.debs
        ],
        "deb_roles": {role: list(names) for role, names in sorted(lock.deb_roles.items())},
        "apt_sources": list(lock.apt_sources),
        "rpms": [
            {
                "name": r.name,
                "version": r.version,
                "arch": r.arch,
                "size": r.size,
                "sha256": r.sha256,
                "url": r.url,
                "needed_by": r.reason,
            }
            for r in lock.rpms
        ],
        "rpm_roles": {role: list(names) for role, names in sorted(lock.rpm_roles.items())},
        "rpm_sources": list(lock.rpm_sources),
        "install": {
            "images_mode": lock.images_mode,
            "registry": lock.registry or None,
            "registry_image": lock.registry_image or None,
        },
    }
    if as_json:
        click.echo(json.dumps(facts, indent=2))
        return
    plat = lock.platform
    signed = (
        "unsigned"
        if signer is None
        else signer.fingerprint + (" (checked)" if trusted else " (not checked: pass --pubkey)")
    )
    lines = [
        f"{lock.name} {lock.version}  for {plat.get('os')} {plat.get('codename')} {plat.get('arch')}",
        f"  signer:   {signed}",
        f"  builder:  {lock.builder}",
        f"  expires:  {_expiry_text(lock.expires, int(time.time()))}",
        f"  payload:  {_count(len(lock.members), 'member')}, {_human(lock.payload_size)} "
        f"({', '.join(f'{k} {_human(v)}' for k, v in sorted(sizes.items()))})",
    ]
    if lock.base:
        base = lock.base
        lines.append(
            f"  delta:    on {base.get('name')} {base.get('version')} (lock sha256 "
            f"{str(base.get('lock_sha256'))[:16]}…): {_count(len(lock.inherited), 'member')}, "
            f"{_human(sum(m.size for m in lock.inherited))}, left out; the site needs "
            f"{base.get('name')} {base.get('version')} installed"
        )
    if parts:
        lines.append(
            f"  parts:    {_count(len(parts), 'part')} of at most {_human(max(p.size for p in parts))}: "
            f"{parts[0].name} … {parts[-1].name}"
        )
    if lock.binaries:
        lines.append("  binaries:")
        lines += [f"    {b.name:<20} {_human(b.size):>10}  -> {b.dest} ({b.mode})" for b in lock.binaries]
    if lock.files:
        lines.append("  files:")
        lines += [
            f"    {f.dest:<20} {_human(f.size):>10}  {_count(f.count, 'file')} from {f.src}"
            for f in lock.files
        ]
    if lock.images:
        route = (
            f"pushed to the site registry {lock.registry or '(--registry)'}"
            if lock.images_mode == "registry"
            else "ssh-load"
        )
        lines.append(f"  install:  images by default {route}")
        if lock.registry_image:
            lines.append(f"            site registry image (--registry-node): {lock.registry_image}")
        lines.append(
            f"  images:   (layers shared between images are stored once: {_human(sizes.get('image', 0))})"
            + ("; application images:" if lock.system_images else "")
        )
        lines += [
            f"    {', '.join(im.tags) or im.ref:<28} {_human(im.size):>10}  {im.config[7:19]}  {im.platform}"
            f"  ({_count(len(im.layers), 'layer')}, {im.source}{_DOCKER if _docker_manifest(im) else ''})"
            f"  on {', '.join(own_roles.get(im, lock.image_roles))}"
            for im in lock.images
            if im not in system_set
        ]
        if any(_docker_manifest(im) for im in lock.images):
            lines.append(
                "    (a Docker manifest, as its registry serves it, reads with 'skopeo inspect --raw "
                "[--config] oci:images:NAME' or 'skopeo copy'; plain 'skopeo inspect' wants an OCI one)"
            )
    if lock.system_images:
        lines += _system_table(lock)
    if lock.debs:
        lines.append(f"  debs:     ({_count(len(lock.debs), 'package')}, a flat apt repository in debs/)")
        lines += ["  " + line for line in _deb_table(lock)]
    if lock.rpms:
        lines.append(f"  rpms:     ({_count(len(lock.rpms), 'package')}, an rpm-md repository in rpms/)")
        lines += ["  " + line for line in _rpm_table(lock)]
    if lock.steps:
        lines.append("  steps:")
        lines += [f"    {i}. {s.name:<17} {s.script}{_step_where(s)}" for i, s in enumerate(lock.steps, 1)]
    # an unchecked lock says what it likes: its strings are shown, never obeyed by the terminal
    click.echo(printable("\n".join(lines)))


_DOCKER = ", Docker manifest"


def _docker_manifest(image: oci.Image) -> bool:
    """Whether the image's manifest is Docker's schema 2 (kept as the registry served it)."""
    return image.media_type == oci.DOCKER_MANIFEST


def _step_where(step: lock_.Step) -> str:
    """Where a step runs, for ``inspect``: nothing for the control node (the default)."""
    if step.on == "control":
        return ""
    files = f", with {len(step.files)} file(s)" if step.files else ""
    before = ", before the cluster" if step.when == "before-cluster" else ""
    fixes = f", fixes {', '.join(step.fixes)}" if step.fixes else ""
    return f"  (on {step.target}{', one node after the other' if step.serial else ''}{files}{before}{fixes})"


@cli.command(
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True, "help_option_names": []},
    add_help_option=False,
)
@click.argument("installer_options", nargs=-1, type=click.UNPROCESSED)
def install(installer_options: tuple[str, ...]) -> None:
    """Install a bundle on the site: the installer that install.sh runs, with its options.

    BUNDLE --pubkey PUB --inventory cluster.yml [--values FILE] [--dry-run [--offline] [--json]]
    [--resume] [--only PHASE] [...]: every argument goes to the installer unchanged
    ('airbundle install --help' shows its one help text).
    """
    from bundler.installer.main import run

    # -q/-v given before the command (airbundle -q install ...) reach the installer too.
    given = ["--quiet"] * _VERBOSITY["quiet"] + ["--verbose"] * _VERBOSITY["verbose"]
    code = run([*given, *installer_options], prog="airbundle install")
    if code:
        raise click.exceptions.Exit(code)


@cli.command()
@_verbosity_options
@click.argument("parts", type=_EXISTING_FILE)
@_pubkeys_option
@click.option(
    "-o",
    "--out",
    "out",
    required=True,
    type=_PATH,
    help="Where the whole bundle goes: a folder (as for build -o: OUT/NAME-VERSION.tar) or a file name.",
)
def join(parts: Path, pubkeys: tuple[Path, ...], out: Path) -> None:
    """Join a bundle's parts into one .tar, checking every part first; the parts stay as they are.

    PARTS is the NAME-VERSION.parts.json (or any of its parts). -o is a folder,
    as for build (the bundle is then OUT/NAME-VERSION.tar), or the file to write.

    \b
    Example:
      airbundle join dvd/fmp-rke-23.12.1.parts.json --pubkey keys/release.pub -o dist
    """
    index = archive.parts_file(parts)
    if index is None:
        raise InputError(f"{parts}: not a .parts.json or a NAME-VERSION.tar.NNN part")
    trusted = _trusted(pubkeys)
    if out.is_dir():  # -o names a folder, as build's -o does
        out = out / (index.name[: -len(archive.PARTS_SUFFIX)] + ".tar")
    bars = _Bars()
    try:
        digest = archive.join_parts(index, trusted, out, lambda n, total: bars.advance("joining", n, total))
    finally:
        bars.close()
    _note(f"sha256 {digest}")
    click.echo(str(out))


# Which exit code an environment failure gets, by command: building (5), installing (6), else input (2).
_OS_ERROR_KIND: dict[str, type[BundlerError]] = {"build": FetchError, "install": InstallError}


def _command(argv: list[str] | None) -> str:
    """The subcommand named in ``argv`` (the first word that is not an option), for messages."""
    return next((a for a in (sys.argv[1:] if argv is None else argv) if not a.startswith("-")), "airbundle")


def main(argv: list[str] | None = None) -> None:
    """Run the CLI and turn its outcome into an exit status."""
    stdout = sys.stdout
    try:
        code = cli.main(args=argv, prog_name="airbundle", standalone_mode=False)
    except SystemExit as exc:
        # click's own answer to a closed output pipe (| head): exit 1 with sys.stdout swapped for
        # a quiet wrapper; a shell tool's is SIGPIPE's 141, which says "the reader left", not "a bug"
        code = 141 if sys.stdout is not stdout else exc.code
    except click.exceptions.Exit as exc:
        code = exc.exit_code
    except click.ClickException as exc:
        exc.show()
        code = exc.exit_code
    except click.exceptions.Abort:
        click.echo("airbundle: interrupted", err=True)
        code = 130
    except BundlerError as exc:
        click.echo(f"airbundle: error: {printable(str(exc))}", err=True)
        code = exc.exit_code
    except BrokenPipeError:  # the reader went away (| head): quietly, as a shell tool on SIGPIPE
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = 141
    except OSError as exc:  # the machine, not a bug: disk full, permissions, a folder in the way
        error = from_os_error(exc, _command(argv), _OS_ERROR_KIND.get(_command(argv), InputError))
        click.echo(f"airbundle: error: {error}", err=True)
        code = error.exit_code
    except KeyboardInterrupt:
        click.echo("airbundle: interrupted", err=True)
        code = 130
    sys.exit(code if isinstance(code, int) else 0)
