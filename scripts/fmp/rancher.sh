#!/bin/sh
# Rancher as a container on the node RANCHER_NODE (the guide's ports and /opt/rancher volume),
# from RANCHER_IMAGE (one the bundle loaded); with RANCHER_REGISTRY (the site registry), Rancher's
# air-gap settings point it there. Left alone when it already runs that image.
set -eu
. "$BUNDLE_DIR/files/fmp/lib.sh"
need RANCHER_NODE RANCHER_IMAGE
if [ "$NODE_NAME" != "$RANCHER_NODE" ]; then
    echo "rancher runs on $RANCHER_NODE, not here"
    exit 0
fi
if [ "$(docker inspect --format '{{.Config.Image}} {{.State.Running}}' rancher 2>/dev/null || true)" = "$RANCHER_IMAGE true" ]; then
    echo "rancher: already running $RANCHER_IMAGE"
    exit 0
fi
docker rm --force rancher >/dev/null 2>&1 || true
mkdir -p "$ROOT/opt/rancher"
set -- --detach --name rancher --restart=unless-stopped --publish 80:80 --publish 443:443 \
    --volume "$ROOT/opt/rancher:/var/lib/rancher" --privileged
if [ -n "${RANCHER_REGISTRY:-}" ]; then
    set -- "$@" --env "CATTLE_SYSTEM_DEFAULT_REGISTRY=$RANCHER_REGISTRY" --env CATTLE_SYSTEM_CATALOG=bundled
fi
docker run "$@" "$RANCHER_IMAGE"
echo "rancher: started $RANCHER_IMAGE"
