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
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import (
    BinaryIO,
    Callable,
    Dict,
    Iterator,
    List,
    Optional,
    Tuple,
    Union,
)  # typing's: collections.abc's is not subscriptable before 3.9

from bundler import files, signing, trust
from bundler import lock as lockmod
from bundler.compat import dataclass, dataclasses, field, pread_into
from bundler.errors import (
    BundlerError,
    InputError,
    InstallError,
    IntegrityError,
    SignatureError,
    TrustError,
    from_os_error,
)

BLOCK = 512
RECORD = 20 * BLOCK  # tar's default record size; we pad the archive to it like tar does
CHUNK = 1 << 20
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
    data: Optional[bytes] = None
    source: Optional[Path] = None
    sha256: Optional[str] = None


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


def _segments(entries: List[Entry], mtime: int) -> Iterator[Union[bytes, Entry]]:
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
        self.mismatch: Optional[IntegrityError] = None  # set by the member hasher

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
    spans: List[Tuple[int, int, Entry]],
    written: _Written,
    out: Dict[str, object],
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
                n = pread_into(fd, view[: min(CHUNK, avail - pos, end - pos)], base + pos)
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
    fd: int, entries: List[Entry], mtime: int = 0, progress: Progress = _no_progress, fsync: bool = False
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
    spans: List[Tuple[int, int, Entry]] = []
    total = 0
    for seg in segments:
        size = len(seg) if isinstance(seg, bytes) else seg.size
        if isinstance(seg, Entry) and seg.sha256 is not None:
            spans.append((total, total + size, seg))
        total += size
    written = _Written()
    result: Dict[str, object] = {}
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
                write_all(fd, seg)
                written.add(len(seg))
            elif seg.data is not None:
                write_all(fd, seg.data)
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
def atomic_output(
    path: Path, fsync: bool = True, stale: Tuple[Path, ...] = (), mode: int = 0o644
) -> Iterator[int]:
    """A file descriptor (read-write) that becomes ``path`` (``mode``) only if the block completes.

    The data goes to a temporary file beside ``path``, is fsynced, then renamed over
    it; on any error the temporary file is removed and ``path`` is left as it was.
    ``stale`` files (e.g. an old ``.sha256`` of ``path``) are removed, durably, just
    before the rename, so none of them is ever seen beside the new ``path``.
    """
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
    try:
        os.fchmod(fd, mode)
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


def write_all(fd: int, data: Union[bytes, memoryview]) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


# ---------------------------------------------------------------- reading


class Source:
    """A bundle's bytes for reading: one file, or its parts in order, seen as one.

    Every file is opened once, here (regular files only: a FIFO or a folder is refused
    rather than waited on), and all reads go through these descriptors, so renaming
    another file over the bundle's path afterwards changes nothing that is read.
    ``pread`` reads at an offset without moving anything (safe from threads);
    ``seek``/``read`` give ``TarReader`` a file-like view.
    """

    def __init__(self, paths: List[Path], parts: "Optional[List[Part]]" = None) -> None:
        self.paths = paths
        self.parts = parts  # with their signed SHA-256s, for a bundle in parts
        self.fds: List[int] = []
        self.starts: List[int] = []
        self.size = 0
        try:
            for path in paths:
                fd = files.open_regular(path, "bundle" if parts is None else "bundle part")
                self.fds.append(fd)
                self.starts.append(self.size)
                self.size += os.fstat(fd).st_size
                # Readahead for a cold cache: readers go through each member front to back.
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
        except BaseException:
            self.close()
            raise
        self.pos = 0

    def __enter__(self) -> "Source":
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
        return pread_into(self.fds[i], buf[: min(len(buf), end - offset)], offset - self.starts[i])

    def part_of(self, offset: int) -> str:
        """`` (in part NAME)`` for a bundle in parts, else an empty string."""
        if len(self.paths) < 2:
            return ""
        i = max(0, bisect.bisect_right(self.starts, offset) - 1)
        return f" (in part {self.paths[i].name})"

    def damaged_parts(self, offset: int, size: int) -> str:
        """For a bundle in parts: `` (in part NAME)`` naming the part(s) that hold bad bytes of a range.

        A member may span parts; each spanned part is hashed and compared with the SHA-256
        the signed parts file gives, so the part that is really damaged is named, not the
        one where the member starts. Called only after a mismatch, so its cost is no concern.
        """
        if len(self.paths) < 2 or self.parts is None:
            return ""
        first = max(0, bisect.bisect_right(self.starts, offset) - 1)
        last = max(0, bisect.bisect_right(self.starts, offset + max(size, 1) - 1) - 1)
        spanned = list(range(first, last + 1))
        bad = [i for i in spanned if _hash_fd(self.fds[i]) != self.parts[i].sha256]
        names = ", ".join(self.paths[i].name for i in bad or spanned)
        return f" (in part {names})" if len(bad or spanned) == 1 else f" (in parts {names})"

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
    """A member header as read from the archive (and accepted by ``trust.check_header``)."""

    name: str
    size: int
    mode: int
    offset: int  # where its data starts


def _parse_pax(data: bytes, name: str) -> Dict[str, str]:
    """Parse PAX extended-header records (``"%d %s=%s\\n"``); a record given twice is refused."""
    records: Dict[str, str] = {}
    pos = 0
    while pos < len(data):
        if data[pos:].strip(b"\0") == b"":
            break
        space = data.find(b" ", pos)
        digits = data[pos:space] if space > pos else b""
        # Plain ASCII digits only: int() would also take "+24", "2_4" or " 24", which GNU tar
        # refuses, and the two would then read different names for the same member.
        length = int(digits) if digits.isdigit() and len(digits) < 10 else 0
        record = data[pos : pos + length]
        if space < 0 or length <= space - pos or not record.endswith(b"\n") or b"=" not in record:
            raise trust.unsafe(name, "malformed PAX header")
        key, _, value = record[space - pos + 1 : -1].partition(b"=")
        text = key.decode("utf-8", "replace")
        if text in records:
            raise trust.unsafe(name, f"PAX record {text!r} given twice")
        records[text] = value.decode("utf-8", "surrogateescape")
        pos += length
    return records


COPY_AGAIN = "copy it again from the original (and compare it with its .sha256)"
_CHECKSUM_LINE = re.compile(rb"[0-9a-f]{64} [ *]\S[^\n]*\n")


def _name_of(f: object) -> str:
    """How messages name what a reader reads: the bundle's path, or its parts' first and last."""
    name = getattr(f, "name", None)
    paths = getattr(f, "paths", None) or ([Path(name)] if isinstance(name, str) else [])
    if not paths:
        return "bundle"
    if len(paths) == 1:
        return f"bundle {paths[0]}"
    return f"bundle in parts {paths[0]} ... {paths[-1].name}"


def not_a_bundle(path: Path, head: bytes) -> Optional[BundlerError]:
    """What ``path`` is when its first bytes show it is no bundle at all, with what to do instead.

    A ``.sha256`` (or ``.parts.sha256``) checksum file, another file or a GNU tar is bad input
    (exit 2); a gzipped bundle is a bundle that was compressed on its way (exit 4, as any
    unreadable bundle, with the fix).
    """
    if head.startswith(b"\x1f\x8b"):
        return IntegrityError(
            f"{path} is gzip-compressed, but a bundle is an uncompressed tar: unpack it first "
            f"(gunzip -k {path}, or zcat {path} > NAME-VERSION.tar) and give the .tar, or copy the "
            ".tar as it was published"
        )
    if head and _CHECKSUM_LINE.match(head):
        named = head.split(b"\n", 1)[0][66:].decode("utf-8", "replace")
        return InputError(
            f"{path} is a checksum file (sha256sum lines, for {named}), not a bundle: give the bundle "
            f"itself; to check the copy, run sha256sum -c {path.name} in its folder"
        )
    what = "the .tar that 'airbundle build' wrote (NAME-VERSION.tar)"
    if len(head) >= BLOCK and head[257:265] == b"ustar  \0":
        return InputError(f"{path} is a GNU-format tar, not an airbundle bundle: give {what}")
    if len(head) >= BLOCK and head[257:262] != b"ustar":
        return InputError(
            f"{path} is not a tar archive, so not an airbundle bundle: give {what}; if it is one that "
            f"was damaged on its way, {COPY_AGAIN}"
        )
    return None


class TarReader:
    """Reads our tar subset from a seekable binary file, one header at a time.

    Each header is decoded here and judged by ``trust.check_header`` (format, type,
    name, mode, PAX records) before it is returned; data is skipped by seeking, so
    scanning a large bundle costs a few reads.
    """

    WINDOW = 64 * 1024  # headers of small members are read 64 KiB at a time, not block by block

    def __init__(self, fileobj: Union[Source, BinaryIO], size: int) -> None:
        self.f = fileobj
        self.size = size
        self.pos = 0
        self.ended = False
        self._window = b""
        self._window_at = 0

    def _at(self, offset: int, n: int) -> bytes:
        """``n`` bytes at ``offset`` (fewer at the end), through a read-ahead window."""
        start = offset - self._window_at
        if start < 0 or start + n > len(self._window):
            self.f.seek(offset)
            self._window = bytes(self.f.read(max(n, self.WINDOW)))
            self._window_at, start = offset, 0
        return self._window[start : start + n]

    def _where(self) -> str:
        return _name_of(self.f)

    def _block(self, what: str) -> bytes:
        block = self._at(self.pos, BLOCK)
        if len(block) < BLOCK:
            raise IntegrityError(f"{self._where()} is truncated: it ends inside {what}; {COPY_AGAIN}")
        self.pos += BLOCK
        return block

    def next(self) -> Optional[TarMember]:
        """The next member, or None at the end-of-archive marker."""
        if self.ended:
            return None
        if self.pos >= self.size:
            raise IntegrityError(
                f"{self._where()} is truncated: no end-of-archive marker; {COPY_AGAIN}"
                if self.pos
                else f"{self._where()} is empty (0 bytes); it is not a tar archive"
            )
        pax: Dict[str, str] = {}
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
            if info.type == tarfile.XHDTYPE:
                if pax:
                    raise trust.unsafe(name, "two PAX headers in a row")
                magic = block[257:265]
                trust.check_pax(name, info.size, {}, magic)  # before its bytes are read
                trust.check_block(name, block)
                pax = _parse_pax(self._data(info.size, name), name)  # its records: see check_header
                self.pos += info.size + (-info.size % BLOCK)
                continue
            break
        size = trust.pax_size(name, pax)
        header = trust.Header(
            name=name,
            type=info.type,
            size=info.size if size is None else size,
            mode=info.mode,
            magic=block[257:265],
            pax=pax,
            block=block,
        )
        trust.check_header(header)
        member = TarMember(name=name, size=header.size, mode=info.mode, offset=self.pos)
        end = self.pos + header.size
        if end > self.size:
            raise IntegrityError(
                f"{self._where()} is truncated inside member {name!r} "
                f"({self.size - self.pos} of {header.size} bytes present); {COPY_AGAIN}",
                member=name,
            )
        pad = -header.size % BLOCK
        # The padding is not in the lock's digests: it must be what the writer writes.
        if pad and self._at(end, pad).strip(b"\0"):
            raise trust.unsafe(name, "non-zero bytes in the padding after its data")
        self.pos = end + pad
        return member

    def _check_end(self) -> None:
        """After the first zero block: a second one, then only zero padding."""
        self._block("the end-of-archive marker")
        rest = self.size - self.pos
        if rest > RECORD:
            raise IntegrityError(
                f"data follows the end-of-archive marker ({rest} bytes); the bundle is refused"
            )
        self.f.seek(self.pos)
        if self.f.read(rest).strip(b"\0"):
            raise IntegrityError("data follows the end-of-archive marker; the bundle is refused")
        self.ended = True

    def _data(self, size: int, name: str) -> bytes:
        if self.pos + size > self.size:
            raise IntegrityError(
                f"{self._where()} is truncated inside member {name!r}; {COPY_AGAIN}", member=name
            )
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

Problem = trust.Problem  # one finding, naming the member (the trust module owns it)


@dataclass
class Head:
    """The signed head of a bundle: lock bytes, signature bytes and the reader after them."""

    lock_bytes: bytes
    sig_bytes: Optional[bytes]
    reader: TarReader


@dataclass
class VerifyReport:
    """What ``verify_bundle`` (or an extraction) found."""

    lock: lockmod.Lock
    signer: signing.PublicKey
    members: int = 0
    bytes: int = 0
    problems: List[Problem] = field(default_factory=list)


def read_head(f: Union[Source, BinaryIO], size: int) -> Head:
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


def checker() -> Optional[signing.Checker]:
    """The Ed25519 check this host can do: ``cryptography`` (None: the default), else stock ssh-keygen."""
    return None if signing.HAVE_CRYPTOGRAPHY else _ssh_keygen_check


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
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
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
            raise IntegrityError(
                f"{_name_of(src)} is truncated inside member {member.name!r}; {COPY_AGAIN}",
                member=member.name,
            )
        yield buf[:n]
        done += n


def _hash_fd(fd: int) -> str:
    digest = hashlib.sha256()
    buf = memoryview(bytearray(CHUNK))
    offset = 0
    while True:
        n = pread_into(fd, buf, offset)
        if not n:
            return digest.hexdigest()
        digest.update(buf[:n])
        offset += n


class Bundle:
    """One bundle opened once: its head read once, decided once, its members read once.

    ``with Bundle(path, trusted) as b:`` opens the file (or the parts its signed
    ``.parts.json`` names) and reads ``lock.json`` and ``lock.json.sig``; ``decide``
    hands those exact bytes to ``trust.decide``; ``verify`` and ``extract`` then read
    the members through the same descriptors and judge them with ``trust.Audit``
    against the decided lock.
    """

    def __init__(self, path: Path, trusted: Optional[List[signing.PublicKey]] = None) -> None:
        self.path = path
        self.src = open_source(path, trusted)
        try:
            self.head = read_head(self.src, self.src.size)
        except IntegrityError:
            buf = bytearray(BLOCK)
            n = self.src.pread(memoryview(buf), 0)
            self.src.close()
            better = not_a_bundle(path, bytes(buf[:n]))
            if better is not None:
                raise better from None
            raise
        except BaseException:
            self.src.close()
            raise

    def __enter__(self) -> "Bundle":
        return self

    def __exit__(self, *exc: object) -> None:
        self.src.close()

    def unverified(self) -> Tuple[lockmod.Lock, Optional[signing.PublicKey]]:
        """The lock as it stands and the signer its signature names, neither checked (for ``inspect``)."""
        sig = self.head.sig_bytes
        return lockmod.Lock.from_bytes(self.head.lock_bytes), (
            signing.parse_signature(sig).public_key if sig is not None else None
        )

    def member(self, want: lockmod.Member, limit: int = 64 * 1024 * 1024) -> bytes:
        """One small member's bytes, found by scanning the headers after the head and checked
        against ``want`` (its SHA-256 in the lock); raises ``IntegrityError`` when absent or changed."""
        reader = self.head.reader
        while True:
            member = reader.next()
            if member is None:
                raise IntegrityError(f"{self.path}: {want.path} is missing", member=want.path)
            if member.name == want.path:
                data = reader.read(member, limit)
                if hashlib.sha256(data).hexdigest() != want.sha256:
                    raise IntegrityError(
                        f"{self.path}: {want.path} does not match lock.json", member=want.path
                    )
                return data

    def decide(self, facts: trust.SiteFacts) -> trust.Decision:
        """The trust decision on this bundle's head (see ``trust.decide``)."""
        return trust.decide(self.head.lock_bytes, self.head.sig_bytes, facts, checker())

    def audit(self, decision: trust.Decision) -> Tuple[List[TarMember], List[Problem]]:
        """Every member header after the head, judged against the lock: (members to hash, problems)."""
        audit = trust.Audit(decision.lock)
        todo = []
        reader = self.head.reader
        while True:
            try:
                member = reader.next()
            except IntegrityError as exc:  # name the part a damaged header sits in
                raise IntegrityError(f"{exc}{self.src.part_of(reader.pos)}", member=exc.member) from exc
            if member is None:
                break
            if audit.add(member.name, member.size, member.mode):
                todo.append(member)
        return todo, audit.finish()

    def _each(
        self, todo: List[TarMember], jobs: Optional[int], work: Callable[[TarMember, memoryview], str]
    ) -> List[str]:
        """Run ``work`` on every member in order, in up to ``jobs`` threads (one buffer each).

        Members go to the threads in batches of about ``CHUNK`` bytes (at least one member),
        so that a bundle of many tiny files does not pay a thread hand-off per member.
        """
        local = threading.local()

        def run(batch: List[TarMember]) -> List[str]:
            buf = getattr(local, "buf", None)
            if buf is None:
                buf = local.buf = memoryview(bytearray(CHUNK))
            return [work(member, buf) for member in batch]

        batches: List[List[TarMember]] = []
        weight = CHUNK
        for member in todo:
            if weight >= CHUNK:
                batches.append([])
                weight = 0
            batches[-1].append(member)
            weight += member.size + BLOCK
        workers = max(1, min(jobs or os.cpu_count() or 1, len(batches) or 1))
        with ThreadPoolExecutor(max_workers=workers) as pool:
            return [digest for done in pool.map(run, batches) for digest in done]

    def _digest_problems(
        self, audit_lock: lockmod.Lock, todo: List[TarMember], digests: List[str]
    ) -> List[Problem]:
        want = {m.path: m.sha256 for m in audit_lock.members}
        out = []
        for member, digest in zip(todo, digests):
            if digest != want[member.name]:
                where = self.src.damaged_parts(member.offset, member.size)
                out.append(
                    Problem(member.name, f"sha256 {digest}, lock.json says {want[member.name]}{where}")
                )
        return out

    def verify(
        self, decision: trust.Decision, jobs: Optional[int] = None, progress: Progress = _no_progress
    ) -> VerifyReport:
        """Check every member's size, mode and SHA-256 against the decided lock; writes nothing."""
        todo, problems = self.audit(decision)
        todo.sort(key=lambda m: -m.size)

        def digest(member: TarMember, buf: memoryview) -> str:
            sha = hashlib.sha256()
            for chunk in _member_chunks(self.src, member, buf):
                sha.update(chunk)
                progress(len(chunk))
            return sha.hexdigest()

        digests = self._each(todo, jobs, digest)
        report = VerifyReport(decision.lock, decision.signer, len(todo), sum(m.size for m in todo))
        report.problems = problems + self._digest_problems(decision.lock, todo, digests)
        report.problems.sort(key=lambda p: p.member)
        return report

    def extract(
        self,
        decision: trust.Decision,
        workdir: Path,
        progress: Progress = _no_progress,
        inherit_from: Optional[Path] = None,
        jobs: Optional[int] = None,
    ) -> Tuple[Path, VerifyReport]:
        """Unpack exactly the decided lock's members into ``workdir/NAME-VERSION``, in one read.

        The member headers are audited first (nothing is written when one is refused).
        Then every member's bytes are read once, hashed and written together into a fresh
        private folder beside the target (only folders and regular files, ``O_EXCL |
        O_NOFOLLOW``, modes from the lock); the folder is renamed into place only when
        every digest matched, and removed on any failure, so nothing is left half-unpacked.
        ``lock.json`` is written from the bytes the decision was made on.

        Raises:
            IntegrityError (exit 4): a member refused, missing, extra or not matching the lock.
            TrustError (exit 3): a delta whose base is not here.
            InstallError (exit 6): not enough free space, or the work folder cannot be written.
        """
        lock = decision.lock
        todo, problems = self.audit(decision)
        if problems:
            raise IntegrityError(
                f"{self.path}: {len(problems)} member(s) failed; first: {problems[0]}",
                member=problems[0].member,
            )
        final = workdir / f"{lock.name}-{lock.version}"
        try:
            workdir.mkdir(parents=True, exist_ok=True)
            _check_space(workdir, lock.payload_size + FREE_SPACE_MARGIN)
            staging = tempfile.mkdtemp(prefix=f".{final.name}.", dir=str(workdir))  # 0700, fresh, ours alone
        except OSError as exc:
            raise from_os_error(exc, "preparing the work folder", InstallError, workdir) from None
        try:
            for name, data in (
                (lockmod.LOCK_NAME, decision.lock_bytes),
                (lockmod.SIG_NAME, self.head.sig_bytes or b""),
            ):
                _write_new(os.path.join(staging, name), data, 0o644)
            _make_folders(staging, [m.name for m in todo])
            want = {m.path: m for m in lock.members}
            todo.sort(key=lambda m: -m.size)
            digests = self._each(
                todo, jobs, lambda m, buf: _extract_member(self.src, m, staging, want[m.name], buf, progress)
            )
            problems = self._digest_problems(lock, todo, digests)
            if problems:
                raise IntegrityError(
                    f"{self.path}: {len(problems)} member(s) failed; first: {problems[0]}",
                    member=problems[0].member,
                )
            if lock.inherited:
                _inherit(lock, inherit_from, staging)
            os.chmod(staging, 0o755)  # noqa: S103 - the unpacked bundle is readable, like /usr
            _replace_folder(staging, final, workdir)
        except OSError as exc:
            shutil.rmtree(staging, ignore_errors=True)
            raise from_os_error(
                exc, f"unpacking into {final}", InstallError, exc.filename or staging
            ) from None
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        report = VerifyReport(lock, decision.signer, len(todo), sum(m.size for m in todo))
        return final, report


def facts(trusted: List[signing.PublicKey], allow_expired: bool = False) -> trust.SiteFacts:
    """The facts for a decision that installs nothing: the keys and this host's clock."""
    return trust.SiteFacts(tuple(trusted), time.time(), allow_expired)


def verify_bundle(
    path: Path,
    trusted: List[signing.PublicKey],
    jobs: Optional[int] = None,
    progress: Progress = _no_progress,
    allow_expired: bool = False,
) -> VerifyReport:
    """Check a bundle's signature, then every member, without writing anything.

    Order: the trust decision on the raw ``lock.json`` bytes (nothing else is
    trusted before it), then the member headers against the lock (missing,
    extra, duplicate, unsafe, wrong size or mode, truncated), then each member's
    SHA-256, hashed in up to ``jobs`` threads, largest first.

    Returns:
        A report; ``report.problems`` is empty when the bundle is intact.

    Raises:
        SignatureError / UntrustedKeyError / ExpiredError: trust refused (exit 3).
        IntegrityError: the archive cannot be read as a bundle (exit 4).
        LockError: the signed lock is malformed (exit 4).
    """
    with Bundle(path, trusted) as bundle:
        return bundle.verify(bundle.decide(facts(trusted, allow_expired)), jobs, progress)


def read_lock(
    path: Path, trusted: Optional[List[signing.PublicKey]] = None
) -> Tuple[lockmod.Lock, Optional[signing.PublicKey], Optional[bytes]]:
    """Read a bundle's lock without touching the payload.

    With ``trusted`` keys the whole trust decision is made (raising on refusal; an
    expired bundle is still shown); without them the signer the signature names is
    returned unverified.

    Returns:
        (lock, signer key or None when unsigned, signature bytes or None).
    """
    with Bundle(path, trusted) as bundle:
        if trusted is not None:
            decision = bundle.decide(facts(trusted, allow_expired=True))
            return decision.lock, decision.signer, bundle.head.sig_bytes
        lock, signer = bundle.unverified()
        return lock, signer, bundle.head.sig_bytes


# ---------------------------------------------------------------- extracting

FREE_SPACE_MARGIN = 64 * 1024 * 1024


def _check_space(folder: Path, need: int) -> None:
    vfs = os.statvfs(folder)
    free = vfs.f_bavail * vfs.f_frsize
    if free < need:
        raise InstallError(
            f"{folder}: {free // 2**20} MiB free, unpacking needs {need // 2**20} MiB; "
            "free some space or choose another --workdir"
        )


def _write_new(path: str, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    try:
        write_all(fd, data)
    finally:
        os.close(fd)


def _make_folders(root: str, names: List[str]) -> None:
    """Every folder the members need, made fresh under ``root`` (never through a link: all are new)."""
    folders = sorted(
        {"/".join(parts[:i]) for parts in (n.split("/") for n in names) for i in range(1, len(parts))}
    )
    for folder in folders:
        # Anything already there was made by this function in our private folder (a delta's
        # inherited members join the carried ones); the lock has no file at a folder's path.
        path = os.path.join(root, folder)
        try:
            os.mkdir(path, 0o755)
        except FileExistsError:
            continue
        os.chmod(path, 0o755)  # noqa: S103 - whatever the umask (install.sh runs under 077): like /usr


def _extract_member(
    src: Source, member: TarMember, root: str, want: lockmod.Member, buf: memoryview, progress: Progress
) -> str:
    """Write one member under ``root`` while hashing the same bytes; returns their SHA-256."""
    out = os.open(
        os.path.join(root, member.name),
        os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW,
        int(want.mode, 8),
    )
    try:
        digest = hashlib.sha256()
        for chunk in _member_chunks(src, member, buf):
            digest.update(chunk)
            write_all(out, chunk)
            progress(len(chunk))
        os.fchmod(out, int(want.mode, 8))
    finally:
        os.close(out)
    return digest.hexdigest()


def _inherit(lock: lockmod.Lock, base_dir: Optional[Path], staging: str) -> None:
    """Copy a delta's inherited members from its base's unpacked folder, each checked by SHA-256."""
    if base_dir is None:
        raise TrustError(
            f"{lock.name} {lock.version} is a delta on {lock.base.get('name')} "
            f"{lock.base.get('version')}, which must be installed here first"
        )
    base_lock = lockmod.Lock.from_bytes(
        files.read_capped(base_dir / lockmod.LOCK_NAME, "base lock", lockmod.MAX_LOCK_BYTES, IntegrityError)
    )
    where = {m.sha256: m.path for m in (*base_lock.members, *base_lock.inherited)}
    _make_folders(staging, [m.path for m in lock.inherited])
    buf = memoryview(bytearray(CHUNK))
    base = f"{lock.base.get('name')} {lock.base.get('version')}"
    advice = f"install {base} again from its full bundle, or install a full bundle of {lock.version}"
    for member in lock.inherited:
        if member.sha256 not in where:
            raise TrustError(f"the installed {base} at {base_dir} lacks {member.path}; {advice}")
        source = base_dir / where[member.sha256]
        try:
            with Source([source]) as src:
                if src.size != member.size:
                    raise TrustError(f"{source} changed since {base} was installed; {advice}")
                tar_member = TarMember(member.path, member.size, int(member.mode, 8), 0)
                digest = _extract_member(src, tar_member, staging, member, buf, _no_progress)
        except (InputError, OSError) as exc:  # missing, a FIFO, a folder: not the installed file
            raise TrustError(f"{source} is not the file {base} installed ({exc}); {advice}") from None
        if digest != member.sha256:
            raise TrustError(f"{source} changed since {base} was installed (sha256 {digest}); {advice}")


def verified_copy(path: Path, want: lockmod.Member, dest: Path) -> Path:
    """Copy an unpacked member to ``dest`` (a new file, 0700) checking its bytes against the lock;
    the copy is what then runs, so nothing can change the bytes between the check and the use.

    Raises:
        IntegrityError (exit 4): the unpacked file is missing, not a regular file, or changed.
    """
    try:
        src = Source([path])
    except (InputError, OSError) as exc:
        raise IntegrityError(f"{path}: {exc}; unpack the bundle again", member=want.path) from None
    with src:
        # The same copy-while-hashing as unpacking, into a new file that only its owner may run.
        copy = TarMember(dest.name, src.size, 0o700, 0)
        as_run = dataclasses.replace(want, mode="0700")
        digest = _extract_member(
            src, copy, str(dest.parent), as_run, memoryview(bytearray(CHUNK)), _no_progress
        )
    if src.size != want.size or digest != want.sha256:
        os.unlink(dest)
        raise IntegrityError(
            f"{path} changed since it was verified (sha256 {digest}, the lock says "
            f"{want.sha256}); do not run it: unpack the bundle again",
            member=want.path,
        )
    return dest


def _replace_folder(staging: str, final: Path, workdir: Path) -> None:
    """Rename ``staging`` to ``final``; an older ``final`` is moved aside first, then removed."""
    if final.exists() or final.is_symlink():
        old = tempfile.mkdtemp(prefix=f".{final.name}.old.", dir=str(workdir))
        os.rename(final, os.path.join(old, "x"))
        os.rename(staging, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(staging, final)


def extract_bundle(
    path: Path,
    trusted: List[signing.PublicKey],
    workdir: Path,
    progress: Progress = _no_progress,
    allow_expired: bool = False,
    inherit_from: Optional[Path] = None,
) -> Tuple[Path, VerifyReport]:
    """Decide on a bundle, then unpack exactly its lock's members into ``workdir/NAME-VERSION``.

    A delta bundle's inherited members are copied from ``inherit_from`` (its base's
    unpacked folder), each checked against the new lock's SHA-256 before it is used.
    See ``Bundle.extract``; the installer uses ``Bundle`` directly to decide with its journal.
    """
    with Bundle(path, trusted) as bundle:
        decision = bundle.decide(facts(trusted, allow_expired))
        return bundle.extract(decision, workdir, progress, inherit_from)


# ---------------------------------------------------------------- media-sized parts

PARTS_SUFFIX = ".parts.json"
MAX_PARTS_BYTES = 1024 * 1024
_PART_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*\.tar\.[0-9]{3,}")


@dataclass(frozen=True)
class Part:
    """One media-sized piece of a bundle."""

    name: str
    size: int
    sha256: str


def parts_file(path: Path) -> Optional[Path]:
    """The ``NAME-VERSION.parts.json`` that ``path`` is (or belongs to, for ``NAME-VERSION.tar.NNN``)."""
    if path.name.endswith(PARTS_SUFFIX):
        return path
    match = re.fullmatch(r"(.+)\.tar\.[0-9]{3,}", path.name)  # ASCII digits, as install.sh's [0-9]
    return path.with_name(match.group(1) + PARTS_SUFFIX) if match else None


def _hash_part(path: Path) -> str:
    fd = os.open(path, os.O_RDONLY)
    try:
        return _hash_fd(fd)
    finally:
        os.close(fd)


def load_parts(
    path: Path, trusted: Optional[List[signing.PublicKey]] = None, hash_parts: bool = False
) -> Tuple[List[Part], str]:
    """The parts a ``.parts.json`` lists, checked: signature (when ``trusted``), presence and size,
    and each part's SHA-256 when ``hash_parts`` (``join`` does; ``verify`` instead checks every
    member in one pass and names the part that holds a bad one).

    Returns:
        (parts in order, SHA-256 of the whole bundle).

    Raises:
        SignatureError (exit 3): the parts file is unsigned or not by a trusted key.
        IntegrityError (exit 4): naming the part that is missing, short, long or changed.
    """
    data = files.read_capped(path, "parts file", MAX_PARTS_BYTES, IntegrityError)
    if trusted is not None:
        sig = path.with_name(path.name + ".sig")
        if not sig.exists():
            raise SignatureError(f"{sig} is missing; unsigned parts are never trusted")
        sig_bytes = files.read_capped(sig, "signature", signing.MAX_SIGNATURE_BYTES, SignatureError)
        signing.verify(data, sig_bytes, trusted, checker=checker(), now=time.time())
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


def open_source(path: Path, trusted: Optional[List[signing.PublicKey]] = None) -> Source:
    """A ``Source`` for a bundle file, or for the parts its ``.parts.json`` (or any part) names."""
    index = parts_file(path)
    if index is None:
        return Source([path])
    parts, _ = load_parts(index, trusted)
    if path != index and path.name not in {p.name for p in parts}:
        # A part left over from another build of the same name is not this bundle's.
        raise IntegrityError(
            f"{path}: not one of the parts {index.name} lists ({', '.join(p.name for p in parts)}); "
            "give the parts file or one of its parts",
            member=path.name,
        )
    return Source([index.parent / p.name for p in parts], parts)


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
    # One part object per line, "name" first: install.sh reads the names with sed.
    rows = ",\n".join(
        "  " + json.dumps({"name": n, "sha256": d, "size": (path.parent / n).stat().st_size}, sort_keys=True)
        for n, d in zip(parts, digests)
    )
    head = {"bundle": path.name, "format": 1}
    data = (
        "{\n"
        + "".join(f" {json.dumps(k)}: {json.dumps(v)},\n" for k, v in head.items())
        + f' "parts": [\n{rows}\n ],\n "sha256": {json.dumps(whole)},\n "size": {size}\n}}\n'
    ).encode()
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
        write_all(fd, data)


def join_parts(
    index: Path,
    trusted: List[signing.PublicKey],
    out: Path,
    progress: Optional[Callable[[int, int], None]] = None,
) -> str:
    """Write the whole bundle from its checked parts to ``out`` (temp, fsync, rename); its SHA-256.

    The parts are never modified or removed. ``progress(n, total)`` is told each chunk written.

    Raises:
        SignatureError, IntegrityError: as ``load_parts``, or the joined bytes differ from
            the whole bundle's SHA-256 the parts file gives.
    """
    parts, whole = load_parts(index, trusted, hash_parts=True)
    ours = [index, index.with_name(index.name + ".sig"), *(index.parent / p.name for p in parts)]
    if any(out.resolve() == path.resolve() for path in ours):
        raise InputError(f"-o {out}: that is {index.name} or one of its files; write the bundle elsewhere")
    digest = hashlib.sha256()
    buf = memoryview(bytearray(CHUNK))
    total = sum(p.size for p in parts)
    with atomic_output(out) as fd:
        for part in parts:
            with open(index.parent / part.name, "rb", buffering=0) as f:
                while True:
                    n = f.readinto(buf)
                    if not n:
                        break
                    digest.update(buf[:n])
                    write_all(fd, buf[:n])
                    if progress:
                        progress(n, total)
        if digest.hexdigest() != whole:
            raise IntegrityError(f"{index.name}: the joined parts hash to {digest.hexdigest()}, not {whole}")
    return whole
