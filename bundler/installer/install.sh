#!/bin/sh
# airbundle site installer. The README's first command checks this file with stock tools and
# runs that checked copy:
#   sh "$dir/install.sh" --bundle BUNDLE --pubkey allowed_signers --inventory cluster.yml
# It checks everything again itself before any code from the bundle runs (defence in depth):
#   - the bundle's bytes: one .tar, or exactly the parts its signed NAME-VERSION.parts.json names,
#     in that order (the parts file's signature checked first);
#   - the listing: regular files only, no name twice, lock.json and lock.json.sig first;
#   - lock.json's signature, with ssh-keygen -Y verify and the --pubkey files' own options
#     (valid-after, valid-before, namespaces; cert-authority is refused);
#   - install.sh and every installer file, extracted (first occurrence only) into a fresh private
#     folder and checked there with sha256sum -c against the lock.
# Then it runs those very copies with python3 (or platform-python, 3.6+) in isolated mode (no site-packages, no pip, no
# network); that installer verifies every other member before unpacking anything.
# Exit codes: 2 usage or key file, 3 trust refused, 4 integrity (a bad or hostile bundle).
set -eu

die() { code=$1; shift; echo "install.sh: $*" >&2; exit "$code"; }
usage() {  # static text: --help runs nothing from the bundle
    cat <<'USAGE'
usage: sh install.sh --pubkey FILE --inventory cluster.yml [--bundle BUNDLE] [options]

Checks the bundle with stock tools (tar, ssh-keygen -Y verify with your key file, sha256sum),
then runs the installer it carries, which verifies every member, unpacks the bundle and
installs it on the inventory's nodes. Run this file as the README's first command does: only
after stock tools have checked it.

  --pubkey FILE      the publisher's key: your allowed_signers file or a .pub (repeatable)
  --inventory FILE   Rancher RKE cluster.yml naming the nodes
  --bundle FILE      the bundle .tar or NAME-VERSION.parts.json [the one beside this script]
  --values FILE      site variables (YAML) for the staged steps
  --workdir DIR      where to unpack [/var/lib/airbundle]
  --dry-run          the go/no-go check: verify, ask every node, show the plan; change nothing;
                     exit as the install would (--offline: ask no node; --json: the plan as JSON)
  --yes              install although the inventory's topology has problems (too few workers,
                     an even or too small etcd count, a role nobody has); else a terminal asks
  -q, -v             errors only / also each node's log (anywhere on the line); logs: WORKDIR/logs
  --resume, --only PHASE, --allow-downgrade, --allow-expired, --ssh-config FILE, --apt-root DIR,
  --images-mode MODE, --registry HOST:PORT, --registry-node NAME and the other --registry-*
  options: see the README, "3. Install" and "Images through a site registry"

examples:
  sh install.sh --bundle fmp-rke-23.12.1.tar --pubkey allowed_signers --inventory cluster.yml --dry-run
  sh install.sh --bundle fmp-rke-23.12.1.tar --pubkey allowed_signers --inventory cluster.yml --values site.yaml

exit codes: 0 done, 2 usage or input file, 3 trust refused, 4 integrity, 6 install failed
USAGE
}

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
        -h | --help) usage; exit 0 ;;
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
# A FIFO or device would make tar wait forever (or read without end): only a regular file is a bundle.
[ -f "$bundle" ] || die 2 "$bundle: no such bundle, or not a regular file (a FIFO, folder or device); give the bundle's .tar or .parts.json"
for tool in tar ssh-keygen sha256sum sed grep sort uniq cut find; do
    command -v "$tool" >/dev/null 2>&1 || die 6 "$tool is required on this node"
done
# The installer needs Python 3.6 or later: python3 when it is one, else Rocky/RHEL 8's stock
# platform-python (that system has no python3 command unless it was installed).
python=
tried=
for candidate in "$(command -v python3 2>/dev/null || true)" /usr/libexec/platform-python; do
    [ -n "$candidate" ] && [ -x "$candidate" ] || continue
    if pyversion=$("$candidate" -I -S -c 'import sys; print("%d.%d.%d" % sys.version_info[:3]); sys.exit(sys.version_info < (3, 6))' 2>/dev/null); then
        python=$candidate
        break
    fi
    tried="$tried $candidate${pyversion:+ (Python $pyversion)}"
done
[ -n "$python" ] || die 6 "python3 3.6 or later is required on this node${tried:+ (found:$tried, too old or not working)}; install it (on Rocky/RHEL 8, /usr/libexec/platform-python also does)"
case " $* " in *" -q "* | *" --quiet "*) ;; *) echo "install.sh: using $python (Python $pyversion)" >&2 ;; esac

umask 077
work=$(mktemp -d "${TMPDIR:-/tmp}/airbundle-install.XXXXXX")  # a fresh folder only root can read
trap 'rm -rf "$work"' EXIT
# Ctrl-C: one line and the shell's code for SIGINT. While the installer runs, it says so itself
# (and keeps its journal consistent), so this script only exits with it.
running=0
trap '[ "$running" = 1 ] || echo "install.sh: interrupted" >&2; exit 130' INT TERM

# --- the operator's keys: every --pubkey file as allowed_signers lines for ssh-keygen, read
# exactly as OpenSSH reads them (principals, option names in any case, valid-after,
# valid-before, namespaces), so that nothing here trusts a key more than the operator's file
# does; the Python installer reads the same files by the same rules.
#   ssh-ed25519 KEY [comment]   (a .pub line)   -> airbundle ssh-ed25519 KEY
#   PRINCIPALS [OPTIONS] ssh-ed25519 KEY [comment] -> kept as written
add_signers() {
    [ -f "$1" ] && [ -r "$1" ] || die 2 "$1: cannot read the public key (or it is not a regular file)"
    n=0
    # One kind of file: ssh-keygen skips a bare "ssh-ed25519 KEY" line inside an allowed_signers file.
    if grep -q '^[[:space:]]*ssh-ed25519 ' "$1" && grep -v '^[[:space:]]*\(#\|$\|ssh-\|ecdsa-\|sk-\)' "$1" | grep -q .; then
        die 2 "$1: mixes .pub lines with allowed_signers lines; ssh-keygen skips the .pub lines there: write them as 'airbundle KEY'"
    fi
    while IFS= read -r line || [ -n "$line" ]; do
        n=$((n + 1))
        line=$(printf '%s\n' "$line" | tr '\t\r' '  ' | sed 's/^ *//')
        case "$line" in "" | "#"*) continue ;; esac
        lower=$(printf '%s\n' "$line" | tr 'A-Z' 'a-z')
        case "$lower" in
            *cert-authority*) die 2 "$1:$n: cert-authority keys are not supported; list the signing key itself" ;;
        esac
        case "$line" in
            "ssh-ed25519 "*)
                printf '%s\n' "$line" | sed 's/^\(ssh-ed25519  *[A-Za-z0-9+\/=]*\).*$/airbundle \1/' ;;
            ssh-* | ecdsa-* | sk-*)
                die 2 "$1:$n: unsupported key type (airbundle keys are ssh-ed25519; make one with 'airbundle keygen')" ;;
            *" ssh-ed25519 "*) printf '%s\n' "$line" ;;
            *) die 2 "$1:$n: no ssh-ed25519 key (an allowed_signers line is PRINCIPALS [OPTIONS] ssh-ed25519 KEY)" ;;
        esac >>"$work/allowed_signers"
    done <"$1"
}
while IFS= read -r pub; do
    [ -z "$pub" ] || add_signers "$pub"
done <<EOF
$pubs
EOF
[ -s "$work/allowed_signers" ] || die 2 "--pubkey holds no ssh-ed25519 key"
signed() {  # signed FILE SIG: SIG is a signature over FILE by an allowed key, now, in namespace airbundle
    ssh-keygen -Y verify -f "$work/allowed_signers" -I airbundle -n airbundle -s "$2" \
        <"$1" >/dev/null 2>"$work/verify.log"
}

# --- the bundle's bytes: the file, or the parts its signed parts file names, in its order (never
# whatever else matches NAME.tar.NNN beside them).
# A part is NAME.tar.NNN with digits only after ".tar." (the installer's own rule): a file named
# NAME.tar.000.tar is a whole bundle of its own, checked as one.
case "$bundle" in
    *.parts.json) index=$bundle ;;
    *.tar.[0-9][0-9][0-9]*)
        case "${bundle##*.tar.}" in
            *[!0-9]*) index="" ;;
            *) index="${bundle%.tar.*}.parts.json" ;;
        esac ;;
    *) index="" ;;
esac
if [ -n "$index" ]; then
    [ -f "$index" ] || die 4 "$index is missing; the parts of a bundle are read only as their signed parts file lists them"
    [ -f "$index.sig" ] || die 3 "$index.sig is missing; unsigned parts are never trusted"
    signed "$index" "$index.sig" \
        || die 3 "$index: the signature does not verify with the given --pubkey: $(cat "$work/verify.log")"
    folder=$(dirname "$index")
    base=$(basename "$index" .parts.json)
    sed -n 's/^  {"name": "\([^"]*\)".*$/\1/p' "$index" >"$work/parts"
    [ -s "$work/parts" ] || die 4 "$index lists no parts"
    while IFS= read -r part; do
        case "$part" in "$base".tar.[0-9][0-9][0-9]*) ;; *) die 4 "$index: unsafe part name $part" ;; esac
        case "${part#"$base".tar.}" in *[!0-9]*) die 4 "$index: unsafe part name $part" ;; esac
        [ -f "$folder/$part" ] || die 4 "part $part is missing (looked in $folder)"
    done <"$work/parts"
    # Each part as signed (one more read of the parts; it binds the stream to this parts file).
    sed -n 's/^  {"name": "\([^"]*\)", "sha256": "\([0-9a-f]\{64\}\)".*$/\2  \1/p' "$index" >"$work/parts.sha256"
    (cd "$folder" && sha256sum -c --quiet "$work/parts.sha256" >"$work/sums.log" 2>&1) \
        || die 4 "$index: a part does not match it ($(grep -v ': OK$' "$work/sums.log" | tr '\n' ' ')); copy it again"
fi
bundle_tar() {  # bundle_tar TAR-OPTIONS...: GNU tar over the bundle's bytes
    if [ -n "$index" ]; then
        while IFS= read -r part; do cat "$folder/$part"; done <"$work/parts" | tar -f - "$@"
    else
        tar -f "$bundle" "$@"
    fi
}

# --- an uncompressed POSIX tar: GNU tar would quietly decompress a gzip, xz or zstd file, which
# airbundle never writes (and which would let a small file declare huge members).
if [ -n "$index" ]; then first="$folder/$(sed -n 1p "$work/parts")"; else first=$bundle; fi
[ "$(head -c 262 "$first" | tail -c 5)" = ustar ] \
    || die 4 "$bundle: not an uncompressed POSIX tar (an airbundle bundle is one; was it compressed or is it another file?)"

# --- the listing: regular files only, each name once, lock.json and lock.json.sig first.
bundle_tar --numeric-owner -tv >"$work/listing" 2>"$work/tar.log" \
    || die 4 "$bundle: not a readable tar: $(cat "$work/tar.log")"
odd=$(grep -v '^-' "$work/listing" | head -n 1)
[ -z "$odd" ] || die 4 "$bundle: a member is not a regular file: $odd"
sed 's/^[^ ]* [^ ]*  *[^ ]* [^ ]* [^ ]* //; s|^\(\./\)*||' "$work/listing" >"$work/names"
# "SIZE NAME" as each header declares it: what extracting a member would write
tr -s ' ' <"$work/listing" | cut -d' ' -f3 | paste -d' ' - "$work/names" >"$work/sizes"
twice=$(sort "$work/names" | uniq -d | head -n 1)
[ -z "$twice" ] || die 4 "$bundle: $twice is in the bundle more than once; do not install this bundle"
[ "$(sed -n 1p "$work/names")" = lock.json ] \
    || die 4 "$bundle: the first member is not lock.json; this is not an airbundle bundle"
[ "$(sed -n 2p "$work/names")" = lock.json.sig ] \
    || die 3 "$bundle: lock.json.sig is missing after lock.json; unsigned bundles are never trusted"
# Nothing is written before its size is known to be sane: the lock at most 16 MiB (the
# installer's own limit), its signature at most 64 KiB.
size=$(sed -n '1s/ .*//p' "$work/sizes")
[ "$size" -le 16777216 ] || die 4 "$bundle: lock.json is $size bytes, over the 16777216-byte limit; do not install this bundle"
size=$(sed -n '2s/ .*//p' "$work/sizes")
[ "$size" -le 65536 ] || die 4 "$bundle: lock.json.sig is $size bytes, over the 65536-byte limit; do not install this bundle"

# --- the signature over lock.json (the first and only copy).
bundle_tar -x --occurrence=1 -C "$work" lock.json lock.json.sig 2>"$work/tar.log" \
    || die 4 "$bundle: cannot read lock.json: $(cat "$work/tar.log")"
signed "$work/lock.json" "$work/lock.json.sig" \
    || die 3 "$bundle: the signature does not verify with the given --pubkey: $(cat "$work/verify.log")"

# --- install.sh and the installer: extracted into a fresh folder, checked there, run from there.
sed -n '/^    {"kind": "installer"/s/.*"path": "\([^"]*\)", "sha256": "\([0-9a-f]*\)".*/\2  \1/p' \
    "$work/lock.json" >"$work/installer.sha256"
cut -c67- "$work/installer.sha256" >"$work/installer.names"
grep -qx 'installer/run.py' "$work/installer.names" \
    || die 4 "$bundle: lock.json lists no installer/run.py; this is not an airbundle bundle"
# Each installer member's header must declare the size the signed lock gives it, before any is written.
sed -n '/^    {"kind": "installer"/s/.*"path": "\([^"]*\)", "sha256": "[0-9a-f]*", "size": \([0-9]*\).*/\2 \1/p' \
    "$work/lock.json" >"$work/installer.sizes"
while IFS= read -r expected; do
    grep -Fxq "$expected" "$work/sizes" \
        || die 4 "$bundle: ${expected#* } is not the size lock.json gives it (${expected%% *} bytes); do not install this bundle"
done <"$work/installer.sizes"
mkdir "$work/b"
bundle_tar -x --occurrence=1 -C "$work/b" --verbatim-files-from -T "$work/installer.names" 2>"$work/tar.log" \
    || die 4 "$bundle: installer members are missing: $(cat "$work/tar.log")"
odd=$(find "$work/b" ! -type d \( ! -type f -o -links +1 \) | head -n 1)
[ -z "$odd" ] || die 4 "$bundle: ${odd#"$work/b/"} is not a regular file"
(cd "$work/b" && sha256sum -c --quiet ../installer.sha256 >"$work/sums.log" 2>&1) \
    || die 4 "$bundle: the installer files do not match lock.json ($(grep -v ': OK$' "$work/sums.log" | tr '\n' ' ')); do not install this bundle"
set +e
running=1
# The installer decides again on its own read of the bundle; it must be the lock checked here.
checked=$(sha256sum "$work/lock.json" | cut -c1-64)
AIRBUNDLE_CHECKED_LOCK=$checked "$python" -I -S "$work/b/installer/run.py" "$@"
code=$?
running=0
set -e
exit "$code"
