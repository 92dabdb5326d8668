"""Ed25519 keys and OpenSSH SSHSIG signatures over raw bytes.

Keys are written as PKCS#8 PEM (private) and one OpenSSH ``ssh-ed25519`` line
(public). Signatures are armored SSHSIG blobs (OpenSSH ``PROTOCOL.sshsig``),
namespace ``airbundle``, hash sha512, so that stock
``ssh-keygen -Y verify -n airbundle`` accepts them.

This module does no file or network I/O: callers pass bytes in and get bytes
or objects out. It is the only module that imports ``cryptography``; the
import is optional so that parsing and fingerprints still work on a site
without it (verification there falls back to stock ``ssh-keygen``, which the
installer drives).
"""

import base64
import binascii
import datetime
import hashlib
import re
import struct
import time
from typing import Callable, Dict, List, Optional, Tuple

from bundler.compat import dataclass, dataclasses
from bundler.errors import KeyFileError, SignatureError, UntrustedKeyError

try:  # cryptography is a build-host dependency; the site may not have it.
    from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (
        Ed25519PrivateKey,
        Ed25519PublicKey,
    )
except ImportError:  # pragma: no cover - exercised on bare sites only
    Ed25519PrivateKey = None  # type: ignore[assignment,misc]

NAMESPACE = "airbundle"
HASH_ALG = "sha512"
KEY_TYPE = "ssh-ed25519"
SIG_VERSION = 1
MAX_SIGNATURE_BYTES = 64 * 1024  # an Ed25519 SSHSIG is ~300 bytes; refuse junk early
_ARMOR_BEGIN = b"-----BEGIN SSH SIGNATURE-----"
_ARMOR_END = b"-----END SSH SIGNATURE-----"


def _string(data: bytes) -> bytes:
    """RFC 4253 ``string``: uint32 length then the bytes."""
    return struct.pack(">I", len(data)) + data


class _Reader:
    """Reads RFC 4253 fields from a blob, raising ``ValueError`` on short data."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise ValueError("blob is truncated")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def uint32(self) -> int:
        return int(struct.unpack(">I", self.take(4))[0])

    def string(self) -> bytes:
        return self.take(self.uint32())

    def done(self) -> bool:
        return self.pos == len(self.data)


@dataclass(frozen=True)
class PublicKey:
    """An Ed25519 public key as OpenSSH knows it."""

    raw: bytes  # the 32-byte Ed25519 point
    comment: str = ""
    # From allowed_signers options: the key's validity window (epoch seconds) and namespaces.
    valid_after: Optional[int] = None
    valid_before: Optional[int] = None
    namespaces: Optional[Tuple[str, ...]] = None

    @property
    def blob(self) -> bytes:
        """The SSH wire encoding (what fingerprints and SSHSIG embed)."""
        return _string(KEY_TYPE.encode()) + _string(self.raw)

    @property
    def fingerprint(self) -> str:
        """``SHA256:…`` exactly as ``ssh-keygen -l`` prints it."""
        digest = hashlib.sha256(self.blob).digest()
        return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")

    def openssh_line(self) -> str:
        """One ``ssh-ed25519 AAAA… comment`` line."""
        line = f"{KEY_TYPE} {base64.b64encode(self.blob).decode()}"
        return f"{line} {self.comment}" if self.comment else line

    def describe(self) -> str:
        """The line ``ssh-keygen -l -f KEY.pub`` prints for this key."""
        return f"256 {self.fingerprint} {self.comment or 'no comment'} (ED25519)"

    @classmethod
    def from_blob(cls, blob: bytes, comment: str = "") -> "PublicKey":
        """Parse an SSH wire-format key blob; raises ``ValueError``."""
        reader = _Reader(blob)
        key_type = reader.string()
        if key_type != KEY_TYPE.encode():
            raise ValueError(f"unsupported key type {key_type.decode(errors='replace')!r}")
        raw = reader.string()
        if len(raw) != 32 or not reader.done():
            raise ValueError("malformed ssh-ed25519 key")
        return cls(raw=raw, comment=comment)


class PrivateKey:
    """An Ed25519 signing key (wraps ``cryptography``'s object)."""

    def __init__(self, key: Ed25519PrivateKey, comment: str = "") -> None:
        self._key = key
        raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        self.public = PublicKey(raw=raw, comment=comment)

    @classmethod
    def generate(cls, comment: str = "") -> "PrivateKey":
        """A fresh random key."""
        _require_cryptography()
        return cls(Ed25519PrivateKey.generate(), comment)

    def to_pem(self, passphrase: Optional[bytes] = None) -> bytes:
        """PKCS#8 PEM, encrypted with the best available scheme when a passphrase is given."""
        encryption: serialization.KeySerializationEncryption = (
            serialization.BestAvailableEncryption(passphrase) if passphrase else serialization.NoEncryption()
        )
        return self._key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
        )

    def sign_raw(self, data: bytes) -> bytes:
        """Plain Ed25519 signature over ``data`` (64 bytes)."""
        return self._key.sign(data)


def _require_cryptography() -> None:
    if Ed25519PrivateKey is None:
        raise RuntimeError("the 'cryptography' package is required for this operation")


def _is_encrypted(pem: bytes, openssh: bool) -> bool:
    if not openssh:
        return b"ENCRYPTED" in pem[:200]
    # An OpenSSH key names its KDF inside the base64 body: "none" or "bcrypt".
    body = b"".join(line for line in pem.splitlines() if not line.startswith(b"-----"))
    try:
        return b"bcrypt" in base64.b64decode(body)[:100]
    except binascii.Error:
        return False


def load_private_key(pem: bytes, source: str, passphrase: Optional[bytes] = None) -> PrivateKey:
    """Load a PKCS#8 (or OpenSSH) Ed25519 private key.

    Args:
        pem: the key file's bytes.
        source: the file name, for messages.
        passphrase: for an encrypted key.

    Raises:
        KeyFileError: unreadable, not Ed25519, encrypted without a passphrase, or
            the passphrase is wrong.
    """
    if pem.lstrip().startswith(KEY_TYPE.encode() + b" "):
        raise KeyFileError(
            f"{source}: this is a public key (.pub); signing needs its private half, the .key file "
            "'airbundle keygen' wrote beside it"
        )
    _require_cryptography()
    openssh = pem.lstrip().startswith(b"-----BEGIN OPENSSH PRIVATE KEY-----")
    key: object
    try:
        if openssh:
            key = serialization.load_ssh_private_key(pem, passphrase)
        else:
            key = serialization.load_pem_private_key(pem, passphrase)
    except UnsupportedAlgorithm as exc:
        raise KeyFileError(
            f"{source}: cannot open this key here ({exc}); install the 'bcrypt' package for "
            "passphrase-protected OpenSSH keys, or use a key made by 'airbundle keygen'"
        ) from exc
    except TypeError as exc:
        if passphrase is None:
            raise KeyFileError(
                f"{source}: the key is encrypted; name the variable holding its passphrase "
                "with --passphrase-env VAR"
            ) from exc
        raise KeyFileError(f"{source}: the key is not encrypted; drop --passphrase-env") from exc
    except ValueError as exc:
        if passphrase is not None and _is_encrypted(pem, openssh):
            raise KeyFileError(f"{source}: wrong passphrase for this key") from exc
        raise KeyFileError(
            f"{source}: not a PEM private key ({exc}); make one with 'airbundle keygen'"
        ) from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"{source}: only Ed25519 keys are supported; use 'airbundle keygen'")
    return PrivateKey(key, comment="")


PRINCIPAL = NAMESPACE  # install.sh and the README check with ``ssh-keygen -Y verify -I airbundle``
# OpenSSH's match_pattern_list() copies each sub-pattern into a 1024-byte buffer and fails the
# whole list beyond it; longer fields are refused here rather than matched differently.
MAX_PATTERN = 1000
_KEY_TYPES = ("ssh-", "ecdsa-", "sk-")


def parse_public_keys(text: str, source: str) -> List[PublicKey]:
    """Every ``ssh-ed25519`` key a ``.pub`` or ``allowed_signers`` file trusts for airbundle.

    An ``allowed_signers`` line is read as OpenSSH's ``ssh-keygen -Y verify -I airbundle``
    reads it, so that the stock check and this one never disagree: ``PRINCIPALS [OPTIONS]
    KEYTYPE KEY [COMMENT]``, where a line whose principals (a pattern list: ``*``, ``?``,
    ``!``) do not match ``airbundle`` is skipped, and option names are case-insensitive.
    Where OpenSSH would quietly skip a line it cannot read, this refuses the whole file: an
    unknown or repeated option, an unquoted or malformed value, ``cert-authority``, another
    key type. A ``.pub`` line (``ssh-ed25519 KEY [COMMENT]``) is trusted for airbundle as is.
    Blank lines and ``#`` comments are skipped.

    Raises:
        KeyFileError: a line it cannot read (naming it), or no key for airbundle at all.
    """
    if text.lstrip().startswith("-----BEGIN"):
        # never quoted back: it is a secret
        raise KeyFileError(
            f"{source}: this is a private key; checking needs the public half (the .pub beside it) "
            "or an allowed_signers file"
        )
    keys: List[PublicKey] = []
    skipped: List[str] = []
    pub_lines: List[int] = []
    allowed_lines: List[int] = []
    # Lines end at "\n" only, as OpenSSH's getline() reads them: str.splitlines() would also end
    # one at a CR, VT, FF or U+2028, turning "# retired<CR>airbundle KEY" from a comment into a key.
    for lineno, line in enumerate(text.split("\n"), start=1):
        where = f"{source}:{lineno}"
        fields = _fields(line[:-1] if line.endswith("\r") else line, where)
        if not fields or fields[0].startswith("#"):
            continue
        if fields[0] == KEY_TYPE:  # a .pub line
            keys.append(_key(fields[1:], where))
            pub_lines.append(lineno)
            continue
        if fields[0].startswith(_KEY_TYPES):
            raise KeyFileError(
                f"{where}: unsupported key type {fields[0]} (airbundle keys are ssh-ed25519; "
                "make one with 'airbundle keygen')"
            )
        allowed_lines.append(lineno)
        principals, rest = fields[0], fields[1:]
        if '"' in principals or len(principals) > MAX_PATTERN:
            raise KeyFileError(
                f"{where}: principals {principals[:40]!r}: quoted or over-long principals are not supported "
                f"(write airbundle, or a pattern list such as air* of at most {MAX_PATTERN} characters)"
            )
        options = ""
        if rest and rest[0] != KEY_TYPE and not rest[0].startswith(_KEY_TYPES):
            options, rest = rest[0], rest[1:]
        if not rest or rest[0] != KEY_TYPE:
            other = rest[0] if rest and rest[0].startswith(_KEY_TYPES) else None
            what = f"unsupported key type {other}" if other else "no ssh-ed25519 key where one belongs"
            raise KeyFileError(
                f"{where}: {what}"
                " (an allowed_signers line is PRINCIPALS [OPTIONS] ssh-ed25519 KEY; airbundle keys are "
                "ssh-ed25519)"
            )
        key = _with_options(_key(rest[1:], where), options, where)
        if match_pattern_list(PRINCIPAL, principals) == 1:
            keys.append(key)
        else:
            skipped.append(f"line {lineno} ({principals})")
    if pub_lines and allowed_lines:
        # ssh-keygen reads "ssh-ed25519 KEY" in an allowed_signers file as a principal with no
        # key and skips it; airbundle would trust it. A file is one kind or the other.
        raise KeyFileError(
            f"{source}: mixes .pub lines (line {pub_lines[0]}) with allowed_signers lines (line "
            f"{allowed_lines[0]}); ssh-keygen skips the .pub lines there: write them as 'airbundle KEY'"
        )
    if not keys:
        detail = f"; lines for other principals: {', '.join(skipped)}" if skipped else ""
        raise KeyFileError(
            f"{source}: holds no public key for {PRINCIPAL} (an allowed_signers line starts with the "
            f"principal {PRINCIPAL}){detail}"
        )
    return keys


def _fields(line: str, where: str) -> List[str]:
    """Whitespace-separated fields, where double-quoted text (option values) may hold spaces."""
    out: List[str] = []
    current = ""
    quoted = False
    for ch in line:
        if ch == '"':
            quoted = not quoted
        if ch in " \t" and not quoted:
            if current:
                out.append(current)
                current = ""
            continue
        current += ch
    if quoted:
        raise KeyFileError(f"{where}: an unclosed double quote")
    if current:
        out.append(current)
    return out


def _key(fields: List[str], where: str) -> PublicKey:
    """``KEY [COMMENT]`` after ``ssh-ed25519``."""
    try:
        blob = base64.b64decode(fields[0], validate=True)
        return PublicKey.from_blob(blob, " ".join(fields[1:]))
    except (IndexError, ValueError, binascii.Error) as exc:
        raise KeyFileError(f"{where}: malformed ssh-ed25519 key ({exc})") from exc


def _match_pattern(name: str, pattern: str) -> bool:
    """OpenSSH's ``match_pattern``: ``*`` any run, ``?`` any one character, all else literal."""
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, name, re.S) is not None


def match_pattern_list(name: str, patterns: str) -> int:
    """OpenSSH's ``match_pattern_list``: 1 when a pattern matches, -1 when a ``!pattern`` does, else 0."""
    found = 0
    for pattern in patterns.split(","):
        negated = pattern.startswith("!")
        if _match_pattern(name, pattern[1:] if negated else pattern):
            if negated:
                return -1
            found = 1
    return found


def _ssh_time(value: str, where: str) -> int:
    """An allowed_signers time (YYYYMMDD[HHMM[SS]], UTC with a trailing Z, else local) as epoch seconds."""
    utc = value.endswith("Z")
    digits = value[:-1] if utc else value
    formats = {8: "%Y%m%d", 12: "%Y%m%d%H%M", 14: "%Y%m%d%H%M%S"}
    # ASCII digits only: str.isdigit() and strptime() also take "２０２０", which OpenSSH refuses
    # (a regex: str.isascii is 3.7+).
    if not re.fullmatch(r"[0-9]+", digits) or len(digits) not in formats:
        raise KeyFileError(f"{where}: time {value!r} is not YYYYMMDD[HHMM[SS]][Z]")
    try:
        moment = datetime.datetime.strptime(digits, formats[len(digits)])
    except ValueError as exc:
        raise KeyFileError(f"{where}: time {value!r} is not a date ({exc})") from None
    if utc:
        seconds = int(moment.replace(tzinfo=datetime.timezone.utc).timestamp())
    else:
        # Local time read as OpenSSH's parse_absolute_time() reads it: tm_isdst = 0 (mktime's -1
        # would read a summer time an hour earlier, trusting a key before ssh-keygen does).
        seconds = int(time.mktime((*moment.timetuple()[:8], 0)))
    if seconds <= 0:  # OpenSSH reads 0 as "no limit" and refuses it; so do we, and anything before
        raise KeyFileError(f"{where}: time {value!r} is not after 1970-01-01 00:00:00 UTC")
    return seconds


_OPTION = re.compile(r'([A-Za-z-]+)(?:="([^"]*)")?(?:,|$)')
_OPTIONS = re.compile(r'[A-Za-z-]+(?:="[^"\\ \t]*")?(?:,[A-Za-z-]+(?:="[^"\\ \t]*")?)*')


def _with_options(key: PublicKey, options: str, where: str) -> PublicKey:
    """Apply allowed_signers options (namespaces, valid-after, valid-before; names in any case)."""
    found: Dict[str, str] = {}
    if options and not _OPTIONS.fullmatch(options):
        # A leading, trailing or doubled comma, a backslash escape, a space: OpenSSH skips such
        # a line (or reads it otherwise); airbundle will not guess.
        raise KeyFileError(f'{where}: malformed options {options!r} (name="value",... with no spaces)')
    pos = 0
    while pos < len(options):
        match = _OPTION.match(options, pos)
        if not match or match.end() == pos:
            raise KeyFileError(f'{where}: malformed options {options!r} (name="value",...)')
        name, value = match.group(1).lower(), match.group(2)
        if name == "cert-authority":
            raise KeyFileError(f"{where}: cert-authority keys are not supported; list the signing key itself")
        if name not in ("namespaces", "valid-after", "valid-before"):
            raise KeyFileError(
                f"{where}: unknown option {match.group(1)!r} (allowed_signers options: namespaces, "
                "valid-after, valid-before)"
            )
        if value is None:
            raise KeyFileError(f'{where}: option {match.group(1)} needs a quoted value, {name}="..."')
        if name in found:
            raise KeyFileError(f"{where}: option {name} given twice")
        if name == "namespaces" and any(len(p) > MAX_PATTERN for p in value.split(",")):
            raise KeyFileError(f"{where}: a namespaces pattern over {MAX_PATTERN} characters")
        found[name] = value
        pos = match.end()
    after = _ssh_time(found["valid-after"], where) if "valid-after" in found else None
    before = _ssh_time(found["valid-before"], where) if "valid-before" in found else None
    if after is not None and before is not None and before <= after:
        raise KeyFileError(f"{where}: valid-before is not after valid-after")
    return dataclasses.replace(
        key,
        valid_after=after,
        valid_before=before,
        namespaces=tuple(found["namespaces"].split(",")) if "namespaces" in found else None,
    )


def _signed_data(message: bytes, namespace: str, hash_alg: str, reserved: bytes = b"") -> bytes:
    digest = hashlib.new(hash_alg, message).digest()
    return (
        b"SSHSIG"
        + _string(namespace.encode())
        + _string(reserved)
        + _string(hash_alg.encode())
        + _string(digest)
    )


def sign(key: PrivateKey, message: bytes, namespace: str = NAMESPACE) -> bytes:
    """An armored SSHSIG over ``message`` (deterministic: Ed25519 has no nonce)."""
    signature = key.sign_raw(_signed_data(message, namespace, HASH_ALG))
    blob = (
        b"SSHSIG"
        + struct.pack(">I", SIG_VERSION)
        + _string(key.public.blob)
        + _string(namespace.encode())
        + _string(b"")
        + _string(HASH_ALG.encode())
        + _string(_string(KEY_TYPE.encode()) + _string(signature))
    )
    body = base64.b64encode(blob)
    lines = [body[i : i + 70] for i in range(0, len(body), 70)]  # ssh-keygen wraps at 70
    return b"\n".join([_ARMOR_BEGIN, *lines, _ARMOR_END]) + b"\n"


@dataclass(frozen=True)
class SshSig:
    """The fields of a parsed SSHSIG blob."""

    public_key: PublicKey
    namespace: str
    reserved: bytes
    hash_alg: str
    signature: bytes  # the raw 64-byte Ed25519 signature


def parse_signature(armored: bytes) -> SshSig:
    """Decode an armored SSHSIG.

    Raises:
        SignatureError: wrong armor, bad base64, truncated blob, unknown
            version, key type or hash algorithm.
    """
    if len(armored) > MAX_SIGNATURE_BYTES:
        raise SignatureError(f"signature is {len(armored)} bytes; an SSHSIG is far smaller")
    text = armored.strip()
    if not (text.startswith(_ARMOR_BEGIN) and text.endswith(_ARMOR_END)):
        raise SignatureError("signature is not an armored SSH signature (BEGIN/END SSH SIGNATURE)")
    body = b"".join(text[len(_ARMOR_BEGIN) : -len(_ARMOR_END)].split())
    try:
        blob = base64.b64decode(body, validate=True)
        reader = _Reader(blob)
        if reader.take(6) != b"SSHSIG":
            raise ValueError("missing SSHSIG magic")
        version = reader.uint32()
        if version != SIG_VERSION:
            raise ValueError(f"unsupported SSHSIG version {version}")
        public_key = PublicKey.from_blob(reader.string())
        namespace = reader.string().decode()
        reserved = reader.string()
        hash_alg = reader.string().decode()
        sig_reader = _Reader(reader.string())
        sig_type = sig_reader.string()
        signature = sig_reader.string()
        if not reader.done() or not sig_reader.done():
            raise ValueError("trailing bytes")
    except (ValueError, binascii.Error, UnicodeDecodeError) as exc:
        raise SignatureError(f"malformed SSH signature: {exc}") from exc
    if sig_type != KEY_TYPE.encode() or len(signature) != 64:
        raise SignatureError("malformed SSH signature: not an ssh-ed25519 signature")
    if hash_alg not in ("sha256", "sha512"):
        raise SignatureError(f"SSH signature uses unsupported hash {hash_alg!r}")
    return SshSig(public_key, namespace, reserved, hash_alg, signature)


HAVE_CRYPTOGRAPHY = Ed25519PrivateKey is not None

# (parsed signature, message, armored signature) -> does the signature verify with its own key?
Checker = Callable[["SshSig", bytes, bytes], bool]


def utc_text(moment: float) -> str:
    return datetime.datetime.fromtimestamp(moment, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _cryptography_check(sig: SshSig, message: bytes, _armored: bytes) -> bool:
    _require_cryptography()
    data = _signed_data(message, sig.namespace, sig.hash_alg, sig.reserved)
    try:
        Ed25519PublicKey.from_public_bytes(sig.public_key.raw).verify(sig.signature, data)
    except InvalidSignature:
        return False
    return True


def verify(
    message: bytes,
    armored: bytes,
    trusted: List[PublicKey],
    namespace: str = NAMESPACE,
    checker: Optional[Checker] = None,
    now: Optional[float] = None,
) -> PublicKey:
    """Check an SSHSIG over ``message`` against the trusted keys.

    ``now`` (epoch seconds) is checked against the trusted key's validity window
    from allowed_signers, if it has one. ``checker`` does the Ed25519
    arithmetic; by default ``cryptography``. A site
    without it passes one that asks stock ``ssh-keygen -Y verify`` (see
    ``archive.checker``); parsing, namespace and trust stay here either way.

    Returns:
        The trusted key that made the signature.

    Raises:
        SignatureError: malformed, wrong namespace, or the signature does not
            match the message.
        UntrustedKeyError: the signature is sound but its key is not trusted;
            carries the signer's fingerprint.
    """
    sig = parse_signature(armored)
    if sig.namespace != namespace:
        raise SignatureError(
            f"signature namespace is {sig.namespace!r}, expected {namespace!r} (signed for another purpose)"
        )
    if not (checker or _cryptography_check)(sig, message, armored):
        raise SignatureError(
            f"signature by {sig.public_key.fingerprint} does not match the signed bytes "
            "(they were changed after signing)"
        )
    # As ssh-keygen does: every allowed_signers line for this key is tried; the first that
    # permits the namespace and the time wins. The first refusal is reported.
    refusals: List[str] = []
    for key in trusted:
        if key.raw != sig.public_key.raw:
            continue
        if key.namespaces is not None and match_pattern_list(namespace, ",".join(key.namespaces)) != 1:
            refusals.append(
                f"signed by {key.fingerprint}, which the allowed signers limit to {','.join(key.namespaces)}"
            )
        elif now is not None and key.valid_after is not None and now < key.valid_after:
            refusals.append(
                f"signed by {key.fingerprint}, which is trusted only from {utc_text(key.valid_after)} "
                f"(host clock {utc_text(now)})"
            )
        elif now is not None and key.valid_before is not None and now > key.valid_before:
            refusals.append(
                f"signed by {key.fingerprint}, which is trusted only until {utc_text(key.valid_before)} "
                f"(host clock {utc_text(now)}); use the publisher's new key"
            )
        else:
            return key
    if refusals:
        raise UntrustedKeyError(refusals[0], fingerprint=sig.public_key.fingerprint)
    trusted_fps = ", ".join(k.fingerprint for k in trusted)
    raise UntrustedKeyError(
        f"signed by {sig.public_key.fingerprint}, which is not a trusted key ({trusted_fps})",
        fingerprint=sig.public_key.fingerprint,
    )
