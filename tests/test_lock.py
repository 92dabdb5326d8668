"""lock.json: canonical encoding and strict parsing of untrusted bytes (M01–M08)."""

from __future__ import annotations

import dataclasses
import json

import pytest

from bundler import oci
from bundler.lock import (
    MAX_LOCK_BYTES,
    Binary,
    FileSet,
    Lock,
    LockError,
    Member,
    RoledImage,
    Step,
    SystemImage,
    check_dest,
    check_member_path,
)

SHA_A = "a" * 64
SHA_B = "b" * 64


def sample() -> Lock:
    return Lock(
        name="demo",
        version="1.0.0",
        platform={"os": "debian", "codename": "bookworm", "arch": "amd64"},
        builder="airbundle 0.1.0",
        manifest_sha256=SHA_A,
        source_date_epoch=0,
        members=(
            Member("install.sh", 10, SHA_A, "installer", "0755"),
            Member("bin/rke", 20, SHA_B, "binary", "0755"),
            Member("scripts/01-x.sh", 5, SHA_A, "script", "0755"),
        ),
        binaries=(Binary("rke", "bin/rke", "/usr/local/bin/rke", "0755", "http://x/rke", SHA_B, 20),),
        steps=(Step("x", "scripts/01-x.sh", SHA_A),),
    )


def test_round_trip_is_exact() -> None:
    data = sample().to_bytes()
    assert Lock.from_bytes(data) == sample()
    assert Lock.from_bytes(data).to_bytes() == data
    assert data.endswith(b"}\n")
    json.loads(data)  # plain JSON for any tool


def test_one_member_per_line_path_before_sha() -> None:
    lines = [ln for ln in sample().to_bytes().decode().splitlines() if '"kind": ' in ln]
    assert len(lines) == 3
    assert all(ln.index('"path"') < ln.index('"sha256"') for ln in lines)
    assert sample().sha256sums().splitlines()[1] == f"{SHA_B}  bin/rke"


def _doc(**changes):
    doc = json.loads(sample().to_bytes())
    for key, value in changes.items():
        doc[key] = value
    return doc


def _member(**changes):
    doc = _doc()
    doc["members"][1].update(changes)
    return json.dumps(doc).encode()


@pytest.mark.parametrize(
    "data, message",
    [
        (b"{not json", "not valid JSON"),  # M01
        (b"\xff\xfe", "not valid JSON"),
        (json.dumps(_doc(format=2)).encode(), "format 2"),  # M02
        (json.dumps(["a"]).encode(), "not an object"),
        (
            sample().to_bytes().replace(b'"name": "demo"', b'"name": "demo", "name": "evil"'),
            "duplicate key",
        ),  # M03
        (_member(path="install.sh"), "listed twice"),
        (_member(path="INSTALL.sh"), "collides"),
        (_member(path="../etc/passwd"), "'..' segment"),  # M06
        (_member(path="/etc/passwd"), "absolute"),
        (_member(path="bin\\rke"), "backslash"),
        (_member(path="bin/r\u0000ke"), "NUL"),
        (_member(sha256="A" * 64), "64 lowercase hex"),  # M07
        (_member(sha256="ab"), "64 lowercase hex"),
        (_member(size=-1), "negative"),  # M08
        (_member(size=1.5), "wrong type"),
        (_member(size=True), "wrong type"),
        (_member(kind="device"), "unknown kind"),
        (_member(mode="4755"), "unknown kind or mode"),
        (_member(path="lock.json.sig"), "cannot list"),
        (json.dumps(_doc(members="x")).encode(), "wrong type"),
        (json.dumps({k: v for k, v in _doc().items() if k != "name"}).encode(), "lacks 'name'"),
    ],
)
def test_malformed_locks_are_refused(data: bytes, message: str) -> None:
    with pytest.raises(LockError, match=message) as info:
        Lock.from_bytes(data)
    assert info.value.exit_code == 4


def test_binary_must_be_a_member() -> None:
    doc = _doc()
    doc["members"] = [m for m in doc["members"] if m["path"] != "bin/rke"]
    with pytest.raises(LockError, match="'bin/rke' is used but not listed"):
        Lock.from_bytes(json.dumps(doc).encode())


def test_oversized_lock_is_refused_before_parsing() -> None:  # M05
    with pytest.raises(LockError, match="over the"):
        Lock.from_bytes(b" " * (MAX_LOCK_BYTES + 1))


@pytest.mark.parametrize("path", ["a/b.txt", "files/x y/z-1.2_3+4@5=6:7,8~9"])
def test_safe_member_paths(path: str) -> None:
    assert check_member_path(path) is None


@pytest.mark.parametrize("path", ["", "a//b", "./a", "a/.", "a/../b", 'a/"q"', "a/\nb", "x" * 256])
def test_unsafe_member_paths(path: str) -> None:
    assert check_member_path(path) is not None


# ---------------------------------------------------------------- signed fields that become site paths


def signed() -> Lock:
    """A valid lock with every field the site turns into a path or a shell word: a delta with files."""
    image = oci.Image(
        ref="docker.io/library/registry:2",
        tags=("registry:2",),
        source="registry",
        manifest="sha256:" + SHA_A,
        media_type=oci.OCI_MANIFEST,
        config="sha256:" + SHA_B,
        platform="linux/amd64",
        layers=(),
    )
    blobs = tuple(
        Member(f"images/{oci.blob_path(d)}", 1, d[7:], "image") for d in (image.manifest, image.config)
    )
    return Lock(
        **{
            **sample().__dict__,
            "members": sample().members + blobs,
            "images": (image,),
            "files": (FileSet("payloads/app/", "app", 1, 5),),
            "base": {"name": "demo", "version": "0.9.0-rc1", "lock_sha256": SHA_B},
            "inherited": (Member("files/app/x.yaml", 5, SHA_B, "file", "0644"),),
            "registry_image": "registry:2.8.3",
        }
    )


def _changed(where: tuple, value: object, lock: Lock | None = None) -> bytes:
    """``signed()``'s (or ``lock``'s) bytes with the field at ``where`` (keys and indexes) set to ``value``."""
    doc = json.loads((lock or signed()).to_bytes())
    target = doc
    for step in where[:-1]:
        target = target[step]
    target[where[-1]] = value
    return json.dumps(doc).encode()


def test_the_signed_sample_is_valid() -> None:
    assert Lock.from_bytes(signed().to_bytes()) == signed()


@pytest.mark.parametrize(
    "where, value, message",
    [
        # Attack: an absolute name unpacked outside --workdir (workdir / "/victim-1.0" is /victim-1.0)
        # and deleted an existing folder there.
        (("name",), "/tmp/victim", r"lock\.json: name '/tmp/victim' is not a valid bundle name"),
        (("name",), "../demo", "name '../demo' is not a valid bundle name"),
        (("name",), "Demo", "name 'Demo' is not a valid bundle name"),
        (("name",), "", "name '' is not a valid bundle name"),
        # Attack: NAME-VERSION with a version of ../ climbs out of --workdir.
        (("version",), "1/../../../tmp/x", "version '1/../../../tmp/x' holds '/'"),
        (("version",), "1..0", "version '1..0' has an empty part in its release"),
        (("version",), "1.0-", "version '1.0-' ends with '-'"),
        (("version",), "1.0-rc1~2", "version '1.0-rc1~2' has two pre-release markers"),
        # Attack: a '../' step name crashed the installer (its log is logs/NN-NAME.log).
        (("steps", 0, "name"), "../../x", r"steps\[0\]\.name '../../x' is not a valid step name"),
        (("steps", 0, "name"), "/etc/cron.d/x", r"steps\[0\]\.name '/etc/cron.d/x' is not a valid step name"),
        (("binaries", 0, "name"), "../rke", r"binaries\[0\]\.name '../rke' is not a valid binary name"),
        # Attack: binaries are written beside dest on every node as root: it must be one plain path.
        (("binaries", 0, "dest"), "usr/bin/rke", r"binaries\[0\]\.dest 'usr/bin/rke' is not absolute"),
        (("binaries", 0, "dest"), "/usr/../etc/passwd", r"binaries\[0\]\.dest .* has a '\.\.' segment"),
        (("binaries", 0, "dest"), "/usr/bin/rke;reboot", r"binaries\[0\]\.dest .* has characters outside"),
        # Attack: the mode goes into `chmod MODE` on the node.
        (("binaries", 0, "mode"), "0755 /etc/shadow", r"binaries\[0\]\.mode .* is not one of 0644, 0755"),
        (("files", 0, "dest"), "../../etc", r"files\[0\]\.dest '../../etc' has a '\.\.' segment"),
        (("files", 0, "dest"), "/etc", r"files\[0\]\.dest '/etc' is absolute"),
        (("platform", "os"), "../x", "platform.os '../x' is not a valid platform value"),
        (
            ("platform", "codename"),
            "jammy; id",
            "platform.codename 'jammy; id' is not a valid platform value",
        ),
        (("platform", "arch"), "AMD64", "platform.arch 'AMD64' is not a valid platform value"),
        # Attack: a delta's base is looked for at --workdir/BASE_NAME-BASE_VERSION.
        (("base", "name"), "/etc", "base.name '/etc' is not a valid bundle name"),
        (("base", "version"), "1/../../x", "base.version '1/../../x' holds '/'"),
        (("base", "lock_sha256"), "x", "base.lock_sha256 is not 64 lowercase hex"),
        (("install", "registry_image"), "Not A Ref", "install.registry_image 'Not A Ref'"),
        # Attack: image names become repository paths on the site registry (/v2/NAME/...).
        (("images", 0, "ref"), "../../v2/x", r"images\[0\]\.ref '../../v2/x'"),
        (("images", 0, "tags"), ["registry:2", "a b"], r"images\[0\]\.tags 'a b'"),
        # Attack: deb_roles names go to apt-get install on the nodes of a role: only requested
        # packages of the lock, for node roles.
        (("deb_roles",), {"worker": ["evil;reboot"]}, "deb_roles: 'worker' must be a node role listing"),
        (("deb_roles",), {"root": []}, "deb_roles: 'root' must be a node role listing"),
        # A step's when decides its phase; fixes lets a node through the preflight.
        (("steps", 0, "when"), "never", r"steps\[0\]\.when 'never' must be one of before-cluster"),
        (("steps", 0, "fixes"), ["swap"], r"steps\[0\]\.fixes must list some of swap, on a before-cluster"),
    ],
)
def test_signed_fields_are_checked_on_the_site(where: tuple, value: str, message: str) -> None:
    """A lock signed by the right key is still refused (exit 4, naming the field) when a field the
    site uses as a path or shell word breaks the manifest's rule for it."""
    with pytest.raises(LockError, match=message) as info:
        Lock.from_bytes(_changed(where, value))
    assert info.value.exit_code == 4


@pytest.mark.parametrize("path", ["/usr/local/bin/rke", "/opt/x-1.2/bin/k0s", "/a"])
def test_good_binary_destinations(path: str) -> None:
    assert check_dest(path) is None


@pytest.mark.parametrize(
    "path", ["", "/", "rke", "/a/", "/a//b", "/a/./b", "/a/../b", "/a;reboot", "/a\\b", "/a/\nb"]
)
def test_bad_binary_destinations(path: str) -> None:
    assert check_dest(path) is not None


# ---------------------------------------------------------------- the cluster and its system images


def clustered() -> Lock:
    """``signed()`` with a cluster: the registry image doubles as a system image of every node here,
    and a second image is an etcd node's system image."""
    base = signed()
    etcd = oci.Image(
        ref="docker.io/rancher/mirrored-coreos-etcd:v3.5.12",
        tags=("rancher/mirrored-coreos-etcd:v3.5.12",),
        source="registry",
        manifest="sha256:" + "c" * 64,
        media_type=oci.OCI_MANIFEST,
        config="sha256:" + "d" * 64,
        platform="linux/amd64",
        layers=(),
    )
    app = dataclasses.replace(
        etcd, ref="docker.io/fmp/app:1", tags=("fmp/app:1",), manifest="sha256:" + "e" * 64
    )
    blobs = tuple(
        Member(f"images/{oci.blob_path(d)}", 1, d[7:], "image")
        for d in (etcd.manifest, etcd.config, app.manifest)
    )
    return dataclasses.replace(
        base,
        members=base.members + blobs,
        images=(*base.images, etcd, app),
        registry_image="",
        cluster={
            "kind": "rke",
            "kubernetes_version": "v1.28.15-rancher1-1",
            "network_plugin": "canal",
            "tool": "rke",
        },
        system_images=(
            SystemImage("docker.io/rancher/mirrored-coreos-etcd:v3.5.12", ("etcd",)),
            SystemImage("registry:2", ("controlplane", "etcd", "worker")),
        ),
        placed_images=(RoledImage("docker.io/fmp/app:1", ("worker", "etcd")),),
    )


def test_cluster_and_system_images_round_trip() -> None:
    lock = clustered()
    assert Lock.from_bytes(lock.to_bytes()) == lock
    assert Lock.from_bytes(signed().to_bytes()).cluster == {}  # no cluster: an empty dict
    assert Lock.from_bytes(signed().to_bytes()).system_images == ()
    assert Lock.from_bytes(signed().to_bytes()).placed_images == ()


def test_workloads_and_images_for_node_roles() -> None:
    lock = clustered()
    registry, etcd, app = lock.images
    assert lock.workloads == (app,)  # system images are not workloads
    assert lock.images_for(["worker"]) == (registry, app)  # lock order
    assert lock.images_for(["etcd"]) == (registry, etcd, app)  # the app's entry named etcd too
    assert lock.images_for(["controlplane"]) == (registry,)
    assert lock.images_for(("controlplane", "etcd", "worker")) == (registry, etcd, app)
    unplaced = dataclasses.replace(lock, placed_images=())
    assert unplaced.images_for(["etcd"]) == (registry, etcd)
    assert dataclasses.replace(unplaced, image_roles=("etcd",)).images_for(["etcd"]) == (registry, etcd, app)


@pytest.mark.parametrize(
    "where, value, message",
    [
        (("cluster", "kind"), "k3s", "cluster.kind 'k3s' is not one of rke"),
        (("cluster", "kubernetes_version"), "v1.28; reboot", "cluster.kubernetes_version 'v1.28; reboot'"),
        (("cluster", "network_plugin"), "cilium", "cluster.network_plugin 'cilium' is not one of"),
        (("cluster", "tool"), "kubeadm", "cluster.tool 'kubeadm' is not one of the bundle's binaries"),
        (("cluster", "tool"), "../rke", "cluster.tool '../rke' is not a valid binary name"),
        (("cluster", "mirror"), "127.0.0.1:5000", "cluster has unknown key"),
        (("cluster",), "rke", "cluster has the wrong type"),
        (("system_images", 0, "ref"), "docker.io/rancher/other:1", "is not one of the locked images"),
        (("system_images", 0, "ref"), "Not A Ref", r"system_images\[0\]\.ref 'Not A Ref'"),
        (("system_images", 0, "roles"), ["etcd", "master"], r"system_images\[0\]\.roles must list"),
        (("system_images", 0, "roles"), [], r"system_images\[0\]\.roles must list"),
        (("system_images", 0, "roles"), ["etcd", "etcd"], "each once"),
        (("system_images", 0, "roles"), "etcd", r"system_images\[0\]\.roles has the wrong type"),
        (("system_images", 0, "registry"), "x", "unknown key"),
        (
            ("system_images", 1),
            {"ref": "docker.io/rancher/mirrored-coreos-etcd:v3.5.12", "roles": ["etcd"]},
            "twice",
        ),
        (("cluster",), {}, "system_images need a cluster"),
        (
            ("placed_images", 0, "ref"),
            "docker.io/fmp/other:1",
            r"placed_images\[0\]\.ref .* is not one of the locked",
        ),
        (("placed_images", 0, "roles"), ["boss"], r"placed_images\[0\]\.roles must list"),
        (
            ("placed_images",),
            [{"ref": "docker.io/fmp/app:1", "roles": ["etcd"]}, {"ref": "fmp/app:1", "roles": ["worker"]}],
            "listed twice",  # one image under two of its names
        ),
        (("placed_images", 0, "ref"), "registry:2", "is a system image or the registry image"),
    ],
)
def test_malformed_cluster_and_system_images_are_refused(where: tuple, value: object, message: str) -> None:
    with pytest.raises(LockError, match=message) as info:
        Lock.from_bytes(_changed(where, value, clustered()))
    assert info.value.exit_code == 4


def test_deb_baseline_and_recommends_round_trip_and_stay_out_when_unset() -> None:
    lock = dataclasses.replace(signed(), deb_baseline={"libc6": "2.36-9+deb12u4", "perl-base": "5.36.0-7"})
    lock = dataclasses.replace(lock, recommends=True)
    assert Lock.from_bytes(lock.to_bytes()) == lock
    plain = json.loads(signed().to_bytes())
    assert (
        "deb_baseline" not in plain and "recommends" not in plain["install"]
    )  # old bundles keep their bytes


@pytest.mark.parametrize(
    "where, value",
    [
        (("deb_baseline",), {"libc6": "2.36; reboot"}),  # it reaches a shell on the nodes
        (("deb_baseline",), {"Bad Name": "1.0"}),
        (("deb_baseline",), {"libc6": 2}),
        (("install", "recommends"), "yes"),
    ],
)
def test_malformed_deb_baseline_and_recommends_are_refused(where: tuple, value: object) -> None:
    with pytest.raises(LockError) as info:
        Lock.from_bytes(_changed(where, value))
    assert info.value.exit_code == 4
