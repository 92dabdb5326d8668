#!/bin/sh
# airbundle site installer entry point (placeholder).
# This bundle format does not include the installer yet: it refuses to pretend.
# Verify the bundle with `airbundle verify BUNDLE --pubkey PUB`, or with stock
# tools as the airbundle README shows.
echo "airbundle: installer not included yet in this bundle; nothing was installed" >&2
exit 6
