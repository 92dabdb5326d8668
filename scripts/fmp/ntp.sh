#!/bin/sh
# One clock for the cluster (chrony): the node NTP_SERVER_NODE serves time to NTP_ALLOW (a
# subnet) on the inter-node interface NTP_INTERFACE; every other node takes its time from it
# over that interface. chrony restarts only when its file changed.
set -eu
. "$BUNDLE_DIR/files/fmp/lib.sh"
need NTP_SERVER_NODE NTP_INTERFACE AIRBUNDLE_NODES
if [ "$NODE_NAME" = "$NTP_SERVER_NODE" ]; then
    need NTP_ALLOW
    conf=$(printf 'local stratum 10\nallow %s\nbinddevice %s\n' "$NTP_ALLOW" "$NTP_INTERFACE")
else
    server=$(node_field "$NTP_SERVER_NODE" 2)
    [ -n "$server" ] || { echo "NTP_SERVER_NODE $NTP_SERVER_NODE is not a node of the inventory" >&2; exit 2; }
    conf=$(printf 'server %s iburst\nbindacqdevice %s\n' "$server" "$NTP_INTERFACE")
fi
if printf '%s\n' "$conf" | put 0644 /etc/chrony/conf.d/airbundle.conf; then
    systemctl restart chrony
fi
