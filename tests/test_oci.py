"""Image references, manifests and the bundle's layout files (pure logic, no engine)."""

from __future__ import annotations

import json

import pytest

from bundler import oci
from bundler.lock import Lock, LockError, Member

from .test_lock import sample

D1 = "sha256:" + "1" * 64
D2 = "sha256:" + "2" * 64
D3 = "sha256:" + "3" * 64


@pytest.mark.parametrize(
    "text, full, familiar",
    [
        ("busybox", "docker.io/library/busybox:latest", "busybox:latest"),
        ("rancher/rancher:v2.7.9", "docker.io/rancher/rancher:v2.7.9", "rancher/rancher:v2.7.9"),
        ("index.docker.io/library/x:1", "docker.io/library/x:1", "x:1"),
        ("127.0.0.1:5000/test/base:1", "127.0.0.1:5000/test/base:1", "127.0.0.1:5000/test/base:1"),
        ("localhost/app", "localhost/app:latest", "localhost/app:latest"),
        (f"quay.io/a/b@{D1}", f"quay.io/a/b@{D1}", "quay.io/a/b"),
        (f"reg.example:443/a/b:1.0@{D1}", f"reg.example:443/a/b:1.0@{D1}", "reg.example:443/a/b:1.0"),
    ],
)
def test_references_normalize_like_docker(text: str, full: str, familiar: str) -> None:
    ref = oci.parse_reference(text)
    assert str(ref) == full
    assert ref.familiar == familiar


@pytest.mark.parametrize("text", ["", "Foo/bar", "a:b:c", "x@sha256:abc", "/x", "a//b"])
def test_bad_references(text: str) -> None:
    with pytest.raises(oci.ImageFormatError):
        oci.parse_reference(text)


def _image(tags: tuple[str, ...], manifest: str = D1) -> oci.Image:
    return oci.Image(
        ref=str(oci.parse_reference(tags[0])),
        tags=tags,
        source="daemon",
        manifest=manifest,
        media_type=oci.OCI_MANIFEST,
        config=D2,
        platform="linux/arm/v7",
        layers=(oci.Layer(D3, 10, oci.OCI_LAYER),),
    )


def test_layout_files() -> None:
    files = oci.layout_files([_image(("test/a:1", "test/a:latest"))], {D1: 123})
    assert json.loads(files["oci-layout"]) == {"imageLayoutVersion": "1.0.0"}
    docker = json.loads(files["manifest.json"])
    assert docker == [
        {
            "Config": f"blobs/sha256/{'2' * 64}",
            "RepoTags": ["test/a:1", "test/a:latest"],
            "Layers": [f"blobs/sha256/{'3' * 64}"],
        }
    ]
    index = json.loads(files["index.json"])
    assert [m["annotations"]["io.containerd.image.name"] for m in index["manifests"]] == [
        "docker.io/test/a:1",
        "docker.io/test/a:latest",
    ]
    assert index["manifests"][0]["platform"] == {"os": "linux", "architecture": "arm", "variant": "v7"}
    assert index["manifests"][0]["size"] == 123
    # Canonical bytes: the same images give the same files.
    assert files == oci.layout_files([_image(("test/a:1", "test/a:latest"))], {D1: 123})


def test_synthesized_manifest_is_canonical_and_parses_back() -> None:
    layers = [oci.Layer(D3, 10, oci.OCI_LAYER)]
    data = oci.synthesize_manifest(D2, 50, layers)
    assert data == oci.synthesize_manifest(D2, 50, layers)
    assert oci.parse_manifest(data, "m") == (oci.OCI_MANIFEST, D2, layers)


@pytest.mark.parametrize(
    "doc, message",
    [
        ({"schemaVersion": 1}, "schema 2"),
        ({"schemaVersion": 2, "mediaType": oci.OCI_INDEX, "manifests": []}, "is an index"),
        ({"schemaVersion": 2, "config": {"digest": "md5:x"}, "layers": []}, "not a sha256 digest"),
        ({"schemaVersion": 2, "config": {"digest": D2}, "layers": [{"digest": D3, "size": -1}]}, "malformed"),
    ],
)
def test_bad_manifests(doc: dict, message: str) -> None:
    with pytest.raises(oci.ImageFormatError, match=message):
        oci.parse_manifest(json.dumps(doc).encode(), "m")


def test_config_platform_and_diff_ids() -> None:
    config = json.dumps(
        {
            "os": "linux",
            "architecture": "arm64",
            "variant": "v8",
            "rootfs": {"type": "layers", "diff_ids": [D3]},
        }
    ).encode()
    assert oci.config_platform(config, "c") == ("linux/arm64/v8", [D3])
    with pytest.raises(oci.ImageFormatError, match="lacks os/architecture"):
        oci.config_platform(b"{}", "c")


def test_layer_media_type_sniffing() -> None:
    assert oci.layer_media_type(b"\x1f\x8b\x08\x00") == oci.OCI_LAYER_GZIP
    assert oci.layer_media_type(oci.ZSTD_MAGIC) == oci.OCI_LAYER_ZSTD
    assert oci.layer_media_type(b"bin/") == oci.OCI_LAYER


def test_lock_round_trips_images_and_requires_their_blobs() -> None:
    image = _image(("test/a:1",))
    blobs = tuple(Member(f"images/{oci.blob_path(d)}", 10, d[7:], "image") for d in (D1, D2, D3))
    base = sample()
    lock = Lock(**{**base.__dict__, "members": base.members + blobs, "images": (image,)})
    assert Lock.from_bytes(lock.to_bytes()) == lock
    missing = Lock(**{**base.__dict__, "members": base.members + blobs[:2], "images": (image,)})
    with pytest.raises(LockError, match="is used but not listed"):
        Lock.from_bytes(missing.to_bytes())


@pytest.mark.parametrize(
    "domain, insecure, url",
    [
        ("docker.io", False, "https://registry-1.docker.io"),
        ("quay.io", False, "https://quay.io"),
        ("registry.site:5000", True, "http://registry.site:5000"),
        ("127.0.0.1:5000", False, "http://127.0.0.1:5000"),
        ("127.8.9.10:443", False, "http://127.8.9.10:443"),
        ("localhost:5000", False, "http://localhost:5000"),
        ("[::1]:5000", False, "http://[::1]:5000"),
        ("10.0.0.1:5000", False, "https://10.0.0.1:5000"),
    ],
)
def test_registry_endpoints(domain: str, insecure: bool, url: str) -> None:
    from bundler.registry import base_url

    assert base_url(domain, insecure) == url


def test_docker_config_credentials(tmp_path) -> None:
    import base64

    from bundler.errors import FetchError
    from bundler.registry import Credentials

    auth = base64.b64encode(b"hub-user:hub-pass").decode()
    (tmp_path / "config.json").write_text(
        json.dumps(
            {
                "auths": {
                    "https://index.docker.io/v1/": {"auth": auth},
                    "quay.io": {"identitytoken": "tok"},
                    "bad.example": {"auth": "!!!"},
                },
            }
        )
    )
    creds = Credentials(tmp_path)
    assert creds.lookup("docker.io") == ("hub-user", "hub-pass")
    assert creds.lookup("quay.io") == ("<token>", "tok")
    assert creds.lookup("ghcr.io") is None
    with pytest.raises(FetchError, match="not base64"):
        creds.lookup("bad.example")
    (tmp_path / "config.json").write_text("{broken")
    with pytest.raises(FetchError, match="cannot read Docker's credentials file"):
        Credentials(tmp_path)
