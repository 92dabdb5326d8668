"""The admin kubeconfig a cluster node hands back, checked before it is kept.

A kubeconfig is not only data: kubectl runs a user's ``exec`` command, loads an ``auth-provider``
plugin, reads the files that ``certificate-authority``, ``client-certificate``, ``client-key`` and
``tokenFile`` name, and sends through a ``proxy-url``. The admin kubeconfig comes from a node
(``cat /etc/kubernetes/admin.conf``, ``k0s kubeconfig admin``, ``k0sctl kubeconfig``) and is then
given, as ``KUBECONFIG``, to the steps, which run as root on the control node: a node that lies
would otherwise run its command here. ``checked`` therefore keeps only what an admin kubeconfig
holds (clusters with an https server and inline CA data, users with inline certificate, key or
token, contexts) and refuses anything else, naming the field; ``save`` writes the result 0600.

It does not fetch the kubeconfig (the bring-ups do) nor decide where it goes (``apply``).
Carried in bundles: python3 3.6, stdlib only (the vendored YAML reader).
"""

from pathlib import Path
from typing import Any, Dict, List

from bundler.archive import atomic_output, write_all
from bundler.errors import InstallError
from bundler.installer._vendor import yaml

CLUSTER_KEYS = ("server", "certificate-authority-data", "tls-server-name")
USER_KEYS = ("client-certificate-data", "client-key-data", "token")
CONTEXT_KEYS = ("cluster", "user", "namespace")
# what each list's entries hold, and the keys allowed in the mapping under that name
_SECTIONS = (
    ("clusters", "cluster", CLUSTER_KEYS),
    ("users", "user", USER_KEYS),
    ("contexts", "context", CONTEXT_KEYS),
)


def checked(text: str, source: str) -> Dict[str, Any]:
    """The kubeconfig in ``text`` (from ``source``, e.g. ``node cp-1's /etc/kubernetes/admin.conf``)
    reduced to its clusters, users, contexts and current context.

    Raises:
        InstallError: it is not a kubeconfig, or holds something kubectl would run, load or read
            from this machine (exit 6); nothing is written.
    """

    def refuse(what: str) -> InstallError:
        return InstallError(
            f"cluster: the kubeconfig from {source} {what}; refused, nothing saved (an admin "
            "kubeconfig holds only servers, certificates, keys and tokens: check that node)"
        )

    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise refuse(f"is not YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(raw, dict) or raw.get("kind", "Config") != "Config":
        raise refuse("is not a kubeconfig (kind: Config)")
    out: Dict[str, Any] = {"apiVersion": "v1", "kind": "Config"}
    for section, inner, allowed in _SECTIONS:
        entries = raw.get(section) or []
        if not isinstance(entries, list):
            raise refuse(f"has a {section} that is not a list")
        kept: List[Dict[str, Any]] = []
        for i, entry in enumerate(entries):
            body = entry.get(inner) if isinstance(entry, dict) else None
            if not isinstance(body, dict) or not isinstance(entry.get("name"), str):
                raise refuse(f"has a {section}[{i}] without a name and a {inner} mapping")
            for key, value in body.items():
                if key not in allowed:
                    raise refuse(f"has {section}[{i}].{inner}.{key} (kubectl would act on it here)")
                if not isinstance(value, str):
                    raise refuse(f"has a {section}[{i}].{inner}.{key} that is not a string")
            if inner == "cluster" and not str(body.get("server", "")).startswith("https://"):
                raise refuse(f"has {section}[{i}].cluster.server that is not an https:// URL")
            kept.append({"name": entry["name"], inner: dict(body)})
        out[section] = kept
    current = raw.get("current-context", "")
    if not isinstance(current, str):
        raise refuse("has a current-context that is not a string")
    out["current-context"] = current
    return out


def save(text: str, source: str, target: Path) -> Path:
    """``checked(text)`` written to ``target`` (0600, atomically); returns ``target``."""
    data = yaml.safe_dump(checked(text, source), default_flow_style=False, sort_keys=False).encode()
    with atomic_output(target, mode=0o600) as fd:
        write_all(fd, data)
    return target
