"""Benchmark: the installer's images phase, ``ssh-load`` vs ``registry``, on N loopback nodes.

For N = 3 and 6 worker nodes (each an sshd with its own Docker engine, as in the
tests), runs ``airbundle install --only images`` from a fresh work folder onto
engines that hold no image, once per mode, and prints the wall time and the bytes
the control node sent: in ``ssh-load`` the image streams to every node (the
installer reports them per node); in ``registry`` the blobs pushed into an
existing site registry (a ``docker-registry`` process on 127.0.0.1, plain HTTP);
in ``registry-node`` the registry the installer runs itself on worker-1 (TLS from
its own CA), so its time includes loading the registry image there and starting
it, and its bytes include that image. Registries start empty each run. The bundle
is the same in every mode (it carries the registry image). Then how each grows
from N = 3 to N = 6.

Both times include verifying and unpacking the bundle, which is the same work in
both modes. Needs root and what `make install` brings (docker.io, docker-registry,
openssh-server, busybox-static).

Usage: python bench/images_mode_bench.py [--unique-mib 96] [--nodes 3,6]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from harness import ensure_key
from images_bench import build_images

from tests.engines import Engine, registry_image
from tests.nodes import Client, Node, cluster_yml
from tests.registries import Registry

MODES = ("ssh-load", "registry", "registry-node")


def install_images(
    bundle: Path, key: str, site: Path, client: Client, mode: str, route: list[str]
) -> tuple[float, int]:
    """One timed ``install --only images`` from a fresh work folder; (seconds, bytes sent)."""
    shutil.rmtree(site / "work", ignore_errors=True)
    argv = [
        "airbundle",
        "install",
        str(bundle),
        "--pubkey",
        key + ".pub",
        "--inventory",
        str(site / "cluster.yml"),
        "--workdir",
        str(site / "work"),
        "--ssh-config",
        str(client.config),
        "--only",
        "images",
        *route,
    ]
    start = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"bench: {mode} install failed ({done.returncode}):\n{done.stdout}{done.stderr}")
    # "N bytes sent" per node (ssh-load) and for the registry image (registry-node); "blobs sent (N bytes".
    found = re.findall(r"(\d+) bytes sent|blobs sent \((\d+) bytes", done.stdout)
    sent = sum(int(a or b) for a, b in found)
    return wall, sent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--unique-mib", type=int, default=96)
    parser.add_argument("--nodes", default="3,6", help="node counts, comma-separated [3,6]")
    args = parser.parse_args()
    counts = [int(n) for n in args.nodes.split(",")]
    work = Path(tempfile.mkdtemp(prefix="ab-bench-modes-"))
    source = Engine("bench-src")
    client = Client(work / "client")
    nodes: list[Node] = []
    try:
        tags = build_images(source, work / "ctx", args.unique_mib)
        registry_image(source, "bench/registry:2")
        manifest = work / "images.yaml"
        manifest.write_text(
            "apiVersion: airbundle/v1\nkind: Bundle\nname: bench-modes\nversion: '1.0'\n"
            "platform: {os: debian, codename: bookworm, arch: amd64}\nimages:\n"
            + "".join(f"  - {{ref: '{tag}', from: daemon}}\n" for tag in tags)
            + "  - {ref: 'bench/registry:2', from: daemon}\ninstall: {registry_image: 'bench/registry:2'}\n"
        )
        key = ensure_key(str(work))
        env = {**os.environ, **source.env}
        built = subprocess.run(
            ["airbundle", "build", str(manifest), "--key", key + ".key", "-o", str(work / "dist")],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        bundle = Path(built.stdout.strip().splitlines()[-1])
        site = work / "site"
        site.mkdir()
        print(
            f"images-mode benchmark: {len(tags)} images FROM one base, ~{args.unique_mib} MiB unique, "
            f"bundle {bundle.stat().st_size / 2**20:.1f} MiB, {os.cpu_count()} CPUs"
        )
        print(f"  {'nodes':>5}  {'mode':<13} {'seconds':>8}  {'MiB sent by the control node':>28}")
        results: dict[tuple[int, str], tuple[float, int]] = {}
        for count in counts:
            while len(nodes) < count:
                i = len(nodes) + 1
                nodes.append(Node(f"127.0.0.{60 + i}", f"worker-{i}", client))
            (site / "cluster.yml").write_text(cluster_yml(nodes[:count], {n.name for n in nodes}))
            for mode in MODES:
                for node in nodes:
                    for container in node.engine.client.containers.list(all=True):
                        container.remove(force=True)
                    for image in node.engine.client.images.list():
                        node.engine.client.images.remove(image.id, force=True)
                registry = Registry("open") if mode == "registry" else None
                shutil.rmtree(work / "registry-data", ignore_errors=True)
                route = {
                    "ssh-load": ["--images-mode", "ssh-load"],
                    "registry": ["--registry", registry.host if registry else ""],
                    "registry-node": [
                        "--registry-node",
                        "worker-1",
                        "--registry-data",
                        str(work / "registry-data"),
                    ],
                }[mode]
                try:
                    wall, sent = install_images(bundle, key, site, client, mode, route)
                finally:
                    if registry:
                        registry.stop()
                results[count, mode] = (wall, sent)
                print(f"  {count:>5}  {mode:<13} {wall:8.1f}  {sent / 2**20:28.1f}")
        if len(counts) >= 2:
            lo, hi = counts[0], counts[-1]
            for mode in MODES:
                (t0, b0), (t1, b1) = results[lo, mode], results[hi, mode]
                print(f"  {mode:<13} N {lo} -> {hi}: time x{t1 / t0:.2f}, bytes sent x{b1 / max(b0, 1):.2f}")
            t_ssh = results[hi, "ssh-load"][0]
            for mode in MODES[1:]:
                print(f"  at N={hi}: {mode} takes {results[hi, mode][0] / t_ssh:.2f}x the time of ssh-load")
    finally:
        for node in nodes:
            node.stop()
        source.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
