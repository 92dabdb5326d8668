"""Benchmark: ``airbundle verify`` of bundles of many tiny members vs GNU ``tar -tvf`` listing them.

Target (issue 11): verify of 100,000 tiny members in under 30 s, and cost linear in the
member count (100k members within 12x the time of 10k). The peer, ``tar -tvf``, reads
every header and prints it, which is the least any checker of the members must do.

The bundles are written with airbundle's own writer, lock and signing (the build's
inputs would be 100k files on disk; the reader's cost is what is measured here).

Usage: python bench/verify_many_bench.py [--runs N] [--dir DIR] [--members N]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(__file__))
from harness import compare, run_once

from bundler import archive, signing
from bundler.lock import Lock, Member


def make_bundle(folder: str, count: int, key: signing.PrivateKey) -> str:
    """A signed bundle of ``count`` members of 20 bytes each (written once, then reused)."""
    path = os.path.join(folder, f"many-{count}.tar")
    if os.path.exists(path):
        return path
    entries, members = [], []
    for i in range(count):
        data = f"member {i:09d} body\n".encode()
        name = f"files/d{i // 1000:03d}/f{i:06d}.txt"
        entries.append(archive.Entry(name, "0644", len(data), data=data))
        members.append(Member(name, len(data), hashlib.sha256(data).hexdigest(), "file"))
    lock = Lock(
        name="many",
        version="1.0.0",
        platform={"os": "debian", "codename": "bookworm", "arch": "amd64"},
        builder="bench",
        manifest_sha256="0" * 64,
        source_date_epoch=0,
        members=tuple(members),
    ).to_bytes()
    sig = signing.sign(key, lock)
    head = [
        archive.Entry("lock.json", "0644", len(lock), data=lock),
        archive.Entry("lock.json.sig", "0644", len(sig), data=sig),
    ]
    with archive.atomic_output(Path(path)) as fd:
        archive.write_tar(fd, head + entries)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--dir", default=os.path.join(os.environ.get("BENCH_DIR", "/tmp/airbundle-bench"), "many")
    )
    parser.add_argument("--members", type=int, default=100_000)
    args = parser.parse_args()
    os.makedirs(args.dir, exist_ok=True)
    key = signing.PrivateKey.generate("bench")
    pub = os.path.join(args.dir, "bench.pub")
    with open(pub, "w") as f:
        f.write(key.public.openssh_line() + "\n")
    for path in os.listdir(args.dir):  # bundles signed by an earlier run's key
        if path.endswith(".tar"):
            os.unlink(os.path.join(args.dir, path))
    small, large = args.members // 10, args.members
    walls = {}
    for count in (small, large):
        start = time.perf_counter()
        bundle = make_bundle(args.dir, count, key)
        print(f"verify benchmark, {count} members: {bundle} ({os.path.getsize(bundle) / 2**20:.0f} MiB, "
              f"written in {time.perf_counter() - start:.1f}s), {os.cpu_count()} CPUs")  # fmt: skip
        compare(
            "airbundle verify",
            ["airbundle", "verify", bundle, "--pubkey", pub],
            "tar -tvf",
            [shutil.which("tar") or "tar", "-tvf", bundle],
            runs=args.runs,
        )
        walls[count] = min(
            run_once(["airbundle", "verify", bundle, "--pubkey", pub]).wall for _ in range(args.runs)
        )
    growth = walls[large] / walls[small]
    ok = walls[large] < 30 and growth <= 12
    print(
        f"  {large} members: {walls[large]:.1f}s (target < 30 s); {large}/{small} members: "
        f"{growth:.1f}x the time (target <= 12x, linear) -> {'MET' if ok else 'NOT MET'}"
    )


if __name__ == "__main__":
    main()
