"""`make demo KIND=k0s` (or `make demo-k0s`): the whole journey for the second cluster kind, offline.

A KUMA-style core on k0s: three dedicated controllers and two workers, k0s and k0sctl pinned by
sha256 (the tests' faithful stand-ins, tests/standins/k0s and k0sctl, served by a stand-in upstream
on 127.0.0.1:18734), k0s's airgap images asked of the pinned k0s (`k0s airgap list-images`) and
pulled through a loopback registry standing in for quay.io and registry.k8s.io (`--mirror`). Then
keygen, build, verify, inspect, and on five loopback nodes (127.0.0.46-50: each its own sshd in a
private mount namespace whose /var/lib/k0s and /usr/local/bin are its own folders) the README's
first command with the site's k0sctl.yaml: the airgap bundle lands on the workers only, the
bundle's k0sctl brings the cluster up (controllers first, then the workers), and a second run
does nothing.

Usage: python tools/demo_k0s.py [OUTDIR]   (run as root: the nodes' sshd and mounts need it)
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import os
import shlex
import shutil
import subprocess
import sys
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tests.k0s_standin import AIRGAP_IMAGES, K0S_VERSION, standin_bytes  # noqa: E402
from tests.nodes import SSH_PORT, Client, Node  # noqa: E402
from tests.readme import readme_block  # noqa: E402
from tests.registries import Registry  # noqa: E402
from tests.rke_images import Pusher  # noqa: E402

UPSTREAM_PORT = 18734
NODES = {  # name -> (address, k0sctl role): KUMA's dedicated controllers and two workers
    "ctl-1": ("127.0.0.46", "controller"),
    "ctl-2": ("127.0.0.47", "controller"),
    "ctl-3": ("127.0.0.48", "controller"),
    "wrk-1": ("127.0.0.49", "worker"),
    "wrk-2": ("127.0.0.50", "worker"),
}
MANIFEST = """\
# make demo KIND=k0s: a KUMA-style core on k0s (the stand-ins' k0s and k0sctl, pinned by sha256).
apiVersion: airbundle/v1
kind: Bundle
name: kuma-demo
version: "1.0.0"
platform: {{os: debian, codename: {codename}, arch: amd64}}
min_workers: 2
binaries:
  - name: k0s
    url: http://127.0.0.1:{port}/k0s
    sha256: {k0s_sha}
    dest: /usr/local/bin/k0s
  - name: k0sctl
    url: http://127.0.0.1:{port}/k0sctl
    sha256: {k0sctl_sha}
    dest: /usr/local/bin/k0sctl
cluster:
  kind: k0s
  version: {version}
  tool: k0s
  k0sctl: k0sctl
  shared_roles: demo-only        # KUMA allows a controller+worker node only for a demo
"""


def step(text: str) -> None:
    bold = sys.stdout.isatty() and not os.environ.get("NO_COLOR")
    print(f"\n\033[1m== {text}\033[0m" if bold else f"\n== {text}", flush=True)


def run(argv: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    print("$ " + shlex.join(argv), flush=True)
    done = subprocess.run(argv, text=True, **kwargs)  # type: ignore[call-overload]
    if done.returncode != 0:
        raise SystemExit(f"demo: {argv[0]} {argv[1]} failed with exit code {done.returncode}")
    return done


def codename() -> str:
    for line in Path("/etc/os-release").read_text().splitlines():
        if line.startswith("VERSION_CODENAME="):
            return line.split("=", 1)[1].strip('"')
    return "bookworm"


def k0sctl_yaml(client: Client) -> str:
    hosts = "".join(
        f"  - role: {role}\n    ssh:\n      address: {address}\n      user: root\n"
        f"      port: {SSH_PORT}\n      keyPath: {client.key}\n"
        for address, role in NODES.values()
    )
    return (
        "apiVersion: k0sctl.k0sproject.io/v1beta1\nkind: Cluster\nmetadata:\n  name: kuma\nspec:\n"
        f"  hosts:\n{hosts}  k0s:\n    version: {K0S_VERSION}\n"
    )


def main(out: Path) -> int:
    shutil.rmtree(out, ignore_errors=True)
    upstream = out / "upstream"
    upstream.mkdir(parents=True)
    shas = {}
    for name in ("k0s", "k0sctl"):
        data = standin_bytes(name)
        (upstream / name).write_bytes(data)
        shas[name] = hashlib.sha256(data).hexdigest()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(upstream))
    handler.log_message = lambda *args: None  # type: ignore[method-assign]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", UPSTREAM_PORT), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    mirror = Registry("open")
    nodes: list[Node] = []
    try:
        step(f"a stand-in upstream on 127.0.0.1:{UPSTREAM_PORT} serves the pinned k0s and k0sctl")
        for name, sha in shas.items():
            print(f"  {name}  sha256 {sha}")
        step(f"a loopback registry ({mirror.host}) stands in for quay.io and registry.k8s.io")
        pusher = Pusher(mirror.host)
        for ref in AIRGAP_IMAGES:
            registry, rest = ref.split("/", 1)
            pusher.push(f"docker.io/{rest}", "quay" if registry == "quay.io" else "k8s")
            print(f"  {ref}")
        manifest = out / "kuma-demo.yaml"
        manifest.write_text(
            MANIFEST.format(
                codename=codename(),
                port=UPSTREAM_PORT,
                k0s_sha=shas["k0s"],
                k0sctl_sha=shas["k0sctl"],
                version=K0S_VERSION,
            )
        )

        step("airbundle keygen")
        run(["airbundle", "keygen", "--out", str(out / "release")])
        step("airbundle build (the airgap images the pinned k0s lists: k0s airgap list-images)")
        mirrors = [
            "--mirror",
            f"quay.io={mirror.host}/quay",
            "--mirror",
            f"registry.k8s.io={mirror.host}/k8s",
        ]
        built = run(
            ["airbundle", "build", str(manifest), "--key", str(out / "release.key"), "-o", str(out / "dist"),
             "--cache", str(out / "cache"), *mirrors],
            stdout=subprocess.PIPE,
        )  # fmt: skip
        bundle = Path(built.stdout.strip().splitlines()[-1])
        print(bundle)
        step("airbundle verify")
        run(["airbundle", "verify", str(bundle), "--pubkey", str(out / "release.pub")])
        step("airbundle inspect")
        run(["airbundle", "inspect", str(bundle), "--pubkey", str(out / "release.pub")])

        step("five loopback nodes: 3 dedicated controllers, 2 workers (sshd each, own /var/lib/k0s)")
        client = Client(out / "ssh")
        for name, (address, role) in NODES.items():
            binds = ("/var/lib/k0s", "/usr/local/bin", "/etc/k0s")  # /etc/k0s: its config and token files
            api = f"/tmp/k0s-standin-api/{address}"  # noqa: S108 - the k0s stand-in's tokens (tests/standins/k0s)
            shutil.rmtree(api, ignore_errors=True)
            nodes.append(Node(address, name, client, docker=False, binds=binds))
            print(f"  {name}  {address}:{SSH_PORT}  {role}")
        site = out / "site-install"
        site.mkdir()
        shutil.copy(bundle, site / bundle.name)
        pub = (out / "release.pub").read_text().strip()
        (site / "allowed_signers").write_text(f"airbundle {pub}\n")
        (site / "k0sctl.yaml").write_text(k0sctl_yaml(client))
        print((site / "k0sctl.yaml").read_text())

        step("the README's first command with the site's k0sctl.yaml: stock tools check, then install.sh")
        options = [
            "--inventory",
            "k0sctl.yaml",
            "--workdir",
            str(site / "work"),
            "--ssh-config",
            str(client.config),
        ]
        recipe = readme_block("site-install").replace("--inventory cluster.yml )", f"{shlex.join(options)} )")
        env = {**os.environ, "PATH": "/usr/bin:/bin", "BUNDLE": bundle.name, "SIGNERS": "allowed_signers"}
        code = subprocess.run(["sh"], input=recipe, text=True, cwd=site, env=env).returncode
        print(f"first command's exit code: {code}")
        for node in nodes:
            images = sorted(p.name for p in (node.binds["/var/lib/k0s"] / "images").glob("*"))
            k0s = "installed" if (node.binds["/usr/local/bin"] / "k0s").exists() else "missing"
            print(f"  {node.name}: k0s {k0s}; airgap images: {', '.join(images) or 'none'}")
        print("kubeconfig:", site / "work" / "kubeconfig-k0s")

        step("again: nothing to do")
        subprocess.run(["tar", "-xf", bundle.name, "--occurrence=1", "install.sh"], cwd=site, check=True)
        again = subprocess.run(
            ["sh", "install.sh", "--pubkey", "allowed_signers", *options], cwd=site,
            env={**os.environ, "PATH": "/usr/bin:/bin"},
        ).returncode  # fmt: skip
        step(f"done: the bundle is {bundle}")
        return code or again
    finally:
        for node in nodes:
            node.stop()
        mirror.stop()
        server.shutdown()


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "demo-out" / "k0s"))
