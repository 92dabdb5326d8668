"""Benchmark: `airbundle verify` over media-sized parts vs over the whole tar (target: within 10%).

Uses the ~2 GB bundle of bench/verify_bench.py (built if missing), cuts a copy into 512 MiB
parts with `airbundle build --split`, and times `airbundle verify PARTS.json` against
`airbundle verify BUNDLE.tar`. The delta-size figure comes from tests/test_installer.py
(`test_delta_bundle_builds_on_the_installed_base`) and `make demo`-sized bundles; see below.

Usage: python bench/parts_bench.py [--runs N]
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
from harness import build_bundle, compare, payload_project, setup


def main() -> None:
    args, sizes, root = setup(__doc__, "parts")
    manifest, key = payload_project(root, sizes)
    cache = os.path.join(root, "cache")
    whole = build_bundle(manifest, key, os.path.join(root, "whole"), cache)
    parts = build_bundle(manifest, key, os.path.join(root, "parts"), cache, "--split", "512M")
    count = len([n for n in os.listdir(os.path.dirname(parts)) if ".tar." in n and n[-1].isdigit()])
    print(
        f"parts benchmark: {os.path.getsize(whole) / 2**20:.0f} MiB bundle, {count} parts of 512 MiB, "
        f"{os.cpu_count()} CPUs"
    )
    ratio, peak = compare(
        "airbundle verify PARTS.json",
        ["airbundle", "verify", parts, "--pubkey", key + ".pub"],
        "airbundle verify BUNDLE.tar",
        ["airbundle", "verify", whole, "--pubkey", key + ".pub"],
        runs=args.runs,
    )
    met = "MET" if ratio <= 1.10 else "NOT MET"
    print(
        f"  target: verify over parts within 10% of the whole tar -> {met} (ratio {ratio:.2f}x, "
        f"peak {peak:.1f} MiB)"
    )


if __name__ == "__main__":
    main()
