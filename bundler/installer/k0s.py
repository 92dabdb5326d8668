"""The site bring-up of a k0s cluster: the airgap image bundle on every node that runs workloads,
then ``k0sctl apply`` (when the bundle carries k0sctl) or k0s's own join sequence, and the kubeconfig.

Entry points (narrow, for the cluster-kind interface): ``write_image_bundle`` (the images the
workers need, from the verified bundle, as one uncompressed docker-archive tar, which k0s imports
itself), ``place_images`` (copy it over SSH into ``/var/lib/k0s/images/`` unless the node holds
the same bytes, by SHA-256), ``bring_up`` (k0sctl, else ``k0s install controller`` on the first
controller, a token created there for each other controller and then each worker, ``k0s start``
on each; the admin kubeconfig written 0600 into the work folder). It does not check the topology
(``topology``) nor read the inventory (``k0sctl``), and it prints nothing: ``echo`` is given.

Carried into bundles: standard library only, python3 3.6 syntax.
"""

import hashlib
import os
import shlex
import subprocess
from pathlib import Path
from typing import IO, Callable, List, Optional, Tuple

from bundler import k0simages, oci
from bundler.errors import InstallError
from bundler.installer import kubeconfig as kubeconfigs
from bundler.installer import remote
from bundler.installer.dockerload import docker_load_tar
from bundler.installer.inventory import Node
from bundler.installer.k0sctl import Host, K0sctlConfig
from bundler.lock import Lock

BUNDLE_NAME = "airbundle-images.tar"  # one file of ours among whatever else the folder holds
K0S = "/usr/local/bin/k0s"  # where the binaries phase puts the bundle's k0s (k0sctl looks there too)
TOKEN_DIR = "/etc/k0s"  # noqa: S105 - a folder, not a secret


# The admin kubeconfig the bring-up leaves in the work folder (the steps get it as KUBECONFIG).
KUBECONFIG = "kubeconfig-k0s"
JOIN_TTL = "1h"  # how long a join token the bring-up makes stays good


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


def place_images(node: Node, opts: remote.SshOptions, bundle: Path, sha256: str) -> str:
    """Put ``bundle`` into ``/var/lib/k0s/images/`` on ``node`` unless the same bytes are there;
    returns "placed" or "present". The copy goes to a temporary name and is checked, then renamed,
    so k0s never imports a half-copied file."""
    folder = k0simages.IMAGES_DIR
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


def _install_flags(host: Host, first: bool) -> List[str]:
    extra = {"controller+worker": ["--enable-worker"], "single": ["--single"]}.get(host.role, [])
    return extra + list(host.install_flags)


def bring_up(
    config: K0sctlConfig,
    opts: remote.SshOptions,
    workdir: Path,
    echo: Callable[[str], None],
    k0sctl: Optional[Path] = None,
) -> Path:
    """Bring the k0s cluster of ``config`` up; returns the admin kubeconfig written in ``workdir``.

    With ``k0sctl`` (the bundle's, a verified copy): ``k0sctl apply --config`` on the site's own
    file, then ``k0sctl kubeconfig``. Without: the first controller installed and started, then
    each other controller and each worker joined with a token of its role created on the first.

    Raises:
        InstallError: k0sctl or k0s failed (exit 6, naming the node and what k0s said).
    """
    logs = workdir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    target = workdir / KUBECONFIG
    if k0sctl is not None:
        log_path = logs / "k0sctl-apply.log"
        echo(f"k0sctl apply --config {config.path} (log: {log_path})")
        with open(str(log_path), "ab") as log:
            code = subprocess.call(
                [str(k0sctl), "apply", "--config", str(config.path)], stdout=log, stderr=subprocess.STDOUT
            )
        if code != 0:
            raise InstallError(f"cluster: k0sctl apply failed with exit code {code}; see {log_path}")
        done = subprocess.run(
            [str(k0sctl), "kubeconfig", "--config", str(config.path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
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


def _join_by_tokens(config: K0sctlConfig, opts: remote.SshOptions, echo: Callable[[str], None]) -> str:
    leader, others = config.controllers[0], config.controllers[1:]
    workers = [h for h in config.hosts if h.role == "worker"]
    flags = " ".join(shlex.quote(f) for f in _install_flags(leader, True))
    echo(f"  {leader.node.name}: k0s install controller {flags}".rstrip())
    _k0s(leader, opts, f"install controller {flags}".rstrip())
    _k0s(leader, opts, "start")
    for role, group in (("controller", others), ("worker", workers)):
        for host in group:
            # A join token lets a machine join as that role (a controller's gets the CA): it expires
            # within the hour instead of never (k0s's default).
            token = _k0s(leader, opts, f"token create --role={role} --expiry={JOIN_TTL}")
            path = f"{TOKEN_DIR}/{role}-token"
            sudo = remote.sudo_prefix(host.node)
            write = f"{sudo}mkdir -p {TOKEN_DIR} && {sudo}sh -c {shlex.quote(f'umask 077 && cat > {path}')}"
            data = token.encode()

            def send(out: IO[bytes], data: bytes = data) -> None:
                out.write(data)

            remote.stream(host.node, opts, write, send)
            extra = " ".join(shlex.quote(f) for f in _install_flags(host, False))
            echo(f"  {host.node.name}: k0s install {role} --token-file {path} {extra}".rstrip())
            _k0s(host, opts, f"install {role} --token-file {path} {extra}".rstrip())
            _k0s(host, opts, "start")
    text = _k0s(leader, opts, "kubeconfig admin")
    return text.replace("https://localhost:6443", f"https://{leader.node.address}:6443")
