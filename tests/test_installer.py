"""The installer the bundle carries, run as a site would: install.sh, Debian's python3 -I -S, stock tools."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from .conftest import CLUSTER_YML, Keys
from .test_verify import info, read_items, replace, resign, write_items

SITE_PATH = "/usr/bin:/bin"  # python3 is Debian's /usr/bin/python3: no venv, no cryptography with -S


def _site(bundle: Path, tmp_path: Path) -> Path:
    """A site folder holding the bundle and install.sh taken from it, as the README says."""
    site = tmp_path / "site"
    site.mkdir(exist_ok=True)
    shutil.copy(bundle, site / bundle.name)
    subprocess.run(["tar", "-xf", bundle.name, "install.sh"], cwd=site, check=True)
    (site / "cluster.yml").write_text(CLUSTER_YML)
    return site


def _install(
    site: Path, keys: Keys, *extra: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **(env or {}), "PATH": SITE_PATH}
    return subprocess.run(
        [
            "sh",
            "install.sh",
            "--pubkey",
            str(keys.pub_path),
            "--inventory",
            "cluster.yml",
            "--workdir",
            str(site / "work"),
            *extra,
        ],
        cwd=site,
        env=env,
        capture_output=True,
        text=True,
    )


def test_debian_python_has_no_cryptography_in_isolated_mode() -> None:
    """The premise of these tests: the site interpreter cannot import cryptography."""
    run = subprocess.run(["/usr/bin/python3", "-I", "-S", "-c", "import cryptography"], capture_output=True)
    assert run.returncode != 0


def test_install_sh_verifies_and_unpacks_with_stock_tools(built: Path, keys: Keys, tmp_path: Path) -> None:
    site = _site(built, tmp_path)
    dry = _install(site, keys, "--dry-run", "--offline")  # the inventory's nodes do not exist here
    assert dry.returncode == 0, dry.stderr
    assert (
        "members verified" in dry.stdout and "the plan:" in dry.stdout and "/usr/local/bin/rke" in dry.stdout
    )
    assert "nodes: 127.0.0.11 (controlplane/etcd)" in dry.stdout and "worker-1 (worker)" in dry.stdout
    assert not (site / "work").exists()  # a dry run changes nothing
    run = _install(site, keys)
    assert run.returncode == 6, run.stderr
    assert "preflight: failed on 127.0.0.11" in run.stderr and "verified (signed by" in run.stdout
    unpacked = site / "work" / "demo-1.0.0"
    assert (unpacked / "bin" / "rke").stat().st_mode & 0o777 == 0o755
    assert (unpacked / "files" / "app" / "config" / "values.yaml").read_text() == "replicas: 3\n"
    with tarfile.open(built) as tar:
        assert {m.name for m in tar.getmembers()} == {
            str(p.relative_to(unpacked)) for p in unpacked.rglob("*") if p.is_file()
        }
    # install.sh runs under umask 077: the unpacked folders are still readable, like /usr.
    assert (unpacked / "files" / "app" / "config").stat().st_mode & 0o777 == 0o755
    stale = site / "work" / ".demo-1.0.0.killed"  # what a killed unpack leaves behind
    (stale / "bin").mkdir(parents=True)
    again = _install(site, keys)  # unpacking again replaces the folder whole
    assert again.returncode == 6 and (unpacked / "bin" / "rke").is_file()
    assert not stale.exists() and f"removing {stale}, left by an interrupted unpack" in again.stdout
    assert sorted(p.name for p in (site / "work").iterdir()) == [
        "demo-1.0.0",
        "logs",
        "state.json",
        "state.lock",
    ]


def test_install_sh_refuses_another_key(built: Path, other_keys: Keys, tmp_path: Path) -> None:
    site = _site(built, tmp_path)
    run = _install(site, other_keys)
    assert run.returncode == 3 and "does not verify" in run.stderr
    assert not (site / "work").exists()


def test_tampered_installer_never_runs(built: Path, keys: Keys, tmp_path: Path) -> None:
    items = read_items(built)
    main = dict((ti.name, d) for ti, d in items)["installer/bundler/installer/main.py"]
    evil = main.replace(b"def run(", b"import os\nos.system('touch /tmp/airbundle-pwned')\ndef run(", 1)
    # as long as the signed file (its end cut): only the SHA-256 check can tell it apart
    evil = evil[: len(main)]
    bad = write_items(
        tmp_path / "demo-1.0.0.tar", replace(items, "installer/bundler/installer/main.py", evil)
    )
    site = _site(bad, tmp_path)
    run = _install(site, keys)
    assert run.returncode == 4 and "installer files do not match lock.json" in run.stderr
    assert not Path("/tmp/airbundle-pwned").exists() and not (site / "work").exists()  # python never ran
    # a longer one is refused earlier, from its declared size, before it is even extracted
    (tmp_path / "longer").mkdir()
    longer = write_items(tmp_path / "longer" / "demo-1.0.0.tar",
                         replace(items, "installer/bundler/installer/main.py", main + b"\n#"))  # fmt: skip
    run = _install(_site(longer, tmp_path / "longer"), keys)
    assert run.returncode == 4 and "main.py is not the size lock.json gives it" in run.stderr


@pytest.mark.parametrize(
    "damage",
    ["payload-byte", "extra-member", "symlink", "dotdot", "device"],
)
def test_tampered_or_hostile_bundles_unpack_nothing(
    built: Path, keys: Keys, tmp_path: Path, damage: str
) -> None:
    """The carried installer verifies every member first: nothing is written, no node touched (exit 4)."""
    items = read_items(built)
    if damage == "payload-byte":
        data = dict((ti.name, d) for ti, d in items)["files/notes.txt"]
        items = replace(items, "files/notes.txt", b"X" + data[1:])
    else:
        hostile = {
            "extra-member": info("scripts/99-evil.sh", b"#!/bin/sh\nid\n", mode=0o755),
            "symlink": info("files/etc", type_=tarfile.SYMTYPE, linkname="/etc"),
            "dotdot": info("../../tmp/airbundle-escape", b"x"),
            "device": info("files/tty", type_=tarfile.CHRTYPE),
        }[damage]
        items.append(hostile)
    site = _site(write_items(tmp_path / "demo-1.0.0.tar", items), tmp_path)
    run = _install(site, keys)
    assert run.returncode == 4, run.stderr
    # Only the journal's lock file may exist: nothing unpacked, no state recorded.
    assert not (site / "work").exists() or {p.name for p in (site / "work").iterdir()} <= {"state.lock"}
    assert not Path("/tmp/airbundle-escape").exists()


@pytest.mark.parametrize("field", ["name", "version"])
def test_signed_name_or_version_cannot_leave_the_workdir(
    built: Path, keys: Keys, tmp_path: Path, field: str
) -> None:
    """Attack: a bundle signed by the trusted key whose lock names itself with an absolute path
    (``name: /…/victim``) or climbs with ``version: 1.0.0/../../../victim`` unpacked outside
    --workdir (NAME-VERSION is joined to it) and replaced an existing folder there. The installer
    re-checks both by the manifest's rules: exit 4 naming the field, nothing written outside the
    work folder, the existing folder untouched."""
    victim = tmp_path / "victim-1.0.0"
    victim.mkdir()
    (victim / "keep.txt").write_text("untouched\n")
    items = read_items(built)
    lock = dict((ti.name, d) for ti, d in items)["lock.json"]
    old, new = {
        "name": (b'"name": "demo"', f'"name": "{tmp_path / "victim"}"'.encode()),
        "version": (b'"version": "1.0.0"', b'"version": "1.0.0/../../../victim-1.0.0"'),
    }[field]
    assert lock.count(old) == 1
    items = resign(items, keys.key, lock.replace(old, new))
    site = _site(write_items(tmp_path / "demo-1.0.0.tar", items), tmp_path)
    (site / "work" / "demo-1.0.0").mkdir(parents=True)  # so that a '..' from it would resolve
    before = sorted(p for p in tmp_path.rglob("*") if (site / "work") not in (p, *p.parents))
    run = _install(site, keys)
    assert run.returncode == 4, run.stderr
    assert f"lock.json: {field} '" in run.stderr, run.stderr
    assert sorted(p.name for p in victim.iterdir()) == ["keep.txt"]
    assert (victim / "keep.txt").read_text() == "untouched\n"
    after = sorted(p for p in tmp_path.rglob("*") if (site / "work") not in (p, *p.parents))
    assert after == before
    assert {p.name for p in (site / "work").iterdir()} <= {"state.lock", "demo-1.0.0"}
    assert not any((site / "work" / "demo-1.0.0").iterdir())


# ---------------------------------------------------------------- inventory, plan, journal


def test_inventory_reads_rke_cluster_yml(tmp_path: Path) -> None:
    from bundler.installer.inventory import load_inventory

    path = tmp_path / "cluster.yml"
    path.write_text(CLUSTER_YML)
    nodes = load_inventory(path)
    assert [n.name for n in nodes][3] == "worker-1" and nodes[3].port == 2222
    assert nodes[0].roles == ("controlplane", "etcd") and nodes[0].user == "root"


@pytest.mark.parametrize(
    "text, message",
    [
        ("nodes: []\n", "no 'nodes:' list"),
        ("nodes:\n  - {user: root, role: [worker]}\n", "nodes[0] needs an address"),
        ("nodes:\n  - {address: 10.0.0.1, role: [worker]}\n", "node 10.0.0.1 needs a user"),
        (
            "nodes:\n  - {address: a, user: u, role: [master]}\n",
            "cluster.yml:2: node a: role 'master' is not one of controlplane, etcd, worker, loadbalancer",
        ),
        ("nodes:\n  - {address: a, user: u, role: [7]}\n", "cluster.yml:2: node a: role must list some of"),
        ("nodes:\n  - {address: a, user: u, role: worker, port: 70000}\n", "port 70000 is not a TCP port"),
        ("nodes:\n  - {address: a, user: u, role: worker, port: true}\n", "port True is not a TCP port"),
        ("nodes:\n  - {address: a, user: u, role: worker, port: 22.9}\n", "port 22.9 is not a TCP port"),
        (
            "nodes:\n  - {address: a, user: u, role: worker, hostname_override: 12345}\n",
            "cluster.yml:2: node a: hostname_override 12345 must be a string (quote it)",
        ),
        (
            "nodes:\n  - {address: a, user: u, role: worker, ssh_key_path: [a]}\n",
            "node a: ssh_key_path ['a'] must be a string",
        ),
        (
            "nodes:\n  - {address: a, user: u, role: [worker]}\n  - {address: a, user: u, role: [etcd]}\n",
            "cluster.yml:3: node a: listed twice (also line 2)",
        ),
        (
            "nodes:\n  - address: a\n    user: u\n    role: [worker]\n    prot: 2222\n",
            "cluster.yml:5: node a: unknown key 'prot' (rke would ignore it); a node takes address, port,",
        ),
        (
            "nodes:\n  - {address: a, user: u, role: [worker], hostname_override: kn1}\n"
            "  - {address: b, user: u, role: [etcd], hostname_override: kn1}\n",
            "cluster.yml:3: node b: name 'kn1' is also the name of the node on line 2; give each node its own",
        ),
        ("nodes: [\n", "cluster.yml:2: not a valid inventory"),
        ("x: !!python/object/apply:os.system ['id']\n", "not a valid inventory"),
    ],
)
def test_bad_inventories(tmp_path: Path, text: str, message: str) -> None:
    from bundler.errors import InputError
    from bundler.installer.inventory import load_inventory

    path = tmp_path / "cluster.yml"
    path.write_text(text)
    with pytest.raises(InputError, match=re.escape(message)):
        load_inventory(path)


def test_values_become_environment_strings(tmp_path: Path) -> None:
    from bundler.errors import InputError
    from bundler.installer.inventory import load_values

    path = tmp_path / "site.yaml"
    path.write_text("CEPH_MONITORS: [10.0.0.1, 10.0.0.2]\nREPLICAS: 3\nEMPTY:\n")
    assert load_values(path).shared == {"CEPH_MONITORS": "10.0.0.1 10.0.0.2", "REPLICAS": "3", "EMPTY": ""}
    path.write_text("A: 1\nnodes:\n  kn3: {A: 2, B: x}\n")
    values = load_values(path)
    assert values.for_node("kn3") == {"A": "2", "B": "x"} and values.for_node("kn4") == {"A": "1"}
    path.write_text("bad-name: 1\n")
    with pytest.raises(InputError, match="not a variable name"):
        load_values(path)


@pytest.mark.parametrize("members, quorum, tolerated", [(1, 1, 0), (3, 2, 1), (4, 3, 1), (5, 3, 2)])
def test_etcd_quorum(members: int, quorum: int, tolerated: int) -> None:
    from bundler.installer.plan import etcd_quorum

    assert etcd_quorum(members) == (quorum, tolerated)


def test_topology_warnings() -> None:
    from bundler.installer.inventory import Node
    from bundler.installer.plan import topology_warnings

    good = [Node(f"10.0.0.{i}", "u", ("controlplane", "etcd")) for i in range(3)]
    good += [Node(f"10.0.1.{i}", "u", ("worker",)) for i in range(4)]
    assert topology_warnings(good, min_workers=4) == []
    even = [*good[:3], Node("10.0.0.9", "u", ("etcd",)), *good[3:]]
    assert (
        "4 etcd nodes (even): quorum 3, tolerates 1 failure(s), no better than 3"
        in topology_warnings(even)[0]
    )
    small = [Node("a", "u", ("controlplane", "etcd", "worker"))]
    warnings = topology_warnings(small, min_workers=4)
    assert "1 etcd node(s): quorum 1, tolerates 0" in warnings[0]
    assert any("share a" in w for w in warnings) and any(
        "fewer than the bundle's min_workers (4)" in w for w in warnings
    )


def test_journal_versions_and_single_installer(tmp_path: Path) -> None:
    from bundler.errors import InstallError
    from bundler.installer.journal import Journal

    with Journal(tmp_path) as journal:
        journal.begin("fmp-rke", "23.12.1", "a" * 64)
        journal.mark_done("images", "worker-1", "sha256:x")
        with pytest.raises(InstallError, match="another airbundle install is running"), Journal(tmp_path):
            pass
    with Journal(tmp_path) as journal:
        assert journal.is_done("images", "worker-1", "sha256:x")
        assert journal.state["installed"]["fmp-rke"]["version"] == "23.12.1"
        journal.begin("fmp-rke", "23.12.2", "b" * 64)  # another bundle: its work starts afresh
        assert not journal.is_done("images", "worker-1", "sha256:x")


# ---------------------------------------------------------------- images over SSH to real nodes


def _empty_engines(nodes) -> None:
    """Each test starts from node engines that hold no image."""
    for node in nodes:
        for image in node.engine.client.images.list():
            node.engine.client.images.remove(image.id, force=True)


def _node_site(manifest: Path, keys: Keys, tmp_path: Path, cache_dir: Path, nodes, env=None) -> Path:
    """Build ``manifest`` and lay out a site for it whose inventory is the test nodes."""
    from .conftest import run_cli
    from .nodes import cluster_yml

    built = run_cli(
        "build", manifest, "-o", tmp_path / "out", "--key", keys.key_path, "--cache", cache_dir, env=env
    )
    assert built.exit_code == 0, built.stderr
    site = _site(Path(built.stdout.strip()), tmp_path)
    (site / "cluster.yml").write_text(cluster_yml(nodes, workers={"worker-1", "worker-2"}))
    return site


@pytest.fixture
def image_site(project, keys: Keys, tmp_path: Path, cache_dir: Path, source_engine, ssh_cluster):
    """A bundle with two images (sharing their base), unpacked on a site with three nodes."""

    client, nodes = ssh_cluster
    _empty_engines(nodes)
    manifest = project.write_manifest(
        "apiVersion: airbundle/v1\nkind: Bundle\nname: imgs\nversion: '1.0'\n"
        "platform: {os: debian, codename: bookworm, arch: amd64}\n"
        "images:\n  - ref: test/app-a:1\n    from: daemon\n  - ref: test/app-b:1\n    from: daemon\n",
        "imgs.yaml",
    )
    site = _node_site(manifest, keys, tmp_path, cache_dir, nodes, env=source_engine.engine.env)
    return site, client, nodes


def _images(site: Path, keys: Keys, client) -> subprocess.CompletedProcess[str]:
    return _install(site, keys, "--only", "images", "--ssh-config", str(client.config))


def test_images_go_to_every_worker_and_are_not_sent_twice(image_site, keys: Keys, source_engine) -> None:
    site, client, nodes = image_site
    first = _images(site, keys, client)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "worker-1             ok: 2 loaded, 0 already present, " in first.stdout
    sent = [int(n) for n in re.findall(r"present, (\d+) bytes sent", first.stdout)]
    blobs = sum(p.stat().st_size for p in (site / "work/imgs-1.0/images").rglob("*") if p.is_file())
    assert len(sent) == 2 and all(
        blobs < n < blobs + 64 * 1024 for n in sent
    )  # each blob once, + tar headers
    src = source_engine.engine.client
    for node in nodes:
        ids = {i.id for i in node.engine.client.images.list()}
        want = {src.images.get("test/app-a:1").id, src.images.get("test/app-b:1").id}
        if node.name.startswith("worker"):
            assert want <= ids
            out = node.engine.client.containers.run("test/app-a:1", network_mode="none", remove=True)
            assert out.decode() == source_engine.outputs["test/app-a:1"]
        else:
            assert ids == set()  # the control plane node is no image target
    again = _images(site, keys, client)
    assert again.returncode == 0 and "worker-2             ok: 0 loaded, 2 already present\n" in again.stdout


def test_a_dead_node_does_not_stop_the_others(image_site, keys: Keys) -> None:
    site, client, nodes = image_site
    dead = nodes[2]
    dead.kill_sshd()
    try:
        run = _images(site, keys, client)
        assert run.returncode == 6
        assert "worker-2             FAILED: worker-2: unreachable over SSH" in run.stdout
        assert "images: failed on worker-2" in run.stderr
        assert len(nodes[1].engine.client.images.list()) >= 2  # worker-1 finished
    finally:
        dead.start()
    resumed = _images(site, keys, client)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "worker-1             ok: 0 loaded, 2 already present" in resumed.stdout
    assert "worker-2             ok: 2 loaded, 0 already present" in resumed.stdout


# ---------------------------------------------------------------- the whole install on three nodes

STEP_PREPARE = '#!/bin/sh\necho "prepare in $BUNDLE_DIR" >> "$OUT_FILE"\n'
STEP_MONITORS = (
    '#!/bin/sh\n[ -n "${CEPH_MONITORS:-}" ] || { echo "CEPH_MONITORS is not set" >&2; exit 3; }\n'
    'echo "monitors $CEPH_MONITORS" >> "$OUT_FILE"\n'
)
STEP_DEPLOY = '#!/bin/sh\necho "deploy with $KUBECONFIG" >> "$OUT_FILE"\necho "deployed on $(hostname)"\n'
# Rancher's rke cannot run here (no real cluster): a stand-in takes its place, answering `up --config`.
RKE_STANDIN = (
    b'#!/bin/sh\n[ "$1" = up ] && [ "$2" = --config ] || { echo "usage: rke up --config FILE" >&2; exit 2; }\n'
    b'echo "rke stand-in: cluster up from $3"\n'
    b'echo "apiVersion: v1" > "$(dirname "$3")/kube_config_cluster.yml"\n'
)


@pytest.fixture
def full_site(project, keys: Keys, tmp_path: Path, cache_dir: Path, source_engine, ssh_cluster):

    client, nodes = ssh_cluster
    _empty_engines(nodes)
    for name, body in (("prepare", STEP_PREPARE), ("monitors", STEP_MONITORS), ("deploy", STEP_DEPLOY)):
        script = project.root / "scripts" / f"{name}.sh"
        script.write_text(body)
        script.chmod(0o755)
    dest = tmp_path / "node-bin" / "rke"
    url = project.origin.add("/rke-standin", RKE_STANDIN)
    manifest = project.write_manifest(
        "apiVersion: airbundle/v1\nkind: Bundle\nname: full\nversion: '2.0'\n"
        "platform: {os: debian, codename: bookworm, arch: amd64}\n"
        f"binaries:\n  - name: rke\n    url: {url}\n    sha256: {__import__('hashlib').sha256(RKE_STANDIN).hexdigest()}\n"
        f"    dest: {dest}\n    mode: '0755'\n"
        "images:\n  - ref: test/app-a:1\n    from: daemon\n  - ref: test/app-b:1\n    from: daemon\n"
        "steps:\n  - {name: prepare, script: scripts/prepare.sh}\n  - {name: monitors, script: scripts/monitors.sh}\n"
        "  - {name: deploy, script: scripts/deploy.sh}\n",
        "full.yaml",
    )
    site = _node_site(manifest, keys, tmp_path, cache_dir, nodes, env=source_engine.engine.env)
    out_file = tmp_path / "steps.out"
    (site / "site.yaml").write_text(f"OUT_FILE: {out_file}\n")
    return site, client, nodes, dest, out_file


def _full(site: Path, keys: Keys, client, *extra: str, yes: bool = True) -> subprocess.CompletedProcess[str]:
    """Install ``full_site``; its one etcd node is a topology problem, confirmed with --yes unless not ``yes``."""
    confirm = ("--yes",) if yes else ()
    return _install(site, keys, "--ssh-config", str(client.config), "--values", "site.yaml", *confirm, *extra)


def test_whole_install_then_resume_after_a_failed_step(full_site, keys: Keys, source_engine) -> None:
    site, client, nodes, dest, out_file = full_site
    first = _full(site, keys, client)
    # Step 2 needs CEPH_MONITORS, which the values do not give yet: it fails, step 3 does not run.
    assert first.returncode == 6, first.stdout + first.stderr
    assert "step monitors failed with exit code 3" in first.stderr and "02-monitors.log" in first.stderr
    assert out_file.read_text().startswith("prepare in ") and "deploy" not in out_file.read_text()
    assert "CEPH_MONITORS is not set" in (site / "work" / "logs" / "02-monitors.log").read_text()
    assert dest.stat().st_mode & 0o777 == 0o755 and dest.read_bytes() == RKE_STANDIN
    assert "rke stand-in: cluster up from" in first.stdout
    src = source_engine.engine.client
    for node in nodes[1:]:
        assert {src.images.get(t).id for t in ("test/app-a:1", "test/app-b:1")} <= {
            i.id for i in node.engine.client.images.list()
        }

    (site / "site.yaml").write_text(f"OUT_FILE: {out_file}\nCEPH_MONITORS: [10.0.0.1, 10.0.0.2]\n")
    resumed = _full(site, keys, client, "--resume")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "step prepare: done before, skipped" in resumed.stdout
    assert "0 loaded, 2 already present" in resumed.stdout  # no image sent again
    kubeconfig = site / "work" / "kube_config_cluster.yml"
    assert out_file.read_text().splitlines()[1:] == [
        "monitors 10.0.0.1 10.0.0.2",
        f"deploy with {kubeconfig}",
    ]
    assert "rke up: done before, skipped" in resumed.stdout  # rke ran in the first run, once
    assert "full 2.0 is installed" in resumed.stdout

    again = _full(site, keys, client)
    assert again.returncode == 0 and "already installed (verified again); nothing to do" in again.stdout


def _plan_keys(run: subprocess.CompletedProcess[str]) -> set[str]:
    import json

    return {a["key"] for phase in json.loads(run.stdout)["phases"] for a in phase["actions"]}


def _journal_keys(site: Path) -> set[str]:
    import json

    return {k for k, v in json.loads((site / "work" / "state.json").read_text())["done"].items() if v}


def _engines_ids(nodes) -> dict[str, set[str]]:
    return {n.name: {i.id for i in n.engine.client.images.list()} for n in nodes}


def test_dry_run_is_the_plan_the_install_then_follows(full_site, keys: Keys) -> None:
    """--dry-run asks the live nodes, changes nothing, exits as the install would, and its plan is
    what the install then does: the journal's new items are the plan's actions, also after a
    failed step (only the rest is planned) and with a node down (exit 6 naming it)."""
    site, client, nodes, dest, out_file = full_site
    dry = _full(site, keys, client, "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    plan = _plan_keys(dry)
    workers = [n.name for n in nodes if n.name.startswith("worker")]
    assert {k.split("/")[0] for k in plan} == {"binaries", "images", "cluster", "steps"}
    assert {k.split("/")[1] for k in plan if k.startswith("images/")} == set(workers)
    assert "ok: x86_64 bookworm" in dry.stderr and "load test/app-a:1, test/app-b:1" in dry.stderr
    assert not (site / "work").exists() and not dest.exists() and not out_file.exists()
    assert all(not ids for ids in _engines_ids(nodes).values())

    down = nodes[2]
    down.kill_sshd()
    try:
        refused = _full(site, keys, client, "--dry-run")
        assert refused.returncode == 6, refused.stdout + refused.stderr
        assert f"preflight: failed on {down.name}" in refused.stderr
        assert f"{down.name:<20} FAILED: {down.name}: unreachable over SSH" in refused.stdout
        assert not (site / "work").exists() and all(not ids for ids in _engines_ids(nodes).values())
    finally:
        down.start()

    first = _full(site, keys, client)  # step 2 fails: CEPH_MONITORS is not in the values yet
    assert first.returncode == 6 and "step monitors failed" in first.stderr, first.stdout + first.stderr
    assert _journal_keys(site) == plan - {"steps/local/monitors", "steps/local/deploy"}
    rest = _full(site, keys, client, "--dry-run", "--json")
    assert rest.returncode == 0, rest.stderr
    # The journal says the install stopped halfway: never "installed now: 2.0".
    assert "installed now: 2.0 partly, not complete (failed: " in rest.stderr and "monitors" in rest.stderr
    assert "no complete install before it" in rest.stderr
    assert _plan_keys(rest) == {"steps/local/monitors", "steps/local/deploy"}  # the nodes have the rest

    (site / "site.yaml").write_text(f"OUT_FILE: {out_file}\nCEPH_MONITORS: 10.0.0.1\n")
    done = _full(site, keys, client)
    assert done.returncode == 0, done.stdout + done.stderr
    assert _journal_keys(site) == plan
    finished = _full(site, keys, client, "--dry-run")
    assert finished.returncode == 0 and "already installed; nothing to do" in finished.stdout
    assert "installed now: 2.0 (complete)" in finished.stdout


def test_install_sh_never_hands_on_a_bundle_it_did_not_check(built: Path, keys: Keys, tmp_path: Path) -> None:
    """The installer takes the bundle as BUNDLE too (for airbundle install); install.sh checks the one
    it finds (or --bundle names), so a second one given as BUNDLE is refused, never read."""
    site = _site(built, tmp_path)
    other = site / "other.tar"
    other.write_bytes(b"not checked by install.sh")
    run = _install(site, keys, "--dry-run", "--offline", "other.tar")
    assert run.returncode == 2 and "give the bundle once" in run.stderr, run.stderr


def test_resume_continues_only_this_bundle(built: Path, keys: Keys, tmp_path: Path) -> None:
    """--resume refuses to start afresh: no unfinished install of this bundle in the journal."""
    site = _site(built, tmp_path)
    run = _install(site, keys, "--resume", "--dry-run", "--offline")
    assert run.returncode == 2, run.stderr
    assert (
        "--resume: the journal in" in run.stderr and "holds no unfinished install of demo 1.0.0" in run.stderr
    )
    assert not (site / "work").exists()
    assert "--resume" not in _install(site, keys).stderr  # a failure no longer sends the operator to it


def _debs_site(project, apt_repos, keys: Keys, tmp_path: Path, cache_dir: Path, nodes, tail: str) -> Path:
    """A site for a bundle of the test apt repository's packages (``tail``: packages and the rest)."""
    shutil.copy(apt_repos.keyring, project.root / "payloads" / "repo.gpg")
    manifest = project.write_manifest(
        "apiVersion: airbundle/v1\nkind: Bundle\nname: pkgs\nversion: '1.0'\n"
        "platform: {os: debian, codename: bookworm, arch: amd64}\n"
        f"debs:\n  sources:\n    - url: {apt_repos.url}\n      suite: stable\n      components: [main]\n"
        f"      keyring: payloads/repo.gpg\n{tail}",
        "pkgs.yaml",
    )
    return _node_site(manifest, keys, tmp_path, cache_dir, nodes)


def _status_roots(tmp_path: Path, nodes, states: list) -> Path:
    """Private apt roots (``--apt-root``), one a node, each with a dpkg status of ``states``."""
    from .aptrepo import status_file

    roots = tmp_path / "roots"
    for node, state in zip(nodes, states):
        status = roots / node.name / "var/lib/dpkg/status"
        status.parent.mkdir(parents=True)
        status.write_text(status_file(state))
    return roots


def _only_in_roots(
    site: Path, keys: Keys, client, phase: str, roots: Path
) -> subprocess.CompletedProcess[str]:
    """``install.sh --only PHASE`` with each node's packages under its private root."""
    return _install(
        site, keys, "--ssh-config", str(client.config), "--only", phase, "--apt-root", f"{roots}/{{node}}"
    )


def test_packages_install_from_the_bundle_only(
    project, keys: Keys, tmp_path: Path, cache_dir: Path, apt_repos, ssh_cluster
) -> None:
    """apt on each node installs the locked closure from the shipped repository, into a private root;
    libfoo, requested after app (which needs it), is still requested: apt marks it manual."""
    from .aptrepo import CLOSURE

    client, nodes = ssh_cluster
    tail = "  packages: [app, cyc-a, libfoo]\n  exclude: [base-files]\n"
    site = _debs_site(project, apt_repos, keys, tmp_path, cache_dir, nodes, tail)
    # Each private root starts as a target that has base-files, as a real node does.
    roots = _status_roots(tmp_path, nodes, [[("base-files", "12.4", {})]] * len(nodes))
    run = _only_in_roots(site, keys, client, "packages", roots)
    assert run.returncode == 0, run.stdout + run.stderr
    for node in nodes:  # no terminal: one line per node, with the bytes it was sent
        assert re.search(rf"  {node.name} +ok: .* \(\d+\.\d kB of packages sent\)", run.stdout), run.stdout
    assert "[#" not in run.stderr and "\r" not in run.stderr
    for node in nodes:
        listed = subprocess.run(
            [
                "dpkg-query",
                f"--admindir={roots / node.name}/var/lib/dpkg",
                "-W",
                "-f=${Package} ${Version} ${Status}\n",
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        installed = {ln.split()[0]: ln.split()[1] for ln in listed.stdout.splitlines() if "installed" in ln}
        assert installed == {**CLOSURE, "base-files": "12.4"}
        assert (roots / node.name / "usr/share/doc/libfoo/README").read_text() == "libfoo 1:0.5\n"
        states = (roots / node.name / "var/lib/apt/extended_states").read_text()
        auto = {s.split("\n")[0].split(": ")[1] for s in states.split("\n\n") if "Auto-Installed: 1" in s}
        assert auto == set(CLOSURE) - {"app", "cyc-a", "libfoo"}


def _installed(root: Path) -> dict[str, str]:
    """name -> version of what dpkg in the private root ``root`` has installed."""
    listed = subprocess.run(
        ["dpkg-query", f"--admindir={root}/var/lib/dpkg", "-W", "-f=${Package} ${Version} ${Status}\n"],
        capture_output=True,
        text=True,
        check=True,
    )
    return {ln.split()[0]: ln.split()[1] for ln in listed.stdout.splitlines() if "installed" in ln}


def test_packages_by_role_land_on_their_nodes_only(
    project, keys: Keys, tmp_path: Path, cache_dir: Path, apt_repos, ssh_cluster
) -> None:
    """debs.roles: app (with its closure) goes to the workers only, cyc-a to every node; the lock,
    inspect (text and JSON) and the dry run say so, and apt in each node's private root agrees."""
    from .aptrepo import CLOSURE
    from .conftest import run_cli

    client, nodes = ssh_cluster
    tail = "  packages: [cyc-a]\n  roles: {worker: [app]}\n  exclude: [base-files]\n"
    site = _debs_site(project, apt_repos, keys, tmp_path, cache_dir, nodes, tail)
    bundle = next(site.glob("*.tar"))
    lock = json.loads(subprocess.run(["tar", "-xOf", bundle.name, "lock.json"], cwd=site,
                                     capture_output=True, check=True).stdout)  # fmt: skip
    assert lock["deb_roles"] == {"worker": ["app"]}
    assert {d["name"] for d in lock["debs"]} == set(CLOSURE)  # one repository: every role's closure

    text = run_cli("inspect", bundle)
    assert text.exit_code == 0, text.stderr
    assert re.search(r"\n\s+app\s+1\.0 .*\(requested\)\s+on worker nodes", text.stdout), text.stdout
    assert re.search(r"\n\s+cyc-b\s+1\.0 .*\(cyc-a\)\s+on every node\n", text.stdout), text.stdout
    facts = json.loads(run_cli("inspect", bundle, "--json").stdout)
    roles = {d["name"]: d["roles"] for d in facts["debs"]}
    assert roles["app"] == ["worker"] and roles["libfoo"] == ["worker"] and roles["cyc-b"] is None
    assert facts["deb_roles"] == {"worker": ["app"]}

    roots = _status_roots(tmp_path, nodes, [[("base-files", "12.4", {})]] * len(nodes))
    base = ("--ssh-config", str(client.config), "--only", "packages", "--apt-root", f"{roots}/{{node}}")
    dry = _install(site, keys, *base, "--dry-run", "--json")
    assert dry.returncode == 0, dry.stdout + dry.stderr
    phase = next(p for p in json.loads(dry.stdout)["phases"] if p["name"] == "packages")
    planned: dict[str, set[str]] = {}
    for action in phase["actions"]:
        planned.setdefault(action["node"], set()).add(action["item"])
    assert planned == {
        "cp-1": {"cyc-a=1.0"},
        "worker-1": {"cyc-a=1.0", "app=1.0"},
        "worker-2": {"cyc-a=1.0", "app=1.0"},
    }
    assert not any(_installed(roots / n.name).keys() - {"base-files"} for n in nodes)  # dry: nothing

    run = _install(site, keys, *base)
    assert run.returncode == 0, run.stdout + run.stderr
    for node in nodes:
        want = CLOSURE if node.name.startswith("worker") else {"cyc-a": "1.0", "cyc-b": "1.0"}
        assert _installed(roots / node.name) == {**want, "base-files": "12.4"}, node.name


def platform_site(
    project, keys: Keys, tmp_path: Path, cache_dir: Path, nodes, os_id: str, codename: str
) -> Path:
    """A site whose one-step bundle is for OS_ID CODENAME (amd64), its inventory the given nodes."""
    manifest = project.write_manifest(
        f"apiVersion: airbundle/v1\nkind: Bundle\nname: {os_id}-only\nversion: '1.0'\n"
        f"platform: {{os: {os_id}, codename: {codename}, arch: amd64}}\n"
        "steps:\n  - {name: storage, script: scripts/storage.sh}\n",
        f"{os_id}.yaml",
    )
    return _node_site(manifest, keys, tmp_path, cache_dir, nodes)


def test_preflight_refuses_before_anything_changes(
    project, keys: Keys, tmp_path: Path, cache_dir: Path, ssh_cluster
) -> None:
    """Wrong OS codename and a busy Kubernetes port: preflight fails on every node, nothing is changed."""
    import socket

    client, nodes = ssh_cluster
    site = platform_site(project, keys, tmp_path, cache_dir, nodes, "ubuntu", "jammy")
    with socket.socket() as busy:  # the nodes share this host's ports: 2380 (etcd) is now taken
        busy.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        busy.bind(("127.0.0.1", 2380))
        busy.listen()
        run = _install(site, keys, "--ssh-config", str(client.config))
    assert run.returncode == 6
    assert "cp-1                 FAILED: OS debian bookworm, the bundle is for ubuntu jammy" in run.stdout
    assert "ports already in use: 2380 (etcd)" in run.stdout
    assert (
        "worker-1             FAILED: OS debian bookworm" in run.stdout
        and "2380" not in run.stdout.split("worker-1")[1].splitlines()[0]
    )
    assert "preflight: failed on cp-1, worker-1, worker-2" in run.stderr
    assert [p.name for p in (site / "work" / "logs").iterdir()] == ["preflight"]  # no step ran
    assert "FAILED: OS debian bookworm" in (site / "work" / "logs" / "preflight" / "cp-1.log").read_text()


def test_busy_ports_by_role() -> None:
    from bundler.installer.inventory import Node
    from bundler.installer.preflight import busy_ports

    node = Node("a", "u", ("controlplane", "worker"))
    assert busy_ports(node, {22, 6443, 31000, 2379}) == ["6443 (controlplane)", "31000 (worker)"]


def test_a14_preseeded_symlink_at_the_unpack_path(built: Path, keys: Keys, tmp_path: Path) -> None:
    """A symlink planted where the bundle unpacks is replaced, never followed (security matrix A14)."""
    site = _site(built, tmp_path)
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("untouched\n")
    (site / "work").mkdir()
    os.symlink(victim, site / "work" / "demo-1.0.0")
    _install(site, keys)  # preflight fails later (no such nodes); the unpack comes first
    unpacked = site / "work" / "demo-1.0.0"
    assert not unpacked.is_symlink() and (unpacked / "bin" / "rke").is_file()
    assert sorted(p.name for p in victim.iterdir()) == ["keep.txt"]


def test_image_targets_follow_the_manifests_roles() -> None:
    from bundler.installer.inventory import Node
    from bundler.installer.plan import image_targets

    nodes = [
        Node("cp", "u", ("controlplane", "etcd")),
        Node("w1", "u", ("worker",)),
        Node("e", "u", ("etcd",)),
    ]
    assert [n.address for n in image_targets(nodes)] == ["w1"]
    assert [n.address for n in image_targets(nodes, ("worker", "controlplane"))] == ["cp", "w1"]
    assert [n.address for n in image_targets(nodes[:1])] == ["cp"]  # no worker at all: every node


def test_install_sh_expiry_and_several_keys(
    project, keys: Keys, other_keys: Keys, tmp_path: Path, cache_dir: Path
) -> None:
    from .conftest import run_cli

    result = run_cli(
        "build",
        project.manifest,
        "-o",
        tmp_path / "out",
        "--key",
        keys.key_path,
        "--cache",
        cache_dir,
        "--expires",
        "1d",
        env={"SOURCE_DATE_EPOCH": "1"},
    )
    assert result.exit_code == 0, result.stderr
    site = _site(Path(result.stdout.strip()), tmp_path)
    env = {**os.environ, "PATH": SITE_PATH}
    base = ["sh", "install.sh", "--inventory", "cluster.yml", "--workdir", str(site / "work")]
    base += ["--dry-run", "--offline"]  # the inventory's nodes do not exist here
    expired = subprocess.run(
        [*base, "--pubkey", str(keys.pub_path)], cwd=site, env=env, capture_output=True, text=True
    )
    assert expired.returncode == 3 and "expired at 1970-01-02" in expired.stderr
    both = subprocess.run(
        [*base, "--pubkey", str(other_keys.pub_path), "--pubkey", str(keys.pub_path), "--allow-expired"],
        cwd=site,
        env=env,
        capture_output=True,
        text=True,
    )
    assert both.returncode == 0, both.stderr
    assert "members verified" in both.stdout


# ---------------------------------------------------------------- delta bundles


def test_delta_bundle_builds_on_the_installed_base(
    project, keys: Keys, tmp_path: Path, cache_dir: Path, source_engine, ssh_cluster, apt_repos
) -> None:
    """v2 = v1 with one changed image and one new package, shipped as a delta against v1."""
    from bundler import archive

    from .conftest import run_cli

    client, nodes = ssh_cluster
    _empty_engines(nodes)
    src = source_engine.engine.client
    ctx = tmp_path / "app-b-2"
    ctx.mkdir()
    (ctx / "msg.txt").write_text("hello from app-b, version 2\n")
    (ctx / "Dockerfile").write_text('FROM test/base:1\nCOPY msg.txt /msg.txt\nCMD ["cat", "/msg.txt"]\n')
    src.images.build(path=str(ctx), tag="test/app-b:2", rm=True, network_mode="none")
    shutil.copy(apt_repos.keyring, project.root / "payloads" / "repo.gpg")
    head = "apiVersion: airbundle/v1\nkind: Bundle\nname: app\nplatform: {os: debian, codename: bookworm, arch: amd64}\n"
    v1 = project.write_manifest(
        head
        + "version: '1.0'\nimages:\n  - {ref: 'test/app-a:1', from: daemon}\n  - {ref: 'test/app-b:1', from: daemon}\n",
        "v1.yaml",
    )
    v2 = project.write_manifest(
        head
        + "version: '2.0'\nimages:\n  - {ref: 'test/app-a:1', from: daemon}\n  - {ref: 'test/app-b:2', from: daemon}\n"
        f"debs:\n  sources:\n    - {{url: '{apt_repos.url}', suite: stable, components: [main], keyring: payloads/repo.gpg}}\n"
        "  packages: [prelib]\n",
        "v2.yaml",
    )
    env = source_engine.engine.env
    site = _node_site(v1, keys, tmp_path, cache_dir, nodes, env=env)
    first = _install(site, keys, "--ssh-config", str(client.config))
    assert first.returncode == 0, first.stdout + first.stderr

    base = next(site.glob("app-1.0.tar"))
    full = run_cli(
        "build", v2, "-o", tmp_path / "full", "--key", keys.key_path, "--cache", cache_dir, env=env
    )
    delta = run_cli(
        "build",
        v2,
        "-o",
        tmp_path / "delta",
        "--key",
        keys.key_path,
        "--cache",
        cache_dir,
        "--base",
        base,
        env=env,
    )
    assert full.exit_code == 0 and delta.exit_code == 0, delta.stderr
    full_tar, delta_tar = Path(full.stdout.strip()), Path(delta.stdout.strip())
    lock = archive.read_lock(delta_tar)[0]
    assert lock.base["name"] == "app" and lock.base["version"] == "1.0"
    inherited = sum(m.size for m in lock.inherited)
    print(
        f"\ndelta {delta_tar.stat().st_size} bytes vs full {full_tar.stat().st_size} bytes; "
        f"{len(lock.inherited)} members ({inherited} bytes) inherited from app 1.0"
    )
    # Smaller by what 1.0 already carried (the tar's own headers and padding aside).
    assert inherited > 0 and delta_tar.stat().st_size < full_tar.stat().st_size - inherited + 64 * 1024
    carried = {m.path for m in lock.members}
    assert any(p.startswith("debs/prelib_") for p in carried)  # the new package travels
    assert run_cli("verify", delta_tar, "--pubkey", keys.pub_path).exit_code == 0

    # On the site that has 1.0: installs, and the changed image reaches every worker.
    shutil.copy(delta_tar, site / delta_tar.name)
    roots = tmp_path / "roots"
    for node in nodes:
        (roots / node.name / "var/lib/dpkg").mkdir(parents=True, exist_ok=True)
        (roots / node.name / "var/lib/dpkg/status").touch()
    run = _install_bundle(site, keys, client, delta_tar.name, "--apt-root", f"{roots}/{{node}}")
    assert run.returncode == 0, run.stdout + run.stderr
    app_b2 = src.images.get("test/app-b:2").id
    for node in nodes[1:]:
        assert app_b2 in {i.id for i in node.engine.client.images.list()}
        assert (roots / node.name / "usr/share/doc/prelib/README").is_file()
    assert "1 loaded, 1 already present" in run.stdout

    # On a site that never had 1.0: refused, naming the base it needs.
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(delta_tar, bare / delta_tar.name)
    shutil.copy(site / "install.sh", bare / "install.sh")
    shutil.copy(site / "cluster.yml", bare / "cluster.yml")
    dry = _install_bundle(bare, keys, client, delta_tar.name, "--dry-run")  # the dry run says so first
    assert dry.returncode == 3 and "is a delta bundle on app 1.0" in dry.stderr
    assert not (bare / "work").exists()
    refused = _install_bundle(bare, keys, client, delta_tar.name)
    assert refused.returncode == 3 and "is a delta bundle on app 1.0" in refused.stderr


def _install_bundle(
    site: Path, keys: Keys, client, bundle: str, *extra: str
) -> subprocess.CompletedProcess[str]:
    return _install(site, keys, "--bundle", bundle, "--ssh-config", str(client.config), *extra)


def test_install_straight_from_parts_on_nodes(
    project, keys: Keys, tmp_path: Path, cache_dir: Path, source_engine, ssh_cluster
) -> None:
    """A bundle in media-sized parts installs on the nodes with no join (install.sh reads them as one)."""
    from .conftest import run_cli
    from .nodes import cluster_yml

    client, nodes = ssh_cluster
    _empty_engines(nodes)
    manifest = project.write_manifest(
        "apiVersion: airbundle/v1\nkind: Bundle\nname: parted\nversion: '1.0'\n"
        "platform: {os: debian, codename: bookworm, arch: amd64}\n"
        "images:\n  - ref: test/app-a:1\n    from: daemon\n",
        "parted.yaml",
    )
    result = run_cli(
        "build",
        manifest,
        "-o",
        tmp_path / "media",
        "--key",
        keys.key_path,
        "--cache",
        cache_dir,
        "--split",
        "256K",
        env=source_engine.engine.env,
    )
    assert result.exit_code == 0, result.stderr
    media = tmp_path / "media"
    assert len(list(media.glob("parted-1.0.tar.[0-9]*"))) >= 3
    subprocess.run(["tar", "--occurrence", "-xf", "parted-1.0.tar.000", "install.sh"], cwd=media, check=True)
    (media / "cluster.yml").write_text(cluster_yml(nodes, workers={"worker-1", "worker-2"}))
    run = _install(media, keys, "--ssh-config", str(client.config))
    assert run.returncode == 0, run.stdout + run.stderr
    app_a = source_engine.engine.client.images.get("test/app-a:1").id
    for node in nodes[1:]:
        assert app_a in {i.id for i in node.engine.client.images.list()}


def test_images_through_a_site_registry(image_site, keys: Keys, source_engine) -> None:
    """--images-mode registry: pushed once into the site registry, pulled by digest on each worker."""
    from .registries import Registry, free_port

    site, client, nodes = image_site
    registry = Registry("open")
    try:
        args = ("--only", "images", "--ssh-config", str(client.config), "--images-mode", "registry")
        refused = _install(site, keys, *args)
        assert refused.returncode == 2 and "--registry HOST:PORT" in refused.stderr
        closed = f"127.0.0.1:{free_port()}"
        down = _install(site, keys, *args, "--registry", closed)
        assert down.returncode == 6 and f"registry {closed}: GET /v2/ failed" in down.stderr
        assert "check that the site registry is running" in down.stderr
        locked = Registry("basic")
        try:
            auth = _install(site, keys, *args, "--registry", locked.host)
            assert auth.returncode == 6 and f"registry {locked.host} asks for credentials" in auth.stderr
        finally:
            locked.stop()
        first = _install(site, keys, *args, "--registry", registry.host)
        assert first.returncode == 0, first.stdout + first.stderr
        assert "5 blobs sent" in first.stdout and "1 mounted, 0 already there" in first.stdout  # shared base
        assert re.search(r"; of 5 blobs, \d+ bytes in all", first.stdout), first.stdout  # distinct blobs
        assert "[#" not in first.stderr and "\r" not in first.stderr  # no terminal: no bars
        src = source_engine.engine.client
        want = {src.images.get("test/app-a:1").id, src.images.get("test/app-b:1").id}
        for node in nodes:
            ids = {i.id for i in node.engine.client.images.list()}
            assert (want <= ids) if node.name.startswith("worker") else not ids
        out = nodes[1].engine.client.containers.run("test/app-b:1", network_mode="none", remove=True)
        assert out.decode() == source_engine.outputs["test/app-b:1"]
        log = registry.root / "registry.log"  # the registry's own access log counts the uploads

        def uploads(text: str) -> int:
            return len(re.findall(r'"PUT /v2/\S+/blobs/uploads/\S+ HTTP/1.1" 201', text))

        assert uploads(log.read_text()) == 5
        seen = len(log.read_text())
        again = _install(site, keys, *args, "--registry", registry.host)
        assert again.returncode == 0, again.stdout + again.stderr
        assert ": 0 blobs sent (0 bytes)" in again.stdout
        assert uploads(log.read_text()[seen:]) == 0 and "blobs/uploads" not in log.read_text()[seen:]
        assert "ok: 0 pulled, 2 already present" in again.stdout
    finally:
        registry.stop()


def test_images_mode_from_the_manifest_and_the_options(
    project, keys: Keys, tmp_path: Path, cache_dir: Path
) -> None:
    """install.images_mode/registry travel in the signed lock; the installer's options override them."""
    import json

    from .conftest import run_cli

    text = project.manifest.read_text() + "install:\n  images_mode: registry\n  registry: 127.0.0.1:5000\n"
    manifest = project.write_manifest(text, "reg.yaml")
    built = run_cli("build", manifest, "-o", tmp_path / "out", "--key", keys.key_path, "--cache", cache_dir)
    assert built.exit_code == 0, built.stderr
    bundle = Path(built.stdout.strip().splitlines()[-1])
    for image, message in (
        (
            "registry:2",
            "install.registry_image registry:2 is not one of the bundle's images",
        ),
        ("Registry:2", "install.registry_image: 'Registry:2' is not an image reference"),
    ):
        wrong = project.write_manifest(text + f"  registry_image: {image}\n", "wrong.yaml")
        refused = run_cli("build", wrong, "-o", tmp_path / "no", "--key", keys.key_path, "--cache", cache_dir)
        assert refused.exit_code == 2 and message in refused.stderr, refused.stderr
    facts = json.loads(run_cli("inspect", bundle, "--json").stdout)
    assert facts["install"] == {
        "images_mode": "registry",
        "registry": "127.0.0.1:5000",
        "registry_image": None,
    }
    site = _site(bundle, tmp_path)
    plan = _install(site, keys, "--dry-run", "--offline")
    assert plan.returncode == 0, plan.stderr
    assert (
        "pushed once to the site registry at 127.0.0.1:5000 (TLS trusted via this node's CAs)" in plan.stdout
    )
    plan = _install(site, keys, "--dry-run", "--offline", "--images-mode", "ssh-load")
    assert plan.returncode == 0 and "over SSH into docker load" in plan.stdout
    plan = _install(site, keys, "--dry-run", "--offline", "--registry", "127.0.0.9:443")
    assert "pushed once to the site registry at 127.0.0.9:443" in plan.stdout
    for extra, message in (
        (("--registry-node", "127.0.0.11"), "needs a registry image in the bundle"),
        (
            ("--registry-node", "cp-9"),
            "--registry-node cp-9: no such node in cluster.yml (nodes: 127.0.0.11,",
        ),
        (("--registry-node", "x", "--registry", "127.0.0.9:443"), "not both"),
        (("--registry-cert", "cluster.yml"), "--registry-cert and --registry-key go together"),
        (("--registry-ca", "nope.crt"), "--registry-ca nope.crt: no such file"),
        (("--registry-user", "u"), "needs the password in AIRBUNDLE_REGISTRY_PASSWORD"),
        (("--registry-chunk", "lots"), "--registry-chunk 'lots': give a size like"),
    ):
        bad = _install(site, keys, "--dry-run", *extra)
        assert bad.returncode == 2 and message in bad.stderr, (extra, bad.stderr)
    bad = _install(site, keys, "--registry", "https://127.0.0.9")
    assert bad.returncode == 2 and "--registry 'https://127.0.0.9' is not HOST:PORT" in bad.stderr
    assert not (site / "work").exists() or not any((site / "work").glob("demo-*"))  # nothing unpacked


def _pyenv_python(minor: int) -> Path | None:
    """pyenv's python3.MINOR, or None when this machine has none."""
    for folder in sorted((Path.home() / ".pyenv" / "versions").glob(f"3.{minor}.*")):
        if re.fullmatch(rf"3\.{minor}\.\d+", folder.name) and (folder / "bin" / "python3").is_file():
            return folder / "bin" / "python3"
    return None


def _oldest_python() -> Path | None:
    """The oldest python3 the carried installer supports (3.6: Rocky Linux 8's platform-python), or
    the oldest later one pyenv has."""
    for minor in range(6, 14):
        found = _pyenv_python(minor)
        if found is not None:
            return found
    return None


def _shim(tmp_path: Path, python: Path) -> Path:
    """A folder whose ``python3`` is ``python``: put first on PATH, it plays the site's python3."""
    shim = tmp_path / "shim"
    shim.mkdir(exist_ok=True)
    (shim / "python3").symlink_to(python)
    return shim


def test_the_carried_installer_decides_on_the_oldest_python(built: Path, keys: Keys, tmp_path: Path) -> None:
    """install.sh runs the bundle's installer on the site's python3; on the oldest one the
    installer supports (3.6) it still makes the whole trust decision (signature through stock
    ssh-keygen, since there is no cryptography), audits and hashes every member and plans,
    and still refuses a bundle signed by another key."""
    oldest = _oldest_python()
    if oldest is None:
        pytest.skip("no pyenv python3 3.6+ under ~/.pyenv/versions to play the site's oldest python3")
    shim = _shim(tmp_path, oldest)
    site = _site(built, tmp_path)
    env = {"PATH": f"{shim}:{SITE_PATH}"}
    version = subprocess.run([shim / "python3", "--version"], capture_output=True, text=True).stdout.strip()
    argv = ["sh", "install.sh", "--pubkey", str(keys.pub_path), "--inventory", "cluster.yml"]
    argv += ["--dry-run", "--offline"]
    dry = subprocess.run(argv, cwd=site, env={**os.environ, **env}, capture_output=True, text=True)
    assert dry.returncode == 0, f"{version}: {dry.stderr}"
    assert "members verified" in dry.stdout and "the plan:" in dry.stdout
    assert f"install.sh: using {shim / 'python3'} ({version})" in dry.stderr  # it says which python runs
    data = bytearray(built.read_bytes())  # one payload byte changed: only the Python side sees it
    data[data.index(b"rke stand-in") + 3] ^= 1
    (site / built.name).write_bytes(bytes(data))
    refused = subprocess.run(argv, cwd=site, env={**os.environ, **env}, capture_output=True, text=True)
    assert refused.returncode == 4 and "bin/rke: sha256" in refused.stderr, refused.stderr


def test_a_whole_install_on_python_36(full_site, keys: Keys, source_engine) -> None:
    """Rocky Linux 8's stock python is 3.6: the whole install (binaries, images to every node over
    SSH, rke up, the steps, the journal) runs on it, and a second run finds nothing to do."""
    python36 = _pyenv_python(6)
    if python36 is None:
        pytest.skip("no pyenv python 3.6 under ~/.pyenv/versions to play Rocky Linux 8's platform-python")
    site, client, nodes, dest, out_file = full_site
    shim = _shim(site.parent, python36)
    (site / "site.yaml").write_text(f"OUT_FILE: {out_file}\nCEPH_MONITORS: [10.0.0.1]\n")
    argv = ["sh", "install.sh", "--pubkey", str(keys.pub_path), "--inventory", "cluster.yml", "--workdir",
            str(site / "work"), "--ssh-config", str(client.config), "--values", "site.yaml", "--yes"]  # fmt: skip
    env = {**os.environ, "PATH": f"{shim}:{SITE_PATH}"}
    first = subprocess.run(argv, cwd=site, env=env, capture_output=True, text=True)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "(Python 3.6." in first.stderr
    assert dest.read_bytes() == RKE_STANDIN and "rke stand-in: cluster up from" in first.stdout
    src = source_engine.engine.client
    for node in nodes[1:]:
        assert {src.images.get(t).id for t in ("test/app-a:1", "test/app-b:1")} <= {
            i.id for i in node.engine.client.images.list()
        }
    assert out_file.read_text().splitlines()[1:] == [
        "monitors 10.0.0.1",
        f"deploy with {site / 'work' / 'kube_config_cluster.yml'}",
    ]
    assert "full 2.0 is installed" in first.stdout
    again = subprocess.run(argv, cwd=site, env=env, capture_output=True, text=True)
    assert again.returncode == 0 and "already installed (verified again); nothing to do" in again.stdout


def _no_python_path(tmp_path: Path) -> Path:
    """A PATH folder with every command of /usr/bin but python: a node with no ``python3`` command."""
    folder = tmp_path / "nopython"
    folder.mkdir()
    for tool in Path("/usr/bin").iterdir():
        if not tool.name.startswith("python"):
            (folder / tool.name).symlink_to(tool)
    return folder


@pytest.mark.parametrize("python3", [None, "2.7"])
def test_install_sh_falls_back_to_platform_python(
    built: Path, keys: Keys, tmp_path: Path, python3: str | None
) -> None:
    """Rocky/RHEL 8 has no python3 command unless one was installed, only /usr/libexec/platform-python
    (3.6): install.sh uses it and says so, also when the python3 on PATH is too old. Played in a
    private mount namespace whose /usr/libexec holds only a platform-python (pyenv's 3.6)."""
    python36 = _pyenv_python(6) or _oldest_python()
    if python36 is None:
        pytest.skip("no pyenv python3 under ~/.pyenv/versions to play platform-python")
    if shutil.which("unshare") is None:
        pytest.skip("unshare (util-linux) is needed for a private /usr/libexec")
    site = _site(built, tmp_path)
    bare = _no_python_path(tmp_path)
    if python3 is not None:  # a python3 command that cannot run the installer
        old = sorted((Path.home() / ".pyenv" / "versions").glob(f"{python3}.*"))
        if not old:
            pytest.skip(f"no pyenv python {python3} to play a too-old python3")
        (bare / "python3").symlink_to(old[0] / "bin" / "python")
    script = (
        "mount -t tmpfs airbundle-test /usr/libexec && "
        f"ln -s {python36} /usr/libexec/platform-python && "
        f"PATH={bare} exec sh install.sh --pubkey {keys.pub_path} --inventory cluster.yml --dry-run --offline"
    )
    run = subprocess.run(["unshare", "--mount", "sh", "-c", script], cwd=site, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert "install.sh: using /usr/libexec/platform-python (Python 3." in run.stderr
    assert "the plan:" in run.stdout
    assert (
        Path("/usr/libexec").is_dir() and not Path("/usr/libexec/platform-python").exists()
    )  # host untouched


@pytest.mark.parametrize("python", [None, "2.7"])
def test_install_sh_without_a_usable_python(
    built: Path, keys: Keys, tmp_path: Path, python: str | None
) -> None:
    """No python3 and no platform-python, or one older than 3.6: exit 6 naming what is needed, and no
    installer code runs (nothing unpacked)."""
    site = _site(built, tmp_path)
    bare = _no_python_path(tmp_path)
    if python is not None:
        old = sorted((Path.home() / ".pyenv" / "versions").glob(f"{python}.*"))
        if not old:
            pytest.skip(f"no pyenv python {python} to play a too-old python3")
        (bare / "python3").symlink_to(old[0] / "bin" / "python")
    argv = ["sh", "install.sh", "--pubkey", str(keys.pub_path), "--inventory", "cluster.yml",
            "--workdir", str(site / "work")]  # fmt: skip
    run = subprocess.run(
        argv, cwd=site, env={**os.environ, "PATH": str(bare)}, capture_output=True, text=True
    )
    assert run.returncode == 6, run.stderr
    assert "python3 3.6 or later is required on this node" in run.stderr
    assert not (site / "work").exists()


def test_preflight_compares_each_node_with_the_baseline(
    project, keys: Keys, tmp_path: Path, cache_dir: Path, apt_repos, ssh_cluster
) -> None:
    """A bundle built for a dpkg-status baseline: preflight names the node that lacks something the
    baseline has, and the one that has it older; a node matching it (or newer) passes."""
    from .aptrepo import status_file

    client, nodes = ssh_cluster
    baseline = [("base-files", "12.4", {}), ("extra-tool", "2.0", {})]
    (project.root / "payloads" / "status").write_text(status_file(baseline))
    tail = "  packages: [app, cyc-a]\n  baseline: payloads/status\n"
    site = _debs_site(project, apt_repos, keys, tmp_path, cache_dir, nodes, tail)
    states = [baseline, baseline[:1], [("base-files", "12.3", {}), ("extra-tool", "2.0", {})]]
    states += [[("base-files", "12.4", {}), ("extra-tool", "2.1", {})]] * (len(nodes) - 3)
    roots = _status_roots(tmp_path, nodes, states)
    run = _only_in_roots(site, keys, client, "preflight", roots)
    out = run.stdout + run.stderr
    assert run.returncode == 6, out
    lacking = [
        line for line in out.splitlines() if "lacks 1 package(s) the bundle's debs.baseline has" in line
    ]
    assert len(lacking) == 1 and nodes[1].name in lacking[0] and "extra-tool 2.0" in lacking[0]
    older = [
        line for line in out.splitlines() if "has base-files 12.3, older than the baseline's 12.4" in line
    ]
    assert len(older) == 1 and nodes[2].name in older[0]
    assert "Traceback" not in out


def test_a_quoted_port_is_read_as_rke_reads_it(tmp_path: Path) -> None:
    from bundler.installer.inventory import load_inventory

    path = tmp_path / "cluster.yml"
    path.write_text('nodes:\n  - {address: a, user: u, role: [worker], port: "2222"}\n')
    assert load_inventory(path)[0].port == 2222
