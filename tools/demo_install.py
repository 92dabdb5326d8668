"""`make demo`, last act: install the demo bundle with its own install.sh on a fault-tolerant cluster.

Starts five nodes on this machine (each its own sshd on 127.0.0.4x:2222 and its own Docker
engine, as the tests do): three control-plane+etcd nodes and two workers. Writes an RKE
cluster.yml for them as rke reads it (each node's Docker socket, the operator's key) and an
ssh_config, runs the README's first command (its `<!-- site-install -->` block, verbatim but
for the options on its last line) from a site folder holding only the bundle, an
allowed_signers file and those files, so stock tools check the bundle before its install.sh
runs. The install gives every node the system images its roles need (and rancher-agent), then
the bundle's rke (the tests' stand-in, tests/standins/rke) brings the cluster up: it tunnels to
each node's Docker over SSH, finds the images there and starts etcd, the control plane, the
kubelet and kube-proxy. Then `sh install.sh` again (nothing to do), each node's images and
containers, the images phase again through a site registry the installer runs on cp-1 (TLS
from its own CA), then the nodes stop. Packages go into private roots under
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
from tests.nodes import Client, Node, rke_cluster_yml
from tests.readme import readme_block

ROLES = {
    "cp-1": "[controlplane, etcd]",
    "cp-2": "[controlplane, etcd]",
    "cp-3": "[controlplane, etcd]",
    "worker-1": "[worker]",
    "worker-2": "[worker]",
}


def main(bundle: Path, pub: Path, out: Path) -> int:
    site = out / "site-install"
    shutil.rmtree(site, ignore_errors=True)
    site.mkdir(parents=True)
    client = Client(out / "ssh")
    client.key.chmod(0o600)  # rke reads the key cluster.yml names
    nodes: list[Node] = []
    try:
        for i, name in enumerate(ROLES, 1):
            nodes.append(Node(f"127.0.0.4{i}", name, client))
        shutil.copy(bundle, site / bundle.name)
        shutil.copy(pub, site / "release.pub")
        (site / "allowed_signers").write_text(f"airbundle {pub.read_text().strip()}\n")
        (site / "cluster.yml").write_text(rke_cluster_yml(nodes, ROLES, client.key))
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
        for node in nodes:
            assert node.engine is not None
            tags = [t for image in node.engine.client.images.list() for t in image.tags]
            system = sorted(
                t.split(":")[0].split("/")[-1] for t in tags if t.startswith("rancher/") and "agent" not in t
            )
            others = sorted(t for t in tags if not t.startswith("rancher/") or "agent" in t)
            running = sorted(c.name for c in node.engine.client.containers.list())
            print(f"{node.name} {ROLES[node.name]}: {len(system)} system images ({', '.join(system)})")
            print(f"{'':>10} also: {', '.join(others) or 'none'}; running: {', '.join(running) or 'nothing'}")
        print("kubeconfig written by rke:", site / "work" / "kube_config_cluster.yml")
        print("again (nothing to do):", flush=True)
        again = subprocess.run(argv, cwd=site, env={**os.environ, "PATH": "/usr/bin:/bin"}).returncode
        # The registry route: the workers start empty, a registry runs on cp-1 (TLS from a CA the
        # installer makes), the images are pushed to it once and every worker pulls its own by digest.
        for node in nodes:
            assert node.engine is not None
            for container in node.engine.client.containers.list(all=True):
                container.remove(force=True)  # the cluster's containers: the demo is done with them
        for node in nodes[3:]:
            assert node.engine is not None
            for image in node.engine.client.images.list():
                node.engine.client.images.remove(image.id, force=True)
        registry = [*argv, "--only", "images", "--registry-node", "cp-1"]
        registry += ["--registry-data", str(out / "registry-data")]
        print("$ " + " ".join(registry), flush=True)
        routed = subprocess.run(registry, cwd=site, env={**os.environ, "PATH": "/usr/bin:/bin"}).returncode
        for node in nodes[3:]:
            assert node.engine is not None
            digests = [d for image in node.engine.client.images.list() for d in image.attrs["RepoDigests"]]
            print(f"{node.name}: pulled {len(digests)} images by digest from the site registry")
        return code or again or routed
    finally:
        for node in nodes:
            node.stop()
        shutil.rmtree("/opt/airbundle-demo", ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])))
