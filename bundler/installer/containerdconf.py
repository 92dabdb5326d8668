"""containerd's configuration for the kubelet on kubeadm nodes: ``/etc/containerd/config.toml``, and
the registry mirrors of ``/etc/containerd/certs.d`` in registry mode.

``render`` makes the ``config.toml`` (containerd 1.6 and 1.7, config version 2) from the lock alone
(pure): the CRI plugin enabled (Docker's ``containerd.io`` package ships ``disabled_plugins =
["cri"]``, which kubeadm's preflight refuses), ``sandbox_image`` set to the bundle's pause image under
its exact name (else the kubelet's first pod sandbox asks a registry the site cannot reach),
``SystemdCgroup = true`` for runc (kubeadm writes ``cgroupDriver: systemd`` for the kubelet since
1.22, and both must agree), and ``config_path`` pointing the CRI's pulls at ``certs.d``.
``mirror_hosts_toml`` is the ``hosts.toml`` that sends pulls for an upstream registry
(``registry.k8s.io``, ``docker.io``) to the site registry, whose repositories are the images' paths
without their domain (``push.repository``).

``ensure_on`` writes the file on a node over SSH the way nothing is half-written: beside it, checked
by the node's own ``containerd --config TMP config dump``, the first file found there kept once as
``config.toml.airbundle-orig``, renamed into place, then ``systemctl restart containerd``; an
unchanged file changes nothing and restarts nothing (unless containerd is not running). It does not
install containerd (the packages phase) nor put images into it (``ctrimport``).
Carried in bundles: python3 3.6, stdlib only.
"""

import shlex
from typing import IO, Dict

from bundler.errors import InstallError
from bundler.installer import remote
from bundler.installer.inventory import Node

CONFIG = "/etc/containerd/config.toml"
CERTS_D = "/etc/containerd/certs.d"
ORIGINAL = CONFIG + ".airbundle-orig"
CRI = 'plugins."io.containerd.grpc.v1.cri"'

# Where containerd itself pulls a registry from when no hosts.toml says otherwise (its docker
# resolver's default): Docker Hub's API is not at docker.io.
_UPSTREAM: Dict[str, str] = {"docker.io": "https://registry-1.docker.io"}


def _quoted(value: str) -> str:
    """A TOML basic string (image names and paths hold no quote or backslash, but be exact)."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def render(sandbox_image: str) -> str:
    """The ``config.toml`` for a kubeadm node whose pod sandbox image is ``sandbox_image``."""
    runc = f"{CRI}.containerd.runtimes.runc"
    return (
        "# Written by airbundle for kubeadm: the CRI plugin on, the bundle's pause image as the pod\n"
        f"# sandbox, runc with the systemd cgroup driver (as the kubelet), registries from {CERTS_D}.\n"
        f"# The file found here before, if any, is {ORIGINAL}.\n"
        "version = 2\n"
        "disabled_plugins = []\n\n"
        "[plugins]\n"
        f"  [{CRI}]\n"
        f"    sandbox_image = {_quoted(sandbox_image)}\n"
        f"    [{CRI}.containerd]\n"
        '      default_runtime_name = "runc"\n'
        f"      [{runc}]\n"
        '        runtime_type = "io.containerd.runc.v2"\n'
        f"        [{runc}.options]\n"
        "          SystemdCgroup = true\n"
        f"    [{CRI}.registry]\n"
        f"      config_path = {_quoted(CERTS_D)}\n"
    )


def mirror_hosts_toml(upstream: str, address: str) -> bytes:
    """``certs.d/UPSTREAM/hosts.toml``: pull ``upstream``'s images from the site registry at
    ``address`` over HTTPS with the CA written beside the registry's own ``hosts.toml``."""
    server = _UPSTREAM.get(upstream, f"https://{upstream}")
    return (
        f'server = "{server}"\n\n[host."https://{address}"]\n'
        f'  capabilities = ["pull", "resolve"]\n  ca = "{CERTS_D}/{address}/ca.crt"\n'
    ).encode()


def _script() -> str:
    """The node's side of ``ensure_on``: the new file on stdin; prints ``changed`` or ``unchanged``."""
    folder = shlex.quote(CONFIG.rsplit("/", 1)[0])
    final, orig = shlex.quote(CONFIG), shlex.quote(ORIGINAL)
    return (
        "set -e; command -v containerd >/dev/null || { echo 'containerd is not installed' >&2; exit 4; }; "
        f"mkdir -p {folder}; t=$(mktemp {folder}/.config.toml.XXXXXX); trap 'rm -f \"$t\"' EXIT; "
        'cat > "$t"; '
        f'if [ -f {final} ] && cmp -s "$t" {final}; then '
        # unchanged: a containerd that is not running (a restart that failed before) is started
        "  systemctl is-active --quiet containerd || systemctl restart containerd; "
        "  echo unchanged; exit 0; fi; "
        # containerd's own parser decides before anything lands
        'if ! out=$(containerd --config "$t" config dump 2>&1 >/dev/null); then echo "$out" >&2; exit 3; fi; '
        'chmod 0644 "$t"; '
        # the file found first is kept once, as a hard link: the rename below leaves it whole
        f"if [ -f {final} ] && [ ! -e {orig} ]; then ln {final} {orig}; fi; "
        f'mv -f "$t" {final}; trap - EXIT; systemctl restart containerd; echo changed'
    )


def ensure_on(node: Node, opts: remote.SshOptions, text: str) -> bool:
    """``CONFIG`` on ``node`` holds ``text`` and containerd runs with it; True when it changed
    (and containerd was restarted).

    Raises:
        InstallError: containerd is missing there, refuses the file (nothing changed), or does
        not come back after the restart; the message names the node.
    """
    command = f"{remote.sudo_prefix(node)}sh -c {shlex.quote(_script())}"
    data = text.encode()

    def send(out: IO[bytes]) -> None:
        out.write(data)

    try:
        out = remote.stream(node, opts, command, send, timeout=300)
    except remote.RemoteError as exc:
        detail = str(exc).split(": ", 1)[-1]
        if "exit code 4" in detail:
            raise InstallError(
                f"{node.name}: containerd is not installed there, so {CONFIG} cannot be written; the "
                "packages phase installs it from the bundle (run the install without --only, or install "
                "containerd)"
            ) from None
        if "exit code 3" in detail:
            raise InstallError(
                f"{node.name}: containerd refuses the {CONFIG} the installer made, so nothing was changed "
                f"there ({detail}); this is a bug of the installer or a containerd too old for config "
                "version 2 (1.6 or later is needed)"
            ) from None
        raise InstallError(f"{node.name}: writing {CONFIG} and restarting containerd: {detail}") from None
    return out.split()[-1:] == ["changed"]
