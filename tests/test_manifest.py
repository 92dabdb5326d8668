"""Manifest loading: every bad input is exit 2 with file and line; nothing written."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from bundler.errors import ManifestError
from bundler.manifest import load_manifest

from .conftest import Project

HEAD = """\
apiVersion: airbundle/v1
kind: Bundle
name: demo
version: "1.0.0"
platform: {os: debian, codename: bookworm, arch: amd64}
"""
SHA = "a" * 64


def test_demo_manifest_loads(project: Project) -> None:
    m = load_manifest(project.manifest)
    assert (m.name, m.version, m.platform.arch) == ("demo", "1.0.0", "amd64")
    assert m.base == project.root  # manifests/ resolves from the project root
    assert [b.name for b in m.binaries] == ["rke"]
    assert m.binaries[0].mode == "0755"
    members = [p.member for f in m.files for p in f.files]
    assert members == [
        "files/app/config/values.yaml",
        "files/app/deploy.yaml",
        "files/app/tool.sh",
        "files/notes.txt",
    ]
    modes = {p.member: p.mode for f in m.files for p in f.files}
    assert modes["files/app/tool.sh"] == "0755" and modes["files/notes.txt"] == "0644"
    assert [s.name for s in m.steps] == ["storage", "services"]


def _load(project: Project, body: str, head: str = HEAD) -> str:
    path = project.write_manifest(head + body, "bad.yaml")
    with pytest.raises(ManifestError) as info:
        load_manifest(path)
    assert info.value.exit_code == 2
    message = str(info.value)
    assert message.startswith(str(path)), message
    return message


@pytest.mark.parametrize(
    "body, line, expected",
    [
        ("colour: blue\n", 6, "unknown key 'colour'"),
        (
            "files:\n  - src: payloads/notes.txt\n    dest: n\n    owner: root\n",
            9,
            "unknown key 'files[0].owner'",
        ),
        ("steps: {name: x}\n", 6, "steps: must be a list"),
        ("name: other\n", 6, "duplicate key 'name' (first at line 3)"),
        ("steps:\n  - name: Bad Name\n    script: scripts/storage.sh\n", 7, "not a valid step name"),
        ("steps:\n  - name: a\n    script: scripts/nope.sh\n", 8, "does not exist"),
        ("steps:\n  - name: a\n    script: ../../etc/passwd\n", 8, "escapes the manifest's folder"),
        ("steps:\n  - name: a\n    script: /etc/passwd\n", 8, "must be a relative path"),
        (
            "steps:\n  - name: a\n    script: scripts/storage.sh\n  - name: a\n    script: scripts/services.sh\n",
            9,
            "'a' appears twice (first at line 7)",
        ),
        ("debs:\n  packages: [docker-ce]\n", 7, "debs needs at least one source"),
        (
            "debs:\n  sources:\n    - url: http://x/\n      suite: s\n      components: [main]\n  packages: [a]\n",
            8,
            "needs 'keyring'",
        ),
        (
            "binaries:\n  - name: rke\n    url: ftp://x/rke\n    sha256: "
            + SHA
            + "\n    dest: /usr/local/bin/rke\n",
            8,
            "must be an http(s) URL",
        ),
        (
            "binaries:\n  - name: rke\n    url: http://x/rke\n    sha256: abc\n    dest: /usr/local/bin/rke\n",
            9,
            "not a valid sha256",
        ),
        (
            "binaries:\n  - name: rke\n    url: http://x/rke\n    dest: /usr/local/bin/rke\n",
            7,
            "needs 'sha256'",
        ),
        (
            "binaries:\n  - name: rke\n    url: http://x/rke\n    sha256: " + SHA + "\n    dest: bin/rke\n",
            10,
            "must be an absolute file path",
        ),
        (
            "binaries:\n  - name: rke\n    url: http://x/rke\n    sha256: "
            + SHA
            + "\n    dest: /usr/bin/rke\n    mode: 0755\n",
            11,
            "must be a string; quote it",
        ),
        ("files:\n  - src: payloads/notes.txt\n    dest: ../x\n", 8, "'..' segment"),
        ("x: !!python/object/apply:os.system ['touch /tmp/pwned']\n", 6, "!!python"),
        ("x: [unclosed\n", 7, "invalid YAML"),
        ("image_roles: [master]\n", 6, "image_roles: must list some of controlplane, etcd, worker"),
        ("images:\n  - ref: a/b:1\n    roles: [worker, worker]\n", 8, "images[0].roles: must list some of"),
        ("install:\n  images_mode: pull\n", 7, "install.images_mode: must be one of ssh-load, registry"),
        ("install:\n  registry: http://r:5000\n", 7, "is not HOST:PORT"),
        ("install:\n  mode: registry\n", 7, "unknown key"),
        (
            "debs:\n  sources:\n    - url: http://x/\n      suite: s\n      components: [main]\n      trusted: true\n"
            "  packages: [ab]\n  roles: {master: [b]}\n",
            13,
            "'master' is not a node role",
        ),
        (
            "debs:\n  sources:\n    - url: http://x/\n      suite: s\n      components: [main]\n      trusted: true\n"
            "  packages: [ab]\n  roles: {worker: []}\n",
            13,
            "worker: give a list of packages",
        ),
        (
            "debs:\n  sources:\n    - url: http://x/\n      suite: s\n      components: [main]\n      trusted: true\n"
            "  packages: [ab]\n  roles: {worker: [ab]}\n",
            13,
            "ab is in debs.packages already",
        ),
        (
            "debs:\n  sources:\n    - url: http://x/\n      suite: s\n      components: [main]\n      trusted: true\n"
            "  packages: [ab]\n  roles: {worker: [B!]}\n",
            13,
            "'B!' is not a package name",
        ),
        (
            "steps:\n  - {name: a, script: scripts/storage.sh, on: all, when: early}\n",
            7,
            "'early' must be one of before-cluster, after-cluster",
        ),
        (
            "steps:\n  - {name: a, script: scripts/storage.sh, on: all, fixes: [swap]}\n",
            7,
            "fixes: goes with when: before-cluster",
        ),
        (
            "steps:\n  - {name: a, script: scripts/storage.sh, on: all, when: before-cluster, fixes: [dns]}\n",
            7,
            "fixes: must list some of swap",
        ),
    ],
)
def test_bad_manifests_name_file_and_line(project: Project, body: str, line: int, expected: str) -> None:
    message = _load(project, body)
    assert f"bad.yaml:{line}:" in message, message
    assert expected in message, message
    assert not Path("/tmp/pwned").exists()


@pytest.mark.parametrize(
    "head, expected",
    [
        (HEAD.replace('"1.0.0"', "1.10"), 'version: must be a string; quote it: "1.10"'),
        (HEAD.replace("name: demo", "name: Demo_App"), "not a valid bundle name"),
        (HEAD.replace("airbundle/v1", "airbundle/v2"), "must be 'airbundle/v1'"),
        (HEAD.replace("kind: Bundle", "kind: Bunch"), "must be 'Bundle'"),
        (HEAD.replace("arch: amd64", "arch: x86_64"), "not a Debian architecture"),
        (HEAD.replace("platform: {os: debian, codename: bookworm, arch: amd64}\n", ""), "needs 'platform'"),
        ("- just\n- a list\n", "must be a mapping"),
    ],
)
def test_bad_top_level(project: Project, head: str, expected: str) -> None:
    assert expected in _load(project, "", head=head)


@pytest.mark.parametrize(
    "version, expected",
    [
        ("1..2", "has an empty part in its release"),
        ("1.0-", "ends with '-'"),
        ("1.0-rc1~2", "has two pre-release markers"),
        ("1.0_1", "holds '_'"),
        ("../1", "holds '/'"),
    ],
)
def test_malformed_versions_name_file_and_line(project: Project, version: str, expected: str) -> None:
    """The manifest refuses what the site's lock parse would refuse, by the same grammar (bundler.versions)."""
    message = _load(project, "", head=HEAD.replace('"1.0.0"', f'"{version}"'))
    assert f"bad.yaml:4: version: '{version}' {expected}" in message, message


@pytest.mark.parametrize("version", ["1.0.0-rc1", "1.0.0~rc1", "23.12.1", "2.0-beta.2+build.7"])
def test_pre_release_versions_load(project: Project, version: str) -> None:
    path = project.write_manifest(HEAD.replace('"1.0.0"', f'"{version}"'), "ok.yaml")
    assert load_manifest(path).version == version


def test_every_mistake_in_one_run(project: Project) -> None:
    """Three mistakes in three sections, and two in one binary entry: one run names all five,
    in file order, each with its line."""
    body = (
        "colour: blue\n"
        "binaries:\n  - name: rke\n    url: ftp://x/rke\n    sha256: "
        + "0"
        * 64
        + "\n    dest: /usr/bin/rke\n"
        "files:\n  - src: payloads/missing/\n    dest: m\n"
        "steps:\n  - name: a\n    script: scripts/nope.sh\n"
    )
    path = project.write_manifest(HEAD + body, "bad.yaml")
    with pytest.raises(ManifestError) as info:
        load_manifest(path)
    message = str(info.value)
    assert message.startswith(f"{path}: 5 problems; fix them all, then run again:"), message
    lines = [p.split(": ", 1)[0].rsplit(":", 1)[1] for p in info.value.problems]
    assert lines == ["6", "9", "10", "13", "17"], info.value.problems
    for words in (
        "unknown key 'colour'",
        "http(s) URL",
        "all-zero placeholder",
        "missing/' does not",
        "nope.sh",
    ):
        assert words in message, message


def test_placeholder_comment_is_named(project: Project) -> None:
    body = "description: TODO  # PLACEHOLDER: the product's name\n"
    message = _load(project, body)
    assert "bad.yaml:6: this line is marked PLACEHOLDER" in message and "put the real value there" in message


def test_advice_is_valid_input(project: Project) -> None:
    """The fix a message proposes is accepted by the next run: mode 0755 (YAML's octal 493) -> "0755"."""
    binary = (
        "binaries:\n  - name: rke\n    url: http://x/rke\n    sha256: " + SHA + "\n    dest: /usr/bin/rke\n"
    )
    message = _load(project, binary + "    mode: 0755\n")
    assert 'quote it: "0755"' in message and "493" not in message, message
    fixed = project.write_manifest(HEAD + binary + '    mode: "0755"\n', "fixed.yaml")
    assert load_manifest(fixed).binaries[0].mode == "0755"


def test_symlink_escaping_base_is_refused(project: Project, tmp_path: Path) -> None:
    outside = tmp_path / "secret.txt"
    outside.write_text("secret")
    os.symlink(outside, project.root / "payloads/link.txt")
    message = _load(project, "files:\n  - src: payloads/link.txt\n    dest: x\n")
    assert "escapes" in message


def test_symlink_inside_tree_is_refused(project: Project) -> None:
    os.symlink("deploy.yaml", project.root / "payloads/app/alias.yaml")
    message = _load(project, "files:\n  - src: payloads/app/\n    dest: app\n")
    assert "alias.yaml is a symbolic link" in message


def test_two_files_entries_same_destination(project: Project) -> None:
    body = "files:\n  - src: payloads/notes.txt\n    dest: n.txt\n  - src: payloads/app/deploy.yaml\n    dest: N.txt\n"
    assert "appears twice" in _load(project, body)


def test_manifest_outside_manifests_folder_resolves_from_its_own_folder(project: Project) -> None:
    path = project.root / "payloads" / "m.yaml"
    path.write_text(HEAD + "files:\n  - src: notes.txt\n    dest: notes.txt\n")
    assert load_manifest(path).base == project.root / "payloads"


def test_unreadable_and_huge(project: Project, tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="opening the manifest failed: no such file"):
        load_manifest(tmp_path / "missing.yaml")
    huge = tmp_path / "huge.yaml"
    huge.write_bytes(b"#" * (1024 * 1024 + 1))
    with pytest.raises(ManifestError, match="too large for a manifest"):
        load_manifest(huge)
    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)  # opening it to read would wait for a writer forever
    with pytest.raises(ManifestError, match="the manifest is a FIFO"):
        load_manifest(fifo)


def test_customer_manifest_is_complete_but_for_vendor_inputs(tmp_path: Path) -> None:
    """manifests/fmp-rke.yaml: stops on the missing vendor inputs; with stand-ins it loads in the documented order."""
    import shutil

    root = Path(__file__).resolve().parent.parent
    with pytest.raises(ManifestError) as info:
        load_manifest(root / "manifests" / "fmp-rke.yaml")
    # One run names every missing input and the placeholder, each with its line.
    problems = info.value.problems
    assert any("payloads/keys/docker.gpg" in p for p in problems)
    assert any("sources[1].keyring: 'payloads/keys/ubuntu-archive-keyring.gpg'" in p for p in problems)
    assert any("payloads/vendor/fmp_v23.12.tgz" in p for p in problems)
    assert any("payloads/vendor/fmp_k8s/" in p for p in problems)
    text = (root / "manifests" / "fmp-rke.yaml").read_text().splitlines()
    at = next(i for i, ln in enumerate(text, 1) if ln.strip().startswith("sha256:"))
    assert any(f"fmp-rke.yaml:{at}: binaries[0].sha256: is the all-zero placeholder" in p for p in problems)
    assert sum("marked PLACEHOLDER" in p for p in problems) == 3  # Docker's repository, Ubuntu's archive (2)
    copy = tmp_path / "proj"
    shutil.copytree(root / "manifests", copy / "manifests")
    # As the README says: copy rke's sha256 over the placeholder.
    text = (copy / "manifests" / "fmp-rke.yaml").read_text().replace("0" * 64, "ab" * 32)
    # and the repositories' URLs over theirs (payloads/keys/README.md says where to find them).
    text = re.sub(r"# PLACEHOLDER:.*", "", text).replace("docker-apt.invalid", "apt.example.org")
    (copy / "manifests" / "fmp-rke.yaml").write_text(
        text.replace("ubuntu-archive.invalid", "ubuntu.example.org")
    )
    shutil.copytree(root / "scripts", copy / "scripts")
    (copy / "payloads" / "keys").mkdir(parents=True)
    for key in ("docker.gpg", "ubuntu-archive-keyring.gpg"):
        (copy / "payloads" / "keys" / key).write_bytes(b"stand-in key")
    (copy / "payloads" / "vendor" / "fmp_k8s").mkdir(parents=True)
    (copy / "payloads" / "vendor" / "fmp_k8s" / "fmp_k8s_storage_inst.sh").write_text("echo storage\n")
    (copy / "payloads" / "vendor" / "fmp_v23.12.tgz").write_bytes(b"stand-in archive")
    m = load_manifest(copy / "manifests" / "fmp-rke.yaml")
    # The vendor guide's node preparation before the cluster (swap-off lets swap-on nodes through
    # the preflight), Rancher on the control plane once its image is there, then the vendor's order.
    prep = [(s.name, s.on, s.when, s.fixes, s.files) for s in m.steps[:6]]
    lib = ("files/fmp/lib.sh",)
    assert prep == [
        ("admin-user", "all", "before-cluster", (), lib),
        ("swap-off", "all", "before-cluster", ("swap",), lib),
        ("hosts", "all", "before-cluster", (), lib),
        ("ntp", "all", "before-cluster", (), lib),
        ("heartbeat", "worker", "before-cluster", (), lib),
        ("rancher", "controlplane", "after-cluster", (), lib),
    ]
    assert all((copy / s.script).is_file() for s in m.steps)
    assert m.debs is not None and m.debs.roles == {"worker": ("heartbeat",)}
    assert [s.on for s in m.steps[6:]] == ["control"] * 7
    assert [s.name for s in m.steps[6:]] == [
        "create-rbds",
        "storage",
        "set-monitors",
        "volumes",
        "config-map",
        "services",
        "deployments",
    ]
    assert m.min_workers == 4 and m.platform.codename == "jammy" and m.image_roles == ("worker",)
    assert m.debs is not None and [p.split("=")[0] for p in m.debs.packages] == [
        "docker-ce",
        "docker-ce-cli",
        "containerd.io",
    ]
    assert m.debs.packages[0] == "docker-ce=5:24.0.9-1~ubuntu.22.04~jammy"  # a Docker rke v1.4.11 accepts
    assert [b.dest for b in m.binaries] == ["/usr/local/bin/rke"]
    # The cluster: a Kubernetes version in the vendor's range (1.25-1.29) that the pinned rke brings
    # up (the stand-in plays that rke release), Rancher and its agent at one version, the agent on
    # every node.
    from .rke_standin import KUBERNETES_VERSION, RKE_VERSION

    assert m.cluster is not None and (m.cluster.kind, m.cluster.network_plugin) == ("rke", "canal")
    assert m.cluster.kubernetes_version == KUBERNETES_VERSION and f"/{RKE_VERSION}/" in m.binaries[0].url
    assert 25 <= int(KUBERNETES_VERSION.split(".")[1]) <= 29
    refs = {str(i.ref): i.roles for i in m.images if i.ref is not None}
    assert refs["docker.io/rancher/rancher:v2.7.9"] == ("controlplane",)  # where the rancher step runs
    assert refs["docker.io/rancher/rancher-agent:v2.7.9"] == ("controlplane", "etcd", "worker")
