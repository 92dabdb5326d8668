"""`make demo`, last act: install the demo bundle with its own install.sh on three loopback nodes.

Starts three nodes on this machine (each its own sshd on 127.0.0.4x:2222 and its own Docker
engine, as the tests do), writes an RKE cluster.yml and an ssh_config for them, runs the
README's first command (its `<!-- site-install -->` block, verbatim but for the options on its
last line) from a site folder holding only the bundle, an allowed_signers file and those files,
so stock tools check the bundle before its install.sh runs; then `sh install.sh` again,
shows each node's result, runs the images phase again through a site registry the installer
runs on cp-1 (TLS from its own CA), then stops the nodes. Packages go into private roots under
demo-out/ (--apt-root) and the binary to /opt/airbundle-demo (removed afterwards), because
the demo's "nodes" share this machine's filesystem.

Usage: python tools/demo_install.py BUNDLE PUBKEY OUTDIR
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.nodes import Client, Node, cluster_yml
from tests.readme import readme_block


def main(bundle: Path, pub: Path, out: Path) -> int:
    site = out / "site-install"
    shutil.rmtree(site, ignore_errors=True)
    site.mkdir(parents=True)
    client = Client(out / "ssh")
    nodes: list[Node] = []
    try:
        for address, name in (("127.0.0.41", "cp-1"), ("127.0.0.42", "worker-1"), ("127.0.0.43", "worker-2")):
            nodes.append(Node(address, name, client))
        shutil.copy(bundle, site / bundle.name)
        shutil.copy(pub, site / "release.pub")
        (site / "allowed_signers").write_text(f"airbundle {pub.read_text().strip()}\n")
        (site / "cluster.yml").write_text(cluster_yml(nodes, workers={"worker-1", "worker-2"}))
        (site / "site.yaml").write_text("GREETING: hello from the site values\n")
        roots = out / "node-roots"
        for node in nodes:  # each node's package root starts like a minimal system
            (roots / node.name / "var/lib/dpkg").mkdir(parents=True, exist_ok=True)
            (roots / node.name / "var/lib/dpkg/status").touch()
        argv = [
            "sh",
            "install.sh",
            "--pubkey",
            "allowed_signers",
            "--inventory",
            "cluster.yml",
            "--values",
            "site.yaml",
            "--workdir",
            str(site / "work"),
            "--ssh-config",
            str(client.config),
            "--apt-root",
            f"{roots}/{{node}}",
        ]
        # The README's first command, as an operator pastes it, with this site's options.
        options = shlex.join(argv[4:])  # the inventory and the rest, after --pubkey
        recipe = readme_block("site-install").replace("--inventory cluster.yml )", f"{options} )")
        print(recipe, flush=True)
        site_env = {
            **os.environ,
            "PATH": "/usr/bin:/bin",
            "BUNDLE": bundle.name,
            "SIGNERS": "allowed_signers",
        }
        code = subprocess.run(["sh"], input=recipe, text=True, cwd=site, env=site_env).returncode
        print(f"first command's exit code: {code}")
        subprocess.run(["tar", "-xf", bundle.name, "--occurrence=1", "install.sh"], cwd=site, check=True)
        for node in nodes[1:]:
            tags = sorted(t for image in node.engine.client.images.list() for t in image.tags)
            print(f"{node.name}: images {', '.join(tags) or 'none'}")
        print("again (nothing to do):", flush=True)
        again = subprocess.run(argv, cwd=site, env={**os.environ, "PATH": "/usr/bin:/bin"}).returncode
        # The registry route: the workers start empty, a registry runs on cp-1 (TLS from a CA the
        # installer makes), the images are pushed to it once and every worker pulls them by digest.
        for node in nodes[1:]:
            for image in node.engine.client.images.list():
                node.engine.client.images.remove(image.id, force=True)
        registry = [*argv, "--only", "images", "--registry-node", "cp-1"]
        registry += ["--registry-data", str(out / "registry-data")]
        print("$ " + " ".join(registry), flush=True)
        routed = subprocess.run(registry, cwd=site, env={**os.environ, "PATH": "/usr/bin:/bin"}).returncode
        for node in nodes[1:]:
            digests = sorted(
                d for image in node.engine.client.images.list() for d in image.attrs["RepoDigests"]
            )
            print(f"{node.name}: pulled {', '.join(digests) or 'nothing'}")
        return code or again or routed
    finally:
        for node in nodes:
            node.stop()
        shutil.rmtree("/opt/airbundle-demo", ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])))
