"""Content-addressed cache of fetched bytes, and a digest index of local files.

Entries live at ``ROOT/sha256/ab/<hex>`` and are only ever created by
rename from a fsynced temp file, so a reader sees a whole entry or none, and
two builds can share one cache. Each entry has a stat record beside it;
when the entry's stat no longer matches (it was written to, truncated,
replaced), it is hashed again and evicted if its bytes are wrong, so a
corrupted entry is refetched and never bundled.

The same stat-keyed idea (as git's index) lets a warm build skip re-hashing
unchanged payload files. Network access is not handled here.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from bundler.errors import FetchError, from_os_error

CHUNK = 1 << 20


def default_root() -> Path:
    """``$AIRBUNDLE_CACHE``, else ``~/.cache/airbundle``."""
    env = os.environ.get("AIRBUNDLE_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "airbundle"


def hash_file(path: Path, progress: Callable[[int], None] | None = None) -> tuple[str, int]:
    """(sha256 hex, size) of a file, read in 1 MiB chunks; ``progress(n)`` per chunk."""
    digest = hashlib.sha256()
    size = 0
    buf = memoryview(bytearray(CHUNK))
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            digest.update(buf[:n])
            size += n
            if progress:
                progress(n)
    return digest.hexdigest(), size


def _stamp(st: os.stat_result) -> list[int]:
    # ctime cannot be set by user tools, so a rewrite that restores mtime still shows.
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def fsync_dir(path: Path) -> None:
    """Make a rename in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes, mode: int = 0o644, durable: bool = True) -> None:
    """Write ``data`` at ``path`` via temp file and rename (with fsyncs unless ``durable`` is off).

    Non-durable writes are still atomic (a reader sees old or new, never half); they
    suit hints that are rebuilt when lost, such as the cache's stat records.
    """
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fchmod(f.fileno(), mode)
            if durable:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    if durable:
        fsync_dir(path.parent)


class Cache:
    """A content-addressed store rooted at ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.tmp = root / "tmp"
        self._buckets: set[Path] = set()
        for sub in ("sha256", "tmp", "index"):
            (root / sub).mkdir(parents=True, exist_ok=True)

    def path(self, sha256: str) -> Path:
        """Where the entry for ``sha256`` lives (whether or not it exists)."""
        return self.root / "sha256" / sha256[:2] / sha256

    def _stat_path(self, sha256: str) -> Path:
        return self.root / "sha256" / sha256[:2] / f"{sha256}.stat"

    def get(self, sha256: str) -> Path | None:
        """The entry's path when present and intact; evicts a corrupted one."""
        path = self.path(sha256)
        try:
            st = path.stat()
        except FileNotFoundError:
            return None
        try:
            if json.loads(self._stat_path(sha256).read_text()) == _stamp(st):
                return path
        except (OSError, ValueError):
            pass
        try:
            actual: str | None = hash_file(path)[0]
        except OSError:  # unreadable, or a folder where the entry belongs: as absent
            actual = None
        if actual != sha256:
            self.evict(sha256)
            return None
        self._record(sha256, path)
        return path

    def _origins_path(self, sha256: str) -> Path:
        return self.root / "sha256" / sha256[:2] / f"{sha256}.urls"

    def origins(self, sha256: str) -> set[str]:
        """The URLs that have served this entry's exact bytes (empty when none is recorded)."""
        try:
            return set(self._origins_path(sha256).read_text().split())
        except OSError:
            return set()

    def add_origin(self, sha256: str, url: str) -> None:
        """Record that ``url`` served this entry's bytes (checked against ``sha256``).

        A record, not a proof: when it is lost, the URL is fetched again before a lock names it.
        """
        known = self.origins(sha256)
        if url not in known and not any(c.isspace() for c in url):
            with contextlib.suppress(OSError):
                atomic_write(
                    self._origins_path(sha256),
                    "".join(f"{u}\n" for u in sorted(known | {url})).encode(),
                    durable=False,
                )

    def evict(self, sha256: str) -> None:
        """Remove an entry and its stat record (an empty folder in an entry's place too).

        Raises:
            OSError: the entry cannot be removed (e.g. a folder with files in it).
        """
        for p in (self.path(sha256), self._stat_path(sha256)):
            try:
                p.unlink()
            except FileNotFoundError:
                pass
            except IsADirectoryError as exc:
                try:
                    p.rmdir()
                except OSError:
                    raise exc from None

    def forget(self, path: Path) -> None:
        """Drop the digest index record of a local file, so the next build hashes it again."""
        with contextlib.suppress(OSError):
            self._index_path(path.resolve()).unlink()

    def _index_path(self, real: Path) -> Path:
        return self.root / "index" / hashlib.sha256(os.fsencode(real)).hexdigest()

    def _record(self, sha256: str, path: Path) -> None:
        # A hint: when it is lost (crash, disk full), the entry is simply hashed again.
        with contextlib.suppress(OSError):
            atomic_write(self._stat_path(sha256), json.dumps(_stamp(path.stat())).encode(), durable=False)

    def commit(self, sha256: str, src: Path) -> Path:
        """Move a verified, fsynced temp file into the store under its digest.

        The rename makes the entry appear whole or not at all; it is not itself
        fsynced: after a crash a lost entry is simply fetched again.
        """
        dest = self.path(sha256)
        if dest.parent not in self._buckets:  # 256 bucket folders: make each once per process
            dest.parent.mkdir(parents=True, exist_ok=True)
            self._buckets.add(dest.parent)
        os.chmod(src, 0o644)
        os.replace(src, dest)
        self._record(sha256, dest)
        return dest

    def put(self, chunks: Iterable[bytes], max_bytes: int | None = None) -> tuple[str, int, Path]:
        """Store a stream under its digest: (sha256, size, path). Nothing is kept on failure.

        Raises:
            ValueError: the stream exceeds ``max_bytes``.
        """
        digest = hashlib.sha256()
        size = 0
        fd, tmp = tempfile.mkstemp(dir=self.tmp, prefix="put-", suffix=".part")
        try:
            with os.fdopen(fd, "wb") as f:
                for chunk in chunks:  # reading them may raise OSError too: not the cache's
                    size += len(chunk)
                    if max_bytes is not None and size > max_bytes:
                        raise ValueError(f"more than {max_bytes} bytes")
                    digest.update(chunk)
                    self._write(f, chunk)
                self._write(f, b"", sync=True)
            sha = digest.hexdigest()
            if self.get(sha) is not None:  # already stored: keep the existing entry
                os.unlink(tmp)
                return sha, size, self.path(sha)
            return sha, size, self.commit(sha, Path(tmp))
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    def _write(self, f: Any, chunk: bytes, sync: bool = False) -> None:
        """Write to a temp file of the cache; disk full and the like become ``FetchError`` (exit 5)."""
        try:
            f.write(chunk)
            if sync:
                f.flush()
                os.fsync(f.fileno())
        except OSError as exc:
            raise from_os_error(exc, "writing the cache", FetchError, self.root) from exc

    def put_bytes(self, data: bytes) -> Path:
        """Store small bytes under their digest; returns the entry's path."""
        return self.put([data])[2]

    def partial(self, sha256: str) -> Path:
        """A stable name for an unfinished download of ``sha256`` (used under ``lock``)."""
        return self.tmp / f"{sha256}.part"

    @contextlib.contextmanager
    def lock(self, sha256: str) -> Iterator[None]:
        """Serialize work on one entry across processes (``flock``)."""
        fd = os.open(self.tmp / f"{sha256}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def file_digest(self, path: Path, progress: Callable[[int], None] | None = None) -> tuple[str, int]:
        """(sha256, size) of a local file, re-hashed (reporting ``progress``) only when its stat changed."""
        real = path.resolve()
        st = real.stat()
        index = self._index_path(real)
        try:
            record = json.loads(index.read_text())
            if record["stamp"] == _stamp(st):
                return str(record["sha256"]), int(record["size"])
        except (OSError, ValueError, KeyError, TypeError):
            pass
        sha, size = hash_file(real, progress)
        if _stamp(real.stat()) == _stamp(st):  # unchanged while we read it
            record = {"path": str(real), "stamp": _stamp(st), "sha256": sha, "size": size}
            with contextlib.suppress(OSError):  # a hint, like the stat records
                atomic_write(index, json.dumps(record).encode(), durable=False)
        return sha, size
