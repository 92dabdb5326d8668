"""Third-party code the site installer carries, unchanged, so that it needs no pip on the site.

- ``yaml``: PyYAML 6.0.1 (MIT, see yaml/LICENSE), its pure-Python part only (no libyaml
  binding): the last PyYAML release that supports python3 3.6 and 3.7, which the sites run.
  Used to read the RKE ``cluster.yml`` inventory and ``--values`` files with ``safe_load``.
- ``dataclasses``: the PEP 557 backport for Python 3.6, version 0.8 (Apache-2.0, see
  dataclasses.LICENSE), by the author of the standard module. Only Python 3.6 imports it
  (Rocky Linux 8's platform-python); 3.7 and later use their own ``dataclasses``. See
  ``bundler/compat.py``.
"""
