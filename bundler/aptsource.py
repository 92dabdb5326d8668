"""Read apt repositories the way apt does: signed Release, verified indexes, verified .debs.

``load`` fetches a source's ``InRelease`` (or ``Release`` + ``Release.gpg``),
checks its OpenPGP signature with stock ``gpgv`` against the manifest's
keyring (unless the source is marked ``trusted``), honours ``Valid-Until``,
then fetches the ``Packages`` index (xz, gz or plain, whichever ``Release``
lists) by its SHA256 into the cache and parses it. ``download`` fetches a
``.deb`` by the SHA256 its ``Packages`` stanza gives. Both flat repositories
(``deb URL ./``) and ``dists/SUITE/COMPONENT`` layouts are read.

HTTP is ``bundler.fetch``'s; parsing and resolution are ``bundler.debs``'s.
"""

from __future__ import annotations

import base64
import datetime
import email.utils
import gzip
import logging
import lzma
import subprocess
import tempfile
from pathlib import Path

from bundler import debs
from bundler.errors import FetchError
from bundler.fetch import Fetcher, FetchProgress

log = logging.getLogger(__name__)

MAX_RELEASE_BYTES = 16 * 1024 * 1024
_INDEXES = (("Packages.xz", lzma.decompress), ("Packages.gz", gzip.decompress), ("Packages", bytes))


def _no_progress(_url: str, _done: int, _total: int | None) -> None:
    pass


def dearmor(data: bytes) -> bytes:
    """Binary OpenPGP keys from an ASCII-armored block (gpgv reads only binary keyrings)."""
    if not data.lstrip().startswith(b"-----BEGIN PGP"):
        return data
    lines = data.decode("ascii", "replace").strip().splitlines()
    end = next((i for i, line in enumerate(lines) if line.startswith("-----END")), len(lines))
    inner = [line.strip() for line in lines[1:end]]
    if "" in inner:  # armor headers ("Comment: ...") end at the first blank line
        inner = inner[inner.index("") + 1 :]
    return base64.b64decode("".join(line for line in inner if line and not line.startswith("=")))


def _gpgv(keyring: Path, args: list[str], where: str) -> bytes:
    """Run stock gpgv against one keyring; returns its ``--output`` (signed content) when asked."""
    with tempfile.TemporaryDirectory(prefix="airbundle-gpgv-") as home:
        ring = Path(home) / "keyring.gpg"
        try:
            ring.write_bytes(dearmor(keyring.read_bytes()))
        except (OSError, ValueError) as exc:
            raise FetchError(f"{where}: cannot read keyring {keyring}: {exc}") from exc
        out = Path(home) / "signed"
        try:
            run = subprocess.run(
                ["gpgv", "--homedir", home, "--keyring", str(ring), "--output", str(out), *args],
                capture_output=True,
                timeout=120,
            )
        except FileNotFoundError:
            raise FetchError(
                "gpgv is not installed (Debian package gpgv); it checks apt signatures"
            ) from None
        if run.returncode != 0:
            detail = run.stderr.decode(errors="replace").strip().splitlines()
            raise FetchError(
                f"{where}: signature check failed with keyring {keyring}: {' / '.join(detail[-2:])}"
            )
        return out.read_bytes() if out.exists() else b""


def _strip_clearsign(text: bytes) -> bytes:
    """The message of a clearsigned document, without checking it (for ``trusted`` sources)."""
    _, _, rest = text.partition(b"\n\n")
    body, _, _ = rest.partition(b"-----BEGIN PGP SIGNATURE-----")
    return b"\n".join(line[2:] if line.startswith(b"- ") else line for line in body.split(b"\n"))


def _release(fetcher: Fetcher, source: debs.Source) -> bytes:
    """The verified Release text of a source."""
    dist = source.dist_url
    where = source.describe()
    inrelease = fetcher.get(f"{dist}/InRelease", max_bytes=MAX_RELEASE_BYTES)
    if inrelease.status == 200:
        if source.trusted:
            return _strip_clearsign(inrelease.body)
        assert source.keyring is not None
        with tempfile.NamedTemporaryFile(suffix=".InRelease") as f:
            f.write(inrelease.body)
            f.flush()
            return _gpgv(source.keyring, [f.name], f"{where}: InRelease")
    release = fetcher.get(f"{dist}/Release", max_bytes=MAX_RELEASE_BYTES)
    if release.status != 200:
        raise FetchError(f"{where}: neither InRelease nor Release at {dist} (HTTP {release.status})")
    if source.trusted:
        return release.body
    signature = fetcher.get(f"{dist}/Release.gpg", max_bytes=1024 * 1024)
    if signature.status != 200:
        raise FetchError(
            f"{where}: Release is not signed (no InRelease, no Release.gpg); "
            "give the source 'trusted: true' only if you accept that"
        )
    assert source.keyring is not None
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "Release").write_bytes(release.body)
        (Path(tmp) / "Release.gpg").write_bytes(signature.body)
        _gpgv(source.keyring, [f"{tmp}/Release.gpg", f"{tmp}/Release"], f"{where}: Release")
    return release.body


def _check_valid_until(fields: dict[str, str], where: str, now: datetime.datetime) -> None:
    value = fields.get("Valid-Until")
    if not value:
        return
    try:
        until = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError) as exc:
        raise FetchError(f"{where}: Release has an unreadable Valid-Until {value!r}") from exc
    if until.tzinfo is None:
        until = until.replace(tzinfo=datetime.timezone.utc)
    if until < now:
        raise FetchError(
            f"{where}: Release expired at {until.isoformat()} (now {now.isoformat()}); "
            "the mirror is stale or replayed"
        )


def load(
    fetcher: Fetcher, source: debs.Source, arch: str, now: datetime.datetime | None = None
) -> list[debs.Package]:
    """Every package of ``source`` for ``arch`` (and ``all``), from verified indexes.

    Raises:
        FetchError: unreachable source, bad or missing signature, expired Release,
            an index whose bytes differ from Release (exit 5).
    """
    where = source.describe()
    if source.trusted:
        log.warning("%s: trusted: true: the Release signature is NOT checked", where)
    text = _release(fetcher, source)
    try:
        release = debs.parse_release(text.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise FetchError(f"{where}: unreadable Release: {exc}") from exc
    _check_valid_until(release["fields"], where, now or datetime.datetime.now(datetime.timezone.utc))
    listed: dict[str, tuple[int, str]] = release["sha256"]
    prefixes = [""] if source.flat else [f"{c}/binary-{a}/" for c in source.components for a in (arch, "all")]
    packages: list[debs.Package] = []
    found_any = False
    for prefix in prefixes:
        for name, decode in _INDEXES:
            entry = listed.get(prefix + name)
            if entry is None:
                continue
            size, sha = entry
            path = fetcher.fetch(f"{source.dist_url}/{prefix}{name}", sha, max_bytes=size)
            try:
                index = decode(path.read_bytes()).decode("utf-8")
            except (OSError, lzma.LZMAError, UnicodeDecodeError) as exc:
                raise FetchError(f"{where}: cannot read {prefix}{name}: {exc}") from exc
            packages += debs.parse_packages(index, source.url)
            found_any = True
            break
        else:
            if not prefix.endswith("binary-all/"):
                log.info("%s: Release lists no Packages index under %r", where, prefix or "./")
    if not found_any:
        raise FetchError(f"{where}: Release lists no Packages index for {arch}; check suite and components")
    return packages


def download(fetcher: Fetcher, pkg: debs.Package, progress: FetchProgress = _no_progress) -> Path:
    """The cached ``.deb`` of ``pkg``, verified against its ``Packages`` SHA256 (exit 5 otherwise)."""
    return fetcher.fetch(pkg.url, pkg.sha256, progress, max_bytes=pkg.size)
