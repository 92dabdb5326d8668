"""The rpm route of the packages phase, and which nodes take it: Rocky/RHEL nodes install the
bundle's rpm-md repository with dnf (or yum), from it alone.

Which nodes are Rocky/RHEL is ``nodeos``'s to say. ``rpms_tar`` streams the bundle's ``rpms/`` folder (rpms,
``repodata/``, the sources' keys) with a SHA256SUMS of the rpms; ``install_script`` is the shell
that checks those sums on the node, writes a repository file in a private reposdir (so the
node's own repositories are never read) and runs ``dnf --disablerepo='*' --enablerepo=airbundle``
with ``gpgcheck`` against the bundled keys, no weak dependencies and no plugins.

Pure apart from reading the unpacked bundle; it runs nothing itself (``apply`` does, over SSH).
Carried into bundles: standard library only, Python 3.6.
"""

import io
import posixpath
import shlex
import tarfile
from pathlib import Path
from typing import IO, List, Optional

from bundler.lock import Lock

KEY_PREFIX = "RPM-GPG-KEY-source-"  # rpms/RPM-GPG-KEY-source-N, written by the build
REPO_ID = "airbundle"


def rpms_tar(lock: Lock, bundle_dir: Path, out: IO[bytes]) -> None:
    """The bundle's ``rpms/`` folder and a SHA256SUMS of its rpms, as a tar stream."""
    sums = "".join(f"{r.sha256}  {posixpath.basename(r.path)}\n" for r in lock.rpms).encode()
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("SHA256SUMS")
        info.size = len(sums)
        tar.addfile(info, io.BytesIO(sums))
        for member in _members(lock):
            tar.add(str(bundle_dir / member), arcname=member[len("rpms/") :], recursive=False)


def _members(lock: Lock) -> List[str]:
    """The ``rpms/`` members, carried or (a delta bundle) inherited from the base's unpacked copy."""
    return sorted(m.path for m in list(lock.members) + list(lock.inherited) if m.path.startswith("rpms/"))


def key_files(lock: Lock) -> List[str]:
    """The bundled keys' file names (one per source that named a gpgkey)."""
    names = [posixpath.basename(path) for path in _members(lock)]
    return sorted(n for n in names if n.startswith(KEY_PREFIX))


def install_script(repo: str, packages: List[str], keys: List[str], root: Optional[str], release: str) -> str:
    """Shell that installs ``packages`` with dnf (yum where dnf is missing) from ``repo`` alone.

    ``gpgcheck`` uses the bundled keys when every source had one (the rpms were checked against
    them at build time, and dnf checks again here); otherwise the bytes are vouched for by the
    signed lock and SHA256SUMS only, as the Debian route's ``trusted=yes`` is. ``root``: a
    private installroot (tests, image builds), whose release dnf cannot read from an rpm database
    yet: ``release`` (the bundle's major release) is given then.
    """
    q = shlex.quote
    reposdir = repo + ".repos.d"
    gpg = "gpgcheck=1\\ngpgkey={}\\n".format(" ".join(f"file://{repo}/{k}" for k in keys))
    text = "[{}]\\nname=airbundle bundle\\nbaseurl=file://{}\\nenabled=1\\n{}".format(
        REPO_ID, repo, gpg if keys else "gpgcheck=0\\n"
    )
    opts = [
        "-y",
        "-q",
        "--noplugins",
        "--disablerepo=*",
        "--enablerepo=" + REPO_ID,
        "--setopt=reposdir=" + reposdir,
        "--setopt=install_weak_deps=False",
        "--setopt=cachedir=" + repo + ".cache",
    ]
    if root:
        opts += ["--installroot=" + root, "--releasever=" + release]
    return (
        "set -e; cd {repo} && sha256sum -c --quiet SHA256SUMS; mkdir -p {reposdir}; "
        "printf %b {text} > {reposdir}/{rid}.repo; "
        "if command -v dnf >/dev/null 2>&1; then pm=dnf; elif command -v yum >/dev/null 2>&1; then pm=yum; "
        "else echo 'neither dnf nor yum on this node' >&2; exit 1; fi; "
        "$pm {opts} install {packages}"
    ).format(
        repo=q(repo),
        reposdir=q(reposdir),
        text=q(text),
        rid=REPO_ID,
        opts=" ".join(q(o) for o in opts),
        packages=" ".join(q(p) for p in packages),
    )
