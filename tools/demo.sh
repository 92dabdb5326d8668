#!/usr/bin/env bash
# The whole airbundle journey, offline: keygen → build → verify → inspect, then the
# same checks with stock tools, a tamper attempt, and a rebuild that is byte-identical.
# Run it with `make demo` (which installs airbundle into .venv first).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
OUT=demo-out
PORT=18731
rm -rf "$OUT" && mkdir -p "$OUT"

step() {
    if [ -n "${NO_COLOR:-}" ] || [ ! -t 1 ]; then printf '\n== %s\n' "$*"; else printf '\n\033[1m== %s\033[0m\n' "$*"; fi
}

if python3 - "$PORT" <<'PY'
import socket, sys
s = socket.socket()
try:
    s.bind(("127.0.0.1", int(sys.argv[1])))
except OSError:
    sys.exit(0)
sys.exit(1)
PY
then
    echo "demo: 127.0.0.1:$PORT is busy; stop whatever listens there and run 'make demo' again" >&2
    exit 1
fi

step "a stand-in upstream on 127.0.0.1:$PORT serves the pinned rke binary"
python3 -m http.server --bind 127.0.0.1 "$PORT" --directory tools/demo-upstream >"$OUT/upstream.log" 2>&1 &
UPSTREAM=$!
trap 'kill $UPSTREAM 2>/dev/null || true' EXIT
for _ in $(seq 50); do
    python3 -c "import socket; socket.create_connection(('127.0.0.1', $PORT), 0.2)" 2>/dev/null && break
    sleep 0.1
done

step "airbundle keygen"
airbundle keygen --out "$OUT/release"

step "airbundle build manifests/demo.yaml"
BUNDLE=$(airbundle build manifests/demo.yaml --key "$OUT/release.key" -o "$OUT/dist" --cache "$OUT/cache")
echo "$BUNDLE"

step "airbundle verify"
airbundle verify "$BUNDLE" --pubkey "$OUT/release.pub"

step "airbundle inspect"
airbundle inspect "$BUNDLE" --pubkey "$OUT/release.pub"

step "the same checks with stock tools only (sha256sum, tar, ssh-keygen, sed)"
(cd "$OUT/dist" && sha256sum -c "$(basename "$BUNDLE").sha256")
RECIPE=$(sed -n '/<!-- stock-verify -->/,/^```$/p' README.md | sed '1,2d;$d')
mkdir -p "$OUT/site"
(cd "$OUT/site" && BUNDLE="$ROOT/$BUNDLE" PUB="$ROOT/$OUT/release.pub" sh -eu -c "$RECIPE")

step "a tampered copy is refused (exit 4 names the member)"
cp "$BUNDLE" "$OUT/tampered.tar"
python3 - "$OUT/tampered.tar" <<'PY'
import sys
data = bytearray(open(sys.argv[1], "rb").read())
at = data.index(b"rke version") + 4
data[at] ^= 1
open(sys.argv[1], "wb").write(bytes(data))
PY
set +e
airbundle verify "$OUT/tampered.tar" --pubkey "$OUT/release.pub"
echo "exit code: $?"
set -e

step "a rebuild from the same manifest and cache is byte-identical"
AGAIN=$(airbundle build manifests/demo.yaml --key "$OUT/release.key" -o "$OUT/again" --cache "$OUT/cache" 2>/dev/null)
sha256sum "$BUNDLE" "$AGAIN"
cmp "$BUNDLE" "$AGAIN" && echo "identical"

step "done: the bundle is $BUNDLE"
