"""Benchmark: resolve and fetch a package closure from a loopback apt repository vs apt-get.

Generates a signed repository of a few hundred packages (chains, alternatives, virtual
packages), then compares ``airbundle build`` (cold cache: Release check with gpgv,
resolution, parallel verified downloads, and the whole signed bundle written) with
``apt-get update && apt-get --download-only install`` in a private apt root with the
same source. Prints the time ratio and checks that the two package lists are identical.

Usage: python bench/debs_bench.py [--runs N] [--packages 300]
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from harness import build_command, build_vs_apt, ensure_key, report_lists

from tests.aptrepo import GpgKey, Served, index_repo, make_deb


def generate(pool: Path, work: Path, count: int) -> list[str]:
    """``count`` packages in layers; returns the top-level names to request."""
    rng = random.Random(42)  # the same repository every run
    layers = [[f"lib{layer}-{i}" for i in range(count // 5)] for layer in range(4)]
    tops = [f"app-{i}" for i in range(count - sum(map(len, layers)))]
    specs: list[tuple[str, str, dict[str, str]]] = []
    for depth, names in enumerate(layers):
        below = layers[depth + 1] if depth + 1 < len(layers) else []
        for name in names:
            fields = {}
            if below:
                deps = rng.sample(below, 2)
                fields["Depends"] = f"{deps[0]} (>= 1.0), {deps[1]} | missing-alternative"
            if name.endswith("-0"):
                fields["Provides"] = f"virtual-{depth}"
            specs.append((name, "1.0", fields))
    for name in tops:
        specs.append((name, "2.0", {"Depends": f"{rng.choice(layers[0])}, virtual-1"}))
    for name, version, fields in specs:
        deb = make_deb(work, name, version, "amd64", fields)
        shutil.move(str(deb), pool)
    return tops[: max(1, len(tops) // 2)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--packages", type=int, default=300)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ab-bench-debs-"))
    key = GpgKey(work / "gnupg", "bench repository")
    try:
        pool = work / "repo" / "pool" / "main"
        pool.mkdir(parents=True)
        (work / "build").mkdir()
        requests = generate(pool, work / "build", args.packages)
        index_repo(work / "repo", key)
        served = Served(work / "repo")
        project = work / "project"
        (project / "manifests").mkdir(parents=True)
        shutil.copy(key.keyring, project / "repo.gpg")
        manifest = project / "manifests" / "debs.yaml"
        manifest.write_text(
            "apiVersion: airbundle/v1\nkind: Bundle\nname: bench-debs\nversion: '1.0'\n"
            "platform: {os: debian, codename: bookworm, arch: amd64}\n"
            f"debs:\n  sources:\n    - url: {served.url}\n      suite: stable\n      components: [main]\n"
            f"      keyring: repo.gpg\n  baseline: none\n  packages: [{', '.join(requests)}]\n"
        )
        sign = ensure_key(str(work))
        cache, out, apt = work / "cache", work / "dist", work / "apt"
        build = build_command(manifest, sign, out, cache)
        opts = [
            f"-o=Dir::Etc::SourceList={apt}/sources.list",
            "-o=Dir::Etc::SourceParts=/dev/null",
            f"-o=Dir::State={apt}/state",
            f"-o=Dir::Cache={apt}/cache",
            f"-o=Dir::State::status={apt}/status",
            "-o=Debug::NoLocking=1",
            "-o=APT::Architecture=amd64",
            "-o=Acquire::Languages=none",
        ]
        apt_get = [
            "sh",
            "-c",
            " ".join(
                [
                    "apt-get -qq",
                    *opts,
                    "update",
                    "&&",
                    "apt-get -qq -y --download-only",
                    *opts,
                    "install",
                    *requests,
                ]
            ),
        ]

        def cold() -> None:
            for path in (cache, out, apt):
                shutil.rmtree(path, ignore_errors=True)
            for sub in ("state/lists/partial", "cache/archives/partial"):
                (apt / sub).mkdir(parents=True)
            (apt / "status").write_text("")
            (apt / "sources.list").write_text(
                f"deb [signed-by={project / 'repo.gpg'}] {served.url} stable main\n"
            )

        cold()
        subprocess.run(build, check=True, capture_output=True)
        subprocess.run(apt_get, check=True, capture_output=True)
        from bundler.archive import read_lock

        ours = sorted(f"{d.name}_{d.version}" for d in read_lock(out / "bench-debs-1.0.tar")[0].debs)
        theirs = sorted("_".join(p.name.split("_")[:2]) for p in (apt / "cache/archives").glob("*.deb"))
        print(
            f"debs benchmark: {args.packages} packages in the repository, {len(requests)} requested, "
            f"closure of {len(ours)}; {os.cpu_count()} CPUs"
        )
        report_lists(ours, theirs)
        ratio, peak = build_vs_apt(build, apt_get, args.runs, cold)
        print(f"  ratio {ratio:.2f}x, airbundle peak RSS {peak:.1f} MiB")
        served.close()
    finally:
        key.close()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
