#!/bin/sh
# fmp step 2 (storage): runs the vendor's fmp_k8s_storage_inst.sh (shipped under files/fmp_k8s/)
# with the site's values. The airbundle installer exports BUNDLE_DIR, KUBECONFIG and
# every --values entry; a missing value stops the step with a message naming it.
set -eu
: "${BUNDLE_DIR:?run this through the airbundle installer, which sets BUNDLE_DIR}"
: "${KUBECONFIG:?the cluster phase (rke up) has not run: KUBECONFIG is not set}"
: "${CEPH_MONITORS:?set CEPH_MONITORS in the --values file (see payloads/vendor/README.md)}"
cd "$BUNDLE_DIR/files/fmp_k8s"
[ -f fmp_k8s_storage_inst.sh ] || { echo "fmp_k8s_storage_inst.sh is missing from the bundle (vendor-supplied)" >&2; exit 2; }
exec sh ./fmp_k8s_storage_inst.sh "$CEPH_MONITORS"
