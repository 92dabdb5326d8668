"""Benchmark: resolve and fetch an rpm closure from a loopback rpm-md repository vs dnf download.

Generates a signed repository (rpmbuild, rpmsign, createrepo_c, repomd.xml.asc) of a few hundred
packages with real dependency shapes (versioned requires, file requires, rich (a or b), virtual
provides, obsoletes, noarch), then compares ``airbundle build`` (cold cache: repomd.xml checked
with gpgv, metadata by checksum, libsolv's closure, parallel verified downloads, every rpm's
signature checked with rpmkeys, the rpms/ repository written by createrepo_c, the whole signed
bundle written) with ``dnf download --resolve`` of the same requests into an empty private
root, in the same run. Prints both times, the ratio, peak RSS, and whether both chose the same
packages. ``--packages 3000`` (10x) shows how the cost grows.

Usage: python bench/rpms_bench.py [--runs N] [--packages 300]
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from harness import build_command, compare, ensure_key, report_lists

from tests.aptrepo import GpgKey, Served
from tests.rpmrepo import Rpm, build_rpms, index, sign_rpms


def generate(count: int) -> tuple[list[Rpm], list[str]]:
    """``count`` packages in layers; returns them and the top-level names to request."""
    rng = random.Random(42)  # the same repository every run
    layers = [[f"lib{layer}-{i}" for i in range(count // 5)] for layer in range(4)]
    tops = [f"app-{i}" for i in range(count - sum(map(len, layers)))]
    out: list[Rpm] = []
    for depth, names in enumerate(layers):
        below = layers[depth + 1] if depth + 1 < len(layers) else []
        for i, name in enumerate(names):
            tags = []
            if below:
                a, b, c = rng.sample(below, 3)
                tags += [f"Requires: {a} >= 1.0", f"Requires: ({b} or missing-alternative)"]
                tags += [f"Requires: /usr/share/{c}/data"]  # a file require
            if i % 10 == 0:
                tags.append(f"Provides: virtual-{depth}-{i // 10}")
            if i % 25 == 1:
                tags.append(f"Obsoletes: old-{name} < 1.0")
            arch = "noarch" if i % 3 == 0 else "x86_64"
            out.append(Rpm(name, "1.0-1", arch, tuple(tags), (f"/usr/share/{name}/data",)))
    for name in tops:
        dep = rng.choice(layers[0])
        virtual = f"virtual-1-{rng.randrange(len(layers[1]) // 10)}"
        out.append(
            Rpm(name, "2.0-1", "x86_64", (f"Requires: {dep}", f"Requires: {virtual}"), (f"/usr/bin/{name}",))
        )
    return out, tops[: max(1, len(tops) // 2)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--packages", type=int, default=300)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ab-bench-rpms-"))
    key = GpgKey(work / "gnupg", "bench rpm repository <bench@example.invalid>")
    try:
        started = time.perf_counter()
        packages, requests = generate(args.packages)
        built = build_rpms(work / "build", packages)
        root = work / "repo"
        (root / "Packages").mkdir(parents=True)
        copies = [Path(shutil.copy(p, root / "Packages" / p.name)) for p in built]
        sign_rpms(key, copies)
        index(root, key)
        print(f"  (repository generated in {time.perf_counter() - started:.0f} s)")
        served = Served(root)
        project = work / "project"
        (project / "manifests").mkdir(parents=True)
        shutil.copy(key.armored, project / "repo.asc")
        manifest = project / "manifests" / "rpms.yaml"
        manifest.write_text(
            "apiVersion: airbundle/v1\nkind: Bundle\nname: bench-rpms\nversion: '1.0'\n"
            "platform: {os: rocky, codename: '8', arch: amd64}\n"
            f"rpms:\n  sources:\n    - url: {served.url}\n      gpgkey: repo.asc\n"
            f"  packages: [{', '.join(requests)}]\n"
        )
        sign = ensure_key(str(work))
        cache, out, dnf = work / "cache", work / "dist", work / "dnf"
        build = build_command(manifest, sign, out, cache)
        dnf_download = [
            "dnf",
            "-q",
            "-y",  # imports the repository's key (repo_gpgcheck) without asking
            f"--installroot={dnf / 'root'}",
            f"--config={dnf / 'dnf.conf'}",
            f"--setopt=reposdir={dnf / 'repos.d'}",
            f"--setopt=cachedir={dnf / 'cache'}",
            "--forcearch=x86_64",
            "--releasever=8",
            "--disableplugin=local",
            "download",
            "--resolve",
            f"--destdir={dnf / 'downloads'}",
            *requests,
        ]

        def cold() -> None:
            for path in (cache, out, dnf):
                shutil.rmtree(path, ignore_errors=True)
            for sub in ("root", "repos.d", "downloads"):
                (dnf / sub).mkdir(parents=True)
            (dnf / "dnf.conf").write_text("[main]\ninstall_weak_deps=False\n")
            (dnf / "repos.d" / "bench.repo").write_text(
                f"[bench]\nname=bench\nbaseurl={served.url}\ngpgcheck=1\nrepo_gpgcheck=1\n"
                f"gpgkey=file://{key.armored}\n"
            )

        cold()
        subprocess.run(build, check=True, capture_output=True)
        peer = subprocess.run(dnf_download, capture_output=True, text=True)
        if peer.returncode != 0:
            raise SystemExit(f"dnf download failed: {peer.stdout}{peer.stderr}")
        from bundler.archive import read_lock

        ours = sorted(Path(r.path).name for r in read_lock(out / "bench-rpms-1.0.tar")[0].rpms)
        theirs = sorted(p.name for p in (dnf / "downloads").glob("*.rpm"))
        print(
            f"rpms benchmark: {len(packages)} packages in the repository, {len(requests)} requested, "
            f"closure of {len(ours)}; {os.cpu_count()} CPUs"
        )
        report_lists(ours, theirs, "dnf download --resolve")
        ratio, peak = compare(
            "airbundle build (cold cache)",
            build,
            "dnf download --resolve (cold)",
            dnf_download,
            runs=args.runs,
            before=cold,
        )
        print(f"  ratio {ratio:.2f}x, airbundle peak RSS {peak:.1f} MiB")
        served.close()
    finally:
        key.close()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
