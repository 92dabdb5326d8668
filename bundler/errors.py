"""The error tree of airbundle and the exit code each error maps to.

Every error a user can cause or meet carries an ``exit_code`` (the table in
DESIGN.md). The two CLIs turn them into exit statuses; nothing below them
exits. Programmer errors stay ``ValueError``/``RuntimeError`` and show a
traceback (exit 1). This module imports nothing.
"""

from typing import List, Optional, Tuple, Type


EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_INPUT = 2
EXIT_TRUST = 3
EXIT_INTEGRITY = 4
EXIT_FETCH = 5
EXIT_INSTALL = 6


class BundlerError(Exception):
    """Root of every error airbundle expects; catch this to catch them all."""

    exit_code = EXIT_INTERNAL


class InputError(BundlerError):
    """A bad input file or argument: manifest, inventory, values or key (exit 2).

    ``problems`` lists each mistake on its own (one, unless ``several`` made it), so a
    caller can show them one per line or as JSON.
    """

    exit_code = EXIT_INPUT

    def __init__(self, message: str = "", problems: Tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.problems = problems or (message,)


class ManifestError(InputError):
    """The bundle manifest is unreadable or invalid; the message names file and line."""


class KeyFileError(InputError):
    """A key file cannot be read: wrong format, wrong passphrase, unsupported type."""


class TrustError(BundlerError):
    """Trust refused: bad, missing or untrusted signature (exit 3)."""

    exit_code = EXIT_TRUST


class SignatureError(TrustError):
    """``lock.json.sig`` is missing, malformed, or does not verify."""


class UntrustedKeyError(SignatureError):
    """The signature is valid but made by a key the site does not trust."""

    def __init__(self, message: str, fingerprint: str) -> None:
        super().__init__(message)
        self.fingerprint = fingerprint


class ExpiredError(TrustError):
    """The bundle's signed expiry has passed (or the host clock is wrong)."""


class IntegrityError(BundlerError):
    """Size or digest mismatch, missing/extra/duplicate/unsafe member, truncation (exit 4)."""

    exit_code = EXIT_INTEGRITY

    def __init__(self, message: str, member: Optional[str] = None) -> None:
        super().__init__(message)
        self.member = member


class FetchError(BundlerError):
    """Network, upstream or checksum failure while fetching on the build host (exit 5)."""

    exit_code = EXIT_FETCH


class InstallError(BundlerError):
    """Install failure on the site: preflight, node or step (exit 6)."""

    exit_code = EXIT_INSTALL


def several(errors: List[InputError], kind: Type[InputError] = InputError, where: str = "") -> InputError:
    """All of ``errors`` as one ``kind`` (exit 2), so that one run names every mistake.

    One error stays as it is; several become one message, a line per problem, with the
    count first. Their ``problems`` are kept in order for machine-readable output.
    """
    errors = [e for e in errors if e.problems]
    if len(errors) == 1:
        return errors[0]  # one error (of one or several problems) keeps its own words
    problems = tuple(p for e in errors for p in e.problems)
    lines = "".join(f"\n  - {p}" for p in problems)
    head = f"{where}: " if where else ""
    return kind(f"{head}{len(problems)} problems; fix them all, then run again:{lines}", problems)


# What to do about an OSError, by errno (numbers from Linux's errno.h: this module imports nothing).
_OS_ADVICE = {
    28: "no space left on that filesystem: free some space or choose another folder",  # ENOSPC
    122: "disk quota exceeded: free some space or choose another folder",  # EDQUOT
    13: "permission denied: check the file's and its folders' permissions",  # EACCES
    1: "operation not permitted: check the file's owner and permissions",  # EPERM
    21: "a folder is where a file is expected: move it away",  # EISDIR
    20: "a file is where a folder is expected: move it away",  # ENOTDIR
    2: "no such file or folder",  # ENOENT
    30: "the filesystem is read-only: choose another folder",  # EROFS
    5: "input/output error: the disk or medium is failing; copy the file again",  # EIO
    40: "too many levels of symbolic links",  # ELOOP
}


def from_os_error(exc: OSError, doing: str, kind: Type[BundlerError], path: object = None) -> BundlerError:
    """``exc`` as a ``kind`` error (its exit code) naming the path, what was being done and what to do.

    ``doing`` is a short phrase such as "writing the bundle". Both CLIs use this one mapping
    for environment failures (disk full, permissions, a folder where a file belongs), so no
    traceback reaches the user for something the machine caused.
    """
    where = path if path is not None else (exc.filename if exc.filename is not None else "?")
    advice = _OS_ADVICE.get(exc.errno or 0, exc.strerror or str(exc))
    error = kind(f"{where}: {doing} failed: {advice}")
    error.__cause__ = exc
    return error
