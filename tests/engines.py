"""Real Docker engines for the tests (TESTBED.md): one dockerd per engine, on a unix socket.

Each engine has its own data root under a short /tmp path (socket paths are
limited to 107 bytes), no iptables and no bridge, so several can run at once
and ``docker run --network none`` works. Tiny images are made from the host's
static busybox, with no registry access at all.

An engine may run in its own mount namespace, where ``/etc/docker/certs.d`` is
a folder of its own (so each simulated node trusts its own registry CAs, as
real nodes do), and in a network namespace the test made (so a registry on a
non-loopback address is one Docker verifies: it skips TLS checks for 127/8).
"""

from __future__ import annotations

import io
import shutil
import subprocess
import tarfile
import tempfile
import time
from pathlib import Path

import docker
import pytest


class Engine:
    """A dockerd started for the tests, stopped by ``stop``."""

    def __init__(
        self,
        name: str,
        certs: Path | None = None,
        netns: str | None = None,
        overlays: dict[str, Path] | None = None,
    ) -> None:
        dockerd = shutil.which("dockerd")
        if dockerd is None:
            pytest.fail("dockerd is not installed; run 'make install' (it installs docker.io)")
        self.root = Path(tempfile.mkdtemp(prefix=f"ab-{name}-", dir="/tmp"))
        self.sock = self.root / "docker.sock"
        self.log = open(self.root / "dockerd.log", "wb")  # noqa: SIM115 - closed in stop()
        argv = [
            dockerd,
            "--data-root",
            str(self.root / "data"),
            "--exec-root",
            str(self.root / "exec"),
            "-H",
            f"unix://{self.sock}",
            "--pidfile",
            str(self.root / "pid"),
            "--iptables=false",
            "--ip-masq=false",
            "--bridge=none",
        ]
        if certs is not None:
            # Its own /etc/docker/certs.d, seen by this engine (and the node's sshd) only.
            Path("/etc/docker/certs.d").mkdir(parents=True, exist_ok=True)
            certs.mkdir(parents=True, exist_ok=True)
            mounts = ['mount --bind "$0" /etc/docker/certs.d']
            # A folder of this machine seen with the engine's own changes on top (an overlay
            # whose upper layer is ``own``): e.g. /var/lib, where a node's installer-run registry
            # keeps its data, without a write to this machine's own /var/lib.
            for target, own in (overlays or {}).items():
                (own / "upper").mkdir(parents=True)
                (own / "work").mkdir()
                mounts.append(
                    f"mount -t overlay overlay -o lowerdir={target},upperdir={own / 'upper'},"
                    f"workdir={own / 'work'} {target}"
                )
            argv = ["sh", "-c", " && ".join(mounts) + ' && exec "$@"', str(certs), *argv]
        if netns is not None:
            # nsenter, not "ip netns exec": that remounts /sys, and dockerd needs the host's cgroups.
            argv = ["nsenter", f"--net=/run/netns/{netns}", *argv]
        if certs is not None:
            argv = ["unshare", "--mount", "--propagation", "private", *argv]
        self.namespaced = certs is not None or netns is not None
        self.proc = subprocess.Popen(
            argv,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        self.host = f"unix://{self.sock}"
        deadline = time.monotonic() + 60
        while True:
            try:
                self.client = docker.DockerClient(base_url=self.host, timeout=300)
                self.client.ping()
                break
            except Exception:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    log = (self.root / "dockerd.log").read_text(errors="replace")[-2000:]
                    self.stop()
                    pytest.fail(f"dockerd did not start:\n{log}")
                time.sleep(0.2)

    @property
    def env(self) -> dict[str, str]:
        return {"DOCKER_HOST": self.host}

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.log.close()
        shutil.rmtree(self.root, ignore_errors=True)


def busybox_rootfs() -> bytes:
    """A tar of a root filesystem holding only a static busybox and /bin/sh."""
    busybox = shutil.which("busybox")
    if busybox is None:
        pytest.fail("busybox is not installed; run 'make install' (it installs busybox-static)")
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        info = tar.gettarinfo(busybox, "bin/busybox")
        info.uid = info.gid = 0
        info.uname = info.gname = "root"
        info.mtime = 0
        with open(busybox, "rb") as f:
            tar.addfile(info, f)
        link = tarfile.TarInfo("bin/sh")
        link.type, link.linkname, link.mode = tarfile.SYMTYPE, "busybox", 0o777
        tar.addfile(link)
    return out.getvalue()


def make_images(engine: Engine, workdir: Path) -> dict[str, str]:
    """test/base:1 and three images FROM it, each adding one file; returns tag -> expected output."""
    engine.client.api.import_image_from_data(busybox_rootfs(), repository="test/base", tag="1")
    outputs = {}
    for name in ("app-a", "app-b", "vendor"):
        ctx = workdir / name
        ctx.mkdir(parents=True)
        (ctx / "msg.txt").write_text(f"hello from {name}\n" + "x" * 5000 * (1 + len(name)))
        (ctx / "Dockerfile").write_text(
            'FROM test/base:1\nCOPY msg.txt /msg.txt\nCMD ["/bin/sh", "-c", "head -n 1 /msg.txt"]\n'
        )
        tag = f"test/{name}:1"
        engine.client.images.build(path=str(ctx), tag=tag, rm=True, network_mode="none")
        outputs[tag] = f"hello from {name}\n"
    return outputs


def save(engine: Engine, tag: str, path: Path) -> Path:
    """``docker save`` of one image to ``path``."""
    with open(path, "wb") as f:
        for chunk in engine.client.images.get(tag).save(named=tag):
            f.write(chunk)
    return path


REGISTRY_CONFIG = b"""version: 0.1
log:
  level: info
storage:
  filesystem:
    rootdirectory: /var/lib/registry
  delete:
    enabled: true
http:
  addr: :5000
"""


def registry_image(engine: Engine, tag: str = "test/registry:2") -> str:
    """An image of the CNCF distribution registry made from the host's ``docker-registry`` binary.

    It stands in for the ``registry:2`` image a real bundle ships (no image can be
    pulled here): the same program, the same config path and storage folder.
    Returns its image ID.
    """
    binary = shutil.which("docker-registry")
    if binary is None:
        pytest.fail("docker-registry is not installed; run 'make install'")
    ldd = subprocess.run(["ldd", binary], capture_output=True, text=True, check=True).stdout
    libs = [w for w in ldd.split() if w.startswith("/")]  # the loader and libc it links
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for source, name in [(binary, "bin/registry"), *((lib, lib.lstrip("/")) for lib in libs)]:
            info = tar.gettarinfo(str(Path(source).resolve()), name)
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            info.mtime = 0
            with open(Path(source).resolve(), "rb") as f:
                tar.addfile(info, f)
        info = tarfile.TarInfo("etc/docker/registry/config.yml")
        info.size = len(REGISTRY_CONFIG)
        tar.addfile(info, io.BytesIO(REGISTRY_CONFIG))
    repo, version = tag.rsplit(":", 1)
    engine.client.api.import_image_from_data(
        out.getvalue(),
        repository=repo,
        tag=version,
        changes=[
            'ENTRYPOINT ["/bin/registry", "serve", "/etc/docker/registry/config.yml"]',
            "EXPOSE 5000",
            'VOLUME ["/var/lib/registry"]',
        ],
    )
    return str(engine.client.images.get(tag).id)
