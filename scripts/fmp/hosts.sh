#!/bin/sh
# The same node names everywhere: a block of /etc/hosts, "ADDRESS NAME" for every node of the
# inventory (AIRBUNDLE_NODES, from the installer), between markers; the rest of the file is kept.
set -eu
. "$BUNDLE_DIR/files/fmp/lib.sh"
need AIRBUNDLE_NODES
{
    [ ! -f "$ROOT/etc/hosts" ] || sed '/^# BEGIN airbundle nodes$/,/^# END airbundle nodes$/d' "$ROOT/etc/hosts"
    echo "# BEGIN airbundle nodes"
    printf '%s\n' "$AIRBUNDLE_NODES" | awk '{ print $2 "\t" $1 }'
    echo "# END airbundle nodes"
} | put 0644 /etc/hosts || echo "/etc/hosts: up to date"
