"""A small A/B timing harness for the benchmarks: whole processes, alternated, medians.

Each command runs as a child process; wall time comes from ``perf_counter`` and
peak memory from the child's own ``ru_maxrss`` (``os.wait4``). Runs alternate
A, B, A, B … after one warm-up each, and the ratio is taken pair by pair so
that drift in machine speed cancels out.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass

TIME = "/usr/bin/time"  # GNU time (Debian package 'time')


@dataclass
class Run:
    wall: float
    peak_mib: float


def run_once(argv: list[str], env: dict[str, str] | None = None) -> Run:
    # Peak memory comes from GNU time (%M), which forks the command from its own
    # small process: a child forked or vfork'ed from this Python process would
    # report this process's memory high-water mark as its own.
    with tempfile.NamedTemporaryFile("r") as report:
        start = time.perf_counter()
        proc = subprocess.run(
            [TIME, "-f", "%M", "-o", report.name, *argv],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            raise SystemExit(f"bench: {' '.join(argv)} failed ({proc.returncode}): {proc.stderr.decode()}")
        peak_kib = int(report.read().split()[-1])
    return Run(wall, peak_kib / 1024)


def compare(
    name_a: str,
    argv_a: list[str],
    name_b: str,
    argv_b: list[str],
    runs: int = 5,
    env: dict[str, str] | None = None,
    before: Callable[[], None] = lambda: None,
) -> tuple[float, float]:
    """Print both commands' median wall time and peak memory and the median A/B ratio.

    ``before`` runs (untimed) before every run, e.g. to remove the previous output.
    """

    def timed(argv: list[str]) -> Run:
        before()
        return run_once(argv, env)

    timed(argv_a)
    timed(argv_b)
    a_runs, b_runs, ratios = [], [], []
    for _ in range(runs):
        a = timed(argv_a)
        b = timed(argv_b)
        a_runs.append(a)
        b_runs.append(b)
        ratios.append(a.wall / b.wall)
    for name, rs in ((name_a, a_runs), (name_b, b_runs)):
        walls = [r.wall for r in rs]
        print(
            f"  {name:<34} wall median {statistics.median(walls):6.2f}s "
            f"(min {min(walls):.2f}, max {max(walls):.2f})  peak RSS {max(r.peak_mib for r in rs):6.1f} MiB"
        )
    ratio = statistics.median(ratios)
    peak_a = max(r.peak_mib for r in a_runs)
    print(
        f"  ratio {name_a} / {name_b}: {ratio:.2f}x (median of {runs} pairs; "
        f"min {min(ratios):.2f}, max {max(ratios):.2f})"
    )
    return ratio, peak_a


def build_vs_apt(
    build: list[str], apt_get: list[str], runs: int, before: Callable[[], None]
) -> tuple[float, float]:
    """``compare`` a cold ``airbundle build`` with ``apt-get update`` + ``--download-only``."""
    return compare(
        "airbundle build (cold cache)",
        build,
        "apt-get update + --download-only",
        apt_get,
        runs=runs,
        before=before,
    )


def report_lists(ours: list[str], theirs: list[str], peer: str = "apt-get") -> None:
    """Print whether airbundle and its peer chose the same packages, and what differs."""
    print(f"  package lists identical: {ours == theirs} (airbundle {len(ours)}, {peer} {len(theirs)})")
    if ours != theirs:
        only_ours, only_theirs = sorted(set(ours) - set(theirs)), sorted(set(theirs) - set(ours))
        print(f"  only airbundle: {only_ours}; only {peer}: {only_theirs}")


def make_payload(folder: str, sizes_mib: list[int]) -> None:
    """Files of incompressible bytes; a 64 MiB random block is reused with a per-file prefix."""
    os.makedirs(folder, exist_ok=True)
    block = os.urandom(64 << 20)
    for i, size in enumerate(sizes_mib):
        path = os.path.join(folder, f"part-{i:02d}.bin")
        if os.path.exists(path) and os.path.getsize(path) == size << 20:
            continue
        with open(path + ".tmp", "wb") as f:
            left = size << 20
            n = 0
            while left:
                chunk = block[: min(left, len(block))]
                f.write(f"{i:07d}:{n:07d}:".encode() + chunk[16:])  # 16-byte prefix: every file differs
                left -= len(chunk)
                n += 1
        os.replace(path + ".tmp", path)


def verdict(ratio: float, target: float, peak: float, peak_target: float) -> str:
    ok = ratio <= target and peak <= peak_target
    return (
        f"  target: ratio <= {target}x and peak RSS <= {peak_target:.0f} MiB -> "
        f"{'MET' if ok else 'NOT MET'} (ratio {ratio:.2f}x, peak {peak:.1f} MiB)"
    )


# A bundle-like mix of member sizes (MiB), the way image layers and binaries come.
MIX = [512, 384, 320, 256, 224, 160, 96, 48]


def setup(doc: str, name: str) -> tuple[argparse.Namespace, list[int], str]:
    """Parse the common options; return (args, member sizes scaled to --mib, work folder)."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--dir", default=os.environ.get("BENCH_DIR", "/tmp/airbundle-bench"))
    parser.add_argument("--mib", type=int, default=2000, help="approximate payload size in MiB")
    args = parser.parse_args()
    scale = args.mib / sum(MIX)
    root = os.path.join(args.dir, name)
    os.makedirs(os.path.join(root, "manifests"), exist_ok=True)
    return args, [max(1, round(s * scale)) for s in MIX], root


def ensure_key(root: str) -> str:
    """A signing key for the benchmark bundles; returns its PREFIX."""
    prefix = os.path.join(root, "bench")
    if not os.path.exists(prefix + ".key"):
        subprocess.run(["airbundle", "keygen", "--out", prefix], check=True, capture_output=True)
    return prefix


def build_command(manifest: object, key: str, out: object, cache: object, jobs: int = 4) -> list[str]:
    """``airbundle build`` of ``manifest``, signed with the key at PREFIX ``key``, into ``out``."""
    return ["airbundle", "build", str(manifest), "--key", key + ".key", "-o", str(out), "--cache", str(cache),
            "--jobs", str(jobs)]  # fmt: skip


def build_bundle(manifest: object, key: str, out: object, cache: object, *extra: str) -> str:
    """Build as ``build_command`` says (plus ``extra`` options); the bundle path airbundle prints."""
    argv = [*build_command(manifest, key, out, cache), *extra]
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]


def payload_project(root: str, sizes: list[int]) -> tuple[str, str]:
    """Payload files of ``sizes`` MiB under ``root``, a manifest for them, a key: (manifest, key PREFIX)."""
    make_payload(os.path.join(root, "payloads", "blobs"), sizes)
    manifest = os.path.join(root, "manifests", "bench.yaml")
    with open(manifest, "w") as f:
        f.write(MANIFEST_HEAD)
    return manifest, ensure_key(root)


MANIFEST_HEAD = """\
apiVersion: airbundle/v1
kind: Bundle
name: bench
version: "1.0.0"
platform: {os: debian, codename: bookworm, arch: amd64}
files:
  - src: payloads/blobs/
    dest: blobs
"""
