#!/bin/sh
# Demo staged step: runs on the control node after the cluster is up, with the site's values.
set -eu
echo "demo step: ${GREETING:-hello} (bundle at ${BUNDLE_DIR:-?}, kubeconfig ${KUBECONFIG:-none})"
