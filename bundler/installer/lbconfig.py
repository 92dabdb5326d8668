"""What keepalived and haproxy say on a kubeadm cluster's load balancers: the files, rendered.

The layout follows the Kubernetes project's "Options for Software Load Balancing" (kubeadm's
docs/ha-considerations.md, "keepalived and haproxy", run as services on the operating system):
the inventory's ``loadbalancer`` nodes each run haproxy, whose frontend listens on the ``vip:``
port in TCP mode and forwards to every control plane's API server on 6443 (health-checked with
``GET /healthz`` over TLS); and keepalived, which holds the VIP with one VRRP instance: MASTER
on the first load balancer (priority 101), BACKUP on the others (100), and a ``vrrp_script`` that
asks the API through this node's haproxy, so a load balancer whose haproxy or API path fails
drops below the backups and hands the VIP on. The virtual router id and the VRRP password are
derived from the VIP and the load balancers' names: every node renders the same ones, re-runs
render the same files (nothing to rewrite), and two clusters on one subnet differ unless their
VIP and names are the same.

A ``loadbalancer`` node that is also a control plane (keepalived and haproxy stacked on the
control planes) cannot give haproxy the API server's own port 6443: ``port_problem`` says so.
Without any ``loadbalancer`` node the VIP is the site's own load balancer's, and nothing here
applies.

Pure: no I/O. The interface VRRP runs on is found on each node at install time
(``interface_of``: from ``ip -o addr`` and ``ip -o route get VIP`` there); writing, checking and
starting the files is ``lbsetup``. Carried in bundles: python3 3.6, stdlib only.
"""

import hashlib
import re
from typing import List, Optional

from bundler.installer.inventory import Endpoint, Node

API_PORT = 6443  # where kubeadm's API servers listen (its default bind port)
HAPROXY_CFG = "/etc/haproxy/haproxy.cfg"
KEEPALIVED_CONF = "/etc/keepalived/keepalived.conf"
CHECK_SCRIPT = "/etc/keepalived/check_apiserver.sh"
MASTER_PRIORITY, BACKUP_PRIORITY = 101, 100  # as the kubeadm docs: one MASTER, the others BACKUP
# The VRRP script's cadence: a failed check every 2 s, three in a row (6 s) and the MASTER's priority
# drops by 2, below the backups' (the docs' 3 s x 10 leaves the VIP on a dead haproxy for 30 s).
CHECK_INTERVAL, CHECK_FALL, CHECK_RISE, CHECK_WEIGHT = 2, 3, 2, -2


def balancers(nodes: List[Node]) -> List[Node]:
    """The nodes that run keepalived and haproxy (inventory order): those with the loadbalancer role."""
    return [n for n in nodes if n.has("loadbalancer")]


def control_planes(nodes: List[Node]) -> List[Node]:
    """The API servers haproxy forwards to (inventory order)."""
    return [n for n in nodes if n.has("controlplane")]


def port_problem(nodes: List[Node], endpoint: Optional[Endpoint]) -> Optional[str]:
    """Why the VIP's port cannot work (None when it can): a load balancer that is also a control
    plane has its API server on 6443 already, so haproxy there needs another port."""
    if endpoint is None or endpoint.port != API_PORT:
        return None
    stacked = [n for n in balancers(nodes) if n.has("controlplane")]
    if not stacked:
        return None
    return (
        f"vip: port {API_PORT} is the API server's own port on {', '.join(n.name for n in stacked)} "
        f"(loadbalancer and controlplane at once): haproxy there cannot listen on it; write "
        f"vip: {endpoint.address}:8443 (as the Kubernetes docs do for load balancers on the control planes)"
    )


# Ports a cluster node's own services hold (kubeadm's "Ports and Protocols", and sshd): haproxy
# cannot listen on them where it runs.
TAKEN_PORTS = {22: "sshd", 2379: "etcd", 2380: "etcd", 10250: "the kubelet", 10256: "kube-proxy",
               10257: "the controller manager", 10259: "the scheduler"}  # fmt: skip


def address_problem(nodes: List[Node], endpoint: Optional[Endpoint]) -> Optional[str]:
    """Why the VIP cannot be the cluster's endpoint (None when it can): it is a node's own address
    (keepalived would take that address away from it on a BACKUP), not a unicast address, or (where
    the installer sets up haproxy) on a port a node's own service holds."""
    if endpoint is None:
        return None
    owner = next((n for n in nodes if n.address == endpoint.address), None)
    if owner is not None:
        return (
            f"vip: {endpoint.address} is node {owner.name}'s own address; the VIP must be a free address "
            "on the load balancers' subnet that no machine holds"
        )
    first = int(endpoint.address.split(".")[0])
    if first == 0 or first >= 224:
        return (
            f"vip: {endpoint.address} is not an address a host can hold (0.0.0.0/8, multicast or "
            "reserved); give a free unicast address on the load balancers' subnet"
        )
    if balancers(nodes) and endpoint.port in TAKEN_PORTS:
        return (
            f"vip: port {endpoint.port} is {TAKEN_PORTS[endpoint.port]}'s on the cluster's nodes: haproxy "
            f"cannot listen on it; write vip: {endpoint.address}:{API_PORT} (or :8443 on control planes)"
        )
    return port_problem(nodes, endpoint)


def _digest(endpoint: Endpoint, lbs: List[Node]) -> str:
    names = ",".join(n.name for n in lbs)
    return hashlib.sha256(f"airbundle-vrrp\n{endpoint}\n{names}".encode()).hexdigest()


def router_id(endpoint: Endpoint, lbs: List[Node]) -> int:
    """The VRRP virtual router id (1-255), the same on every load balancer of this cluster."""
    return int(_digest(endpoint, lbs)[:8], 16) % 255 + 1


def auth_pass(endpoint: Endpoint, lbs: List[Node]) -> str:
    """The VRRP ``auth_pass`` (8 characters: keepalived uses no more). It travels in clear in every
    VRRP advert and is derived from the inventory: it keeps clusters apart, it is no secret
    (docs/threats.md)."""
    return _digest(endpoint, lbs)[8:16]


_ROUTE_DEV = re.compile(r"\bdev\s+(\S+)")
# Linux interface names (IFNAMSIZ: 15 characters); anything else a node says is not one, and must
# not reach keepalived.conf (a node's answer is not trusted to be well-formed)
_IFNAME = re.compile(r"[A-Za-z0-9_.:-]{1,15}")


def interface_of(route: str, addresses: str = "", vip: str = "") -> Optional[str]:
    """The interface VRRP runs on for ``vip``: the one that holds it already (``ip -o addr``'s
    ``addresses``: this node is the MASTER now), else the one ``ip -o route get VIP`` (``route``)
    names when the VIP is on that interface's own subnet (no ``via`` gateway, not loopback: VRRP
    needs the load balancers and the VIP on one link). None when neither."""
    for line in addresses.splitlines():
        fields = line.split()
        if vip and len(fields) > 3 and fields[2] == "inet" and fields[3].split("/")[0] == vip:
            name = fields[1].split("@")[0]
            return name if _IFNAME.fullmatch(name) else None
    line = route.strip().splitlines()[0] if route.strip() else ""
    found = _ROUTE_DEV.search(line)
    if not found or " via " in f" {line} " or found.group(1) == "lo":
        return None
    return found.group(1) if _IFNAME.fullmatch(found.group(1)) else None


def _server_name(node: Node) -> str:
    # haproxy server names: no spaces; the inventory's names are already [A-Za-z0-9_.-]
    return re.sub(r"[^A-Za-z0-9_.-]", "_", node.name)


def haproxy_cfg(endpoint: Endpoint, control: List[Node], bundle: str) -> str:
    """``/etc/haproxy/haproxy.cfg``: TCP on the VIP port to every control plane's API server."""
    servers = "".join(
        f"    server {_server_name(n)} {n.address}:{API_PORT} check\n" for n in control
    )  # fmt: skip
    return (
        f"# Written by the airbundle installer ({bundle}): the kubeadm control-plane endpoint {endpoint}.\n"
        "# Changes here are replaced at the next install; the operator's earlier file is kept as\n"
        f"# {HAPROXY_CFG}.airbundle-orig.\n"
        "global\n"
        "    log /dev/log local0\n"
        "    log /dev/log local1 notice\n"
        "    daemon\n"
        "\n"
        "defaults\n"
        "    mode tcp\n"
        "    log global\n"
        "    option tcplog\n"
        "    option dontlognull\n"
        "    option redispatch\n"
        "    retries 1\n"
        "    timeout connect 5s\n"
        # watches (kubectl get -w, the controllers' informers) stay open and quiet for minutes;
        # the docs' 20 s would cut them
        "    timeout client 10m\n"
        "    timeout server 10m\n"
        "    timeout check 10s\n"
        "\n"
        "frontend apiserver\n"
        f"    bind *:{endpoint.port}\n"
        "    mode tcp\n"
        "    option tcplog\n"
        "    default_backend apiserverbackend\n"
        "\n"
        "backend apiserverbackend\n"
        "    mode tcp\n"
        "    balance roundrobin\n"
        # the API server's /healthz over TLS (it speaks nothing else); its serving certificate
        # is the cluster CA's, which haproxy does not have: the check trusts the TCP peer only
        "    option httpchk GET /healthz\n"
        "    http-check expect status 200\n"
        "    default-server check-ssl verify none inter 3s fall 3 rise 2\n"
        f"{servers}"
    )


def check_script(endpoint: Endpoint) -> str:
    """``/etc/keepalived/check_apiserver.sh``: the API answers through this node's haproxy (and
    through the VIP while this node holds it), as in the kubeadm docs."""
    local = f"https://127.0.0.1:{endpoint.port}/"
    vip = f"https://{endpoint}/"
    return (
        "#!/bin/sh\n"
        f"# Written by the airbundle installer: keepalived's health check for the VIP {endpoint.address}.\n"
        'errorExit() { echo "*** $*" 1>&2; exit 1; }\n'
        f'curl --silent --max-time 2 --insecure {local} -o /dev/null || errorExit "Error GET {local}"\n'
        f'if ip -o addr show | grep -qF " {endpoint.address}/"; then\n'
        f'    curl --silent --max-time 2 --insecure {vip} -o /dev/null || errorExit "Error GET {vip}"\n'
        "fi\n"
    )


def keepalived_conf(endpoint: Endpoint, lbs: List[Node], node: Node, interface: str, bundle: str) -> str:
    """``/etc/keepalived/keepalived.conf`` of ``node`` (one of ``lbs``): one VRRP instance holding
    the VIP on ``interface``, MASTER on the first load balancer, BACKUP on the others."""
    master = node.name == lbs[0].name
    return (
        f"! Written by the airbundle installer ({bundle}): keepalived holding the VIP {endpoint.address}\n"
        f"! for haproxy on {', '.join(n.name for n in lbs)}. The operator's earlier file is kept as\n"
        f"! {KEEPALIVED_CONF}.airbundle-orig.\n"
        "global_defs {\n"
        f"    router_id {_server_name(node)}\n"
        # the check runs as nobody, and only from root-owned files keepalived checks itself
        "    enable_script_security\n"
        "    script_user nobody\n"
        "}\n"
        "vrrp_script check_apiserver {\n"
        f'    script "{CHECK_SCRIPT}"\n'
        f"    interval {CHECK_INTERVAL}\n"
        f"    weight {CHECK_WEIGHT}\n"
        f"    fall {CHECK_FALL}\n"
        f"    rise {CHECK_RISE}\n"
        "}\n"
        "vrrp_instance airbundle_apiserver {\n"
        f"    state {'MASTER' if master else 'BACKUP'}\n"
        f"    interface {interface}\n"
        f"    virtual_router_id {router_id(endpoint, lbs)}\n"
        f"    priority {MASTER_PRIORITY if master else BACKUP_PRIORITY}\n"
        "    advert_int 1\n"
        "    authentication {\n"
        "        auth_type PASS\n"
        f"        auth_pass {auth_pass(endpoint, lbs)}\n"
        "    }\n"
        "    virtual_ipaddress {\n"
        f"        {endpoint.address}\n"
        "    }\n"
        "    track_script {\n"
        "        check_apiserver\n"
        "    }\n"
        "}\n"
    )


def describe(endpoint: Endpoint, lbs: List[Node], node: Node) -> str:
    """What the plan says it does on ``node`` (``install --dry-run``)."""
    role = "MASTER" if node.name == lbs[0].name else "BACKUP"
    return f"keepalived ({role} of VIP {endpoint.address}) + haproxy (:{endpoint.port} to the API servers)"
