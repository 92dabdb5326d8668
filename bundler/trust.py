"""The trust decision: whether a bundle's signed head and its member headers are accepted.

Pure: bytes, keys, the clock and the site's facts come in; a ``Decision`` (or an error
carrying its exit code) comes out. Every reader of bundles calls it, on the bytes it
then uses: ``verify``, ``inspect --pubkey``, ``join``, extraction, and the site
installer. The model is python-tuf's ``TrustedMetadataSet``: one object that is handed
untrusted bytes in a fixed order and refuses anything out of order or unproven.

Two parts:

- ``decide``: the head. The signature over the exact ``lock.json`` bytes (present,
  well-formed, namespace, made by a trusted key inside its allowed_signers window),
  then the lock's format and fields, its expiry against the clock, the platform
  when the site states one, the version order against what is installed (no silent
  downgrade, no other build of the installed version) and, for a delta, its base.
- ``check_header`` and ``Audit``: the member headers, one at a time in archive order.
  Only what our writer emits is accepted (POSIX ustar regular files, PAX ``path`` and
  ``size`` records only, safe names and modes); then each name against the lock:
  extra, missing, duplicate, colliding on a case-folding filesystem, wrong size or mode.

Not here: reading files, hashing payload bytes, or the Ed25519 arithmetic itself,
which the caller injects as ``checker`` (``cryptography``, else stock ``ssh-keygen``).
"""

import hashlib
import re
from typing import Dict, List, Mapping, Optional, Tuple

from bundler import lock as lockmod
from bundler import signing, versions
from bundler.compat import dataclass, field
from bundler.errors import ExpiredError, InstallError, IntegrityError, SignatureError, TrustError

# Header facts ------------------------------------------------------------------------

USTAR_MAGIC = (
    b"ustar\x0000"  # POSIX ustar magic + version; GNU's "ustar  \0" reads its prefix field differently
)
REGULAR_TYPES = (b"0", b"\0")
PAX_TYPE = b"x"
PAX_KEYS = ("path", "size")  # the only records our writer emits (a long or non-ASCII name, a size ≥ 8 GiB)
MAX_PAX_BYTES = 64 * 1024
_SPECIAL_BITS = 0o7000  # setuid, setgid, sticky
_TYPE_NAMES = {
    b"1": "hard link",
    b"2": "symbolic link",
    b"3": "character device",
    b"4": "block device",
    b"5": "directory",
    b"6": "FIFO",
    b"7": "contiguous file",
    b"g": "PAX global header",
    b"x": "PAX header",
    b"K": "GNU long link",
    b"L": "GNU long name",
    b"S": "GNU sparse file",
    b"D": "GNU directory dump",
    b"M": "GNU multi-volume continuation",
    b"V": "GNU volume label",
}


@dataclass(frozen=True)
class Header:
    """One member header as read, before any decision: the facts ``check_header`` judges."""

    name: str  # the PAX path when there is one, else the ustar name
    type: bytes  # the typeflag byte
    size: int  # the PAX size when there is one, else the ustar size
    mode: int
    magic: bytes  # bytes 257..265 of the header block
    pax: Mapping[str, str] = field(default_factory=dict)
    block: bytes = b""  # the raw 512-byte header, when the reader has it (see check_block)


def unsafe(name: str, why: str) -> IntegrityError:
    """The error for a member header we refuse (exit 4), naming it."""
    return IntegrityError(f"unsafe member {name!r}: {why}; the bundle is refused", member=name)


def pax_size(name: str, records: Mapping[str, str]) -> Optional[int]:
    """The PAX ``size`` record as a number (None when absent); only plain decimal digits are accepted."""
    text = records.get("size")
    if text is None:
        return None
    if not re.fullmatch(r"[0-9]+", text) or len(text) > 20:  # ASCII digits only (no str.isascii on 3.6)
        raise unsafe(name, f"malformed PAX size {text[:40]!r}")
    return int(text)


def check_pax(name: str, size: int, records: Mapping[str, str], magic: bytes = USTAR_MAGIC) -> None:
    """A PAX extended header: its format, its own size, and only the records our writer emits."""
    if magic != USTAR_MAGIC:
        raise unsafe(name, "a PAX header that is not POSIX ustar")
    if size < 0 or size > MAX_PAX_BYTES:
        raise unsafe(name, f"a PAX header of {size} bytes (limit {MAX_PAX_BYTES})")
    other = sorted(set(records) - set(PAX_KEYS))
    if other:
        # GNU.sparse.* and friends make GNU tar write different bytes than the ones hashed here.
        raise unsafe(name, f"PAX record {other[0]!r}, which airbundle never writes")
    pax_size(name, records)


# Header fields (offset, end) our writer fills with octal digits, and those it leaves empty.
_OCTAL_FIELDS = {
    "mode": (100, 108),
    "uid": (108, 116),
    "gid": (116, 124),
    "size": (124, 136),
    "mtime": (136, 148),
    "checksum": (148, 156),
    "devmajor": (329, 337),
    "devminor": (337, 345),
}
_EMPTY_FIELDS = {"linkname": (157, 257), "uname": (265, 297), "gname": (297, 329), "prefix": (345, 500)}
_OCTAL = re.compile(rb"[0-7]*[\0 ]*")


def check_block(name: str, block: bytes) -> None:
    """A raw 512-byte header, field by field, as our writer fills it: numbers in plain octal (Python's
    tarfile also reads "0_25" or base-256, which GNU tar reads otherwise or refuses), owner 0 with
    no names, no link name, no device numbers and no name prefix (which tarfile and GNU tar read
    differently). Refused with exit 4, naming the member."""
    for what, (start, end) in _OCTAL_FIELDS.items():
        if not _OCTAL.fullmatch(block[start:end]):
            raise unsafe(name, f"its {what} field is not plain octal digits")
    for what in ("uid", "gid", "devmajor", "devminor"):
        start, end = _OCTAL_FIELDS[what]
        if block[start:end].strip(b"0\0 "):
            raise unsafe(name, f"a {what} other than 0 (the builder writes 0)")
    for what, (start, end) in _EMPTY_FIELDS.items():
        if block[start:end].strip(b"\0"):
            raise unsafe(name, f"a {what} field, which the builder leaves empty")


def check_header(header: Header) -> None:
    """Refuse a member header our writer would never emit (exit 4, naming the member)."""
    name = header.name
    if header.magic != USTAR_MAGIC:
        raise unsafe(name, "not a POSIX ustar header (GNU or v7 format)")
    if header.type not in REGULAR_TYPES:
        raise unsafe(name, f"a {_TYPE_NAMES.get(header.type, 'type ' + repr(header.type))}")
    if header.size < 0:
        raise unsafe(name, f"impossible size {header.size}")
    if header.block:
        check_block(name, header.block)
    check_pax(name, 0, header.pax)
    problem = lockmod.check_member_path(name)
    if problem:
        raise unsafe(name, f"name {problem}")
    if header.mode & _SPECIAL_BITS or header.mode & 0o022 or header.mode < 0:
        raise unsafe(name, f"mode {header.mode:04o} (setuid/setgid/sticky or group/world-writable)")


# The head ----------------------------------------------------------------------------


@dataclass(frozen=True)
class SiteFacts:
    """What the site knows when it decides: its keys, its clock, and (installing) its state.

    ``installed`` maps bundle names to installed versions (the journal);
    ``unpacked`` maps ``NAME-VERSION`` folders present in the work folder to the
    SHA-256 of their ``lock.json``. Both matter only with ``installing``.
    """

    trusted: Tuple[signing.PublicKey, ...]
    now: float
    allow_expired: bool = False
    installing: bool = False
    installed: Mapping[str, object] = field(default_factory=dict)  # as the journal records them
    installed_locks: Mapping[str, str] = field(default_factory=dict)  # name -> its lock's SHA-256
    allow_downgrade: bool = False
    unpacked: Mapping[str, str] = field(default_factory=dict)
    platform: Optional[Mapping[str, str]] = None  # the site's os/codename/arch, when it states them
    # The SHA-256 of the lock.json that install.sh checked with stock tools before it started the
    # installer from the checked copies: the installer must go on with that very bundle.
    checked_lock: Optional[str] = None


@dataclass(frozen=True)
class Decision:
    """A trusted head: the lock exactly as signed, who signed it, and what it replaces."""

    lock: lockmod.Lock
    lock_bytes: bytes
    lock_sha256: str
    signer: signing.PublicKey
    installed: Optional[str] = None  # the version of this name installed before, if any
    base_folder: Optional[str] = None  # a delta's base, as a folder name in the work folder


def decide(
    lock_bytes: bytes, sig_bytes: Optional[bytes], facts: SiteFacts, checker: Optional[signing.Checker] = None
) -> Decision:
    """Decide whether the head of a bundle is trusted; ``checker`` does the Ed25519 check.

    Raises:
        SignatureError, UntrustedKeyError (exit 3): unsigned, malformed, wrong namespace,
            not matching the bytes, not a trusted key, or outside the key's window.
        LockError (exit 4): the signed lock is malformed (format, fields, paths).
        ExpiredError (exit 3): past its signed expiry.
        TrustError (exit 3): another platform, a downgrade, or a delta whose base is absent.
    """
    if sig_bytes is None:
        raise SignatureError(
            f"{lockmod.SIG_NAME} is missing (it must be the second member); "
            "an unsigned bundle is never trusted"
        )
    signer = signing.verify(lock_bytes, sig_bytes, list(facts.trusted), checker=checker, now=facts.now)
    lock = lockmod.Lock.from_bytes(lock_bytes)
    check_tree(lock)
    check_expiry(lock, facts.now, facts.allow_expired)
    if facts.platform is not None:
        problem = platform_problem(lock, facts.platform)
        if problem:
            raise TrustError(f"{lock.name} {lock.version} is not for this site: {problem}")
    decision = Decision(lock, lock_bytes, hashlib.sha256(lock_bytes).hexdigest(), signer)
    if facts.checked_lock is not None and facts.checked_lock != decision.lock_sha256:
        # Another validly signed bundle swapped in at the same path after install.sh's check: the
        # code running was checked against the other one. Refuse rather than mix the two.
        raise IntegrityError(
            f"lock.json is not the one install.sh checked (sha256 {facts.checked_lock[:16]}..., now "
            f"{decision.lock_sha256[:16]}...): the bundle file was replaced meanwhile; run install.sh "
            "again on the bundle you mean to install"
        )
    if not facts.installing:
        return decision
    installed = facts.installed.get(lock.name)
    check_downgrade(lock.name, lock.version, installed, facts.allow_downgrade)
    recorded = facts.installed_locks.get(lock.name)
    check_rebuild(lock, installed, recorded, decision.lock_sha256, facts.allow_downgrade)
    base_folder = check_base(lock, facts) if lock.base else None
    was = installed if isinstance(installed, str) else None
    return Decision(decision.lock, lock_bytes, decision.lock_sha256, signer, was, base_folder)


def check_expiry(lock: lockmod.Lock, now: float, allow_expired: bool = False) -> None:
    """Refuse a bundle whose signed expiry has passed (exit 3), unless told to accept it."""
    if lock.expires and now > lock.expires and not allow_expired:
        raise ExpiredError(
            f"{lock.name} {lock.version} expired at {signing.utc_text(lock.expires)} (host clock "
            f"{signing.utc_text(now)}); ask the publisher for a current bundle, check the clock, or pass "
            "--allow-expired to accept it anyway"
        )


def check_tree(lock: lockmod.Lock) -> None:
    """Refuse a lock that puts a file where another member needs a folder (``x`` and ``x/y``)."""
    # Compared case-folded: on a case-insensitive work folder "files/A" and "files/a/b" clash too.
    paths = {lockmod.fold(m.path): m.path for m in (*lock.members, *lock.inherited)}
    for path in paths.values():
        parts = path.split("/")
        for i in range(1, len(parts)):
            parent = paths.get(lockmod.fold("/".join(parts[:i])))
            if parent is not None:
                raise lockmod.LockError(
                    f"{lockmod.LOCK_NAME}: {parent!r} is a file and also the folder of {path!r}"
                )


def platform_problem(lock: lockmod.Lock, site: Mapping[str, str]) -> Optional[str]:
    """Why the bundle's platform does not fit the site's (None when it does); absent site keys fit."""
    for key in ("os", "codename", "arch"):
        want, have = lock.platform.get(key), site.get(key)
        if want and have and want != have:
            return f"the bundle is for {key} {want!r}, this site has {have!r}"
    return None


def check_downgrade(name: str, version: str, installed: object, allow_downgrade: bool) -> None:
    """Refuse a version that does not parse, or one older than the installed one unless allowed.

    ``installed`` is what the journal records (None when nothing is installed); anything
    there that is not a version means the journal was damaged, which stops the install
    rather than making every version look newer.

    Raises:
        TrustError (exit 3): a malformed version, or a downgrade without ``allow_downgrade``.
        InstallError (exit 6): the installed version on record does not parse.
    """
    problem = versions.check(version)
    if problem:
        raise TrustError(f"{name}: refusing the bundle's version {version!r}: it {problem}")
    if installed is None:
        return
    problem = versions.check(installed) if isinstance(installed, str) else "is not a string"
    if problem:
        raise InstallError(
            f"the install journal (state.json in the work folder) is damaged: the installed version of "
            f"{name}, {installed!r}, {problem}; move it away to start over"
        )
    assert isinstance(installed, str)
    if versions.is_older(version, installed) and not allow_downgrade:
        raise TrustError(
            f"{name} {installed} is installed; refusing the older {version} "
            "(pass --allow-downgrade if that is intended)"
        )


def check_rebuild(
    lock: lockmod.Lock, installed: object, recorded: Optional[str], lock_sha256: str, allow_downgrade: bool
) -> None:
    """Refuse another bundle of the installed version (exit 3) unless allowed: a version names one
    bundle, so an older build that reused the number must not replace the installed one."""
    same = isinstance(installed, str) and versions.same(installed, lock.version)  # 1.0~rc1 is 1.0-rc1
    if same and recorded and recorded != lock_sha256 and not allow_downgrade:
        raise TrustError(
            f"{lock.name} {lock.version} is installed from another bundle (lock sha256 {recorded[:16]}…, "
            f"this one {lock_sha256[:16]}…); a rebuild must carry a new version (e.g. "
            f"{lock.version}+b2), or pass --allow-downgrade to replace it"
        )


def check_base(lock: lockmod.Lock, facts: SiteFacts) -> str:
    """A delta's base must be installed here with its unpacked copy intact; its folder name."""
    base = lock.base
    folder = f"{base['name']}-{base['version']}"
    if base["name"] not in facts.installed or facts.unpacked.get(folder) != base["lock_sha256"]:
        raise TrustError(
            f"{lock.name} {lock.version} is a delta bundle on {base['name']} {base['version']} "
            f"(lock sha256 {base['lock_sha256'][:16]}…); install that bundle here first "
            f"(its unpacked copy is looked for at {folder} in the work folder)"
        )
    return folder


# The member list ---------------------------------------------------------------------


@dataclass(frozen=True)
class Problem:
    """One integrity finding, naming the member."""

    member: str
    problem: str

    def __str__(self) -> str:
        return f"{self.member}: {self.problem}"


class Audit:
    """The member headers of one bundle against its trusted lock, in archive order.

    ``add`` each header (after ``check_header``); a name seen twice, or two names that
    collide on a case-folding filesystem, is refused at once. Extra members and wrong
    sizes or modes are collected; ``finish`` adds the missing ones and returns them all.
    """

    def __init__(self, lock: lockmod.Lock) -> None:
        self.expected = {m.path: m for m in lock.members}
        self.found: Dict[str, int] = {}
        self.folded: Dict[str, str] = {}
        self.problems: List[Problem] = []

    def add(self, name: str, size: int, mode: int) -> bool:
        """Record one member; True when its bytes must be hashed (listed, right size and mode)."""
        key = lockmod.fold(name)
        if name in self.found or key in self.folded:
            raise IntegrityError(
                f"member {name!r} appears twice (or collides with {self.folded.get(key, name)!r}); "
                "the bundle is refused",
                member=name,
            )
        self.found[name] = size
        self.folded[key] = name
        want = self.expected.get(name)
        if want is None:
            self.problems.append(Problem(name, "extra member: not listed in lock.json"))
        elif size != want.size:
            self.problems.append(Problem(name, f"size {size}, lock.json says {want.size}"))
        elif mode & 0o777 != int(want.mode, 8):
            self.problems.append(Problem(name, f"mode {mode & 0o777:04o}, lock.json says {want.mode}"))
        else:
            return True
        return False

    def finish(self) -> List[Problem]:
        """Every problem found, the missing members included."""
        for name in self.expected:
            if name not in self.found:
                self.problems.append(Problem(name, "missing: listed in lock.json but not in the bundle"))
        return self.problems

    def digest_problem(self, name: str, digest: str, where: str = "") -> Optional[Problem]:
        """The problem when a member's bytes hash to ``digest`` rather than the locked SHA-256."""
        want = self.expected[name].sha256
        return None if digest == want else Problem(name, f"sha256 {digest}, lock.json says {want}{where}")
