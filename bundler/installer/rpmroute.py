"""The rpm route of the packages phase, and which nodes take it: Rocky/RHEL nodes install the
bundle's rpm-md repository with dnf (or yum), from it alone.

``node_os`` reads a node's ``/etc/os-release`` fields (ID, ID_LIKE, VERSION_ID); ``os_problem``
says why a node cannot take this bundle's packages (an rpm-only bundle on a Debian node and the
reverse, or another major release). ``rpms_tar`` streams the bundle's ``rpms/`` folder (rpms,
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
from typing import IO, Dict, List, Optional

from bundler.lock import Lock

RPM_OS_IDS = ("rocky", "rhel", "centos", "almalinux", "ol", "fedora")
KEY_PREFIX = "RPM-GPG-KEY-source-"  # rpms/RPM-GPG-KEY-source-N, written by the build
REPO_ID = "airbundle"
# One line of the preflight's answer: the os-release fields the route depends on.
OS_RELEASE_LINE = 'echo "os=${ID:-unknown}|${VERSION_ID:-unknown}|${ID_LIKE:-}"'


def parse_os(line: str) -> Dict[str, str]:
    """``os=ID|VERSION_ID|ID_LIKE`` (``OS_RELEASE_LINE``) as a dict; unknown fields empty."""
    fields = (line.partition("=")[2] + "||").split("|")
    return {"id": fields[0].strip('"'), "version_id": fields[1].strip('"'), "id_like": fields[2].strip('"')}


def is_rpm_node(os: Dict[str, str]) -> bool:
    """A Rocky/RHEL-family node: its ID, or an ID_LIKE naming rhel or fedora."""
    like = os.get("id_like", "").split()
    return os.get("id", "") in RPM_OS_IDS or "rhel" in like or "fedora" in like


def is_rpm_bundle(lock: Lock) -> bool:
    """The bundle is for Rocky/RHEL nodes: it carries rpms (and no Debian packages), or its
    platform names an rpm distribution."""
    return (bool(lock.rpms) and not lock.debs) or lock.platform.get("os", "") in RPM_OS_IDS


def os_problem(lock: Lock, os: Dict[str, str], codename: str) -> Optional[str]:
    """Why a node of this OS cannot take the bundle's packages, or None."""
    plat = lock.platform
    want = "{} {}".format(plat.get("os"), plat.get("codename"))
    seen = "{} {}".format(os.get("id") or "unknown", os.get("version_id") or codename)
    if is_rpm_bundle(lock):
        if not is_rpm_node(os):
            return (
                f"OS {seen} (/etc/os-release), but the bundle is for {want} and carries rpm packages (dnf); "
                "build a bundle with debs: for this node's OS"
            )
        major = (os.get("version_id") or "").split(".")[0]
        if major != plat.get("codename"):
            return "OS {}, the bundle is for {} (rpms.sources of release {}); build one for {}".format(
                seen, want, plat.get("codename"), major or "this release"
            )
        return None
    if lock.debs and is_rpm_node(os):
        return (
            f"OS {seen} (/etc/os-release) installs rpm packages with dnf, but the bundle carries Debian "
            f"packages for {want}; build a bundle with rpms: for this node"
        )
    if codename != plat.get("codename"):
        return "OS codename {}, the bundle is for {}".format(codename, plat.get("codename"))
    return None


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
