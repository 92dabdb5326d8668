#!/bin/sh
# The vendor guide's admin account: FMP_ADMIN_USER with a home, a shell and passwordless sudo
# (/etc/sudoers.d/airbundle-USER, 0440, checked with visudo where there is one). Idempotent.
set -eu
. "$BUNDLE_DIR/files/fmp/lib.sh"
need FMP_ADMIN_USER
user=$FMP_ADMIN_USER
if grep -q "^$user:" "$ROOT/etc/passwd"; then
    echo "user $user: present"
else
    useradd ${ROOT:+--prefix "$ROOT"} --create-home --shell /bin/bash "$user"
    echo "user $user: added"
fi
sudoers=/etc/sudoers.d/airbundle-$user
if printf '%s ALL=(ALL:ALL) NOPASSWD: ALL\n' "$user" | put 0440 "$sudoers"; then
    if command -v visudo >/dev/null 2>&1 && ! visudo -cf "$ROOT$sudoers" >/dev/null; then
        rm -f "$ROOT$sudoers"
        echo "$sudoers: visudo refuses it; removed" >&2
        exit 1
    fi
fi
