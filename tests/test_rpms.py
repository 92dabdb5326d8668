"""rpm packages: real rpms (rpmbuild, rpmsign), a signed rpm-md repository (createrepo_c, gpg) on
loopback, the closure compared with dnf's own answer in a private root, and the bundle's rpms/
installed offline by dnf --installroot."""

from __future__ import annotations

import gzip
import hashlib
import json
import re
import shutil
import subprocess
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from dataclasses import replace as dataclasses_replace
from pathlib import Path

import pytest

from bundler import archive, rpmsolve, rpmsource

from .aptrepo import GpgKey, Served
from .conftest import Keys, Project, run_cli
from .rpmrepo import CLOSURE, Dnf, Rpm, index, make_repo, sign_repomd, sign_rpms

pytestmark = pytest.mark.skipif(shutil.which("createrepo_c") is None, reason="make installs createrepo-c")


@dataclass
class Repo:
    root: Path
    url: str
    key: GpgKey
    other_key: GpgKey

    def files(self) -> rpmsolve.SourceFiles:
        data = self.root / "repodata"
        primary = next(data.glob("*-primary.xml.gz"))
        filelists = next(data.glob("*-filelists.xml.gz"))
        return rpmsolve.SourceFiles(primary, primary.name, filelists, filelists.name)


@pytest.fixture(scope="module")
def rpm_repo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Repo]:
    """The signed repository of tests/rpmrepo.py's packages, served on loopback."""
    work = tmp_path_factory.mktemp("rpmrepo")
    key = GpgKey(work / "gpg", "Test Rpm Repo <rpm@example.invalid>")
    other = GpgKey(work / "other", "Someone Else <else@example.invalid>")
    root = make_repo(work, key)
    served = Served(root)
    yield Repo(root, served.url, key, other)
    served.close()
    key.close()
    other.close()


def _dnf_repo(url: str, key: GpgKey, repo_gpgcheck: bool = True) -> dict[str, str]:
    return {
        "src": f"[src]\nname=src\nbaseurl={url}\ngpgcheck=1\nrepo_gpgcheck={int(repo_gpgcheck)}\n"
        f"gpgkey=file://{key.armored}\n"
    }


@pytest.fixture(scope="module")
def dnf_roots(rpm_repo: Repo, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Dnf]]:
    """dnf private roots holding a baseline: bash; bash and selinux-policy (installed by dnf itself)."""
    roots = {}
    for name, base in (("bash", ["bash"]), ("selinux", ["bash", "selinux-policy"])):
        dnf = Dnf(tmp_path_factory.mktemp(f"dnf-{name}"))
        run = subprocess.run(
            [*dnf.args(_dnf_repo(f"file://{rpm_repo.root}", rpm_repo.key)), "install", *base],
            capture_output=True,
            text=True,
        )
        assert run.returncode == 0, run.stdout + run.stderr
        roots[name] = dnf
    yield roots
    for dnf in roots.values():
        dnf.close()


BASELINES = {
    "bash": [rpmsolve.Installed("bash", "5.1-1", "x86_64")],
    "selinux": [
        rpmsolve.Installed("bash", "5.1-1", "x86_64"),
        rpmsolve.Installed("selinux-policy", "3.14-1", "noarch"),
    ],
}


@pytest.mark.parametrize(
    "baseline, requests",
    [
        ("bash", ["app", "cyc-a"]),  # versioned (epoch wins), file, rich or, multilib, a cycle
        ("selinux", ["app"]),  # (app-selinux if selinux-policy): the baseline has the condition
        ("bash", ["oldtool"]),  # obsoleted: dnf installs the package that obsoletes it
        ("bash", ["legacy32"]),  # i686 on x86_64, with the i686 build of its library
        ("bash", ["libfoo-1.5"]),  # a pinned version
        ("bash", ["postfix", "conf-data"]),
    ],
)
def test_closure_is_dnfs(
    rpm_repo: Repo, dnf_roots: dict[str, Dnf], baseline: str, requests: list[str]
) -> None:
    """libsolv through bundler.rpmsolve chooses exactly what dnf install would, package and version."""
    _, dnf_says, out = dnf_roots[baseline].would_install(
        _dnf_repo(f"file://{rpm_repo.root}", rpm_repo.key), *requests
    )
    assert dnf_says, out
    ours = rpmsolve.resolve(
        [rpm_repo.files()], "x86_64", [r.replace("-1.5", "=1.5") for r in requests], BASELINES[baseline]
    )
    assert {c.name: c.evr for c in ours} == dnf_says
    if requests == ["legacy32"]:
        assert {c.arch for c in ours} == {"i686"}


def test_closure_reasons_and_arch(rpm_repo: Repo) -> None:
    ours = {
        c.name: c for c in rpmsolve.resolve([rpm_repo.files()], "x86_64", ["app", "cyc-a"], BASELINES["bash"])
    }
    assert {n: c.evr for n, c in ours.items()} == CLOSURE
    assert ours["libfoo"].reason == "app" and ours["app"].reason == "requested"
    assert ours["libmulti"].arch == "x86_64"  # multilib: the best arch, not both


@pytest.mark.parametrize(
    "request_, message",
    [
        ("broken", "nothing provides missing-lib >= 1 needed by broken-1.0-1.x86_64"),
        ("armonly", "armonly: no package of that name"),  # aarch64 only: nothing for x86_64
        ("nope", "nope: no package of that name"),
        ("libfoo=9", "libfoo=9: no such version (available: 1:0.5-1, 2.1-1, 1.5-1)"),  # rpm order
    ],
)
def test_closure_failures_say_why(rpm_repo: Repo, request_: str, message: str) -> None:
    with pytest.raises(rpmsolve.ResolveError, match=re.escape(message)):
        rpmsolve.resolve([rpm_repo.files()], "x86_64", [request_], BASELINES["bash"])


def test_exclude_is_assumed_present(rpm_repo: Repo) -> None:
    ours = rpmsolve.resolve([rpm_repo.files()], "x86_64", ["postfix"], (), exclude=["libbig"])
    assert [c.name for c in ours] == ["postfix"]


def test_rpm_qa_baseline_parses() -> None:
    text = "bash-5.1-1.x86_64\ngpg-pubkey-fcc9f3e4-1.(none)\nkernel-0:4.18.0-372.9.1.el8.x86_64\n"
    assert rpmsolve.parse_rpm_qa(text, "qa.txt") == [
        rpmsolve.Installed("bash", "5.1-1", "x86_64"),
        rpmsolve.Installed("kernel", "4.18.0-372.9.1.el8", "x86_64"),
    ]
    with pytest.raises(Exception, match=r"qa.txt:1: 'nonsense' is not NAME-VERSION-RELEASE.ARCH"):
        rpmsolve.parse_rpm_qa("nonsense\n", "qa.txt")


# --- the build ----------------------------------------------------------------------------------


def _manifest(
    project: Project, url: str, key: GpgKey | None, packages: str = "[app, cyc-a]", extra: str = ""
) -> Path:
    gpgkey = ""
    if key is not None:
        shutil.copy(key.armored, project.root / "payloads" / "rpm.asc")
        gpgkey = "\n      gpgkey: payloads/rpm.asc"
    (project.root / "payloads" / "rpm-qa.txt").write_text("bash-5.1-1.x86_64\n")
    return project.write_manifest(
        "apiVersion: airbundle/v1\nkind: Bundle\nname: rocky\nversion: '1.0'\n"
        "platform: {os: rocky, codename: '8', arch: amd64}\n"
        f"rpms:\n  sources:\n    - url: {url}{gpgkey}\n  packages: {packages}\n"
        f"  baseline: payloads/rpm-qa.txt\n{extra}",
        "rocky.yaml",
    )


def _build(keys: Keys, manifest: Path, out: Path, cache: Path, *more: str):
    return run_cli("build", manifest, "-o", out, "--key", keys.key_path, "--cache", cache, *more)


def test_bundle_rpms_install_with_dnf_offline(
    project: Project, keys: Keys, tmp_path: Path, cache_dir: Path, rpm_repo: Repo
) -> None:
    result = _build(keys, _manifest(project, rpm_repo.url, rpm_repo.key), tmp_path / "out", cache_dir)
    assert result.exit_code == 0, result.stderr
    bundle = Path(result.stdout.strip())
    report = archive.verify_bundle(bundle, [keys.pub])
    assert report.problems == []
    lock = report.lock
    assert {r.name: r.version for r in lock.rpms} == CLOSURE
    assert {r.name: r.reason for r in lock.rpms}["libfoo"] == "app"
    assert lock.rpm_sources[0]["signed_by"] == [rpm_repo.key.fingerprint]
    assert "rpms/repodata/repomd.xml" in {m.path for m in lock.members}
    assert {m.kind for m in lock.members if m.path.startswith("rpms/")} == {"rpm"}
    assert "libfoo" in result.stderr and "1:0.5-1" in result.stderr  # the resolution table

    site = tmp_path / "site"
    with tarfile.open(bundle) as tar:
        tar.extractall(site, members=[m for m in tar.getmembers() if m.name.startswith(("rpms/", "sbom"))])
    bom = json.loads((site / "sbom.cdx.json").read_text())
    purls = {c.get("purl") for c in bom["components"]}
    assert "pkg:rpm/rocky/libfoo@0.5-1?arch=x86_64&epoch=1" in purls
    # dnf installs from the bundle's repository alone, no network: file:// and the source's key.
    dnf = Dnf(tmp_path / "dnf")
    repo = {
        "bundle": f"[bundle]\nname=bundle\nbaseurl=file://{site / 'rpms'}\ngpgcheck=1\ngpgkey=file://{rpm_repo.key.armored}\n"
    }
    base = subprocess.run(
        [*dnf.args(_dnf_repo(f"file://{rpm_repo.root}", rpm_repo.key)), "install", "bash"],
        capture_output=True,
        text=True,
    )
    assert base.returncode == 0, base.stdout + base.stderr
    run = subprocess.run(
        [
            "unshare",
            "-n",
            *dnf.args(repo),
            "--disablerepo=*",
            "--enablerepo=bundle",
            "install",
            "app",
            "cyc-a",
        ],
        capture_output=True,
        text=True,
    )
    dnf.close()
    assert run.returncode == 0, run.stdout + run.stderr
    installed = subprocess.run(
        ["rpm", "--root", str(dnf.folder / "root"), "-qa", "--qf", "%{NAME}\n"],
        capture_output=True,
        text=True,
    ).stdout.split()
    assert set(CLOSURE) | {"bash"} <= set(installed)


def test_bundle_rpms_are_deterministic(
    project: Project, keys: Keys, tmp_path: Path, cache_dir: Path, rpm_repo: Repo
) -> None:
    manifest = _manifest(project, rpm_repo.url, rpm_repo.key, "[postfix, conf-data]")
    first = _build(keys, manifest, tmp_path / "one", cache_dir)
    second = _build(keys, manifest, tmp_path / "two", tmp_path / "other-cache")
    assert first.exit_code == 0 and second.exit_code == 0, first.stderr + second.stderr
    assert Path(first.stdout.strip()).read_bytes() == Path(second.stdout.strip()).read_bytes()


def test_inspect_and_dry_run_list_the_rpms(
    project: Project, keys: Keys, tmp_path: Path, cache_dir: Path, rpm_repo: Repo
) -> None:
    manifest = _manifest(
        project, rpm_repo.url, rpm_repo.key, "[postfix]", "  roles:\n    worker: [conf-data]\n"
    )
    plan = run_cli("build", manifest, "--dry-run", "--cache", cache_dir)
    assert plan.exit_code == 0, plan.stderr
    assert "rpm     postfix 3.5-1 x86_64" in plan.stdout and "conf-data 2.0-1 noarch" in plan.stdout
    result = _build(keys, manifest, tmp_path / "out", cache_dir)
    assert result.exit_code == 0, result.stderr
    text = run_cli("inspect", result.stdout.strip()).stdout
    assert "rpms:" in text and "libbig" in text and "(postfix)" in text and "on worker nodes" in text
    facts = json.loads(run_cli("inspect", result.stdout.strip(), "--json").stdout)
    assert facts["rpm_roles"] == {"worker": ["conf-data"]}
    assert {r["name"] for r in facts["rpms"]} == {"postfix", "libbig", "conf-data"}


# --- refusals: the mirror's fault is exit 5, and nothing is written at the final path ------------


@pytest.fixture
def repo_copy(rpm_repo: Repo, tmp_path: Path) -> Iterator[tuple[Path, str]]:
    root = tmp_path / "repo-copy"
    shutil.copytree(rpm_repo.root, root)
    served = Served(root)
    yield root, served.url
    served.close()


def _refused(project: Project, keys: Keys, tmp_path: Path, url: str, key: GpgKey, words: list[str]) -> None:
    out = tmp_path / "out"
    result = _build(keys, _manifest(project, url, key, "[postfix]"), out, tmp_path / "fresh-cache")
    assert result.exit_code == 5, result.stderr
    for word in words:
        assert word in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert not list(out.glob("*.tar")) and not list(out.glob("*.sha256"))


def test_tampered_repomd_is_refused(
    project: Project, keys: Keys, tmp_path: Path, rpm_repo: Repo, repo_copy: tuple[Path, str]
) -> None:
    root, url = repo_copy
    repomd = root / "repodata" / "repomd.xml"
    repomd.write_bytes(repomd.read_bytes().replace(b"<revision>", b"<revision>1"))
    _refused(project, keys, tmp_path, url, rpm_repo.key, ["repodata/repomd.xml", "BAD signature"])


def test_unsigned_repomd_is_refused_when_a_key_is_given(
    project: Project, keys: Keys, tmp_path: Path, rpm_repo: Repo, repo_copy: tuple[Path, str]
) -> None:
    root, url = repo_copy
    (root / "repodata" / "repomd.xml.asc").unlink()
    _refused(project, keys, tmp_path, url, rpm_repo.key, ["repomd.xml.asc", "not signed"])


def test_repomd_signed_by_another_key_is_refused(
    project: Project, keys: Keys, tmp_path: Path, rpm_repo: Repo, repo_copy: tuple[Path, str]
) -> None:
    root, url = repo_copy
    sign_repomd(root, rpm_repo.other_key)
    _refused(project, keys, tmp_path, url, rpm_repo.key, ["repomd.xml", "not in the keyring"])


def test_tampered_primary_is_refused(
    project: Project, keys: Keys, tmp_path: Path, rpm_repo: Repo, repo_copy: tuple[Path, str]
) -> None:
    root, url = repo_copy
    primary = next((root / "repodata").glob("*-primary.xml.gz"))
    data = primary.read_bytes()
    primary.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))  # same size: the checksum tells
    _refused(project, keys, tmp_path, url, rpm_repo.key, [primary.name, "does not match"])
    primary.write_bytes(data + b"\0")  # longer than repomd.xml says: cut off while streaming
    _refused(project, keys, tmp_path, url, rpm_repo.key, [primary.name, "exceeds"])


@pytest.mark.parametrize("kind", ["filelists", "primary"])
def test_metadata_that_decompresses_past_the_limit_is_refused(
    project: Project,
    keys: Keys,
    tmp_path: Path,
    rpm_repo: Repo,
    repo_copy: tuple[Path, str],
    monkeypatch: pytest.MonkeyPatch,
    kind: str,
) -> None:
    """A decompression bomb from a signed repository (its key stolen, its publisher hostile): the
    metadata libsolv would hold in memory, which it decompresses itself, is refused before libsolv
    reads it (the limit lowered to 1 MiB here for a small bomb), naming the source and the file."""
    root, url = repo_copy
    monkeypatch.setattr(rpmsource, f"MAX_{kind.upper()}_BYTES", 1024**2)
    path = next((root / "repodata").glob(f"*-{kind}.xml.gz"))
    old = hashlib.sha256(path.read_bytes()).hexdigest()
    # The real metadata, then 64 MiB of spaces (XML allows them after the root element): 64 KiB of gzip.
    path.write_bytes(gzip.compress(gzip.decompress(path.read_bytes()) + b" " * 64 * 1024**2, mtime=0))
    assert path.stat().st_size < 128 * 1024
    repomd = root / "repodata" / "repomd.xml"
    text = repomd.read_text()
    block = re.search(rf'<data type="{kind}">.*?</data>', text, re.S)
    assert block is not None and old in block[0]
    listed = block[0].replace(f">{old}<", f">{hashlib.sha256(path.read_bytes()).hexdigest()}<")
    listed = re.sub(r"<size>\d+</size>", f"<size>{path.stat().st_size}</size>", listed)
    repomd.write_text(text.replace(block[0], listed))
    sign_repomd(root, rpm_repo.key)  # signed as the repository's own: only the size can tell
    words = [f"rpm source {url}", path.name, "decompresses to more than 1 MiB", "decompression bomb"]
    _refused(project, keys, tmp_path, url, rpm_repo.key, words)


def test_tampered_package_is_refused(
    project: Project, keys: Keys, tmp_path: Path, rpm_repo: Repo, repo_copy: tuple[Path, str]
) -> None:
    root, url = repo_copy
    package = root / "Packages" / "libbig-1.0-1.x86_64.rpm"
    package.write_bytes(package.read_bytes()[:-1] + b"X")
    _refused(project, keys, tmp_path, url, rpm_repo.key, ["libbig-1.0-1.x86_64.rpm", "primary.xml"])


def test_package_signed_by_another_key_is_refused(
    project: Project, keys: Keys, tmp_path: Path, rpm_repo: Repo, repo_copy: tuple[Path, str]
) -> None:
    """Metadata regenerated and signed with the repository's key, but an rpm re-signed by someone else:
    only the rpm's own signature can tell (dnf's gpgcheck)."""
    root, url = repo_copy
    sign_rpms(rpm_repo.other_key, [root / "Packages" / "libbig-1.0-1.x86_64.rpm"])
    shutil.rmtree(root / "repodata")
    index(root, rpm_repo.key)
    _refused(
        project, keys, tmp_path, url, rpm_repo.key, ["libbig-1.0-1.x86_64.rpm", "rpm signature check failed"]
    )


def test_unsigned_package_is_refused(project: Project, keys: Keys, tmp_path: Path, rpm_repo: Repo) -> None:
    work = tmp_path / "unsigned"
    root = make_repo(work, rpm_repo.key, [Rpm("postfix", "3.5-1", "x86_64")], sign=False)
    served = Served(root)
    try:
        _refused(project, keys, tmp_path, served.url, rpm_repo.key, ["postfix-3.5-1.x86_64.rpm", "unsigned"])
    finally:
        served.close()


def test_armored_key_is_made_for_rpmkeys(rpm_repo: Repo) -> None:
    binary = rpm_repo.key.keyring.read_bytes()
    assert rpmsource.armored(binary).strip() == rpm_repo.key.armored.read_bytes().strip().replace(b"\r", b"")


def test_manifest_mistakes_are_exit_2(project: Project, keys: Keys, tmp_path: Path, rpm_repo: Repo) -> None:
    manifest = _manifest(project, rpm_repo.url, rpm_repo.key, "['bad name']")
    result = _build(keys, manifest, tmp_path / "out", tmp_path / "cache")
    assert result.exit_code == 2 and "rpms.packages" in result.stderr and "rocky.yaml:" in result.stderr
    text = (
        manifest.read_text().replace("payloads/rpm.asc", "payloads/missing.asc").replace("'bad name'", "app")
    )
    manifest.write_text(text)
    result = _build(keys, manifest, tmp_path / "out", tmp_path / "cache")
    assert result.exit_code == 2 and "gpgkey" in result.stderr and "missing.asc" in result.stderr


def test_signed_and_unsigned_sources_together_are_refused(
    project: Project, keys: Keys, tmp_path: Path, rpm_repo: Repo
) -> None:
    """The nodes' dnf checks every bundled rpm against the bundled keys: a source without a key beside
    one with a key would build, then fail on the nodes mid-install; the manifest is refused instead."""
    manifest = _manifest(project, rpm_repo.url, rpm_repo.key)
    manifest.write_text(
        manifest.read_text().replace("  packages:", f"    - url: {rpm_repo.url}/other\n  packages:")
    )
    result = _build(keys, manifest, tmp_path / "out", tmp_path / "cache")
    assert result.exit_code == 2, result.stderr
    assert "rpms.sources[1] has no gpgkey while other sources have one" in result.stderr
    assert not list((tmp_path / "out").glob("*.tar")) if (tmp_path / "out").exists() else True


# --- the installer's rpm route on loopback nodes (each node's system: a private root) -----------

ROCKY_8 = 'NAME="Rocky Linux"\nVERSION="8.6 (Green Obsidian)"\nID="rocky"\nID_LIKE="rhel centos fedora"\nVERSION_ID="8.6"\n'
ROCKY_9 = ROCKY_8.replace('"8.6', '"9.2')


def _roots(tmp_path: Path, nodes, os_releases: list[str | None]) -> Path:
    """One private root a node (``--apt-root``), each with this os-release (None: the host's is read)."""
    roots = tmp_path / "roots"
    for node, text in zip(nodes, os_releases):
        (roots / node.name / "etc").mkdir(parents=True)
        if text is not None:
            (roots / node.name / "etc" / "os-release").write_text(text)
    return roots


def _rpm_site(project: Project, keys: Keys, tmp_path: Path, cache_dir: Path, rpm_repo: Repo, nodes) -> Path:
    from .test_installer import _node_site

    manifest = _manifest(
        project, rpm_repo.url, rpm_repo.key, "[postfix]", "  roles:\n    worker: [conf-data]\n"
    )
    return _node_site(manifest, keys, tmp_path, cache_dir, nodes)


def test_installer_installs_rpms_per_role_with_dnf(
    project: Project, keys: Keys, tmp_path: Path, cache_dir: Path, rpm_repo: Repo, ssh_cluster
) -> None:
    """Rocky 8 nodes (private roots): the bundle's repository is copied to each node and dnf installs
    its roles' requests from it alone, checking the rpms against the bundled source key."""
    from .test_installer import _install

    client, nodes = ssh_cluster
    site = _rpm_site(project, keys, tmp_path, cache_dir, rpm_repo, nodes)
    roots = _roots(tmp_path, nodes, [ROCKY_8] * len(nodes))
    base = ("--ssh-config", str(client.config), "--apt-root", f"{roots}/{{node}}")
    dry = _install(site, keys, *base, "--dry-run")
    assert "rpm packages with dnf (or yum) from the bundled repository only" in dry.stdout, (
        dry.stdout + dry.stderr
    )
    run = _install(site, keys, *base, "--only", "packages")
    assert run.returncode == 0, run.stdout + run.stderr
    for node in nodes:
        listed = subprocess.run(
            ["rpm", "--root", str(roots / node.name), "-qa", "--qf", "%{NAME} %{VERSION}-%{RELEASE}\n"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        installed = dict(line.split() for line in listed.splitlines() if not line.startswith("gpg-pubkey"))
        expected = {"postfix": "3.5-1", "libbig": "1.0-1"}
        if node.name.startswith("worker"):
            expected["conf-data"] = "2.0-1"
        assert installed == expected, (node.name, listed)
        assert "gpg-pubkey" in listed  # dnf imported the bundled key to check the rpms (gpgcheck=1)
        repo = roots / node.name / "var/lib/airbundle/rpms/rocky-1.0"
        assert (repo / "repodata" / "repomd.xml").is_file() and (repo / "RPM-GPG-KEY-source-0").is_file()


def test_preflight_matches_the_os_to_the_packages(
    project: Project, keys: Keys, tmp_path: Path, cache_dir: Path, rpm_repo: Repo, ssh_cluster
) -> None:
    """An rpm bundle for Rocky 8: a Debian node (the host's own os-release) and a Rocky 9 node are
    refused by name with what to do; the Rocky 8 node passes that check."""
    from .test_installer import _install

    client, nodes = ssh_cluster
    site = _rpm_site(project, keys, tmp_path, cache_dir, rpm_repo, nodes)
    roots = _roots(tmp_path, nodes, [ROCKY_8, None, ROCKY_9])
    run = _install(
        site,
        keys,
        "--ssh-config",
        str(client.config),
        "--only",
        "preflight",
        "--apt-root",
        f"{roots}/{{node}}",
    )
    out = run.stdout + run.stderr
    assert run.returncode == 6, out
    debian = [line for line in out.splitlines() if "carries rpm packages (dnf)" in line]
    assert len(debian) == 1 and nodes[1].name in debian[0] and "debian 12" in debian[0], out
    rocky9 = [line for line in out.splitlines() if "OS rocky 9.2, the bundle is for rocky 8" in line]
    assert len(rocky9) == 1 and nodes[2].name in rocky9[0], out
    assert not any(
        nodes[0].name in line and "OS " in line for line in out.splitlines() if "bundle is for" in line
    )
    assert not list(roots.glob("*/var/lib/airbundle"))  # the preflight changed nothing
    assert "Traceback" not in out


def test_os_problem_refuses_debian_packages_on_rocky() -> None:
    from bundler.installer.nodeos import os_problem, parse_os
    from bundler.lock import Deb, Lock

    lock = Lock("x", "1.0", {"os": "debian", "codename": "bookworm", "arch": "amd64"}, "b", "0" * 64, 0, ())
    lock = dataclasses_replace(
        lock, debs=(Deb("a", "1", "amd64", "debs/a.deb", "0" * 64, 1, "u", "requested"),)
    )
    alma = parse_os('os="almalinux"|"9.3"|"rhel centos fedora"')
    assert "installs rpm packages with dnf, but the bundle carries Debian packages" in str(
        os_problem(lock, alma, "unknown")
    )
    assert os_problem(lock, parse_os("os=debian|12|"), "bookworm") is None
    assert str(os_problem(lock, parse_os("os=debian|11|"), "bullseye")).startswith(
        "OS codename bullseye, the bundle is for bookworm"
    )


@pytest.mark.parametrize(
    "field, value",
    [
        ("name", "x; rm -rf /"),  # reaches dnf install on the nodes
        ("version", "1.0-1 $(reboot)"),
        ("arch", "x86_64`id`"),
    ],
)
def test_signed_rpm_fields_are_checked_on_the_site(
    project: Project, keys: Keys, tmp_path: Path, cache_dir: Path, rpm_repo: Repo, field: str, value: str
) -> None:
    """The site parses rpm names, versions and arches by rpm's characters before they reach dnf."""
    from bundler.lock import Lock, LockError

    result = _build(
        keys, _manifest(project, rpm_repo.url, rpm_repo.key, "[postfix]"), tmp_path / "out", cache_dir
    )
    assert result.exit_code == 0, result.stderr
    doc = json.loads(archive.read_lock(Path(result.stdout.strip()))[0].to_bytes())
    Lock.from_bytes(json.dumps(doc).encode())  # the lock as built parses
    doc["rpms"][0][field] = value
    with pytest.raises(LockError, match="rpms\\[0\\] has an unusable name, version or arch"):
        Lock.from_bytes(json.dumps(doc).encode())
    doc = json.loads(archive.read_lock(Path(result.stdout.strip()))[0].to_bytes())
    doc["rpm_roles"] = {"worker": ["libbig"]}  # a dependency, not a request
    with pytest.raises(LockError, match="rpm_roles"):
        Lock.from_bytes(json.dumps(doc).encode())


def test_one_platform_per_bundle(project: Project, keys: Keys, tmp_path: Path, rpm_repo: Repo) -> None:
    """debs and rpms together, or an rpm platform without its major release, are exit 2 by line."""
    manifest = _manifest(project, rpm_repo.url, rpm_repo.key, "[postfix]")
    text = manifest.read_text()
    manifest.write_text(text.replace("codename: '8'", "codename: green"))
    result = _build(keys, manifest, tmp_path / "out", tmp_path / "cache")
    assert result.exit_code == 2 and "rocky.yaml:" in result.stderr and "major release" in result.stderr
    manifest.write_text(
        text
        + "debs:\n  sources:\n    - {url: 'http://127.0.0.1:9/', suite: s, components: [main], trusted: true}\n  packages: [x]\n"
    )
    result = _build(keys, manifest, tmp_path / "out", tmp_path / "cache")
    assert (
        result.exit_code == 2 and "give debs (Debian/Ubuntu) or rpms (Rocky/RHEL), not both" in result.stderr
    )
