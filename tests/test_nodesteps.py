"""Steps on the nodes themselves (``on:``), over real SSH to loopback nodes: which nodes run a step,
with which values and files, what a failing node stops, and what a re-run skips."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from .conftest import Keys
from .test_installer import _install, _node_site

# Each node step appends one line per run to OUT/NODE.STEP, so the tests count the runs.
HEARTBEAT = """#!/bin/sh
set -e
echo "heartbeat on $NODE_NAME ($NODE_ROLES) via $HA_IFACE"
cp "$BUNDLE_DIR/files/ha/authkeys" "$OUT_DIR/$NODE_NAME.authkeys"
echo "$HA_IFACE $(stat -c %a "$BUNDLE_DIR/files/ha/authkeys")" >> "$OUT_DIR/$NODE_NAME.heartbeat"
echo "$BUNDLE_DIR $(stat -c %a "$BUNDLE_DIR") $(stat -c %a "$BUNDLE_DIR/airbundle.env")" > "$OUT_DIR/$NODE_NAME.dir"
[ "${FAIL_ON:-}" != "$NODE_NAME" ] || { echo "refusing on $NODE_NAME" >&2; exit 3; }
"""
AFTER = '#!/bin/sh\necho after >> "$OUT_DIR/$NODE_NAME.after"\n'
HERE = '#!/bin/sh\necho here >> "$OUT_DIR/here"\n'


@pytest.fixture
def steps_site(project, keys: Keys, tmp_path: Path, cache_dir: Path, ssh_cluster):
    client, nodes = ssh_cluster
    for name, body in (("here", HERE), ("heartbeat", HEARTBEAT), ("after", AFTER)):
        (project.root / "scripts" / f"{name}.sh").write_text(body)
    (project.root / "payloads" / "ha").mkdir(exist_ok=True)
    (project.root / "payloads" / "ha" / "authkeys").write_text("auth 1\n1 sha1 not-a-real-secret\n")
    manifest = project.write_manifest(
        "apiVersion: airbundle/v1\nkind: Bundle\nname: prep\nversion: '1.0'\n"
        "platform: {os: debian, codename: bookworm, arch: amd64}\n"
        "files:\n  - {src: payloads/ha/, dest: ha}\n"
        "steps:\n"
        "  - {name: here, script: scripts/here.sh}\n"
        "  - {name: heartbeat, script: scripts/heartbeat.sh, on: worker, files: [files/ha]}\n"
        "  - {name: after, script: scripts/after.sh, on: all, serial: true}\n",
        "prep.yaml",
    )
    site = _node_site(manifest, keys, tmp_path, cache_dir, nodes)
    out = tmp_path / "steps-out"  # what the steps write, node by node
    out.mkdir()
    return site, client, nodes, out


def _values(site: Path, out: Path, fail_on: str = "") -> None:
    (site / "site.yaml").write_text(
        f"OUT_DIR: {out}\nHA_IFACE: eth0\nFAIL_ON: '{fail_on}'\nnodes:\n  worker-2: {{HA_IFACE: eth1}}\n"
    )


def _run(site: Path, keys: Keys, client, *extra: str) -> subprocess.CompletedProcess[str]:
    return _install(site, keys, "--ssh-config", str(client.config), "--values", "site.yaml", *extra)


def test_a_step_on_workers_runs_on_each_worker_with_its_values_and_files(steps_site, keys: Keys) -> None:
    site, client, _, out = steps_site
    _values(site, out, fail_on="worker-2")
    first = _run(site, keys, client)
    # worker-2 fails its step; worker-1 finishes it; the next step (after) does not start.
    assert first.returncode == 6, first.stdout + first.stderr
    assert "steps: failed on worker-2" in first.stderr
    log = site / "work" / "logs"
    assert "FAILED: step heartbeat failed on worker-2 with exit code 3; see " in first.stdout
    assert "refusing on worker-2" in (log / "02-heartbeat.worker-2.log").read_text()
    assert (out / "worker-1.heartbeat").read_text() == "eth0 644\n"
    assert (out / "worker-2.heartbeat").read_text() == "eth1 644\n"  # its own value over the shared one
    assert not (out / "cp-1.heartbeat").exists()  # on: worker
    assert (out / "worker-1.authkeys").read_text() == "auth 1\n1 sha1 not-a-real-secret\n"
    assert "heartbeat on worker-1 (worker) via eth0" in (log / "02-heartbeat.worker-1.log").read_text()
    assert "  worker-1 | heartbeat on worker-1 (worker) via eth0" in first.stdout
    assert not list(out.glob("*.after"))
    # The private folder on the node: 0700, the values in a 0600 file, gone after the step.
    folder, folder_mode, env_mode = (out / "worker-1.dir").read_text().split()
    assert (folder_mode, env_mode) == ("700", "600") and not Path(folder).exists()
    done = json.loads((site / "work" / "state.json").read_text())["done"]
    assert {k for k in done if k.startswith("steps/")} == {"steps/local/here", "steps/worker-1/heartbeat"}

    _values(site, out)
    dry = _run(site, keys, client, "--dry-run")  # the plan: worker-2's heartbeat, then after everywhere
    assert dry.returncode == 0, dry.stderr
    assert "worker-1             run after (scripts/03-after.sh) (1 already there)" in dry.stdout
    again = _run(site, keys, client)
    assert again.returncode == 0, again.stdout + again.stderr
    assert (out / "worker-1.heartbeat").read_text() == "eth0 644\n"  # not run again
    assert (out / "worker-2.heartbeat").read_text() == "eth1 644\neth1 644\n"
    assert (out / "here").read_text() == "here\n"
    assert sorted(p.name for p in out.glob("*.after")) == ["cp-1.after", "worker-1.after", "worker-2.after"]
    assert "step after: scripts/03-after.sh on cp-1, worker-1, worker-2 (one after the other)" in again.stdout


def test_a_changed_file_is_refused_on_the_node(steps_site, keys: Keys, tmp_path: Path) -> None:
    """The files travel with their SHA-256 from the lock; the node checks them before the step runs."""
    from bundler.installer.inventory import load_inventory
    from bundler.installer.remote import SshOptions
    from bundler.installer.steps import run_on_node
    from bundler.lock import Lock

    site, client, _, out = steps_site
    _values(site, out)
    assert _run(site, keys, client, "--only", "preflight").returncode == 0
    unpacked = site / "work" / "prep-1.0"
    lock = Lock.from_bytes((unpacked / "lock.json").read_bytes())
    (unpacked / "files" / "ha" / "authkeys").write_text("auth 1\n1 sha1 swapped\n")
    node = next(n for n in load_inventory(site / "cluster.yml") if n.name == "worker-1")
    result, _ = run_on_node(
        lock.steps[1],
        node,
        lock,
        unpacked,
        tmp_path / "w1.log",
        {"OUT_DIR": str(out)},
        SshOptions(client.config),
    )
    assert result.error is not None and "FAILED" in result.error and "files/ha/authkeys" in result.error
    assert not (out / "worker-1.heartbeat").exists()  # the step never ran


def test_steps_naming_unknown_nodes_or_values_for_them_are_refused(steps_site, keys: Keys) -> None:
    site, client, _, out = steps_site
    (site / "site.yaml").write_text(f"OUT_DIR: {out}\nnodes:\n  kn9: {{A: 1}}\n")
    run = _run(site, keys, client, "--dry-run", "--offline")
    assert run.returncode == 2 and "nodes: kn9 is not a node of cluster.yml" in run.stderr, run.stderr


@pytest.mark.parametrize(
    "step, message",
    [
        ("{name: s, script: scripts/storage.sh, on: nowhere}", "must be one of control, all, controlplane"),
        ("{name: s, script: scripts/storage.sh, on: [kn3, kn3]}", "names a node twice"),
        (
            "{name: s, script: scripts/storage.sh, on: all, files: [files/none]}",
            "names no file the bundle carries",
        ),
        ("{name: s, script: scripts/storage.sh, serial: true}", "goes with a step on nodes"),
    ],
)
def test_bad_node_steps_in_the_manifest(project, step: str, message: str) -> None:
    from bundler.errors import ManifestError
    from bundler.manifest import load_manifest

    head = project.manifest.read_text().split("steps:")[0]
    path = project.write_manifest(head + f"steps:\n  - {step}\n", "bad.yaml")
    with pytest.raises(ManifestError, match=re.escape(message)):
        load_manifest(path)


def test_node_steps_travel_in_the_lock() -> None:
    """on/nodes/serial/files are signed with the lock; a step here is written as before."""
    from bundler.lock import Lock, Step

    from .test_plan import _lock

    steps = (
        Step("here", "scripts/01-here.sh", "a" * 64),
        Step("ha", "scripts/02-ha.sh", "b" * 64, "nodes", ("kn3", "kn4"), True, ("files/ha/authkeys",)),
    )
    lock = _lock()
    written = json.loads(Lock.to_bytes(type(lock)(**{**vars(lock), "steps": steps})))["steps"]
    assert written == [
        {"name": "here", "script": "scripts/01-here.sh", "sha256": "a" * 64},
        {"name": "ha", "script": "scripts/02-ha.sh", "sha256": "b" * 64, "on": "nodes", "nodes": ["kn3", "kn4"],
         "serial": True, "files": ["files/ha/authkeys"]},
    ]  # fmt: skip
