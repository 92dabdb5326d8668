"""keepalived + haproxy on a kubeadm cluster's load balancers (bundler/installer/lbsetup.py), for real.

Two load-balancer nodes each live in a network namespace this test makes (``ablb1``, ``ablb2``),
joined by a bridge (``ablb-br``) to this machine's side, where the control planes' API servers
listen: keepalived refuses a loopback interface for VRRP, and a VIP that moves needs a link
between two machines. Each load balancer has its own sshd, its own ``/etc/haproxy`` and
``/etc/keepalived`` (private mount namespace), and the stand-in ``systemctl`` (tests/standins)
first on its PATH, which runs the REAL haproxy and keepalived as systemd would. The API servers
are HTTPS listeners in this process answering ``/healthz`` (a kubeadm stand-in's ``init`` exits
once done and could not keep one running; and haproxy's health check and keepalived's check
script need TLS there, as with the real API server).

What is shown: the VIP answers (TCP and HTTPS) through the MASTER's haproxy to the API servers;
the files land atomically and the operator's earlier file is kept; a re-run with the same
configuration writes and restarts nothing (the stand-in's log); a configuration haproxy refuses
never lands; a VIP that never answers, a missing unit, a VIP off the load balancers' subnet are
clear errors; and, with keepalived's real VRRP between the namespaces, the VIP moves to the
BACKUP when the MASTER's haproxy stops.
"""

from __future__ import annotations

import http.server
import os
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from bundler.installer import lbconfig, lbsetup
from bundler.installer.inventory import Endpoint
from bundler.installer.inventory import Node as InvNode
from bundler.installer.remote import SshOptions

from .nodes import SSH_PORT, Client, Node

STANDINS = Path(__file__).resolve().parent / "standins"
SUBNET = "10.254.191"
BRIDGE = "ablb-br"
VIP = Endpoint(f"{SUBNET}.100", 8443)
LBS = (("ablb1", f"{SUBNET}.11", "lb1"), ("ablb2", f"{SUBNET}.12", "lb2"))
CPS = ((f"{SUBNET}.21", "lb-cp1"), (f"{SUBNET}.22", "lb-cp2"), (f"{SUBNET}.23", "lb-cp3"))


def _ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()} (network namespaces need root)")


class LbNet:
    """A bridge on this machine (the control planes' addresses on it) and one network namespace per
    load balancer, each joined to the bridge by a veth pair whose namespace end is ``lan0``."""

    def __init__(self) -> None:
        self.stop()  # a leftover of a killed run
        _ip("link", "add", BRIDGE, "type", "bridge")
        _ip("addr", "add", f"{SUBNET}.1/24", "dev", BRIDGE)
        for address, _ in CPS:
            _ip("addr", "add", f"{address}/24", "dev", BRIDGE)
        _ip("link", "set", BRIDGE, "up")
        for ns, address, _ in LBS:
            _ip("netns", "add", ns)
            _ip("link", "add", f"{ns}h", "type", "veth", "peer", "name", "lan0", "netns", ns)
            _ip("link", "set", f"{ns}h", "master", BRIDGE)
            _ip("link", "set", f"{ns}h", "up")
            _ip("-n", ns, "addr", "add", f"{address}/24", "dev", "lan0")
            _ip("-n", ns, "link", "set", "lan0", "up")
            _ip("-n", ns, "link", "set", "lo", "up")

    def holder(self) -> str | None:
        """The namespace whose interface holds the VIP now (None: nobody)."""
        for ns, _, _ in LBS:
            out = subprocess.run(
                ["ip", "-n", ns, "-o", "addr", "show"], capture_output=True, text=True
            ).stdout
            if f" {VIP.address}/" in out:
                return ns
        return None

    @staticmethod
    def stop() -> None:
        for ns, _, _ in LBS:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        subprocess.run(["ip", "link", "del", BRIDGE], capture_output=True)


class ApiServer:
    """An HTTPS listener playing a control plane's kube-apiserver: ``/healthz`` says ok, ``/`` its name."""

    def __init__(self, address: str, name: str, cert: Path, key: Path) -> None:
        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = b"ok" if self.path == "/healthz" else name.encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        class Server(http.server.ThreadingHTTPServer):
            allow_reuse_address = True

        self.httpd = Server((address, lbconfig.API_PORT), Handler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(cert), str(key))
        self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class Site:
    """The load balancers (test nodes and their inventory entries), the first control plane, the API."""

    def __init__(self, tmp: Path) -> None:
        self.net = LbNet()
        self.client = Client(tmp / "ssh-client")
        self.bin = tmp / "bin"
        self.bin.mkdir()
        (self.bin / "systemctl").symlink_to(STANDINS / "systemctl-lb")
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                        "-nodes", "-keyout", str(tmp / "api.key"), "-out", str(tmp / "api.crt"), "-days", "1",
                        "-subj", "/CN=kube-apiserver"], check=True, capture_output=True)  # fmt: skip
        self.apis = [ApiServer(a, n, tmp / "api.crt", tmp / "api.key") for a, n in CPS]
        self.nodes: list[Node] = []
        self.state: dict[str, Path] = {}
        for ns, address, name in LBS:
            state = tmp / f"systemd-{name}"
            state.mkdir()
            self.state[name] = state
            env = f"PATH={self.bin}:/usr/sbin:/usr/bin:/sbin:/bin SYSTEMCTL_STANDIN_STATE={state}"
            self.nodes.append(Node(address, name, self.client, docker=False, netns=ns, env=env,
                                   binds=("/etc/haproxy", "/etc/keepalived")))  # fmt: skip
        self.cp = Node(CPS[0][0], CPS[0][1], self.client, docker=False)
        self.nodes.append(self.cp)
        self.lbs = [InvNode(a, "root", ("loadbalancer",), SSH_PORT, hostname_override=n) for _, a, n in LBS]
        self.control = [
            InvNode(a, "root", ("controlplane", "etcd"), SSH_PORT, hostname_override=n) for a, n in CPS
        ]
        self.opts = SshOptions(self.client.config)

    def etc(self, lb: int, path: str) -> Path:
        """A file of load balancer ``lb``'s own /etc/haproxy or /etc/keepalived, seen from here."""
        folder, name = os.path.split(path)
        return self.nodes[lb].binds[folder] / name

    def log(self, lb: int) -> list[str]:
        path = self.state[LBS[lb][2]] / "log"
        return path.read_text().splitlines() if path.exists() else []

    def pids(self, lb: int) -> list[int]:
        out = []
        for path in self.state[LBS[lb][2]].glob("*.pid"):
            try:
                out.append(int(path.read_text().split()[0]))
            except (ValueError, IndexError):
                pass
        return out

    def reset(self) -> None:
        """No haproxy or keepalived running, empty /etc folders and logs, no firewall rule."""
        for i, (ns, _, name) in enumerate(LBS):
            for pid in self.pids(i):
                try:
                    os.kill(pid, 15)
                except OSError:
                    pass
            deadline = time.monotonic() + 10
            while any(_alive(p) for p in self.pids(i)) and time.monotonic() < deadline:
                time.sleep(0.1)
            for item in self.state[name].iterdir():
                item.unlink(missing_ok=True)
            for folder in self.nodes[i].binds.values():
                for item in folder.iterdir():
                    item.unlink(missing_ok=True)
            subprocess.run(["ip", "netns", "exec", ns, "iptables", "-F", "INPUT"], capture_output=True)

    def stop(self) -> None:
        self.reset()
        for api in self.apis:
            api.stop()
        for node in self.nodes:
            node.stop()
        self.net.stop()

    def configure(self, tmp: Path, endpoint: Endpoint = VIP, control: list[InvNode] | None = None,
                  wait: int = 30) -> list:  # fmt: skip
        said: list[str] = []
        results = lbsetup.configure(self.lbs, control or self.control, endpoint, "fmp-k8s 24.06.0", self.opts,
                                    tmp, said.append, wait)  # fmt: skip
        return results


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


@pytest.fixture(scope="module")
def lb_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    for tool in ("haproxy", "keepalived", "curl"):
        if not shutil.which(tool):
            pytest.fail(f"{tool} is not installed; run 'make install' (DEB_PACKAGES)")
    site = Site(tmp_path_factory.mktemp("lb"))
    try:
        yield site
    finally:
        site.stop()


@pytest.fixture
def site(lb_site: Site) -> Iterator[Site]:
    lb_site.reset()
    yield lb_site
    lb_site.reset()


def _get_via_vip(path: str = "/", timeout: float = 3) -> str:
    return requests.get(f"https://{VIP}{path}", verify=False, timeout=timeout).text


def _wait_for(predicate, seconds: float) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.25)
    return predicate()


def test_the_vip_answers_through_haproxy_and_a_rerun_changes_nothing(site: Site, tmp_path: Path) -> None:
    operator = site.etc(0, lbconfig.HAPROXY_CFG)
    operator.write_text("# the operator's own haproxy.cfg\n")
    results = site.configure(tmp_path)
    assert [r.error for r in results] == [None, None], results
    assert results[0].done == ["check_apiserver.sh", "haproxy.cfg", "keepalived.conf", "restarted haproxy",
                               "restarted keepalived"]  # fmt: skip
    for i in (0, 1):
        assert site.etc(i, lbconfig.HAPROXY_CFG).read_text() == lbconfig.haproxy_cfg(VIP, site.control,
                                                                                    "fmp-k8s 24.06.0")  # fmt: skip
        conf = site.etc(i, lbconfig.KEEPALIVED_CONF).read_text()
        assert "interface lan0\n" in conf and ("state MASTER" if i == 0 else "state BACKUP") in conf
        assert oct(site.etc(i, lbconfig.CHECK_SCRIPT).stat().st_mode & 0o777) == "0o755"
        assert not [p for f in site.nodes[i].binds.values() for p in f.iterdir() if p.name.endswith("-new")]
        assert site.log(i) == ["is-active haproxy.service", "enable haproxy.service", "restart haproxy.service",
                               "is-active keepalived.service", "enable keepalived.service",
                               "restart keepalived.service"]  # fmt: skip
    # the operator's file kept once, beside the new one
    assert Path(str(operator) + ".airbundle-orig").read_text() == "# the operator's own haproxy.cfg\n"
    # the MASTER holds the VIP (the BACKUP may have taken it first, when its keepalived started 3 s before:
    # the MASTER's higher priority takes it back)
    assert _wait_for(lambda: site.net.holder() == "ablb1", 15), site.net.holder()
    # real haproxy on the MASTER forwards to the API servers, round robin
    answers = {_get_via_vip() for _ in range(6)}
    assert answers == {n for _, n in CPS}, answers
    assert _get_via_vip("/healthz") == "ok"
    assert (tmp_path / "logs" / "loadbalancer-lb1.log").read_text().startswith("interface lan0\n")

    again = site.configure(tmp_path)
    assert [r.error for r in again] == [None, None]
    assert again[0].done == [] and again[0].skipped == [
        "keepalived + haproxy: configuration unchanged and running"
    ]
    for i in (0, 1):  # nothing restarted: only asked whether they run
        assert site.log(i)[6:] == ["is-active haproxy.service", "is-active keepalived.service"]
    assert Path(str(operator) + ".airbundle-orig").read_text() == "# the operator's own haproxy.cfg\n"


def test_the_vip_moves_to_the_backup_when_the_masters_haproxy_stops(site: Site, tmp_path: Path) -> None:
    results = site.configure(tmp_path)
    assert [r.error for r in results] == [None, None], results
    assert _wait_for(lambda: site.net.holder() == "ablb1", 10)
    subprocess.run(["ssh", "-F", str(site.client.config), "-p", str(SSH_PORT), f"root@{LBS[0][1]}",
                    "systemctl stop haproxy"], check=True, capture_output=True)  # fmt: skip
    # the MASTER's check (curl through its haproxy) fails 3 times 2 s apart: its priority drops below
    # the BACKUP's and keepalived there takes the VIP
    assert _wait_for(lambda: site.net.holder() == "ablb2", 30), site.net.holder()
    assert _get_via_vip() in {n for _, n in CPS}  # served by lb2's haproxy now


def test_a_configuration_haproxy_refuses_never_lands(site: Site, tmp_path: Path) -> None:
    before = "# the operator's own haproxy.cfg\n"
    site.etc(0, lbconfig.HAPROXY_CFG).write_text(before)
    nowhere = [*site.control[:2], InvNode("cp-nowhere.invalid", "root", ("controlplane",), SSH_PORT)]
    results = site.configure(tmp_path, control=nowhere)
    for i, result in enumerate(results):
        assert result.error is not None
        assert (
            f"keepalived + haproxy on {LBS[i][2]}: /etc/haproxy/haproxy.cfg refused by haproxy"
            in result.error
        )
        assert "nothing was changed" in result.error and "cp-nowhere.invalid" in result.error
        assert "Traceback" not in result.error
        assert site.log(i) == []  # nothing restarted, nothing enabled
        left = sorted(p.name for f in site.nodes[i].binds.values() for p in f.iterdir())
        assert left == (["haproxy.cfg"] if i == 0 else []), left  # no new file, no half-written one
    assert site.etc(0, lbconfig.HAPROXY_CFG).read_text() == before


def test_a_keepalived_conf_keepalived_refuses_lands_nothing_not_even_the_good_haproxy_cfg(site: Site) -> None:
    """The node-side script alone (lbsetup.apply_script): keepalived 2.2.7 ends its check with SIGTERM
    whatever it finds, so its output decides; one refused file and none of the three lands."""
    files = [
        (lbconfig.CHECK_SCRIPT, "0755", lbconfig.check_script(VIP)),
        (lbconfig.HAPROXY_CFG, "0644", lbconfig.haproxy_cfg(VIP, site.control, "b 1")),
        (
            lbconfig.KEEPALIVED_CONF,
            "0644",
            "vrrp_instance broken {\n    interface lan0\n    no_such_keyword 1\n}\n",
        ),
    ]
    done = subprocess.run(["ssh", "-F", str(site.client.config), "-p", str(SSH_PORT), f"root@{LBS[0][1]}",
                           lbsetup.apply_script(files)], capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 3, done.stdout + done.stderr
    assert "airbundle-fail=/etc/keepalived/keepalived.conf refused by keepalived" in done.stdout
    assert "no_such_keyword" in done.stdout  # keepalived's own words
    assert [p for f in site.nodes[0].binds.values() for p in f.iterdir()] == []
    assert site.log(0) == []


def test_a_load_balancer_without_haproxy_is_told_where_it_comes_from(site: Site) -> None:
    files = [(lbconfig.HAPROXY_CFG, "0644", lbconfig.haproxy_cfg(VIP, site.control, "b 1"))]
    # /usr/sbin (haproxy, keepalived) left off the PATH: as on a node whose packages lack them
    done = subprocess.run(["ssh", "-F", str(site.client.config), "-p", str(SSH_PORT), f"root@{LBS[0][1]}",
                           "PATH=/usr/bin:/bin; " + lbsetup.apply_script(files)], capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 2, done.stdout + done.stderr
    assert (
        "airbundle-fail=haproxy is not installed here: the packages of the bundle for the loadbalancer role"
        in done.stdout
    )
    assert [p for f in site.nodes[0].binds.values() for p in f.iterdir()] == []


def test_a_vip_that_never_answers_names_the_vip_and_the_load_balancers(site: Site, tmp_path: Path) -> None:
    for ns, _, _ in LBS:  # a firewall on the load balancers in front of the VIP's port
        subprocess.run(["ip", "netns", "exec", ns, "iptables", "-A", "INPUT", "-p", "tcp", "-d", VIP.address,
                        "--dport", str(VIP.port), "-j", "DROP"], check=True)  # fmt: skip
    started = time.monotonic()
    results = site.configure(tmp_path, wait=4)
    assert time.monotonic() - started < 60
    for result in results:
        assert result.error is not None
        assert f"the control-plane endpoint {VIP} did not answer within 4 s from lb-cp1" in result.error
        assert "keepalived + haproxy were set up on lb1, lb2" in result.error
        assert f"the MASTER, lb1, should hold {VIP.address}" in result.error


def test_a_unit_that_is_not_installed_is_refused_like_systemctl(site: Site, tmp_path: Path) -> None:
    (site.state["lb2"] / "units").write_text("")
    results = site.configure(tmp_path)
    assert results[0].error is None or "did not answer" in results[0].error
    error = results[1].error or ""
    assert "keepalived + haproxy on lb2: systemctl enable haproxy failed" in error, error
    assert "Unit file haproxy.service does not exist." in error


def test_a_vip_off_the_load_balancers_subnet_is_refused(site: Site, tmp_path: Path) -> None:
    results = site.configure(tmp_path, endpoint=Endpoint("10.254.192.100", 8443))
    for (_, _, name), result in zip(LBS, results):
        assert (
            result.error is not None
            and f"the VIP 10.254.192.100 is not on a subnet of {name}" in result.error
        )
        assert "give vip: a free address on their subnet" in result.error
    assert site.log(0) == [] and not site.etc(0, lbconfig.HAPROXY_CFG).exists()


def test_a_reset_site_leaves_the_vip_to_nobody(site: Site) -> None:
    """The reset leaves no haproxy behind: the VIP is nobody's (a guard for the tests above)."""
    assert site.net.holder() is None
    with pytest.raises(OSError):
        socket.create_connection((VIP.address, VIP.port), 1).close()


# ---------------------------------------------------------------- through the installer (kubeadm bundle)

from .test_containerd import _build, kube_registry  # noqa: E402, F401 - the kubeadm bundle's registry fixture
from .test_installer import _install, _site  # noqa: E402


def _inventory(vip: str, stacked: bool = False) -> str:
    lines = [f"vip: {vip}", "nodes:"]
    if not stacked:
        lines += [f"  - {{address: {a}, port: {SSH_PORT}, user: root, role: [loadbalancer], hostname_override: {n}}}"
                  for _, a, n in LBS]  # fmt: skip
    role = "[controlplane, etcd, loadbalancer]" if stacked else "[controlplane, etcd]"
    lines += [f"  - {{address: {a}, port: {SSH_PORT}, user: root, role: {role}, hostname_override: {n}}}"
              for a, n in CPS]  # fmt: skip
    lines.append(
        f"  - {{address: {SUBNET}.31, port: {SSH_PORT}, user: root, role: [worker], hostname_override: w1}}"
    )
    return "\n".join(lines) + "\n"


@pytest.fixture
def kube_site(project, keys, tmp_path: Path, cache_dir: Path, kube_registry) -> Path:  # noqa: F811
    reg, _ = kube_registry
    return _site(_build(project, keys, tmp_path, cache_dir, reg.host), tmp_path)


def test_dry_run_lists_keepalived_and_haproxy_per_load_balancer_before_kubeadm(kube_site: Path, keys) -> None:
    (kube_site / "cluster.yml").write_text(_inventory(f"{SUBNET}.100:6443"))  # dedicated: 6443 is free there
    run = _install(kube_site, keys, "--yes", "--dry-run", "--offline")
    assert run.returncode == 0, run.stdout + run.stderr
    plan = run.stdout[run.stdout.index("to do (") :]
    for name, role in (("lb1", "MASTER"), ("lb2", "BACKUP")):
        assert (
            f"{name:<20} configure keepalived ({role} of VIP {SUBNET}.100) + haproxy (:6443 to the API servers)"
        ) in plan, plan
    cluster = plan[plan.index("cluster ") :]
    assert cluster.index("lb2") < cluster.index(
        "here: run containerd's config.toml for the kubelet"
    )  # before kubeadm init
    for _, name in CPS:
        assert f"{name:<20} configure" not in plan


def test_vip_port_6443_on_load_balancing_control_planes_is_refused_before_anything_runs(
    kube_site: Path, keys
) -> None:
    (kube_site / "cluster.yml").write_text(_inventory(f"{SUBNET}.100:6443", stacked=True))
    for extra in (("--dry-run", "--offline"), ()):
        run = _install(kube_site, keys, "--yes", *extra)
        assert run.returncode == 2, run.stdout + run.stderr
        assert (
            f"cluster.yml:1: vip: port 6443 is the API server's own port on lb-cp1, lb-cp2, lb-cp3 "
            "(loadbalancer and controlplane at once): haproxy there cannot listen on it; "
            f"write vip: {SUBNET}.100:8443"
        ) in run.stderr, run.stderr
        assert "Traceback" not in run.stderr
    assert not (kube_site / "work" / "logs").exists()
    (kube_site / "cluster.yml").write_text(_inventory(f"{SUBNET}.100:8443", stacked=True))
    run = _install(kube_site, keys, "--yes", "--dry-run", "--offline")
    assert run.returncode == 0, run.stdout + run.stderr
    assert (
        f"lb-cp1               configure keepalived (MASTER of VIP {SUBNET}.100) + haproxy (:8443"
        in run.stdout
    )


def test_install_configures_the_load_balancers_before_kubeadm_init(site: Site, kube_site: Path, keys) -> None:
    """``install --only cluster``: keepalived + haproxy on lb1 and lb2 first (the VIP answers), then
    kubeadm's bring-up (which stops here at containerd's configuration: lb-cp1 has no containerd)."""
    lines = [f"vip: {VIP}", "nodes:"]
    lines += [f"  - {{address: {a}, port: {SSH_PORT}, user: root, role: [loadbalancer], hostname_override: {n}}}"
              for _, a, n in LBS]  # fmt: skip
    lines.append(f"  - {{address: {CPS[0][0]}, port: {SSH_PORT}, user: root, role: [controlplane, etcd, worker], "
                 f"hostname_override: {CPS[0][1]}}}")  # fmt: skip
    (kube_site / "cluster.yml").write_text("\n".join(lines) + "\n")
    ssh = ("--ssh-config", str(site.client.config))
    run = _install(kube_site, keys, "--yes", "--only", "cluster", *ssh)
    assert run.returncode == 6, run.stdout + run.stderr
    out = run.stdout + run.stderr
    assert "Traceback" not in out
    done = "ok: check_apiserver.sh, haproxy.cfg, keepalived.conf, restarted haproxy, restarted keepalived"
    assert f"lb1                  {done}" in out and f"lb2                  {done}" in out, out
    assert f"{VIP} answers from lb-cp1" in out
    # then the cluster's own bring-up, which stops at once here (lb-cp1 is no containerd node of the test's)
    after = out[out.index(f"{VIP} answers from lb-cp1") :]
    assert "lb-cp1" in after and "containerd" in after, after
    assert _wait_for(lambda: site.net.holder() == "ablb1", 15)
    assert _get_via_vip() in {n for _, n in CPS}
    work = kube_site / "work" / "logs"
    assert (work / "loadbalancer-lb1.log").exists() and "restarted haproxy" in (
        work / "cluster" / "lb1.log"
    ).read_text()
    # the journal has the load balancers done: the next run goes straight to kubeadm init
    again = _install(kube_site, keys, "--yes", "--dry-run", "--offline", *ssh)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "lb1                  nothing to do (1 already there)" in again.stdout, again.stdout
