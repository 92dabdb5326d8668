"""Read apt repositories the way apt does: signed Release, verified indexes, verified .debs.

``load`` fetches a source's ``InRelease`` (or ``Release`` + ``Release.gpg``), checks its
OpenPGP signature with stock ``gpgv`` against the manifest's keyring (unless the source is
marked ``trusted``), honours ``Valid-Until``, then fetches the ``Packages`` indexes apt
would fetch for the target architecture:

- only architectures the Release lists; ``binary-all`` only when ``all`` is listed and
  ``No-Support-for-Architecture-all: Packages`` does not say that ``all`` packages are in
  each architecture's own index (Debian's main archive says so; its security archive lists
  no ``all`` at all);
- each listed compression in apt's order (``Acquire::CompressionTypes``: xz, bz2, lzma, gz,
  then uncompressed; lz4 and zstd have no decoder in Python's standard library and are
  skipped), the next one tried when one is missing or does not match the signed Release;
- through ``by-hash/SHA256/…`` first when the Release says ``Acquire-By-Hash: yes`` (a mirror
  being updated keeps serving the file the Release names), then by name.

Each index is cached by the SHA256 the signed Release gives and parsed as it is
decompressed, a chunk at a time. ``download`` fetches a ``.deb`` by the SHA256 its
``Packages`` stanza gives. Flat repositories (``deb URL ./``) and ``dists/SUITE/COMPONENT``
layouts are read. A Release saying ``NotAutomatic: yes`` (backports, experimental) gives
its packages apt's priority 1 (100 with ``ButAutomaticUpgrades: yes``).

Not here: HTTP (``bundler.fetch``), parsing and resolution (``bundler.debs``).
"""

from __future__ import annotations

import base64
import bz2
import datetime
import email.utils
import hashlib
import logging
import lzma
import os
import subprocess
import sys
import tempfile
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from bundler import debs
from bundler.errors import FetchError
from bundler.fetch import Fetcher, FetchProgress, GaveUp
from bundler.files import read_capped

log = logging.getLogger(__name__)

MAX_RELEASE_BYTES = 16 * 1024 * 1024
MAX_KEYRING_BYTES = 16 * 1024 * 1024
MAX_INDEX_BYTES = 4 * 1024**3  # decompressed, when the Release does not list the plain size
_CHUNK = 256 * 1024  # compressed bytes read at a time
# Decompressed bytes made at a time: a gzip chunk can inflate a thousandfold, an xz or bzip2 one
# far more, so the decoder is asked for at most this much per call, never a whole chunk's worth.
_OUT = 1024 * 1024
_Decoder = Callable[[], Any]
# apt's order (Acquire::CompressionTypes: xz bz2 lzma gz lz4 zst, then uncompressed).
_COMPRESSIONS: tuple[tuple[str, _Decoder | None], ...] = (
    (".xz", lambda: lzma.LZMADecompressor(lzma.FORMAT_XZ)),
    (".bz2", bz2.BZ2Decompressor),
    (".lzma", lambda: lzma.LZMADecompressor(lzma.FORMAT_ALONE)),
    (".gz", lambda: zlib.decompressobj(16 + zlib.MAX_WBITS)),
    ("", None),
)
# What a decoder raises on corrupt input (besides EOFError for a cut-off stream).
DECOMPRESS_ERRORS: tuple[type[Exception], ...] = (lzma.LZMAError, zlib.error, OSError, EOFError, ValueError)
_MIRROR_WRONG = (
    "the file does not match what the signed Release lists: the mirror is being updated or is "
    "broken; try again later or use another mirror"
)


@dataclass(frozen=True)
class SourceIndex:
    """What vouched for one source's indexes (recorded in the lock)."""

    source: debs.Source
    signed_by: tuple[str, ...]  # primary-key fingerprints of the Release's good signatures
    keyring_sha256: str | None  # of the keyring bytes gpgv was given


class Indexes:
    """The sources' decompressed ``Packages`` indexes in one spill file, catalogued by name.

    As apt keeps its lists on disk and maps them, the stanzas stay in a temporary file;
    memory holds a name -> position catalogue, and a stanza is parsed only when the
    resolution asks for that package. A reference packs (offset, length, source number)
    into one int, the smallest Python object that carries them.
    """

    def __init__(self, arch: str) -> None:
        self.arch = arch
        self._file = tempfile.TemporaryFile(prefix="airbundle-packages-")  # noqa: SIM115 (closed by __exit__)
        self._sources: list[tuple[str, int]] = []  # (base URL, pin) by source number
        self.catalog = debs.Catalog(load=self._read)

    def __enter__(self) -> Indexes:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._file.close()

    def add(self, chunks: Iterable[bytes], source_url: str, pin: int) -> int:
        """Spill and catalogue one decompressed index; returns how many packages it adds."""
        number = len(self._sources)
        if number > 0xFF:
            raise FetchError("more than 255 Packages indexes; split the manifest's sources")
        self._sources.append((source_url, pin))
        start = self._file.seek(0, os.SEEK_END)

        def spilled() -> Iterator[bytes]:
            for chunk in chunks:
                self._file.write(chunk)
                yield chunk

        count = 0
        for offset, length, name, provides, required in debs.scan_packages(spilled(), self.arch, start):
            if length < 1 << 24:  # a stanza over 16 MiB is no package index's
                self.catalog.add(sys.intern(name), offset << 32 | length << 8 | number, provides, required)
                count += 1
        self._file.write(b"\n\n")  # the next index starts a stanza of its own
        self._file.flush()
        return count

    def _read(self, ref: int) -> debs.Package:
        offset, length, number = ref >> 32, ref >> 8 & 0xFFFFFF, ref & 0xFF
        pkg = debs.parse_stanza(os.pread(self._file.fileno(), length, offset), *self._sources[number])
        assert pkg is not None  # the scan kept only stanzas with a file and a SHA256
        return pkg


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


_WORTHLESS = {"EXPKEYSIG": "expired key", "REVKEYSIG": "revoked key", "EXPSIG": "expired signature"}


def _signers(status: str) -> tuple[list[str], list[str]]:
    """From gpgv's ``--status-fd`` lines: (good signers' primary fingerprints, the others described).

    As apt's gpgv method does: a VALIDSIG counts unless its key is expired or revoked; a
    signature whose key is missing from the keyring, or that is bad, is named with why.
    """
    valid: list[str] = []
    worthless: set[str] = set()
    others: list[str] = []
    for line in status.splitlines():
        parts = line.split()
        if len(parts) < 3 or parts[0] != "[GNUPG:]":
            continue
        kind, key = parts[1], parts[2]
        if kind == "VALIDSIG":
            valid.append(parts[11] if len(parts) > 11 else key)  # the primary key, when gpgv says
        elif kind in _WORTHLESS:
            worthless.add(key)
            others.append(f"{key} ({_WORTHLESS[kind]})")
        elif kind == "BADSIG":
            others.append(f"{key} (BAD signature: the file was altered)")
        elif kind == "ERRSIG":
            fpr = parts[8] if len(parts) > 8 and parts[8] != "-" else key
            why = "not in the keyring" if parts[7:8] == ["9"] else f"unusable, gpg code {parts[7:8]}"
            others.append(f"{fpr} ({why})")
    good = [fpr for fpr in valid if not any(fpr.endswith(k) for k in worthless)]
    return good, others


def _gpgv(keyring: bytes, keyring_name: str, args: list[str], where: str) -> tuple[bytes, list[str]]:
    """Run stock gpgv against one keyring: the signed content (when ``--output`` applies) and the
    good signers' fingerprints. Refused, as apt refuses, when any signature is bad or none is good."""
    with tempfile.TemporaryDirectory(prefix="airbundle-gpgv-") as home:
        ring = Path(home) / "keyring.gpg"
        try:
            ring.write_bytes(dearmor(keyring))
        except ValueError as exc:
            raise FetchError(f"{where}: cannot read keyring {keyring_name}: {exc}") from exc
        out = Path(home) / "signed"
        try:
            run = subprocess.run(
                [
                    "gpgv",
                    "--homedir",
                    home,
                    "--status-fd",
                    "1",
                    "--keyring",
                    str(ring),
                    "--output",
                    str(out),
                    *args,
                ],
                capture_output=True,
                timeout=120,
            )
        except FileNotFoundError:
            raise FetchError(
                "gpgv is not installed (Debian package gpgv); it checks apt signatures"
            ) from None
        good, others = _signers(run.stdout.decode(errors="replace"))
        bad = [o for o in others if "BAD" in o]
        if not good or bad:
            if others:
                detail = f"signed by {', '.join(others)}"
                hint = (
                    "the file was altered in transit or on the mirror"
                    if bad
                    else "add the repository's key to the keyring (check its fingerprint with the publisher)"
                )
            else:
                lines = run.stderr.decode(errors="replace").strip().splitlines()
                detail, hint = " / ".join(lines[-2:]) or "no signature found", "is this file signed at all?"
            raise FetchError(f"{where}: signature check failed with keyring {keyring_name}: {detail}; {hint}")
        return (out.read_bytes() if out.exists() else b""), good


def check_detached(keyring: bytes, keyring_name: str, signature: Path, data: Path, where: str) -> list[str]:
    """The good signers of ``data`` by its detached ``signature`` (gpgv, the same rules as a
    Release.gpg): the one owner of gpgv, for apt's and rpm-md's (``repomd.xml.asc``) signatures."""
    return _gpgv(keyring, keyring_name, [str(signature), str(data)], where)[1]


def decompressed(path: Path, name: str, limit: int, what: str, over: str = "") -> Iterator[bytes]:
    """The decompressed bytes of a cached metadata file whose listed ``name`` ends in a compression
    suffix (.xz, .bz2, .lzma, .gz, or none), a chunk at a time, at most ``limit`` of them: one
    byte more is a FetchError, "``what``: decompresses to more than ``over``" (``over`` names the
    limit, whose it is and what to do; by default the size the Release lists). Memory stays
    bounded whatever the input (a decompression bomb included)."""
    for ext, decoder in _COMPRESSIONS:
        if ext and name.endswith(ext):
            return _decompressed(path, decoder, limit, what, over)
    if name.endswith((".zst", ".zck")):
        raise FetchError(f"{what}: {name} is compressed with zstd/zchunk, which airbundle cannot read")
    return _decompressed(path, None, limit, what, over)


def _strip_clearsign(text: bytes) -> bytes:
    """The message of a clearsigned document, without checking it (for ``trusted`` sources)."""
    _, _, rest = text.partition(b"\n\n")
    body, _, _ = rest.partition(b"-----BEGIN PGP SIGNATURE-----")
    return b"\n".join(line[2:] if line.startswith(b"- ") else line for line in body.split(b"\n"))


def _release(fetcher: Fetcher, source: debs.Source, keyring: bytes | None) -> tuple[bytes, list[str]]:
    """The verified Release text of a source, and who signed it."""
    dist = source.dist_url
    where = source.describe()
    name = str(source.keyring)
    inrelease = fetcher.get(f"{dist}/InRelease", max_bytes=MAX_RELEASE_BYTES)
    if inrelease.status == 200:
        if source.trusted:
            return _strip_clearsign(inrelease.body), []
        assert keyring is not None
        with tempfile.NamedTemporaryFile(suffix=".InRelease") as f:
            f.write(inrelease.body)
            f.flush()
            return _gpgv(keyring, name, [f.name], f"{where}: InRelease")
    release = fetcher.get(f"{dist}/Release", max_bytes=MAX_RELEASE_BYTES)
    if release.status != 200:
        raise FetchError(f"{where}: neither InRelease nor Release at {dist} (HTTP {release.status})")
    if source.trusted:
        return release.body, []
    signature = fetcher.get(f"{dist}/Release.gpg", max_bytes=1024 * 1024)
    if signature.status != 200:
        raise FetchError(
            f"{where}: Release is not signed (no InRelease, no Release.gpg); "
            "give the source 'trusted: true' only if you accept that"
        )
    assert keyring is not None
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "Release").write_bytes(release.body)
        (Path(tmp) / "Release.gpg").write_bytes(signature.body)
        _, signers = _gpgv(keyring, name, [f"{tmp}/Release.gpg", f"{tmp}/Release"], f"{where}: Release")
    return release.body, signers


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


def _architectures(fields: dict[str, str], arch: str, where: str) -> list[str]:
    """The ``binary-*`` indexes apt reads for ``arch`` from a Release with these fields."""
    listed = fields.get("Architectures", "").split()
    if listed and arch not in listed:
        log.info("%s: the Release lists architectures %s, not %s", where, " ".join(listed), arch)
        return []
    no_all = "Packages" in fields.get("No-Support-for-Architecture-all", "").split()
    return [arch] + (["all"] if not no_all and (not listed or "all" in listed) else [])


def _pin(fields: dict[str, str]) -> int:
    """apt's default priority for a source's packages (apt_preferences(5))."""
    if fields.get("NotAutomatic", "").lower() != "yes":
        return debs.DEFAULT_PIN
    return 100 if fields.get("ButAutomaticUpgrades", "").lower() == "yes" else 1


def _decompressed(
    path: Path, decoder: _Decoder | None, limit: int, what: str, over: str = ""
) -> Iterator[bytes]:
    """The decompressed bytes of a cached index, at most ``_OUT`` at a time, at most ``limit`` of them."""
    total = 0
    with open(path, "rb") as f:
        state = decoder() if decoder else None
        while chunk := f.read(_CHUNK):
            full = False
            # Until this chunk is used up and the decoder has given all it holds (a full answer
            # may leave more inside: zlib and bz2/lzma alike give the rest to the next call).
            while chunk or full:
                if state is None or decoder is None:
                    out, chunk = chunk, b""
                else:
                    out = state.decompress(chunk, _OUT)
                    full = len(out) == _OUT
                    chunk = getattr(state, "unconsumed_tail", b"")  # zlib's unread input; lzma/bz2 keep it
                    if state.eof:
                        # A concatenated stream (several gzip members, xz streams) goes on with a new decoder.
                        chunk, state, full = state.unused_data, decoder(), False
                total += len(out)
                if total > limit:
                    raise FetchError(
                        f"{what}: decompresses to more than {over or f'the {limit} bytes the Release lists'}"
                    )
                if out:
                    yield out


def _fetch_index(
    fetcher: Fetcher, source: debs.Source, listed: dict[str, tuple[int, str]], prefix: str, by_hash: bool
) -> tuple[Path, _Decoder | None, int] | None:
    """The first intact copy of ``prefix``Packages in apt's order: (cached path, its decoder, plain size).

    None when the Release lists no Packages index there. Raises FetchError when every listed
    one is missing or differs from the signed Release.
    """
    plain = listed.get(prefix + "Packages")
    limit = plain[0] if plain else MAX_INDEX_BYTES
    problems = []
    for ext, decoder in _COMPRESSIONS:
        entry = listed.get(f"{prefix}Packages{ext}")
        if entry is None:
            continue
        size, sha = entry
        urls = [f"{source.dist_url}/{prefix}Packages{ext}"]
        if by_hash:
            urls.insert(0, f"{source.dist_url}/{prefix}by-hash/SHA256/{sha}")
        for url in urls:
            try:
                path = fetcher.fetch(url, sha, max_bytes=size, why_mismatch=_MIRROR_WRONG)
            except GaveUp:
                raise  # the server is unreachable: other names on it will not do better
            except FetchError as exc:
                problems.append(str(exc))
                continue
            return path, decoder, limit
    if not problems:
        return None
    raise FetchError(
        f"{source.describe()}: no copy of {prefix}Packages matches the signed Release:\n  "
        + "\n  ".join(problems)
    )


def load(
    fetcher: Fetcher, source: debs.Source, indexes: Indexes, now: datetime.datetime | None = None
) -> SourceIndex:
    """Catalogue every package of ``source`` for the indexes' architecture (and ``all`` where apt
    reads it) in ``indexes``, from verified indexes.

    Raises:
        FetchError: unreachable source, bad or missing signature, expired Release,
            no index for ``arch``, an index whose bytes differ from Release (exit 5).
    """
    where = source.describe()
    keyring: bytes | None = None
    keyring_sha: str | None = None
    if source.keyring is not None:
        # Read once: the bytes gpgv checks with are the bytes the lock records.
        keyring = read_capped(source.keyring, "keyring", MAX_KEYRING_BYTES)
        keyring_sha = hashlib.sha256(keyring).hexdigest()
    if source.trusted:
        log.warning("%s: trusted: true: the Release signature is NOT checked", where)
    text, signed_by = _release(fetcher, source, None if source.trusted else keyring)
    try:
        release = debs.parse_release(text.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise FetchError(f"{where}: unreadable Release: {exc}") from exc
    fields: dict[str, str] = release["fields"]
    _check_valid_until(fields, where, now or datetime.datetime.now(datetime.timezone.utc))
    listed: dict[str, tuple[int, str]] = release["sha256"]
    by_hash = fields.get("Acquire-By-Hash", "").lower() == "yes"
    pin = _pin(fields)
    arch = indexes.arch
    if source.flat:
        prefixes = [""]
    else:
        arches = _architectures(fields, arch, where)
        prefixes = [f"{c}/binary-{a}/" for c in source.components for a in arches]
    found_any = False
    for prefix in prefixes:
        got = _fetch_index(fetcher, source, listed, prefix, by_hash)
        if got is None:
            if not prefix.endswith("binary-all/"):
                log.info("%s: Release lists no Packages index under %r", where, prefix or "./")
            continue
        path, decoder, limit = got
        what = f"{where}: {prefix}Packages"
        try:
            indexes.add(_decompressed(path, decoder, limit, what), source.url, pin)
        except (OSError, EOFError, lzma.LZMAError, zlib.error) as exc:
            raise FetchError(f"{what}: cannot read the cached index {path}: {exc}") from exc
        found_any = True
    if not found_any:
        raise FetchError(
            f"{where}: Release lists no Packages index for {arch}; check suite, components and platform.arch"
        )
    return SourceIndex(source, tuple(signed_by), keyring_sha)


def download(fetcher: Fetcher, pkg: debs.Package, progress: FetchProgress = _no_progress) -> Path:
    """The cached ``.deb`` of ``pkg``, verified against its ``Packages`` SHA256 (exit 5 otherwise)."""
    return fetcher.fetch(
        pkg.url,
        pkg.sha256,
        progress,
        max_bytes=pkg.size,
        why_mismatch="the file does not match its signed Packages index: the mirror is broken; "
        "try again later or use another mirror",
    )
