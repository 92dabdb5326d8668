"""Benchmark: ``airbundle verify`` of a ~2 GB bundle vs ``openssl dgst -sha256`` of the same file.

Target (issue 2): verify takes <= 0.6x openssl's time (parallel hashing on 2 cores),
with peak RSS <= 100 MiB. Both read the same file from a warm page cache.

Usage: python bench/verify_bench.py [--runs N] [--dir DIR] [--mib TOTAL]
"""

from __future__ import annotations

import os
import shutil
import sys

sys.path.insert(0, os.path.dirname(__file__))
from harness import build_bundle, compare, payload_project, setup, verdict


def main() -> None:
    args, sizes, root = setup(__doc__, "verify")
    manifest, key = payload_project(root, sizes)
    bundle = build_bundle(manifest, key, os.path.join(root, "dist"), os.path.join(root, "cache"))
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
