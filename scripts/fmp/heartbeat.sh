#!/bin/sh
# The worker nodes' virtual IP with heartbeat, as the vendor guide sets it up: the kernel may
# bind the VIP before it holds it (ip_nonlocal_bind), the same authkeys everywhere (0600, from
# the secret HA_AUTH_KEY, never printed), ha.cf per node (its interface HA_INTERFACE, its
# peers: the other workers) and haresources, the same on every node (the preferred node
# HA_PREFERRED and HA_VIP as ADDRESS/PREFIX/INTERFACE). heartbeat restarts only when one of
# them changed. The heartbeat package
# itself comes with the bundle's packages.
set -eu
. "$BUNDLE_DIR/files/fmp/lib.sh"
need HA_AUTH_KEY HA_INTERFACE HA_PREFERRED HA_VIP AIRBUNDLE_NODES
changed=
if printf 'net.ipv4.ip_nonlocal_bind = 1\n' | put 0644 /etc/sysctl.d/60-airbundle-heartbeat.conf; then
    sysctl -p "$ROOT/etc/sysctl.d/60-airbundle-heartbeat.conf"
fi
printf 'auth 1\n1 sha1 %s\n' "$HA_AUTH_KEY" | put 0600 /etc/ha.d/authkeys && changed=1
{
    printf 'logfacility local0\nkeepalive 2\ndeadtime 30\nwarntime 10\ninitdead 120\nudpport 694\n'
    for peer in $(nodes_with worker); do
        [ "$peer" = "$NODE_NAME" ] || printf 'ucast %s %s\n' "$HA_INTERFACE" "$(node_field "$peer" 2)"
    done
    printf 'auto_failback on\n'
    for peer in $(nodes_with worker); do printf 'node %s\n' "$peer"; done
} | put 0644 /etc/ha.d/ha.cf && changed=1
printf '%s IPaddr::%s\n' "$HA_PREFERRED" "$HA_VIP" | put 0644 /etc/ha.d/haresources && changed=1
if [ -n "$changed" ]; then
    systemctl restart heartbeat
else
    echo "heartbeat: up to date"
fi
