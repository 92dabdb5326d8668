"""Registry pulls against real loopback registries (open, htpasswd Basic, Bearer token), no engine."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from bundler import archive, oci

from .conftest import Keys, Project, Registries, SourceEngine, run_cli
from .registries import Proxy, Registry, docker_config


def _manifest(project: Project, refs: list[str], arch: str = "amd64") -> Path:
    body = "images:\n" + "".join(f"  - ref: {ref}\n" for ref in refs)
    return project.write_manifest(
        "apiVersion: airbundle/v1\nkind: Bundle\nname: pulled\nversion: '1.0'\n"
        f"platform: {{os: debian, codename: bookworm, arch: {arch}}}\n" + body,
        "pulled.yaml",
    )


def _build(keys: Keys, manifest: Path, out: Path, cache: Path, env: dict[str, str] | None = None):
    # An empty DOCKER_CONFIG unless the test gives one: never the developer's own credentials.
    env = {"DOCKER_CONFIG": str(out.parent / "no-docker-config"), **(env or {})}
    return run_cli("build", manifest, "-o", out, "--key", keys.key_path, "--cache", cache, env=env)


def test_pull_from_open_registry_and_load(
    project: Project,
    keys: Keys,
    tmp_path: Path,
    cache_dir: Path,
    registries: Registries,
    source_engine: SourceEngine,
    fresh_engine,
) -> None:
    host = registries.open.host  # type: ignore[attr-defined]
    manifest = _manifest(project, [f"{host}/test/app-a:1", f"{host}/test/app-b:1"])
    result = _build(keys, manifest, tmp_path / "out", cache_dir)
    assert result.exit_code == 0, result.stderr
    bundle = Path(result.stdout.strip())
    report = archive.verify_bundle(bundle, [keys.pub])
    assert report.problems == []
    lock = report.lock
    src = source_engine.engine.client  # type: ignore[attr-defined]
    assert [im.tags for im in lock.images] == [(f"{host}/test/app-a:1",), (f"{host}/test/app-b:1",)]
    for image, tag in zip(lock.images, ("test/app-a:1", "test/app-b:1")):
        assert image.source == "registry" and image.config == src.images.get(tag).id
        assert all(la.media_type.endswith("gzip") for la in image.layers)  # as the registry holds them
    base = lock.images[0].layers[0].digest
    assert lock.images[1].layers[0].digest == base
    assert [m.path for m in lock.members].count(f"images/{oci.blob_path(base)}") == 1

    with open(_images_tar(bundle, tmp_path), "rb") as f:
        fresh_engine.client.images.load(f)
    for image, tag in zip(lock.images, ("test/app-a:1", "test/app-b:1")):
        assert fresh_engine.client.images.get(image.tags[0]).id == image.config
        out = fresh_engine.client.containers.run(image.tags[0], network_mode="none", remove=True)
        assert out.decode() == source_engine.outputs[tag]


def _images_tar(bundle: Path, tmp_path: Path) -> Path:
    import tarfile

    out = tmp_path / "images.tar"
    with tarfile.open(bundle) as src, tarfile.open(out, "w") as dst:
        for member in src.getmembers():
            if member.name.startswith("images/"):
                data = src.extractfile(member)
                member.name = member.name.removeprefix("images/")
                dst.addfile(member, data)
    return out


def test_token_auth_with_docker_config_credentials(
    project: Project, keys: Keys, tmp_path: Path, cache_dir: Path, registries: Registries
) -> None:
    reg = registries.token
    env = docker_config(tmp_path / "dc", reg.host)  # type: ignore[attr-defined]
    result = _build(keys, _manifest(project, [f"{reg.host}/test/app-a:1"]), tmp_path / "o", cache_dir, env)  # type: ignore[attr-defined]
    assert result.exit_code == 0, result.stderr
    asked = reg.token_server.requests  # type: ignore[attr-defined]
    assert any(
        r.get("scope") == "repository:test/app-a:pull" and r["auth"].startswith("Basic ") for r in asked
    )


def test_token_auth_refused_without_credentials(
    project: Project, keys: Keys, tmp_path: Path, cache_dir: Path, registries: Registries
) -> None:
    reg = registries.token
    result = _build(keys, _manifest(project, [f"{reg.host}/test/app-a:1"]), tmp_path / "o", cache_dir)  # type: ignore[attr-defined]
    assert result.exit_code == 5
    assert "anonymous access was refused" in result.stderr and "test/app-a:1" in result.stderr
    assert not (tmp_path / "o").exists()


def test_basic_auth(
    project: Project, keys: Keys, tmp_path: Path, cache_dir: Path, registries: Registries
) -> None:
    reg = registries.basic
    manifest = _manifest(project, [f"{reg.host}/test/app-b:1"])  # type: ignore[attr-defined]
    refused = _build(keys, manifest, tmp_path / "o", cache_dir)
    assert refused.exit_code == 5 and "HTTP 401" in refused.stderr and "docker login" in refused.stderr
    ok = _build(keys, manifest, tmp_path / "o2", cache_dir, docker_config(tmp_path / "dc", reg.host))  # type: ignore[attr-defined]
    assert ok.exit_code == 0, ok.stderr


def test_credential_helpers(
    project: Project, keys: Keys, tmp_path: Path, cache_dir: Path, registries: Registries
) -> None:
    reg = registries.basic
    manifest = _manifest(project, [f"{reg.host}/test/app-b:1"])  # type: ignore[attr-defined]
    config = tmp_path / "dc"
    config.mkdir()
    (config / "config.json").write_text(json.dumps({"credHelpers": {reg.host: "nope"}}))  # type: ignore[attr-defined]
    missing = _build(keys, manifest, tmp_path / "o", cache_dir, {"DOCKER_CONFIG": str(config)})
    assert missing.exit_code == 5 and "'docker-credential-nope', which is not installed" in missing.stderr
    helper_dir = tmp_path / "bin"
    helper_dir.mkdir()
    helper = helper_dir / "docker-credential-testhelper"
    helper.write_text(
        '#!/bin/sh\nread server\necho "{\\"ServerURL\\": \\"$server\\", \\"Username\\": \\"puller\\", '
        '\\"Secret\\": \\"s3cret-pass\\"}"\n'
    )
    helper.chmod(helper.stat().st_mode | stat.S_IXUSR)
    (config / "config.json").write_text(json.dumps({"credsStore": "testhelper"}))
    env = {"DOCKER_CONFIG": str(config), "PATH": f"{helper_dir}:{os.environ['PATH']}"}
    assert _build(keys, manifest, tmp_path / "o2", cache_dir, env).exit_code == 0


@pytest.mark.parametrize("arch, platform", [("amd64", "linux/amd64"), ("arm64", "linux/arm64")])
def test_manifest_list_platform_selection(
    project: Project,
    keys: Keys,
    tmp_path: Path,
    cache_dir: Path,
    registries: Registries,
    arch: str,
    platform: str,
) -> None:
    host = registries.open.host  # type: ignore[attr-defined]
    result = _build(keys, _manifest(project, [f"{host}/test/multi:1"], arch), tmp_path / "o", cache_dir)
    assert result.exit_code == 0, result.stderr
    (image,) = archive.read_lock(Path(result.stdout.strip()))[0].images
    assert image.platform == platform and image.manifest == registries.multi[platform]


def test_unknown_platform_lists_the_available_ones(
    project: Project, keys: Keys, tmp_path: Path, cache_dir: Path, registries: Registries
) -> None:
    host = registries.open.host  # type: ignore[attr-defined]
    result = _build(keys, _manifest(project, [f"{host}/test/multi:1"], "s390x"), tmp_path / "o", cache_dir)
    assert result.exit_code == 5
    assert "no image for linux/s390x; the registry has: linux/amd64, linux/arm64" in result.stderr


def test_pull_by_digest_and_unknown_tag(
    project: Project, keys: Keys, tmp_path: Path, cache_dir: Path, registries: Registries
) -> None:
    host = registries.open.host  # type: ignore[attr-defined]
    digest = registries.multi["linux/amd64"]
    result = _build(keys, _manifest(project, [f"{host}/test/multi@{digest}"]), tmp_path / "o", cache_dir)
    assert result.exit_code == 0, result.stderr
    (image,) = archive.read_lock(Path(result.stdout.strip()))[0].images
    assert image.manifest == digest and image.tags == ()
    unknown = _build(keys, _manifest(project, [f"{host}/test/app-a:nope"]), tmp_path / "o2", cache_dir)
    assert unknown.exit_code == 5 and "nope not found in" in unknown.stderr


def test_corrupt_blob_is_refused_and_not_cached(
    project: Project, keys: Keys, tmp_path: Path, cache_dir: Path, source_engine: SourceEngine
) -> None:
    reg = Registry("open")
    try:
        reg.push_from_engine(source_engine.engine.host, "test/vendor:1")  # type: ignore[attr-defined]
        import requests

        manifest = requests.get(
            f"http://{reg.host}/v2/test/vendor/manifests/1",
            timeout=10,
            headers={"Accept": "application/vnd.docker.distribution.manifest.v2+json"},
        ).json()
        top = manifest["layers"][-1]["digest"]
        blob = reg.blob_file(top)
        data = bytearray(blob.read_bytes())
        data[len(data) // 2] ^= 0xFF
        blob.write_bytes(bytes(data))
        result = _build(keys, _manifest(project, [f"{reg.host}/test/vendor:1"]), tmp_path / "o", cache_dir)
        assert result.exit_code == 5
        assert "sha256 mismatch" in result.stderr and top.removeprefix("sha256:") in result.stderr
        assert not (cache_dir / "sha256" / top[7:9] / top[7:]).exists()
    finally:
        reg.stop()


def test_dropped_blob_transfer_resumes(
    project: Project, keys: Keys, tmp_path: Path, cache_dir: Path, registries: Registries
) -> None:
    proxy = Proxy(registries.open.host, "drop_blob_once")  # type: ignore[attr-defined]
    try:
        result = _build(keys, _manifest(project, [f"{proxy.host}/test/app-b:1"]), tmp_path / "o", cache_dir)
        assert result.exit_code == 0, result.stderr
        assert proxy.dropped
        assert any(rng and rng.startswith("bytes=") and rng != "bytes=0-" for _, rng in proxy.seen)
    finally:
        proxy.close()


def test_redirect_to_another_host_drops_authorization(
    project: Project, keys: Keys, tmp_path: Path, cache_dir: Path, registries: Registries
) -> None:
    proxy = Proxy(registries.basic.host, "redirect_blobs")  # type: ignore[attr-defined]
    try:
        env = docker_config(tmp_path / "dc", proxy.host)
        result = _build(
            keys, _manifest(project, [f"{proxy.host}/test/app-b:1"]), tmp_path / "o", cache_dir, env
        )
        assert result.exit_code == 0, result.stderr
        assert proxy.storage_headers, "blobs did not go through the redirect"
        assert all("Authorization" not in h for h in proxy.storage_headers)
    finally:
        proxy.close()


def test_skopeo_reads_every_image_of_the_bundle(
    project: Project,
    keys: Keys,
    tmp_path: Path,
    cache_dir: Path,
    registries: Registries,
    source_engine: SourceEngine,
    fresh_engine,
) -> None:
    """The real skopeo (1.9 on Debian 12) finds every image of ``images/`` by its name: one pulled
    from a registry (a Docker schema2 manifest, kept byte for byte: same manifest digest, same
    image ID) and one from the local engine (an OCI manifest). ``--raw`` and ``--raw --config``
    give the signed bytes and ``skopeo copy`` copies either; plain ``skopeo inspect`` reads the
    OCI one, and ``inspect`` names the Docker one, for which it cannot. containerd still imports them."""
    import subprocess
    import tarfile

    host = registries.open.host  # type: ignore[attr-defined]
    manifest = project.write_manifest(
        "apiVersion: airbundle/v1\nkind: Bundle\nname: both\nversion: '1.0'\n"
        "platform: {os: debian, codename: bookworm, arch: amd64}\n"
        f"images:\n  - ref: {host}/test/app-a:1\n  - ref: test/app-b:1\n    from: daemon\n",
        "both.yaml",
    )
    env = {**source_engine.engine.env, "DOCKER_CONFIG": str(tmp_path / "no-docker-config")}  # type: ignore[attr-defined]
    result = run_cli(
        "build", manifest, "-o", tmp_path / "out", "--key", keys.key_path, "--cache", cache_dir, env=env
    )
    assert result.exit_code == 0, result.stderr
    bundle = Path(result.stdout.strip())
    lock = archive.verify_bundle(bundle, [keys.pub]).lock
    pulled, local = lock.images
    assert pulled.media_type == oci.DOCKER_MANIFEST and local.media_type == oci.OCI_MANIFEST
    src = source_engine.engine.client  # type: ignore[attr-defined]
    assert pulled.config == src.images.get("test/app-a:1").id  # the image ID as the registry has it
    with tarfile.open(bundle) as tar:
        tar.extractall(tmp_path / "x", members=[m for m in tar.getmembers() if m.name.startswith("images/")])
    layout = tmp_path / "x" / "images"
    (tmp_path / "copy").mkdir()

    def skopeo(*args: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(["skopeo", *args], capture_output=True, timeout=60)

    for image, name in ((pulled, f"{host}/test/app-a:1"), (local, "docker.io/test/app-b:1")):
        raw = skopeo("inspect", "--raw", f"oci:{layout}:{name}")
        assert raw.returncode == 0, raw.stderr.decode()
        assert oci.sha256_digest(raw.stdout) == image.manifest  # the blob, byte for byte
        config = skopeo("inspect", "--raw", "--config", f"oci:{layout}:{name}")
        assert config.returncode == 0 and oci.sha256_digest(config.stdout) == image.config
        copied = skopeo("copy", f"oci:{layout}:{name}", f"dir:{tmp_path / 'copy' / image.config[7:19]}")
        assert copied.returncode == 0, copied.stderr.decode()
    plain = skopeo("inspect", f"oci:{layout}:docker.io/test/app-b:1")
    assert plain.returncode == 0 and json.loads(plain.stdout)["Digest"] == local.manifest
    # What the README says of the pulled one: plain inspect refuses it, with skopeo's own words.
    refused = skopeo("inspect", f"oci:{layout}:{host}/test/app-a:1")
    assert (
        refused.returncode != 0
        and "unsupported image-specific operation on artifact" in refused.stderr.decode()
    )
    readme = " ".join((Path(__file__).resolve().parent.parent / "README.md").read_text().split())
    assert (
        "plain `skopeo inspect` (without `--raw`), which parses only OCI manifests, cannot read it" in readme
    )
    assert '("unsupported image-specific operation on artifact")' in readme
    said = run_cli("inspect", bundle)
    assert f"{host}/test/app-a:1" in said.stdout and "registry, Docker manifest)" in said.stdout
    assert "skopeo inspect --raw" in said.stdout and "daemon, Docker manifest" not in said.stdout
    listed = json.loads(run_cli("inspect", bundle, "--json").stdout)["images"]
    assert [i["skopeo_inspect"] for i in listed] == ["--raw", "yes"]

    # containerd imports the layout as before (index.json lists the Docker manifest as OCI).
    load_tar = _images_tar(bundle, tmp_path)
    ctr = ["ctr", "--address", str(fresh_engine.root / "exec/containerd/containerd.sock"), "-n", "ab-skopeo"]  # type: ignore[attr-defined]
    subprocess.run([*ctr, "images", "import", load_tar], check=True, capture_output=True)
    shown = subprocess.run([*ctr, "images", "ls"], check=True, capture_output=True, text=True).stdout
    assert pulled.manifest in shown and local.manifest in shown
    with open(load_tar, "rb") as f:
        fresh_engine.client.images.load(f)  # type: ignore[attr-defined]
    assert fresh_engine.client.images.get(f"{host}/test/app-a:1").id == pulled.config  # type: ignore[attr-defined]
