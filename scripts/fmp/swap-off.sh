#!/bin/sh
# Swap off now and for good (the kubelet refuses to run with swap): swapoff -a when any swap is
# on, and every swap line of /etc/fstab commented out. Idempotent.
set -eu
. "$BUNDLE_DIR/files/fmp/lib.sh"
if [ -n "$(swapon --noheadings --show=NAME 2>/dev/null)" ]; then
    swapoff -a
    echo "swap: turned off"
fi
if [ -f "$ROOT/etc/fstab" ]; then
    awk '!/^[[:space:]]*#/ && $3 == "swap" { print "# swap off for Kubernetes (airbundle): " $0; next } { print }' \
        "$ROOT/etc/fstab" | put 0644 /etc/fstab || echo "fstab: no swap entry left"
fi
