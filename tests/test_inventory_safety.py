"""Inventories are the operator's, but what they say reaches ssh's command line and the nodes'
shells: a login, address or node name that ssh would read as an option (``-oProxyCommand=...``
runs a command on the installer's host) or that carries shell characters is refused with its
FILE:LINE before anything runs; YAML built to blow up (nested aliases, deep nesting) is an error,
not a hang or a traceback. Also the 3.6-only failures a review found (``str.isascii``)."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from bundler.errors import InputError
from bundler.installer import k0sctl
from bundler.installer.inventory import load_endpoint, load_inventory

ROOT = Path(__file__).resolve().parent.parent
K0SCTL_HEAD = (
    "apiVersion: k0sctl.k0sproject.io/v1beta1\nkind: Cluster\nmetadata: {name: x}\nspec:\n  hosts:\n"
)


@pytest.mark.parametrize(
    ("node", "words"),
    [
        ('{address: 10.0.0.1, user: "-oProxyCommand=touch {mark}", role: [worker]}', "is not a login"),
        ('{address: "-oProxyCommand=touch {mark}", user: root, role: [worker]}', "is not a address"),
        (
            '{address: 10.0.0.1, user: root, role: [worker], hostname_override: "n1;touch {mark};#"}',
            "is not a name",
        ),
        ('{address: "10.0.0.1;touch {mark}", user: root, role: [worker]}', "is not a address"),
    ],
)
def test_cluster_yml_values_that_would_reach_a_shell_are_refused(
    tmp_path: Path, node: str, words: str
) -> None:
    mark = tmp_path / "ran"
    inventory = tmp_path / "cluster.yml"
    inventory.write_text("nodes:\n  - " + node.replace("{mark}", str(mark)) + "\n")
    with pytest.raises(InputError) as caught:
        load_inventory(inventory)
    assert f"{inventory}:2:" in str(caught.value) and words in str(caught.value)
    assert not mark.exists()


@pytest.mark.parametrize(
    ("host", "words"),
    [
        ("    ssh: {address: 10.0.0.1, user: '-oProxyCommand=touch {mark}'}\n", "ssh.user"),
        ("    ssh: {address: '-oProxyCommand=touch {mark}', user: root}\n", "ssh.address"),
        ("    ssh: {address: 10.0.0.1}\n    hostname: 'a;touch {mark}'\n", "hostname must be a name"),
    ],
)
def test_k0sctl_yaml_values_that_would_reach_a_shell_are_refused(
    tmp_path: Path, host: str, words: str
) -> None:
    mark = tmp_path / "ran"
    path = tmp_path / "k0sctl.yaml"
    path.write_text(K0SCTL_HEAD + "  - role: single\n" + host.replace("{mark}", str(mark)))
    with pytest.raises(InputError) as caught:
        k0sctl.load(path)
    assert str(path) in str(caught.value) and words in str(caught.value)
    assert not mark.exists()


def test_the_installer_refuses_an_option_as_login_before_any_ssh(tmp_path: Path, built: Path, keys) -> None:
    """Through install.sh, --dry-run included: exit 2 naming the line, and ssh never ran the command."""
    from .test_installer import _install, _site

    site = _site(built, tmp_path)
    mark = tmp_path / "ran"
    (site / "cluster.yml").write_text(
        "nodes:\n  - {address: 127.0.0.1, port: 2222, user: root, role: [controlplane, etcd]}\n"
        f'  - {{address: 127.0.0.1, user: "-oProxyCommand=touch {mark}", role: [worker]}}\n'
    )
    for extra in (("--dry-run",), ()):
        run = _install(site, keys, *extra)
        assert run.returncode == 2, run.stdout + run.stderr
        assert "cluster.yml:3:" in run.stderr and "is not a login" in run.stderr
        assert "Traceback" not in run.stderr
    assert not mark.exists()


def test_nested_aliases_and_deep_nesting_are_errors_not_hangs(tmp_path: Path) -> None:
    bomb = ["a0: &a0 [x]"] + [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 10)]
    path = tmp_path / "k0sctl.yaml"
    path.write_text(K0SCTL_HEAD + "  - role: single\n    ssh: {address: 10.0.0.1}\n" + "\n".join(bomb) + "\n")
    started = time.monotonic()
    with pytest.raises(InputError) as caught:
        k0sctl.load(path)
    assert time.monotonic() - started < 10
    assert "unknown key 'a0'" in str(caught.value)
    deep = tmp_path / "deep.yaml"
    deep.write_text(
        "apiVersion: k0sctl.k0sproject.io/v1beta1\nkind: Cluster\nspec: " + "[" * 3000 + "]" * 3000 + "\n"
    )
    with pytest.raises(InputError, match=r"nested too deeply|not a valid"):
        k0sctl.load(deep)
    rke = tmp_path / "cluster.yml"
    rke.write_text("nodes: " + "[" * 3000 + "]" * 3000 + "\n")
    with pytest.raises(InputError, match=r"nested too deeply|not a valid"):
        load_inventory(rke)


@pytest.mark.parametrize("vip", ["10.0.0.100:6²", "999.0.0.1", "10.0.0.100:70000"])
def test_a_vip_that_is_not_an_address_and_port_is_refused(tmp_path: Path, vip: str) -> None:
    path = tmp_path / "cluster.yml"
    path.write_text(
        f'vip: "{vip}"\nnodes:\n  - {{address: 10.0.0.1, user: root, role: [controlplane, etcd]}}\n'
    )
    with pytest.raises(InputError, match=r"cluster\.yml:1: vip: .* is not an IPv4 address"):
        load_endpoint(path)


def test_python36_reads_key_options_and_pax_sizes() -> None:
    """str.isascii is 3.7+: the key-window options of an allowed_signers line and a PAX size record
    are read with a regex instead, on the site's 3.6 too."""
    python36 = sorted((Path.home() / ".pyenv" / "versions").glob("3.6.*"))
    if not python36:
        pytest.skip("no pyenv python 3.6 under ~/.pyenv/versions")
    script = (
        "import sys; sys.path.insert(0, sys.argv[1])\n"
        "from bundler import signing, trust\n"
        "keys = signing.parse_public_keys("
        '\'airbundle valid-after="20240101",valid-before="20991231" ssh-ed25519 '
        "AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C7okWi0dh2l9GKJl t', 'allowed_signers')\n"
        "print(len(keys), trust.pax_size('m', {'size': '12345'}))\n"
    )
    run = subprocess.run(
        [str(python36[0] / "bin" / "python3"), "-I", "-S", "-c", script, str(ROOT)],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["1", "12345"]
