"""Bundle versions: the one grammar and the one order, for the manifest, the lock and the journal.

Pure: no I/O, nothing from bundler but ``errors``. It travels in bundles, so it runs on
python3 3.7.

Grammar (at most 64 characters)::

    version  = release [ ("-" | "~") pre ] [ "+" build ]
    release  = part *( "." part )
    pre      = ident *( "." ident )
    build    = ident *( "." ident )
    part     = ident = 1*( A-Z / a-z / 0-9 )

and the release starts with a digit, so ``23.12.1``, ``1.0.0-rc1``, ``1.0.0~rc1`` (Debian's
spelling), ``2.0-beta.2+build.7`` and ``1.4a`` parse; ``1..2`` (an empty part), ``1.0-`` (a
trailing separator), ``1.0-rc1~2`` (two pre-release markers), ``1.0_1``, ``v1.2`` and ``v 1``
do not.

Order (``key``): release parts left to right, each compared naturally (runs of digits as
numbers, runs of letters as case-folded text, a digit run before a letter run), fewer parts first
when one is a prefix of the other (23.9 < 23.12 < 23.12.1 < 23.12.1a); then a version
with a pre-release sorts before the same release without one (1.0.0-rc1 < 1.0.0); two
pre-releases compare as semver does, identifier by identifier: numeric ones numerically
and before alphanumeric ones, fewer identifiers first (alpha < alpha.1 < beta), except
that alphanumeric identifiers compare naturally too (rc2 < rc10, where semver's ASCII
order would put rc10 first). ``-`` and ``~`` mean the same. Build metadata, which semver
leaves out of precedence, is the last tie-break (1.0.0 < 1.0.0+b1 < 1.0.0+b2), so a
rebuild with a higher build installs over its predecessor and going back needs
``--allow-downgrade``; versions equal by every rule (``1.0`` and ``1.00``) order by
their spelling, so the order is total.
"""

import re
from typing import Any, List, Optional, Tuple

from bundler.errors import InputError

MAX_LENGTH = 64
PRE_MARKERS = "-~"
_CHARS = re.compile(r"[0-9A-Za-z.+~-]")
_RUNS = re.compile(r"[0-9]+|[A-Za-z]+")


class VersionError(InputError):
    """A version does not follow the grammar; ``reason`` says what is wrong, after the version."""

    def __init__(self, version: str, reason: str) -> None:
        shown = repr(version) if len(version) <= MAX_LENGTH else f"{version[:20]!r}…"
        super().__init__(f"{shown} {reason}")
        self.reason = reason


def _idents(text: str, what: str, version: str) -> List[str]:
    idents = text.split(".")
    if "" in idents:
        raise VersionError(version, f"has an empty part in its {what} (two dots, or one at an end)")
    return idents


def _natural(ident: str) -> Tuple[Any, ...]:
    """Runs of digits as numbers (first), runs of letters as text."""
    # Letters compare case-folded: 1.0.0-RC2 is newer than 1.0.0-rc1, whatever the spelling.
    return tuple((0, int(run), "") if run.isdigit() else (1, 0, run.lower()) for run in _RUNS.findall(ident))


def _pre_ident(ident: str) -> Tuple[Any, ...]:
    """Semver: numeric identifiers numerically and before alphanumeric ones (here compared naturally)."""
    return (0, int(ident), ()) if ident.isdigit() else (1, 0, _natural(ident))


def check(version: str) -> Optional[str]:
    """Why ``version`` is not a valid bundle version (a phrase to follow it), or None when it is."""
    try:
        key(version)
    except VersionError as exc:
        return exc.reason
    return None


def _split(version: str) -> Tuple[str, Optional[str], Optional[str]]:
    """``version``'s release, pre-release and build metadata (None when absent), checked."""
    if not version:
        raise VersionError(version, "is empty")
    if len(version) > MAX_LENGTH:
        raise VersionError(version, f"is longer than {MAX_LENGTH} characters")
    bad = sorted({c for c in version if not _CHARS.fullmatch(c)})
    if bad:
        raise VersionError(
            version,
            f"holds {''.join(bad)!r}; a version is letters and digits joined by '.', "
            "with '-' or '~' before a pre-release and '+' before build metadata",
        )
    rest, plus, build = version.partition("+")
    if "+" in build:
        raise VersionError(version, "has more than one '+' (build metadata comes once, last)")
    if plus and not build:
        raise VersionError(version, "ends with '+'; write the build metadata after it or drop it")
    if any(m in build for m in PRE_MARKERS):
        raise VersionError(
            version, "has '-' or '~' after '+'; build metadata is letters and digits joined by '.', last"
        )
    cut = min((i for i in (rest.find(m) for m in PRE_MARKERS) if i >= 0), default=-1)
    if cut == 0 or not rest:
        raise VersionError(version, f"starts with {version[0]!r}; it must start with the release")
    if cut < 0:
        return rest, None, build if plus else None
    pre = rest[cut + 1 :]
    if not pre:
        raise VersionError(
            version, f"ends with {rest[cut]!r}; write the pre-release after it (e.g. -rc1) or drop it"
        )
    if any(m in pre for m in PRE_MARKERS):
        raise VersionError(
            version, "has two pre-release markers ('-' or '~'); use one, then '.' (e.g. 1.0.0-rc1.2)"
        )
    return rest[:cut], pre, build if plus else None


def key(version: str) -> Tuple[Any, ...]:
    """The sort key of ``version`` (the order in this module's docstring).

    Raises:
        VersionError: the version does not follow the grammar, with what is wrong.
    """
    release, pre, build = _split(version)
    parts = _idents(release, "release", version)
    if not parts[0][0].isdigit():
        # "v0.9" would sort after "23.12.1" (letters after digits): an old bundle spelled with a
        # leading letter could replay over a newer one. A release starts with its number.
        raise VersionError(
            version, f"starts with {version[0]!r}; a release starts with a digit (1.2, not v1.2)"
        )
    pre_ids = _idents(pre, "pre-release", version) if pre is not None else []
    build_ids = _idents(build, "build metadata", version) if build is not None else []
    return (
        tuple(_natural(p) for p in parts),
        (0, tuple(_pre_ident(i) for i in pre_ids)) if pre is not None else (1, ()),
        tuple(_pre_ident(i) for i in build_ids),
        version,
    )


def same(version: str, other: str) -> bool:
    """Whether two versions are equal by every rule but their spelling (1.0.0-rc1 and 1.0.0~RC1)."""
    return key(version)[:-1] == key(other)[:-1]


def is_older(version: str, than: str) -> bool:
    """Whether ``version`` sorts before ``than``; raises ``VersionError`` for either malformed."""
    return key(version) < key(than)
