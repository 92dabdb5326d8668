"""Keys and SSHSIG signatures, cross-checked with the real OpenSSH ssh-keygen."""

from __future__ import annotations

import base64
import contextlib
import os
import struct
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bundler import signing
from bundler.errors import KeyFileError, SignatureError, UntrustedKeyError

from .conftest import Keys, need


def _allowed_signers(tmp_path: Path, keys: Keys) -> Path:
    path = tmp_path / "allowed_signers"
    path.write_text(f"airbundle {keys.pub.openssh_line()}\n")
    return path


def _ssh_verify(tmp_path: Path, keys: Keys, message: bytes, sig: bytes, namespace: str = "airbundle"):
    sig_path = tmp_path / "msg.sig"
    sig_path.write_bytes(sig)
    return subprocess.run(
        [
            need("ssh-keygen"),
            "-Y",
            "verify",
            "-f",
            _allowed_signers(tmp_path, keys),
            "-I",
            "airbundle",
            "-n",
            namespace,
            "-s",
            sig_path,
        ],
        input=message,
        capture_output=True,
    )


def test_fingerprint_matches_ssh_keygen(keys: Keys) -> None:
    out = subprocess.run(
        [need("ssh-keygen"), "-l", "-f", keys.pub_path], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert out == keys.pub.describe()
    assert keys.pub.fingerprint.startswith("SHA256:")


def test_ssh_keygen_accepts_our_signature(tmp_path: Path, keys: Keys) -> None:
    message = b'{"hello": "site"}\n'
    sig = signing.sign(keys.key, message)
    ok = _ssh_verify(tmp_path, keys, message, sig)
    assert ok.returncode == 0, ok.stderr
    assert b'Good "airbundle" signature' in ok.stdout + ok.stderr
    changed = _ssh_verify(tmp_path, keys, message.replace(b"site", b"sitf"), sig)
    assert changed.returncode != 0
    other_ns = _ssh_verify(tmp_path, keys, message, sig, namespace="file")
    assert other_ns.returncode != 0


def test_we_accept_ssh_keygen_signature(tmp_path: Path) -> None:
    """Interop the other way: a key and signature made by OpenSSH itself."""
    key = tmp_path / "id_ed25519"
    subprocess.run([need("ssh-keygen"), "-q", "-t", "ed25519", "-N", "", "-C", "ops", "-f", key], check=True)
    data = tmp_path / "lock.json"
    data.write_bytes(b"payload bytes\n")
    subprocess.run([need("ssh-keygen"), "-q", "-Y", "sign", "-n", "airbundle", "-f", key, data], check=True)
    trusted = signing.parse_public_keys(key.with_suffix(".pub").read_text(), "id.pub")
    signer = signing.verify(data.read_bytes(), Path(f"{data}.sig").read_bytes(), trusted)
    assert signer.comment == "ops"
    # An OpenSSH-format private key loads too, and signs what ssh-keygen verifies.
    loaded = signing.load_private_key(key.read_bytes(), str(key))
    assert loaded.public.raw == trusted[0].raw


def test_verify_rejects_changed_message(keys: Keys) -> None:
    sig = signing.sign(keys.key, b"abc")
    assert signing.verify(b"abc", sig, [keys.pub]) == keys.pub
    with pytest.raises(SignatureError, match="does not match"):
        signing.verify(b"abd", sig, [keys.pub])


def test_untrusted_key_names_fingerprint(keys: Keys, other_keys: Keys) -> None:
    sig = signing.sign(other_keys.key, b"abc")
    with pytest.raises(UntrustedKeyError) as info:
        signing.verify(b"abc", sig, [keys.pub])
    assert info.value.fingerprint == other_keys.pub.fingerprint
    assert other_keys.pub.fingerprint in str(info.value)


def test_wrong_namespace_refused(keys: Keys) -> None:
    sig = signing.sign(keys.key, b"abc", namespace="git")
    with pytest.raises(SignatureError, match="namespace"):
        signing.verify(b"abc", sig, [keys.pub])


def _reblob(sig: bytes, mutate) -> bytes:
    lines = sig.strip().splitlines()
    blob = bytearray(base64.b64decode(b"".join(lines[1:-1])))
    mutate(blob)
    return b"\n".join([lines[0], base64.b64encode(bytes(blob)), lines[-1]]) + b"\n"


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda s: s[: len(s) // 2], "armored"),
        (lambda s: s.replace(b"SSH SIGNATURE-----\n", b"SSH SIGNATURE-----\n!!!", 1), "malformed"),
        (lambda s: _reblob(s, lambda b: b.__setitem__(slice(6, 10), struct.pack(">I", 2))), "version 2"),
        (lambda s: _reblob(s, lambda b: b.__delitem__(slice(-10, None))), "malformed"),
        (lambda s: b"", "armored"),
        (lambda s: b"x" * (signing.MAX_SIGNATURE_BYTES + 1), "far smaller"),
    ],
    ids=["truncated", "not-base64", "version-2", "short-blob", "empty", "huge"],
)
def test_malformed_signatures_refused(keys: Keys, damage, message: str) -> None:
    sig = damage(signing.sign(keys.key, b"abc"))
    with pytest.raises(SignatureError, match=message):
        signing.verify(b"abc", sig, [keys.pub])


def test_encrypted_key(keys: Keys) -> None:
    pem = keys.key.to_pem(b"s3cret")
    assert b"ENCRYPTED" in pem
    assert signing.load_private_key(pem, "k.key", b"s3cret").public.raw == keys.pub.raw
    with pytest.raises(KeyFileError, match="wrong passphrase"):
        signing.load_private_key(pem, "k.key", b"nope")
    with pytest.raises(KeyFileError, match="--passphrase-env"):
        signing.load_private_key(pem, "k.key")


def test_bad_key_files() -> None:
    with pytest.raises(KeyFileError, match="not a PEM private key"):
        signing.load_private_key(b"hello", "k.key")
    with pytest.raises(KeyFileError, match=r"k\.pub:2: unsupported key type ssh-rsa"):
        signing.parse_public_keys("# c\nssh-rsa AAAAB3Nza x\n", "k.pub")
    with pytest.raises(KeyFileError, match="holds no public key"):
        signing.parse_public_keys("\n# only comments\n", "k.pub")
    with pytest.raises(KeyFileError, match=r"k\.pub:1: malformed"):
        signing.parse_public_keys("ssh-ed25519 !!!\n", "k.pub")


def test_allowed_signers_format_is_read(keys: Keys, other_keys: Keys) -> None:
    text = f'airbundle namespaces="airbundle" {keys.pub.openssh_line()}\nairbundle {other_keys.pub.openssh_line()}\n'
    assert [k.raw for k in signing.parse_public_keys(text, "as")] == [keys.pub.raw, other_keys.pub.raw]
    pub = f"{keys.pub.openssh_line()}\n{other_keys.pub.openssh_line()}\n"  # a .pub file (or two keys)
    assert [k.raw for k in signing.parse_public_keys(pub, "pub")] == [keys.pub.raw, other_keys.pub.raw]


def test_encrypted_openssh_key(tmp_path: Path) -> None:
    key = tmp_path / "id_ed25519"
    subprocess.run([need("ssh-keygen"), "-q", "-t", "ed25519", "-N", "pw12345", "-f", key], check=True)
    try:
        import bcrypt  # noqa: F401  (cryptography needs it for OpenSSH's KDF)
    except ImportError:
        with pytest.raises(KeyFileError, match="install the 'bcrypt' package"):
            signing.load_private_key(key.read_bytes(), "id", b"pw12345")
        return
    assert signing.load_private_key(key.read_bytes(), "id", b"pw12345")
    with pytest.raises(KeyFileError, match="wrong passphrase"):
        signing.load_private_key(key.read_bytes(), "id", b"nope")


# ---------------------------------------------------------------- allowed_signers as ssh-keygen reads it

ALLOWED_SIGNERS_CASES = [
    # (allowed_signers lines, with {K} for the signing key and {O} for another; ssh-keygen's verdict)
    ("airbundle {K}", True),
    ("{K}", None),  # a .pub line: trusted for airbundle by airbundle; install.sh adds the principal
    ("alice {K}", False),
    ("*,!airbundle {K}", False),
    ("air* {K}", True),
    ("alice,airbundle {K}", True),
    ('airbundle VALID-BEFORE="20200101Z" {K}', False),
    ('airbundle Valid-After="29990101Z" {K}', False),
    ('airbundle NAMESPACES="git" {K}', False),
    ('airbundle namespaces="*" {K}', True),
    ('airbundle namespaces="air*,!git" {K}', True),
    ('airbundle namespaces="*,!airbundle" {K}', False),
    ("airbundle CERT-AUTHORITY {K}", False),
    ("airbundle valid-before=20200101Z {K}", False),
    ('airbundle foo="x" {K}', False),
    ('airbundle valid-after="29990101Z",valid-before="20200101Z" {K}', False),
    ('airbundle valid-after="20200101Z",valid-before="29990101Z" {K}', True),
    ('airbundle namespaces="git" {K}\nairbundle {K}', True),
    ("airbundle {O}\nairbundle {K}", True),
    ("airbundle {O}", False),
]


@pytest.mark.parametrize(("lines", "ssh_accepts"), ALLOWED_SIGNERS_CASES)
def test_allowed_signers_are_read_as_ssh_keygen_reads_them(
    keys: Keys, other_keys: Keys, tmp_path: Path, lines: str, ssh_accepts: bool | None
) -> None:
    """Attack: the Python check read the operator's allowed_signers more loosely than stock
    ssh-keygen (principals ignored, option names case-sensitive, unreadable options dropped),
    so a bundle signed by a retired key was refused by the README's check and then accepted
    by the installer. Now airbundle never accepts what ssh-keygen refuses; where it cannot
    read a line it refuses the file (exit 2) rather than skipping it."""
    text = lines.format(K=keys.pub.openssh_line(), O=other_keys.pub.openssh_line()) + "\n"
    signers = tmp_path / "allowed_signers"
    signers.write_text(text)
    message = b"the lock's bytes\n"
    sig = tmp_path / "lock.json.sig"
    sig.write_bytes(signing.sign(keys.key, message))
    if ssh_accepts is not None:
        run = subprocess.run(
            ["ssh-keygen", "-Y", "verify", "-f", signers, "-I", "airbundle", "-n", "airbundle", "-s", sig],
            input=message,
            capture_output=True,
        )
        assert (run.returncode == 0) == ssh_accepts, run.stderr  # the table is OpenSSH's own verdict
    try:
        trusted = signing.parse_public_keys(text, str(signers))
    except KeyFileError as exc:
        assert not ssh_accepts, f"airbundle refuses a file ssh-keygen accepts: {exc}"
        assert exc.exit_code == 2
        return
    try:
        signing.verify(message, sig.read_bytes(), trusted, now=time.time())
        accepted = True
    except SignatureError:
        accepted = False
    assert accepted == (ssh_accepts is not False), text


_LONG = "A" * 1100
DIFFERENTIAL_LINES = {
    "plain": "airbundle {K}\n",
    "trailing comma in options": 'airbundle namespaces="airbundle", {K}\n',
    "quoted principal, then airbundle": '"x",airbundle {K}\n',
    "quoted principal": '"airbundle" {K}\n',
    "quoted principal with a space": '"air bundle" {K}\n',
    "long principal sub-pattern": "airbundle," + _LONG + " {K}\n",
    "long namespaces sub-pattern": 'airbundle namespaces="airbundle,' + _LONG + '" {K}\n',
    "comment, VT, key": "# old\x0bairbundle {K}\n",
    "comment, FF, key": "# old\x0cairbundle {K}\n",
    "comment, FS, key": "# old\x1cairbundle {K}\n",
    "comment, NEL, key": "# old\x85airbundle {K}\n",
    "comment, LS, key": "# old\u2028airbundle {K}\n",
    "comment, CR, key": "# old\rairbundle {K}\n",
    "CR-only lines, retired first": 'airbundle valid-before="20200101Z" {K}\rairbundle {K}\r',
    "CRLF": "airbundle {K}\r\n",
    "tabs": 'airbundle\tnamespaces="airbundle"\t{K}\n',
    "full-width digits": 'airbundle valid-after="\uff12\uff10\uff12\uff100101Z" {K}\n',
    "arabic-indic digits": 'airbundle valid-after="\u0662\u0660\u0662\u06600101Z" {K}\n',
    "valid-after 1970 (0)": 'airbundle valid-after="19700101Z" {K}\n',
    "valid-before 1970 (0)": 'airbundle valid-before="19700101Z" {K}\n',
    "lower-case z": 'airbundle valid-before="20991231z" {K}\n',
    "UTC suffix": 'airbundle valid-before="20991231UTC" {K}\n',
    "namespaces with a space": 'airbundle namespaces="airbundle, file" {K}\n',
    "escaped quote in namespaces": 'airbundle namespaces="air\\"bundle" {K}\n',
    "escaped quote swallowing a key": 'airbundle namespaces="x\\" {K} y" {K}\n',
    "one option twice, other case": 'airbundle namespaces="airbundle",NAMESPACES="file" {K}\n',
    "option before the principal": 'namespaces="file" airbundle {K}\n',
    "garbage after the key": "airbundle {K}garbage\n",
    "comment after the key": "airbundle {K} # comment here\n",
    "leading spaces": "   airbundle {K}\n",
    "empty namespaces": 'airbundle namespaces="" {K}\n',
    "cert-authorityx": "airbundle cert-authorityx {K}\n",
    "option without a value": "airbundle namespaces {K}\n",
    "unquoted value": "airbundle namespaces=airbundle {K}\n",
    "future key, then plain": 'airbundle valid-after="20990101Z" {K}\nairbundle {K}\n',
    "broken line, then good": "airbundle garbage {K}\nairbundle {K}\n",
    "principal with a trailing comma": "airbundle, {K}\n",
    "principal !airbundle,*": "!airbundle,* {K}\n",
    "principal air*": "air* {K}\n",
    "quote inside a principal": 'air"bundle" {K}\n',
    "open quote swallowing options": '"airbundle valid-before="20200101Z" {K}\n',
    "NUL after the key": "airbundle {K}\x00junk\n",
    "BOM": "\ufeffairbundle {K}\n",
    "no-break space": "airbundle\u00a0{K}\n",
    "hour 24": 'airbundle valid-before="20991231240000Z" {K}\n',
    "February 30": 'airbundle valid-after="20200230Z" {K}\n',
    "second 60": 'airbundle valid-after="20200101000060Z" {K}\n',
    "doubled comma": 'airbundle namespaces="airbundle",,valid-after="20200101Z" {K}\n',
    "leading comma": 'airbundle ,namespaces="airbundle" {K}\n',
    "namespaces *": 'airbundle namespaces="*" {K}\n',
    "namespaces !airbundle,*": 'airbundle namespaces="!airbundle,*" {K}\n',
}


@pytest.mark.parametrize("label", sorted(DIFFERENTIAL_LINES))
def test_airbundle_never_trusts_what_ssh_keygen_refuses(keys: Keys, tmp_path: Path, label: str) -> None:
    """Attack: a key file line that ssh-keygen reads one way and airbundle another (line ends
    other than LF, quoted principals, trailing commas, long patterns, non-ASCII digits, a zero
    time). After the stock checks the Python decision is the last one, so it must never accept
    a signature that ``ssh-keygen -Y verify -I airbundle`` refuses on the same file."""
    text = DIFFERENTIAL_LINES[label].format(K=keys.pub.openssh_line())
    signers = tmp_path / "allowed_signers"
    signers.write_bytes(text.encode("utf-8"))
    message = b"the lock's bytes\n"
    sig = tmp_path / "lock.json.sig"
    sig.write_bytes(signing.sign(keys.key, message))
    run = subprocess.run(
        ["ssh-keygen", "-Y", "verify", "-f", signers, "-I", "airbundle", "-n", "airbundle", "-s", sig],
        input=message,
        capture_output=True,
    )
    try:
        signing.verify(
            message, sig.read_bytes(), signing.parse_public_keys(text, str(signers)), now=time.time()
        )
        accepted = True
    except (KeyFileError, SignatureError):
        accepted = False
    assert not (accepted and run.returncode != 0), f"airbundle trusts what ssh-keygen refuses: {text!r}"


def test_local_times_are_read_as_ssh_keygen_reads_them(keys: Keys, tmp_path: Path) -> None:
    """Attack: a ``valid-after`` in local time during summer time: Python's mktime (tm_isdst -1)
    read it an hour earlier than OpenSSH (tm_isdst 0), so airbundle trusted a key up to an hour
    before ssh-keygen did. Played in a zone on summer time now (southern or northern)."""
    import datetime

    zone = next((z for z in ("Australia/Sydney", "Europe/Berlin") if _summer_now(z)), None)
    if zone is None:
        pytest.skip("no listed time zone is on summer time today")
    with _time_zone(zone):
        moment = datetime.datetime.now() - datetime.timedelta(minutes=30)  # local wall clock
        line = f'airbundle valid-after="{moment:%Y%m%d%H%M%S}" {keys.pub.openssh_line()}\n'
        signers = tmp_path / "allowed_signers"
        signers.write_text(line)
        message = b"the lock's bytes\n"
        sig = tmp_path / "lock.json.sig"
        sig.write_bytes(signing.sign(keys.key, message))
        run = subprocess.run(
            ["ssh-keygen", "-Y", "verify", "-f", signers, "-I", "airbundle", "-n", "airbundle", "-s", sig],
            input=message, capture_output=True, env={**os.environ, "TZ": zone},
        )  # fmt: skip
        try:
            signing.verify(message, sig.read_bytes(), signing.parse_public_keys(line, "s"), now=time.time())
            accepted = True
        except SignatureError:
            accepted = False
        assert accepted == (run.returncode == 0), run.stderr


@contextlib.contextmanager
def _time_zone(zone: str) -> Iterator[None]:
    """This process's local time zone set to ``zone`` for the block."""
    saved = os.environ.get("TZ")
    os.environ["TZ"] = zone
    time.tzset()
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("TZ", None)
        else:
            os.environ["TZ"] = saved
        time.tzset()


def _summer_now(zone: str) -> bool:
    with _time_zone(zone):
        return time.localtime().tm_isdst > 0
