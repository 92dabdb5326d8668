"""Debian packages: real signed apt repositories on loopback, the resolver, and apt checking the result."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from bundler import archive, debs

from .aptrepo import CLOSURE, Served, index_repo
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
    apt = tmp_path / "apt"
    for sub in ("state/lists/partial", "cache/archives/partial"):
        (apt / sub).mkdir(parents=True)
    (apt / "status").write_text(
        "Package: base-files\nStatus: install ok installed\nPriority: required\nVersion: 12.4\n"
        "Architecture: amd64\nMaintainer: T <t@example.invalid>\nDescription: base\n"
    )
    (apt / "sources.list").write_text(f"deb [trusted=yes] file:{site / 'debs'} ./\n")
    opts = [
        f"-o=Dir::Etc::SourceList={apt / 'sources.list'}",
        "-o=Dir::Etc::SourceParts=/dev/null",
        f"-o=Dir::State={apt / 'state'}",
        f"-o=Dir::Cache={apt / 'cache'}",
        f"-o=Dir::State::status={apt / 'status'}",
        "-o=Debug::NoLocking=1",
        "-o=APT::Architecture=amd64",
        "-o=APT::Architectures=amd64",
    ]
    env = {**os.environ, "LC_ALL": "C"}
    subprocess.run(["apt-get", *opts, "update"], check=True, capture_output=True, env=env)
    sim = subprocess.run(
        ["apt-get", *opts, "-s", "install", "app", "cyc-a"], capture_output=True, text=True, env=env
    )
    assert sim.returncode == 0, sim.stdout + sim.stderr
    installed = {
        line.split()[1]: line.split()[2].strip("()[]")
        for line in sim.stdout.splitlines()
        if line.startswith("Inst ")
    }
    assert installed == CLOSURE


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
    """manifests/docker-ce-jammy.yaml names Docker's repository; its key is not on this machine."""
    root = Path(__file__).resolve().parent.parent
    manifest = root / "manifests" / "docker-ce-jammy.yaml"
    assert not (root / "payloads" / "keys" / "docker.gpg").exists()
    result = run_cli(
        "build", manifest, "-o", tmp_path / "o", "--key", keys.key_path, "--cache", tmp_path / "c"
    )
    assert result.exit_code == 2
    assert "payloads/keys/docker.gpg' does not exist" in result.stderr
    assert (
        "curl -fsSL https://download.docker.com/linux/ubuntu/gpg -o payloads/keys/docker.gpg" in result.stderr
    )
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
