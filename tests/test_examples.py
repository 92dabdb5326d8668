"""Every example runs as written: the ``Example:`` lines of each ``airbundle COMMAND --help`` and
the README's shell blocks that need no site, in a scratch copy of the project, against loopback
fixtures, and the README's links resolve inside the repository.

What the examples fetch is the one thing that cannot be real here: ``manifests/fmp-rke.yaml``
(the internet, the vendor's inputs) and ``manifests/demo.yaml`` (``make demo``'s servers and
Docker engine) are replaced in the scratch copy by manifests of the same name and version
whose binary comes from the loopback origin. Every command is the example's own text, run by
``sh`` with the console script first on PATH.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from bundler.cli import cli

from .conftest import AIRBUNDLE, DEMO_MANIFEST, RKE_BYTES, Origin, run_cli

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
    """What can be checked of the installer's examples without a site: each is valid input to its
    one parser (as written), and names the bundle the build examples write (fmp-rke-23.12.1.tar).
    Running them needs reachable nodes through the operator's ~/.ssh/config and the default work
    folder (/var/lib/airbundle); tests/test_installer.py plays the same commands with --ssh-config
    and --workdir against loopback nodes."""
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
    joined = re.sub(r"\\\n\s*", " ", block)
    return [line.strip() for line in joined.splitlines() if line.strip() and not line.strip().startswith("#")]


# What a site needs for the registry examples: a registry image in the bundle (--registry-node)
# and the site's registry at 10.0.0.5 (no test may send traffic there); those two stay parsed
# only (test_install_examples_parse_and_name_the_bundle_build_writes), the others run here.
NEEDS_A_SITE_REGISTRY = ("--registry-node", "--registry ")


def test_install_examples_run_as_written_on_loopback_nodes(tmp_path: Path, keys, ssh_cluster) -> None:
    """``sh install.sh --help``'s dry run and install run as written, in a site folder laid out as
    the README says (the bundle, install.sh taken from it, allowed_signers, cluster.yml, site.yaml),
    against loopback nodes reached through ``~/.ssh/config`` and installing to
    ``/var/lib/airbundle``: both are this test's own, in a private mount namespace (a tmpfs over
    /root and /var/lib seen by the installer only). The bundle is a stand-in fmp-rke 23.12.1
    (files and steps on the control node; no rke, whose bring-up tests/test_rkenodes.py plays)."""
    from .nodes import cluster_yml

    client, nodes = ssh_cluster
    project = tmp_path / "project"
    (project / "payloads" / "app").mkdir(parents=True)
    (project / "payloads" / "app" / "deploy.yaml").write_text("kind: Deployment\n")
    (project / "scripts").mkdir()
    for step in ("storage", "services"):
        (project / "scripts" / f"{step}.sh").write_text(f"#!/bin/sh\necho {step} for $SITE_NAME\n")
    manifest = project / "fmp-rke.yaml"
    manifest.write_text(
        "apiVersion: airbundle/v1\nkind: Bundle\nname: fmp-rke\nversion: '23.12.1'\n"
        "platform: {os: debian, codename: bookworm, arch: amd64}\n"
        "files:\n  - {src: payloads/app/, dest: app}\n"
        "steps:\n  - {name: storage, script: scripts/storage.sh}\n  - {name: services, script: scripts/services.sh}\n"
    )
    built = run_cli(
        "build", manifest, "-o", tmp_path / "dist", "--key", keys.key_path, "--cache", tmp_path / "c"
    )
    assert built.exit_code == 0, built.stderr
    site = tmp_path / "site"
    site.mkdir()
    shutil.copy(built.stdout.strip(), site / "fmp-rke-23.12.1.tar")
    subprocess.run(["tar", "-xf", "fmp-rke-23.12.1.tar", "install.sh"], cwd=site, check=True)
    (site / "allowed_signers").write_text("airbundle " + keys.pub_path.read_text())
    (site / "cluster.yml").write_text(cluster_yml(nodes, workers={"worker-1", "worker-2"}))
    (site / "site.yaml").write_text("SITE_NAME: plant-7\n")
    home = (
        f"mount -t tmpfs tmpfs /root && mkdir -m 700 /root/.ssh && cp {client.config} /root/.ssh/config"
        " && mount -t tmpfs tmpfs /var/lib && mkdir /var/lib/airbundle"
    )
    ran = []
    for example in install_example_lines("install.sh"):
        if any(word in example for word in NEEDS_A_SITE_REGISTRY):
            continue
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
            env={**os.environ, "PATH": "/usr/bin:/bin"},
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, (
            f"{example!r} failed as written (exit {done.returncode}):\n{done.stdout}{done.stderr}"
        )
        assert "Traceback" not in done.stderr
        ran.append((example, done.stdout))
    assert [e for e, _ in ran] == [
        "sh install.sh --bundle fmp-rke-23.12.1.tar --pubkey allowed_signers --inventory cluster.yml --dry-run",
        "sh install.sh --bundle fmp-rke-23.12.1.tar --pubkey allowed_signers --inventory cluster.yml --values site.yaml",
    ]
    assert "the plan:" in ran[0][1]
    assert "fmp-rke 23.12.1 is installed, complete (logs: /var/lib/airbundle/logs)" in ran[1][1], ran[1][1]
    assert not Path("/var/lib/airbundle").exists()  # the namespace's own, gone with it
