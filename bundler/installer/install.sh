#!/bin/sh
# airbundle site installer.
#   tar -xf BUNDLE.tar install.sh && sh install.sh --pubkey PUB --inventory cluster.yml [--values site.yaml]
# Before any code from the bundle runs, this script checks with stock tools that lock.json is
# signed by PUB (ssh-keygen -Y verify) and that the installer files match their SHA-256 in the
# lock (sha256sum); then it runs that installer with python3 in isolated mode (no site-packages,
# no pip, no network), which verifies every other member before unpacking anything.
set -eu

die() { code=$1; shift; echo "install.sh: $*" >&2; exit "$code"; }

here=$(cd "$(dirname "$0")" && pwd)
bundle=""
pubs=""
prev=""
for arg in "$@"; do
    case "$prev" in
        --bundle) bundle=$arg ;;
        --pubkey) pubs="$pubs
$arg" ;;
    esac
    case "$arg" in
        --bundle=*) bundle=${arg#--bundle=} ;;
        --pubkey=*) pubs="$pubs
${arg#--pubkey=}" ;;
    esac
    prev=$arg
done
[ -n "$pubs" ] || die 2 "--pubkey PUB is required (the publisher's key, received out of band)"
if [ -z "$bundle" ]; then
    # The bundle this script was taken from: the one .tar beside it whose first member is
    # lock.json, or the one set of parts (NAME-VERSION.parts.json) beside it.
    for candidate in "$here"/*.parts.json; do
        [ -f "$candidate" ] || continue
        [ -z "$bundle" ] || die 2 "several bundles beside install.sh; name one with --bundle FILE"
        bundle=$candidate
    done
    for candidate in "$here"/*.tar; do
        [ -f "$candidate" ] || continue
        first=$(tar -tf "$candidate" 2>/dev/null | head -n 1) || true
        if [ "$first" = "lock.json" ]; then
            [ -z "$bundle" ] || die 2 "several bundles beside install.sh; name one with --bundle FILE"
            bundle=$candidate
        fi
    done
    [ -n "$bundle" ] || die 2 "no bundle beside install.sh; name it with --bundle FILE"
    set -- --bundle "$bundle" "$@"
fi
for tool in tar ssh-keygen sha256sum sed python3; do
    command -v "$tool" >/dev/null 2>&1 || die 6 "$tool is required on this node"
done

work=$(mktemp -d "${TMPDIR:-/tmp}/airbundle-install.XXXXXX")
trap 'rm -rf "$work"' EXIT INT TERM
# A bundle in media-sized parts is read as one stream: its parts in order (NAME-VERSION.tar.NNN).
case "$bundle" in
    *.parts.json) parts_glob="${bundle%.parts.json}.tar.[0-9][0-9][0-9]*" ;;
    *.tar.[0-9][0-9][0-9]*) parts_glob="${bundle%.tar.*}.tar.[0-9][0-9][0-9]*" ;;
    *) parts_glob="" ;;
esac
untar() {  # untar DIR MEMBER...: extract members from the bundle, whole or in parts
    dir=$1; shift
    if [ -n "$parts_glob" ]; then
        # shellcheck disable=SC2086 # the glob must expand to the parts, in order
        cat $parts_glob | tar -xf - -C "$dir" "$@"
    else
        tar -xf "$bundle" -C "$dir" "$@"
    fi
}
untar "$work" lock.json lock.json.sig 2>/dev/null \
    || die 4 "$bundle: lock.json or lock.json.sig is missing; this is not a signed airbundle bundle"
# allowed_signers: each key line of every PUB under the principal "airbundle" (the installer
# itself then applies valid-after/valid-before and namespaces).
: >"$work/allowed_signers"
printf '%s\n' "$pubs" | while IFS= read -r pub; do
    [ -n "$pub" ] || continue
    [ -r "$pub" ] || die 2 "$pub: cannot read the public key"
    sed -n 's/^[^#]*\(ssh-ed25519 [A-Za-z0-9+\/=]*\).*$/airbundle \1/p' "$pub" >>"$work/allowed_signers"
done
[ -s "$work/allowed_signers" ] || die 2 "--pubkey holds no ssh-ed25519 key"
ssh-keygen -Y verify -f "$work/allowed_signers" -I airbundle -n airbundle -s "$work/lock.json.sig" \
    <"$work/lock.json" >/dev/null 2>"$work/verify.log" \
    || die 3 "$bundle: the signature does not verify with the given --pubkey: $(cat "$work/verify.log")"
sed -n '/^    {"kind": "installer"/s/.*"path": "\([^"]*\)", "sha256": "\([0-9a-f]*\)".*/\2  \1/p' \
    "$work/lock.json" >"$work/installer.sha256"
# shellcheck disable=SC2046 # installer paths have no spaces (the lock's path rules)
untar "$work" $(sed 's/^[0-9a-f]*  //' "$work/installer.sha256") \
    || die 4 "$bundle: installer members are missing"
(cd "$work" && sha256sum -c --quiet installer.sha256 >/dev/null 2>&1) \
    || die 4 "$bundle: the installer files do not match lock.json; do not install this bundle"
set +e
python3 -I -S "$work/installer/run.py" "$@"
code=$?
set -e
exit "$code"
