"""Every example runs as written: the ``Example:`` lines of each ``airbundle COMMAND --help`` and
the README's shell blocks that need no site, in a scratch copy of the project, against loopback
fixtures, and the README's links resolve inside the repository.

What the examples fetch is the one thing that cannot be real here: ``manifests/fmp-rke.yaml``
(the internet, the vendor's inputs) and ``manifests/demo.yaml`` (``make demo``'s servers and
Docker engine) are replaced in the scratch copy by manifests of the same name and version
whose binary comes from the loopback origin. Every command is the example's own text, run by
``sh`` with the console script first on PATH.

The installer's examples (``sh install.sh --help``, ``airbundle install --help``) run in a site
folder against the module's own loopback nodes (cp-1, worker-1, worker-2), the registry ones
too: the registry the installer runs on cp-1 from the bundle's registry image, and the site's
own TLS registry at 10.0.0.5:5000 in a network namespace the test makes.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bundler.cli import cli

from .conftest import AIRBUNDLE, DEMO_MANIFEST, RKE_BYTES, Keys, Origin, run_cli

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"

# `install` is the site installer's own: its examples run against loopback nodes in
# test_install_examples_run_as_written_on_loopback_nodes; every other command's examples run
# here, in this order, since later ones use what earlier ones wrote (keys/, dist/, dvd/).
ORDER = ["keygen", "build", "verify", "inspect", "join"]
NOT_HERE = {"install"}


def help_examples(command: str | None) -> list[str]:
    """The example commands of ``airbundle [COMMAND] --help``, continuation lines joined."""
    text = run_cli(*([command] if command else []), "--help").stdout
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if re.match(r"\s+Examples?\b.*:$", line))
    out: list[str] = []
    for line in lines[start + 1 :]:
        if not line.strip():
            break
        if out and out[-1].endswith("\\"):
            out[-1] = out[-1][:-1].rstrip() + " " + line.strip()
        else:
            out.append(line.strip())
    return out


def readme_commands() -> list[str]:
    """The README's ``sh`` blocks whose every command is an airbundle command other than
    ``install`` (the others need a site, make, or the environment of the stock-tool recipes)."""
    blocks = re.findall(r"^( *)```sh\n(.*?)\n\1```", README.read_text(), re.S | re.M)
    out = []
    for _, block in blocks:
        commands = [
            line.strip() for line in block.splitlines() if line.strip() and not line.lstrip().startswith("#")
        ]
        if commands and all(re.match(r"airbundle (?!install)", c) for c in commands):
            out.append(block)
    return out


@pytest.fixture
def scratch(tmp_path: Path, origin: Origin) -> Path:
    """A copy of the project (its manifests, payloads, scripts) with loopback stand-in manifests."""
    root = tmp_path / "project"
    for folder in ("manifests", "payloads", "scripts"):
        shutil.copytree(ROOT / folder, root / folder)
    # What the tests' demo manifest ships (conftest.DEMO_MANIFEST), beside the project's own.
    (root / "payloads" / "app").mkdir()
    (root / "payloads" / "app" / "deploy.yaml").write_text("kind: Deployment\n")
    (root / "payloads" / "notes.txt").write_text("site notes\n")
    for step in ("storage", "services"):
        (root / "scripts" / f"{step}.sh").write_text(f"#!/bin/sh\necho {step}\n")
    url = origin.add("/rke_linux-amd64", RKE_BYTES)
    text = DEMO_MANIFEST.format(url=url, sha=hashlib.sha256(RKE_BYTES).hexdigest())
    for name, version in (("fmp-rke", "23.12.1"), ("demo", "0.1.0")):
        stand_in = text.replace("name: demo", f"name: {name}").replace('"1.0.0"', f'"{version}"')
        (root / "manifests" / f"{name}.yaml").write_text(stand_in)
    return root


def _run(root: Path, command: str, env: dict[str, str]) -> None:
    done = subprocess.run(
        ["sh", "-c", command], cwd=root, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, f"{command!r} failed as written (exit {done.returncode}):\n{done.stderr}"
    assert "Traceback" not in done.stderr


def _env(tmp_path: Path) -> dict[str, str]:
    path = f"{Path(AIRBUNDLE).parent}{os.pathsep}{os.environ['PATH']}"
    return {**os.environ, "PATH": path, "AIRBUNDLE_CACHE": str(tmp_path / "cache")}


def _earlier_release(root: Path, env: dict[str, str]) -> None:
    """What the --base examples start from: the previous release, dist/fmp-rke-23.12.0.tar,
    signed with the key the keygen example made."""
    manifest = root / "manifests" / "fmp-rke.yaml"
    text = manifest.read_text()
    manifest.write_text(text.replace('"23.12.1"', '"23.12.0"'))
    _run(root, "airbundle build manifests/fmp-rke.yaml --key keys/release.key -o dist", env)
    manifest.write_text(text)


def test_every_command_help_example_runs_as_written(scratch: Path, tmp_path: Path) -> None:
    assert set(cli.commands) == set(ORDER) | NOT_HERE, "a new command: give its examples a place in ORDER"
    env = _env(tmp_path)
    ran = []
    for command in ORDER:
        examples = help_examples(command)
        assert examples, command
        if command == "build":
            _earlier_release(scratch, env)
        for example in examples:
            _run(scratch, example, env)
            ran.append(example)
    assert (scratch / "keys" / "release.key").exists() and (scratch / "dvd").is_dir()
    assert len(ran) >= 14


def test_top_level_help_example_runs_as_written(scratch: Path, tmp_path: Path) -> None:
    """The top-level help names the bundle the demo's manifest builds (demo-0.1.0.tar)."""
    env = _env(tmp_path)
    examples = help_examples(None)
    assert any("dist/demo-0.1.0.tar" in e for e in examples)
    for example in examples:
        _run(scratch, example, env)


def test_readme_commands_run_as_written(scratch: Path, tmp_path: Path) -> None:
    env = _env(tmp_path)
    blocks = readme_commands()
    assert len(blocks) >= 4 and "airbundle keygen --out keys/release" in blocks[0]
    for block in blocks:
        if "--base dist/fmp-rke-23.12.0.tar" in block:
            _earlier_release(scratch, env)
        _run(scratch, block, env)


def test_keygen_makes_its_folder_and_says_whether_the_key_is_encrypted(tmp_path: Path) -> None:
    plain = run_cli("keygen", "--out", tmp_path / "keys" / "release")
    assert plain.exit_code == 0, plain.stderr
    assert (tmp_path / "keys" / "release.key").exists() and "NOT encrypted" in plain.stderr
    assert oct((tmp_path / "keys").stat().st_mode & 0o777) == "0o700"
    env = {"PASS": "a long passphrase"}
    protected = run_cli("keygen", "--out", tmp_path / "keys" / "p", "--passphrase-env", "PASS", env=env)
    assert protected.exit_code == 0 and "encrypted with the passphrase in $PASS" in protected.stderr


def test_readme_allowed_signers_recipe_runs_as_written(
    built: Path, keys: Keys, other_keys: Keys, tmp_path: Path
) -> None:
    """The README's allowed-signers block, pasted into ``sh`` where the publisher's release.pub and a
    retired old-release.pub were received: airbundle and the stock ssh-keygen accept the bundle with
    the file it makes, and the retired key's line holds until its end date only (ssh-keygen's
    ``-O verify-time``: the check does not depend on this host's clock)."""
    from bundler import signing

    from .readme import readme_block

    site = tmp_path / "site"
    site.mkdir()
    shutil.copy(keys.pub_path, site / "release.pub")
    shutil.copy(other_keys.pub_path, site / "old-release.pub")
    made = subprocess.run(
        ["sh", "-eu", "-c", readme_block("allowed-signers")], cwd=site, capture_output=True, text=True
    )
    assert made.returncode == 0, made.stderr
    signers = site / "allowed_signers"
    assert len(signers.read_text().splitlines()) == 2
    verified = run_cli("verify", built, "--pubkey", signers)
    assert verified.exit_code == 0, verified.stderr
    lock = subprocess.run(["tar", "-xOf", str(built), "lock.json"], capture_output=True, check=True).stdout
    (site / "lock.json").write_bytes(lock)
    for key, name in ((keys.key, "new.sig"), (other_keys.key, "old.sig")):
        (site / name).write_bytes(signing.sign(key, lock))

    def stock(sig: str, when: str) -> int:
        check = ["ssh-keygen", "-Y", "verify", "-f", "allowed_signers", "-I", "airbundle", "-n", "airbundle"]
        with open(site / "lock.json", "rb") as f:
            return subprocess.run(
                [*check, "-s", sig, "-O", f"verify-time={when}"], cwd=site, stdin=f, capture_output=True
            ).returncode

    assert stock("new.sig", "20270601") == 0
    assert stock("old.sig", "20261230") == 0 and stock("old.sig", "20270101") != 0


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


@pytest.mark.parametrize(
    "doc", ["README.md", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md"))]
)
def test_links_resolve_inside_the_repository(doc: str) -> None:
    """Relative links name files of the repository (a clone has no ../shared/), anchors name headings."""
    path = ROOT / doc
    text = path.read_text()
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+://", target):
            continue
        file, _, anchor = target.partition("#")
        linked = (path.parent / file).resolve() if file else path
        assert linked.exists() and ROOT in linked.parents, (
            f"{doc}: link {target} leaves the repository or is missing"
        )
        if anchor:
            headings = re.findall(r"^#+ (.*)$", linked.read_text(), re.M)
            assert anchor in {_slug(h) for h in headings}, f"{doc}: no heading for #{anchor}"


def install_examples(prog: str) -> list[list[str]]:
    """The installer's help examples (``sh install.sh --help`` or ``airbundle install --help``) as
    argument lists for its parser: continuation lines joined, comments and the leading
    ``VAR=...`` assignment left out, the command itself (``sh install.sh``, ``airbundle install``) cut."""
    import shlex

    from bundler.installer.options import parser

    text = parser(prog).format_help()
    block = text.split("Examples:\n", 1)[1].split("\n\n--dry-run", 1)[0]
    joined = re.sub(r"\\\n\s*", " ", block)
    out = []
    for line in joined.splitlines():
        words = shlex.split(line, comments=True)
        while words and re.fullmatch(r"[A-Z_]+=.*", words[0]):
            words.pop(0)
        if words:
            cut = 2  # "sh install.sh" or "airbundle install"
            assert " ".join(words[:cut]) == prog.replace("install.sh", "sh install.sh"), line
            out.append(words[cut:])
    return out


@pytest.mark.parametrize("prog", ["install.sh", "airbundle install"])
def test_install_examples_parse_and_name_the_bundle_build_writes(prog: str) -> None:
    """Each of the installer's examples is valid input to its one parser (as written), and names the
    bundle the build examples write (fmp-rke-23.12.1.tar); test_install_examples_run_as_written_on_loopback_nodes
    runs them."""
    from bundler.installer.options import parse

    examples = install_examples(prog)
    assert len(examples) == 4
    for argv in examples:
        options = parse(argv, prog)
        assert options.bundle == Path("fmp-rke-23.12.1.tar") and options.inventory == Path("cluster.yml")
    assert any("dist/fmp-rke-23.12.1.tar" in e or "fmp-rke-23.12.1.tar" in e for e in help_examples("build"))


def install_example_lines(prog: str) -> list[str]:
    """The installer's help examples as written (continuation lines joined, comments left out)."""
    from bundler.installer.options import parser

    text = parser(prog).format_help()
    block = text.split("Examples:\n", 1)[1].split("\n\n--dry-run", 1)[0]
    joined = re.sub(r" *\\\n\s*", " ", block)
    return [line.strip() for line in joined.splitlines() if line.strip() and not line.strip().startswith("#")]


# The examples' own site: three loopback nodes whose /var/lib is each node's own (an overlay, so
# the registry --registry-node cp-1 runs keeps its data at the default /var/lib/airbundle/registry
# without writing to this machine's), and the site registry of the last example, 10.0.0.5:5000,
# in a network namespace joined to this machine by a veth pair (nothing else has 10.0.0.4/30).
EXAMPLE_NODES = (("127.0.0.211", "cp-1"), ("127.0.0.212", "worker-1"), ("127.0.0.213", "worker-2"))
SITE_REGISTRY = "10.0.0.5:5000"
REGISTRY_USER, REGISTRY_PASSWORD = "pusher", "a site registry password"


@pytest.fixture(scope="module")
def example_nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, list[Any]]]:
    """cp-1 (control plane), worker-1 and worker-2: sshd and a Docker engine each."""
    from .nodes import Client, Node

    client = Client(tmp_path_factory.mktemp("example-ssh"))
    nodes: list[Node] = []
    try:
        for address, name in EXAMPLE_NODES:
            nodes.append(Node(address, name, client, overlays=("/var/lib",)))
        yield client, nodes
    finally:
        for node in nodes:
            node.stop()


@pytest.fixture
def site_registry(tmp_path: Path) -> Iterator[tuple[Any, Path]]:
    """The site's own registry at 10.0.0.5:5000 (TLS from a site CA, Basic auth): it and the CA file."""
    from .nodes import SiteNet
    from .registries import SiteRegistry, site_certificate

    host = SITE_REGISTRY.split(":")[0]
    net = SiteNet("ab-exsite", host.rsplit(".", 1)[0], host=6, inside=5)
    registry = None
    try:
        (tmp_path / "pki").mkdir()
        ca, cert, key = site_certificate(tmp_path / "pki", host)
        registry = SiteRegistry(net.name, SITE_REGISTRY, ca, cert, key, REGISTRY_USER, REGISTRY_PASSWORD)
        yield registry, ca
    finally:
        if registry is not None:
            registry.stop()
        net.stop()


def _example_site(tmp_path: Path, keys: Keys, nodes: list[Any], source_engine: Any, ca: Path) -> Path:
    """A site folder laid out as the README says, with what the examples name: the bundle (a
    stand-in fmp-rke 23.12.1: two images, the registry image it names as ``install.registry_image``,
    files and steps on the control node; no rke, whose bring-up tests/test_rkenodes.py plays),
    install.sh taken from it, allowed_signers, cluster.yml, site.yaml, the site registry's CA
    (site-ca.crt) and its password file (pusher.password)."""
    from .engines import registry_image
    from .nodes import cluster_yml

    project = tmp_path / "project"
    (project / "payloads" / "app").mkdir(parents=True)
    (project / "payloads" / "app" / "deploy.yaml").write_text("kind: Deployment\n")
    (project / "scripts").mkdir()
    for step in ("storage", "services"):
        (project / "scripts" / f"{step}.sh").write_text(f"#!/bin/sh\necho {step} for $SITE_NAME\n")
    registry_image(source_engine.engine)
    manifest = project / "fmp-rke.yaml"
    manifest.write_text(
        "apiVersion: airbundle/v1\nkind: Bundle\nname: fmp-rke\nversion: '23.12.1'\n"
        "platform: {os: debian, codename: bookworm, arch: amd64}\n"
        "images:\n  - {ref: test/app-a:1, from: daemon}\n  - {ref: test/app-b:1, from: daemon}\n"
        "  - {ref: test/registry:2, from: daemon}\n"
        "files:\n  - {src: payloads/app/, dest: app}\n"
        "steps:\n  - {name: storage, script: scripts/storage.sh}\n  - {name: services, script: scripts/services.sh}\n"
        "install: {registry_image: 'test/registry:2'}\n"
    )
    built = run_cli(
        "build", manifest, "-o", tmp_path / "dist", "--key", keys.key_path, "--cache", tmp_path / "c",
        env=source_engine.engine.env,
    )  # fmt: skip
    assert built.exit_code == 0, built.stderr
    site = tmp_path / "site"
    site.mkdir()
    shutil.copy(built.stdout.strip(), site / "fmp-rke-23.12.1.tar")
    subprocess.run(["tar", "-xf", "fmp-rke-23.12.1.tar", "install.sh"], cwd=site, check=True)
    (site / "allowed_signers").write_text("airbundle " + keys.pub_path.read_text())
    (site / "cluster.yml").write_text(cluster_yml(nodes, workers={"worker-1", "worker-2"}))
    (site / "site.yaml").write_text("SITE_NAME: plant-7\n")
    shutil.copy(ca, site / "site-ca.crt")
    (site / "pusher.password").write_text(REGISTRY_PASSWORD + "\n")
    (site / "pusher.password").chmod(0o600)
    return site


@pytest.mark.parametrize("prog", ["install.sh", "airbundle install"])
def test_install_examples_run_as_written_on_loopback_nodes(
    prog: str, tmp_path: Path, keys: Keys, example_nodes: Any, source_engine: Any, site_registry: Any
) -> None:
    """Every example of ``sh install.sh --help`` and ``airbundle install --help`` runs as written, in a
    site folder laid out as the README says, against loopback nodes reached through ``~/.ssh/config``
    and installing to ``/var/lib/airbundle``: both are this test's own, in a private mount namespace
    (a tmpfs over /root and /var/lib seen by the installer only), fresh for each example. The dry
    run, the install with site values, the registry the installer runs on cp-1, and the site's own
    registry at 10.0.0.5:5000 with its CA and credentials; each example starts from workers that
    hold no image, and each ends with the images on both workers."""
    from .test_installer import _empty_engines

    client, nodes = example_nodes
    registry, ca = site_registry
    cp1 = nodes[0]
    for container in cp1.engine.client.containers.list(all=True):  # the registry the other prog's run left
        container.remove(force=True)
    _empty_engines(nodes)
    site = _example_site(tmp_path, keys, nodes, source_engine, ca)
    home = (
        f"mount -t tmpfs tmpfs /root && mkdir -m 700 /root/.ssh && cp {client.config} /root/.ssh/config"
        " && mount -t tmpfs tmpfs /var/lib && mkdir /var/lib/airbundle"
    )
    path = "/usr/bin:/bin"
    if prog != "install.sh":  # the console script of this project's install, as pip puts it on PATH
        path = f"{Path(AIRBUNDLE).parent}:{path}"
        # Its interpreter may live under /root (pyenv's): seen again through the tmpfs.
        base = Path(sys.base_prefix).resolve()
        if Path("/root") in base.parents:
            (tmp_path / "python").mkdir()
            home = f"mount --bind {base} {tmp_path / 'python'} && {home} && mkdir -p {base}"
            home += f" && mount --bind {tmp_path / 'python'} {base}"
    src = source_engine.engine.client
    want = {src.images.get(t).id for t in ("test/app-a:1", "test/app-b:1")}
    ran = []
    for example in install_example_lines(prog):
        _empty_engines(nodes[1:])  # each example brings the images to the workers itself
        done = subprocess.run(
            [
                "unshare",
                "--mount",
                "--propagation",
                "private",
                "sh",
                "-c",
                f"{home} && cd {site} && {example}",
            ],
            env={**os.environ, "PATH": path},
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, (
            f"{example!r} failed as written (exit {done.returncode}):\n{done.stdout}{done.stderr}"
        )
        assert "Traceback" not in done.stderr
        ran.append((example, done.stdout))
        installs = "--dry-run" not in example
        for worker in nodes[1:]:
            have = {i.id for i in worker.engine.client.images.list()}
            assert (want <= have) == installs, (example, worker.name)
    run = (
        "sh install.sh --bundle fmp-rke-23.12.1.tar"
        if prog == "install.sh"
        else f"{prog} fmp-rke-23.12.1.tar"
    )
    common = f"{run} --pubkey allowed_signers --inventory cluster.yml"
    assert [e for e, _ in ran] == [
        f"{common} --dry-run",
        f"{common} --values site.yaml",
        f"{common} --registry-node cp-1",
        f'AIRBUNDLE_REGISTRY_PASSWORD="$(cat pusher.password)" {run} --pubkey allowed_signers'
        f" --inventory cluster.yml --registry {SITE_REGISTRY} --registry-ca site-ca.crt --registry-user pusher",
    ]
    plan, values, on_node, existing = (out for _, out in ran)
    assert "the plan:" in plan
    for out in (values, on_node, existing):
        assert "fmp-rke 23.12.1 is installed, complete (logs: /var/lib/airbundle/logs)" in out, out
    assert "2 loaded, 0 already present" in values
    # The registry the installer ran on cp-1 from the bundle's image, with its data in cp-1's own
    # /var/lib (its overlay), at the default folder; TLS from the site CA the installer made.
    own = f"{cp1.address}:5000"
    assert f"registry on cp-1: started at {own} (image loaded" in on_node, on_node
    assert f"CA for {own} written to /etc/docker/certs.d on cp-1, worker-1, worker-2" in on_node
    running = cp1.engine.client.containers.get("airbundle-registry")
    assert running.status == "running" and running.image.tags == ["test/registry:2"]
    data = cp1.root / "overlays" / "var_lib" / "upper" / "airbundle" / "registry"
    assert (data / "certs" / "tls.key").exists() and (data / "storage" / "docker").is_dir()
    # The site's registry at 10.0.0.5:5000: verified against site-ca.crt (the installer's push and each
    # worker's Docker, which verifies any registry off loopback), logged in to as pusher.
    assert f"CA for {SITE_REGISTRY} written to /etc/docker/certs.d on worker-1, worker-2" in existing
    for worker in nodes[1:]:
        assert (worker.certs / SITE_REGISTRY / "ca.crt").read_bytes() == ca.read_bytes()
    # Its own access log: the installer's push (as pusher), then each worker's Docker pulling each
    # image by digest over the veth pair (the host's end, 10.0.0.6).
    log = registry.log_text()
    assert "auth.user.name=pusher" in log and "auth.user.name=anonymous" not in log
    assert len(re.findall(r'"PUT /v2/test/app-(?:a|b)/manifests/1 HTTP/1.1" 201', log)) == 2
    pulls = re.findall(r'"GET /v2/test/app-(?:a|b)/manifests/sha256:\w+ HTTP/1.1" 200 \d+ "" "docker/', log)
    assert len(pulls) == 4, log[-3000:]
    assert REGISTRY_PASSWORD not in existing
    assert not Path("/var/lib/airbundle").exists()  # the namespaces' own, gone with them
