"""Benchmark: the site list from the real Debian archive, airbundle vs apt in a minbase chroot.

Builds the vendor guide's site list (tests/realworld.py: SITE_PACKAGES) from the release,
updates and security suites of the archive this machine's apt uses, with the baseline
given as the stock minbase root's dpkg status, cold (empty cache) every run; and runs
``apt-get update && apt-get install --download-only`` of the same list in a copy of that
``debootstrap --variant=minbase`` root (empty lists and archives every run). Runs
alternate, medians and the median ratio are printed with airbundle's peak RSS, and the
two package lists are compared. Targets (issue 13): ratio <= 2x, peak RSS <= 150 MiB.

Usage: python bench/debs_real_bench.py [--runs N]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from urllib.parse import unquote

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from harness import build_command, build_vs_apt, ensure_key, report_lists, verdict

from tests import realworld


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    found = realworld.archive()
    if isinstance(found, str):
        raise SystemExit(f"debs_real_bench: skipped: {found}")
    stock, _ = realworld.minbase(found)
    work = Path(tempfile.mkdtemp(prefix="ab-bench-real-"))
    root = realworld.copy_root(stock, work / "root")
    try:
        project = work / "project"
        (project / "manifests").mkdir(parents=True)
        shutil.copy(stock / "var/lib/dpkg/status", project / "node-status")
        manifest = project / "manifests" / "site.yaml"
        manifest.write_text(
            "apiVersion: airbundle/v1\nkind: Bundle\nname: site\nversion: '1.0'\n"
            f"platform: {{os: debian, codename: {found.codename}, arch: amd64}}\n"
            f"debs:\n  sources:\n{found.manifest_sources()}"
            f"  packages: [{', '.join(realworld.SITE_PACKAGES)}]\n  baseline: node-status\n"
        )
        sign = ensure_key(str(work))
        cache, out = work / "cache", work / "dist"
        build = build_command(manifest, sign, out, cache)
        packages = " ".join(realworld.SITE_PACKAGES)
        apt_get = [
            "chroot",
            str(root),
            "sh",
            "-c",
            "apt-get -qq update && apt-get -qq -y --no-install-recommends --download-only install "
            + packages,
        ]
        lists, archives = root / "var/lib/apt/lists", root / "var/cache/apt/archives"

        def cold() -> None:
            for path in (cache, out, lists, archives):
                shutil.rmtree(path, ignore_errors=True)
            (lists / "partial").mkdir(parents=True)
            (archives / "partial").mkdir(parents=True)
            for binary in (root / "var/cache/apt").glob("*.bin"):
                binary.unlink()

        with realworld.mounted_proc(root):
            cold()
            subprocess.run(build, check=True, capture_output=True)
            subprocess.run(apt_get, check=True, capture_output=True)
            from bundler.archive import read_lock

            ours = sorted(
                f"{d.name}_{d.version.split(':')[-1]}" for d in read_lock(out / "site-1.0.tar")[0].debs
            )
            # apt names a downloaded file NAME_VERSION_ARCH.deb, the epoch's ":" quoted as "%3a".
            theirs = sorted(
                f"{name}_{unquote(version).split(':')[-1]}"
                for name, version, _ in (p.name.split("_", 2) for p in archives.glob("*.deb"))
            )
            print(
                f"debs real benchmark: {len(realworld.SITE_PACKAGES)} requested from {found.codename} "
                f"+ {len(found.sources) - 1} companion suites; closure of {len(ours)}; {os.cpu_count()} CPUs"
            )
            report_lists(ours, theirs)
            ratio, peak = build_vs_apt(build, apt_get, args.runs, cold)
        print(verdict(ratio, 2.0, peak, 150))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
