"""airbundle: signed, self-installing offline bundles for Kubernetes platform deployments."""

__version__ = "0.1.0"
