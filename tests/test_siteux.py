"""The operator's hour on site (issue 15, the installer's side): topology problems stop the install
until confirmed, the journal says whether an install is complete, progress on a terminal and
lines elsewhere, per-node logs, and Ctrl-C ending cleanly with exit 130.

Everything runs as a site would: ``sh install.sh`` from the bundle, Debian's python3, real loopback
nodes (sshd and dockerd each, ``tests/nodes.py``); the terminal cases under a real pseudo-terminal.
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import select
import signal
import struct
import subprocess
import termios
import time
from pathlib import Path

from .conftest import Keys
from .test_installer import (
    SITE_PATH,
    _empty_engines,
    _full,
    _install,
    _node_site,
    _site,
    full_site,
    image_site,
)

__all__ = ["full_site", "image_site"]  # the fixtures, used by the tests below


def _state(site: Path) -> dict:
    return json.loads((site / "work" / "state.json").read_text())


def _complete_values(site: Path, out_file: Path) -> None:
    """Values under which every step of ``full_site`` succeeds."""
    (site / "site.yaml").write_text(f"OUT_FILE: {out_file}\nCEPH_MONITORS: 10.0.0.1\n")


def _on_terminal(site: Path, argv: list[str], answer: bytes | None, timeout: float = 120) -> tuple[int, str]:
    """Run ``argv`` in ``site`` with stdin, stdout and stderr on a pseudo-terminal; type ``answer``
    when it asks; (exit code, everything it wrote there)."""
    controller, terminal = pty.openpty()
    # A terminal of 100 columns: a pty starts at 0x0, where tqdm (join's bar) draws nothing.
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    env = {**os.environ, "PATH": SITE_PATH, "TERM": "xterm"}
    proc = subprocess.Popen(argv, cwd=site, env=env, stdin=terminal, stdout=terminal, stderr=terminal)
    os.close(terminal)
    seen = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([controller], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(controller, 65536)
            except OSError:  # the terminal's other side closed: the process is done
                break
            if not chunk:
                break
            seen += chunk
            if answer is not None and b"[y/N]" in seen:
                os.write(controller, answer + b"\n")
                answer = None
        elif proc.poll() is not None:
            break
    code = proc.wait(timeout=30)
    os.close(controller)
    return code, seen.decode(errors="replace")


def test_topology_problems_stop_the_install_until_confirmed(full_site, keys: Keys) -> None:
    """One etcd node for a bundle that brings the cluster up: the dry run names it as the reason for
    its exit 6, a real install stops before unpacking (no terminal, no --yes); on a terminal "n"
    stops it and "y" installs, with progress bars and per-node logs."""
    site, client, _nodes, _dest, out_file = full_site
    dry = _full(site, keys, client, "--dry-run", yes=False)
    assert dry.returncode == 6, dry.stdout + dry.stderr
    # FILE:LINE: the etcd node's line in the inventory; then the quorum table's row for this inventory.
    assert re.search(
        r"problem: cluster\.yml:\d+: 1 etcd node\(s\): quorum 1, tolerates 0 failure\(s\)", dry.stdout
    )
    assert (
        "quorum: 1 etcd node(s): quorum 1, tolerates 0 failure(s) (nodes→quorum/failures tolerated: 1→1/0, 2→2/0, 3→2/1"
        in dry.stdout
    )
    assert "the install would stop: cluster.yml: the inventory's topology has problems" in dry.stderr
    assert "pass --yes to install anyway" in dry.stderr and "Traceback" not in dry.stderr

    stopped = _full(site, keys, client, yes=False)
    assert stopped.returncode == 6, stopped.stdout + stopped.stderr
    assert (
        "cluster.yml:3: 1 etcd node(s)" in stopped.stderr and "pass --yes to install anyway" in stopped.stderr
    )
    assert not (site / "work" / "full-2.0").exists() and not (site / "work" / "state.json").exists()

    _complete_values(site, out_file)
    argv = ["sh", "install.sh", "--pubkey", str(keys.pub_path), "--inventory", "cluster.yml", "--workdir",
            str(site / "work"), "--ssh-config", str(client.config), "--values", "site.yaml"]  # fmt: skip
    code, said = _on_terminal(site, argv, b"n")
    assert code == 6 and "install anyway? [y/N]" in said and "pass --yes" in said, said
    assert not (site / "work" / "full-2.0").exists()

    code, said = _on_terminal(site, argv, b"y")
    assert code == 0, said
    assert "verify+unpack [" in said and "images worker-1 [" in said  # the bars, drawn on the terminal
    assert "full 2.0 is installed, complete (logs: " in said
    logs = site / "work" / "logs"
    assert "ok: 2 loaded, 0 already present" in (logs / "images" / "worker-1.log").read_text()
    assert {p.name for p in logs.iterdir()} >= {"preflight", "binaries", "images", "cluster", "steps"}
    assert _state(site)["installed"]["full"]["status"] == "complete"


def test_no_worker_is_a_problem_and_lines_without_a_terminal(built: Path, keys: Keys, tmp_path: Path) -> None:
    """An inventory without a worker is named (the bundle's images would have nowhere to go);
    --yes takes it, and without a terminal no bar is drawn, anywhere on the line -q works."""
    site = _site(built, tmp_path)
    (site / "cluster.yml").write_text(
        "nodes:\n"
        + "".join(
            f"  - {{address: 127.0.0.1{i}, user: root, role: [controlplane, etcd]}}\n" for i in (1, 2, 3)
        )
    )
    dry = _install(site, keys, "--dry-run", "--offline")
    assert dry.returncode == 6 and "problem: cluster.yml:1: no node has the worker role" in dry.stdout
    confirmed = _install(site, keys, "--dry-run", "--offline", "--yes")
    assert confirmed.returncode == 0, confirmed.stderr
    assert "no node has the worker role (--yes: installing anyway)" in confirmed.stdout
    quiet = _install(site, keys, "--dry-run", "--offline", "--yes", "-q")  # -q after the others
    assert quiet.returncode == 0, quiet.stderr
    plain = _install(site, keys, "--yes", "--offline", "--dry-run")
    assert "[#" not in plain.stderr and "\r" not in plain.stderr


def test_preflight_only_is_not_an_install(full_site, keys: Keys) -> None:
    """--only preflight changes nothing and the journal does not record it as an install."""
    site, client, _nodes, _dest, _out_file = full_site
    run = _full(
        site, keys, client, "--only", "preflight", yes=False
    )  # nothing to confirm: it changes nothing
    assert run.returncode == 0, run.stdout + run.stderr
    assert "preflight passed on every node; nothing was installed" in run.stdout
    assert not (site / "work" / "state.json").exists() or _state(site)["installed"] == {}
    dry = _full(site, keys, client, "--dry-run")
    assert "installed now: nothing" in dry.stdout, dry.stdout


def _until(proc: subprocess.Popen, text: str, timeout: float = 120) -> str:
    """Read ``proc``'s stdout until a line holds ``text``; what was read."""
    assert proc.stdout is not None
    seen = ""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        seen += line
        if text in line:
            return seen
    raise AssertionError(f"{text!r} never came:\n{seen}")


def _interrupt(site: Path, keys: Keys, client, at: str) -> tuple[int, str, str]:
    """Start the install as an operator would and press Ctrl-C (SIGINT to its process group, as a
    terminal does) when stdout shows ``at``; (exit code, stdout, stderr)."""
    argv = ["sh", "install.sh", "--pubkey", str(keys.pub_path), "--inventory", "cluster.yml", "--workdir",
            str(site / "work"), "--ssh-config", str(client.config), "--values", "site.yaml", "--yes"]  # fmt: skip
    proc = subprocess.Popen(
        argv, cwd=site, env={**os.environ, "PATH": SITE_PATH}, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, start_new_session=True,
        # As from an operator's shell: SIGINT at its default, even when these tests run in the
        # background (where sh and python would inherit it ignored, and Ctrl-C would do nothing).
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    try:
        before = _until(proc, at)
        os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.wait()
    return proc.returncode, before + out, err


def test_ctrl_c_ends_with_exit_130_and_a_consistent_journal(
    project, keys: Keys, tmp_path: Path, cache_dir: Path, source_engine, ssh_cluster
) -> None:
    """Ctrl-C while the images stream, and again while a step runs: "interrupted", exit 130, no
    traceback, a journal that is whole JSON and says the install is not complete; the same command
    then finishes what is left, sending no image twice."""
    client, nodes = ssh_cluster
    _empty_engines(nodes)
    flag = tmp_path / "hold"
    script = project.root / "scripts" / "hold.sh"
    script.write_text('#!/bin/sh\nif [ -f "$HOLD" ]; then echo holding; sleep 60; fi\necho done\n')
    manifest = project.write_manifest(
        "apiVersion: airbundle/v1\nkind: Bundle\nname: slow\nversion: '1.0'\n"
        "platform: {os: debian, codename: bookworm, arch: amd64}\n"
        "images:\n  - ref: test/app-a:1\n    from: daemon\n  - ref: test/app-b:1\n    from: daemon\n"
        "steps:\n  - {name: hold, script: scripts/hold.sh}\n",
        "slow.yaml",
    )
    site = _node_site(manifest, keys, tmp_path, cache_dir, nodes, env=source_engine.engine.env)
    (site / "site.yaml").write_text(f"HOLD: {flag}\n")
    flag.write_text("")

    code, out, err = _interrupt(site, keys, client, "== images")
    assert code == 130, out + err
    assert "interrupted" in err and "Traceback" not in err
    entry = _state(site)["installed"]["slow"]  # whole JSON: every write was atomic
    assert not entry["complete"] and entry["status"] in ("interrupted", "partial")

    code, out, err = _interrupt(site, keys, client, "holding")
    assert code == 130, out + err
    assert "interrupted" in err and "Traceback" not in err
    entry = _state(site)["installed"]["slow"]
    assert not entry["complete"] and entry["status"] == "interrupted"
    dry = _install(site, keys, "--ssh-config", str(client.config), "--values", "site.yaml", "--dry-run")
    assert "installed now: 1.0 partly, not complete (interrupted" in dry.stdout, dry.stdout

    flag.unlink()
    done = _install(site, keys, "--ssh-config", str(client.config), "--values", "site.yaml")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 loaded, 2 already present" in done.stdout  # the images went once
    assert _state(site)["installed"]["slow"]["status"] == "complete"


def test_node_logs_stay_in_the_logs_folder(tmp_path: Path) -> None:
    """A node's name comes from the inventory: as a log file name it cannot leave ``logs/PHASE/``."""
    from bundler.installer.main import _node_log

    logs = tmp_path / "logs"
    for name in ("../../escape", "..", "a\x00b", "/etc/passwd"):
        path = _node_log(logs, "images", name, ["ok"])
        assert path.parent == logs / "images" and not path.name.startswith("."), path
        assert path.read_text().endswith(" ok\n")
    assert not (tmp_path / "escape.log").exists()


def test_packages_draw_a_bar_per_node_on_a_terminal(
    project, keys: Keys, tmp_path: Path, cache_dir: Path, apt_repos, ssh_cluster, source_engine
) -> None:
    """On a terminal the packages phase draws a bar per node (bytes of the repository sent of its
    total); the report's line per node stays, with the bytes sent."""
    from .test_installer import _debs_site, _status_roots

    client, nodes = ssh_cluster
    site = _debs_site(
        project, apt_repos, keys, tmp_path, cache_dir, nodes, "  packages: [app]\n  exclude: [base-files]\n"
    )
    roots = _status_roots(tmp_path, nodes, [[("base-files", "12.4", {})]] * len(nodes))
    argv = ["sh", "install.sh", "--pubkey", str(keys.pub_path), "--inventory", "cluster.yml", "--workdir",
            str(site / "work"), "--ssh-config", str(client.config), "--only", "packages",
            "--apt-root", f"{roots}/{{node}}"]  # fmt: skip
    code, said = _on_terminal(site, argv, None)
    assert code == 0, said
    for node in nodes:
        assert f"packages {node.name} [" in said, said  # its bar, "kB/" of the total
        assert "of packages sent)" in said
    assert "phase packages done" in said


def test_the_registry_push_draws_its_bar_on_a_terminal(image_site, keys: Keys) -> None:
    """The push into the site registry: one bar with bytes and blobs of total, then the line."""
    from .registries import Registry

    site, client, _nodes = image_site
    registry = Registry("open")
    try:
        argv = ["sh", "install.sh", "--pubkey", str(keys.pub_path), "--inventory", "cluster.yml", "--workdir",
                str(site / "work"), "--ssh-config", str(client.config), "--only", "images",
                "--images-mode", "registry", "--registry", registry.host]  # fmt: skip
        code, said = _on_terminal(site, argv, None)
        assert code == 0, said
        assert f"push {registry.host} [" in said and "/5 blobs" in said, said
        assert "; of 5 blobs" in said and "phase images done" in said
    finally:
        registry.stop()
