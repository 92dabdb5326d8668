"""Shared fixtures: keys, a loopback HTTP origin, a project tree, a CLI runner.

The HTTP origin is a real ``http.server`` on 127.0.0.1 that honours ``Range``
and ``If-Range``; per-path behaviours add the faults a real server cannot be
asked for (drop the connection half-way, serve wrong bytes, 503 once).
"""

from __future__ import annotations

import hashlib
import http.server
import os
import shutil
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from click.testing import CliRunner

from bundler import signing
from bundler.cli import main


@dataclass
class Route:
    data: bytes
    behaviour: str = "ok"  # ok | drop_once | wrong | flaky | norange | notfound | slow
    retry_after: str | None = None
    hits: int = 0
    ranges: list[str | None] = field(default_factory=list)
    served: int = 0


class Origin:
    """A loopback HTTP server with per-path behaviours."""

    def __init__(self) -> None:
        self.routes: dict[str, Route] = {}
        origin = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_HEAD(self) -> None:
                route = origin.routes.get(self.path)
                self.send_response(404 if route is None else 200)
                self.send_header("Content-Length", "0" if route is None else str(len(route.data)))
                self.end_headers()

            def do_GET(self) -> None:
                route = origin.routes.get(self.path)
                if route is None or route.behaviour == "notfound":
                    self.send_error(404)
                    return
                route.hits += 1
                rng = self.headers.get("Range")
                route.ranges.append(rng)
                if route.behaviour == "flaky" and route.hits == 1:
                    self.send_response(503)
                    if route.retry_after is not None:
                        self.send_header("Retry-After", route.retry_after)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                data = route.data
                if route.behaviour == "wrong":
                    data = b"X" + data[1:]
                etag = '"' + hashlib.sha256(data).hexdigest()[:16] + '"'
                start = 0
                if rng and route.behaviour != "norange" and self.headers.get("If-Range") in (None, etag):
                    start = int(rng.split("=")[1].split("-")[0])
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.send_header("ETag", etag)
                self.end_headers()
                if route.behaviour == "drop_once" and route.hits == 1:
                    half = body[: len(body) // 2]
                    self.wfile.write(half)
                    route.served += len(half)
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                if route.behaviour == "slow":  # ~1 s per transfer, so two clients overlap
                    step = max(1, len(body) // 20)
                    for i in range(0, len(body), step):
                        self.wfile.write(body[i : i + step])
                        self.wfile.flush()
                        time.sleep(0.05)
                else:
                    self.wfile.write(body)
                route.served += len(body)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.02,), daemon=True)
        self.thread.start()
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"

    def add(self, path: str, data: bytes, behaviour: str = "ok", retry_after: str | None = None) -> str:
        self.routes[path] = Route(data, behaviour, retry_after)
        return self.base + path

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def origin() -> Iterator[Origin]:
    server = Origin()
    yield server
    server.close()


@dataclass
class Keys:
    key: signing.PrivateKey
    key_path: Path
    pub_path: Path

    @property
    def pub(self) -> signing.PublicKey:
        return self.key.public


def _make_keys(folder: Path, name: str) -> Keys:
    key = signing.PrivateKey.generate(comment=name)
    key_path, pub_path = folder / f"{name}.key", folder / f"{name}.pub"
    key_path.write_bytes(key.to_pem())
    key_path.chmod(0o600)
    pub_path.write_text(key.public.openssh_line() + "\n")
    return Keys(key, key_path, pub_path)


@pytest.fixture(scope="session")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    return _make_keys(tmp_path_factory.mktemp("keys"), "release")


@pytest.fixture(scope="session")
def other_keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    return _make_keys(tmp_path_factory.mktemp("otherkeys"), "intruder")


RKE_BYTES = b"#!/bin/sh\necho 'rke stand-in v1.4.11'\n" + os.urandom(200_000)


@dataclass
class Project:
    """A project tree (manifests/, payloads/, scripts/) in a temp folder."""

    root: Path
    origin: Origin

    @property
    def manifest(self) -> Path:
        return self.root / "manifests" / "demo.yaml"

    def write_manifest(self, text: str, name: str = "demo.yaml") -> Path:
        path = self.root / "manifests" / name
        path.write_text(textwrap.dedent(text).lstrip())
        return path


DEMO_MANIFEST = """
apiVersion: airbundle/v1
kind: Bundle
name: demo
version: "1.0.0"
platform: {{os: debian, codename: bookworm, arch: amd64}}
binaries:
  - name: rke
    url: {url}
    sha256: {sha}
    dest: /usr/local/bin/rke
files:
  - src: payloads/app/
    dest: app
  - src: payloads/notes.txt
    dest: notes.txt
steps:
  - name: storage
    script: scripts/storage.sh
  - name: services
    script: scripts/services.sh
"""


@pytest.fixture
def project(tmp_path: Path, origin: Origin) -> Project:
    root = tmp_path / "proj"
    for sub in ("manifests", "payloads/app/config", "scripts"):
        (root / sub).mkdir(parents=True)
    (root / "payloads/app/config/values.yaml").write_text("replicas: 3\n")
    (root / "payloads/app/deploy.yaml").write_text("kind: Deployment\n")
    tool = root / "payloads/app/tool.sh"
    tool.write_text("#!/bin/sh\necho tool\n")
    tool.chmod(0o755)
    (root / "payloads/notes.txt").write_text("site notes\n")
    for name in ("storage", "services"):
        script = root / f"scripts/{name}.sh"
        script.write_text(f"#!/bin/sh\necho {name}\n")
        script.chmod(0o755)
    url = origin.add("/rke_linux-amd64", RKE_BYTES)
    proj = Project(root, origin)
    proj.write_manifest(DEMO_MANIFEST.format(url=url, sha=hashlib.sha256(RKE_BYTES).hexdigest()))
    return proj


@dataclass
class Result:
    exit_code: int
    stdout: str
    stderr: str


def run_cli(*args: str | Path, env: dict[str, str] | None = None) -> Result:
    """Run ``airbundle`` in-process through its real exit-status gate."""
    runner = CliRunner()
    with runner.isolation(env=env) as (out, err, _):
        try:
            main([str(a) for a in args])
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        sys.stdout.flush()  # print() output (the site installer's) is buffered until here
        sys.stderr.flush()
        stdout, stderr = out.getvalue().decode(), err.getvalue().decode()
    return Result(code, stdout, stderr)


@pytest.fixture
def cache_dir(tmp_path: Path) -> Path:
    return tmp_path / "cache"


@pytest.fixture
def built(project: Project, keys: Keys, cache_dir: Path, tmp_path: Path) -> Path:
    """A good bundle built from the demo project."""
    result = run_cli(
        "build", project.manifest, "-o", tmp_path / "out", "--key", keys.key_path, "--cache", cache_dir
    )
    assert result.exit_code == 0, result.stderr
    return Path(result.stdout.strip().splitlines()[-1])


# The console script of the environment running the tests (not whatever is on PATH).
AIRBUNDLE = str(Path(sys.executable).with_name("airbundle"))


def need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.fail(f"{tool} is not installed; run 'make install' (it installs the test tools)")
    return path


@dataclass
class SourceEngine:
    """A Docker engine holding test/base:1 and three images built FROM it."""

    engine: object
    outputs: dict[str, str]
    vendor_tar: Path
    vendor_tgz: Path


@pytest.fixture(scope="session")
def source_engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SourceEngine]:
    import gzip

    from .engines import Engine, make_images, save

    engine = Engine("src")
    try:
        work = tmp_path_factory.mktemp("images")
        outputs = make_images(engine, work)
        vendor_tar = save(engine, "test/vendor:1", work / "vendor.tar")
        vendor_tgz = work / "vendor.tar.gz"
        vendor_tgz.write_bytes(gzip.compress(vendor_tar.read_bytes(), mtime=0))
        yield SourceEngine(engine, outputs, vendor_tar, vendor_tgz)
    finally:
        engine.stop()


@pytest.fixture
def fresh_engine() -> Iterator[object]:
    from .engines import Engine

    engine = Engine("fresh")
    try:
        yield engine
    finally:
        engine.stop()


@dataclass
class Registries:
    """Loopback registries holding the source engine's images (see tests/registries.py)."""

    open: object
    basic: object
    token: object
    multi: dict[str, str]


@pytest.fixture(scope="session")
def registries(source_engine: SourceEngine) -> Iterator[Registries]:
    from .registries import Registry, make_multiplatform

    started = []
    try:
        for mode in ("open", "basic", "token"):
            started.append(Registry(mode))
        open_, basic, token = started
        host = source_engine.engine.host  # type: ignore[attr-defined]
        for tag in ("test/app-a:1", "test/app-b:1"):
            open_.push_from_engine(host, tag)
        basic.push_from_engine(host, "test/app-b:1")
        token.push_from_engine(host, "test/app-a:1")
        multi = make_multiplatform(open_, "test/app-a:1", "test/multi")
        yield Registries(open_, basic, token, multi)
    finally:
        for reg in started:
            reg.stop()


@dataclass
class AptRepos:
    """A signed apt repository (dists layout) and a flat one, served on loopback."""

    root: Path
    flat: Path
    url: str
    flat_url: str
    keyring: Path
    armored_keyring: Path
    other_keyring: Path
    key: object


@pytest.fixture(scope="session")
def apt_repos(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AptRepos]:
    from .aptrepo import Served, build_repo

    work = tmp_path_factory.mktemp("apt")
    repo, key, other = build_repo(work)
    served, flat = Served(repo), Served(work / "flat")
    try:
        yield AptRepos(
            repo, work / "flat", served.url, flat.url, key.keyring, key.armored, other.keyring, key
        )
    finally:
        served.close()
        flat.close()
        key.close()
        other.close()


CLUSTER_YML = """\
# An RKE cluster.yml: three control-plane/etcd nodes and three workers, on loopback addresses.
nodes:
  - {address: 127.0.0.11, user: root, role: [controlplane, etcd]}
  - {address: 127.0.0.12, user: root, role: [controlplane, etcd]}
  - {address: 127.0.0.13, user: root, role: [controlplane, etcd]}
  - {address: 127.0.0.21, user: root, role: [worker], port: 2222, hostname_override: worker-1}
  - {address: 127.0.0.22, user: root, role: [worker]}
  - {address: 127.0.0.23, user: root, role: [worker]}
services:
  etcd: {snapshot: true}
"""


@pytest.fixture(scope="session")
def ssh_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[object, list[object]]]:
    """Three loopback nodes (sshd + Docker engine each): cp-1 (control plane), worker-1, worker-2."""
    from .nodes import Client, Node

    client = Client(tmp_path_factory.mktemp("ssh-client"))
    nodes: list[Node] = []
    try:
        for address, name in (("127.0.0.31", "cp-1"), ("127.0.0.32", "worker-1"), ("127.0.0.33", "worker-2")):
            nodes.append(Node(address, name, client))
        yield client, nodes
    finally:
        for node in nodes:
            node.stop()


@pytest.fixture(scope="module")
def mirror() -> Iterator[tuple[object, dict[str, object]]]:
    """An open loopback registry serving RKE's system images and the agent as rancher/...
    (docker.io's paths), for builds with ``--mirror docker.io=HOST`` (tests/rke_images.py)."""
    from .registries import Registry
    from .rke_images import serve_system_images

    reg = Registry("open")
    try:
        yield reg, serve_system_images(reg.host)
    finally:
        reg.stop()
