"""What differs between the Python versions the carried installer runs on (3.6 and later), in one place.

Rocky Linux 8's only stock interpreter is ``/usr/libexec/platform-python`` (3.6), which has no
``dataclasses`` module: there the installer's vendored copy of the PEP 557 backport is used
(``bundler/installer/_vendor/dataclasses.py``, unchanged). Everything else in the carried code is
written for 3.6 directly (``typing.List`` rather than ``list[...]`` in annotations, no
``from __future__ import annotations``, no ``capture_output=``); the two calls whose 3.6
spelling differs are wrapped here (``pread_into``, ``tls_verify_failure``).
"""

import os
import ssl
import sys
from typing import Optional

if sys.version_info >= (3, 7):
    # 3.6 takes the vendored copy below
    import dataclasses  # novermin
    from dataclasses import FrozenInstanceError, asdict, dataclass, field, fields, replace  # novermin
else:  # pragma: no cover - only the site's Python 3.6 takes this branch
    from bundler.installer._vendor import dataclasses

    FrozenInstanceError = dataclasses.FrozenInstanceError
    asdict = dataclasses.asdict
    dataclass = dataclasses.dataclass
    field = dataclasses.field
    fields = dataclasses.fields
    replace = dataclasses.replace


def pread_into(fd: int, buf: memoryview, offset: int) -> int:
    """Read into ``buf`` from ``fd`` at ``offset`` without moving its position; bytes read (0 at the end).

    ``os.preadv`` (3.7+) fills the caller's buffer; 3.6 has only ``os.pread``, which copies once more.
    """
    if hasattr(os, "preadv"):
        return os.preadv(fd, [buf], offset)  # novermin
    data = os.pread(fd, len(buf), offset)  # pragma: no cover - Python 3.6
    buf[: len(data)] = data  # pragma: no cover
    return len(data)  # pragma: no cover


def tls_verify_failure(exc: ssl.SSLError) -> Optional[str]:
    """Why a TLS peer's certificate was not trusted, or None when ``exc`` is another TLS error.

    3.7+ raises ``ssl.SSLCertVerificationError`` with ``verify_message``; 3.6 a plain ``SSLError``
    whose reason says ``CERTIFICATE_VERIFY_FAILED``.
    """
    message = getattr(exc, "verify_message", None)
    if message:
        return str(message)
    if getattr(exc, "reason", None) == "CERTIFICATE_VERIFY_FAILED":
        return "certificate verify failed"
    return None


__all__ = [
    "FrozenInstanceError",
    "asdict",
    "dataclass",
    "dataclasses",
    "field",
    "fields",
    "pread_into",
    "replace",
    "tls_verify_failure",
]
