"""Benchmark: ``airbundle verify`` of a ~2 GB bundle vs ``openssl dgst -sha256`` of the same file.

Target (issue 2): verify takes <= 0.6x openssl's time (parallel hashing on 2 cores),
with peak RSS <= 100 MiB. Both read the same file from a warm page cache.

Usage: python bench/verify_bench.py [--runs N] [--dir DIR] [--mib TOTAL]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import textwrap

sys.path.insert(0, os.path.dirname(__file__))
from harness import compare, make_payload, verdict

# A bundle-like mix of member sizes (MiB), the way image layers and binaries come.
MIX = [512, 384, 320, 256, 224, 160, 96, 48]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--dir", default=os.environ.get("BENCH_DIR", "/tmp/airbundle-bench"))
    parser.add_argument("--mib", type=int, default=2000, help="approximate bundle size in MiB")
    args = parser.parse_args()
    scale = args.mib / sum(MIX)
    sizes = [max(1, round(s * scale)) for s in MIX]

    root = os.path.join(args.dir, "verify")
    os.makedirs(os.path.join(root, "manifests"), exist_ok=True)
    make_payload(os.path.join(root, "payloads", "blobs"), sizes)
    with open(os.path.join(root, "manifests", "bench.yaml"), "w") as f:
        f.write(
            textwrap.dedent("""\
            apiVersion: airbundle/v1
            kind: Bundle
            name: bench
            version: "1.0.0"
            platform: {os: debian, codename: bookworm, arch: amd64}
            files:
              - src: payloads/blobs/
                dest: blobs
            """)
        )
    key = os.path.join(root, "bench")
    if not os.path.exists(key + ".key"):
        subprocess.run(["airbundle", "keygen", "--out", key], check=True, capture_output=True)
    out = os.path.join(root, "dist")
    bundle = subprocess.run(
        [
            "airbundle",
            "build",
            os.path.join(root, "manifests", "bench.yaml"),
            "--key",
            key + ".key",
            "-o",
            out,
            "--cache",
            os.path.join(root, "cache"),
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    size = os.path.getsize(bundle)
    print(
        f"verify benchmark: {bundle} ({size / 2**20:.0f} MiB, {len(sizes)} payload members), "
        f"{os.cpu_count()} CPUs"
    )
    ratio, peak = compare(
        "airbundle verify",
        ["airbundle", "verify", bundle, "--pubkey", key + ".pub"],
        "openssl dgst -sha256",
        [shutil.which("openssl") or "openssl", "dgst", "-sha256", bundle],
        runs=args.runs,
    )
    print(verdict(ratio, 0.6, peak, 100))


if __name__ == "__main__":
    main()
