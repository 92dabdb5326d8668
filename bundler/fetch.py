"""HTTP downloads of pinned content into the cache; the only user of ``requests``.

A download streams into a stable partial file while hashing, retries
connection errors, 429 and 5xx with exponential backoff (honouring
``Retry-After``), resumes an interrupted transfer with ``Range`` +
``If-Range`` (and restarts when the server answers 200), stops at a size
ceiling, and moves the file into the cache only when its SHA-256 matches the
pin. A mismatch leaves nothing behind.

Registry (image) pulls and apt repositories build on this in their own modules.
"""

from __future__ import annotations

import contextlib
import email.utils
import hashlib
import json
import logging
import os
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, TypeVar

import requests
import urllib3

from bundler import __version__
from bundler.cache import Cache
from bundler.errors import FetchError

log = logging.getLogger(__name__)

# (url, bytes done, bytes expected or None); called often, from worker threads.
FetchProgress = Callable[[str, int, "int | None"], None]
_RETRY_STATUS = {408, 429, 500, 502, 503, 504}
_T = TypeVar("_T")
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")
# An http(s) URL made only of characters that may appear unquoted in one (RFC 3986).
_QUOTED_URL = re.compile(r"https?://[A-Za-z0-9\-._~!$&'()*+,/:;=?@\[\]%]*")


def _no_progress(_url: str, _done: int, _total: int | None) -> None:
    pass


@dataclass
class FetchPolicy:
    """Limits and patience for one download; every limit has a named default."""

    attempts: int = 6
    backoff: float = 0.5  # seconds, doubled each retry
    max_backoff: float = 30.0
    max_retry_after: float = 120.0  # never sleep longer than this on a server's word
    connect_timeout: float = 15.0
    read_timeout: float = 60.0
    max_bytes: int = 16 * 1024**3
    sleep: Callable[[float], None] = field(default=time.sleep, repr=False)


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    if value.strip().isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class Auth(Protocol):
    """Credentials for one server: headers to send, and what to do on a 401."""

    def headers(self) -> dict[str, str]:
        """Headers for the next request (e.g. ``Authorization``)."""
        ...

    def challenge(self, www_authenticate: str) -> bool:
        """React to a 401 (get or renew a token); True when a retry may now succeed."""
        ...


@dataclass(frozen=True)
class Reply:
    """A small, fully read HTTP response."""

    status: int
    headers: dict[str, str]
    body: bytes
    url: str


class GaveUp(FetchError):
    """Transient failures outlasted the retries (the partial download is kept); trying
    another URL on the same server is then pointless."""


class _Retry(Exception):
    """A transient failure; ``delay`` is the server's Retry-After, if any."""

    def __init__(self, reason: str, delay: float | None = None) -> None:
        super().__init__(reason)
        self.delay = delay


class _Partial:
    """The partial file, its running digest and the validator for ``If-Range``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.meta = path.with_suffix(".meta")
        self.digest = hashlib.sha256()
        self.size = 0
        self.validator: str | None = None
        if path.exists():
            with open(path, "rb") as f:
                while chunk := f.read(1 << 20):
                    self.digest.update(chunk)
                    self.size += len(chunk)
            with contextlib.suppress(OSError, ValueError):
                self.validator = json.loads(self.meta.read_text()).get("validator")

    def reset(self, truncate: bool = True) -> None:
        self.digest = hashlib.sha256()
        self.size = 0
        if truncate:
            self.path.write_bytes(b"")

    def remember(self, validator: str | None) -> None:
        self.validator = validator
        self.meta.write_text(json.dumps({"validator": validator}))

    def discard(self) -> None:
        for p in (self.path, self.meta):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()


def _body(resp: requests.Response) -> Iterator[bytes]:
    """The body as it arrives: ``read1`` returns what is there, so a dropped
    connection loses no received byte and the resume starts exactly after it."""
    raw = resp.raw
    while chunk := raw.read1(1 << 20, decode_content=True):
        yield chunk


class Fetcher:
    """Downloads pinned URLs into a ``Cache``."""

    def __init__(self, cache: Cache, policy: FetchPolicy | None = None) -> None:
        self.cache = cache
        self.policy = policy or FetchPolicy()
        self.session = requests.Session()
        self.session.headers["User-Agent"] = f"airbundle/{__version__}"

    def fetch(
        self,
        url: str,
        sha256: str,
        progress: FetchProgress = _no_progress,
        max_bytes: int | None = None,
        auth: Auth | None = None,
        same_url: bool = False,
        why_mismatch: str = "the pin in the manifest or the upstream file is wrong",
    ) -> Path:
        """The cached file for ``sha256``, downloading ``url`` when it is not cached.

        With ``same_url``, a cached copy counts only when ``url`` itself has served these
        bytes before (``Cache.origins``); otherwise ``url`` is downloaded and checked again,
        so that a caller recording ``url`` (the lock's binaries) never names a URL that does
        not serve them, e.g. a changed URL that now answers 404. ``why_mismatch`` says, in the
        mismatch message, where the expected SHA-256 came from and so what is wrong (for an apt
        index: the mirror, not any manifest).

        Raises:
            FetchError: the server failed past the retries, the body exceeded
                the ceiling, or its SHA-256 is not the pinned one (exit 5).
        """
        hit = self.cached(url, sha256, same_url)
        if hit:
            return hit
        with self.cache.lock(sha256):
            hit = self.cached(url, sha256, same_url)  # another build may have fetched it meanwhile
            if hit:
                return hit
            path = self._download(
                url, sha256, progress, max_bytes or self.policy.max_bytes, auth, why_mismatch
            )
            self.cache.add_origin(sha256, url)
            return path

    def cached(self, url: str, sha256: str, same_url: bool = False) -> Path | None:
        """The cache entry ``fetch`` would use without downloading, or None."""
        hit = self.cache.get(sha256)
        if hit and same_url and url not in self.cache.origins(sha256):
            log.info("%s: cached under its sha256 from another URL; fetching it from this one", url)
            return None
        return hit

    def _retrying(self, url: str, attempt_once: Callable[[], _T]) -> _T:
        """Run ``attempt_once`` until it returns, retrying ``_Retry`` with backoff."""
        policy = self.policy
        for attempt in range(1, policy.attempts + 1):
            try:
                return attempt_once()
            except _Retry as exc:
                if attempt == policy.attempts:
                    raise GaveUp(f"{url}: giving up after {attempt} attempts: {exc}") from exc
                delay = min(policy.backoff * 2 ** (attempt - 1), policy.max_backoff)
                if exc.delay is not None:
                    delay = min(exc.delay, policy.max_retry_after)
                if delay:
                    log.warning(
                        "%s: %s; retry %d of %d in %.1fs", url, exc, attempt, policy.attempts - 1, delay
                    )
                policy.sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover

    def content_length(self, url: str) -> int | None:
        """The size a server announces for ``url`` (HEAD), or None when it does not say or fails."""
        try:
            resp = self.session.head(url, allow_redirects=True, timeout=(self.policy.connect_timeout, 30))
        except requests.RequestException:
            return None
        length = resp.headers.get("Content-Length", "")
        return int(length) if resp.status_code == 200 and length.isdigit() else None

    def get(
        self,
        url: str,
        headers: dict[str, str] | None = None,
        auth: Auth | None = None,
        max_bytes: int = 4 * 1024 * 1024,
    ) -> Reply:
        """A small GET (manifests, tokens), fully read; 2xx and 4xx come back, 5xx/429 are retried.

        Raises:
            FetchError: connection failures past the retries, or a body over ``max_bytes``.
        """
        return self._retrying(url, lambda: self._get_once(url, headers or {}, auth, max_bytes))

    def _get_once(self, url: str, headers: dict[str, str], auth: Auth | None, max_bytes: int) -> Reply:
        resp = self._send(url, {**headers, **(auth.headers() if auth else {})})
        with resp:
            self._check_status(url, resp, auth, passthrough=True)
            body = b""
            try:
                for chunk in _body(resp):
                    body += chunk
                    if len(body) > max_bytes:
                        raise FetchError(f"{url}: response exceeds {max_bytes} bytes")
            except (requests.RequestException, urllib3.exceptions.HTTPError) as exc:
                raise _Retry(f"connection lost: {exc}") from exc
            return Reply(resp.status_code, dict(resp.headers), body, resp.url)

    def _send(self, url: str, headers: dict[str, str]) -> requests.Response:
        policy = self.policy
        try:
            # requests drops Authorization when a redirect leads to another host.
            prepared = self.session.prepare_request(requests.Request("GET", url, headers=headers))
            if _QUOTED_URL.fullmatch(url):
                # Already quoted (apt's quoting of Debian pool names: %7e, %2b): sent byte for byte,
                # where requests would rewrite %7e to ~ (equivalent, but not what apt asks).
                prepared.url = url
            # What Session.request adds: proxies, CA bundle and client certificate from the environment.
            env = self.session.merge_environment_settings(prepared.url, {}, True, None, None)
            return self.session.send(
                prepared,
                stream=True,
                timeout=(policy.connect_timeout, policy.read_timeout),
                proxies=env["proxies"],
                verify=env["verify"],
                cert=env["cert"],
            )
        except (requests.ConnectionError, requests.Timeout) as exc:
            raise _Retry(f"cannot connect: {exc}") from exc
        except requests.RequestException as exc:
            raise FetchError(f"{url}: {exc}") from exc

    @staticmethod
    def _check_status(
        url: str, resp: requests.Response, auth: Auth | None, passthrough: bool = False
    ) -> None:
        """Raise for statuses to retry or give up on; 4xx other than 401 pass when ``passthrough``."""
        if resp.status_code in _RETRY_STATUS:
            raise _Retry(f"HTTP {resp.status_code}", _retry_after(resp.headers.get("Retry-After")))
        if resp.status_code == 401 and (auth is not None or not passthrough):
            if auth is not None and auth.challenge(resp.headers.get("WWW-Authenticate", "")):
                raise _Retry("unauthorized; retrying with new credentials", 0.0)
            raise FetchError(
                f"{url}: HTTP 401 unauthorized; log in with 'docker login' or check the credentials "
                "in $DOCKER_CONFIG/config.json (~/.docker/config.json)"
            )
        if passthrough and 400 <= resp.status_code < 500:
            return

    def _download(
        self,
        url: str,
        sha256: str,
        progress: FetchProgress,
        max_bytes: int,
        auth: Auth | None,
        why_mismatch: str,
    ) -> Path:
        part = _Partial(self.cache.partial(sha256))
        try:
            self._retrying(url, lambda: self._attempt(url, part, progress, max_bytes, auth))
        except GaveUp:
            raise  # keep the partial file: the next build resumes it
        except FetchError:
            part.discard()
            raise
        actual = part.digest.hexdigest()
        if actual != sha256:
            part.discard()
            raise FetchError(
                f"{url}: sha256 mismatch: expected {sha256}, got {actual} "
                f"({why_mismatch}; nothing was cached)"
            )
        with open(part.path, "rb+") as f:
            os.fsync(f.fileno())
        with contextlib.suppress(FileNotFoundError):
            part.meta.unlink()
        return self.cache.commit(sha256, part.path)

    def _attempt(
        self, url: str, part: _Partial, progress: FetchProgress, max_bytes: int, auth: Auth | None
    ) -> None:
        """One GET that appends to ``part``; returns only when the body is complete."""
        headers = {"Accept-Encoding": "identity"}  # hash the bytes as served, not decoded
        if part.size:
            headers["Range"] = f"bytes={part.size}-"
            if part.validator:
                headers["If-Range"] = part.validator
        if auth is not None:
            headers.update(auth.headers())
        resp = self._send(url, headers)
        with resp:
            self._check_status(url, resp, auth)
            if resp.status_code == 416:  # our partial is bad or the file changed: start over
                part.reset()
                raise _Retry("HTTP 416 on resume; restarting from the first byte", 0.0)
            if resp.status_code not in (200, 206):
                raise FetchError(f"{url}: HTTP {resp.status_code} {resp.reason}; check the URL")
            total: int | None = None
            if resp.status_code == 206:
                match = _CONTENT_RANGE.fullmatch(resp.headers.get("Content-Range", ""))
                if not match or int(match.group(1)) != part.size:
                    part.reset()
                    raise _Retry("server resumed at the wrong offset; restarting", 0.0)
                total = None if match.group(3) == "*" else int(match.group(3))
            else:
                if part.size:
                    log.info("%s: server ignored the range; restarting from the first byte", url)
                part.reset(truncate=False)  # the "wb" open below truncates
                length = resp.headers.get("Content-Length")
                total = int(length) if length and length.isdigit() else None
            if total is not None and total > max_bytes:
                raise FetchError(f"{url}: {total} bytes exceeds the {max_bytes}-byte ceiling")
            part.validator = resp.headers.get("ETag") or resp.headers.get("Last-Modified")
            try:
                with open(part.path, "ab" if part.size else "wb") as f:
                    for chunk in _body(resp):
                        if part.size + len(chunk) > max_bytes:
                            raise FetchError(f"{url}: body exceeds the {max_bytes}-byte ceiling")
                        f.write(chunk)
                        part.digest.update(chunk)
                        part.size += len(chunk)
                        progress(url, part.size, total)
            except (requests.RequestException, urllib3.exceptions.HTTPError) as exc:
                part.remember(part.validator)  # only an interrupted transfer needs it, for If-Range
                raise _Retry(f"connection lost after {part.size} bytes: {exc}") from exc
            if total is not None and part.size != total:
                part.remember(part.validator)
                raise _Retry(f"connection closed after {part.size} of {total} bytes")
