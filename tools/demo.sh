#!/usr/bin/env bash
# The whole airbundle journey, offline: keygen → build → verify → inspect, then the
# same checks with stock tools, a tamper attempt, a rebuild that is byte-identical,
# the bundle's images loaded into a fresh Docker engine, and the whole install by install.sh
# on a fault-tolerant cluster of five loopback nodes, brought up by the rke stand-in.
# Run it with `make demo` (which installs airbundle and its test tools first; needs root
# to start the demo's own Docker engines).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
OUT=demo-out
PORT=18731
APT_PORT=18732
HUB_PORT=18733
rm -rf "$OUT" && mkdir -p "$OUT"

step() {
    if [ -n "${NO_COLOR:-}" ] || [ ! -t 1 ]; then printf '\n== %s\n' "$*"; else printf '\n\033[1m== %s\033[0m\n' "$*"; fi
}

for port in "$PORT" "$APT_PORT" "$HUB_PORT"; do
    if python3 - "$port" <<'PY'
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as http.server does: TIME_WAIT is no conflict
try:
    s.bind(("127.0.0.1", int(sys.argv[1])))
except OSError:
    sys.exit(0)
sys.exit(1)
PY
    then
        echo "demo: 127.0.0.1:$port is busy; stop whatever listens there and run 'make demo' again" >&2
        exit 1
    fi
done

PIDS=()
ENGINES=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    for dir in "${ENGINES[@]}"; do rm -rf "$dir"; done
}
trap cleanup EXIT

# start_engine NAME: a private dockerd on a unix socket (short path: sockets are limited
# to 107 bytes), no iptables and no bridge; prints its DOCKER_HOST.
start_engine() {
    local dir
    dir=$(mktemp -d "/tmp/ab-demo-$1-XXXX")
    ENGINES+=("$dir")
    dockerd --data-root "$dir/data" --exec-root "$dir/exec" -H "unix://$dir/docker.sock" \
        --pidfile "$dir/pid" --iptables=false --ip-masq=false --bridge=none >"$dir/log" 2>&1 &
    PIDS+=($!)
    for _ in $(seq 150); do
        DOCKER_HOST="unix://$dir/docker.sock" docker info >/dev/null 2>&1 && break
        sleep 0.2
    done
    DOCKER_HOST="unix://$dir/docker.sock" docker info >/dev/null || { cat "$dir/log" >&2; exit 1; }
    ENGINE_HOST="unix://$dir/docker.sock"
}

step "a stand-in upstream on 127.0.0.1:$PORT serves the pinned rke binary"
python3 -m http.server --bind 127.0.0.1 "$PORT" --directory tools/demo-upstream >"$OUT/upstream.log" 2>&1 &
PIDS+=($!)

step "a stand-in Docker Hub on 127.0.0.1:$HUB_PORT: rke's system images and rancher-agent (tiny images)"
mkdir -p "$OUT/hub"
printf 'version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: %s\nhttp:\n  addr: 127.0.0.1:%s\n' \
    "$ROOT/$OUT/hub/data" "$HUB_PORT" >"$OUT/hub/config.yml"
docker-registry serve "$OUT/hub/config.yml" >"$OUT/hub.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do
    python3 -c "import socket; socket.create_connection(('127.0.0.1', $HUB_PORT), 0.2)" 2>/dev/null && break
    sleep 0.1
done
python3 -c "from tests.rke_images import serve_system_images as s
for ref in s('127.0.0.1:$HUB_PORT'): print('  ' + ref)"

step "a stand-in apt repository on 127.0.0.1:$APT_PORT (tiny .debs, InRelease signed by a demo key)"
python3 -m tests.aptrepo "$OUT/apt"
python3 -m http.server --bind 127.0.0.1 "$APT_PORT" --directory "$OUT/apt/repo" >"$OUT/apt.log" 2>&1 &
PIDS+=($!)
ls "$OUT/apt/repo/pool/main"

step "a local Docker engine with two demo images built FROM one busybox base, and a registry image"
start_engine build
export DOCKER_HOST=$ENGINE_HOST
mkdir -p "$OUT/rootfs/bin" && cp "$(command -v busybox)" "$OUT/rootfs/bin/" && ln -sf busybox "$OUT/rootfs/bin/sh"
tar -C "$OUT/rootfs" -c . | docker import - demo/base:1 >/dev/null
for app in web worker; do
    mkdir -p "$OUT/ctx-$app"
    echo "demo $app: ready" >"$OUT/ctx-$app/msg.txt"
    printf 'FROM demo/base:1\nCOPY msg.txt /msg.txt\nCMD ["/bin/sh", "-c", "cat /msg.txt"]\n' >"$OUT/ctx-$app/Dockerfile"
    DOCKER_BUILDKIT=0 docker build -q --network none -t "demo/$app:1" "$OUT/ctx-$app" >"$OUT/build-$app.log" 2>&1 \
        || { cat "$OUT/build-$app.log" >&2; exit 1; }
done
# The registry the installer can run on a node (--registry-node): Debian's build of the CNCF
# distribution registry packed as an image, standing in for registry:2 (nothing can be pulled here).
python3 -c "import docker, types; from tests.engines import registry_image as r
r(types.SimpleNamespace(client=docker.from_env()), 'demo/registry:2')" >/dev/null
docker images --format '{{.Repository}}:{{.Tag}}  {{.ID}}' | grep '^demo/'
for _ in $(seq 50); do
    python3 -c "import socket; socket.create_connection(('127.0.0.1', $PORT), 0.2)" 2>/dev/null && break
    sleep 0.1
done

step "airbundle keygen"
airbundle keygen --out "$OUT/release"

step "airbundle build manifests/demo.yaml (rke's system images through the mirror: rke config --system-images)"
BUNDLE=$(airbundle build manifests/demo.yaml --key "$OUT/release.key" -o "$OUT/dist" --cache "$OUT/cache" \
    --mirror "docker.io=127.0.0.1:$HUB_PORT")
echo "$BUNDLE"

step "airbundle verify"
airbundle verify "$BUNDLE" --pubkey "$OUT/release.pub"

step "airbundle inspect"
airbundle inspect "$BUNDLE" --pubkey "$OUT/release.pub"

step "the same checks with stock tools only (sha256sum, tar, ssh-keygen, sed)"
(cd "$OUT/dist" && sha256sum -c "$(basename "$BUNDLE").sha256")
RECIPE=$(sed -n '/<!-- stock-verify -->/,/^```$/p' README.md | sed '1,2d;$d')
mkdir -p "$OUT/site"
echo "airbundle $(cat "$OUT/release.pub")" > "$OUT/site/allowed_signers"  # as the README says, once
(cd "$OUT/site" && BUNDLE="$ROOT/$BUNDLE" SIGNERS=allowed_signers sh -eu -c "$RECIPE")

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
AGAIN=$(airbundle build manifests/demo.yaml --key "$OUT/release.key" -o "$OUT/again" --cache "$OUT/cache" \
    --mirror "docker.io=127.0.0.1:$HUB_PORT" 2>/dev/null)
sha256sum "$BUNDLE" "$AGAIN"
cmp "$BUNDLE" "$AGAIN" && echo "identical"

mkdir -p "$OUT/unpacked"
step "apt installs the bundled packages with no network (a simulation against an empty target)"
APT="$OUT/aptsim"
mkdir -p "$APT/state/lists/partial" "$APT/cache/archives/partial" && : >"$APT/status"
tar -C "$OUT/unpacked" -xf "$BUNDLE" --wildcards 'debs/*'
echo "deb [trusted=yes] file:$ROOT/$OUT/unpacked/debs ./" >"$APT/sources.list"
APT_OPTS=(-o "Dir::Etc::SourceList=$ROOT/$APT/sources.list" -o Dir::Etc::SourceParts=/dev/null
          -o "Dir::State=$ROOT/$APT/state" -o "Dir::Cache=$ROOT/$APT/cache"
          -o "Dir::State::status=$ROOT/$APT/status" -o Debug::NoLocking=1)
apt-get "${APT_OPTS[@]}" update >/dev/null
apt-get "${APT_OPTS[@]}" -s install demo-agent | grep '^Inst'

step "the bundle's images load into a fresh Docker engine (what the installer will do on each worker)"
start_engine fresh
export DOCKER_HOST=$ENGINE_HOST
tar -C "$OUT/unpacked" -xf "$BUNDLE" --wildcards 'images/*'
tar -C "$OUT/unpacked/images" -c . | docker load
for app in web worker; do
    docker run --rm --network none "demo/$app:1"
done

step "install.sh installs the bundle on five loopback nodes (3 control-plane+etcd, 2 workers; sshd + Docker each) and rke brings the cluster up"
python3 tools/demo_install.py "$BUNDLE" "$OUT/release.pub" "$ROOT/$OUT"

step "done: the bundle is $BUNDLE"
