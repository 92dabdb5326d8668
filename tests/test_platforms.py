"""Which OS a bundle is for, checked on every node by the preflight from its /etc/os-release.

Astra Linux SE is Debian-based but its own OS: ``ID=astra`` and ``VERSION_CODENAME=1.7_x86-64``
(1.8: ``1.8_x86-64``); a bundle for it says ``platform: {os: astra, codename: 1.7_x86-64}``.
The nodes here are loopback sshd's; one of them sees Astra SE 1.7's os-release (bound over the
host's in its own mount namespace), the other this Debian host's own.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bundler.installer.nodeos import os_problem, parse_os
from bundler.lock import Lock

from .conftest import Keys
from .test_installer import _install, platform_site

# /etc/os-release of Astra Linux SE 1.7 (x86-64), as the system ships it.
ASTRA_17 = (
    'PRETTY_NAME="Astra Linux"\nNAME="Astra Linux"\nID=astra\nID_LIKE=debian\nANSI_COLOR="1;31"\n'
    "VERSION_ID=1.7_x86-64\nVERSION_CODENAME=1.7_x86-64\nVARIANT_ID=se\n"
)


@pytest.mark.parametrize(
    ("platform", "os_id", "codename", "expect"),
    [
        ({"os": "astra", "codename": "1.7_x86-64"}, "astra", "1.7_x86-64", None),
        (
            {"os": "astra", "codename": "1.7_x86-64"},
            "astra",
            "1.8_x86-64",
            "OS codename 1.8_x86-64, the bundle is for 1.7_x86-64",
        ),
        (
            {"os": "astra", "codename": "1.7_x86-64"},
            "debian",
            "bookworm",
            "OS debian bookworm, the bundle is for astra 1.7_x86-64",
        ),
        ({"os": "ubuntu", "codename": "jammy"}, "ubuntu", "jammy", None),
        (
            {"os": "debian", "codename": "bookworm"},
            "ubuntu",
            "jammy",
            "OS ubuntu jammy, the bundle is for debian bookworm",
        ),
    ],
)
def test_os_problem(platform: dict[str, str], os_id: str, codename: str, expect: str | None) -> None:
    lock = Lock("x", "1.0", {**platform, "arch": "amd64"}, "b", "0" * 64, 0, ())
    problem = os_problem(lock, parse_os(f"os={os_id}|x|debian"), codename)
    assert (problem is None) if expect is None else (problem is not None and problem.startswith(expect))


@pytest.fixture(scope="module")
def astra_and_debian(tmp_path_factory: pytest.TempPathFactory):
    """Two docker-less nodes: ast-1 says it is Astra Linux SE 1.7, deb-1 is this Debian host."""
    from .nodes import Client, Node

    client = Client(tmp_path_factory.mktemp("ssh-client-platforms"))
    nodes = []
    try:
        nodes.append(Node("127.0.0.91", "ast-1", client, docker=False, os_release=ASTRA_17))
        nodes.append(Node("127.0.0.92", "deb-1", client, docker=False))
        yield client, nodes
    finally:
        for node in nodes:
            node.stop()


def test_an_astra_bundle_passes_on_astra_and_is_refused_on_debian(
    project, keys: Keys, tmp_path: Path, cache_dir: Path, astra_and_debian
) -> None:
    client, nodes = astra_and_debian
    site = platform_site(project, keys, tmp_path, cache_dir, nodes, "astra", "1.7_x86-64")
    (site / "cluster.yml").write_text(
        "nodes:\n"
        "  - {address: 127.0.0.91, port: 2222, user: root, role: [controlplane, etcd, worker], hostname_override: ast-1}\n"
        "  - {address: 127.0.0.92, port: 2222, user: root, role: [worker], hostname_override: deb-1}\n"
    )
    run = _install(site, keys, "--ssh-config", str(client.config), "--only", "preflight", "--yes")
    assert run.returncode == 6, run.stdout + run.stderr
    lines = {
        line.split()[0]: line
        for line in run.stdout.splitlines()
        if line.strip().startswith(("ast-1", "deb-1"))
    }
    assert set(lines) == {"ast-1", "deb-1"}, run.stdout + run.stderr
    assert "FAILED" not in lines["ast-1"] and "1.7_x86-64" in lines["ast-1"], run.stdout
    assert "FAILED: OS debian bookworm, the bundle is for astra 1.7_x86-64" in lines["deb-1"], run.stdout
    assert "preflight: failed on deb-1" in run.stderr


def test_the_astra_manifest_names_what_the_operator_supplies(keys: Keys, tmp_path: Path) -> None:
    """manifests/docker-astra-1.7.yaml: before any download, every placeholder mirror and the missing
    Astra archive key are named (with how to get it), all in one run; nothing is written."""
    from .conftest import run_cli

    root = Path(__file__).resolve().parent.parent
    result = run_cli(
        "build", root / "manifests" / "docker-astra-1.7.yaml", "-o", tmp_path / "o", "--key", keys.key_path,
        "--cache", tmp_path / "c",
    )  # fmt: skip
    assert result.exit_code == 2, result.stderr
    assert result.stderr.count("marked PLACEHOLDER") == 4
    assert "astra-archive-keyring.gpg' does not exist" in result.stderr
    assert "astra-archive-keyring" in result.stderr.split("does not exist", 1)[1]  # how to get it
    assert not (tmp_path / "o").exists()


def test_a_bundle_from_astra_shaped_repositories(keys: Keys, tmp_path: Path, cache_dir: Path) -> None:
    """Astra's layout (a tree per repository, suite 1.7_x86-64, components main/contrib/non-free):
    docker.io's closure is taken across repositories and components, the newest containerd wins,
    and the lock and inspect say the bundle is for astra 1.7_x86-64."""
    import json

    from .aptrepo import GpgKey, Served, build_astra
    from .conftest import run_cli

    key = GpgKey(tmp_path / "gnupg", "Astra Test")
    served = Served(build_astra(tmp_path, key))
    try:
        base = f"{served.url}/astra/stable/1.7_x86-64"
        sources = "".join(
            f"    - {{url: {base}/{name}, suite: 1.7_x86-64, components: [main, contrib, non-free], "
            f"keyring: {key.keyring}}}\n"
            for name in ("repository-main", "repository-extended")
        )
        manifest = tmp_path / "astra.yaml"
        manifest.write_text(
            "apiVersion: airbundle/v1\nkind: Bundle\nname: docker-astra\nversion: '1.7.0'\n"
            "platform: {os: astra, codename: 1.7_x86-64, arch: amd64}\n"
            f"debs:\n  sources:\n{sources}  packages: [docker.io]\n"
        )
        built = run_cli(
            "build", manifest, "-o", tmp_path / "out", "--key", keys.key_path, "--cache", cache_dir
        )
        assert built.exit_code == 0, built.stderr
        bundle = Path(built.stdout.strip())
        shown = run_cli("inspect", bundle, "--json")
        assert shown.exit_code == 0, shown.stderr
        info = json.loads(shown.stdout)
        assert info["platform"] == {"os": "astra", "codename": "1.7_x86-64", "arch": "amd64"}
        debs = {d["name"]: d["version"] for d in info["debs"]}
        assert debs == {
            "docker.io": "20.10.25+dfsg1-2astra1",
            "containerd": "1.6.20~ds1-1astra2",
            "runc": "1.1.5+ds1-1astra1",
            "iptables": "1.8.7-1astra1",
        }
    finally:
        served.close()
        key.close()
