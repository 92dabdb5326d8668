"""The k0s kind (issue 16, point 4): the stand-ins for k0s and k0sctl on loopback nodes (each its own
sshd on 127.0.0.15x:2222 in a private mount namespace where /var/lib/k0s and /usr/local/bin are
folders of its own), and the image list the build takes from the pinned k0s."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from bundler import k0simages

from .k0s_standin import AIRGAP_IMAGES, K0S_VERSION, K0SCTL_VERSION, standin_bytes
from .nodes import SSH_PORT, Client, Node

ADDRESSES = {f"k0s-{i}": f"127.0.0.{150 + i}" for i in range(1, 6)}  # c1-c3 controllers, 4-5 workers
ROLES = {
    "k0s-1": "controller",
    "k0s-2": "controller",
    "k0s-3": "controller",
    "k0s-4": "worker",
    "k0s-5": "worker",
}
# Each node's own k0s folders: its data dir (and another, for a host's dataDir), its binaries, and
# /etc/k0s (the k0s config and the join token files).
# /run/containerd: where a system containerd's socket would be (empty unless a test puts one there).
BINDS = ("/var/lib/k0s", "/var/lib/k0s-data", "/usr/local/bin", "/etc/k0s", "/run/containerd")
API = Path("/tmp/k0s-standin-api")  # the stand-in's "API" of each controller: the tokens it made


def test_the_installer_knows_the_list_the_standin_prints() -> None:
    """bundler/k0simages.py (the code under test) and the stand-in's knowledge, written apart, agree."""
    assert list(k0simages.KNOWN[K0S_VERSION]) == AIRGAP_IMAGES
    assert k0simages.kubernetes_version(K0S_VERSION) == "v1.28.15"
    assert (
        k0simages.parse_list("time=x level=info msg=hi\n" + "\n".join(AIRGAP_IMAGES) + "\n") == AIRGAP_IMAGES
    )


@pytest.fixture(scope="module")
def k0s_nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Client, dict[str, Node]]]:
    client = Client(tmp_path_factory.mktemp("k0s-client"))
    nodes: dict[str, Node] = {}
    try:
        for name, address in ADDRESSES.items():
            nodes[name] = Node(address, name, client, docker=False, binds=BINDS)
        yield client, nodes
    finally:
        for node in nodes.values():
            node.stop()


def _data(node: Node) -> Path:
    return node.binds["/var/lib/k0s"]


def _reset(nodes: dict[str, Node], k0s: bytes | None = None) -> None:
    """Every node as fresh: no k0s state, no images; the pinned k0s in its /usr/local/bin."""
    for node in nodes.values():
        for folder in node.binds.values():
            subprocess.run(["sh", "-c", f'rm -rf "{folder}"/* "{folder}"/.[!.]*'], check=True)
        subprocess.run(["rm", "-rf", str(API / node.address)], check=True)
        exe = node.binds["/usr/local/bin"] / "k0s"
        exe.write_bytes(standin_bytes("k0s") if k0s is None else k0s)
        exe.chmod(0o755)


def _airgap_bundle(names: list[str]) -> bytes:
    """A docker-archive (``docker image save``) naming ``names``: what k0s reads the names from."""
    manifest = json.dumps([{"Config": "c.json", "RepoTags": [n], "Layers": []} for n in names]).encode()
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        info = tarfile.TarInfo("manifest.json")
        info.size = len(manifest)
        tar.addfile(info, io.BytesIO(manifest))
    return out.getvalue()


def _give_images(node: Node, names: list[str] = AIRGAP_IMAGES) -> None:
    images = _data(node) / "images"
    images.mkdir(exist_ok=True)
    (images / "airgap.tar").write_bytes(_airgap_bundle(names))


def _k0sctl_yaml(tmp_path: Path, client: Client, roles: dict[str, str] = ROLES) -> Path:
    hosts = "".join(
        f"  - role: {role}\n    ssh:\n      address: {ADDRESSES[name]}\n      user: root\n"
        f"      port: {SSH_PORT}\n      keyPath: {client.key}\n"
        for name, role in roles.items()
    )
    path = tmp_path / "k0sctl.yaml"
    path.write_text(
        "apiVersion: k0sctl.k0sproject.io/v1beta1\nkind: Cluster\nmetadata:\n  name: kuma\nspec:\n"
        f"  hosts:\n{hosts}  k0s:\n    version: {K0S_VERSION}\n"
    )
    return path


def _k0sctl(tmp_path: Path, *args: str, known_hosts: str | None = None) -> subprocess.CompletedProcess[str]:
    exe = tmp_path / "k0sctl"
    exe.write_bytes(standin_bytes("k0sctl"))
    exe.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k != "SSH_KNOWN_HOSTS"}
    env["HOME"] = str(tmp_path)  # without SSH_KNOWN_HOSTS, k0sctl records keys in ~/.ssh/known_hosts
    if known_hosts is not None:
        env["SSH_KNOWN_HOSTS"] = known_hosts
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"  # its python3 has PyYAML, as rke's
    return subprocess.run([str(exe), *args], capture_output=True, text=True, env=env, timeout=300)


def _log(nodes: dict[str, Node]) -> list[tuple[float, str, str]]:
    """Every node's stand-in log, merged in wall-clock order: (stamp, node, what)."""
    out = []
    for node in nodes.values():
        path = _data(node) / "standin.log"
        for line in path.read_text().splitlines() if path.exists() else []:
            stamp, name, what = line.split(" ", 2)
            out.append((float(stamp), name, what))
    return sorted(out)


def test_k0s_standin_lists_its_images_and_version(tmp_path: Path) -> None:
    exe = tmp_path / "k0s"
    exe.write_bytes(standin_bytes("k0s"))
    exe.chmod(0o755)
    said = subprocess.run([str(exe), "airgap", "list-images"], capture_output=True, text=True, check=True)
    assert said.stdout.split() == AIRGAP_IMAGES
    assert subprocess.run([str(exe), "version"], capture_output=True, text=True).stdout.strip() == K0S_VERSION
    # a token needs a running controller, as k0s (it reads the admin kubeconfig it writes)
    data = ["--data-dir", str(tmp_path / "data")]
    refused = subprocess.run(
        [str(exe), "token", "create", "--role=worker", *data], capture_output=True, text=True
    )
    assert (
        refused.returncode == 1 and "check if the control plane is initialized on this node" in refused.stderr
    )
    worker = subprocess.run([str(exe), "install", "worker", *data], capture_output=True, text=True)
    assert worker.returncode == 1 and "needs --token-file" in worker.stderr


def test_k0sctl_apply_brings_up_ha_in_order_over_ssh(k0s_nodes, tmp_path: Path) -> None:
    """3 controllers and 2 workers as KUMA's guide wants: the first controller is installed and started
    before any token is made; the other controllers join before the workers; every join uses a token
    of its role; the workers' image bundles hold every image under its exact name."""
    client, nodes = k0s_nodes
    _reset(nodes)
    for name in ("k0s-4", "k0s-5"):
        _give_images(nodes[name])
    assert _k0sctl(tmp_path, "version").stdout.startswith(f"version: {K0SCTL_VERSION}")
    done = _k0sctl(tmp_path, "apply", "--config", str(_k0sctl_yaml(tmp_path, client)))
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"k0s cluster version {K0S_VERSION} is now installed" in done.stdout
    events = [(node, what) for _, node, what in _log(nodes)]
    assert [(n, " ".join(w.split()[:2])) for n, w in events[:2]] == [
        ("k0s-1", "install controller"),
        ("k0s-1", "start controller"),
    ]
    joins = [(n, w) for n, w in events if w.startswith("install")]
    assert [n for n, _ in joins] == ["k0s-1", "k0s-2", "k0s-3", "k0s-4", "k0s-5"]
    assert all("--token-file" in w for n, w in joins[1:])
    assert [w.split(" expiry=")[0] for n, w in events if w.startswith("token create")] == [
        "token create controller"
    ] * 2 + ["token create worker"] * 2
    assert all(n == "k0s-1" for n, w in events if w.startswith("token"))
    for name in ("k0s-1", "k0s-2", "k0s-3"):  # k0sctl's Configure k0s phase, then --config
        assert "--config=/etc/k0s/k0s.yaml" in _unit(nodes[name])["flags"]
        assert (
            yaml.safe_load((nodes[name].binds["/etc/k0s"] / "k0s.yaml").read_text())["spec"]["api"]["address"]
            == (ADDRESSES[name])
        )
    kubeconfig = _k0sctl(tmp_path, "kubeconfig", "--config", str(tmp_path / "k0sctl.yaml"))
    assert kubeconfig.returncode == 0 and f"https://{ADDRESSES['k0s-1']}:6443" in kubeconfig.stdout


def test_k0sctl_fails_like_the_tool_when_a_worker_lacks_an_image(k0s_nodes, tmp_path: Path) -> None:
    client, nodes = k0s_nodes
    _reset(nodes)
    _give_images(nodes["k0s-4"])
    _give_images(nodes["k0s-5"], AIRGAP_IMAGES[:-1])  # no pause
    done = _k0sctl(tmp_path, "apply", "--config", str(_k0sctl_yaml(tmp_path, client)))
    assert done.returncode == 1
    assert 'level=fatal msg="failed on 1 hosts:' in done.stdout
    assert (
        f"[ssh] {ADDRESSES['k0s-5']}:{SSH_PORT}: /var/lib/k0s/images: no image bundle holds registry.k8s.io/pause:3.8"
        in done.stdout
    )
    assert _log(nodes) == []  # nothing installed


def test_k0sctl_fails_like_the_tool_when_a_host_lacks_k0s(k0s_nodes, tmp_path: Path) -> None:
    """Without the pinned k0s on a host k0sctl would download it, which an isolated site cannot."""
    client, nodes = k0s_nodes
    _reset(nodes)
    (nodes["k0s-3"].binds["/usr/local/bin"] / "k0s").unlink()
    done = _k0sctl(tmp_path, "apply", "--config", str(_k0sctl_yaml(tmp_path, client)))
    assert done.returncode == 1
    assert f"[ssh] {ADDRESSES['k0s-3']}:{SSH_PORT}: download k0s binary" in done.stdout
    assert "lookup github.com: no such host" in done.stdout


def test_k0sctl_reaches_hosts_as_the_file_says(k0s_nodes, tmp_path: Path) -> None:
    """Another key than the host accepts, or another port: k0sctl cannot connect, naming the host."""
    client, nodes = k0s_nodes
    _reset(nodes)
    path = _k0sctl_yaml(tmp_path, client)
    path.write_text(path.read_text().replace(f"port: {SSH_PORT}", "port: 2223", 1))
    done = _k0sctl(tmp_path, "apply", "--config", str(path))
    assert done.returncode == 1 and f"[ssh] {ADDRESSES['k0s-1']}:2223" in done.stdout


def test_k0s_worker_refuses_to_start_without_its_images(k0s_nodes, tmp_path: Path) -> None:
    """k0s itself: a worker whose image bundles lack an image fails at start, naming it."""
    client, nodes = k0s_nodes
    _reset(nodes)
    node = nodes["k0s-4"]
    ssh = ["ssh", "-F", str(client.config), "-p", str(SSH_PORT), f"root@{node.address}"]
    token = tmp_path / "t"
    token.write_text("not a token")
    subprocess.run([*ssh, "cat > /tmp/k0s-test-token"], input=b"x", check=True)
    bad = subprocess.run(
        [*ssh, "k0s install worker --token-file /tmp/k0s-test-token"], capture_output=True, text=True
    )
    assert bad.returncode == 1 and "failed to decode join token" in bad.stderr


# ---------------------------------------------------------------- the build: k0s's list from the pinned k0s

K0S_MANIFEST = """
apiVersion: airbundle/v1
kind: Bundle
name: kuma-test
version: "1.0.0"
platform: {{os: debian, codename: bookworm, arch: amd64}}
min_workers: 2
binaries:
  - name: k0s
    url: {k0s_url}
    sha256: {k0s_sha}
    dest: /usr/local/bin/k0s
  - name: k0sctl
    url: {k0sctl_url}
    sha256: {k0sctl_sha}
    dest: /usr/local/bin/k0sctl
cluster:
  kind: k0s
  version: {version}
  tool: k0s
  k0sctl: k0sctl
  shared_roles: demo-only
"""


@pytest.fixture(scope="module")
def k0s_mirror() -> Iterator[object]:
    """A loopback registry serving k0s's airgap images under quay/ and k8s/ (for --mirror)."""
    from .registries import Registry
    from .rke_images import Pusher

    reg = Registry("open")
    try:
        pusher = Pusher(reg.host)
        for ref in AIRGAP_IMAGES:
            registry, rest = ref.split("/", 1)
            pusher.push(f"docker.io/{rest}", "quay" if registry == "quay.io" else "k8s")
        yield reg
    finally:
        reg.stop()


def _k0s_manifest(project, version: str = K0S_VERSION) -> Path:
    import hashlib

    k0s, k0sctl = standin_bytes("k0s"), standin_bytes("k0sctl")
    fields = {"version": version}
    for name, data in (("k0s", k0s), ("k0sctl", k0sctl)):
        sha = hashlib.sha256(data).hexdigest()
        fields[f"{name}_url"] = project.origin.add(f"/{name}-{sha[:12]}", data)
        fields[f"{name}_sha"] = sha
    return project.write_manifest(K0S_MANIFEST.format(**fields), "kuma.yaml")


def test_build_takes_the_airgap_list_from_the_pinned_k0s(project, keys, tmp_path: Path, k0s_mirror) -> None:
    from bundler import archive

    from .conftest import run_cli

    reg = k0s_mirror
    manifest = _k0s_manifest(project)
    mirrors = ["--mirror", f"quay.io={reg.host}/quay", "--mirror", f"registry.k8s.io={reg.host}/k8s"]
    result = run_cli(
        "build", manifest, "-o", tmp_path / "out", "--key", keys.key_path, "--cache", tmp_path / "c", *mirrors
    )
    assert result.exit_code == 0, result.stderr
    bundle = Path(result.stdout.strip().splitlines()[-1])
    assert archive.verify_bundle(bundle, [keys.pub]).problems == []
    with archive.Bundle(bundle, None) as opened:
        lock = opened.unverified()[0]
    assert lock.cluster == {
        "kind": "k0s",
        "kubernetes_version": K0S_VERSION,
        "network_plugin": "kuberouter",
        "tool": "k0s",
        "k0sctl": "k0sctl",
        "shared_roles": "demo-only",
    }
    assert [(s.ref, s.roles) for s in lock.system_images] == [(r, ("worker",)) for r in AIRGAP_IMAGES]
    assert all(lock.find_image(r) is not None for r in AIRGAP_IMAGES)


def test_build_refuses_a_k0s_of_another_release(project, keys, tmp_path: Path) -> None:
    from .conftest import run_cli

    manifest = _k0s_manifest(project, "v1.28.14+k0s.0")
    result = run_cli(
        "build", manifest, "-o", tmp_path / "out", "--key", keys.key_path, "--cache", tmp_path / "c"
    )
    assert result.exit_code == 2
    assert f"cluster.version is v1.28.14+k0s.0, but the pinned k0s is {K0S_VERSION}" in result.stderr


@pytest.mark.parametrize(
    "old, new, words",
    [
        ("  version: v1.28.15+k0s.0", "  version: v1.28.15", "k0s version (e.g. v1.28.15+k0s.0)"),
        ("  k0sctl: k0sctl", "  k0sctl: k0sctl2", "'k0sctl2' must name a binaries: entry"),
        ("  shared_roles: demo-only", "  shared_roles: never", "'never' must be one of allowed, demo-only"),
        ("  version: v1.28.15+k0s.0", "  kubernetes_version: v1.28.15", "goes with another cluster kind"),
    ],
)
def test_bad_k0s_cluster_sections(project, old: str, new: str, words: str) -> None:
    from bundler.errors import ManifestError
    from bundler.manifest import load_manifest

    manifest = _k0s_manifest(project)
    manifest.write_text(manifest.read_text().replace(old, new))
    with pytest.raises(ManifestError) as info:
        load_manifest(manifest)
    assert "kuma.yaml:" in str(info.value) and words in str(info.value), info.value


def test_kuma_manifest_is_complete_but_for_the_release_checksums(tmp_path: Path) -> None:
    from bundler.errors import ManifestError
    from bundler.manifest import load_manifest

    root = Path(__file__).resolve().parent.parent / "manifests"
    with pytest.raises(ManifestError) as info:
        load_manifest(root / "kuma-k0s.yaml")
    assert [p.split(": ", 2)[1] for p in info.value.problems] == ["binaries[0].sha256", "binaries[1].sha256"]
    copy = tmp_path / "manifests" / "kuma-k0s.yaml"
    copy.parent.mkdir()
    copy.write_text(
        (root / "kuma-k0s.yaml")
        .read_text()
        .replace("0" * 64, "ab" * 32)
        .replace("# PLACEHOLDER: see above", "")
    )
    manifest = load_manifest(copy)
    assert manifest.cluster is not None and manifest.min_workers == 2
    assert (manifest.cluster.kind, manifest.cluster.kubernetes_version) == ("k0s", K0S_VERSION)
    assert (manifest.cluster.k0sctl, manifest.cluster.shared_roles) == ("k0sctl", "demo-only")


# ---------------------------------------------------------------- the site: installer/k0s.py on loopback nodes


def _built_k0s(project, keys, tmp_path: Path, reg) -> tuple[object, Path]:
    """A k0s bundle built with the stand-ins, its lock and images/ unpacked (as the installer's are)."""
    from bundler.lock import Lock

    from .conftest import run_cli

    manifest = _k0s_manifest(project)
    mirrors = ["--mirror", f"quay.io={reg.host}/quay", "--mirror", f"registry.k8s.io={reg.host}/k8s"]
    result = run_cli(
        "build", manifest, "-o", tmp_path / "out", "--key", keys.key_path, "--cache", tmp_path / "c", *mirrors
    )
    assert result.exit_code == 0, result.stderr
    bundle = Path(result.stdout.strip().splitlines()[-1])
    unpacked = tmp_path / "unpacked"
    unpacked.mkdir()
    subprocess.run(["tar", "-xf", str(bundle), "-C", str(unpacked), "lock.json", "images", "bin"], check=True)
    return Lock.from_bytes((unpacked / "lock.json").read_bytes()), unpacked


@pytest.mark.parametrize("with_k0sctl", [True, False], ids=["k0sctl-apply", "k0s-tokens"])
def test_site_bring_up_places_images_then_brings_up_ha(
    k0s_nodes, project, keys, tmp_path: Path, k0s_mirror, monkeypatch, with_k0sctl: bool
) -> None:
    """installer/k0s.py: the workers' images as one tar into /var/lib/k0s/images on each worker (not
    on the controllers; a second run sends nothing), then the bring-up in HA order, the kubeconfig left."""
    from bundler.installer import k0s, k0sctl
    from bundler.installer.remote import SshOptions

    client, nodes = k0s_nodes
    _reset(nodes)
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}:{os.environ['PATH']}")  # the stand-in's PyYAML
    lock, unpacked = _built_k0s(project, keys, tmp_path, k0s_mirror)
    config = k0sctl.load(_k0sctl_yaml(tmp_path, client))
    opts = SshOptions(client.config)
    tar, sha = k0s.write_image_bundle(lock, unpacked, tmp_path / "work" / "k0s-images.tar")
    assert [k0s.place_images(h.node, opts, tar, sha) for h in config.workers] == ["placed", "placed"]
    assert [k0s.place_images(h.node, opts, tar, sha) for h in config.workers] == ["present", "present"]
    for name, node in nodes.items():
        placed = _data(node) / "images" / k0s.BUNDLE_NAME
        assert placed.exists() == (ROLES[name] == "worker")
    said: list[str] = []
    exe = None
    if with_k0sctl:
        exe = tmp_path / "k0sctl"
        exe.write_bytes((unpacked / "bin" / "k0sctl").read_bytes())
        exe.chmod(0o755)
    kubeconfig = k0s.bring_up(config, opts, tmp_path / "work", said.append, exe)
    assert kubeconfig.stat().st_mode & 0o777 == 0o600
    assert f"https://{ADDRESSES['k0s-1']}:6443" in kubeconfig.read_text()
    events = [(node, what) for _, node, what in _log(nodes)]
    assert [(n, " ".join(w.split()[:2])) for n, w in events[:2]] == [
        ("k0s-1", "install controller"),
        ("k0s-1", "start controller"),
    ]
    installs = [n for n, w in events if w.startswith("install")]
    assert installs == ["k0s-1", "k0s-2", "k0s-3", "k0s-4", "k0s-5"]  # controllers before workers
    starts = [n for n, w in events if w.startswith("start")]
    assert starts == installs  # each started (the workers found every image) before the next joined
    tokens = [w for n, w in events if w.startswith("token create")]
    if not with_k0sctl:  # the installer's own joins: tokens that expire within the hour (never by default)
        assert tokens == ["token create controller expiry=1h"] * 2 + ["token create worker expiry=1h"] * 2
    else:
        assert [t.split(" expiry=")[0] for t in tokens] == ["token create controller"] * 2 + [
            "token create worker"
        ] * 2


def test_site_bring_up_names_the_node_k0s_refused(k0s_nodes, tmp_path: Path) -> None:
    """Without images on a worker, k0s refuses to start there: the error names the node and what k0s said."""
    from bundler.errors import InstallError
    from bundler.installer import k0s, k0sctl
    from bundler.installer.remote import SshOptions

    client, nodes = k0s_nodes
    _reset(nodes)
    _give_images(nodes["k0s-4"])
    config = k0sctl.load(_k0sctl_yaml(tmp_path, client))
    with pytest.raises(InstallError) as caught:
        k0s.bring_up(config, SshOptions(client.config), tmp_path / "work", lambda _: None)
    assert "cluster: k0s-5" in str(caught.value) or ADDRESSES["k0s-5"] in str(caught.value)
    assert "image bundles in /var/lib/k0s/images lack" in str(caught.value)
    assert caught.value.exit_code == 6
    assert not (tmp_path / "work" / "kubeconfig-k0s").exists()
    # the tokens made before the failed join are invalidated all the same, their files removed
    events = [w for _, n, w in _log(nodes) if n == "k0s-1"]
    (invalidated,) = [w for w in events if w.startswith("token invalidate")]
    assert len(invalidated.split()) == 2 + len([w for w in events if w.startswith("token create")]) == 6
    assert not any(list(node.binds["/etc/k0s"].glob("*-token")) for node in nodes.values())


def test_install_sh_brings_up_a_k0s_bundle_from_its_k0sctl_yaml(
    k0s_nodes, project, keys, tmp_path: Path, k0s_mirror
) -> None:
    """The whole site journey for a k0s bundle: install.sh given the site's k0sctl.yaml; the dry run
    names the quorum row; the install places k0s and k0sctl, the images on the workers only, and
    k0sctl brings the cluster up in HA order; a second run does nothing."""
    from .conftest import run_cli
    from .test_installer import _install, _site

    client, nodes = k0s_nodes
    _reset(nodes)
    for node in nodes.values():
        (node.binds["/usr/local/bin"] / "k0s").unlink()  # the bundle brings it
    manifest = _k0s_manifest(project)
    mirrors = [
        "--mirror",
        f"quay.io={k0s_mirror.host}/quay",
        "--mirror",
        f"registry.k8s.io={k0s_mirror.host}/k8s",
    ]
    result = run_cli(
        "build", manifest, "-o", tmp_path / "out", "--key", keys.key_path, "--cache", tmp_path / "c", *mirrors
    )
    assert result.exit_code == 0, result.stderr
    site = _site(Path(result.stdout.strip().splitlines()[-1]), tmp_path)
    (site / "cluster.yml").write_text(_k0sctl_yaml(tmp_path, client).read_text())  # read by its apiVersion
    ssh = ("--ssh-config", str(client.config))
    dry = _install(site, keys, "--dry-run", *ssh)
    assert dry.returncode == 0, dry.stdout + dry.stderr
    assert "quorum: 3 controller node(s): quorum 2, tolerates 1 failure(s)" in dry.stdout
    assert (
        f"into /var/lib/k0s/images (DATADIR/images for a host with a dataDir) on {ADDRESSES['k0s-4']}, "
        f"{ADDRESSES['k0s-5']}" in dry.stdout
    )
    assert f"k0sctl apply --config <inventory> on this node (k0s {K0S_VERSION})" in dry.stdout
    done = _install(site, keys, *ssh)
    assert done.returncode == 0, done.stdout + done.stderr
    for name, node in nodes.items():
        assert (node.binds["/usr/local/bin"] / "k0s").exists()
        assert (_data(node) / "images" / "airbundle-images.tar").exists() == (ROLES[name] == "worker")
    events = [(n, w) for _, n, w in _log(nodes)]
    assert [n for n, w in events if w.startswith("install")] == ["k0s-1", "k0s-2", "k0s-3", "k0s-4", "k0s-5"]
    assert "k0s cluster version" in (site / "work" / "logs" / "k0sctl-apply.log").read_text()
    again = _install(site, keys, *ssh)
    assert again.returncode == 0 and "already installed" in again.stdout, again.stdout + again.stderr


# ---------------------------------------------------------------- host keys: the installer's known_hosts, not k0sctl's TOFU


def _ssh_config_with(tmp_path: Path, client: Client, known: str) -> Path:
    """A copy of the operator's ssh config whose known_hosts holds ``known`` (the test's own file)."""
    path = tmp_path / "known_hosts"
    path.write_text(known)
    config = tmp_path / "ssh_config"
    config.write_text(client.config.read_text().replace(str(client.known_hosts), str(path)))
    return config


def _other_key(tmp_path: Path) -> str:
    key = tmp_path / "other-hostkey"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    return " ".join(key.with_suffix(".pub").read_text().split()[:2])


def test_k0sctl_standin_trusts_on_first_use_and_refuses_a_changed_key(k0s_nodes, tmp_path: Path) -> None:
    """As rig (k0sctl's SSH library): SSH_KNOWN_HOSTS names the file; a host it lacks is recorded
    there on first use; a host whose key differs from the recorded one is refused, in rig's words."""
    client, nodes = k0s_nodes
    _reset(nodes)
    for name in ("k0s-4", "k0s-5"):
        _give_images(nodes[name])
    known = tmp_path / "rig" / "known_hosts"  # made by k0sctl, as rig's ensureFile
    config = str(_k0sctl_yaml(tmp_path, client))
    done = _k0sctl(tmp_path, "apply", "--config", config, known_hosts=str(known))
    assert done.returncode == 0, done.stdout + done.stderr
    recorded = known.read_text().splitlines()
    assert sorted(line.split()[0] for line in recorded) == sorted(
        f"[{a}]:{SSH_PORT}" for a in ADDRESSES.values()
    )
    assert known.stat().st_mode & 0o777 == 0o600
    _reset(nodes)
    address = ADDRESSES["k0s-4"]
    changed = [
        f"[{address}]:{SSH_PORT} {_other_key(tmp_path)}" if f"[{address}]" in line else line
        for line in recorded
    ]
    known.write_text("\n".join(changed) + "\n")
    refused = _k0sctl(tmp_path, "apply", "--config", config, known_hosts=str(known))
    assert refused.returncode == 1
    assert (
        f"[ssh] {address}:{SSH_PORT}: can't connect: ssh: handshake failed: host key mismatch: "
        "knownhosts: key mismatch" in refused.stdout
    ), refused.stdout
    assert _log(nodes) == []  # nothing ran on any host


def test_site_k0sctl_refuses_a_host_the_installer_does_not_know(k0s_nodes, tmp_path: Path) -> None:
    """k0sctl would trust an unknown host key on first use; the installer refuses the host first,
    naming it with the ssh-keyscan advice its own ssh failures give, and k0sctl never runs."""
    from bundler.errors import InstallError
    from bundler.installer import k0s, k0sctl
    from bundler.installer.remote import SshOptions

    client, nodes = k0s_nodes
    _reset(nodes)
    address = ADDRESSES["k0s-3"]
    known = "".join(
        line + "\n" for line in client.known_hosts.read_text().splitlines() if f"[{address}]" not in line
    )
    opts = SshOptions(_ssh_config_with(tmp_path, client, known))
    config = k0sctl.load(_k0sctl_yaml(tmp_path, client))
    exe = tmp_path / "bin" / "k0sctl"
    exe.parent.mkdir()
    exe.write_bytes(standin_bytes("k0sctl"))
    exe.chmod(0o755)
    with pytest.raises(InstallError) as caught:
        k0s.bring_up(config, opts, tmp_path / "work", lambda _: None, exe)
    said = str(caught.value)
    assert f"the host key of {address}:{SSH_PORT} is not known to ssh" in said
    assert f"'ssh-keyscan -p {SSH_PORT} {address} >> ~/.ssh/known_hosts'" in said
    assert caught.value.exit_code == 6
    assert not (tmp_path / "work" / "logs" / "k0sctl-apply.log").exists()  # k0sctl never ran
    assert _log(nodes) == []
    assert (tmp_path / "known_hosts").read_text() == known  # nothing recorded for the operator


def test_site_k0sctl_fails_like_rig_on_a_changed_host_key(k0s_nodes, tmp_path: Path, monkeypatch) -> None:
    """A host whose recorded key differs: k0sctl (given SSH_KNOWN_HOSTS, a file of the installer's
    own with these hosts' entries) refuses it as rig does; the error carries k0sctl's words."""
    from bundler.errors import InstallError
    from bundler.installer import k0s, k0sctl
    from bundler.installer.remote import SshOptions

    client, nodes = k0s_nodes
    _reset(nodes)
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}:{os.environ['PATH']}")  # the stand-in's PyYAML
    address = ADDRESSES["k0s-4"]
    lines = client.known_hosts.read_text().splitlines()
    known = "".join(
        (f"[{address}]:{SSH_PORT} {_other_key(tmp_path)}" if f"[{address}]" in line else line) + "\n"
        for line in lines
    )
    opts = SshOptions(_ssh_config_with(tmp_path, client, known))
    config = k0sctl.load(_k0sctl_yaml(tmp_path, client))
    exe = tmp_path / "bin" / "k0sctl"
    exe.parent.mkdir()
    exe.write_bytes(standin_bytes("k0sctl"))
    exe.chmod(0o755)
    with pytest.raises(InstallError) as caught:
        k0s.bring_up(config, opts, tmp_path / "work", lambda _: None, exe)
    said = str(caught.value)
    assert f"[ssh] {address}:{SSH_PORT}: can't connect: ssh: handshake failed: host key mismatch" in said, (
        said
    )
    given = (tmp_path / "work" / "k0s" / "known_hosts").read_text().splitlines()
    assert len(given) == 5 and (tmp_path / "work" / "k0s" / "known_hosts").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "known_hosts").read_text() == known  # the operator's file untouched
    assert _log(nodes) == []


# ---------------------------------------------------------------- the token route honours the k0sctl.yaml


def _custom_yaml(tmp_path: Path, client: Client, k0s_config: str) -> Path:
    """KUMA's hosts with a k0s config, a dataDir on a controller and a worker, a worker's
    installFlags, hostname and privateAddress."""
    path = _k0sctl_yaml(tmp_path, client)
    text = path.read_text()
    w1 = f"      address: {ADDRESSES['k0s-4']}\n      user: root\n      port: {SSH_PORT}\n      keyPath: {client.key}\n"
    text = text.replace(
        w1,
        w1
        + "    hostname: kuma-w1\n    privateAddress: 127.0.0.154\n    installFlags:\n    - --labels=kuma=core\n",
    )
    for name in ("k0s-2", "k0s-5"):
        own = f"      address: {ADDRESSES[name]}\n      user: root\n      port: {SSH_PORT}\n      keyPath: {client.key}\n"
        text = text.replace(own, own + "    dataDir: /var/lib/k0s-data\n")
    path.write_text(text + k0s_config)
    return path


K0S_CONFIG = """\
    config:
      apiVersion: k0s.k0sproject.io/v1beta1
      kind: ClusterConfig
      metadata:
        name: kuma
      spec:
        api:
          sans: [kuma.example.org]
        network:
          provider: kuberouter
"""


def _unit(node: Node) -> dict:
    return json.loads((_data(node) / "standin-unit.json").read_text())


def test_token_route_honours_the_k0sctl_yaml_and_invalidates_its_tokens(
    k0s_nodes, project, keys, tmp_path: Path, k0s_mirror
) -> None:
    """Without k0sctl, the installer does what k0sctl would: the k0s config on every controller as
    /etc/k0s/k0s.yaml (0600, its own api.address, every controller in the sans) given with --config;
    each host's dataDir as --data-dir and its images under DATADIR/images; installFlags passed on;
    privateAddress and hostname as the kubelet's --node-ip and --hostname-override. After the joins
    every token it made is invalidated and every token file removed."""
    from bundler.installer import k0s, k0sctl
    from bundler.installer.remote import SshOptions

    client, nodes = k0s_nodes
    _reset(nodes)
    lock, unpacked = _built_k0s(project, keys, tmp_path, k0s_mirror)
    config = k0sctl.load(_custom_yaml(tmp_path, client, K0S_CONFIG))
    opts = SshOptions(client.config)
    tar, sha = k0s.write_image_bundle(lock, unpacked, tmp_path / "work" / "k0s-images.tar")
    for host in config.workers:
        assert k0s.place_images(host.node, opts, tar, sha, host.images_dir) == "placed"
    assert (nodes["k0s-5"].binds["/var/lib/k0s-data"] / "images" / k0s.BUNDLE_NAME).exists()
    assert not (_data(nodes["k0s-5"]) / "images").exists()  # not where k0s would not look
    # an earlier k0s.yaml left world-readable (`k0s config create > ...`), and a link where the
    # second controller's goes: neither decides who reads the new one
    old = nodes["k0s-1"].binds["/etc/k0s"] / "k0s.yaml"
    old.write_text("# the operator's\n")
    old.chmod(0o644)
    elsewhere = tmp_path / "elsewhere.yaml"
    elsewhere.write_text("untouched\n")
    (nodes["k0s-2"].binds["/etc/k0s"] / "k0s.yaml").symlink_to(elsewhere)
    said: list[str] = []
    k0s.bring_up(config, opts, tmp_path / "work", said.append)
    assert elsewhere.read_text() == "untouched\n"
    for name in ("k0s-1", "k0s-2", "k0s-3"):
        written = nodes[name].binds["/etc/k0s"] / "k0s.yaml"
        assert not written.is_symlink() and written.stat().st_mode & 0o777 == 0o600
        doc = yaml.safe_load(written.read_text())
        assert doc["metadata"]["name"] == "kuma" and doc["spec"]["network"]["provider"] == "kuberouter"
        assert doc["spec"]["api"]["address"] == ADDRESSES[name]
        assert doc["spec"]["api"]["sans"] == [
            "kuma.example.org",
            *[ADDRESSES[f"k0s-{i}"] for i in (1, 2, 3)],
            "127.0.0.1",
        ]
        assert "--config=/etc/k0s/k0s.yaml" in _unit(nodes[name])["flags"]
    assert "--data-dir=/var/lib/k0s-data" in _unit(nodes["k0s-2"])["flags"]
    assert _unit(nodes["k0s-5"])["data_dir"] == "/var/lib/k0s-data"  # and it found its images there
    w1 = _unit(nodes["k0s-4"])["flags"]
    assert "--labels=kuma=core" in w1 and "--data-dir=/var/lib/k0s" in w1
    assert "--kubelet-extra-args=--node-ip=127.0.0.154 --hostname-override=kuma-w1" in w1
    assert not any(f.startswith("--config") for f in w1)  # a worker gets no k0s config
    # the tokens: each one made is invalidated on the first controller after the last join
    events = [(n, w) for _, n, w in _log(nodes)]
    made = [w for n, w in events if w.startswith("token create")]
    (invalidated,) = [w for n, w in events if w.startswith("token invalidate")]
    assert len(made) == 4 and len(invalidated.split()) == 2 + 4
    assert events.index(("k0s-1", invalidated)) > max(
        i for i, (n, w) in enumerate(events) if w.startswith("start")
    )
    ssh = ["ssh", "-F", str(client.config), "-p", str(SSH_PORT), f"root@{ADDRESSES['k0s-1']}"]
    listed = subprocess.run([*ssh, "k0s token list --data-dir=/var/lib/k0s"], capture_output=True, text=True)
    assert listed.stdout.strip() == "No k0s join tokens found"
    for name in ("k0s-2", "k0s-3", "k0s-4", "k0s-5"):
        assert list(nodes[name].binds["/etc/k0s"].glob("*-token")) == [], name


def test_k0s_standin_refuses_an_invalidated_token(k0s_nodes, tmp_path: Path) -> None:
    """k0s itself: a join with a token invalidated on the controller that made it is Unauthorized."""
    client, nodes = k0s_nodes
    _reset(nodes)
    _give_images(nodes["k0s-4"])

    def on(name: str, command: str) -> subprocess.CompletedProcess[str]:
        ssh = ["ssh", "-F", str(client.config), "-p", str(SSH_PORT), f"root@{ADDRESSES[name]}"]
        return subprocess.run([*ssh, command], capture_output=True, text=True)

    assert on("k0s-1", "k0s install controller && k0s start").returncode == 0
    token = on("k0s-1", "k0s token create --role=worker --expiry=1h --wait").stdout.strip()
    from bundler.installer.k0s import token_id

    ident = token_id(token)
    assert ident in on("k0s-1", "k0s token list").stdout
    assert (
        on("k0s-1", f"k0s token invalidate {ident}").stdout.strip() == f"token {ident} deleted successfully"
    )
    subprocess.run(
        ["ssh", "-F", str(client.config), "-p", str(SSH_PORT), f"root@{ADDRESSES['k0s-4']}", "cat > /etc/k0s/t"],
        input=token, text=True, check=True,
    )  # fmt: skip
    assert on("k0s-4", "k0s install worker --token-file /etc/k0s/t").returncode == 0
    refused = on("k0s-4", "k0s start")
    assert refused.returncode == 1 and f"refused join token {ident}: Unauthorized" in refused.stderr


def test_k0s_standin_reads_the_config_it_is_given(k0s_nodes, tmp_path: Path) -> None:
    """k0s reads --config at install: a file that is no ClusterConfig is refused, naming it."""
    client, nodes = k0s_nodes
    _reset(nodes)
    ssh = ["ssh", "-F", str(client.config), "-p", str(SSH_PORT), f"root@{ADDRESSES['k0s-1']}"]
    subprocess.run(
        [*ssh, "cat > /etc/k0s/k0s.yaml"], input="apiVersion: v1\nkind: Cluster\n", text=True, check=True
    )
    bad = subprocess.run(
        [*ssh, "k0s install controller --config=/etc/k0s/k0s.yaml"], capture_output=True, text=True
    )
    assert bad.returncode == 1 and "failed to load config from /etc/k0s/k0s.yaml" in bad.stderr
    unknown = subprocess.run([*ssh, "k0s install controller --no-such-flag"], capture_output=True, text=True)
    assert unknown.returncode == 1 and "unknown flag: --no-such-flag" in unknown.stderr


# ---------------------------------------------------------------- preflight: k0s's own rules


def test_preflight_checks_what_k0s_needs(k0s_nodes, project, keys, tmp_path: Path, k0s_mirror) -> None:
    """k0s's rules, not RKE's: its ports by role (9443 on controllers, kube-router's 179 on workers,
    no ingress 80/443), no Docker, room for the airgap images in each host's dataDir, and a warning
    for a system containerd k0s does not use."""
    import socket
    import tempfile
    import time

    from bundler.installer import k0sctl, preflight
    from bundler.installer.remote import SshOptions

    client, nodes = k0s_nodes
    _reset(nodes)
    lock, _ = _built_k0s(project, keys, tmp_path, k0s_mirror)
    # a worker whose dataDir is on a tiny disk: the node starts after the disk is mounted, so it sees it
    tiny = Path(tempfile.mkdtemp(prefix="ab-k0s-tiny-", dir="/tmp"))
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16k", "tmpfs", str(tiny)], check=True)
    extra: Node | None = None
    listeners: list[socket.socket] = []
    try:
        extra = Node("127.0.0.156", "k0s-6", client, docker=False, binds=BINDS)
        text = (
            _k0sctl_yaml(tmp_path, client)
            .read_text()
            .replace(
                "  k0s:\n",
                f"  - role: worker\n    ssh:\n      address: 127.0.0.156\n      port: {SSH_PORT}\n"
                f"      keyPath: {client.key}\n    dataDir: {tiny}/k0s\n  k0s:\n",
            )
        )
        (tmp_path / "k0sctl.yaml").write_text(text)
        config = k0sctl.load(tmp_path / "k0sctl.yaml")
        for address, port in ((ADDRESSES["k0s-1"], 9443), (ADDRESSES["k0s-5"], 179)):
            listener = socket.socket()
            listener.bind((address, port))
            listener.listen()
            listeners.append(listener)
        system = socket.socket(socket.AF_UNIX)
        system.bind(str(nodes["k0s-4"].binds["/run/containerd"] / "containerd.sock"))
        listeners.append(system)
        # k0s already runs on k0s-3 (a re-run): the ports it holds are its own
        ssh = ["ssh", "-F", str(client.config), "-p", str(SSH_PORT), f"root@{ADDRESSES['k0s-3']}"]
        subprocess.run([*ssh, "k0s install controller && k0s start"], check=True, capture_output=True)
        results = preflight.preflight_phase(
            lock, config.nodes, {n.name: () for n in config.nodes}, SshOptions(client.config), time.time(),
            data_dirs={h.node.name: h.data_dir for h in config.hosts},
        )  # fmt: skip
    finally:
        for listener in listeners:
            listener.close()
        if extra is not None:
            extra.stop()
        subprocess.run(["umount", str(tiny)], check=False)
        tiny.rmdir()
    by = {r.node.address: r for r in results}
    for name in ("k0s-1", "k0s-2"):
        error = by[ADDRESSES[name]].error or ""
        assert "9443 (controller)" in error and "179" not in error, error
    assert "9443" not in (by[ADDRESSES["k0s-3"]].error or "")  # k0s runs there: 9443 may be its own
    for name in ("k0s-4", "k0s-5"):
        error = by[ADDRESSES[name]].error or ""
        assert "179 (worker)" in error and "9443" not in error, error
    assert all("docker" not in (r.error or "").lower() for r in results)  # k0s brings its own containerd
    tiny_error = by["127.0.0.156"].error or ""
    assert f"free for k0s's data folder {tiny}/k0s (on the filesystem of {tiny})" in tiny_error, tiny_error
    assert "give the host a dataDir on a larger disk" in tiny_error
    said = " ".join(by[ADDRESSES["k0s-4"]].warnings)
    assert "a system container runtime listens on /run/containerd/containerd.sock" in said
    assert "containerd.sock" not in " ".join(by[ADDRESSES["k0s-5"]].warnings)


def test_k0s_ports_are_k0s_own() -> None:
    """The table behind the check: k0s's ports, kube-router's only with kube-router."""
    from dataclasses import replace

    from bundler.installer.inventory import Node as InvNode
    from bundler.installer.preflight import KIND_RULES, busy_ports

    from .test_plan import _lock

    lock = replace(_lock(), cluster={"kind": "k0s", "network_plugin": "kuberouter"})
    table = KIND_RULES["k0s"].ports(lock)
    worker = InvNode("10.0.0.4", "root", ("worker",))
    both = InvNode("10.0.0.1", "root", ("controller", "worker"))
    assert busy_ports(worker, {80, 443, 31000, 179, 10250}, table) == ["10250 (worker)", "179 (worker)"]
    assert busy_ports(both, {6443, 8132, 2380}, table) == [
        "2380 (controller)",
        "6443 (controller)",
        "8132 (controller)",
    ]
    calico = replace(lock, cluster={"kind": "k0s", "network_plugin": "calico"})
    assert 179 not in KIND_RULES["k0s"].ports(calico)["worker"]
