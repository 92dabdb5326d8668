"""The load balancers' files (bundler/installer/lbconfig.py), checked by the real haproxy and keepalived.

Each rendered file goes through the tool that will read it on the node (``haproxy -c -f``,
``keepalived --config-test -f``), as the installer does there before a file lands.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from bundler.installer import lbconfig
from bundler.installer.inventory import Endpoint, Node

LBS = [Node(f"10.0.0.{i}", "root", ("loadbalancer",), hostname_override=f"lb{i}") for i in (5, 6)]
CPS = [Node(f"10.0.0.{i}", "root", ("controlplane", "etcd"), hostname_override=f"cp{i}") for i in (1, 2, 3)]
VIP = Endpoint("10.0.0.100", 6443)


def _host_interface() -> str:
    """A non-loopback interface of this machine (keepalived refuses lo and unknown ones)."""
    out = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout
    names = [line.split(":")[1].strip().split("@")[0] for line in out.splitlines()]
    usable = [n for n in names if n != "lo"]
    if not usable:
        pytest.skip("no network interface but lo here")
    return usable[0]


def _keepalived_test(path: Path) -> tuple[int, str]:
    done = subprocess.run(["keepalived", "--config-test", "-f", str(path)], capture_output=True, text=True)
    return done.returncode, (done.stdout + done.stderr).strip()


def test_haproxy_cfg_forwards_the_vip_port_to_every_api_server_and_haproxy_accepts_it(tmp_path: Path) -> None:
    text = lbconfig.haproxy_cfg(VIP, CPS, "fmp-k8s 24.06.0")
    assert "    bind *:6443\n    mode tcp\n" in text
    for node in CPS:
        assert f"    server {node.name} {node.address}:6443 check\n" in text
    assert "option httpchk GET /healthz" in text and "http-check expect status 200" in text
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(text)
    done = subprocess.run(["haproxy", "-c", "-f", str(cfg)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_keepalived_conf_master_on_the_first_backup_on_the_others_and_keepalived_accepts_it(
    tmp_path: Path,
) -> None:
    iface = _host_interface()
    first = lbconfig.keepalived_conf(VIP, LBS, LBS[0], iface, "b 1")
    second = lbconfig.keepalived_conf(VIP, LBS, LBS[1], iface, "b 1")
    assert "state MASTER" in first and "priority 101" in first
    assert "state BACKUP" in second and "priority 100" in second
    for text in (first, second):
        assert f"interface {iface}\n" in text and "        10.0.0.100\n" in text
        assert f'script "{lbconfig.CHECK_SCRIPT}"' in text and "enable_script_security" in text
        # the same router id and password on both peers, and on every re-run (nothing to rewrite)
        assert f"virtual_router_id {lbconfig.router_id(VIP, LBS)}\n" in text
        assert f"auth_pass {lbconfig.auth_pass(VIP, LBS)}\n" in text
        conf = tmp_path / "keepalived.conf"
        conf.write_text(text)
        code, said = _keepalived_test(conf)
        # 2.2.7 (Debian 12) ends its check with SIGTERM whatever it found (keepalived#2587): a clean
        # check prints nothing
        assert code in (0, -15) and said == "", said
    assert lbconfig.keepalived_conf(VIP, LBS, LBS[0], iface, "b 1") == first
    assert 1 <= lbconfig.router_id(VIP, LBS) <= 255 and len(lbconfig.auth_pass(VIP, LBS)) == 8
    other = Endpoint("10.0.0.101", 6443)
    assert (lbconfig.router_id(other, LBS), lbconfig.auth_pass(other, LBS)) != (
        lbconfig.router_id(VIP, LBS),
        lbconfig.auth_pass(VIP, LBS),
    )


def test_keepalived_itself_refuses_what_the_installer_must_not_land(tmp_path: Path) -> None:
    """What the node-side check relies on: keepalived names a bad interface or keyword."""
    conf = tmp_path / "keepalived.conf"
    conf.write_text(lbconfig.keepalived_conf(VIP, LBS, LBS[0], "no-such-if0", "b 1"))
    code, said = _keepalived_test(conf)
    assert code != 0 and "no-such-if0" in said


def test_the_check_script_asks_the_api_through_haproxy_and_the_vip() -> None:
    text = lbconfig.check_script(Endpoint("10.0.0.100", 8443))
    assert text.startswith("#!/bin/sh\n")
    assert "https://127.0.0.1:8443/" in text and "https://10.0.0.100:8443/" in text
    assert 'grep -qF " 10.0.0.100/"' in text  # 10.0.0.1000 is no match
    done = subprocess.run(["sh", "-n"], input=text, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize(
    ("route", "interface"),
    [
        ("10.0.0.100 dev eth0 src 10.0.0.5 uid 0 \\    cache ", "eth0"),
        ("local 127.0.0.195 dev lo table local src 127.0.0.1 uid 0 \\    cache <local> ", None),  # no link
        ("10.9.0.100 via 10.0.0.1 dev eth0 src 10.0.0.5 uid 0 \\    cache ", None),  # another subnet
        ("", None),
    ],
)
def test_the_interface_comes_from_ip_route_get(route: str, interface: str | None) -> None:
    assert lbconfig.interface_of(route) == interface


def test_a_node_holding_the_vip_already_names_the_interface_it_holds_it_on() -> None:
    """On a re-run the MASTER holds the VIP: route get says ``local ... dev lo``; ip addr says where."""
    addresses = (
        "1: lo    inet 127.0.0.1/8 scope host lo\\       valid_lft forever preferred_lft forever\n"
        "2: lan0    inet 10.0.0.5/24 scope global lan0\\       valid_lft forever\n"
        "2: lan0    inet 10.0.0.100/32 scope global lan0\\       valid_lft forever\n"
    )
    route = "local 10.0.0.100 dev lo table local src 10.0.0.100 uid 0 \\    cache <local> "
    assert lbconfig.interface_of(route, addresses, "10.0.0.100") == "lan0"
    assert lbconfig.interface_of(route, addresses, "10.0.0.10") is None


def test_port_6443_is_refused_only_where_haproxy_shares_a_node_with_an_api_server() -> None:
    stacked = [Node(n.address, "root", ("controlplane", "etcd", "loadbalancer"), hostname_override=n.name)
               for n in CPS]  # fmt: skip
    problem = lbconfig.port_problem(stacked, VIP)
    assert problem is not None
    assert "cp1, cp2, cp3" in problem and "write vip: 10.0.0.100:8443" in problem
    assert lbconfig.port_problem(stacked, Endpoint("10.0.0.100", 8443)) is None
    assert lbconfig.port_problem([*LBS, *CPS], VIP) is None  # dedicated load balancers: 6443 is free
    assert lbconfig.port_problem(CPS, VIP) is None  # no load balancer of ours: the site's own
    assert lbconfig.balancers([*CPS, *LBS]) == LBS and lbconfig.control_planes([*LBS, *CPS]) == CPS


def test_a_vip_that_cannot_be_one_is_refused() -> None:
    lbs = [Node("10.0.0.5", "root", ("loadbalancer",), hostname_override="lb1"),
           Node("10.0.0.11", "root", ("controlplane", "etcd"), hostname_override="cp1")]  # fmt: skip
    assert lbconfig.address_problem(lbs, Endpoint("10.0.0.100", 6443)) is None
    assert "is node lb1's own address" in (lbconfig.address_problem(lbs, Endpoint("10.0.0.5", 6443)) or "")
    assert "is node cp1's own address" in (lbconfig.address_problem(lbs, Endpoint("10.0.0.11", 6443)) or "")
    for odd in ("0.0.0.0", "224.0.0.18", "255.255.255.255"):
        assert "not an address a host can hold" in (lbconfig.address_problem(lbs, Endpoint(odd, 6443)) or "")
    assert "port 22 is sshd's" in (lbconfig.address_problem(lbs, Endpoint("10.0.0.100", 22)) or "")
    assert "port 2379 is etcd's" in (lbconfig.address_problem(lbs, Endpoint("10.0.0.100", 2379)) or "")
    # the site's own load balancer (no loadbalancer node): its ports are its business
    assert lbconfig.address_problem(lbs[1:], Endpoint("10.0.0.100", 22)) is None


def test_an_interface_name_a_node_invents_never_reaches_keepalived() -> None:
    assert lbconfig.interface_of("10.0.0.100 dev eth0}vrrp_script{ src 10.0.0.5\n", "", "10.0.0.100") is None
    assert lbconfig.interface_of("", "2: eth0}x inet 10.0.0.100/24 scope global\n", "10.0.0.100") is None
    assert lbconfig.interface_of("10.0.0.100 dev ens3 src 10.0.0.5 uid 0\n", "", "10.0.0.100") == "ens3"
