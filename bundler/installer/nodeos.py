"""Which OS a node runs, from its ``/etc/os-release``, and whether a bundle's packages fit it.

``OS_RELEASE_LINE`` is the preflight's shell for the fields that matter (ID, VERSION_ID, ID_LIKE);
``parse_os`` reads its answer; ``os_problem`` says why a node cannot take the bundle: another OS
(``ID``: debian, ubuntu, astra, rocky ...), another release (Debian-family ``VERSION_CODENAME``;
Rocky/RHEL's major ``VERSION_ID``), an rpm bundle on a Debian-family node or the reverse.

Pure: no I/O (the preflight asks the nodes). Carried into bundles: standard library, Python 3.6.
"""

from typing import Dict, Optional

from bundler.lock import Lock

RPM_OS_IDS = ("rocky", "rhel", "centos", "almalinux", "ol", "fedora")
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
    node_id = os.get("id") or "unknown"
    if plat.get("os") and node_id != "unknown" and node_id != plat.get("os"):
        # Debian and its derivatives are told apart by ID as well: Ubuntu 22.04 is "ubuntu jammy",
        # Astra Linux SE 1.7 "astra 1.7_x86-64" (1.8: 1.8_x86-64; its point releases 1.7.5 and
        # 1.7.6 share the codename and the repository layout, so one bundle serves both).
        return f"OS {node_id} {codename}, the bundle is for {want}; build one for this OS"
    if codename != plat.get("codename"):
        return "OS codename {}, the bundle is for {}; build one for {} {}".format(
            codename, plat.get("codename"), node_id, codename
        )
    return None
