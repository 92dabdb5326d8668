"""The rpm dependency closure, decided by libsolv (dnf's own solver) in the system python3.

Why libsolv and not a resolver of our own: rpm's dependency language (versioned and file
requires, rich dependencies ``(a or b)``/``(a if b)``, obsoletes, arch policy and x86_64
multilib) is exactly what libsolv implements for dnf and yum, and its answers are dnf's
answers (``tests/test_rpms.py`` compares them with ``dnf install --assumeno`` in a private
root). Its bindings (Debian's ``python3-solv``) exist only for the system python3, so this
module runs ``bundler/solvhelper.py`` there as a subprocess with a JSON job and reads its
JSON answer. It is the one module that starts it.

Not here: what the solver reads is fetched and verified by ``bundler.rpmsource``.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bundler import rpms
from bundler.errors import FetchError, InputError

SYSTEM_PYTHON = "/usr/bin/python3"
HELPER = Path(__file__).resolve().parent / "solvhelper.py"


@dataclass(frozen=True)
class Installed:
    """A package the target already has (``rpms.baseline``: a line of ``rpm -qa``)."""

    name: str
    evr: str
    arch: str


@dataclass(frozen=True)
class SourceFiles:
    """A source's verified metadata files as libsolv reads them (the names give the compression)."""

    primary: Path
    primary_name: str
    filelists: Path | None
    filelists_name: str


@dataclass(frozen=True)
class Chosen:
    """A package of the closure: its source, NEVRA and why it is there."""

    source: int
    name: str
    evr: str
    arch: str
    reason: str


class ResolveError(FetchError):
    """The requests cannot be met from the sources (exit 5): libsolv's problems, each a sentence."""


def parse_rpm_qa(text: str, where: str) -> list[Installed]:
    """``rpm -qa`` output (``name-version-release.arch`` per line; ``%{EPOCH}:`` allowed before the
    version with ``--qf '%{NAME}-%{EPOCHNUM}:%{VERSION}-%{RELEASE}.%{ARCH}\\n'``; gpg-pubkey lines
    skipped)."""
    out = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#") or line.startswith("gpg-pubkey-"):
            continue
        head, dot, arch = line.rpartition(".")
        parts = head.rsplit("-", 2)
        if not dot or len(parts) != 3 or not all(parts) or not arch:
            raise InputError(f"{where}:{number}: {line!r} is not NAME-VERSION-RELEASE.ARCH (rpm -qa output)")
        name, version, release = parts
        if version.startswith("0:"):
            version = version[2:]
        out.append(Installed(name, f"{version}-{release}", arch))
    return out


def resolve(
    sources: Sequence[SourceFiles],
    arch: str,
    requests: Sequence[str],
    installed: Sequence[Installed] = (),
    exclude: Sequence[str] = (),
) -> list[Chosen]:
    """What ``dnf install --setopt=install_weak_deps=False REQUESTS`` would install on a target of
    ``arch`` (rpm's name: x86_64, aarch64) that has ``installed`` and ``exclude``.

    Raises:
        ResolveError: a request cannot be met, with libsolv's own sentence (exit 5).
        FetchError: the system python3 or its python3-solv is missing (exit 5, saying what to install).
    """
    job = {
        "arch": arch,
        "repos": [
            {
                "primary": str(s.primary),
                "primary_name": s.primary_name,
                "filelists": str(s.filelists) if s.filelists else None,
                "filelists_name": s.filelists_name,
            }
            for s in sources
        ],
        "installed": [{"name": i.name, "evr": i.evr, "arch": i.arch} for i in installed],
        "exclude": list(exclude),
        "requests": list(requests),
    }
    try:
        run = subprocess.run(
            [SYSTEM_PYTHON, "-I", str(HELPER)],
            input=json.dumps(job).encode(),
            capture_output=True,
            timeout=3600,
        )
    except subprocess.TimeoutExpired:
        raise FetchError(
            "the rpm closure did not finish within an hour (libsolv); check the sources' size"
        ) from None
    except FileNotFoundError:
        raise FetchError(
            f"{SYSTEM_PYTHON} is missing: the rpm closure is computed by libsolv's bindings there; "
            "install the Debian packages python3 and python3-solv"
        ) from None
    err = run.stderr.decode(errors="replace").strip()
    if run.returncode != 0 or not run.stdout:
        if "No module named 'solv'" in err:
            raise FetchError(
                "the rpm closure needs libsolv's Python bindings: install the Debian package python3-solv"
            )
        raise FetchError(
            f"the rpm solver (libsolv) failed: {err.splitlines()[-1] if err else run.returncode}"
        )
    answer = json.loads(run.stdout)
    if "error" in answer:
        raise FetchError(f"the rpm solver (libsolv) cannot read the metadata: {answer['error']}")
    if "problems" in answer:
        raise ResolveError("; ".join(answer["problems"]))
    return [Chosen(c["source"], c["name"], c["evr"], c["arch"], c["reason"]) for c in answer["chosen"]]


def target_arch(debian_arch: str) -> str:
    """rpm's name for the manifest's ``platform.arch`` (Debian's spelling)."""
    return rpms.RPM_ARCH.get(debian_arch, debian_arch)
