"""The CLI contract: help with examples, exit codes per error class, keygen, inspect, docs."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from bundler.cli import cli

from .conftest import AIRBUNDLE, CLUSTER_YML, Keys, Project, need, run_cli
from .readme import readme_block

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("command", [None, *sorted(cli.commands)])
def test_every_command_has_help_with_an_example(command: str | None) -> None:
    result = run_cli(*([command] if command else []), "--help")
    assert result.exit_code == 0
    _, _, examples = result.stdout.replace("Examples:", "Example:").partition("Example:")
    assert examples and "airbundle " in examples


def test_version() -> None:
    from bundler import __version__

    assert run_cli("--version").stdout.strip() == f"airbundle, version {__version__}"


def test_console_script_and_module_run() -> None:
    for argv in ([AIRBUNDLE, "--help"], [sys.executable, "-m", "bundler", "--help"]):
        run = subprocess.run(argv, capture_output=True, text=True)
        assert run.returncode == 0 and "keygen" in run.stdout


def test_keygen(tmp_path: Path) -> None:
    result = run_cli("keygen", "--out", tmp_path / "site", "--comment", "release-2026")
    assert result.exit_code == 0, result.stderr
    key, pub = tmp_path / "site.key", tmp_path / "site.pub"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert key.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert pub.read_text().startswith("ssh-ed25519 AAAA") and pub.read_text().endswith(" release-2026\n")
    ssh = subprocess.run([need("ssh-keygen"), "-l", "-f", pub], capture_output=True, text=True, check=True)
    assert result.stdout == ssh.stdout
    again = run_cli("keygen", "--out", tmp_path / "site")
    assert again.exit_code == 2 and "exists; pass --force" in again.stderr
    assert run_cli("keygen", "--out", tmp_path / "site", "--force").exit_code == 0


def test_encrypted_key_flow(project: Project, tmp_path: Path, cache_dir: Path) -> None:
    env = {"RELEASE_PASS": "correct horse"}
    assert (
        run_cli("keygen", "--out", tmp_path / "enc", "--passphrase-env", "RELEASE_PASS", env=env).exit_code
        == 0
    )
    assert b"ENCRYPTED PRIVATE KEY" in (tmp_path / "enc.key").read_bytes()
    args = [
        "build",
        project.manifest,
        "-o",
        tmp_path / "out",
        "--key",
        tmp_path / "enc.key",
        "--cache",
        cache_dir,
    ]
    missing = run_cli(*args)
    assert missing.exit_code == 2 and "--passphrase-env" in missing.stderr
    wrong = run_cli(*args, "--passphrase-env", "RELEASE_PASS", env={"RELEASE_PASS": "battery staple"})
    assert wrong.exit_code == 2 and "wrong passphrase" in wrong.stderr and "enc.key" in wrong.stderr
    unset = run_cli(*args, "--passphrase-env", "NOPE_NOT_SET")
    assert unset.exit_code == 2 and "NOPE_NOT_SET is not set" in unset.stderr
    ok = run_cli(*args, "--passphrase-env", "RELEASE_PASS", env=env)
    assert ok.exit_code == 0, ok.stderr
    assert not list((tmp_path / "out").glob("*.partial"))


def test_build_prints_bundle_path_last(project: Project, keys: Keys, tmp_path: Path, cache_dir: Path) -> None:
    result = run_cli(
        "build", project.manifest, "-o", tmp_path / "o", "--key", keys.key_path, "--cache", cache_dir
    )
    assert result.exit_code == 0
    assert result.stdout == f"{tmp_path / 'o' / 'demo-1.0.0.tar'}\n"
    from bundler.build import INSTALLER_FILES

    assert f"built demo 1.0.0: {9 + len(INSTALLER_FILES)} members" in result.stderr


def test_cache_env_variable(project: Project, keys: Keys, tmp_path: Path) -> None:
    env = {"AIRBUNDLE_CACHE": str(tmp_path / "envcache")}
    result = run_cli("build", project.manifest, "-o", tmp_path / "o", "--key", keys.key_path, env=env)
    assert result.exit_code == 0, result.stderr
    assert list((tmp_path / "envcache" / "sha256").rglob("*"))


def test_inspect(built: Path, keys: Keys) -> None:
    text = run_cli("inspect", built)
    assert text.exit_code == 0
    assert "demo 1.0.0  for debian bookworm amd64" in text.stdout
    assert f"{keys.pub.fingerprint} (not checked" in text.stdout
    assert "-> /usr/local/bin/rke (0755)" in text.stdout
    assert "1. storage" in text.stdout and "2. services" in text.stdout
    facts = json.loads(run_cli("inspect", built, "--json", "--pubkey", keys.pub_path).stdout)
    assert facts["signature_checked"] is True and facts["signer"] == keys.pub.fingerprint
    assert [b["dest"] for b in facts["binaries"]] == ["/usr/local/bin/rke"]
    assert [s["name"] for s in facts["steps"]] == ["storage", "services"]
    assert facts["files"][0] == {"src": "payloads/app/", "dest": "app", "count": 3, "size": 49}
    assert facts["payload_bytes"] == sum(facts["bytes_by_kind"].values())


def test_inspect_reads_only_the_head(built: Path, tmp_path: Path) -> None:
    """inspect needs only lock.json and its signature: a bundle cut after them still inspects."""
    with tarfile.open(built) as tar:
        cut = tar.getmember("install.sh").offset
    head = tmp_path / "head.tar"
    head.write_bytes(built.read_bytes()[:cut])
    assert run_cli("inspect", head).exit_code == 0


def test_inspect_with_wrong_key_is_exit_3(built: Path, other_keys: Keys) -> None:
    result = run_cli("inspect", built, "--pubkey", other_keys.pub_path)
    assert result.exit_code == 3


def test_install_verifies_unpacks_and_does_not_pretend(built: Path, keys: Keys, tmp_path: Path) -> None:
    inventory = tmp_path / "cluster.yml"
    inventory.write_text(CLUSTER_YML)
    args = [
        "install",
        built,
        "--pubkey",
        keys.pub_path,
        "--inventory",
        inventory,
        "--workdir",
        tmp_path / "w",
    ]
    result = run_cli(*args)
    # The inventory's nodes do not exist here: preflight stops the install, having changed nothing.
    assert result.exit_code == 6 and "preflight: failed on 127.0.0.11" in result.stderr
    assert "unreachable over SSH" in result.stdout
    assert (tmp_path / "w" / "demo-1.0.0" / "bin" / "rke").is_file()
    plan = run_cli(*args, "--dry-run", "--offline")
    assert plan.exit_code == 0 and "preflight" in plan.stdout and "/usr/local/bin/rke" in plan.stdout
    # The installer's own options pass through.
    node = run_cli(*args, "--dry-run", "--registry-node", "127.0.0.11")
    assert node.exit_code == 2 and "--registry-node needs a registry image in the bundle" in node.stderr
    plan = run_cli(*args, "--dry-run", "--offline", "--registry", "127.0.0.5:5000", "--registry-chunk", "8M")
    assert plan.exit_code == 0 and "pushed once to the site registry at 127.0.0.5:5000" in plan.stdout


@pytest.mark.parametrize(
    "args, code",
    [
        (["build", "missing.yaml", "-o", "x", "--key", "k"], 2),  # click usage: file missing
        (["verify"], 2),
        (["frobnicate"], 2),
    ],
)
def test_usage_errors_are_exit_2(args: list[str], code: int) -> None:
    assert run_cli(*args).exit_code == code


def test_bad_manifest_is_exit_2_and_writes_nothing(project: Project, keys: Keys, tmp_path: Path) -> None:
    bad = project.write_manifest(
        "apiVersion: airbundle/v1\nkind: Bundle\nname: x\nversion: '1'\nbogus: 1\n", "b.yaml"
    )
    out = tmp_path / "o"
    result = run_cli("build", bad, "-o", out, "--key", keys.key_path, "--cache", tmp_path / "c")
    assert result.exit_code == 2
    assert re.search(r"b\.yaml:\d+: unknown key 'bogus'", result.stderr)
    assert not out.exists()


def test_bad_key_file_is_exit_2(project: Project, tmp_path: Path) -> None:
    key = tmp_path / "k.key"
    key.write_text("not a key\n")
    result = run_cli("build", project.manifest, "-o", tmp_path / "o", "--key", key)
    assert result.exit_code == 2 and "k.key" in result.stderr
    pub = tmp_path / "k.pub"
    pub.write_text("ssh-rsa AAAA foo\n")
    assert run_cli("verify", key, "--pubkey", pub).exit_code == 2


def test_readme_stock_tool_recipe(built: Path, keys: Keys, tmp_path: Path) -> None:
    """The README's bare-host recipe (tar, ssh-keygen, sed, sha256sum) runs as written."""
    block = readme_block("stock-verify")
    work = tmp_path / "site"
    work.mkdir()
    signers = tmp_path / "allowed_signers"
    signers.write_text(f"airbundle {keys.pub.openssh_line()}\n")
    env = {**os.environ, "BUNDLE": str(built), "SIGNERS": str(signers)}
    good = subprocess.run(["sh", "-eu", "-c", block], cwd=work, env=env, capture_output=True, text=True)
    assert good.returncode == 0, good.stderr
    assert 'Good "airbundle" signature' in good.stdout + good.stderr
    assert "bundle OK" in good.stdout
    # The same recipe refuses a bundle with one changed payload byte.
    data = bytearray(built.read_bytes())
    data[data.index(b"rke stand-in") + 3] ^= 1
    bad = tmp_path / "bad.tar"
    bad.write_bytes(bytes(data))
    work2 = tmp_path / "site2"
    work2.mkdir()
    refused = subprocess.run(
        ["sh", "-eu", "-c", block], cwd=work2, env={**env, "BUNDLE": str(bad)}, capture_output=True, text=True
    )
    assert refused.returncode != 0 and "bundle OK" not in refused.stdout


def test_readme_starts_with_the_two_commands() -> None:
    readme = (ROOT / "README.md").read_text()
    first_block = readme.split("```")[1]
    assert "make demo" in first_block and "make test" in first_block
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in ci


def test_unexpected_error_is_exit_1_with_traceback(built: Path, keys: Keys) -> None:
    code = (
        "import bundler.archive as a, bundler.cli as c\n"
        "def boom(*args, **kw): raise RuntimeError('a bug')\n"
        "a.Bundle.verify = boom\n"
        f"c.main(['verify', {str(built)!r}, '--pubkey', {str(keys.pub_path)!r}])\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 1
    assert "Traceback" in run.stderr and "RuntimeError: a bug" in run.stderr


def test_every_test_the_threat_list_names_exists() -> None:
    """docs/threats.md names the test that plays each attack; each must exist, so the list stays true."""
    names = {
        n.split("[")[0]
        for n in re.findall(
            r"`(test_[a-z0-9_]+(?:\[[^\]`]*\])?)`", (ROOT / "docs" / "threats.md").read_text()
        )
    }
    defined = set()
    for path in (ROOT / "tests").glob("test_*.py"):
        defined |= set(re.findall(r"^def (test_[a-z0-9_]+)\(", path.read_text(), re.M))
    assert len(names) > 40 and sorted(names - defined) == []


def test_build_names_every_mistake_before_any_download(project: Project, keys: Keys, tmp_path: Path) -> None:
    """A manifest mistake, a past --expires date, -o naming a file and a --split below 64K: one
    run lists all four (exit 2) and nothing is fetched."""
    bad = project.write_manifest(
        project.manifest.read_text().replace(
            "dest: /usr/local/bin/rke", "dest: /usr/local/bin/rke\n    mode: 0755"
        ),
        "bad.yaml",
    )
    out = tmp_path / "out"
    out.write_text("a file\n")
    result = run_cli(
        "build", bad, "-o", out, "--key", keys.key_path, "--expires", "2020-01-01", "--split", "1K",
        "--cache", tmp_path / "c",
    )  # fmt: skip
    assert result.exit_code == 2, result.stderr
    assert "4 problems; fix them all, then run again" in result.stderr
    assert 'quote it: "0755"' in result.stderr
    assert "--expires 2020-01-01: 2020-01-01 00:00:00 UTC is not in the future" in result.stderr
    assert f"-o {out}: is a file, not a folder" in result.stderr
    assert "--split 1K: parts must be at least 64K" in result.stderr
    assert project.origin.routes["/rke_linux-amd64"].hits == 0 and "Traceback" not in result.stderr
    malformed = run_cli("build", project.manifest, "--dry-run", "--expires", "30days", "--split", "big")
    assert malformed.exit_code == 2 and "2 problems" in malformed.stderr
    assert "--expires '30days': give a duration like 180d" in malformed.stderr
    assert "--split 'big': give a size like 4G" in malformed.stderr
    missing = run_cli("build", project.manifest)
    assert missing.exit_code == 2 and "--key KEY and -o OUTDIR needed (or pass --dry-run)" in missing.stderr


def test_dry_run_json_prints_errors_as_json(project: Project, tmp_path: Path) -> None:
    bad = project.write_manifest(project.manifest.read_text() + "colour: blue\n", "bad.yaml")
    result = run_cli("build", bad, "--dry-run", "--json", "--expires", "soon", "--cache", tmp_path / "c")
    assert result.exit_code == 2
    report = json.loads(result.stdout)
    assert report["ok"] is False and report["exit_code"] == 2 and report["manifest"] == str(bad)
    assert len(report["problems"]) == 2
    assert "unknown key 'colour'" in report["problems"][0] or "unknown key 'colour'" in report["problems"][1]


def test_rebuild_over_a_different_bundle_needs_force(
    project: Project, keys: Keys, tmp_path: Path, cache_dir: Path
) -> None:
    """The same NAME-VERSION again: the same bundle is simply rewritten; a different one (here
    another manifest) is refused before any download, naming the file, unless --force."""
    out = tmp_path / "dist"
    args = ["build", project.manifest, "-o", out, "--key", keys.key_path, "--cache", cache_dir]
    first = run_cli(*args)
    assert first.exit_code == 0, first.stderr
    bundle = Path(first.stdout.strip())
    before = bundle.read_bytes()
    assert run_cli(*args).exit_code == 0 and bundle.read_bytes() == before
    project.manifest.write_text(
        project.manifest.read_text().replace("  - name: services\n", "  - name: svc\n")
    )
    hits = project.origin.routes["/rke_linux-amd64"].hits
    refused = run_cli(*args)
    assert refused.exit_code == 2 and f"{bundle}: holds another bundle of demo 1.0.0" in refused.stderr
    assert "pass --force to replace it" in refused.stderr and bundle.read_bytes() == before
    assert project.origin.routes["/rke_linux-amd64"].hits == hits
    forced = run_cli(*args, "--force")
    assert forced.exit_code == 0, forced.stderr
    assert bundle.read_bytes() != before


def test_join_takes_a_folder_like_build(
    project: Project, keys: Keys, tmp_path: Path, cache_dir: Path
) -> None:
    parts = run_cli(
        "build", project.manifest, "-o", tmp_path / "dvd", "--key", keys.key_path, "--cache", cache_dir,
        "--split", "64K",
    )  # fmt: skip
    assert parts.exit_code == 0, parts.stderr
    (tmp_path / "dist").mkdir()
    joined = run_cli("join", parts.stdout.strip(), "--pubkey", keys.pub_path, "-o", tmp_path / "dist")
    assert joined.exit_code == 0, joined.stderr
    assert joined.stdout.strip() == str(tmp_path / "dist" / "demo-1.0.0.tar")
    assert run_cli("verify", tmp_path / "dist" / "demo-1.0.0.tar", "--pubkey", keys.pub_path).exit_code == 0


def test_inspect_says_delta_base_and_parts(
    project: Project, built: Path, keys: Keys, tmp_path: Path, cache_dir: Path
) -> None:
    """inspect names a delta's base and what it leaves out, and the parts a split bundle is in."""
    project.manifest.write_text(project.manifest.read_text().replace('"1.0.0"', '"1.0.1"'))
    made = run_cli(
        "build", project.manifest, "-o", tmp_path / "delta", "--key", keys.key_path, "--cache", cache_dir,
        "--base", built, "--split", "64K",
    )  # fmt: skip
    assert made.exit_code == 0, made.stderr
    index = Path(made.stdout.strip())
    text = run_cli("inspect", index)
    assert text.exit_code == 0, text.stderr
    assert "delta:    on demo 1.0.0" in text.stdout and "the site needs demo 1.0.0 installed" in text.stdout
    assert "parts:    " in text.stdout and "demo-1.0.1.tar.000" in text.stdout
    assert "expires:  never" in text.stdout
    facts = json.loads(run_cli("inspect", index, "--json").stdout)
    assert facts["delta"]["base"]["version"] == "1.0.0" and facts["delta"]["inherited"] >= 1
    assert facts["parts"][0]["name"] == "demo-1.0.1.tar.000" and facts["expired"] is False
    whole = json.loads(run_cli("inspect", built, "--json").stdout)
    assert whole["delta"] is None and whole["parts"] is None


def test_counts_say_one_thing_in_the_singular(project: Project, tmp_path: Path, cache_dir: Path) -> None:
    one = project.write_manifest(
        "apiVersion: airbundle/v1\nkind: Bundle\nname: one\nversion: '1'\n"
        "platform: {os: debian, codename: bookworm, arch: amd64}\n"
        "files:\n  - src: payloads/notes.txt\n    dest: notes.txt\n",
        "one.yaml",
    )
    plan = run_cli("build", one, "--dry-run", "--cache", cache_dir)
    assert plan.exit_code == 0, plan.stderr
    assert "1 item, " in plan.stdout and "to fetch: 0 items" in plan.stdout and "1 items" not in plan.stdout


def test_inspect_counts_in_the_singular(built: Path) -> None:
    shown = run_cli("inspect", built).stdout
    assert "1 file from payloads/notes.txt" in shown and "3 files from payloads/app/" in shown
    assert "file(s)" not in shown


def test_verbosity_options_go_before_or_after_the_command(
    project: Project, keys: Keys, tmp_path: Path, cache_dir: Path
) -> None:
    """-v and -q are accepted after the subcommand too; -q keeps warnings off, -vv shows debug."""
    args = ["build", project.manifest, "-o", tmp_path / "o", "--key", keys.key_path, "--cache", cache_dir]
    expired = ["--expires", "1d"]
    env = {"SOURCE_DATE_EPOCH": "1"}  # a bundle "built in 1970" for a day: the build warns
    loud = run_cli(*args, *expired, env=env)
    assert loud.exit_code == 0 and "already expired" in loud.stderr
    for quiet in (["-q", *args], [*args, "-q"]):
        result = run_cli(*quiet, *expired, "--force", env=env)
        assert result.exit_code == 0 and result.stderr == "", result.stderr  # no warning, no summary
        assert result.stdout == loud.stdout  # the result still comes
    debug = run_cli(*args, *expired, "-vv", env=env)
    assert debug.exit_code == 0 and "DEBUG" in debug.stderr
    assert (
        run_cli(
            "verify", Path(loud.stdout.strip()), "--pubkey", keys.pub_path, "-v", "--allow-expired"
        ).exit_code
        == 0
    )
    assert run_cli("inspect", Path(loud.stdout.strip()), "-q").exit_code == 0


def test_base_of_another_key_is_named_before_any_download(
    project: Project, built: Path, other_keys: Keys, tmp_path: Path
) -> None:
    hits = project.origin.routes["/rke_linux-amd64"].hits
    result = run_cli(
        "build", project.manifest, "-o", tmp_path / "d", "--key", other_keys.key_path, "--base", built,
        "--expires", "yesterday", "--cache", tmp_path / "c",
    )  # fmt: skip
    assert result.exit_code == 2 and "2 problems" in result.stderr
    assert f"--base {built}: not a bundle signed with this key" in result.stderr
    assert project.origin.routes["/rke_linux-amd64"].hits == hits
