"""The trust decision on its own: every refusal of ``bundler.trust`` as a unit test that needs no tar.

Each test hands the pure module the bytes an attacker would craft (a lock, a signature,
a member header) and checks the error class, hence the exit code, and that the message
names what is at fault.
"""

from __future__ import annotations

import dataclasses
import hashlib

import pytest

from bundler import signing, trust
from bundler.errors import ExpiredError, IntegrityError, SignatureError, TrustError, UntrustedKeyError
from bundler.lock import Lock, LockError, Member

from .conftest import Keys
from .test_lock import sample

NOW = 1_800_000_000.0  # a fixed clock: the decision takes the time as data
SHA = "ab" * 32


def _lock(**changes: object) -> Lock:
    """test_lock's sample lock (installer, binary, step) plus one plain file, ``files/a``."""
    lock = sample()
    lock = dataclasses.replace(lock, members=(*lock.members, Member("files/a", 3, SHA, "file")))
    return dataclasses.replace(lock, **changes)  # type: ignore[arg-type]


def _facts(keys: Keys, **changes: object) -> trust.SiteFacts:
    return dataclasses.replace(trust.SiteFacts((keys.pub,), NOW), **changes)  # type: ignore[arg-type]


def _signed(keys: Keys, lock: Lock | None = None, namespace: str = "airbundle") -> tuple[bytes, bytes]:
    data = (lock or _lock()).to_bytes()
    return data, signing.sign(keys.key, data, namespace)


def test_a_signed_lock_is_trusted(keys: Keys) -> None:
    data, sig = _signed(keys)
    decision = trust.decide(data, sig, _facts(keys))
    assert decision.lock.name == "demo" and decision.signer.raw == keys.pub.raw
    assert decision.lock_bytes == data and decision.lock_sha256 == hashlib.sha256(data).hexdigest()


def test_an_unsigned_lock_is_refused(keys: Keys) -> None:
    """Attack: strip lock.json.sig and hope the reader falls back to trusting the lock."""
    with pytest.raises(SignatureError, match=r"lock\.json\.sig is missing"):
        trust.decide(_lock().to_bytes(), None, _facts(keys))


def test_a_changed_lock_is_refused(keys: Keys) -> None:
    """Attack: keep the publisher's signature, change one byte of the lock (a member's digest)."""
    data, sig = _signed(keys)
    with pytest.raises(SignatureError, match="does not match the signed bytes"):
        trust.decide(data.replace(SHA.encode(), b"cd" * 32, 1), sig, _facts(keys))


def test_another_key_is_refused(keys: Keys, other_keys: Keys) -> None:
    """Attack: sign a lock of one's own with a key of one's own."""
    data, sig = _signed(other_keys)
    with pytest.raises(UntrustedKeyError, match="not a trusted key") as err:
        trust.decide(data, sig, _facts(keys))
    assert err.value.fingerprint == other_keys.pub.fingerprint and err.value.exit_code == 3


def test_a_signature_for_another_namespace_is_refused(keys: Keys) -> None:
    """Attack: reuse a signature the publisher's key made for another purpose (e.g. git commits)."""
    data, sig = _signed(keys, namespace="git")
    with pytest.raises(SignatureError, match="namespace is 'git'"):
        trust.decide(data, sig, _facts(keys))


@pytest.mark.parametrize(
    ("window", "message"),
    [
        ({"valid_before": int(NOW) - 1}, "trusted only until"),
        ({"valid_after": int(NOW) + 3600}, "trusted only from"),
        ({"namespaces": ("other",)}, "limit to other"),
    ],
    ids=["retired", "not-yet", "namespace"],
)
def test_the_allowed_signers_window_and_namespaces_hold(keys: Keys, window: dict, message: str) -> None:
    """Attack: a bundle signed with a retired key (or one limited to another use) the site still lists."""
    data, sig = _signed(keys)
    limited = dataclasses.replace(keys.pub, **window)
    with pytest.raises(UntrustedKeyError, match=message):
        trust.decide(data, sig, _facts(keys, trusted=(limited,)))


def test_an_unknown_lock_format_is_refused(keys: Keys) -> None:
    data = _lock().to_bytes().replace(b'"format": 1', b'"format": 2')
    with pytest.raises(LockError, match="format 2") as err:
        trust.decide(data, signing.sign(keys.key, data), _facts(keys))
    assert err.value.exit_code == 4


def test_expiry_is_decided_on_the_given_clock(keys: Keys) -> None:
    data, sig = _signed(keys, _lock(expires=int(NOW) - 60))
    with pytest.raises(ExpiredError, match="expired at"):
        trust.decide(data, sig, _facts(keys))
    assert trust.decide(data, sig, _facts(keys, allow_expired=True)).lock.expires == int(NOW) - 60
    assert trust.decide(data, sig, _facts(keys, now=NOW - 3600)).lock.name == "demo"


def test_a_bundle_for_another_platform_is_refused(keys: Keys) -> None:
    data, sig = _signed(keys)
    with pytest.raises(TrustError, match="for arch 'amd64', this site has 'arm64'"):
        trust.decide(data, sig, _facts(keys, platform={"arch": "arm64"}))
    assert trust.decide(data, sig, _facts(keys, platform={"codename": "bookworm"})).lock.name == "demo"


def test_a_downgrade_is_refused_when_installing(keys: Keys) -> None:
    """Attack: replay an older, validly signed bundle (with its known flaws) over a newer install."""
    data, sig = _signed(keys, _lock(version="1.0.0"))
    installing = {"installing": True, "installed": {"demo": "1.2.0"}}
    with pytest.raises(TrustError, match=r"demo 1\.2\.0 is installed; refusing the older 1\.0\.0"):
        trust.decide(data, sig, _facts(keys, **installing))
    assert trust.decide(data, sig, _facts(keys, allow_downgrade=True, **installing)).installed == "1.2.0"
    assert trust.decide(data, sig, _facts(keys)).installed is None  # verify decides no downgrade


def test_a_delta_needs_its_base_unpacked_and_intact(keys: Keys) -> None:
    base_sha = "cd" * 32
    delta = _lock(
        version="1.1.0",
        base={"name": "demo", "version": "1.0.0", "lock_sha256": base_sha},
        inherited=(Member("images/blobs/sha256/" + "ef" * 32, 5, "ef" * 32, "image"),),
    )
    data, sig = _signed(keys, delta)
    installing = {"installing": True, "installed": {"demo": "1.0.0"}}
    with pytest.raises(TrustError, match=r"delta bundle on demo 1\.0\.0"):
        trust.decide(data, sig, _facts(keys, **installing))
    with pytest.raises(TrustError, match="install that bundle here first"):  # a changed base lock
        trust.decide(data, sig, _facts(keys, unpacked={"demo-1.0.0": "00" * 32}, **installing))
    decision = trust.decide(data, sig, _facts(keys, unpacked={"demo-1.0.0": base_sha}, **installing))
    assert decision.base_folder == "demo-1.0.0"


def test_a_file_and_a_folder_at_one_path_are_refused(keys: Keys) -> None:
    """Attack (or builder bug): members ``files/a`` and ``files/a/b``: verify passes, unpacking crashes."""
    lock = _lock(members=(*_lock().members, Member("files/a/b", 1, SHA, "file")))
    data, sig = _signed(keys, lock)
    with pytest.raises(LockError, match="'files/a' is a file and also the folder of 'files/a/b'"):
        trust.decide(data, sig, _facts(keys))


# ---------------------------------------------------------------- member headers


def _header(**changes: object) -> trust.Header:
    header = trust.Header("files/a", b"0", 3, 0o644, trust.USTAR_MAGIC)
    return dataclasses.replace(header, **changes)  # type: ignore[arg-type]


def test_our_own_header_is_accepted() -> None:
    trust.check_header(_header())
    trust.check_header(_header(type=b"\0", pax={"path": "files/a", "size": "3"}))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"magic": b"ustar  \0"}, "not a POSIX ustar header"),
        ({"type": b"2"}, "a symbolic link"),
        ({"type": b"1"}, "a hard link"),
        ({"type": b"6"}, "a FIFO"),
        ({"type": b"S"}, "a GNU sparse file"),
        ({"type": b"5"}, "a directory"),
        ({"size": -1}, "impossible size -1"),
        ({"pax": {"GNU.sparse.size": "3"}}, "PAX record 'GNU.sparse.size'"),
        ({"pax": {"GNU.sparse.map": "0,3"}}, "PAX record 'GNU.sparse.map'"),
        ({"pax": {"linkpath": "/etc/shadow"}}, "PAX record 'linkpath'"),
        ({"pax": {"size": "-5"}}, "malformed PAX size '-5'"),
        ({"pax": {"size": "+5"}}, "malformed PAX size '+5'"),
        ({"pax": {"size": "5 "}}, "malformed PAX size"),
        ({"name": "../etc/passwd"}, "has a '..' segment"),
        ({"name": "/etc/passwd"}, "is absolute"),
        ({"name": "a\\b"}, "backslash"),
        ({"mode": 0o4755}, "mode 4755"),
        ({"mode": 0o666}, "group/world-writable"),
    ],
)
def test_headers_our_writer_never_emits_are_refused(changes: dict, message: str) -> None:
    """Attack: a member GNU tar would extract differently (sparse maps, links, GNU prefix fields) or
    outside the work folder; each is refused before any byte of it is read."""
    with pytest.raises(IntegrityError, match="unsafe member") as err:
        trust.check_header(_header(**changes))
    assert message in str(err.value) and err.value.exit_code == 4


@pytest.mark.parametrize("size", [-1, trust.MAX_PAX_BYTES + 1])
def test_pax_header_sizes_are_bounded(size: int) -> None:
    """Attack: a negative PAX header size made the reader walk backwards forever (inspect --sbom hung)."""
    with pytest.raises(IntegrityError, match=f"a PAX header of {size} bytes"):
        trust.check_pax("x", size, {})


def test_the_audit_finds_extra_missing_sizes_and_modes() -> None:
    lock = _lock()
    audit = trust.Audit(lock)
    for member in lock.members[:-1]:
        assert audit.add(member.path, member.size, int(member.mode, 8)) is True
    assert audit.add("files/extra", 1, 0o644) is False
    assert [str(p) for p in audit.finish()] == [
        "files/extra: extra member: not listed in lock.json",
        "files/a: missing: listed in lock.json but not in the bundle",
    ]
    audit = trust.Audit(lock)
    assert audit.add("install.sh", 11, 0o755) is False
    assert audit.add("files/a", 3, 0o755) is False
    assert [p.problem for p in audit.finish()][:2] == [
        "size 11, lock.json says 10",
        "mode 0755, lock.json says 0644",
    ]
    assert trust.Audit(lock).digest_problem("files/a", "00" * 32) is not None
    assert trust.Audit(lock).digest_problem("files/a", SHA) is None


@pytest.mark.parametrize("second", ["install.sh", "INSTALL.SH", "Install.sh"])
def test_duplicates_and_case_fold_collisions_are_refused(second: str) -> None:
    """Attack: a second copy of a name (GNU tar keeps the last, a reader the first), or a name that
    lands on the same file on a case-insensitive filesystem."""
    audit = trust.Audit(_lock())
    audit.add("install.sh", 10, 0o755)
    with pytest.raises(IntegrityError, match="appears twice"):
        audit.add(second, 10, 0o755)


def test_an_older_build_of_the_same_version_does_not_replace_the_installed_one(keys: Keys) -> None:
    """Attack: replay an earlier, validly signed build that reused the installed version number
    (say before a fix was rebuilt as the same 1.0.0): same version, other lock. Refused unless
    --allow-downgrade; the same bundle again (a re-run) is fine."""
    data, sig = _signed(keys)
    digest = hashlib.sha256(data).hexdigest()
    facts = {"installing": True, "installed": {"demo": "1.0.0"}}
    with pytest.raises(TrustError, match="installed from another bundle") as err:
        trust.decide(data, sig, _facts(keys, installed_locks={"demo": "00" * 32}, **facts))
    assert err.value.exit_code == 3 and "1.0.0+b2" in str(err.value)
    assert (
        trust.decide(data, sig, _facts(keys, installed_locks={"demo": digest}, **facts)).installed == "1.0.0"
    )
    replaced = _facts(keys, installed_locks={"demo": "00" * 32}, allow_downgrade=True, **facts)
    assert trust.decide(data, sig, replaced).lock.version == "1.0.0"
    # Another spelling of the installed version is the same version.
    data, sig = _signed(keys, _lock(version="1.0.0~RC1"))
    respelled = {
        "installing": True,
        "installed": {"demo": "1.0.0-rc1"},
        "installed_locks": {"demo": "00" * 32},
    }
    with pytest.raises(TrustError, match="installed from another bundle"):
        trust.decide(data, sig, _facts(keys, **respelled))


def test_a_file_and_a_folder_differing_in_case_are_refused(keys: Keys) -> None:
    """``files/A`` and ``files/a/b``: one path on a case-insensitive work folder."""
    lock = _lock(members=(*_lock().members, Member("files/A/b", 1, SHA, "file")))
    data, sig = _signed(keys, lock)
    with pytest.raises(LockError, match="'files/a' is a file and also the folder of 'files/A/b'"):
        trust.decide(data, sig, _facts(keys))


def _block(**fields: bytes) -> bytes:
    """A header block as our writer makes it, with some raw fields replaced."""
    import tarfile

    info = tarfile.TarInfo("files/a")
    info.size, info.mode = 3, 0o644
    block = bytearray(info.tobuf(tarfile.PAX_FORMAT)[-512:])
    spans = {"size": (124, 136), "uid": (108, 116), "uname": (265, 297), "prefix": (345, 500)}
    for name, value in fields.items():
        start, end = spans[name]
        block[start:end] = value.ljust(end - start, b"\0")
    return bytes(block)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"size": b"00000_00003\0"}, "its size field is not plain octal digits"),
        ({"size": b"+0000000003\0"}, "its size field is not plain octal digits"),
        ({"size": b"\x80" + b"\0" * 10 + b"\3"}, "its size field is not plain octal digits"),
        ({"uid": b"0001750\0"}, "a uid other than 0"),
        ({"uname": b"mallory"}, "a uname field"),
        ({"prefix": b"elsewhere"}, "a prefix field"),
    ],
)
def test_header_fields_are_read_as_the_builder_writes_them(fields: dict, message: str) -> None:
    """Attack: header bytes the lock's digests do not cover: a size spelled ``0_3`` (tarfile reads
    it, GNU tar refuses it), a base-256 number, an owner, a name prefix (tarfile prepends it,
    GNU tar may not). Each is refused."""
    trust.check_block("files/a", _block())
    with pytest.raises(IntegrityError, match=message):
        trust.check_block("files/a", _block(**fields))


def test_the_lock_must_be_the_one_install_sh_checked(keys: Keys) -> None:
    """Attack: another validly signed bundle swapped in after install.sh's stock-tool check."""
    data, sig = _signed(keys)
    digest = hashlib.sha256(data).hexdigest()
    assert trust.decide(data, sig, _facts(keys, checked_lock=digest)).lock_sha256 == digest
    other, other_sig = _signed(keys, _lock(version="1.0.1"))
    with pytest.raises(
        IntegrityError, match=r"lock\.json is not the one install\.sh checked \(sha256 " + digest[:16]
    ):
        trust.decide(other, other_sig, _facts(keys, checked_lock=digest))
