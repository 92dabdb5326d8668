"""RKE system images: the role rule (bundler/rkeimages.py), the list from the pinned rke (a stand-in
served as the pinned binary), cluster.system_images, pulls through registry mirrors (loopback
registries serving docker.io/rancher/... names), and how inspect and build --dry-run show them."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from bundler import archive, rkeimages
from bundler.lock import Lock

from .conftest import RKE_BYTES, Keys, Project, run_cli
from .registries import PASSWORD, USER, Registry, docker_config
from .rke_images import Pushed, serve_system_images
from .rke_standin import ALL, APP_IMAGE, CANAL_ROLES, KUBERNETES_VERSION, SYSTEM_IMAGES, canonical
from .rke_standin import standin_bytes as standin_rke

# ---------------------------------------------------------------- the role rule


def test_canal_cluster_keeps_its_images_with_their_roles() -> None:
    kept, dropped = rkeimages.select(SYSTEM_IMAGES, "canal")
    assert {canonical(c.ref): c.roles for c in kept} == CANAL_ROLES
    assert [canonical(c.ref) for c in kept] == [
        canonical(r) for r in SYSTEM_IMAGES if canonical(r) in CANAL_ROLES
    ]
    assert all(c.known for c in kept)
    why = {c.ref.split("/")[-1]: c.why for c in dropped}
    aci = "the aci network plugin"
    assert why == {
        "mirrored-k8s-dns-kube-dns:1.22.20": "kube-dns (the cluster uses CoreDNS)",
        "mirrored-k8s-dns-dnsmasq-nanny:1.22.20": "kube-dns (the cluster uses CoreDNS)",
        "mirrored-k8s-dns-sidecar:1.22.20": "kube-dns (the cluster uses CoreDNS)",
        "mirrored-k8s-dns-node-cache:1.22.20": "NodeLocal DNSCache (not enabled)",
        "flannel-cni:v0.3.0-rancher8": "the flannel network plugin",
        "mirrored-calico-ctl:v3.25.0": "the calico network plugin",
        "weave-kube:2.8.1": "the weave network plugin",
        "weave-npc:2.8.1": "the weave network plugin",
        "cnideploy:6.0.3.1.81c2369": aci,
        "aci-containers-host:6.0.3.1.81c2369": aci,
        "opflex:6.0.3.1.81c2369": aci,
        "openvswitch:6.0.3.1.81c2369": aci,
        "aci-containers-controller:6.0.3.1.81c2369": aci,
    }


@pytest.mark.parametrize(
    ("plugin", "network"),
    [
        (
            "calico",
            {
                "calico-node",
                "calico-cni",
                "calico-kube-controllers",
                "calico-ctl",
                "calico-pod2daemon-flexvol",
            },
        ),
        ("flannel", {"flannel-flannel", "flannel-cni"}),
        ("weave", {"weave-kube", "weave-npc"}),
        ("none", set()),
    ],
)
def test_each_network_plugin_keeps_only_its_images(plugin: str, network: set[str]) -> None:
    kept, _ = rkeimages.select(SYSTEM_IMAGES, plugin)
    assert {rkeimages.repository_key(c.ref)[1] for c in kept if c.component == "network"} == network
    core = {rkeimages.repository_key(c.ref)[1] for c in kept if c.component != "network"}
    assert core == {
        "coreos-etcd",
        "rke-tools",
        "cluster-proportional-autoscaler",
        "coredns-coredns",
        "hyperkube",
        "pause",
        "nginx-ingress-controller",
        "nginx-ingress-controller-defaultbackend",
        "ingress-nginx-kube-webhook-certgen",
        "metrics-server",
    }


@pytest.mark.parametrize(
    ("ref", "component", "roles"),
    [
        ("rancher/mirrored-coreos-etcd:v3.5.9", "etcd", ("etcd",)),
        ("registry.lan:5000/rancher/hyperkube:v1.27.16-rancher1", "kubernetes", ALL),
        ("docker.io/rancher/rke-tools@sha256:" + "a" * 64, "rke-tools", ALL),
        ("rancher/rke-nginx-proxy:v0.1.1", "nginx-proxy", ("etcd", "worker")),
        ("rancher/mirrored-weaveworks-weave-kube:2.8.1", "unused", ()),
        ("noiro/openvswitch:6.0.4.1.81c2369", "unused", ()),
        ("rancher/mirrored-metrics-server:v0.6.3", "metrics-server", ("worker",)),
        ("rancher/something-new:v1", "unknown", ALL),
    ],
)
def test_classify_by_repository_name(ref: str, component: str, roles: tuple[str, ...]) -> None:
    choice = rkeimages.classify(ref, "canal")
    assert (choice.component, choice.roles) == (component, roles)
    assert choice.known == (component != "unknown")


def test_needed_by_meets_the_node_roles() -> None:
    assert rkeimages.needed_by(("etcd",), ["controlplane", "etcd"])
    assert not rkeimages.needed_by(("etcd",), ["controlplane", "worker"])
    assert rkeimages.needed_by(("etcd", "worker"), ["worker"])


# ---------------------------------------------------------------- loopback mirrors


@pytest.fixture(scope="module")
def auth_mirror() -> Iterator[tuple[Registry, dict[str, Pushed]]]:
    """A Basic-auth registry serving them under a prefix, as a Harbor proxy-cache project does."""
    reg = Registry("basic")
    try:
        yield reg, serve_system_images(reg.host, "dockerhub-proxy", (USER, PASSWORD))
    finally:
        reg.stop()


CLUSTER_MANIFEST = """
apiVersion: airbundle/v1
kind: Bundle
name: cluster
version: "1.0.0"
platform: {{os: ubuntu, codename: jammy, arch: {arch}}}
binaries:
  - name: rke
    url: {url}
    sha256: {sha}
    dest: /usr/local/bin/rke
images:
  - ref: {app}{app_roles}
  - ref: rancher/mirrored-pause:3.7      # also a system image: bundled once
cluster:
  kind: rke
  kubernetes_version: {version}
{extra}"""


def _manifest(
    project: Project,
    rke: bytes | None = None,
    arch: str = "amd64",
    version: str = KUBERNETES_VERSION,
    extra: str = "",
    app_roles: str = "",
) -> Path:
    data = standin_rke() if rke is None else rke
    sha = hashlib.sha256(data).hexdigest()
    url = project.origin.add(f"/rke-{sha[:12]}", data)
    text = CLUSTER_MANIFEST.format(
        arch=arch,
        url=url,
        sha=sha,
        app=APP_IMAGE,
        version=version,
        extra=extra,
        app_roles=f"\n    roles: {app_roles}" if app_roles else "",
    )
    return project.write_manifest(text, "cluster.yaml")


def _build(manifest: Path, keys: Keys, out: Path, cache: Path, *more: str, env: dict[str, str] | None = None):
    return run_cli("build", manifest, "-o", out, "--key", keys.key_path, "--cache", cache, *more, env=env)


def _lock(bundle: Path) -> Lock:
    with archive.Bundle(bundle, None) as opened:
        return opened.unverified()[0]


def test_system_images_from_the_pinned_rke_through_a_mirror(
    project: Project, keys: Keys, tmp_path: Path, mirror: tuple[Registry, dict[str, Pushed]]
) -> None:
    reg, pushed = mirror
    manifest = _manifest(project)
    result = _build(manifest, keys, tmp_path / "out", tmp_path / "cache", "--mirror", f"docker.io={reg.host}")
    assert result.exit_code == 0, result.stderr
    bundle = Path(result.stdout.strip().splitlines()[-1])
    assert archive.verify_bundle(bundle, [keys.pub]).problems == []
    lock = _lock(bundle)
    assert lock.cluster == {
        "kind": "rke",
        "kubernetes_version": KUBERNETES_VERSION,
        "network_plugin": "canal",
        "tool": "rke",
    }
    # rke's list, kept by the rule, with roles; canonical names; the registry's digests.
    assert {s.ref: s.roles for s in lock.system_images} == CANAL_ROLES
    for system in lock.system_images:
        image = lock.find_image(system.ref)
        assert image is not None and image.ref == system.ref
        assert (image.manifest, image.config) == (pushed[system.ref].manifest, pushed[system.ref].config)
    # the pause image named twice (images: and rke's list) is bundled once, as a system image
    assert len(lock.images) == len(CANAL_ROLES) + 1
    assert [i.ref for i in lock.workloads] == [APP_IMAGE]
    # the mirror is the build host's business: the signed lock does not name it
    lock_bytes = lock.to_bytes()
    assert reg.host.encode() not in lock_bytes  # (127.0.0.1 itself is there: the binary's origin)
    # the rule in the build output: the summary table lists the system images with their roles
    assert f"system images for rke Kubernetes {KUBERNETES_VERSION}" in result.stderr
    assert "docker.io/rancher/mirrored-coreos-etcd:v3.5.6" in result.stderr


def test_images_for_node_roles(project: Project, keys: Keys, tmp_path: Path, mirror) -> None:
    reg, _ = mirror
    manifest = _manifest(project)
    result = _build(manifest, keys, tmp_path / "out", tmp_path / "cache", "--mirror", f"docker.io={reg.host}")
    assert result.exit_code == 0, result.stderr
    lock = _lock(Path(result.stdout.strip().splitlines()[-1]))

    def refs(*roles: str) -> set[str]:
        return {i.ref for i in lock.images_for(roles)}

    every = {r for r, roles in CANAL_ROLES.items() if roles == ALL}
    workers = {r for r, roles in CANAL_ROLES.items() if roles == ("worker",)}
    etcd = "docker.io/rancher/mirrored-coreos-etcd:v3.5.6"
    assert refs("controlplane") == every
    assert refs("controlplane", "etcd") == every | {etcd}
    assert refs("worker") == every | workers | {APP_IMAGE}
    assert refs("etcd", "controlplane", "worker") == set(CANAL_ROLES) | {APP_IMAGE}
    ordered = lock.images_for(["worker"])
    assert list(ordered) == [i for i in lock.images if i in ordered]  # lock order, each once


def test_a_mirror_with_credentials_and_a_prefix_gives_the_same_bundle(
    project: Project, keys: Keys, tmp_path: Path, mirror, auth_mirror, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two mirrors (open; Basic auth under a Harbor-style prefix) give byte-identical bundles:
    the bundle keeps canonical names and digests. The credentials come from config.json for the
    mirror's host."""
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    manifest = _manifest(project)
    open_reg, _ = mirror
    auth_reg, _ = auth_mirror
    first = _build(manifest, keys, tmp_path / "a", tmp_path / "ca", "--mirror", f"docker.io={open_reg.host}")
    assert first.exit_code == 0, first.stderr
    creds = docker_config(tmp_path / "docker", auth_reg.host)
    flag = ("--mirror", f"docker.io={auth_reg.host}/dockerhub-proxy")
    refused = _build(
        manifest, keys, tmp_path / "b", tmp_path / "cb", *flag, env={"DOCKER_CONFIG": str(tmp_path)}
    )
    assert refused.exit_code == 5, refused.stderr
    assert f"http://{auth_reg.host}/v2/dockerhub-proxy/rancher/" in refused.stderr  # the mirror, named
    assert "HTTP 401" in refused.stderr
    second = _build(manifest, keys, tmp_path / "b", tmp_path / "cb", *flag, env=creds)
    assert second.exit_code == 0, second.stderr
    a, b = (Path(r.stdout.strip().splitlines()[-1]) for r in (first, second))
    assert a.read_bytes() == b.read_bytes()


def test_manifest_mirrors_and_the_flag_overriding_them(
    project: Project, keys: Keys, tmp_path: Path, mirror
) -> None:
    reg, _ = mirror
    dead = _manifest(project, extra="mirrors:\n  docker.io: 127.0.0.1:9/nothing-here\n")
    assert _build(dead, keys, tmp_path / "x", tmp_path / "c").exit_code == 5  # the manifest's mirror is used
    ok = _build(dead, keys, tmp_path / "y", tmp_path / "c", "--mirror", f"docker.io={reg.host}")
    assert ok.exit_code == 0, ok.stderr
    good = _manifest(project, extra=f"mirrors:\n  docker.io: {{url: 'http://{reg.host}'}}\n")
    assert _build(good, keys, tmp_path / "z", tmp_path / "c").exit_code == 0


def test_explicit_list_when_the_pinned_binary_cannot_run(
    project: Project, keys: Keys, tmp_path: Path, mirror
) -> None:
    reg, _ = mirror
    explicit = "  system_images:\n" + "".join(f"    - {r}\n" for r in SYSTEM_IMAGES[:3])
    manifest = _manifest(project, rke=RKE_BYTES[:40] + b"\0" * 64, extra=explicit)  # not a program
    result = _build(manifest, keys, tmp_path / "o", tmp_path / "c", "--mirror", f"docker.io={reg.host}")
    assert result.exit_code == 0, result.stderr
    lock = _lock(Path(result.stdout.strip().splitlines()[-1]))
    assert [s.ref for s in lock.system_images] == [
        "docker.io/rancher/mirrored-coreos-etcd:v3.5.6",
        "docker.io/rancher/rke-tools:v0.1.96",
    ]  # the kube-dns image of the three is left out


@pytest.mark.parametrize(
    ("arch", "rke", "why"),
    [
        ("arm64", None, "the bundle's platform is arm64"),
        ("amd64", b"\x7fELF" + b"\0" * 200, "the pinned rke cannot run here (Exec format error)"),
    ],
)
def test_no_list_and_no_runnable_rke_is_exit_2(
    project: Project, keys: Keys, tmp_path: Path, arch: str, rke: bytes | None, why: str
) -> None:
    manifest = _manifest(project, rke=rke, arch=arch)
    result = _build(manifest, keys, tmp_path / "o", tmp_path / "c", "--mirror", "docker.io=127.0.0.1:9")
    assert result.exit_code == 2, result.stderr
    assert f"{manifest}:" in result.stderr
    assert f"system images for Kubernetes {KUBERNETES_VERSION} are needed: {why}" in result.stderr
    assert "list them under cluster.system_images" in result.stderr


def test_a_version_the_pinned_rke_does_not_know_is_exit_2(
    project: Project, keys: Keys, tmp_path: Path
) -> None:
    manifest = _manifest(project, version="v1.99.1-rancher1-1")
    result = _build(manifest, keys, tmp_path / "o", tmp_path / "c")
    assert result.exit_code == 2, result.stderr
    assert "refused `rke config --system-images --version v1.99.1-rancher1-1` (exit 1)" in result.stderr
    assert "k8s version is not supported" in result.stderr


def test_unknown_system_image_goes_everywhere_and_is_named(
    project: Project, keys: Keys, tmp_path: Path, mirror
) -> None:
    reg, _ = mirror
    explicit = f"  system_images: [{APP_IMAGE}, rancher/mirrored-pause:3.7]\n"
    manifest = _manifest(project, extra=explicit)
    result = _build(manifest, keys, tmp_path / "o", tmp_path / "c", "--mirror", f"docker.io={reg.host}")
    assert result.exit_code == 0, result.stderr
    assert f"system image {APP_IMAGE}: the role rule does not know it; every node gets it" in result.stderr
    lock = _lock(Path(result.stdout.strip().splitlines()[-1]))
    assert {s.ref: s.roles for s in lock.system_images}[APP_IMAGE] == ALL
    assert lock.workloads == ()  # both images are the cluster's here


# ---------------------------------------------------------------- showing them apart


def test_inspect_and_dry_run_show_system_images_apart(
    project: Project, keys: Keys, tmp_path: Path, mirror
) -> None:
    reg, _ = mirror
    manifest = _manifest(project, app_roles="[controlplane, etcd, worker]")  # the agent: every node
    flag = ("--mirror", f"docker.io={reg.host}")
    plan = run_cli("build", manifest, "--dry-run", "--cache", tmp_path / "c", *flag)
    assert plan.exit_code == 0, plan.stderr
    lines = plan.stdout.splitlines()
    heading = lines.index(f"system images for Kubernetes {KUBERNETES_VERSION} (node roles):")
    assert any(line.startswith("image ") and APP_IMAGE in line for line in lines[:heading])
    system_lines = [line for line in lines[heading + 1 :] if line.startswith("system ")]
    assert len(system_lines) == len(CANAL_ROLES)
    assert any("mirrored-coreos-etcd:v3.5.6" in line and line.endswith("[etcd]") for line in system_lines)
    plan_json = json.loads(
        run_cli("build", manifest, "--dry-run", "--json", "--cache", tmp_path / "c", *flag).stdout
    )
    system = {i["name"]: i["roles"] for i in plan_json if i["kind"] == "system"}
    assert system == {r: list(roles) for r, roles in CANAL_ROLES.items()}
    assert {i["kubernetes_version"] for i in plan_json if i["kind"] == "system"} == {KUBERNETES_VERSION}

    built = _build(manifest, keys, tmp_path / "o", tmp_path / "c", *flag)
    bundle = Path(built.stdout.strip().splitlines()[-1])
    text = run_cli("inspect", bundle).stdout
    apps, _, systems = text.partition("system images for rke Kubernetes")
    assert APP_IMAGE.removeprefix("docker.io/") in apps and "coreos-etcd" not in apps
    assert "on controlplane, etcd, worker" in apps  # the entry's own roles
    assert "mirrored-coreos-etcd:v3.5.6" in systems and "etcd\n" in systems
    facts = json.loads(run_cli("inspect", bundle, "--json").stdout)
    assert facts["cluster"]["kubernetes_version"] == KUBERNETES_VERSION
    assert {s["ref"]: tuple(s["roles"]) for s in facts["system_images"]} == CANAL_ROLES
    assert [i["ref"] for i in facts["images"] if not i["system"]] == [APP_IMAGE]
    roles = {i["ref"]: i["roles"] for i in facts["images"]}
    assert roles[APP_IMAGE] == list(ALL) and roles[next(iter(CANAL_ROLES))] == ["etcd"]
    lock = _lock(bundle)
    assert [(p.ref, p.roles) for p in lock.placed_images] == [(APP_IMAGE, ALL)]


# ---------------------------------------------------------------- the manifest


@pytest.mark.parametrize(
    ("section", "message"),
    [
        (
            "cluster: {kind: k3s, kubernetes_version: v1.26.9-rancher1-1}",
            "cluster.kind: 'k3s' is not a cluster kind",
        ),
        (
            "cluster: {kind: rke, kubernetes_version: '1.28'}",
            "cluster.kubernetes_version: '1.28' is not a valid",
        ),
        (
            "cluster: {kind: rke, kubernetes_version: v1.26.9-rancher1-1, network_plugin: cilium}",
            "network_plugin",
        ),
        (
            "cluster: {kind: rke, kubernetes_version: v1.26.9-rancher1-1, tool: kubeadm}",
            "must name a binaries:",
        ),
        ("cluster: {kind: rke}", "cluster needs 'kubernetes_version'"),
        ("cluster: {kind: rke, kubernetes_version: v1.26.9-rancher1-1, system_images: []}", "at least one"),
        (
            "cluster: {kind: rke, kubernetes_version: v1.26.9-rancher1-1, system_images: ['Bad Ref']}",
            "not an image",
        ),
        ("mirrors: {docker.io: 'http://10.0.0.5:5000'}", "plain http is used only for a loopback mirror"),
        ("mirrors: {docker.io: 'a b'}", "is not a mirror"),
        (
            "mirrors: {docker.io: {url: 'http://10.0.0.5', secure: no}}",
            "unknown key 'mirrors.docker.io.secure'",
        ),
    ],
)
def test_bad_cluster_and_mirrors_sections(project: Project, section: str, message: str) -> None:
    text = project.manifest.read_text() + section + "\n"
    path = project.write_manifest(text, "bad.yaml")
    result = run_cli("build", path, "--dry-run")
    assert result.exit_code == 2, result.stderr
    assert f"{path}:" in result.stderr and message in result.stderr


def test_insecure_mirror_may_use_plain_http(project: Project) -> None:
    from bundler.manifest import load_manifest

    text = (
        project.manifest.read_text()
        + "mirrors: {docker.io: {url: 'http://10.0.0.5:5000/hub', insecure: true}}\n"
    )
    manifest = load_manifest(project.write_manifest(text, "insecure.yaml"))
    mirror = manifest.mirrors["docker.io"]
    assert (mirror.scheme, mirror.host, mirror.prefix, mirror.insecure) == (
        "http",
        "10.0.0.5:5000",
        "hub",
        True,
    )


def test_bad_mirror_flag_is_exit_2(project: Project) -> None:
    result = run_cli("build", project.manifest, "--dry-run", "--mirror", "docker.io")
    assert result.exit_code == 2 and "give REGISTRY=MIRROR" in result.stderr


def test_a_system_image_cannot_take_roles_of_its_own(
    project: Project, keys: Keys, tmp_path: Path, mirror
) -> None:
    """An image takes its nodes from one rule: roles: on an entry that is also in rke's list is refused."""
    reg, _ = mirror
    manifest = _manifest(project)
    text = manifest.read_text()
    manifest.write_text(
        text.replace(
            "  - ref: rancher/mirrored-pause:3.7", "  - ref: rancher/mirrored-pause:3.7\n    roles: [worker]"
        )
    )
    result = _build(manifest, keys, tmp_path / "o", tmp_path / "c", "--mirror", f"docker.io={reg.host}")
    assert result.exit_code == 2
    assert (
        "images: docker.io/rancher/mirrored-pause:3.7 has its own roles, but it is also a system image"
        in result.stderr
    )
    assert not list((tmp_path / "o").glob("*.tar"))
