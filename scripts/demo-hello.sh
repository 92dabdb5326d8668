#!/bin/sh
# Demo staged step: runs on the control node after the cluster is up.
set -eu
echo "demo step: hello from ${NODE_NAME:-the control node}"
