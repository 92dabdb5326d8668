"""The site bring-up of a k0s cluster: the airgap image bundle on every node that runs workloads,
then ``k0sctl apply`` (when the bundle carries k0sctl) or k0s's own join sequence, and the kubeconfig.

Entry points (narrow, for the cluster-kind interface): ``write_image_bundle`` (the images the
workers need, from the verified bundle, as one uncompressed docker-archive tar, which k0s imports
itself), ``place_images`` (copy it over SSH into the host's ``DATADIR/images/`` unless the node
holds the same bytes, by SHA-256), ``bring_up`` (k0sctl, after every host's key is checked against
the installer's known_hosts and with ``SSH_KNOWN_HOSTS`` set to those entries; else k0sctl's steps
done here: the k0s config on the controllers, ``k0s install controller`` on the first, a token
created there for each other controller and then each worker, ``k0s start`` on each, the tokens
invalidated and their files removed afterwards; the admin kubeconfig written 0600 into the work
folder). It does not check the topology (``topology``) nor parse the inventory or decide k0sctl's
flags (``k0sctl``), and it prints nothing: ``echo`` is given.

Carried into bundles: standard library only, python3 3.6 syntax.
"""

import base64
import hashlib
import os
import re
import shlex
import subprocess
import zlib
from pathlib import Path
from typing import IO, Callable, List, Optional, Tuple

from bundler import k0simages, oci
from bundler.archive import atomic_output, write_all
from bundler.errors import InstallError
from bundler.installer import kubeconfig as kubeconfigs
from bundler.installer import remote
from bundler.installer.dockerload import docker_load_tar
from bundler.installer.inventory import Endpoint, Node
from bundler.installer.k0sctl import Host, K0sctlConfig, flag_value
from bundler.lock import Lock

BUNDLE_NAME = "airbundle-images.tar"  # one file of ours among whatever else the folder holds
K0S = "/usr/local/bin/k0s"  # where the binaries phase puts the bundle's k0s (k0sctl looks there too)
TOKEN_DIR = "/etc/k0s"  # noqa: S105 - a folder, not a secret


# The admin kubeconfig the bring-up leaves in the work folder (the steps get it as KUBECONFIG).
KUBECONFIG = "kubeconfig-k0s"
JOIN_TTL = "1h"  # how long a join token the bring-up makes stays good
MAX_TOKEN = 64 * 1024  # bytes: a join token (base64 of a gzipped kubeconfig) is a few KiB


def worker_images(lock: Lock) -> List[oci.Image]:
    """The images a node that runs workloads needs: k0s's own (the lock's system images) and the
    application images placed on workers; each once, in lock order."""
    out: List[oci.Image] = []
    for image in lock.images_for(k0simages.WORKLOAD_ROLES):
        if image not in out:
            out.append(image)
    return out


def write_image_bundle(lock: Lock, bundle_dir: Path, dest: Path) -> Tuple[Path, str]:
    """Write the workers' images as one docker-archive tar at ``dest`` (temp, fsync, rename; never
    half-written at the final path); returns it and its SHA-256."""
    images = worker_images(lock)
    if not images:
        raise InstallError(f"{lock.name} {lock.version}: no images for the k0s workers in the bundle")
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name("." + dest.name + ".part")
    digest = hashlib.sha256()

    class _Hashing:
        def __init__(self, out: IO[bytes]) -> None:
            self.out = out

        def write(self, data: bytes) -> int:
            digest.update(data)
            return self.out.write(data)

        def flush(self) -> None:
            self.out.flush()

    with open(str(part), "wb") as f:
        docker_load_tar(images, bundle_dir / "images", _Hashing(f))  # type: ignore[arg-type]
        f.flush()
        os.fsync(f.fileno())
    os.replace(str(part), str(dest))
    return dest, digest.hexdigest()


def place_images(
    node: Node, opts: remote.SshOptions, bundle: Path, sha256: str, folder: str = k0simages.IMAGES_DIR
) -> str:
    """Put ``bundle`` into ``folder`` on ``node`` (``DATADIR/images``: ``/var/lib/k0s/images`` unless
    the host's dataDir says otherwise) unless the same bytes are there; returns "placed" or "present".
    The copy goes to a temporary name and is checked, then renamed, so k0s never imports a
    half-copied file."""
    folder = shlex.quote(folder)
    final = f"{folder}/{BUNDLE_NAME}"
    sudo = remote.sudo_prefix(node)
    have = remote.run(node, opts, f"{sudo}sha256sum {final} 2>/dev/null || true", timeout=120).split()
    if have and have[0] == sha256:
        return "present"
    part = f"{folder}/.{BUNDLE_NAME}.part"
    command = (
        f"{sudo}mkdir -p {folder} && {sudo}sh -c {shlex.quote(f'cat > {part}')} && "
        f"[ \"$({sudo}sha256sum {part} | cut -d' ' -f1)\" = {sha256} ] && {sudo}mv -f {part} {final}"
    )

    def send(out: IO[bytes]) -> None:
        with open(str(bundle), "rb") as f:
            while True:
                block = f.read(1 << 20)
                if not block:
                    break
                out.write(block)

    remote.stream(node, opts, command, send)
    return "placed"


def _write_private(path: Path, text: str) -> None:
    """``text`` at ``path``, mode 0600, never half-written there (``archive.atomic_output``)."""
    with atomic_output(path, mode=0o600) as fd:
        write_all(fd, text.encode())


def known_hosts_for_k0sctl(config: K0sctlConfig, opts: remote.SshOptions, dest: Path) -> Path:
    """Write, at ``dest`` (0600), the known_hosts entries the installer's own ssh trusts for every host
    of ``config``, for k0sctl's ``SSH_KNOWN_HOSTS``; refuse a host whose key the installer's ssh
    does not know.

    k0sctl (its SSH library, rig) trusts an unknown host key on first use and appends it to the
    known_hosts file it uses (``SSH_KNOWN_HOSTS``, else the ssh config's or ``~/.ssh/known_hosts``);
    it refuses only a key that differs from a recorded one. The installer never trusts on first
    use, so each host must be known before k0sctl runs; and k0sctl gets a file of its own, holding
    only these hosts' entries, so that it cannot add to the operator's.

    Raises:
        InstallError: a host the installer's ssh knows no key for (exit 6), with the ssh-keyscan advice.
    """
    lines: List[str] = []
    unknown: List[str] = []
    for host in config.hosts:
        found = remote.known_host_entries(host.node, opts)
        if not found:
            unknown.append(f"{host.node.name}: {remote.unknown_host_key(host.node)}")
        lines += [line for line in found if line not in lines]
    if unknown:
        raise InstallError(
            "cluster: k0sctl would trust these hosts' keys on first use; the installer does not: "
            + "; ".join(unknown)
        )
    dest.parent.mkdir(parents=True, exist_ok=True)
    _write_private(dest, "".join(line + "\n" for line in lines))
    return dest


def _k0sctl_failure(log_path: Path, code: int) -> str:
    """k0sctl's own last words (its ``level=fatal`` line) for the error, when the log has them."""
    try:
        text = log_path.read_text(errors="replace")
    except OSError:
        text = ""
    fatal = [line for line in text.splitlines() if "level=fatal" in line]
    said = ""
    if fatal:
        start = text.rindex(fatal[-1])
        said = ": " + " ".join(text[start:].split())[:600]
    return f"cluster: k0sctl apply failed with exit code {code}{said}; see {log_path}"


def bring_up(
    config: K0sctlConfig,
    opts: remote.SshOptions,
    workdir: Path,
    echo: Callable[[str], None],
    k0sctl: Optional[Path] = None,
) -> Path:
    """Bring the k0s cluster of ``config`` up; returns the admin kubeconfig written in ``workdir``.

    With ``k0sctl`` (the bundle's, a verified copy): every host's key checked against the installer's
    known_hosts first (``known_hosts_for_k0sctl``), then ``k0sctl apply --config`` on the site's own
    file with ``SSH_KNOWN_HOSTS`` set to those entries, then ``k0sctl kubeconfig``. Without: k0s's
    own joins (``_join_by_tokens``), as k0sctl would run them.

    Raises:
        InstallError: a host key unknown, k0sctl or k0s failed (exit 6, naming the node and what k0s said).
    """
    logs = workdir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    target = workdir / KUBECONFIG
    if k0sctl is not None:
        known = known_hosts_for_k0sctl(config, opts, workdir / "k0s" / "known_hosts")
        env = dict(os.environ, SSH_KNOWN_HOSTS=str(known))
        log_path = logs / "k0sctl-apply.log"
        echo(f"k0sctl apply --config {config.path} (log: {log_path})")
        with open(str(log_path), "ab") as log:
            code = subprocess.call(
                [str(k0sctl), "apply", "--config", str(config.path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )
        if code != 0:
            raise InstallError(_k0sctl_failure(log_path, code))
        done = subprocess.run(
            [str(k0sctl), "kubeconfig", "--config", str(config.path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )
        if done.returncode != 0:
            raise InstallError(
                f"cluster: k0sctl kubeconfig failed: {done.stderr.decode(errors='replace')[-400:]}"
            )
        text, source = done.stdout.decode(errors="replace"), "k0sctl kubeconfig"
    else:
        text = _join_by_tokens(config, opts, echo)
        source = f"{config.controllers[0].node.name}'s k0s kubeconfig admin"
    return kubeconfigs.save(text, source, target)


def _k0s(host: Host, opts: remote.SshOptions, args: str) -> str:
    try:
        return remote.run(host.node, opts, f"{remote.sudo_prefix(host.node)}{K0S} {args}", timeout=600)
    except remote.RemoteError as exc:
        raise InstallError(f"cluster: {host.node.name}: k0s {args.split(' --')[0]}: {exc}") from None


def _send(host: Host, opts: remote.SshOptions, path: str, text: str) -> None:
    """``text`` at ``path`` on ``host``, mode 0600, its folder made: written to a fresh temporary
    file beside it (``mktemp``: 0600 from its creation) and renamed over ``path``, so a file that
    was there keeps neither its old mode nor, if it was a link, sends the secret where it points,
    and an interrupted write leaves the old file whole."""
    q = shlex.quote
    folder = q(path.rsplit("/", 1)[0] or "/")
    script = (
        f"set -e; mkdir -p {folder}; t=$(mktemp {folder}/.airbundle.XXXXXX); trap 'rm -f \"$t\"' EXIT; "
        f'chmod 600 "$t"; cat > "$t"; mv -f "$t" {q(path)}; trap - EXIT'
    )
    write = f"{remote.sudo_prefix(host.node)}sh -c {q(script)}"
    data = text.encode()

    def send(out: IO[bytes]) -> None:
        out.write(data)

    try:
        remote.stream(host.node, opts, write, send)
    except remote.RemoteError as exc:
        raise InstallError(f"cluster: {host.node.name}: writing {path}: {exc}") from None


def token_id(token: str) -> str:
    """The ID of a k0s join token (``k0s token list`` shows it; ``k0s token invalidate`` takes it):
    the token is a base64 gzipped kubeconfig whose user's bootstrap token is ``ID.SECRET``."""
    # A token is a small kubeconfig: bounded before and while it is inflated (a node's answer is
    # not trusted to be one; a gzip bomb would otherwise fill the control node's memory).
    if len(token) > MAX_TOKEN:
        raise InstallError(f"cluster: k0s token create printed {len(token)} bytes, not a join token")
    try:
        inflate = zlib.decompressobj(16 + zlib.MAX_WBITS)
        raw = inflate.decompress(base64.b64decode(token.strip()), MAX_TOKEN)
        if inflate.unconsumed_tail:
            raise ValueError(f"it inflates past {MAX_TOKEN} bytes")
        kubeconfig = raw.decode()
    except (ValueError, zlib.error) as exc:
        raise InstallError(f"cluster: k0s token create printed no join token ({exc})") from None
    match = re.search(r"token:\s*([a-z0-9]{6})\.[a-z0-9]{16}", kubeconfig)
    if match is None:
        raise InstallError("cluster: k0s token create printed a join token without a bootstrap token ID")
    return match.group(1)


def _flags(flags: List[str]) -> str:
    return " ".join(shlex.quote(f) for f in flags)


def _join_by_tokens(config: K0sctlConfig, opts: remote.SshOptions, echo: Callable[[str], None]) -> str:
    """k0s's own bring-up, as k0sctl runs it: the k0s config on every controller, the first installed
    and started, then each other controller and each worker joined with a token of its role made on
    the first (it expires within the hour); after the joins (or a failed one) every token made is
    invalidated and every token file removed."""
    leader, others = config.controllers[0], config.controllers[1:]
    workers = [h for h in config.hosts if h.role == "worker"]
    data = f"--data-dir={shlex.quote(leader.data_dir)}"
    for host in config.controllers:
        echo(f"  {host.node.name}: k0s config {host.config_path} (0600, written beside and renamed)")
        _send(host, opts, host.config_path, config.k0s_yaml(host))
    flags = _flags(leader.install_flags_for(True, ""))
    echo(f"  {leader.node.name}: k0s install controller {flags}")
    _k0s(leader, opts, f"install controller {flags}")
    _k0s(leader, opts, "start")
    made: List[str] = []
    joined: List[Tuple[Host, str]] = []
    try:
        for role, group in (("controller", others), ("worker", workers)):
            for host in group:
                # A join token lets a machine join as that role (a controller's gets the CA): it
                # expires within the hour instead of never (k0s's default), and is invalidated below.
                # --wait: the first controller's API answers a moment after `k0s start` returns
                token = _k0s(leader, opts, f"token create {data} --role={role} --expiry={JOIN_TTL} --wait")
                made.append(token_id(token))
                path = flag_value(host.install_flags, "--token-file") or f"{TOKEN_DIR}/{role}-token"
                _send(host, opts, path, token)
                joined.append((host, path))
                extra = _flags(host.install_flags_for(False, path))
                echo(f"  {host.node.name}: k0s install {role} {extra}")
                _k0s(host, opts, f"install {role} {extra}")
                _k0s(host, opts, "start")
    except InstallError:
        _forget_tokens(leader, opts, data, made, joined, echo, quiet=True)
        raise
    _forget_tokens(leader, opts, data, made, joined, echo)
    text = _k0s(leader, opts, f"kubeconfig admin {data}")
    return text.replace("https://localhost:6443", f"https://{Endpoint(leader.node.address)}")


def _forget_tokens(
    leader: Host,
    opts: remote.SshOptions,
    data: str,
    made: List[str],
    joined: List[Tuple[Host, str]],
    echo: Callable[[str], None],
    quiet: bool = False,
) -> None:
    """Invalidate the join tokens ``made`` on the first controller (then check ``k0s token list``
    shows none of them) and remove the token files from the hosts that were given one. With
    ``quiet`` (cleaning up after a failed join) a failure here is reported, not raised, so the
    error that stopped the joins is the one the operator sees."""
    try:
        if made:
            echo(f"  {leader.node.name}: k0s token invalidate {' '.join(made)}")
            _k0s(leader, opts, f"token invalidate {data} {' '.join(made)}")
            listed = _k0s(leader, opts, f"token list {data}")
            left = [t for t in made if any(line.split()[:1] == [t] for line in listed.splitlines())]
            if left:
                raise InstallError(
                    f"cluster: {leader.node.name}: k0s token list still shows {', '.join(left)} after "
                    "k0s token invalidate; invalidate them there by hand "
                    f"(k0s token invalidate {' '.join(left)})"
                )
        for host, path in joined:
            _k0s_shell(host, opts, f"rm -f {shlex.quote(path)}")
    except InstallError as exc:
        if not quiet:
            raise
        echo(f"  could not clean up the join tokens: {exc}")


def _k0s_shell(host: Host, opts: remote.SshOptions, command: str) -> None:
    try:
        remote.run(host.node, opts, f"{remote.sudo_prefix(host.node)}{command}", timeout=60)
    except remote.RemoteError as exc:
        raise InstallError(f"cluster: {host.node.name}: {command}: {exc}") from None
