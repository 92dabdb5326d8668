"""Opening the user's files safely: regular files only, reads capped in size.

The one owner of "open what the user named": a FIFO, a device or a folder given
where a file belongs is refused at once (opening a FIFO for reading would block
forever), and small files (keys, parts lists, journals) are read with a cap so that
a huge or endless file cannot exhaust memory. It travels in bundles (python3 3.7).
Not here: writing (see ``archive.atomic_output``) or hashing payloads.
"""

import os
import stat
from pathlib import Path
from typing import Type, Union

from bundler.errors import BundlerError, InputError, from_os_error

_KINDS = {
    stat.S_IFDIR: "a folder",
    stat.S_IFIFO: "a FIFO (named pipe)",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFSOCK: "a socket",
}


def open_regular(
    path: Union[Path, str], what: str, kind: Type[BundlerError] = InputError, follow: bool = True
) -> int:
    """A read-only descriptor for ``path``, which must be a regular file; raises ``kind`` naming it.

    ``O_NONBLOCK`` makes opening a FIFO return at once, so it can be refused rather than
    waited on; it changes nothing for regular files. ``follow=False`` refuses a symbolic
    link (for files this program itself writes, where a link means someone else put it there).
    """
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | (0 if follow else os.O_NOFOLLOW)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise from_os_error(exc, f"opening the {what}", kind, path) from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise kind(
            f"{path}: the {what} is {_KINDS.get(stat.S_IFMT(mode), 'not a regular file')}; give a file"
        )
    os.set_blocking(fd, True)
    return fd


def read_capped(
    path: Union[Path, str], what: str, limit: int, kind: Type[BundlerError] = InputError, follow: bool = True
) -> bytes:
    """A small regular file's bytes, refusing more than ``limit`` bytes (errors are ``kind``, naming it)."""
    fd = open_regular(path, what, kind, follow)
    try:
        with os.fdopen(fd, "rb") as f:
            data = f.read(limit + 1)
    except OSError as exc:
        raise from_os_error(exc, f"reading the {what}", kind, path) from None
    if len(data) > limit:
        raise kind(f"{path}: over {limit} bytes, too large for a {what}")
    return data
