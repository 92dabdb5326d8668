"""The registry route with the registry the installer runs itself, over TLS, on a node Docker must verify.

The registry node ``reg-1`` lives in a network namespace the test makes
(10.254.73.2): Docker skips TLS checks for registries on 127.0.0.0/8, so only a
non-loopback address shows that the nodes really verify the site CA. Its image
is the Debian ``docker-registry`` binary packed as an image (tests/engines.py):
the same program as the ``registry:2`` image a real bundle ships, run by the
installer exactly as it would run that one.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import requests

from . import test_installer
from .conftest import Keys
from .test_installer import _empty_engines, _install, _node_site

ADDRESS = "10.254.73.2:5000"
image_site = test_installer.image_site  # the fixture: two images on the three loopback nodes
full_site = test_installer.full_site  # the fixture: images, rke (a stand-in), steps


@pytest.fixture(scope="module")
def reg_node(ssh_cluster):
    from .nodes import Node, SiteNet

    client, _ = ssh_cluster
    net = SiteNet()
    node = None
    try:
        node = Node(net.address, "reg-1", client, netns=net.name)
        yield node
    finally:
        if node is not None:
            node.stop()
        net.stop()


@pytest.fixture
def reg_site(project, keys: Keys, tmp_path: Path, cache_dir: Path, source_engine, ssh_cluster, reg_node):
    """Two app images and the registry image in one bundle; the inventory adds reg-1 as a control-plane node."""
    from .engines import registry_image
    from .nodes import cluster_yml

    client, nodes = ssh_cluster
    for container in reg_node.engine.client.containers.list(all=True):  # a registry an earlier test ran
        container.remove(force=True)
    _empty_engines([*nodes, reg_node])
    for node in nodes:
        shutil.rmtree(node.certs / ADDRESS, ignore_errors=True)
    registry_image(source_engine.engine)
    manifest = project.write_manifest(
        "apiVersion: airbundle/v1\nkind: Bundle\nname: regs\nversion: '1.0'\n"
        "platform: {os: debian, codename: bookworm, arch: amd64}\n"
        "images:\n  - {ref: test/app-a:1, from: daemon}\n  - {ref: test/app-b:1, from: daemon}\n"
        "  - {ref: test/registry:2, from: daemon}\n"
        "install: {images_mode: registry, registry_image: test/registry:2}\n",
        "regs.yaml",
    )
    site = _node_site(manifest, keys, tmp_path, cache_dir, nodes, env=source_engine.engine.env)
    (site / "cluster.yml").write_text(cluster_yml([*nodes, reg_node], workers={"worker-1", "worker-2"}))
    return site, client, nodes


def _registry_log(node) -> str:
    return node.engine.client.containers.get("airbundle-registry").logs().decode(errors="replace")


def _uploads(log: str) -> int:
    """Completed blob uploads in the registry's own access log."""
    return len(re.findall(r'"PUT /v2/\S+/blobs/uploads/\S+ HTTP/1.1" 201', log))


def test_registry_on_a_node_with_its_own_ca(reg_site, reg_node, keys: Keys, source_engine, tmp_path) -> None:
    site, client, nodes = reg_site
    data = tmp_path / "reg-data"
    args = ("--ssh-config", str(client.config), "--registry-node", "reg-1", "--registry-data", str(data))

    plan = _install(site, keys, *args, "--dry-run")
    assert plan.returncode == 0, plan.stderr
    assert "2 images (test/app-a:1, test/app-b:1)" in plan.stdout  # the registry's image is no workload
    assert (
        f"a registry the installer runs on reg-1 ({data}) at {ADDRESS} (TLS trusted via its own site CA"
        in (plan.stdout)
    )
    busy = _install(site, keys, *args, "--registry-port", "2222", "--only", "preflight")
    assert busy.returncode == 6 and re.search(
        r"reg-1 +FAILED: .*port 2222 \(site registry\) is in use", busy.stdout
    )
    # A data folder on a 1 MiB disk (a tmpfs only reg-1 sees), for ~20 MiB of images.
    small = tmp_path / "small"
    small.mkdir()
    enter = ["nsenter", "-t", str(reg_node.engine.proc.pid), "-m"]
    subprocess.run([*enter, "mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(small)], check=True)
    full = _install(site, keys, *args[:-1], str(small / "registry"), "--only", "preflight")
    assert full.returncode == 6
    need = rf"reg-1 +FAILED: 1 MiB free for the site registry's {small}/registry, its images need \d\d MiB"
    assert re.search(need, full.stdout), full.stdout
    ca_alone = _install(site, keys, *args, "--registry-ca", str(site / "cluster.yml"), "--dry-run")
    assert (
        ca_alone.returncode == 2 and "--registry-ca with --registry-node is the CA of your" in ca_alone.stderr
    )

    first = _install(site, keys, *args, "--only", "images", "--registry-chunk", "8K")
    assert first.returncode == 0, first.stdout + first.stderr
    assert f"registry on reg-1: started at {ADDRESS} (image loaded" in first.stdout
    assert f"CA for {ADDRESS} written to /etc/docker/certs.d on reg-1, worker-1, worker-2" in first.stdout
    sent = re.search(
        r"registry \S+: (\d+) blobs sent \(\d+ bytes, (\d+) chunks\), (\d+) mounted", first.stdout
    )
    assert sent and int(sent[1]) == 5 and int(sent[2]) >= 2 and sent[3] == "1", first.stdout
    # Each node's Docker trusts the CA through its own certs.d (cp-1 is no image target: none there).
    ca = site / "work" / "registry-tls" / "ca.crt"
    for node in [*nodes, reg_node]:
        have = (node.certs / ADDRESS / "ca.crt").read_bytes() if (node.certs / ADDRESS).exists() else None
        assert have == (None if node.name == "cp-1" else ca.read_bytes()), node.name
    assert oct((site / "work" / "registry-tls" / "ca.key").stat().st_mode & 0o777) == "0o600"
    assert oct((data / "certs" / "tls.key").stat().st_mode & 0o777) == "0o600"
    # The registry speaks TLS with a certificate for its address, chained to that CA.
    assert requests.get(f"https://{ADDRESS}/v2/", verify=str(ca), timeout=10).status_code == 200
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(f"https://{ADDRESS}/v2/", timeout=10)
    src = source_engine.engine.client
    want = {src.images.get(t).id for t in ("test/app-a:1", "test/app-b:1")}
    tool = src.images.get("test/registry:2").id  # the registry's own image stays on its node
    for node in nodes[1:]:
        assert want <= {i.id for i in node.engine.client.images.list()} and tool not in {
            i.id for i in node.engine.client.images.list()
        }
    assert tool in {i.id for i in reg_node.engine.client.images.list()}
    out = nodes[2].engine.client.containers.run("test/app-a:1", network_mode="none", remove=True)
    assert out.decode() == source_engine.outputs["test/app-a:1"]
    log = _registry_log(reg_node)
    assert _uploads(log) == 5 and '"PATCH /v2/' in log and '"GET /v2/test/app-a/manifests/sha256:' in log

    # A re-run: the registry is left running, nothing is uploaded, every pull is checked again.
    seen = len(log)
    again = _install(site, keys, *args, "--only", "images")
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"registry on reg-1: already running at {ADDRESS}" in again.stdout
    assert ": 0 blobs sent (0 bytes), 0 mounted, 6 already there" in again.stdout  # the shared base twice
    assert (
        "CA for" not in again.stdout
        and "worker-2             ok: 0 pulled, 2 already present" in again.stdout
    )
    later = _registry_log(reg_node)[seen:]
    assert _uploads(later) == 0 and "blobs/uploads" not in later
    # Docker has the manifests by digest already, but still reaches the registry (over TLS) for each pull.
    assert len(re.findall(r'"GET /v2/ HTTP/1.1" 200 \S+ "" "docker/', later)) >= 4

    # A node whose Docker lacks the CA: the site registry given by address, trusted here only
    # through this node's CA store (SSL_CERT_FILE), nothing written to the nodes.
    shutil.rmtree(nodes[2].certs / ADDRESS)
    _empty_engines([nodes[2]])
    existing = ("--ssh-config", str(client.config), "--only", "images", "--registry", ADDRESS)
    untrusted = _install(site, keys, *existing)
    assert untrusted.returncode == 6
    assert f"registry {ADDRESS}: its TLS certificate is not trusted here" in untrusted.stderr
    assert "--registry-ca FILE" in untrusted.stderr
    lacking = _install(site, keys, *existing, env={"SSL_CERT_FILE": str(ca)})
    assert lacking.returncode == 6, lacking.stdout + lacking.stderr
    assert "worker-1             ok: 0 pulled, 2 already present" in lacking.stdout
    assert (
        f"worker-2             FAILED: worker-2: Docker there does not trust the TLS certificate of {ADDRESS}"
        in lacking.stdout
    )
    assert f"put the site CA at /etc/docker/certs.d/{ADDRESS}/ca.crt on worker-2" in lacking.stdout
    assert "x509" in lacking.stdout and "images: failed on worker-2" in lacking.stderr
    fixed = _install(site, keys, *existing, "--registry-ca", str(ca))
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    assert f"CA for {ADDRESS} written to /etc/docker/certs.d on worker-2\n" in fixed.stdout
    assert "worker-2             ok: 2 pulled, 0 already present" in fixed.stdout
    assert want <= {i.id for i in nodes[2].engine.client.images.list()}


@pytest.mark.parametrize("mode", ["basic", "token"])
def test_an_existing_registry_with_credentials(image_site, keys: Keys, source_engine, mode: str) -> None:
    """Basic auth, or Bearer tokens from the registry's realm: the push and every node's pull log in."""
    from .registries import PASSWORD, USER, Registry

    site, client, nodes = image_site
    registry = Registry(mode)
    try:
        args = ("--ssh-config", str(client.config), "--only", "images", "--registry", registry.host)
        anonymous = _install(site, keys, *args)
        assert anonymous.returncode == 6 and "asks for credentials; give --registry-user" in anonymous.stderr
        wrong = _install(
            site, keys, *args, "--registry-user", USER, env={"AIRBUNDLE_REGISTRY_PASSWORD": "nope"}
        )
        assert wrong.returncode == 6 and f"refused the credentials of '{USER}'" in wrong.stderr, wrong.stderr
        assert "nope" not in wrong.stdout + wrong.stderr
        ok = _install(
            site, keys, *args, "--registry-user", USER, env={"AIRBUNDLE_REGISTRY_PASSWORD": PASSWORD}
        )
        assert ok.returncode == 0, ok.stdout + ok.stderr
        assert "5 blobs sent" in ok.stdout and "(plain HTTP: no TLS)" in ok.stdout
        assert PASSWORD not in ok.stdout + ok.stderr
        src = source_engine.engine.client
        want = {src.images.get(t).id for t in ("test/app-a:1", "test/app-b:1")}
        for node in nodes[1:]:
            assert want <= {i.id for i in node.engine.client.images.list()}
            assert registry.host in (node.root / "docker-config" / "config.json").read_text()  # docker login
        if registry.token_server is not None:
            scopes = {r.get("scope") for r in registry.token_server.requests}
            assert {"repository:test/app-a:pull,push", "repository:test/app-a:push,pull"} & scopes, scopes
    finally:
        registry.stop()


def test_the_cluster_phase_gives_rke_the_registry(full_site, keys: Keys) -> None:
    """In the registry mode the cluster phase runs rke with private_registries naming the site registry."""
    import yaml

    site, client, _, _, _ = full_site
    env = {"AIRBUNDLE_REGISTRY_PASSWORD": "s3cret"}
    args = (
        "--yes",
        "--ssh-config",
        str(client.config),
        "--only",
        "cluster",
        "--registry",
        "10.254.73.9:5443",
    )
    plan = _install(site, keys, *args, "--registry-user", "puller", "--dry-run", env=env)
    assert "with private_registries: 10.254.73.9:5443 (default)" in plan.stdout
    done = _install(site, keys, *args, "--registry-user", "puller", env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    config = site / "work" / "cluster.yml"
    assert f"rke stand-in: cluster up from {config}" in done.stdout
    entries = yaml.safe_load(config.read_text())["private_registries"]
    assert entries == [
        {"url": "10.254.73.9:5443", "is_default": True, "user": "puller", "password": "s3cret"}
    ]
    assert config.stat().st_mode & 0o777 == 0o600 and "s3cret" not in done.stdout + done.stderr


def test_rke_gets_the_site_registry(tmp_path: Path) -> None:
    """rke up runs with the inventory plus private_registries (the default), in a 0600 copy."""
    from bundler.installer.apply import rke_up
    from bundler.installer.inventory import with_private_registries

    inventory = tmp_path / "cluster.yml"
    inventory.write_text(
        "nodes:\n  - {address: 10.0.0.1, user: root, role: [controlplane, etcd, worker]}\n"
        "private_registries:\n  - {url: mirror.example:5000, is_default: true}\n"
        "  - {url: '10.0.0.9:5000', user: old}\n"
    )
    rke = tmp_path / "rke"
    rke.write_text('#!/bin/sh\ncp "$3" seen.yml\necho kube > kube_config_cluster.yml\n')
    rke.chmod(0o755)
    work = tmp_path / "work"
    work.mkdir()
    entry = {"url": "10.0.0.9:5000", "is_default": True, "user": "pusher", "password": "pw"}
    rke_up(rke, inventory, work, {"PATH": "/usr/bin:/bin"}, lambda line: None, [entry])
    import yaml

    seen = yaml.safe_load((work / "seen.yml").read_text())
    assert seen["nodes"][0]["address"] == "10.0.0.1"
    assert seen["private_registries"] == [{"url": "mirror.example:5000", "is_default": False}, entry]
    assert (work / "cluster.yml").stat().st_mode & 0o777 == 0o600
    assert with_private_registries("nodes: []\n", []) == "nodes: []\n"


def test_registry_on_a_node_with_a_site_certificate(reg_site, reg_node, keys: Keys, tmp_path) -> None:
    """The operator's own certificate: the registry serves it, the nodes trust its CA; a restart keeps the data."""
    from .registries import site_certificate

    site, client, nodes = reg_site
    ca, cert, key = site_certificate(tmp_path, ADDRESS.split(":")[0])
    data = tmp_path / "reg-data"
    args = ["--ssh-config", str(client.config), "--only", "images", "--registry-node", "reg-1"]
    args += ["--registry-data", str(data)]
    own = _install(site, keys, *args)  # first with the installer's own CA
    assert own.returncode == 0, own.stdout + own.stderr
    args += ["--registry-cert", str(cert), "--registry-key", str(key), "--registry-ca", str(ca)]
    plan = _install(site, keys, *args, "--dry-run")
    assert f"(TLS trusted via {ca})" in plan.stdout
    swapped = _install(site, keys, *args)
    assert swapped.returncode == 0, swapped.stdout + swapped.stderr
    assert (
        f"registry on reg-1: started at {ADDRESS} (image was present" in swapped.stdout
    )  # a new certificate
    assert f"CA for {ADDRESS} written to /etc/docker/certs.d on reg-1, worker-1, worker-2" in swapped.stdout
    assert " 0 blobs sent (0 bytes)" in swapped.stdout  # the data folder outlived the old container
    assert requests.get(f"https://{ADDRESS}/v2/", verify=str(ca), timeout=10).status_code == 200
    for node in nodes[1:]:
        assert (node.certs / ADDRESS / "ca.crt").read_bytes() == ca.read_bytes()


def test_the_installers_certificate_is_renewed_near_its_end(tmp_path: Path) -> None:
    """ensure_tls keeps a good certificate, and makes a new one (same CA) when it nears its end."""
    from bundler.installer.siteregistry import ensure_tls

    folder = tmp_path / "tls"
    first = ensure_tls(folder, "10.0.0.5:5000")
    kept = ensure_tls(folder, "10.0.0.5:5000")
    assert kept == first and kept.cert.read_bytes() == first.cert.read_bytes()
    ca = first.ca.read_bytes()
    text = subprocess.run(
        ["openssl", "x509", "-noout", "-text", "-in", str(first.cert)], capture_output=True, text=True
    )
    assert "IP Address:10.0.0.5" in text.stdout and "TLS Web Server Authentication" in text.stdout
    # Re-sign the certificate for 2 days only: inside the renewal window.
    csr = tmp_path / "short.csr"
    subprocess.run(
        ["openssl", "req", "-new", "-key", str(first.key), "-subj", "/CN=10.0.0.5", "-out", str(csr)],
        check=True,
    )
    subprocess.run(
        ["openssl", "x509", "-req", "-in", str(csr), "-CA", str(first.ca), "-CAkey", str(folder / "ca.key"),
         "-CAcreateserial", "-days", "2", "-out", str(first.cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    short = first.cert.read_bytes()
    renewed = ensure_tls(folder, "10.0.0.5:5000")
    assert renewed.cert.read_bytes() != short and renewed.ca.read_bytes() == ca
    check = ["openssl", "x509", "-checkend", str(300 * 24 * 3600), "-noout", "-in", str(renewed.cert)]
    assert subprocess.run(check, capture_output=True).returncode == 0
    assert (
        oct(folder.stat().st_mode & 0o777) == "0o700"
        and oct((folder / "ca.key").stat().st_mode & 0o777) == "0o600"
    )
