"""The site installer: the part of airbundle that travels inside every bundle.

It runs on the isolated site with python3 (3.6+), tar and OpenSSH only. Until
the installer lands, bundles carry ``install.sh``, which says so and exits 6.
"""
