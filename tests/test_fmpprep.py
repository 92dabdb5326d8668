"""The vendor guide's node preparation (scripts/fmp/*.sh) as node steps on loopback nodes, run twice.

Every loopback node is this machine, so each script writes under the node's own FMP_ROOT
(a value per node) and the commands that would change the machine (useradd, swapoff, sysctl,
systemctl, docker run) are stand-ins first on PATH that record their arguments. What this
checks: the files each node gets, with their contents and modes, the commands issued, that the
secret never reaches a log, and that a second run changes nothing and issues nothing. What it
cannot: a real kernel (ip_nonlocal_bind, swap), a running chrony or heartbeat, Rancher itself.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from .conftest import Keys
from .test_installer import _install, _node_site

REPO_SCRIPTS = Path(__file__).resolve().parent.parent / "scripts" / "fmp"
SECRET = "s3cret-never-logged"
# Stand-ins for the commands that change a machine: each records "NAME ARGS" in FMP_ROOT/commands.
STUBS = {
    "useradd": 'echo "useradd $*" >> "$FMP_ROOT/commands"\n'
    'eval "user=\\${$#}"; echo "$user:x:1001:1001::/home/$user:/bin/bash" >> "$FMP_ROOT/etc/passwd"\n',
    "swapon": 'cat "$FMP_ROOT/swaps" 2>/dev/null || true\n',
    "swapoff": 'echo "swapoff $*" >> "$FMP_ROOT/commands"; : > "$FMP_ROOT/swaps"\n',
    "sysctl": 'echo "sysctl $*" >> "$FMP_ROOT/commands"\n',
    "systemctl": 'echo "systemctl $*" >> "$FMP_ROOT/commands"\n',
    "docker": 'case "$1" in\n'
    '  inspect) cat "$FMP_ROOT/rancher" 2>/dev/null || exit 1 ;;\n'
    '  rm) echo "docker $*" >> "$FMP_ROOT/commands"; rm -f "$FMP_ROOT/rancher" ;;\n'
    '  run) echo "docker $*" >> "$FMP_ROOT/commands"; eval "image=\\${$#}"; echo "$image true" > "$FMP_ROOT/rancher" ;;\n'
    "esac\n",
}
# As manifests/fmp-rke.yaml has them: the preparation before the cluster, Rancher after the images.
STEPS = [
    ("admin-user", "all", "when: before-cluster, "),
    ("swap-off", "all", "when: before-cluster, fixes: [swap], "),
    ("hosts", "all", "when: before-cluster, "),
    ("ntp", "all", "when: before-cluster, "),
    ("heartbeat", "worker", "when: before-cluster, "),
    ("rancher", "controlplane", ""),
]


@pytest.fixture
def prep_site(project, keys: Keys, tmp_path: Path, cache_dir: Path, ssh_cluster):
    client, nodes = ssh_cluster
    (project.root / "scripts" / "fmp").mkdir(exist_ok=True)
    for script in REPO_SCRIPTS.glob("*.sh"):
        shutil.copy(script, project.root / "scripts" / "fmp" / script.name)
    steps = "".join(
        f"  - {{name: {name}, script: scripts/fmp/{name}.sh, on: {on}, {when}files: [files/fmp/lib.sh]}}\n"
        for name, on, when in STEPS
    )
    manifest = project.write_manifest(
        "apiVersion: airbundle/v1\nkind: Bundle\nname: fmp-prep\nversion: '1.0'\n"
        "platform: {os: debian, codename: bookworm, arch: amd64}\n"
        "files:\n  - {src: scripts/fmp/lib.sh, dest: fmp/lib.sh}\n"
        f"steps:\n{steps}",
        "fmp-prep.yaml",
    )
    site = _node_site(manifest, keys, tmp_path, cache_dir, nodes)
    stubs, roots = tmp_path / "stubs", tmp_path / "roots"
    stubs.mkdir()
    for name, body in STUBS.items():
        (stubs / name).write_text("#!/bin/sh\n" + body)
        (stubs / name).chmod(0o755)
    for node in nodes:
        etc = roots / node.name / "etc"
        etc.mkdir(parents=True)
        (etc / "passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
        (etc / "fstab").write_text("UUID=1 / ext4 defaults 0 1\n/swapfile none swap sw 0 0\n")
        (etc / "hosts").write_text("127.0.0.1\tlocalhost\n")
        (roots / node.name / "swaps").write_text("/swapfile\n")
    per_node = "".join(f"  {n.name}: {{FMP_ROOT: {roots / n.name}}}\n" for n in nodes)
    (site / "site.yaml").write_text(
        f"PATH: {stubs}:/usr/sbin:/usr/bin:/sbin:/bin\nFMP_ADMIN_USER: fmpadmin\n"
        "NTP_SERVER_NODE: cp-1\nNTP_ALLOW: 127.0.0.0/8\nNTP_INTERFACE: lo\n"
        f"HA_AUTH_KEY: {SECRET}\nHA_INTERFACE: eth1\nHA_PREFERRED: worker-1\nHA_VIP: 10.0.0.100/24/eth1\n"
        "RANCHER_NODE: cp-1\nRANCHER_IMAGE: rancher/rancher:v2.7.9\n"
        f"nodes:\n{per_node}".replace("  worker-2: {", "  worker-2: {HA_INTERFACE: eth2, ")
    )
    return site, client, roots


def _tree(roots: Path) -> dict[str, tuple[str, str, int]]:
    """Every file under the roots: its content, mode and mtime (a rewrite changes the mtime)."""
    return {
        str(p.relative_to(roots)): (p.read_text(), oct(p.stat().st_mode & 0o7777), p.stat().st_mtime_ns)
        for p in sorted(roots.rglob("*"))
        if p.is_file()
    }


def test_node_preparation_writes_the_guides_files_and_a_second_run_changes_nothing(
    prep_site, keys: Keys
) -> None:
    site, client, roots = prep_site
    args = ("--ssh-config", str(client.config), "--values", "site.yaml")
    dry = _install(site, keys, *args, "--dry-run", "--json")
    assert dry.returncode == 0, dry.stdout + dry.stderr
    planned = [a["key"] for p in json.loads(dry.stdout)["phases"] for a in p["actions"]]
    first = _install(site, keys, *args)
    assert first.returncode == 0, first.stdout + first.stderr
    # The preparation ran in the prepare phase, after packages and binaries and before the images
    # and the cluster; Rancher in the steps phase; the journal holds what the dry run planned.
    phases = [ln[3:] for ln in first.stdout.splitlines() if ln.startswith("== ")]
    assert phases.index("binaries") < phases.index("prepare") < phases.index("images") < phases.index("steps")
    journal = json.loads((site / "work" / "state.json").read_text())["done"]
    assert set(journal) == set(planned)
    prepared = {k for k in planned if k.startswith("prepare/")}
    assert prepared == {
        f"prepare/{n}/{s}"
        for n in ("cp-1", "worker-1", "worker-2")
        for s in ("admin-user", "swap-off", "hosts", "ntp")
    } | {"prepare/worker-1/heartbeat", "prepare/worker-2/heartbeat"}
    assert {k for k in planned if k.startswith("steps/")} == {"steps/cp-1/rancher"}
    cp, w1, w2 = roots / "cp-1", roots / "worker-1", roots / "worker-2"
    for root in (cp, w1, w2):
        sudoers = root / "etc/sudoers.d/airbundle-fmpadmin"
        assert sudoers.read_text() == "fmpadmin ALL=(ALL:ALL) NOPASSWD: ALL\n"
        assert sudoers.stat().st_mode & 0o777 == 0o440
        assert "fmpadmin:x:" in (root / "etc/passwd").read_text()
        assert (root / "etc/fstab").read_text().splitlines()[1].startswith("# swap off for Kubernetes")
        hosts = (root / "etc/hosts").read_text()
        assert hosts.startswith("127.0.0.1\tlocalhost\n# BEGIN airbundle nodes\n")
        assert "127.0.0.31\tcp-1\n127.0.0.32\tworker-1\n127.0.0.33\tworker-2\n# END" in hosts
    commands = {r.name: (r / "commands").read_text().splitlines() for r in (cp, w1, w2)}
    assert commands["cp-1"][:2] == [
        f"useradd --prefix {cp} --create-home --shell /bin/bash fmpadmin",
        "swapoff -a",
    ]
    assert (cp / "etc/chrony/conf.d/airbundle.conf").read_text() == (
        "local stratum 10\nallow 127.0.0.0/8\nbinddevice lo\n"
    )
    assert (
        w1 / "etc/chrony/conf.d/airbundle.conf"
    ).read_text() == "server 127.0.0.31 iburst\nbindacqdevice lo\n"
    assert "systemctl restart chrony" in commands["worker-2"]
    # heartbeat on the workers only: the same authkeys (0600) and haresources, ha.cf per node.
    assert not (cp / "etc/ha.d").exists()
    for root in (w1, w2):
        authkeys = root / "etc/ha.d/authkeys"
        assert (
            authkeys.read_text() == f"auth 1\n1 sha1 {SECRET}\n" and authkeys.stat().st_mode & 0o777 == 0o600
        )
        assert (root / "etc/ha.d/haresources").read_text() == "worker-1 IPaddr::10.0.0.100/24/eth1\n"
        assert (
            root / "etc/sysctl.d/60-airbundle-heartbeat.conf"
        ).read_text() == "net.ipv4.ip_nonlocal_bind = 1\n"
        assert "systemctl restart heartbeat" in commands[root.name]
    ha_cf = (w2 / "etc/ha.d/ha.cf").read_text()
    assert "ucast eth2 127.0.0.32\n" in ha_cf and "127.0.0.33" not in ha_cf
    assert ha_cf.endswith("auto_failback on\nnode worker-1\nnode worker-2\n")
    assert "ucast eth1 127.0.0.33\n" in (w1 / "etc/ha.d/ha.cf").read_text()
    # Rancher on cp-1 only, with the guide's ports and volume.
    run = [c for c in commands["cp-1"] if c.startswith("docker run")]
    assert run == [
        "docker run --detach --name rancher --restart=unless-stopped --publish 80:80 --publish 443:443 "
        f"--volume {cp}/opt/rancher:/var/lib/rancher --privileged rancher/rancher:v2.7.9"
    ]
    assert not any(c.startswith("docker") for c in commands["worker-1"])
    # The secret reaches the node's file, never a log or the screen.
    logs = "".join(p.read_text() for p in (site / "work" / "logs").rglob("*") if p.is_file())
    assert SECRET not in logs + first.stdout + first.stderr

    before = _tree(roots)
    (site / "work" / "state.json").unlink()  # the journal forgotten: every step runs again
    second = _install(site, keys, *args)
    assert second.returncode == 0, second.stdout + second.stderr
    assert _tree(roots) == before  # no file rewritten, no command issued (commands unchanged)
    assert "rancher: already running rancher/rancher:v2.7.9" in second.stdout
    assert "heartbeat: up to date" in second.stdout
