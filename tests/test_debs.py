"""Debian packages: real signed apt repositories on loopback, the resolver, and apt checking the result."""

from __future__ import annotations

import gzip
import json
import os
import re
import shutil
import subprocess
import tarfile
from dataclasses import dataclass
from dataclasses import replace as dataclasses_replace
from pathlib import Path

import pytest

from bundler import archive, debs
from bundler.errors import FetchError

from .aptrepo import CLOSURE, ENGINE_REQUEST, Served, build_archive, index_repo, status_file
from .conftest import AptRepos, Keys, Project, run_cli


def _packages(repo: AptRepos) -> list[debs.Package]:
    data = (repo.root / "dists/stable/main/binary-amd64/Packages").read_bytes()
    return list(debs.parse_packages([data], repo.url))


def _resolve(repo: AptRepos, *requests: str, arch: str = "amd64") -> dict[str, str]:
    resolver = debs.Resolver(_packages(repo), arch, baseline={"base-files"})
    return {p.name: p.version for p in resolver.resolve(requests).packages}


def test_resolver_closure_matches_apt(apt_repos: AptRepos) -> None:
    assert _resolve(apt_repos, "app", "cyc-a") == CLOSURE


@pytest.mark.parametrize(
    "requests, expected",
    [
        (["old-user"], {"old-user": "1.0", "libbar": "3.0~rc1"}),  # tilde sorts before the release
        (["libfoo=1.5"], {"libfoo": "1.5"}),  # pinned
        (["libfoo"], {"libfoo": "1:0.5"}),  # the epoch wins over 2.1
        (["cyc-b"], {"cyc-a": "1.0", "cyc-b": "1.0"}),  # a cycle ends
    ],
)
def test_resolver_cases(apt_repos: AptRepos, requests: list[str], expected: dict[str, str]) -> None:
    assert _resolve(apt_repos, *requests) == expected


@pytest.mark.parametrize(
    "request_, message",
    [
        ("broken", "broken → missing-lib (>= 1) → not found in any source"),
        ("nope", "nope (not found in any source)"),
        ("libfoo=9", "libfoo=9 (available: 1:0.5, 2.1, 1.5)"),
        ("armonly", "armonly (not found in any source)"),  # an arm64 package is no candidate on amd64
        (
            "wants-any",
            "wants-any → foreign-tool:any → not found in any source",
        ),  # M-A: foreign can't meet :any
    ],
)
def test_resolver_failures_show_the_chain(apt_repos: AptRepos, request_: str, message: str) -> None:
    with pytest.raises(debs.ResolveError) as info:
        _resolve(apt_repos, request_)
    assert str(info.value) == message


def test_version_ordering() -> None:
    assert debs.compare_versions("1:0.5", "2.1") > 0
    assert debs.compare_versions("3.0~rc1", "3.0") < 0
    assert debs.compare_versions("1.0-1", "1.0-1") == 0


def _manifest(
    project: Project,
    repos: AptRepos,
    packages: str = "[app, cyc-a]",
    source: str | None = None,
    extra: str = "",
) -> Path:
    source = source or (
        f"    - url: {repos.url}\n      suite: stable\n      components: [main]\n"
        f"      keyring: payloads/repo.gpg\n"
    )
    shutil.copy(repos.keyring, project.root / "payloads" / "repo.gpg")
    return project.write_manifest(
        "apiVersion: airbundle/v1\nkind: Bundle\nname: pkgs\nversion: '1.0'\n"
        "platform: {os: debian, codename: bookworm, arch: amd64}\n"
        f"debs:\n  sources:\n{source}  packages: {packages}\n  exclude: [base-files]\n{extra}",
        "pkgs.yaml",
    )


def _build(keys: Keys, manifest: Path, out: Path, cache: Path):
    return run_cli("build", manifest, "-o", out, "--key", keys.key_path, "--cache", cache)


def test_bundle_debs_install_with_apt_offline(
    project: Project, keys: Keys, tmp_path: Path, cache_dir: Path, apt_repos: AptRepos
) -> None:
    result = _build(keys, _manifest(project, apt_repos), tmp_path / "out", cache_dir)
    assert result.exit_code == 0, result.stderr
    bundle = Path(result.stdout.strip())
    report = archive.verify_bundle(bundle, [keys.pub])
    assert report.problems == []
    lock = report.lock
    assert {d.name: d.version for d in lock.debs} == CLOSURE
    assert {d.name: d.reason for d in lock.debs}["libfoo"] == "app"
    assert lock.apt_sources[0]["trusted"] is False and lock.apt_sources[0]["keyring_sha256"]
    assert {"debs/Packages", "debs/Packages.gz", "debs/Release"} <= {m.path for m in lock.members}
    assert "app" in result.stderr and "1:0.5" in result.stderr  # the resolution table

    # apt itself, with the bundled debs/ as the only source and a target that has base-files.
    site = tmp_path / "site"
    with tarfile.open(bundle) as tar:
        tar.extractall(site, members=[m for m in tar.getmembers() if m.name.startswith("debs/")])
    for deb in (site / "debs").glob("*.deb"):
        subprocess.run(["dpkg-deb", "--info", str(deb)], check=True, capture_output=True)
    status = (
        "Package: base-files\nStatus: install ok installed\nPriority: required\nVersion: 12.4\n"
        "Architecture: amd64\nMaintainer: T <t@example.invalid>\nDescription: base\n"
    )
    sim = apt_simulate(
        tmp_path / "apt", f"deb [trusted=yes] file:{site / 'debs'} ./\n", status, "app", "cyc-a"
    )
    assert sim.returncode == 0, sim.output
    assert sim.installs == CLOSURE


@dataclass
class Simulated:
    returncode: int
    installs: dict[str, str]  # name -> the version apt would install
    output: str
    update: str = ""


def apt_simulate(folder: Path, sources: str, status: str, *packages: str) -> Simulated:
    """``apt-get -s install PACKAGES`` in a private apt root: these sources, this dpkg status."""
    for sub in ("state/lists/partial", "cache/archives/partial"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    (folder / "status").write_text(status)
    (folder / "sources.list").write_text(sources)
    opts = [
        f"-o=Dir::Etc::SourceList={folder / 'sources.list'}",
        "-o=Dir::Etc::SourceParts=/dev/null",
        f"-o=Dir::State={folder / 'state'}",
        f"-o=Dir::Cache={folder / 'cache'}",
        f"-o=Dir::State::status={folder / 'status'}",
        "-o=Debug::NoLocking=1",
        "-o=APT::Architecture=amd64",
        "-o=APT::Architectures=amd64",
        "-o=Acquire::Languages=none",
        "-o=APT::Sandbox::User=root",  # the private lists belong to root; no _apt sandbox warning
    ]
    env = {**os.environ, "LC_ALL": "C"}
    update = subprocess.run(["apt-get", *opts, "update"], capture_output=True, text=True, env=env)
    assert update.returncode == 0 and "W:" not in update.stdout + update.stderr, update.stdout + update.stderr
    sim = subprocess.run(
        ["apt-get", *opts, "--no-install-recommends", "-s", "install", *packages],
        capture_output=True,
        text=True,
        env=env,
    )
    installs = {m[1]: m[2] for m in re.finditer(r"^Inst (\S+) (?:\[[^\]]*\] )?\((\S+)", sim.stdout, re.M)}
    return Simulated(sim.returncode, installs, sim.stdout + sim.stderr, update.stdout + update.stderr)


def test_inspect_shows_the_packages(
    project: Project, keys: Keys, tmp_path: Path, cache_dir: Path, apt_repos: AptRepos
) -> None:
    result = _build(keys, _manifest(project, apt_repos), tmp_path / "out", cache_dir)
    text = run_cli("inspect", result.stdout.strip()).stdout
    assert "debs:" in text and "libfoo" in text and "1:0.5" in text and "(app)" in text


def test_flat_repository_and_armored_keyring(
    project: Project, keys: Keys, tmp_path: Path, cache_dir: Path, apt_repos: AptRepos
) -> None:
    shutil.copy(apt_repos.armored_keyring, project.root / "payloads" / "repo.asc")
    source = f"    - url: {apt_repos.flat_url}\n      flat: true\n      keyring: payloads/repo.asc\n"
    result = _build(keys, _manifest(project, apt_repos, "[prelib]", source), tmp_path / "out", cache_dir)
    assert result.exit_code == 0, result.stderr
    assert [d.name for d in archive.read_lock(Path(result.stdout.strip()))[0].debs] == ["prelib"]


def test_trusted_source_is_recorded(
    project: Project, keys: Keys, tmp_path: Path, cache_dir: Path, apt_repos: AptRepos
) -> None:
    source = (
        f"    - url: {apt_repos.url}\n      suite: stable\n      components: [main]\n      trusted: true\n"
    )
    result = _build(keys, _manifest(project, apt_repos, "[prelib]", source), tmp_path / "out", cache_dir)
    assert result.exit_code == 0, result.stderr
    assert "NOT checked" in result.stderr
    assert archive.read_lock(Path(result.stdout.strip()))[0].apt_sources[0]["trusted"] is True


@pytest.fixture
def repo_copy(apt_repos: AptRepos, tmp_path: Path):
    """A private copy of the repository, served on its own port, for tests that damage it."""
    root = tmp_path / "repo-copy"
    shutil.copytree(apt_repos.root, root)
    served = Served(root)
    yield root, served.url
    served.close()


def _source(url: str) -> str:
    return (
        f"    - url: {url}\n      suite: stable\n      components: [main]\n      keyring: payloads/repo.gpg\n"
    )


def test_tampered_inrelease_is_refused(
    project: Project, keys: Keys, tmp_path: Path, cache_dir: Path, apt_repos: AptRepos, repo_copy
) -> None:
    root, url = repo_copy
    inrelease = root / "dists/stable/InRelease"
    inrelease.write_text(inrelease.read_text().replace("Suite: stable", "Suite: stabl3"))
    result = _build(keys, _manifest(project, apt_repos, source=_source(url)), tmp_path / "out", cache_dir)
    assert result.exit_code == 5 and "signature check failed" in result.stderr
    assert not (tmp_path / "out").exists()


def test_wrong_key_is_refused(
    project: Project, keys: Keys, tmp_path: Path, cache_dir: Path, apt_repos: AptRepos
) -> None:
    manifest = _manifest(project, apt_repos)
    shutil.copy(apt_repos.other_keyring, project.root / "payloads" / "repo.gpg")
    result = _build(keys, manifest, tmp_path / "out", cache_dir)
    assert result.exit_code == 5 and "signature check failed" in result.stderr and "repo.gpg" in result.stderr


def test_deb_not_matching_packages_is_refused(
    project: Project, keys: Keys, tmp_path: Path, cache_dir: Path, apt_repos: AptRepos, repo_copy
) -> None:
    root, url = repo_copy
    deb = next((root / "pool/main").glob("prelib_*.deb"))
    data = bytearray(deb.read_bytes())
    data[-10] ^= 0xFF
    deb.write_bytes(bytes(data))
    result = _build(
        keys, _manifest(project, apt_repos, "[prelib]", _source(url)), tmp_path / "out", cache_dir
    )
    assert result.exit_code == 5 and "sha256 mismatch" in result.stderr and "prelib" in result.stderr
    assert not (tmp_path / "out").exists()


def test_expired_release_is_refused(
    project: Project, keys: Keys, tmp_path: Path, cache_dir: Path, apt_repos: AptRepos, repo_copy
) -> None:
    root, url = repo_copy
    index_repo(root, apt_repos.key, valid_until="Sat, 01 Jan 2000 00:00:00 UTC")  # type: ignore[arg-type]
    result = _build(
        keys, _manifest(project, apt_repos, "[prelib]", _source(url)), tmp_path / "out", cache_dir
    )
    assert result.exit_code == 5 and "Release expired at 2000-01-01" in result.stderr


def test_unresolvable_request_is_exit_5_with_the_chain(
    project: Project, keys: Keys, tmp_path: Path, cache_dir: Path, apt_repos: AptRepos
) -> None:
    result = _build(keys, _manifest(project, apt_repos, "[broken]"), tmp_path / "out", cache_dir)
    assert result.exit_code == 5
    assert "broken → missing-lib (>= 1) → not found in any source" in result.stderr


def test_real_docker_manifest_says_how_to_get_the_key(keys: Keys, tmp_path: Path) -> None:
    """manifests/docker-ce-jammy.yaml: Docker's repository and Ubuntu's archive are placeholders, its key is not on
    this machine: one run names them all."""
    root = Path(__file__).resolve().parent.parent
    manifest = root / "manifests" / "docker-ce-jammy.yaml"
    assert not (root / "payloads" / "keys" / "docker.gpg").exists()
    result = run_cli(
        "build", manifest, "-o", tmp_path / "o", "--key", keys.key_path, "--cache", tmp_path / "c"
    )
    assert result.exit_code == 2
    assert "payloads/keys/docker.gpg' does not exist" in result.stderr
    assert "payloads/keys/README.md" in result.stderr  # which says how to get it
    assert result.stderr.count("marked PLACEHOLDER") == 3  # the repositories' URLs, all at once
    assert not (tmp_path / "o").exists()


def test_dry_run_plans_without_downloading(
    project: Project,
    keys: Keys,
    tmp_path: Path,
    cache_dir: Path,
    apt_repos: AptRepos,
    registries,
    source_engine,
) -> None:
    """--dry-run lists packages, images and binaries with sizes, downloads no payload, writes no bundle."""
    manifest = _manifest(project, apt_repos, extra="")
    text = manifest.read_text()
    host = registries.open.host
    binary = project.origin.routes["/rke_linux-amd64"]
    text += (
        f"images:\n  - ref: {host}/test/app-a:1\nbinaries:\n  - name: rke\n"
        f"    url: {project.origin.base}/rke_linux-amd64\n"
        f"    sha256: {__import__('hashlib').sha256(binary.data).hexdigest()}\n    dest: /usr/local/bin/rke\n"
    )
    manifest.write_text(text)
    result = run_cli(
        "build",
        manifest,
        "--dry-run",
        "--cache",
        cache_dir,
        "--json",
        env={"DOCKER_CONFIG": str(tmp_path / "nodc")},
    )
    assert result.exit_code == 0, result.stderr
    plan = json.loads(result.stdout)
    kinds = {i["kind"] for i in plan}
    assert kinds == {"binary", "deb", "image"}
    debs_planned = {i["name"].split()[0] for i in plan if i["kind"] == "deb"}
    assert debs_planned == set(CLOSURE)
    assert all(i["size"] and not i["cached"] for i in plan)
    assert next(i for i in plan if i["kind"] == "binary")["size"] == len(binary.data)
    assert binary.served == 0  # a HEAD, no download
    cached = list((cache_dir / "sha256").rglob("*.deb")) + [
        p for p in (cache_dir / "sha256").rglob("*") if p.is_file() and p.stat().st_size == len(binary.data)
    ]
    assert cached == []
    text_plan = run_cli(
        "build", manifest, "--dry-run", "--cache", cache_dir, env={"DOCKER_CONFIG": str(tmp_path)}
    )
    assert text_plan.exit_code == 0 and "to fetch:" in text_plan.stdout
    assert run_cli("build", manifest, "--cache", cache_dir).exit_code == 2  # no --key/-o without --dry-run


def test_release_with_detached_signature(
    project: Project, keys: Keys, tmp_path: Path, cache_dir: Path, apt_repos: AptRepos, repo_copy
) -> None:
    """Release + Release.gpg (no InRelease) is checked too; and the bundle is reproducible."""
    root, url = repo_copy
    dist = root / "dists/stable"
    (dist / "InRelease").unlink()
    key = apt_repos.key
    subprocess.run(
        [
            *key.gpg,
            "--yes",
            "--armor",
            "--detach-sign",
            "-o",
            str(dist / "Release.gpg"),  # type: ignore[attr-defined]
            str(dist / "Release"),
        ],
        check=True,
        capture_output=True,
    )
    manifest = _manifest(project, apt_repos, "[old-user]", _source(url))
    first = _build(keys, manifest, tmp_path / "a", cache_dir)
    assert first.exit_code == 0, first.stderr
    assert {d.name: d.version for d in archive.read_lock(Path(first.stdout.strip()))[0].debs} == {
        "old-user": "1.0",
        "libbar": "3.0~rc1",
    }
    second = _build(keys, manifest, tmp_path / "b", tmp_path / "cache2")
    assert Path(first.stdout.strip()).read_bytes() == Path(second.stdout.strip()).read_bytes()
    (dist / "Release.gpg").write_bytes((dist / "Release.gpg").read_bytes().replace(b"A", b"B", 3))
    refused = _build(keys, manifest, tmp_path / "c", tmp_path / "cache3")
    assert refused.exit_code == 5 and "signature check failed" in refused.stderr


def test_sbom_lists_the_packages(
    project: Project, keys: Keys, tmp_path: Path, cache_dir: Path, apt_repos: AptRepos
) -> None:
    result = _build(keys, _manifest(project, apt_repos), tmp_path / "out", cache_dir)
    bom = json.loads(run_cli("inspect", Path(result.stdout.strip()), "--sbom").stdout)
    purls = {c["purl"] for c in bom["components"] if c["type"] == "library"}
    assert "pkg:deb/debian/libfoo@1:0.5?arch=amd64" in purls
    assert len(purls) == len(CLOSURE)
    from cyclonedx.schema import SchemaVersion
    from cyclonedx.validation.json import JsonStrictValidator

    assert JsonStrictValidator(SchemaVersion.V1_5).validate_str(json.dumps(bom)) is None


# ------------------------------------------------ a Debian-shaped archive: suites read as apt reads them


@dataclass
class Archive:
    root: Path
    url: str
    served: Served
    keyring: Path
    fingerprint: str


@pytest.fixture(scope="module")
def debian_like(apt_repos: AptRepos, tmp_path_factory: pytest.TempPathFactory):
    """tests/aptrepo.py's two-suite archive (stable + stable-security), served on loopback."""
    root = build_archive(tmp_path_factory.mktemp("archive"), apt_repos.key)  # type: ignore[arg-type]
    served = Served(root)
    yield Archive(root, served.url, served, apt_repos.keyring, apt_repos.key.fingerprint)  # type: ignore[attr-defined]
    served.close()


def _archive_manifest(
    project: Project, archive_: Archive, packages: str, extra: str = "", keyring: str = "payloads/archive.gpg"
) -> Path:
    shutil.copy(archive_.keyring, project.root / "payloads" / "archive.gpg")
    sources = "".join(
        f"    - url: {archive_.url}\n      suite: {suite}\n      components: [main]\n      keyring: {keyring}\n"
        for suite in ("stable", "stable-security")
    )
    return project.write_manifest(
        "apiVersion: airbundle/v1\nkind: Bundle\nname: site\nversion: '1.0'\n"
        "platform: {os: debian, codename: stable, arch: amd64}\n"
        f"debs:\n  sources:\n{sources}  packages: {packages}\n{extra}",
        "site.yaml",
    )


def _extract_debs(bundle: Path, site: Path) -> Path:
    with tarfile.open(bundle) as tar:
        tar.extractall(site, members=[m for m in tar.getmembers() if m.name.startswith("debs/")])
    return site / "debs"


STOCK = [("perl-base", "5.36-1", {}), ("sysv-utils", "3.0", {"Provides": "lsb-base"})]
PATCHED = [("perl-base", "5.36-1+u3", {}), ("sysv-utils", "3.0", {"Provides": "lsb-base"})]


def test_security_suite_read_as_apt_reads_it(
    project: Project, keys: Keys, tmp_path: Path, cache_dir: Path, debian_like: Archive
) -> None:
    """binary-all never fetched where the Release rules it out, xz missing -> gz, by-hash over a
    stale named index, the pool name quoted as apt quotes it, highest version across suites,
    a versioned relation on a required package shipping that package, Provides of the baseline."""
    debian_like.served.paths.clear()
    manifest = _archive_manifest(project, debian_like, "[perl, engine, daemon-x, docs-all]")
    result = _build(keys, manifest, tmp_path / "out", cache_dir)
    assert result.exit_code == 0, result.stderr
    lock = archive.read_lock(Path(result.stdout.strip()))[0]
    assert {d.name: (d.version, d.reason) for d in lock.debs} == {
        "perl": ("5.36-1+u3", "requested"),
        "perl-base": ("5.36-1+u3", "perl"),  # perl (= …u3) needs it, although required
        "engine": ("1:5.0~rc1+dfsg", "requested"),
        "daemon-x": ("1.0", "requested"),  # lsb-base not shipped: the baseline's sysv-utils provides it
        "docs-all": ("1.0", "requested"),  # an arch-all package from the amd64 index
    }
    assert [s["signed_by"] for s in lock.apt_sources] == [[debian_like.fingerprint]] * 2
    paths = debian_like.served.paths
    assert not [p for p in paths if "binary-all" in p]
    assert "/dists/stable/main/binary-amd64/Packages.xz" in paths  # tried first, missing
    assert "/dists/stable/main/binary-amd64/Packages.gz" in paths
    assert [p for p in paths if "stable-security" in p and "/by-hash/SHA256/" in p]
    # apt's escapes (urllib3 writes their hex digits in capitals: the same URL, RFC 3986 2.1).
    assert f"/pool/updates/{ENGINE_REQUEST}".lower() in [p.lower() for p in paths]

    # apt, offline from the bundle alone, on a stock target and on one patched from security.
    repo = _extract_debs(Path(result.stdout.strip()), tmp_path / "site")
    for name, state in (("stock", STOCK), ("patched", PATCHED)):
        sim = apt_simulate(
            tmp_path / name,
            f"deb [trusted=yes] file:{repo} ./\n",
            status_file(state),
            "perl",
            "engine",
            "daemon-x",
            "docs-all",
        )
        assert sim.returncode == 0, sim.output


def test_baseline_file_gives_apts_list(
    project: Project, keys: Keys, tmp_path: Path, cache_dir: Path, debian_like: Archive
) -> None:
    """debs.baseline: a target's dpkg status; the closure is what apt installs on that target,
    including an installed package upgraded because a chosen one Breaks its version."""
    status = status_file([*PATCHED, ("oldtool", "1.0", {})])
    (project.root / "payloads" / "status").write_text(status)
    wanted = ("perl", "daemon-x", "breaker", "needs-mta", "mta-real")
    manifest = _archive_manifest(
        project, debian_like, f"[{', '.join(wanted)}]", "  baseline: payloads/status\n"
    )
    result = _build(keys, manifest, tmp_path / "out", cache_dir)
    assert result.exit_code == 0, result.stderr
    lock = archive.read_lock(Path(result.stdout.strip()))[0]
    ours = {d.name: d.version for d in lock.debs}
    sources = "".join(
        f"deb [signed-by={debian_like.keyring}] {debian_like.url} {suite} main\n"
        for suite in ("stable", "stable-security")
    )
    sim = apt_simulate(tmp_path / "apt", sources, status, *wanted)
    assert sim.returncode == 0, sim.output + sim.update
    assert ours == sim.installs
    assert ours["oldtool"] == "2.0" and "perl-base" not in ours and "mta-virt" not in ours


@pytest.mark.parametrize(
    "packages, status, message",
    [
        (
            "[conflict-a, conflict-b]",
            None,
            "conflict-a 1.0 (amd64) (conflict-a) and conflict-b 1.0 (amd64) (conflict-b) cannot be "
            "installed together: conflict-a Conflicts: conflict-b",
        ),
        (
            "[breaker2]",
            [("stuck", "1.0", {})],
            "breaker2 1.0 (amd64) (breaker2) and stuck 1.0 (amd64) (on the target) cannot be installed "
            "together: breaker2 Breaks: stuck (<< 2.0)",
        ),
    ],
)
def test_conflicts_and_breaks_are_refused(
    project: Project,
    keys: Keys,
    tmp_path: Path,
    cache_dir: Path,
    debian_like: Archive,
    packages,
    status,
    message,
) -> None:
    extra = ""
    if status:
        (project.root / "payloads" / "status").write_text(status_file(status))
        extra = "  baseline: payloads/status\n"
    result = _build(
        keys, _archive_manifest(project, debian_like, packages, extra), tmp_path / "out", cache_dir
    )
    assert result.exit_code == 5, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def _archive_packages(archive_: Archive) -> list[debs.Package]:
    out: list[debs.Package] = []
    for suite in ("stable", "stable-security"):
        data = gzip.decompress((archive_.root / f"dists/{suite}/main/binary-amd64/Packages.gz").read_bytes())
        out += debs.parse_packages([data[i : i + 97] for i in range(0, len(data), 97)], archive_.url)
    return out


@pytest.mark.parametrize("order", [("needs-mta", "mta-real"), ("mta-real", "needs-mta")])
def test_requested_stays_requested_whatever_the_order(debian_like: Archive, order: tuple[str, str]) -> None:
    """apt marks the whole command line first: the requested alternative is taken, and stays requested."""
    resolution = debs.Resolver(_archive_packages(debian_like), "amd64").resolve(order)
    assert resolution.reasons == {"needs-mta": "requested", "mta-real": "requested"}


def test_requested_dependency_stays_requested(apt_repos: AptRepos) -> None:
    resolver = debs.Resolver(_packages(apt_repos), "amd64", baseline={"base-files"})
    reasons = resolver.resolve(["app", "libfoo"]).reasons
    assert reasons["libfoo"] == "requested" and reasons["prelib"] == "app"


def test_recommends_are_added_as_apt_adds_them(debian_like: Archive) -> None:
    packages = _archive_packages(debian_like)
    assert set(debs.Resolver(packages, "amd64").resolve(["rec-app"]).reasons) == {"rec-app"}
    with_recs = debs.Resolver(packages, "amd64", recommends=True).resolve(["rec-app"])
    assert with_recs.reasons == {"rec-app": "requested", "rec-lib": "rec-app"}  # rec-gone: none, skipped


def test_wrong_key_names_every_signer(
    project: Project, keys: Keys, tmp_path: Path, cache_dir: Path, debian_like: Archive, apt_repos: AptRepos
) -> None:
    manifest = _archive_manifest(project, debian_like, "[perl]")
    shutil.copy(apt_repos.other_keyring, project.root / "payloads" / "archive.gpg")
    result = _build(keys, manifest, tmp_path / "out", cache_dir)
    assert result.exit_code == 5, result.stderr
    assert f"signed by {debian_like.fingerprint} (not in the keyring)" in result.stderr
    assert "archive.gpg" in result.stderr and "Traceback" not in result.stderr


def test_keyring_by_absolute_path(
    project: Project, keys: Keys, tmp_path: Path, cache_dir: Path, debian_like: Archive
) -> None:
    """The build host's own keyring by absolute path (e.g. /usr/share/keyrings/…), recorded by fingerprint."""
    manifest = _archive_manifest(project, debian_like, "[docs-all]", keyring=str(debian_like.keyring))
    result = _build(keys, manifest, tmp_path / "out", cache_dir)
    assert result.exit_code == 0, result.stderr
    lock = archive.read_lock(Path(result.stdout.strip()))[0]
    assert lock.apt_sources[0]["signed_by"] == [debian_like.fingerprint]
    assert str(debian_like.keyring) not in json.dumps(lock.apt_sources)  # a host path is no part of the lock


def test_index_not_matching_the_release_is_named_as_such(
    project: Project, keys: Keys, tmp_path: Path, cache_dir: Path, debian_like: Archive
) -> None:
    root = tmp_path / "broken"
    shutil.copytree(debian_like.root, root)
    for index in (root / "dists/stable/main/binary-amd64").iterdir():
        index.write_bytes(gzip.compress(b"Package: tampered\n"))
    served = Served(root)
    try:
        manifest = _archive_manifest(project, dataclasses_replace(debian_like, url=served.url), "[perl]")
        result = _build(keys, manifest, tmp_path / "out", cache_dir)
    finally:
        served.close()
    assert result.exit_code == 5
    assert "no copy of main/binary-amd64/Packages matches the signed Release" in result.stderr
    assert "does not match what the signed Release lists" in result.stderr
    assert "pin" not in result.stderr


def test_apt_quoting_of_pool_names() -> None:
    assert debs.apt_quote("pool/e/engine_1%3a5.0~rc1+dfsg_amd64.deb") == f"pool/e/{ENGINE_REQUEST}"
    assert debs.apt_quote("pool/a b:c.deb") == "pool/a%20b:c.deb"  # ":" goes as it is, as apt sends it


def test_recommends_in_the_manifest_reach_the_lock(
    project: Project, keys: Keys, tmp_path: Path, cache_dir: Path, debian_like: Archive
) -> None:
    manifest = _archive_manifest(project, debian_like, "[rec-app]", "  recommends: true\n")
    result = _build(keys, manifest, tmp_path / "out", cache_dir)
    assert result.exit_code == 0, result.stderr
    lock = archive.read_lock(Path(result.stdout.strip()))[0]
    assert {d.name for d in lock.debs} == {"rec-app", "rec-lib"} and lock.recommends is True


@pytest.mark.parametrize("ext", [".xz", ".bz2", ".lzma", ".gz", ""])
def test_every_compression_apt_lists_is_read_as_a_stream(tmp_path: Path, ext: str) -> None:
    """Each decoder of apt's order, fed in small chunks; concatenated members (gzip -c a b) too."""
    import bz2
    import lzma

    from bundler import aptsource

    first, second = b"Package: a\nVersion: 1\n\n", b"Package: b\nVersion: 2\n"
    pack = {
        ".xz": lzma.compress,
        ".bz2": bz2.compress,
        ".lzma": lambda d: lzma.compress(d, format=lzma.FORMAT_ALONE),
        ".gz": lambda d: gzip.compress(d, mtime=0),
        "": bytes,
    }[ext]
    path = tmp_path / f"Packages{ext}"
    path.write_bytes(
        pack(first) + pack(second) if ext in (".gz", ".bz2", ".xz", "") else pack(first + second)
    )
    decoder = dict(aptsource._COMPRESSIONS)[ext]
    assert b"".join(aptsource._decompressed(path, decoder, 1000, "test")) == first + second
    with pytest.raises(FetchError, match="decompresses to more than the 10 bytes"):
        list(aptsource._decompressed(path, decoder, 10, "test"))


@pytest.mark.parametrize("ext", [".xz", ".bz2", ".gz"])
def test_a_decompression_bomb_is_read_in_bounded_steps(tmp_path: Path, ext: str) -> None:
    """48 MiB of zeros in a few KiB: one compressed chunk, which the decoder is never asked to
    inflate whole (at most 1 MiB at a time), and a limit stops it one step past the limit."""
    import bz2
    import lzma

    from bundler import aptsource

    plain = b"\0" * (48 * 1024**2)
    pack = {".xz": lzma.compress, ".bz2": bz2.compress, ".gz": lambda d: gzip.compress(d, mtime=0)}[ext]
    path = tmp_path / f"Packages{ext}"
    path.write_bytes(pack(plain) + pack(b"tail"))  # a second member after the bomb is still read
    assert path.stat().st_size < aptsource._CHUNK
    sizes = [len(c) for c in aptsource.decompressed(path, path.name, len(plain) + 4, "test")]
    assert sum(sizes) == len(plain) + 4 and max(sizes) <= 1024**2
    read = []
    with pytest.raises(FetchError, match=r"^test: decompresses to more than 2 MiB, whose limit"):
        for chunk in aptsource.decompressed(path, path.name, 2 * 1024**2, "test", "2 MiB, whose limit"):
            read.append(len(chunk))
    assert sum(read) <= 2 * 1024**2


def test_not_automatic_suites_lose_to_ordinary_ones() -> None:
    """apt's candidate: pin priority first (backports: 1 or 100), then the version."""
    ordinary = debs.Package("tool", "1.0", "amd64", "pool/t_1.0.deb", 1, "0" * 64)
    backport = debs.Package("tool", "2.0~bpo", "amd64", "pool/t_2.0.deb", 1, "0" * 64, pin=100)
    assert debs.Resolver([backport, ordinary], "amd64").resolve(["tool"]).packages == [ordinary]
    assert debs.Resolver([backport, ordinary], "amd64").resolve(["tool=2.0~bpo"]).packages == [backport]


@pytest.mark.parametrize(
    "debs_extra, message",
    [
        ("  baseline: requred\n", "'requred' is not a file here; give 'required'"),
        ("  recommends: maybe\n", "recommends"),
    ],
)
def test_debs_section_mistakes_are_exit_2(
    project: Project, keys: Keys, tmp_path: Path, apt_repos: AptRepos, debs_extra: str, message: str
) -> None:
    manifest = _manifest(project, apt_repos, "[prelib]", extra=debs_extra)
    result = _build(keys, manifest, tmp_path / "out", tmp_path / "cache")
    assert result.exit_code == 2 and message in result.stderr and "pkgs.yaml:" in result.stderr


def test_absolute_keyring_missing_is_exit_2(
    project: Project, keys: Keys, tmp_path: Path, apt_repos: AptRepos
) -> None:
    source = f"    - url: {apt_repos.url}\n      suite: stable\n      components: [main]\n      keyring: /nonexistent/k.gpg\n"
    result = _build(keys, _manifest(project, apt_repos, "[prelib]", source), tmp_path / "out", tmp_path / "c")
    assert result.exit_code == 2 and "'/nonexistent/k.gpg' is not a file on this host" in result.stderr
