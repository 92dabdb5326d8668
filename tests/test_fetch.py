"""Pinned downloads against a real loopback HTTP server: resume, retries, mismatch, cache."""

from __future__ import annotations

import hashlib
import os
import socket
import threading
from pathlib import Path

import pytest

from bundler.cache import Cache
from bundler.errors import FetchError
from bundler.fetch import Fetcher, FetchPolicy

from .conftest import Origin

DATA = os.urandom(3 * 1024 * 1024 + 123)
SHA = hashlib.sha256(DATA).hexdigest()


def _fetcher(cache_dir: Path, sleeps: list[float] | None = None, **kw) -> Fetcher:
    sleeps = sleeps if sleeps is not None else []
    return Fetcher(Cache(cache_dir), FetchPolicy(sleep=sleeps.append, **kw))


def _cache_files(cache_dir: Path) -> list[str]:
    return sorted(p.name for p in (cache_dir / "sha256").rglob("*") if p.is_file())


def test_download_lands_in_cache(origin: Origin, cache_dir: Path) -> None:
    url = origin.add("/rke", DATA)
    seen: list[int] = []
    path = _fetcher(cache_dir).fetch(url, SHA, progress=lambda u, d, t: seen.append(d))
    assert path == cache_dir / "sha256" / SHA[:2] / SHA
    assert path.read_bytes() == DATA
    assert seen[-1] == len(DATA)
    # A second fetch is a cache hit: the server is not asked again.
    assert _fetcher(cache_dir).fetch(url, SHA) == path
    assert origin.routes["/rke"].hits == 1


def test_dropped_connection_resumes_with_range(origin: Origin, cache_dir: Path) -> None:
    url = origin.add("/rke", DATA, behaviour="drop_once")
    sleeps: list[float] = []
    path = _fetcher(cache_dir, sleeps).fetch(url, SHA)
    route = origin.routes["/rke"]
    assert path.read_bytes() == DATA
    assert route.hits == 2
    assert route.ranges[0] is None
    assert route.ranges[1] == f"bytes={len(DATA) // 2}-"
    assert route.served == len(DATA)  # no byte sent twice
    assert len(sleeps) == 1


def test_resume_restarts_when_server_ignores_range(origin: Origin, cache_dir: Path) -> None:
    partial = Cache(cache_dir).partial(SHA)
    partial.write_bytes(b"garbage from another file")
    url = origin.add("/rke", DATA, behaviour="norange")
    assert _fetcher(cache_dir).fetch(url, SHA).read_bytes() == DATA
    assert origin.routes["/rke"].ranges == ["bytes=25-"]


def test_partial_left_by_killed_build_is_resumed(origin: Origin, cache_dir: Path) -> None:
    Cache(cache_dir).partial(SHA).write_bytes(DATA[:1000])
    url = origin.add("/rke", DATA)
    assert _fetcher(cache_dir).fetch(url, SHA).read_bytes() == DATA
    assert origin.routes["/rke"].ranges == ["bytes=1000-"]
    assert origin.routes["/rke"].served == len(DATA) - 1000


def test_wrong_bytes_fail_and_leave_nothing(origin: Origin, cache_dir: Path) -> None:
    url = origin.add("/rke", DATA, behaviour="wrong")
    with pytest.raises(FetchError) as info:
        _fetcher(cache_dir).fetch(url, SHA)
    message = str(info.value)
    assert info.value.exit_code == 5
    assert url in message and f"expected {SHA}" in message
    assert hashlib.sha256(b"X" + DATA[1:]).hexdigest() in message
    assert _cache_files(cache_dir) == []
    assert [p.name for p in (cache_dir / "tmp").iterdir() if p.suffix in (".part", ".meta")] == []


def test_503_retry_after_is_honoured(origin: Origin, cache_dir: Path) -> None:
    url = origin.add("/rke", DATA, behaviour="flaky", retry_after="7")
    sleeps: list[float] = []
    assert _fetcher(cache_dir, sleeps).fetch(url, SHA).read_bytes() == DATA
    assert sleeps == [7.0]


def test_retry_after_is_capped(origin: Origin, cache_dir: Path) -> None:
    url = origin.add("/rke", DATA, behaviour="flaky", retry_after="86400")
    sleeps: list[float] = []
    _fetcher(cache_dir, sleeps, max_retry_after=30).fetch(url, SHA)
    assert sleeps == [30.0]


def test_503_without_retry_after_backs_off(origin: Origin, cache_dir: Path) -> None:
    url = origin.add("/rke", DATA, behaviour="flaky")
    sleeps: list[float] = []
    _fetcher(cache_dir, sleeps, backoff=0.25).fetch(url, SHA)
    assert sleeps == [0.25]


def test_404_fails_at_once(origin: Origin, cache_dir: Path) -> None:
    url = origin.add("/rke", DATA, behaviour="notfound")
    sleeps: list[float] = []
    with pytest.raises(FetchError, match="HTTP 404"):
        _fetcher(cache_dir, sleeps).fetch(url, SHA)
    assert sleeps == []


def test_unreachable_server_gives_up(cache_dir: Path) -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    sleeps: list[float] = []
    with pytest.raises(FetchError, match="giving up after 3 attempts"):
        _fetcher(cache_dir, sleeps, attempts=3).fetch(f"http://127.0.0.1:{port}/rke", SHA)
    assert sleeps == [0.5, 1.0]


def test_size_ceiling(origin: Origin, cache_dir: Path) -> None:
    url = origin.add("/rke", DATA)
    with pytest.raises(FetchError, match="ceiling"):
        _fetcher(cache_dir).fetch(url, SHA, max_bytes=1024)
    assert _cache_files(cache_dir) == []


def test_corrupted_cache_entry_is_refetched(origin: Origin, cache_dir: Path) -> None:
    url = origin.add("/rke", DATA)
    path = _fetcher(cache_dir).fetch(url, SHA)
    with open(path, "r+b") as f:  # bit rot, or someone editing the cache
        f.seek(100)
        f.write(b"\0")
    again = _fetcher(cache_dir).fetch(url, SHA)
    assert again.read_bytes() == DATA
    assert origin.routes["/rke"].hits == 2


def test_cache_entry_touched_but_intact_is_kept(origin: Origin, cache_dir: Path) -> None:
    url = origin.add("/rke", DATA)
    path = _fetcher(cache_dir).fetch(url, SHA)
    os.utime(path, (1, 1))  # stat changed: re-hashed, found good, kept
    assert _fetcher(cache_dir).fetch(url, SHA) == path
    assert origin.routes["/rke"].hits == 1


def test_two_builds_share_one_download(origin: Origin, cache_dir: Path) -> None:
    url = origin.add("/rke", DATA)
    results: list[Path] = []
    threads = [
        threading.Thread(target=lambda: results.append(_fetcher(cache_dir).fetch(url, SHA))) for _ in range(2)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 2 and results[0] == results[1]
    assert origin.routes["/rke"].hits == 1


def test_giving_up_keeps_the_partial_for_the_next_build(origin: Origin, cache_dir: Path) -> None:
    url = origin.add("/rke", DATA, behaviour="drop_once")
    with pytest.raises(FetchError, match="giving up after 1 attempts"):
        _fetcher(cache_dir, attempts=1).fetch(url, SHA)
    assert Cache(cache_dir).partial(SHA).stat().st_size == len(DATA) // 2
    assert _fetcher(cache_dir).fetch(url, SHA).read_bytes() == DATA
    assert origin.routes["/rke"].served == len(DATA)
