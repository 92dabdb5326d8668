"""Benchmark: collect 4 images sharing a base from a loopback registry, vs ``skopeo copy`` of each.

Target (issue 3): ``airbundle build`` (cold cache, parallel blob pulls, each shared
layer fetched and stored once, the whole signed bundle written) takes <= 0.7x the
time of ``skopeo copy`` of each image into its own ``docker-archive:`` file; and the
bundle's images/ bytes are <= the unique layer bytes + 1%. skopeo's total bytes are
printed for comparison.

Needs root (it starts its own dockerd to build the images) and the test tools that
`make install` brings (docker.io, docker-registry, skopeo, busybox-static).

Usage: python bench/images_bench.py [--runs N] [--unique-mib 200]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from harness import build_command, compare, ensure_key, verdict

from tests.engines import Engine, busybox_rootfs
from tests.registries import Registry

APPS = 4


def build_images(engine: Engine, work: Path, unique_mib: int) -> list[str]:
    """bench/base:1 (busybox + 16 MiB) and APPS images FROM it, each adding its own random file."""
    engine.client.api.import_image_from_data(busybox_rootfs(), repository="bench/busybox", tag="1")
    base = work / "base"
    base.mkdir(parents=True)
    (base / "shared.bin").write_bytes(os.urandom(16 << 20))
    (base / "Dockerfile").write_text("FROM bench/busybox:1\nCOPY shared.bin /shared.bin\n")
    engine.client.images.build(path=str(base), tag="bench/base:1", rm=True, network_mode="none")
    tags = []
    for i in range(APPS):
        ctx = work / f"app{i}"
        ctx.mkdir()
        (ctx / "data.bin").write_bytes(os.urandom((unique_mib << 20) // APPS))
        (ctx / "Dockerfile").write_text("FROM bench/base:1\nCOPY data.bin /data.bin\n")
        tag = f"bench/app{i}:1"
        engine.client.images.build(path=str(ctx), tag=tag, rm=True, network_mode="none")
        tags.append(tag)
    return tags


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--unique-mib", type=int, default=200)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ab-bench-images-"))
    engine = Engine("bench")
    registry = Registry("open")
    try:
        tags = build_images(engine, work / "ctx", args.unique_mib)
        for tag in tags:
            registry.push_from_engine(engine.host, tag)
        root = work / "project"
        (root / "manifests").mkdir(parents=True)
        manifest = root / "manifests" / "images.yaml"
        manifest.write_text(
            "apiVersion: airbundle/v1\nkind: Bundle\nname: bench-images\nversion: '1.0'\n"
            "platform: {os: debian, codename: bookworm, arch: amd64}\nimages:\n"
            + "".join(f"  - ref: {registry.host}/{tag}\n" for tag in tags)
        )
        key = ensure_key(str(work))
        cache, out, skopeo_out = work / "cache", work / "dist", work / "skopeo"
        build = build_command(manifest, key, out, cache)
        copies = " && ".join(
            f"skopeo copy --quiet --src-tls-verify=false docker://{registry.host}/{tag} "
            f"docker-archive:{skopeo_out}/{tag.replace('/', '_').replace(':', '-')}.tar:{tag}"
            for tag in tags
        )
        skopeo = ["sh", "-c", copies]

        def cold() -> None:
            # Every run starts from nothing: no cache, no previous outputs.
            for path in (cache, out, skopeo_out):
                shutil.rmtree(path, ignore_errors=True)
            skopeo_out.mkdir()
            subprocess.run(["sync"], check=True)

        print(
            f"images benchmark: {APPS} images FROM one base, ~{args.unique_mib} MiB unique, "
            f"registry {registry.host}, {os.cpu_count()} CPUs"
        )
        ratio, peak = compare(
            "airbundle build (cold cache)",
            build,
            "skopeo copy x4 (docker-archive)",
            skopeo,
            runs=args.runs,
            before=cold,
        )
        print(verdict(ratio, 0.7, peak, 1024))
        # Bytes: run both once more and weigh what they wrote.
        cold()
        subprocess.run(build, check=True, capture_output=True)
        subprocess.run(skopeo, check=True, capture_output=True)
        from bundler.archive import read_lock

        lock = read_lock(out / "bench-images-1.0.tar")[0]
        unique_layers = {la.digest: la.size for im in lock.images for la in im.layers}
        image_bytes = sum(m.size for m in lock.members if m.path.startswith("images/"))
        unique = sum(unique_layers.values())
        skopeo_bytes = folder_bytes(skopeo_out)
        met = "MET" if image_bytes <= unique * 1.01 else "NOT MET"
        print(
            f"  bundle images/ bytes {image_bytes / 2**20:8.1f} MiB;"
            f" unique layer bytes {unique / 2**20:8.1f} MiB;"
            f" ratio {image_bytes / unique:.4f} (target <= 1.01) -> {met}"
        )
        print(
            f"  skopeo docker-archive files total {skopeo_bytes / 2**20:8.1f} MiB "
            f"({skopeo_bytes / image_bytes:.2f}x the bundle's images/)"
        )
    finally:
        registry.stop()
        engine.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
