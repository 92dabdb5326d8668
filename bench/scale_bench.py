"""Benchmark: how ``airbundle build`` grows with the number of files (2,000 vs 10,000 tiny files).

Target (issue 11): linear in the file count: the 10,000-file build within 5x the 2,000-file
one. Each size is built with a warm cache (its files hashed once before), alternated with
``tar -cf`` of the same inputs as the peer, and the median wall time, the build/tar ratio
and peak memory are printed; then the 10k/2k ratio of the build and of tar.

Usage: python bench/scale_bench.py [--runs N] [--dir DIR]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys

sys.path.insert(0, os.path.dirname(__file__))
from harness import MANIFEST_HEAD, build_command, ensure_key, run_once

COUNTS = (2_000, 10_000)
PER_FOLDER = 100  # files per folder, as a payload tree of configs and manifests would have


def make_tree(root: str, count: int) -> str:
    """``count`` tiny files (40 to 200 bytes, all different) under ``root/payloads/blobs``."""
    folder = os.path.join(root, "payloads", "blobs")
    marker = os.path.join(root, f".made-{count}")
    if os.path.exists(marker):
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    for i in range(count):
        sub = os.path.join(folder, f"d{i // PER_FOLDER:03d}")
        os.makedirs(sub, exist_ok=True)
        with open(os.path.join(sub, f"f{i:05d}.yaml"), "w") as f:
            f.write(f"name: item-{i}\n" + "x" * (i % 160) + "\n")
    open(marker, "w").close()
    return folder


def measure(root: str, count: int, runs: int) -> tuple[float, float, float]:
    """(median build seconds, median tar seconds, build peak MiB) for ``count`` files."""
    make_tree(root, count)
    manifest = os.path.join(root, "manifests", "bench.yaml")
    with open(manifest, "w") as f:
        f.write(MANIFEST_HEAD)
    key = ensure_key(root)
    out, cache = os.path.join(root, "dist"), os.path.join(root, "cache")
    tar_out = os.path.join(root, "tar-out.tar")
    build = build_command(manifest, key, out, cache)
    tar = [shutil.which("tar") or "tar", "-cf", tar_out, "-C", root, "payloads"]
    subprocess.run(build, check=True, capture_output=True)  # warms the cache (hashes every file)
    builds, tars = [], []
    for _ in range(runs):
        builds.append(run_once(build))
        tars.append(run_once(tar))
    b = statistics.median(r.wall for r in builds)
    t = statistics.median(r.wall for r in tars)
    peak = max(r.peak_mib for r in builds)
    print(
        f"  {count:>6} files: airbundle build {b:6.2f}s  tar -cf {t:6.2f}s  "
        f"(build/tar {b / t:5.1f}x)  build peak RSS {peak:6.1f} MiB"
    )
    return b, t, peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--dir", default=os.environ.get("BENCH_DIR", "/tmp/airbundle-bench"))
    args = parser.parse_args()
    print(f"scale benchmark: warm-cache builds of tiny files, median of {args.runs}, {os.cpu_count()} CPUs")
    results = {}
    for count in COUNTS:
        root = os.path.join(args.dir, f"scale-{count}")
        os.makedirs(os.path.join(root, "manifests"), exist_ok=True)
        results[count] = measure(root, count, args.runs)
    (b_small, t_small, _), (b_big, t_big, peak) = results[COUNTS[0]], results[COUNTS[1]]
    ratio = b_big / b_small
    grow = COUNTS[1] / COUNTS[0]
    tar_ratio = t_big / t_small
    print(f"  ratio {COUNTS[1]}/{COUNTS[0]} files: airbundle build {ratio:.2f}x, tar -cf {tar_ratio:.2f}x")
    met = "MET" if ratio <= grow else "NOT MET"
    print(f"  target: the {COUNTS[1]}-file build within {grow:.0f}x the {COUNTS[0]}-file one -> {met} "
          f"(ratio {ratio:.2f}x, peak {peak:.1f} MiB)")  # fmt: skip


if __name__ == "__main__":
    main()
