"""Images from a real local Docker engine and from vendor archives, loaded into a fresh engine."""

from __future__ import annotations

import io
import json
import re
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from bundler import archive, images, oci
from bundler.cache import Cache

from .conftest import Keys, Project, SourceEngine, run_cli


def _manifest(project: Project, body: str, arch: str = "amd64", name: str = "img.yaml") -> Path:
    return project.write_manifest(
        "apiVersion: airbundle/v1\nkind: Bundle\nname: imgs\nversion: '1.0'\n"
        f"platform: {{os: debian, codename: bookworm, arch: {arch}}}\n" + body,
        name,
    )


def _build(project: Project, keys: Keys, manifest: Path, out: Path, cache: Path, engine: SourceEngine):
    return run_cli(
        "build", manifest, "-o", out, "--key", keys.key_path, "--cache", cache, env=engine.engine.env
    )  # type: ignore[attr-defined]


IMAGES_BODY = """\
images:
  - ref: test/app-a:1
    from: daemon
  - ref: test/app-b:1
    from: daemon
  - archive: payloads/vendor.tar.gz
"""


@pytest.fixture
def image_bundle(
    project: Project, keys: Keys, tmp_path: Path, cache_dir: Path, source_engine: SourceEngine
) -> Path:
    shutil.copy(source_engine.vendor_tgz, project.root / "payloads" / "vendor.tar.gz")
    result = _build(
        project, keys, _manifest(project, IMAGES_BODY), tmp_path / "out", cache_dir, source_engine
    )
    assert result.exit_code == 0, result.stderr
    return Path(result.stdout.strip())


def test_bundle_images_load_into_a_fresh_engine(
    image_bundle: Path, keys: Keys, source_engine: SourceEngine, fresh_engine, tmp_path: Path
) -> None:
    report = archive.verify_bundle(image_bundle, [keys.pub])
    assert report.problems == []
    lock = report.lock
    assert [im.tags for im in lock.images] == [("test/app-a:1",), ("test/app-b:1",), ("test/vendor:1",)]
    src = source_engine.engine.client  # type: ignore[attr-defined]
    for image in lock.images:
        assert image.config == src.images.get(image.tags[0]).id  # the image ID is preserved
        assert image.platform == "linux/amd64" and image.source in ("daemon", "archive")
    # The base layer is shared by all three images and stored once.
    base = lock.images[0].layers[0].digest
    assert all(im.layers[0].digest == base for im in lock.images)
    members = [m.path for m in lock.members]
    assert members.count(f"images/{oci.blob_path(base)}") == 1
    assert {m.kind for m in lock.members if m.path.startswith("images/")} == {"image"}

    # A tar of images/ loads with `docker load` into an engine that never saw these images.
    with tarfile.open(image_bundle) as tar:
        tar.extractall(tmp_path / "x", members=[m for m in tar.getmembers() if m.name.startswith("images/")])
    load_tar = tmp_path / "images.tar"
    with tarfile.open(load_tar, "w") as tar:
        for path in sorted((tmp_path / "x" / "images").rglob("*")):
            tar.add(path, arcname=str(path.relative_to(tmp_path / "x" / "images")), recursive=False)
    fresh = fresh_engine.client
    assert fresh.images.list() == []
    with open(load_tar, "rb") as f:
        fresh.images.load(f)
    for image in lock.images:
        loaded = fresh.images.get(image.tags[0])
        assert loaded.id == image.config
        out = fresh.containers.run(image.tags[0], network_mode="none", remove=True)
        assert out.decode() == source_engine.outputs[image.tags[0]]

    # containerd imports the same tar through index.json (the engine's own containerd).
    ctr = [
        "ctr",
        "--address",
        str(fresh_engine.root / "exec/containerd/containerd.sock"),
        "-n",
        "airbundle-test",
    ]
    subprocess.run([*ctr, "images", "import", load_tar], check=True, capture_output=True)
    listed = subprocess.run([*ctr, "images", "ls"], check=True, capture_output=True, text=True).stdout
    for image in lock.images:
        assert f"docker.io/{image.tags[0]}" in listed and image.manifest in listed

    # skopeo reads the same folder as an OCI layout.
    layout = tmp_path / "x" / "images"
    inspect = subprocess.run(
        ["skopeo", "inspect", "--raw", f"oci:{layout}:docker.io/test/app-a:1"],
        capture_output=True,
        check=True,
    )
    assert oci.sha256_digest(inspect.stdout) == lock.images[0].manifest


def test_image_bundles_are_deterministic(
    image_bundle: Path, project: Project, keys: Keys, tmp_path: Path, source_engine: SourceEngine
) -> None:
    again = _build(
        project,
        keys,
        project.root / "manifests" / "img.yaml",
        tmp_path / "again",
        tmp_path / "other-cache",
        source_engine,
    )
    assert again.exit_code == 0, again.stderr
    assert Path(again.stdout.strip()).read_bytes() == image_bundle.read_bytes()


def test_inspect_lists_images(image_bundle: Path) -> None:
    text = run_cli("inspect", image_bundle).stdout
    assert "images:" in text and "test/app-a:1" in text and "linux/amd64" in text
    facts = json.loads(run_cli("inspect", image_bundle, "--json").stdout)
    assert [im["tags"] for im in facts["images"]] == [["test/app-a:1"], ["test/app-b:1"], ["test/vendor:1"]]
    assert all(im["config"].startswith("sha256:") and im["size"] > 0 for im in facts["images"])


@pytest.mark.parametrize("which", ["vendor_tar", "vendor_tgz"])
def test_vendor_archives_plain_and_gzipped(source_engine: SourceEngine, cache_dir: Path, which: str) -> None:
    got = images.from_archive(Cache(cache_dir), getattr(source_engine, which))
    (image,) = got.images
    assert image.tags == ("test/vendor:1",)
    assert image.config == source_engine.engine.client.images.get("test/vendor:1").id  # type: ignore[attr-defined]
    assert set(got.blobs) == {image.manifest, image.config, *(la.digest for la in image.layers)}
    for digest, path in got.blobs.items():
        assert oci.sha256_digest(path.read_bytes()) == digest


def _layout_tar(bundle: Path, out: Path, with_docker_manifest: bool) -> Path:
    """The bundle's images/ folder as an archive: OCI only, or Docker 25's dual layout."""
    with tarfile.open(bundle) as src, tarfile.open(out, "w") as dst:
        for member in src.getmembers():
            if member.name.startswith("images/") and (
                with_docker_manifest or member.name != "images/manifest.json"
            ):
                data = src.extractfile(member).read()  # type: ignore[union-attr]
                member.name = member.name.removeprefix("images/")
                dst.addfile(member, io.BytesIO(data))
    return out


@pytest.mark.parametrize("dual", [False, True], ids=["oci-archive", "docker25-save-layout"])
def test_layout_archives_round_trip(image_bundle: Path, cache_dir: Path, tmp_path: Path, dual: bool) -> None:
    """images/ tarred is an OCI archive (or, with manifest.json, Docker 25's save layout) that ingests again."""
    lock = archive.read_lock(image_bundle)[0]
    got = images.from_archive(Cache(cache_dir), _layout_tar(image_bundle, tmp_path / "l.tar", dual))
    assert [(im.config, im.tags) for im in got.images] == [(im.config, im.tags) for im in lock.images]
    assert [im.layers for im in got.images] == [im.layers for im in lock.images]


def test_zstd_layers_need_the_manifests_consent(
    project: Project, keys: Keys, tmp_path: Path, cache_dir: Path
) -> None:
    layer = oci.ZSTD_MAGIC + b"pretend zstd frame" * 10
    layer_digest = oci.sha256_digest(layer)
    config = json.dumps(
        {
            "os": "linux",
            "architecture": "amd64",
            "rootfs": {"type": "layers", "diff_ids": ["sha256:" + "0" * 64]},
        }
    ).encode()
    manifest = oci.canonical(
        {
            "schemaVersion": 2,
            "mediaType": oci.OCI_MANIFEST,
            "config": {"mediaType": oci.OCI_CONFIG, "digest": oci.sha256_digest(config), "size": len(config)},
            "layers": [{"mediaType": oci.OCI_LAYER_ZSTD, "digest": layer_digest, "size": len(layer)}],
        }
    )
    index = oci.canonical(
        {
            "schemaVersion": 2,
            "manifests": [
                {
                    "mediaType": oci.OCI_MANIFEST,
                    "digest": oci.sha256_digest(manifest),
                    "size": len(manifest),
                    "annotations": {"io.containerd.image.name": "docker.io/test/zstd:1"},
                }
            ],
        }
    )
    path = project.root / "payloads" / "z.tar"
    with tarfile.open(path, "w") as tar:
        for name, data in [
            ("oci-layout", b'{"imageLayoutVersion":"1.0.0"}'),
            ("index.json", index),
            *((oci.blob_path(oci.sha256_digest(d)), d) for d in (layer, config, manifest)),
        ]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))

    def build(images: str):
        return run_cli(
            "build",
            _manifest(project, images),
            "-o",
            tmp_path / "o",
            "--key",
            keys.key_path,
            "--cache",
            cache_dir,
        )

    refused = build("images:\n  - archive: payloads/z.tar\n")
    assert refused.exit_code == 2 and "zstd-compressed" in refused.stderr and "zstd: true" in refused.stderr
    allowed = build("images:\n  - archive: payloads/z.tar\n    zstd: true\n")
    assert allowed.exit_code == 0, allowed.stderr
    (image,) = archive.read_lock(Path(allowed.stdout.strip()))[0].images
    assert image.layers[0].media_type == oci.OCI_LAYER_ZSTD


def _hostile(tmp_path: Path, name: str, *, link: str | None = None, data: bytes = b"x") -> Path:
    path = tmp_path / "hostile.tar"
    with tarfile.open(path, "w") as tar:
        info = tarfile.TarInfo(name)
        if link is not None:
            info.type, info.linkname = tarfile.SYMTYPE, link
        else:
            info.size = len(data)
        tar.addfile(info, io.BytesIO(data) if link is None else None)
    return path


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"name": "../../etc/cron.d/x"}, "unsafe member name"),
        ({"name": "/etc/passwd"}, "unsafe member name"),
        ({"name": "abc/layer.tar", "link": "../../../etc/shadow"}, "points outside the archive"),
        ({"name": "README"}, "neither manifest.json nor index.json"),
        ({"name": "manifest.json", "data": b"{not json"}, "not valid JSON"),
        (
            {"name": "manifest.json", "data": b'[{"Config": "c.json", "Layers": [], "RepoTags": []}]'},
            "'c.json' is not in the archive",
        ),
    ],
)
def test_bad_vendor_archives(
    project: Project, keys: Keys, tmp_path: Path, cache_dir: Path, kwargs: dict, message: str
) -> None:
    shutil.copy(_hostile(tmp_path, **kwargs), project.root / "payloads" / "v.tar")
    manifest = _manifest(project, "images:\n  - archive: payloads/v.tar\n")
    result = run_cli("build", manifest, "-o", tmp_path / "o", "--key", keys.key_path, "--cache", cache_dir)
    assert result.exit_code == 2, result.stderr
    assert "payloads/v.tar" in result.stderr and message in result.stderr
    assert not (tmp_path / "o").exists()


def test_zstd_archive_refused(project: Project, keys: Keys, tmp_path: Path, cache_dir: Path) -> None:
    (project.root / "payloads" / "v.tar.zst").write_bytes(oci.ZSTD_MAGIC + b"\0" * 100)
    manifest = _manifest(project, "images:\n  - archive: payloads/v.tar.zst\n")
    result = run_cli("build", manifest, "-o", tmp_path / "o", "--key", keys.key_path, "--cache", cache_dir)
    assert result.exit_code == 2 and "zstd" in result.stderr


def test_image_missing_from_engine_is_exit_5(
    project: Project, keys: Keys, tmp_path: Path, cache_dir: Path, source_engine: SourceEngine
) -> None:
    manifest = _manifest(project, "images:\n  - ref: test/nope:9\n    from: daemon\n")
    result = _build(project, keys, manifest, tmp_path / "o", cache_dir, source_engine)
    assert result.exit_code == 5 and "test/nope:9 is not in the local Docker engine" in result.stderr


def test_unreachable_engine_is_exit_5(project: Project, keys: Keys, tmp_path: Path, cache_dir: Path) -> None:
    manifest = _manifest(project, "images:\n  - ref: test/app-a:1\n    from: daemon\n")
    result = run_cli(
        "build",
        manifest,
        "-o",
        tmp_path / "o",
        "--key",
        keys.key_path,
        "--cache",
        cache_dir,
        env={"DOCKER_HOST": f"unix://{tmp_path}/no.sock"},
    )
    assert result.exit_code == 5 and "cannot reach the local Docker engine" in result.stderr
    assert (
        f"DOCKER_HOST=unix://{tmp_path}/no.sock" in result.stderr
        and "systemctl start docker" in result.stderr
    )
    assert "Connection aborted" not in result.stderr and "Traceback" not in result.stderr


def test_wrong_platform_is_refused(
    project: Project, keys: Keys, tmp_path: Path, cache_dir: Path, source_engine: SourceEngine
) -> None:
    manifest = _manifest(project, "images:\n  - ref: test/app-a:1\n    from: daemon\n", arch="arm64")
    result = _build(project, keys, manifest, tmp_path / "o", cache_dir, source_engine)
    assert result.exit_code == 2 and "is for linux/amd64, but the bundle is for linux/arm64" in result.stderr


@pytest.mark.parametrize(
    "body, message",
    [
        (
            "images:\n  - ref: test/a:1\n    archive: payloads/notes.txt\n",
            "exactly one of 'ref' or 'archive'",
        ),
        ("images:\n  - ref: Test/A:1\n    from: daemon\n", "not an image reference"),
        ("images:\n  - ref: test/a:1\n    from: ftp\n", "must be one of daemon, registry"),
        ("images:\n  - archive: payloads/notes.txt\n    insecure: true\n", "goes with 'ref'"),
        ("images:\n  - ref: test/a:1\n    from: daemon\n    insecure: true\n", "registry pulls only"),
        ("images:\n  - archive: payloads/nope.tar\n", "does not exist"),
    ],
)
def test_bad_image_entries(project: Project, body: str, message: str) -> None:
    from bundler.errors import ManifestError
    from bundler.manifest import load_manifest

    with pytest.raises(ManifestError, match=message.replace("(", r"\(")) as info:
        load_manifest(_manifest(project, body))
    assert re.search(r"img\.yaml:[789]:", str(info.value))


def test_sbom_lists_the_images(image_bundle: Path) -> None:
    """inspect --sbom prints the CycloneDX document the bundle carries, covered by the lock."""
    result = run_cli("inspect", image_bundle, "--sbom")
    assert result.exit_code == 0, result.stderr
    bom = json.loads(result.stdout)
    assert bom["bomFormat"] == "CycloneDX" and bom["specVersion"] == "1.5"
    lock = archive.read_lock(image_bundle)[0]
    purls = {c.get("purl", "") for c in bom["components"]}
    for image in lock.images:
        assert any(p.startswith("pkg:oci/") and f"@{image.manifest}" in p for p in purls), purls
    assert bom["metadata"]["component"]["name"] == "imgs"
    assert "sbom.cdx.json" in {m.path for m in lock.members}
    from cyclonedx.schema import SchemaVersion
    from cyclonedx.validation.json import JsonStrictValidator

    assert JsonStrictValidator(SchemaVersion.V1_5).validate_str(result.stdout) is None
