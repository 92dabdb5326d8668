"""Benchmark: ``airbundle verify`` of a ~2 GB bundle vs ``openssl dgst -sha256`` of the same file.

Target (issue 2): verify takes <= 0.6x openssl's time (parallel hashing on 2 cores),
with peak RSS <= 100 MiB. Both read the same file from a warm page cache.

Usage: python bench/verify_bench.py [--runs N] [--dir DIR] [--mib TOTAL]
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

sys.path.insert(0, os.path.dirname(__file__))
from harness import MANIFEST_HEAD, compare, ensure_key, make_payload, setup, verdict


def main() -> None:
    args, sizes, root = setup(__doc__, "verify")
    make_payload(os.path.join(root, "payloads", "blobs"), sizes)
    with open(os.path.join(root, "manifests", "bench.yaml"), "w") as f:
        f.write(MANIFEST_HEAD)
    key = ensure_key(root)
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
