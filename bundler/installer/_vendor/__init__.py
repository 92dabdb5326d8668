"""Third-party code the site installer carries, unchanged, so that it needs no pip on the site.

- ``yaml``: PyYAML 6.0.1 (MIT, see yaml/LICENSE), its pure-Python part only (no libyaml
  binding): the last PyYAML release that supports python3 3.6 and 3.7, which the sites run.
  Used to read the RKE ``cluster.yml`` inventory and ``--values`` files with ``safe_load``.
"""
