"""The rpm closure as libsolv computes it: a small program run by the build host's system python3.

libsolv is the solver dnf and yum use (through libdnf); its Python bindings (Debian's
``python3-solv``) live in the system python, not in airbundle's venv, so
``bundler.rpmsolve`` runs this file as ``/usr/bin/python3 -I solvhelper.py`` with a JSON
job on stdin and reads a JSON answer on stdout. It reads the verified ``primary.xml`` and
``filelists.xml`` (file provides) of each source, treats the baseline and ``exclude`` as an
installed system, and asks for what ``dnf install --setopt=install_weak_deps=False`` asks:
requests by name (and, as dnf does, any package obsoleting the named one), pins as
``name = version``, no weak dependencies, the best architecture for the platform
(``pool.setarch``: x86_64 over i686, noarch anywhere).

It does no network or file writes, and imports nothing from airbundle: it is its own process.
Not here: fetching and verifying what it reads (``bundler.rpmsource``).
"""

from __future__ import annotations

import functools
import json
import os
import sys
from typing import Any

import solv  # type: ignore[import-not-found,unused-ignore]


def _open(path: str, hint: str) -> Any:
    """A libsolv file handle; ``hint`` (the name in repomd.xml) tells it the compression."""
    fd = os.open(path, os.O_RDONLY)
    return solv.xfopen_fd(hint, fd)


def _load(pool: Any, job: dict[str, Any]) -> list[Any]:
    repos = []
    for i, src in enumerate(job["repos"]):
        repo = pool.add_repo(f"s{i}")
        f = _open(src["primary"], src["primary_name"])
        if not repo.add_rpmmd(f, None, 0):
            raise ValueError(f"source {i}: libsolv cannot read primary.xml: {pool.errstr}")
        f.close()
        if src.get("filelists"):
            f = _open(src["filelists"], src["filelists_name"])
            repo.add_rpmmd(f, None, solv.Repo.REPO_EXTEND_SOLVABLES)
            f.close()
        repos.append(repo)
    return repos


def _system(pool: Any, job: dict[str, Any]) -> Any:
    """The baseline as an installed repository: each package with the provides its copy in a source
    has (so file and library requires on it are met), else its name at its version; ``exclude``
    names as present at no known version (an unversioned provide meets any relation, as in rpm)."""
    system = pool.add_repo("@System")
    by_nevra = {}
    for s in pool.solvables_iter():
        by_nevra[(s.name, s.evr, s.arch)] = s
    for item in job["installed"]:
        s = system.add_solvable()
        s.name, s.evr, s.arch = item["name"], item["evr"], item["arch"]
        s.add_deparray(solv.SOLVABLE_PROVIDES, pool.Dep(s.name).Rel(solv.REL_EQ, pool.Dep(s.evr)))
        twin = by_nevra.get((s.name, s.evr, s.arch))
        if twin is not None:
            for dep in twin.lookup_deparray(solv.SOLVABLE_PROVIDES):
                s.add_deparray(solv.SOLVABLE_PROVIDES, dep)
            for dep in twin.lookup_deparray(solv.SOLVABLE_OBSOLETES):
                s.add_deparray(solv.SOLVABLE_OBSOLETES, dep)
            for f in twin.Dataiterator(solv.SOLVABLE_FILELIST, None, 0):
                s.add_deparray(solv.SOLVABLE_PROVIDES, pool.Dep(f.str))
    for name in job["exclude"]:
        s = system.add_solvable()
        s.name, s.evr, s.arch = name, "", "noarch"
        s.add_deparray(solv.SOLVABLE_PROVIDES, pool.Dep(name))
    system.internalize()
    pool.installed = system
    return system


def _newer(a: Any, b: Any) -> int:
    """Sort key comparison: the newer of two solvables first (rpm's EVR order)."""
    return int(b.evrcmp(a))


def _request(pool: Any, text: str) -> Any:
    """One request as a job: name (plus its obsoleters, as dnf's selector adds them) or name=version."""
    name, _, version = text.partition("=")
    if version:
        dep = pool.Dep(name).Rel(solv.REL_EQ, pool.Dep(version))
        job = pool.Job(solv.Job.SOLVER_INSTALL | solv.Job.SOLVER_SOLVABLE_NAME, dep.id)
        if not [s for s in job.solvables() if s.repo != pool.installed]:
            have = pool.select(name, solv.Selection.SELECTION_NAME).solvables()
            # Newest first, in rpm's order (epoch, then version and release as rpmvercmp compares).
            newest = functools.cmp_to_key(_newer)
            found = {s.evr: s for s in have if s.repo != pool.installed}
            versions = [s.evr for s in sorted(found.values(), key=newest)]
            return None, f"{text}: no such version (available: {', '.join(versions) or 'none'})"
        return job, None
    found = pool.select(name, solv.Selection.SELECTION_NAME | solv.Selection.SELECTION_DOTARCH)
    if found.isempty():  # dnf install also takes a provide (a library soname, a file path)
        found = pool.select(name, solv.Selection.SELECTION_PROVIDES | solv.Selection.SELECTION_FILELIST)
    if found.isempty():
        return None, f"{text}: no package of that name (or providing it) for this architecture in any source"
    ids = {s.id for s in found.solvables()}
    for s in list(found.solvables()):
        exact = pool.Dep(s.name).Rel(solv.REL_EQ, pool.Dep(s.evr))
        for o in pool.whatmatchesdep(solv.SOLVABLE_OBSOLETES, exact):
            if o.repo != pool.installed:
                ids.add(o.id)
    return pool.Job(
        solv.Job.SOLVER_INSTALL | solv.Job.SOLVER_SOLVABLE_ONE_OF, pool.towhatprovides(sorted(ids))
    ), None


def solve(job: dict[str, Any]) -> dict[str, Any]:
    pool = solv.Pool()
    pool.setdisttype(solv.Pool.DISTTYPE_RPM)
    pool.setarch(job["arch"])
    repos = _load(pool, job)
    _system(pool, job)
    pool.addfileprovides()
    pool.createwhatprovides()
    jobs = []
    missing = []
    for text in job["requests"]:
        one, why = _request(pool, text)
        if one is None:
            missing.append(why)
            continue
        jobs.append(one)
    for name in job["exclude"]:
        for s in pool.select(name, solv.Selection.SELECTION_NAME).solvables():
            if s.repo != pool.installed:
                jobs.append(pool.Job(solv.Job.SOLVER_LOCK | solv.Job.SOLVER_SOLVABLE, s.id))
    if missing:
        return {"problems": missing}
    solver = pool.Solver()
    solver.set_flag(solv.Solver.SOLVER_FLAG_IGNORE_RECOMMENDED, 1)
    solver.set_flag(solv.Solver.SOLVER_FLAG_BEST_OBEY_POLICY, 1)
    problems = solver.solve(jobs)
    if problems:
        out = []
        for problem in problems:
            out.append(
                "; ".join(r.info().problemstr() for r in problem.findallproblemrules()) or str(problem)
            )
        return {"problems": out}
    new = solver.transaction().newsolvables()
    index = {repo.name: i for i, repo in enumerate(repos)}
    chosen = {s.id: s for s in new}
    reasons = _reasons(pool, job, chosen)
    return {
        "chosen": [
            {
                "source": index[s.repo.name],
                "name": s.name,
                "evr": s.evr,
                "arch": s.arch,
                "reason": reasons[s.id],
            }
            for s in sorted(new, key=lambda p: (p.name, p.arch))
        ]
    }


def _reasons(pool: Any, job: dict[str, Any], chosen: dict[int, Any]) -> dict[int, str]:
    """Why each package is there: "requested", or the first chosen package (breadth-first from the
    requests) whose Requires it meets."""
    requested = {t.partition("=")[0] for t in job["requests"]}
    reasons: dict[int, str] = {}
    queue = []
    for sid, s in chosen.items():
        provides = {d.str().split(" ")[0] for d in s.lookup_deparray(solv.SOLVABLE_PROVIDES)}
        if s.name in requested or provides & requested:
            reasons[sid] = "requested"
            queue.append(s)
    while queue:
        s = queue.pop(0)
        for dep in s.lookup_deparray(solv.SOLVABLE_REQUIRES):
            for p in pool.whatprovides(dep):
                if p.id in chosen and p.id not in reasons:
                    reasons[p.id] = s.name
                    queue.append(p)
    for sid in chosen:
        reasons.setdefault(sid, "requested")  # an obsoleter standing in for a request
    return reasons


def main() -> int:
    job = json.load(sys.stdin)
    try:
        answer = solve(job)
    except (ValueError, OSError) as exc:
        answer = {"error": str(exc)}
    sys.stdout.write(json.dumps(answer))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
