"""The bundle file: deterministic tar writing, strict header reading, verification.

Writing: members go out in the order given, with fixed mtime, uid/gid 0, no
user names and normalized modes, so equal inputs give equal bytes. File data
moves with the kernel's copy path (``sendfile``, then ``copy_file_range``),
while two threads read the output back: one hashes it for the ``.sha256``
file, one checks each member against the digest the lock signs.

Reading: our own header parser accepts only what our writer emits (regular
files, PAX ``path``/``size`` records) and refuses links, devices, absolute or
``..`` names, setuid modes and corrupt headers before anything is trusted.
``verify_bundle`` checks the signature over the raw ``lock.json`` bytes first,
then every member's size and SHA-256, hashing members in parallel threads.

Extracting: ``extract_bundle`` verifies first, then writes exactly the lock's
members into a fresh folder, renamed into place when complete.

The site's install logic (nodes, phases, journal) is not handled here.
"""

from __future__ import annotations

import bisect
import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from bundler import lock as lockmod
from bundler import signing
from bundler.errors import ExpiredError, InstallError, IntegrityError, SignatureError, TrustError

BLOCK = 512
RECORD = 20 * BLOCK  # tar's default record size; we pad the archive to it like tar does
CHUNK = 1 << 20
MAX_PAX_BYTES = 64 * 1024  # our writer emits at most a long path and a size
_SPECIAL_BITS = 0o7000  # setuid, setgid, sticky
_TYPE_NAMES = {
    tarfile.SYMTYPE: "symbolic link",
    tarfile.LNKTYPE: "hard link",
    tarfile.CHRTYPE: "character device",
    tarfile.BLKTYPE: "block device",
    tarfile.FIFOTYPE: "FIFO",
    tarfile.DIRTYPE: "directory",
    tarfile.CONTTYPE: "contiguous file",
    tarfile.GNUTYPE_LONGNAME: "GNU long name",
    tarfile.GNUTYPE_LONGLINK: "GNU long link",
    tarfile.GNUTYPE_SPARSE: "GNU sparse file",
    tarfile.XGLTYPE: "PAX global header",
}

Progress = Callable[[int], None]


def _no_progress(_n: int) -> None:
    pass


# ---------------------------------------------------------------- writing


@dataclass(frozen=True)
class Entry:
    """One member to write: bytes in memory, or a file on disk of known size.

    ``sha256`` is the digest the lock signs for it: ``write_tar`` checks the bytes it
    wrote against it (None: nothing to check, e.g. ``lock.json`` itself).
    """

    path: str
    mode: str
    size: int
    data: bytes | None = None
    source: Path | None = None
    sha256: str | None = None


def tar_header(path: str, size: int, mode: str, mtime: int) -> bytes:
    """A deterministic header (PAX records only when ustar cannot hold the name or size)."""
    info = tarfile.TarInfo(path)
    info.size = size
    info.mode = int(mode, 8)
    info.mtime = mtime
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.type = tarfile.REGTYPE
    return info.tobuf(tarfile.PAX_FORMAT, encoding="utf-8", errors="strict")


def _segments(entries: list[Entry], mtime: int) -> Iterator[bytes | Entry]:
    """The archive as a sequence of literal bytes and member bodies (each ``Entry``), in order."""
    total = 0
    for entry in entries:
        header = tar_header(entry.path, entry.size, entry.mode, mtime)
        pad = -entry.size % BLOCK
        total += len(header) + entry.size + pad
        yield header
        yield entry
        if pad:
            yield b"\0" * pad
    end = 2 * BLOCK
    end += -(total + end) % RECORD
    yield b"\0" * end


# The most one kernel copy call moves, so the read-back hashers trailing the writer get
# work while a big member is still being copied (and a copy is abandoned soon after a
# mismatch is found).
COPY_STEP = 16 << 20


def _copy_file(src_fd: int, dst_fd: int, size: int, path: Path, progress: Progress) -> None:
    """Copy ``size`` bytes inside the kernel, falling back step by step.

    ``sendfile`` first: on ext4 it measured about twice as fast as
    ``copy_file_range`` (which cannot reflink into a tar anyway, since member
    data sits at 512-byte, not block, offsets); ``copy_file_range`` next for
    systems whose sendfile refuses files; plain read/write last.
    """
    done = 0
    methods = ["sendfile", "copy_file_range", "rw"]
    while done < size:
        want = min(size - done, COPY_STEP)
        try:
            if methods[0] == "sendfile":
                n = os.sendfile(dst_fd, src_fd, None, want)
            elif methods[0] == "copy_file_range":
                n = os.copy_file_range(src_fd, dst_fd, want)  # novermin (build host only; 3.8+)
            else:
                n = os.write(dst_fd, os.read(src_fd, min(want, CHUNK)))
        except OSError as exc:
            # EINVAL/ENOSYS/EXDEV/EOPNOTSUPP: this pair of files can't do it; try the next way.
            if exc.errno in (errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP) and len(methods) > 1:
                methods.pop(0)
                continue
            raise
        if n == 0:
            raise IntegrityError(f"{path} shrank while being bundled (expected {size} bytes)")
        done += n
        progress(n)


class _Written:
    """How many bytes the writer has put in the output so far; the hashers wait on it."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.count = 0
        self.closed = False  # no more bytes will come (done, or the write failed)
        self.mismatch: IntegrityError | None = None  # set by the member hasher

    def add(self, n: int) -> None:
        with self.cond:
            self.count += n
            self.cond.notify_all()

    def close(self) -> None:
        with self.cond:
            self.closed = True
            self.cond.notify_all()

    def wait(self, offset: int) -> int:
        """Bytes written once at least ``offset`` are (or fewer, when the writer stopped)."""
        with self.cond:
            while self.count < offset and not self.closed:
                self.cond.wait()
            return self.count


def _hash_stream(
    fd: int,
    base: int,
    spans: list[tuple[int, int, Entry]],
    written: _Written,
    out: dict[str, object],
) -> None:
    """SHA-256 of output ranges, read back from ``fd`` as the writer finishes them (a thread).

    Each span is ``(start, end, entry)``: with ``entry.sha256`` set, the range's digest
    must equal it, else ``written.mismatch`` names the member; otherwise (one span over
    the whole archive) ``out["sha256"]`` is the archive's digest, for the ``.sha256`` file.

    Reading back the output rather than hashing the sources is the strict choice: what
    is checked is what ships, whatever happened between (a source changed or corrupted
    after its digest was cached, a copy path that went wrong); a second read of a source
    could see other bytes than the copy did. The bytes are in the page cache, just
    written, so the read-back costs a memory copy, not disk reads.
    """
    try:
        buf = bytearray(CHUNK)
        view = memoryview(buf)
        for start, end, entry in spans:
            digest = hashlib.sha256()
            pos = start
            while pos < end:
                avail = written.wait(min(end, pos + CHUNK) + base) - base
                if avail <= pos:
                    return  # the writer stopped: no digest is wanted
                n = os.preadv(fd, [view[: min(CHUNK, avail - pos, end - pos)]], base + pos)
                if n == 0:
                    raise IntegrityError(f"the bundle being written ended at byte {pos} of {end}")
                digest.update(view[:n])
                pos += n
            if entry.sha256 is None:
                out["sha256"] = digest.hexdigest()
            elif digest.hexdigest() != entry.sha256:
                written.mismatch = IntegrityError(
                    f"{entry.path}: the bytes written into the bundle have sha256 {digest.hexdigest()}, "
                    f"not the {entry.sha256} the lock signs (from {entry.source or 'memory'})",
                    member=entry.path,
                )
                return
    except BaseException as exc:  # re-raised in the writer's thread
        out["error"] = exc


def write_tar(
    fd: int, entries: list[Entry], mtime: int = 0, progress: Progress = _no_progress, fsync: bool = False
) -> str:
    """Write ``entries`` as a deterministic tar to ``fd``; return the archive's SHA-256.

    The caller owns ``fd`` (temp file, rename); it must be open for reading too
    (``O_RDWR``, as ``atomic_output`` gives): two threads trail the writer and read
    the output back, one hashing the whole archive for the ``.sha256`` file, one
    hashing each member with a ``sha256`` to check it against the lock. With ``fsync``
    the data is flushed to disk while they finish, so the two overlap.

    Raises:
        IntegrityError (with ``member``): a member's written bytes are not its
            ``sha256``, or its source changed size since it was hashed.
        OSError: reading a source or writing ``fd`` failed (e.g. disk full).
    """
    segments = list(_segments(entries, mtime))
    base = os.lseek(fd, 0, os.SEEK_CUR)
    spans: list[tuple[int, int, Entry]] = []
    total = 0
    for seg in segments:
        size = len(seg) if isinstance(seg, bytes) else seg.size
        if isinstance(seg, Entry) and seg.sha256 is not None:
            spans.append((total, total + size, seg))
        total += size
    written = _Written()
    result: dict[str, object] = {}
    whole = Entry("", "0644", total)  # no sha256: the span of the archive digest
    hashers = [
        threading.Thread(
            target=_hash_stream, args=(fd, base, [(0, total, whole)], written, result), daemon=True
        ),
        threading.Thread(target=_hash_stream, args=(fd, base, spans, written, result), daemon=True),
    ]
    for hasher in hashers:
        hasher.start()

    def advance(n: int) -> None:
        written.add(n)
        progress(n)

    try:
        for seg in segments:
            if written.mismatch is not None:
                raise written.mismatch
            if isinstance(seg, bytes):
                _write_all(fd, seg)
                written.add(len(seg))
            elif seg.data is not None:
                _write_all(fd, seg.data)
                advance(len(seg.data))
            else:
                assert seg.source is not None
                src = os.open(seg.source, os.O_RDONLY)
                try:
                    if os.fstat(src).st_size != seg.size:
                        raise IntegrityError(
                            f"{seg.source} changed size since it was hashed; build again", member=seg.path
                        )
                    _copy_file(src, fd, seg.size, seg.source, advance)
                finally:
                    os.close(src)
        if fsync:
            os.fsync(fd)
    finally:
        written.close()  # the hashers finish what was written, or stop if the write failed
        for hasher in hashers:
            hasher.join()
    error = result.get("error")
    if isinstance(error, BaseException):
        raise error
    if written.mismatch is not None:
        raise written.mismatch
    return str(result["sha256"])


@contextlib.contextmanager
def atomic_output(path: Path, fsync: bool = True, stale: tuple[Path, ...] = ()) -> Iterator[int]:
    """A file descriptor (read-write) that becomes ``path`` (mode 0644) only if the block completes.

    The data goes to a temporary file beside ``path``, is fsynced, then renamed over
    it; on any error the temporary file is removed and ``path`` is left as it was.
    ``stale`` files (e.g. an old ``.sha256`` of ``path``) are removed, durably, just
    before the rename, so none of them is ever seen beside the new ``path``.
    """
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
    try:
        os.fchmod(fd, 0o644)
        yield fd
        if fsync:
            os.fsync(fd)
        os.close(fd)
        fd = -1
        if stale:
            for old in stale:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(old)
            dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dir_fd)  # the removals reach the disk before the rename can
            finally:
                os.close(dir_fd)
        os.replace(tmp, path)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


# ---------------------------------------------------------------- reading


class Source:
    """A bundle's bytes for reading: one file, or its parts in order, seen as one.

    ``pread`` reads at an offset without moving anything (safe from threads);
    ``seek``/``read`` give ``TarReader`` a file-like view.
    """

    def __init__(self, paths: list[Path]) -> None:
        self.paths = paths
        self.fds: list[int] = []
        self.starts: list[int] = []
        self.size = 0
        try:
            for path in paths:
                fd = os.open(path, os.O_RDONLY)
                self.fds.append(fd)
                self.starts.append(self.size)
                self.size += os.fstat(fd).st_size
                # Readahead for a cold cache: readers go through each member front to back.
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
        except BaseException:
            self.close()
            raise
        self.pos = 0

    def __enter__(self) -> Source:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for fd in self.fds:
            os.close(fd)
        self.fds = []

    def pread(self, buf: memoryview, offset: int) -> int:
        """Read into ``buf`` at ``offset`` (within one part: callers loop); 0 at the end."""
        if offset >= self.size:
            return 0
        i = bisect.bisect_right(self.starts, offset) - 1
        end = self.starts[i + 1] if i + 1 < len(self.starts) else self.size
        return os.preadv(self.fds[i], [buf[: min(len(buf), end - offset)]], offset - self.starts[i])

    def part_of(self, offset: int) -> str:
        """`` (in part NAME)`` for a bundle in parts, else an empty string."""
        if len(self.paths) < 2:
            return ""
        i = max(0, bisect.bisect_right(self.starts, offset) - 1)
        return f" (in part {self.paths[i].name})"

    def seek(self, pos: int) -> None:
        self.pos = pos

    def read(self, n: int) -> bytes:
        out = bytearray()
        buf = memoryview(bytearray(min(max(n, 0), CHUNK) or 1))
        while len(out) < n:
            got = self.pread(buf[: min(len(buf), n - len(out))], self.pos)
            if got == 0:
                break
            out += buf[:got]
            self.pos += got
        return bytes(out)


@dataclass(frozen=True)
class TarMember:
    """A member header as read from the archive."""

    name: str
    size: int
    mode: int
    offset: int  # where its data starts


def _unsafe(name: str, why: str) -> IntegrityError:
    return IntegrityError(f"unsafe member {name!r}: {why}; the bundle is refused", member=name)


def _parse_pax(data: bytes, name: str) -> dict[str, str]:
    """Parse PAX extended-header records (``"%d %s=%s\\n"``)."""
    records: dict[str, str] = {}
    pos = 0
    while pos < len(data):
        if data[pos:].strip(b"\0") == b"":
            break
        space = data.find(b" ", pos)
        try:
            length = int(data[pos:space])
        except ValueError:
            length = 0
        record = data[pos : pos + length]
        if space < 0 or length <= space - pos or not record.endswith(b"\n") or b"=" not in record:
            raise _unsafe(name, "malformed PAX header")
        key, _, value = record[space - pos + 1 : -1].partition(b"=")
        records[key.decode("utf-8", "replace")] = value.decode("utf-8", "surrogateescape")
        pos += length
    return records


class TarReader:
    """Reads our tar subset from a seekable binary file, one header at a time.

    Headers are checked (checksum, type, name, mode) as they are read; data is
    skipped by seeking, so scanning a large bundle costs a few reads.
    """

    def __init__(self, fileobj: Source | BinaryIO, size: int) -> None:
        self.f = fileobj
        self.size = size
        self.pos = 0
        self.ended = False

    def _block(self, what: str) -> bytes:
        self.f.seek(self.pos)
        block = self.f.read(BLOCK)
        if len(block) < BLOCK:
            raise IntegrityError(f"bundle is truncated: it ends inside {what}")
        self.pos += BLOCK
        return bytes(block)

    def next(self) -> TarMember | None:
        """The next member, or None at the end-of-archive marker."""
        if self.ended:
            return None
        if self.pos >= self.size:
            raise IntegrityError(
                "bundle is truncated: no end-of-archive marker"
                if self.pos
                else "bundle is empty (0 bytes); it is not a tar archive"
            )
        pax: dict[str, str] = {}
        while True:
            block = self._block("a member header")
            if block == b"\0" * BLOCK:
                self._check_end()
                return None
            try:
                info = tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
            except tarfile.HeaderError as exc:
                raise IntegrityError(
                    f"corrupt tar header at byte {self.pos - BLOCK} ({exc}); "
                    "the bundle is damaged or not a tar archive"
                ) from exc
            name = pax.get("path", info.name)
            if info.size < 0:
                raise _unsafe(name, f"impossible size {info.size}")
            if info.type == tarfile.XHDTYPE:
                if pax:
                    raise _unsafe(name, "two PAX headers in a row")
                if info.size > MAX_PAX_BYTES:
                    raise _unsafe(name, f"a {info.size}-byte PAX header (limit {MAX_PAX_BYTES})")
                data = self._data(info.size, name)
                pax = _parse_pax(data, name)
                self.pos += info.size + (-info.size % BLOCK)
                continue
            break
        if info.type not in (tarfile.REGTYPE, tarfile.AREGTYPE):
            raise _unsafe(name, f"a {_TYPE_NAMES.get(info.type, 'type ' + repr(info.type))}")
        size = info.size
        if "size" in pax:
            try:
                size = int(pax["size"])
            except ValueError:
                raise _unsafe(name, "malformed PAX size") from None
        problem = lockmod.check_member_path(name)
        if problem:
            raise _unsafe(name, f"name {problem}")
        if info.mode & _SPECIAL_BITS or info.mode & 0o022:
            raise _unsafe(name, f"mode {info.mode:04o} (setuid/setgid/sticky or group/world-writable)")
        member = TarMember(name=name, size=size, mode=info.mode, offset=self.pos)
        end = self.pos + size
        if end > self.size:
            raise IntegrityError(
                f"bundle is truncated inside member {name!r} "
                f"({self.size - self.pos} of {size} bytes present)",
                member=name,
            )
        self.pos = end + (-size % BLOCK)
        return member

    def _check_end(self) -> None:
        """After the first zero block: a second one, then only zero padding."""
        self._block("the end-of-archive marker")
        rest = self.size - self.pos
        if rest > RECORD:
            raise IntegrityError(f"{rest} bytes follow the end-of-archive marker; the bundle is refused")
        self.f.seek(self.pos)
        if self.f.read(rest).strip(b"\0"):
            raise IntegrityError("data follows the end-of-archive marker; the bundle is refused")
        self.ended = True

    def _data(self, size: int, name: str) -> bytes:
        if self.pos + size > self.size:
            raise IntegrityError(f"bundle is truncated inside member {name!r}", member=name)
        self.f.seek(self.pos)
        return bytes(self.f.read(size))

    def read(self, member: TarMember, limit: int) -> bytes:
        """A small member's bytes, refusing more than ``limit``."""
        if member.size > limit:
            raise IntegrityError(
                f"member {member.name!r} is {member.size} bytes, over the {limit}-byte limit",
                member=member.name,
            )
        self.f.seek(member.offset)
        return bytes(self.f.read(member.size))


# ---------------------------------------------------------------- verifying


@dataclass(frozen=True)
class Problem:
    """One integrity finding, naming the member."""

    member: str
    problem: str

    def __str__(self) -> str:
        return f"{self.member}: {self.problem}"


@dataclass
class Head:
    """The signed head of a bundle: lock bytes, signature bytes and the reader after them."""

    lock_bytes: bytes
    sig_bytes: bytes | None
    reader: TarReader


@dataclass
class VerifyReport:
    """What ``verify_bundle`` found."""

    lock: lockmod.Lock
    signer: signing.PublicKey
    members: int = 0
    bytes: int = 0
    problems: list[Problem] = field(default_factory=list)


def read_head(f: Source | BinaryIO, size: int) -> Head:
    """Read ``lock.json`` and ``lock.json.sig``, which must be the first two members.

    Raises:
        IntegrityError: not a tar, truncated, or ``lock.json`` is not first.
    """
    reader = TarReader(f, size)
    first = reader.next()
    if first is None or first.name != lockmod.LOCK_NAME:
        found = first.name if first else "an empty archive"
        raise IntegrityError(
            f"the first member must be {lockmod.LOCK_NAME}, found {found!r}: not an airbundle bundle",
            member=lockmod.LOCK_NAME,
        )
    lock_bytes = reader.read(first, lockmod.MAX_LOCK_BYTES)
    mark = reader.pos
    second = reader.next()
    if second is not None and second.name == lockmod.SIG_NAME:
        return Head(lock_bytes, reader.read(second, signing.MAX_SIGNATURE_BYTES), reader)
    # No signature: rewind so the caller can still list what follows.
    reader.pos, reader.ended = mark, False
    return Head(lock_bytes, None, reader)


def check_expiry(lock: lockmod.Lock, now: float, allow_expired: bool = False) -> None:
    """Refuse a bundle whose signed expiry has passed (exit 3), unless told to accept it."""
    if lock.expires and now > lock.expires and not allow_expired:
        raise ExpiredError(
            f"{lock.name} {lock.version} expired at {signing.utc_text(lock.expires)} (host clock "
            f"{signing.utc_text(now)}); ask the publisher for a current bundle, check the clock, or pass "
            "--allow-expired to accept it anyway"
        )


def check_signature(
    head: Head, trusted: list[signing.PublicKey], now: float | None = None
) -> signing.PublicKey:
    """Verify ``lock.json.sig`` over the raw lock bytes; raises ``SignatureError``."""
    if head.sig_bytes is None:
        raise SignatureError(
            f"{lockmod.SIG_NAME} is missing (it must be the second member); "
            "an unsigned bundle is never trusted"
        )
    checker = None if signing.HAVE_CRYPTOGRAPHY else _ssh_keygen_check
    return signing.verify(
        head.lock_bytes, head.sig_bytes, trusted, checker=checker, now=time.time() if now is None else now
    )


def _ssh_keygen_check(sig: signing.SshSig, message: bytes, armored: bytes) -> bool:
    """Ed25519 check by stock OpenSSH, for sites without ``cryptography``.

    ssh-keygen is told to accept only the key the signature names; whether that
    key is trusted is decided by ``signing.verify`` afterwards, as with cryptography.
    """
    with tempfile.TemporaryDirectory(prefix="airbundle-sig-") as tmp:
        signers = os.path.join(tmp, "allowed_signers")
        sig_path = os.path.join(tmp, "lock.json.sig")
        with open(signers, "w") as f:
            f.write(f"airbundle {sig.public_key.openssh_line()}\n")
        with open(sig_path, "wb") as f:
            f.write(armored)
        try:
            run = subprocess.run(
                [
                    "ssh-keygen",
                    "-Y",
                    "verify",
                    "-f",
                    signers,
                    "-I",
                    "airbundle",
                    "-n",
                    sig.namespace,
                    "-s",
                    sig_path,
                ],
                input=message,
                capture_output=True,
                timeout=60,
            )
        except FileNotFoundError:
            raise SignatureError(
                "neither the 'cryptography' package nor OpenSSH's ssh-keygen is available to check "
                "the signature; install openssh-client"
            ) from None
    return run.returncode == 0


def _member_chunks(src: Source, member: TarMember, buf: memoryview) -> Iterator[memoryview]:
    """A member's data as successive views of ``buf`` (each valid until the next one)."""
    done = 0
    while done < member.size:
        n = src.pread(buf[: min(len(buf), member.size - done)], member.offset + done)
        if n == 0:
            raise IntegrityError(f"bundle is truncated inside member {member.name!r}", member=member.name)
        yield buf[:n]
        done += n


def _hash_member(src: Source, member: TarMember, progress: Progress, local: threading.local) -> str:
    buf = getattr(local, "buf", None)
    if buf is None:
        buf = local.buf = memoryview(bytearray(CHUNK))  # one buffer per hashing thread
    digest = hashlib.sha256()
    for chunk in _member_chunks(src, member, buf):
        digest.update(chunk)
        progress(len(chunk))
    return digest.hexdigest()


def verify_bundle(
    path: Path,
    trusted: list[signing.PublicKey],
    jobs: int | None = None,
    progress: Progress = _no_progress,
    allow_expired: bool = False,
) -> VerifyReport:
    """Check a bundle's signature, then every member, without writing anything.

    Order: the signature over the raw ``lock.json`` bytes (nothing else is
    trusted before it), then the member list against the lock (missing,
    extra, duplicate, unsafe, wrong size, truncated), then each member's
    SHA-256, hashed in up to ``jobs`` threads, largest first.

    Returns:
        A report; ``report.problems`` is empty when the bundle is intact.

    Raises:
        SignatureError / UntrustedKeyError: trust refused (exit 3).
        IntegrityError: the archive cannot be read as a bundle (exit 4).
        LockError: the signed lock is malformed (exit 4).
    """
    with open_source(path, trusted) as f:
        size = f.size
        head = read_head(f, size)
        now = time.time()
        signer = check_signature(head, trusted, now)
        lock = lockmod.Lock.from_bytes(head.lock_bytes)
        check_expiry(lock, now, allow_expired)
        report = VerifyReport(lock=lock, signer=signer)
        expected = {m.path: m for m in lock.members}
        found: dict[str, TarMember] = {}
        folded: dict[str, str] = {}
        while True:
            try:
                member = head.reader.next()
            except IntegrityError as exc:  # name the part a damaged header sits in
                raise IntegrityError(f"{exc}{f.part_of(head.reader.pos)}", member=exc.member) from exc
            if member is None:
                break
            key = lockmod.fold(member.name)
            if member.name in found or key in folded:
                raise IntegrityError(
                    f"member {member.name!r} appears twice (or collides with "
                    f"{folded.get(key, member.name)!r}); the bundle is refused",
                    member=member.name,
                )
            found[member.name] = member
            folded[key] = member.name
            want = expected.get(member.name)
            if want is None:
                report.problems.append(Problem(member.name, "extra member: not listed in lock.json"))
            elif member.size != want.size:
                report.problems.append(
                    Problem(member.name, f"size {member.size}, lock.json says {want.size}")
                )
            elif member.mode & 0o777 != int(want.mode, 8):
                report.problems.append(
                    Problem(member.name, f"mode {member.mode & 0o777:04o}, lock.json says {want.mode}")
                )
        for name in expected:
            if name not in found:
                report.problems.append(Problem(name, "missing: listed in lock.json but not in the bundle"))
        bad = {p.member for p in report.problems}
        todo = sorted(
            (m for m in found.values() if m.name in expected and m.name not in bad),
            key=lambda m: -m.size,
        )
        local = threading.local()
        workers = max(1, min(jobs or os.cpu_count() or 1, len(todo) or 1))
        with ThreadPoolExecutor(max_workers=workers) as pool:
            digests = list(pool.map(lambda m: _hash_member(f, m, progress, local), todo))
        for member, digest in zip(todo, digests):
            report.members += 1
            report.bytes += member.size
            want_sha = expected[member.name].sha256
            if digest != want_sha:
                report.problems.append(
                    Problem(
                        member.name, f"sha256 {digest}, lock.json says {want_sha}{f.part_of(member.offset)}"
                    )
                )
    report.problems.sort(key=lambda p: p.member)
    return report


def read_member(path: Path, name: str, limit: int = 64 * 1024 * 1024) -> bytes | None:
    """One small member's bytes (None when absent), found by scanning headers; not verified."""
    with open_source(path) as f:
        reader = TarReader(f, f.size)
        while True:
            member = reader.next()
            if member is None:
                return None
            if member.name == name:
                return reader.read(member, limit)


def read_lock(
    path: Path, trusted: list[signing.PublicKey] | None = None
) -> tuple[lockmod.Lock, signing.PublicKey | None, bytes | None]:
    """Read a bundle's lock without touching the payload.

    With ``trusted`` keys the signature is checked (raising on failure);
    without them the signer named in the signature is returned unverified.

    Returns:
        (lock, signer key or None when unsigned, signature bytes or None).
    """
    with open_source(path, trusted) as f:
        head = read_head(f, f.size)
    if trusted is not None:
        signer: signing.PublicKey | None = check_signature(head, trusted)
    elif head.sig_bytes is not None:
        signer = signing.parse_signature(head.sig_bytes).public_key
    else:
        signer = None
    return lockmod.Lock.from_bytes(head.lock_bytes), signer, head.sig_bytes


# ---------------------------------------------------------------- extracting

FREE_SPACE_MARGIN = 64 * 1024 * 1024


def _extract_member(src: Source, member: TarMember, root: str, want: lockmod.Member) -> None:
    """Write one verified member under ``root``, re-hashing it on the way (no links followed)."""
    parent = root
    for part in member.name.split("/")[:-1]:
        parent = os.path.join(parent, part)
        try:
            os.mkdir(parent, 0o755)
        except FileExistsError:
            pass  # made for an earlier member: we create only folders, never links
    out = os.open(
        os.path.join(root, member.name),
        os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW,
        int(want.mode, 8),
    )
    try:
        digest = hashlib.sha256()
        for chunk in _member_chunks(src, member, memoryview(bytearray(CHUNK))):
            digest.update(chunk)
            _write_all(out, chunk)
        os.fchmod(out, int(want.mode, 8))
    finally:
        os.close(out)
    if digest.hexdigest() != want.sha256:
        raise IntegrityError(
            f"member {member.name!r} changed since it was verified (sha256 {digest.hexdigest()}); "
            "is something writing to the bundle?",
            member=member.name,
        )


def _inherit(lock: lockmod.Lock, base_dir: Path | None, staging: str) -> None:
    """Copy a delta's inherited members from its base's unpacked folder, each checked by SHA-256."""
    if base_dir is None:
        raise TrustError(
            f"{lock.name} {lock.version} is a delta on {lock.base.get('name')} "
            f"{lock.base.get('version')}, which must be installed here first"
        )
    base_lock = lockmod.Lock.from_bytes((base_dir / lockmod.LOCK_NAME).read_bytes())
    where = {m.sha256: m.path for m in (*base_lock.members, *base_lock.inherited)}
    for member in lock.inherited:
        if member.sha256 not in where:
            raise IntegrityError(
                f"the base at {base_dir} lacks {member.path} ({member.sha256})", member=member.path
            )
        with Source([base_dir / where[member.sha256]]) as src:
            if src.size != member.size:
                raise IntegrityError(
                    f"{base_dir / where[member.sha256]} changed since it was installed", member=member.path
                )
            _extract_member(src, TarMember(member.path, member.size, int(member.mode, 8), 0), staging, member)


def extract_bundle(
    path: Path,
    trusted: list[signing.PublicKey],
    workdir: Path,
    progress: Progress = _no_progress,
    allow_expired: bool = False,
    inherit_from: Path | None = None,
) -> tuple[Path, VerifyReport]:
    """Verify a bundle, then unpack exactly the members its lock lists into ``workdir/NAME-VERSION``.

    A delta bundle's inherited members are copied from ``inherit_from`` (its base's
    unpacked folder), each checked against the new lock's SHA-256 before it is used.

    Verification comes first and must be clean. Extraction goes into a fresh
    private folder next to the target, creating only folders and regular files
    (``O_EXCL | O_NOFOLLOW``, modes from the lock), hashing every byte again;
    the folder is renamed into place only when all members are written, and
    removed on any failure, so nothing is left half-unpacked.

    Raises:
        SignatureError (exit 3), IntegrityError (exit 4): the bundle is not trusted.
        InstallError (exit 6): not enough free space under ``workdir``.
    """
    report = verify_bundle(path, trusted, progress=progress, allow_expired=allow_expired)
    if report.problems:
        first = report.problems[0]
        raise IntegrityError(
            f"{path}: {len(report.problems)} member(s) failed; first: {first}", member=first.member
        )
    lock = report.lock
    workdir.mkdir(parents=True, exist_ok=True)
    vfs = os.statvfs(workdir)
    free = vfs.f_bavail * vfs.f_frsize
    need = lock.payload_size + FREE_SPACE_MARGIN
    if free < need:
        raise InstallError(
            f"{workdir}: {free // 2**20} MiB free, unpacking needs {need // 2**20} MiB; "
            "free some space or choose another --workdir"
        )
    final = workdir / f"{lock.name}-{lock.version}"
    staging = tempfile.mkdtemp(prefix=f".{final.name}.", dir=str(workdir))  # 0700, fresh, ours alone
    try:
        expected = {m.path: m for m in lock.members}
        with open_source(path, trusted) as f:
            head = read_head(f, f.size)
            for name, data in (
                (lockmod.LOCK_NAME, head.lock_bytes),
                (lockmod.SIG_NAME, head.sig_bytes or b""),
            ):
                with open(os.path.join(staging, name), "wb") as out:
                    out.write(data)
            while True:
                member = head.reader.next()
                if member is None:
                    break
                want = expected.pop(member.name, None)
                if want is None:
                    raise IntegrityError(f"member {member.name!r} is not in lock.json", member=member.name)
                _extract_member(f, member, staging, want)
        if expected:
            missing = sorted(expected)[0]
            raise IntegrityError(f"member {missing!r} vanished since verification", member=missing)
        if lock.inherited:
            _inherit(lock, inherit_from, staging)
        os.chmod(staging, 0o755)  # noqa: S103 - the unpacked bundle is readable, like /usr
        if final.exists():
            old = tempfile.mkdtemp(prefix=f".{final.name}.old.", dir=str(workdir))
            os.rename(final, os.path.join(old, "x"))
            os.rename(staging, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return final, report


# ---------------------------------------------------------------- media-sized parts

PARTS_SUFFIX = ".parts.json"
MAX_PARTS_BYTES = 1024 * 1024
_PART_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*\.tar\.\d{3,}")


@dataclass(frozen=True)
class Part:
    """One media-sized piece of a bundle."""

    name: str
    size: int
    sha256: str


def parts_file(path: Path) -> Path | None:
    """The ``NAME-VERSION.parts.json`` that ``path`` is (or belongs to, for ``NAME-VERSION.tar.NNN``)."""
    if path.name.endswith(PARTS_SUFFIX):
        return path
    match = re.fullmatch(r"(.+)\.tar\.\d{3,}", path.name)
    return path.with_name(match.group(1) + PARTS_SUFFIX) if match else None


def _hash_part(path: Path) -> str:
    digest = hashlib.sha256()
    buf = memoryview(bytearray(CHUNK))
    with open(path, "rb", buffering=0) as f:
        while True:  # no walrus: this module also runs on the site's python3 3.7
            n = f.readinto(buf)
            if not n:
                break
            digest.update(buf[:n])
    return digest.hexdigest()


def load_parts(
    path: Path, trusted: list[signing.PublicKey] | None = None, hash_parts: bool = False
) -> tuple[list[Part], str]:
    """The parts a ``.parts.json`` lists, checked: signature (when ``trusted``), presence and size,
    and each part's SHA-256 when ``hash_parts`` (``join`` does; ``verify`` instead checks every
    member in one pass and names the part that holds a bad one).

    Returns:
        (parts in order, SHA-256 of the whole bundle).

    Raises:
        SignatureError (exit 3): the parts file is unsigned or not by a trusted key.
        IntegrityError (exit 4): naming the part that is missing, short, long or changed.
    """
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise IntegrityError(f"{path}: cannot read the parts file: {exc.strerror}") from exc
    if len(data) > MAX_PARTS_BYTES:
        raise IntegrityError(f"{path}: too large for a parts file")
    if trusted is not None:
        sig = path.with_name(path.name + ".sig")
        if not sig.exists():
            raise SignatureError(f"{sig} is missing; unsigned parts are never trusted")
        checker = None if signing.HAVE_CRYPTOGRAPHY else _ssh_keygen_check
        signing.verify(data, sig.read_bytes(), trusted, checker=checker, now=time.time())
    try:
        doc = json.loads(data)
        parts = [Part(str(p["name"]), int(p["size"]), str(p["sha256"])) for p in doc["parts"]]
        whole = str(doc["sha256"])
    except (ValueError, KeyError, TypeError) as exc:
        raise IntegrityError(f"{path}: not a parts file ({exc})") from exc
    for part in parts:
        if not _PART_NAME.fullmatch(part.name):
            raise IntegrityError(f"{path}: unsafe part name {part.name!r}", member=part.name)
        where = path.parent / part.name
        if not where.exists():
            raise IntegrityError(f"part {part.name} is missing (looked in {path.parent})", member=part.name)
        if where.stat().st_size != part.size:
            raise IntegrityError(
                f"part {part.name} is {where.stat().st_size} bytes, {path.name} says {part.size}; "
                "copy it again",
                member=part.name,
            )
    if hash_parts:
        with ThreadPoolExecutor() as pool:
            digests = list(pool.map(lambda p: _hash_part(path.parent / p.name), parts))
        for part, digest in zip(parts, digests):
            if digest != part.sha256:
                raise IntegrityError(
                    f"part {part.name} is damaged (sha256 {digest}, {path.name} says {part.sha256}); "
                    "copy it again",
                    member=part.name,
                )
    return parts, whole


def open_source(path: Path, trusted: list[signing.PublicKey] | None = None) -> Source:
    """A ``Source`` for a bundle file, or for the parts its ``.parts.json`` (or any part) names."""
    index = parts_file(path)
    if index is None:
        return Source([path])
    parts, _ = load_parts(index, trusted)
    return Source([index.parent / p.name for p in parts])


_SIZE_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}


def parse_size(text: str) -> int:
    """``4G``, ``4400M``, ``512K``, ``64KiB`` or bytes, as bytes; ``ValueError`` when it is none of these."""
    match = re.fullmatch(r"(\d+)([KMGT]?)(?:i?B)?", text.strip(), re.IGNORECASE)
    if not match:
        raise ValueError(f"{text!r}: give a size like 4G, 4400M or 512K")
    return int(match.group(1)) * _SIZE_UNITS[match.group(2).upper()]


def split_bundle(path: Path, part_size: int, key: signing.PrivateKey) -> Path:
    """Cut a written bundle into ``NAME-VERSION.tar.000`` … plus a signed ``.parts.json``.

    The parts are written with the kernel's copy path, fsynced, and listed with their
    sizes and SHA-256s and the whole bundle's SHA-256; ``.parts.json.sig`` signs that
    file; ``NAME-VERSION.parts.sha256`` is the same list for ``sha256sum -c``. The
    whole ``.tar`` and its ``.sha256`` are removed afterwards.
    """
    size = path.stat().st_size
    whole = _hash_part(path)
    parts = []
    with open(path, "rb", buffering=0) as src:
        for i, offset in enumerate(range(0, size, part_size)):
            name = f"{path.name}.{i:03d}"
            count = min(part_size, size - offset)
            with atomic_output(path.parent / name) as fd:
                done = 0
                while done < count:
                    done += os.sendfile(fd, src.fileno(), offset + done, count - done)
            parts.append(name)
    with ThreadPoolExecutor() as pool:
        digests = list(pool.map(lambda n: _hash_part(path.parent / n), parts))
    doc = {
        "format": 1,
        "bundle": path.name,
        "size": size,
        "sha256": whole,
        "parts": [
            {"name": n, "size": (path.parent / n).stat().st_size, "sha256": d} for n, d in zip(parts, digests)
        ],
    }
    data = (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode()
    index = path.with_name(path.name[: -len(".tar")] + PARTS_SUFFIX)
    _atomic(index, data)
    _atomic(index.with_name(index.name + ".sig"), signing.sign(key, data))
    sums = "".join(f"{d}  {n}\n" for n, d in zip(parts, digests)).encode()
    _atomic(path.with_name(path.name[: -len(".tar")] + ".parts.sha256"), sums)
    os.unlink(path)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path.with_name(path.name + ".sha256"))
    return index


def _atomic(path: Path, data: bytes) -> None:
    with atomic_output(path) as fd:
        _write_all(fd, data)


def join_parts(index: Path, trusted: list[signing.PublicKey], out: Path) -> str:
    """Write the whole bundle from its checked parts to ``out`` (temp, fsync, rename); its SHA-256.

    The parts are never modified or removed.

    Raises:
        SignatureError, IntegrityError: as ``load_parts``, or the joined bytes differ from
            the whole bundle's SHA-256 the parts file gives.
    """
    parts, whole = load_parts(index, trusted, hash_parts=True)
    digest = hashlib.sha256()
    buf = memoryview(bytearray(CHUNK))
    with atomic_output(out) as fd:
        for part in parts:
            with open(index.parent / part.name, "rb", buffering=0) as f:
                while True:
                    n = f.readinto(buf)
                    if not n:
                        break
                    digest.update(buf[:n])
                    _write_all(fd, buf[:n])
        if digest.hexdigest() != whole:
            raise IntegrityError(f"{index.name}: the joined parts hash to {digest.hexdigest()}, not {whole}")
    return whole
