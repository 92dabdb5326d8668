"""Read rpm-md repositories the way dnf does: signed repomd.xml, verified metadata, verified rpms.

``load`` fetches a source's ``repodata/repomd.xml`` and, when the source names a ``gpgkey``,
its detached ``repomd.xml.asc``, checked with stock ``gpgv`` (dnf's ``repo_gpgcheck``; a
missing or bad signature is refused, exit 5, naming the file). Then ``primary`` and
``filelists`` are fetched by the checksum ``repomd.xml`` lists (into the cache, by SHA-256)
and the packages of ``primary`` are read as a stream; both are refused when they decompress to
more than libsolv should hold (``MAX_PRIMARY_BYTES``, ``MAX_FILELISTS_BYTES``: a decompression
bomb), before libsolv, which decompresses them itself, reads them. ``download`` fetches an rpm by the
SHA-256 ``primary.xml`` lists; ``check_signatures`` checks the rpms' own signatures against
the source's key with stock ``rpmkeys --checksig`` in a private rpm database (dnf's
``gpgcheck``), so the build host's rpm database is never touched.

Not here: HTTP and the cache (``bundler.fetch``), gpgv and decompression
(``bundler.aptsource`` owns them), the closure (``bundler.rpmsolve``).
"""

from __future__ import annotations

import base64
import hashlib
import logging
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from bundler import aptsource, rpms
from bundler.errors import FetchError
from bundler.fetch import Fetcher, FetchProgress, GaveUp
from bundler.files import read_capped

log = logging.getLogger(__name__)

MAX_REPOMD_BYTES = 16 * 1024 * 1024
MAX_KEY_BYTES = 16 * 1024 * 1024
MAX_METADATA_BYTES = 2 * 1024**3  # compressed, when repomd.xml does not list the size
# Decompressed: libsolv holds primary and filelists in memory, so a repository whose metadata
# decompresses to more (a decompression bomb: a few MiB of gzip can make GiBs) is refused before
# libsolv reads it. Both are many times the largest distributions' (some hundred MiB).
MAX_PRIMARY_BYTES = 2 * 1024**3
MAX_FILELISTS_BYTES = 4 * 1024**3
_PRIMARY_ERRORS: tuple[type[Exception], ...] = (rpms.RepoError, *aptsource.DECOMPRESS_ERRORS)
_MIRROR_WRONG = (
    "the file does not match what the repository's repomd.xml lists: the mirror is being updated "
    "or is broken; try again later or use another mirror"
)


@dataclass
class Loaded:
    """One source's verified metadata: the cached files libsolv reads and the packages by NEVRA."""

    source: rpms.Source
    primary: Path
    primary_name: str
    filelists: Path | None
    filelists_name: str
    packages: dict[tuple[str, str, str], rpms.Package] = field(default_factory=dict)
    signed_by: tuple[str, ...] = ()
    gpgkey_sha256: str | None = None
    gpgkey: bytes | None = None


def armored(key: bytes) -> bytes:
    """An ASCII-armored public key block (``rpmkeys --import`` reads only armored keys)."""
    if key.lstrip().startswith(b"-----BEGIN PGP"):
        return key
    crc = 0xB704CE
    for byte in key:  # OpenPGP's CRC-24 (RFC 4880, 6.1)
        crc ^= byte << 16
        for _ in range(8):
            crc <<= 1
            if crc & 0x1000000:
                crc ^= 0x1864CFB
    body = base64.b64encode(key).decode()
    lines = [body[i : i + 64] for i in range(0, len(body), 64)]
    tail = base64.b64encode((crc & 0xFFFFFF).to_bytes(3, "big")).decode()
    text = "\n".join(["-----BEGIN PGP PUBLIC KEY BLOCK-----", "", *lines, "=" + tail])
    return (text + "\n-----END PGP PUBLIC KEY BLOCK-----\n").encode()


def _repomd(fetcher: Fetcher, source: rpms.Source, key: bytes | None) -> tuple[bytes, list[str]]:
    """The repomd.xml bytes, checked against repomd.xml.asc when the source has a key; and who signed."""
    base = source.url.rstrip("/")
    url = f"{base}/repodata/repomd.xml"
    reply = fetcher.get(url, max_bytes=MAX_REPOMD_BYTES)
    if reply.status != 200:
        raise FetchError(f"{source.describe()}: {url}: HTTP {reply.status}; is this an rpm-md repository?")
    if key is None:
        log.warning(
            "%s: no gpgkey: repomd.xml and the packages' signatures are NOT checked", source.describe()
        )
        return reply.body, []
    sig = fetcher.get(f"{url}.asc", max_bytes=1024 * 1024)
    if sig.status != 200:
        raise FetchError(
            f"{source.describe()}: {url}.asc: HTTP {sig.status}: repomd.xml is not signed, but the source "
            "names a gpgkey; ask the repository's owner to sign it (or leave gpgkey out only if you "
            "accept unsigned metadata)"
        )
    with tempfile.TemporaryDirectory(prefix="airbundle-repomd-") as tmp:
        data, asc = Path(tmp) / "repomd.xml", Path(tmp) / "repomd.xml.asc"
        data.write_bytes(reply.body)
        asc.write_bytes(sig.body)
        signers = aptsource.check_detached(key, str(source.gpgkey), asc, data, f"{source.describe()}: {url}")
    return reply.body, signers


def _metadata(fetcher: Fetcher, source: rpms.Source, entry: rpms.MetadataFile) -> Path:
    url = f"{source.url.rstrip('/')}/{entry.href}"
    if entry.checksum_type != "sha256":
        raise FetchError(
            f"{source.describe()}: repodata/repomd.xml lists {entry.href} with a {entry.checksum_type} "
            "checksum; only sha256 is accepted (createrepo_c's default)"
        )
    try:
        return fetcher.fetch(
            url, entry.checksum, max_bytes=entry.size or MAX_METADATA_BYTES, why_mismatch=_MIRROR_WRONG
        )
    except GaveUp:
        raise
    except FetchError as exc:
        raise FetchError(f"{source.describe()}: {exc}") from exc


def load(fetcher: Fetcher, source: rpms.Source, number: int) -> Loaded:
    """Verify and read one source (``number``: its place in ``rpms.sources``).

    Raises:
        FetchError: unreachable, unsigned or badly signed repomd.xml (when a gpgkey is given),
            metadata that does not match repomd.xml, unreadable metadata (exit 5).
    """
    key = None
    key_sha = None
    if source.gpgkey is not None:
        key = read_capped(source.gpgkey, "rpms gpgkey", MAX_KEY_BYTES)
        key_sha = hashlib.sha256(key).hexdigest()
    text, signers = _repomd(fetcher, source, key)
    where = f"{source.describe()}: repodata/repomd.xml"
    try:
        listed = rpms.parse_repomd(text)
    except rpms.RepoError as exc:
        raise FetchError(f"{source.describe()}: {exc}") from exc
    if "primary" not in listed:
        raise FetchError(f"{where} lists no primary metadata")
    primary = listed["primary"]
    primary_path = _metadata(fetcher, source, primary)
    filelists = listed.get("filelists")
    filelists_path = _metadata(fetcher, source, filelists) if filelists else None
    loaded = Loaded(
        source,
        primary_path,
        primary.href.rsplit("/", 1)[-1],
        filelists_path,
        filelists.href.rsplit("/", 1)[-1] if filelists else "",
        signed_by=tuple(signers),
        gpgkey_sha256=key_sha,
        gpgkey=key,
    )
    what = f"{source.describe()}: {primary.href}"
    try:
        chunks = aptsource.decompressed(
            primary_path, primary.href, MAX_PRIMARY_BYTES, what, _over(MAX_PRIMARY_BYTES)
        )
        for pkg in rpms.parse_primary(chunks, number):
            loaded.packages.setdefault((pkg.name, pkg.evr, pkg.arch), pkg)
    except _PRIMARY_ERRORS as exc:
        raise FetchError(f"{what}: {exc}") from exc
    if filelists is not None and filelists_path is not None:
        # libsolv decompresses filelists itself, uncapped: its size is checked here first.
        what = f"{source.describe()}: {filelists.href}"
        try:
            for _ in aptsource.decompressed(
                filelists_path, filelists.href, MAX_FILELISTS_BYTES, what, _over(MAX_FILELISTS_BYTES)
            ):
                pass
        except aptsource.DECOMPRESS_ERRORS as exc:
            raise FetchError(f"{what}: {exc}") from exc
    return loaded


def _over(limit: int) -> str:
    """The end of the message for metadata that decompresses to more than ``limit`` bytes."""
    return (
        f"{limit // 1024**2} MiB, airbundle's limit for rpm metadata (libsolv would hold it all in "
        "memory; a small file that inflates this far is a decompression bomb): refused; check the "
        "repository, or use another mirror"
    )


def _no_progress(_url: str, _done: int, _total: int | None) -> None:
    pass


def download(
    fetcher: Fetcher, source: rpms.Source, pkg: rpms.Package, progress: FetchProgress = _no_progress
) -> Path:
    """The cached rpm of ``pkg``, verified against the SHA-256 its ``primary.xml`` lists (exit 5)."""
    return fetcher.fetch(
        f"{source.url.rstrip('/')}/{pkg.href}",
        pkg.sha256,
        progress,
        max_bytes=pkg.size or None,
        why_mismatch="the file does not match its repository's primary.xml: the mirror is broken; "
        "try again later or use another mirror",
    )


def check_signatures(key: bytes, key_name: str, files: dict[str, Path], where: str) -> None:
    """Every rpm in ``files`` (name -> cached path) signed by ``key``, checked by stock ``rpmkeys``.

    A private ``--dbpath`` holds only this key; ``_pkgverify_level all`` makes an unsigned
    package fail as a badly signed one does (dnf's gpgcheck refuses both).

    Raises:
        FetchError: rpmkeys missing, or a package unsigned, signed by another key or altered (exit 5).
    """
    if not files:
        return
    with tempfile.TemporaryDirectory(prefix="airbundle-rpmdb-") as db:
        keyfile = Path(db) / "key.asc"
        keyfile.write_bytes(armored(key))
        base = ["rpmkeys", "--dbpath", db]
        try:
            imported = subprocess.run([*base, "--import", str(keyfile)], capture_output=True, timeout=120)
        except FileNotFoundError:
            raise FetchError(
                "rpmkeys is not installed (Debian package rpm); it checks rpm signatures"
            ) from None
        if imported.returncode != 0:
            raise FetchError(
                f"{where}: gpgkey {key_name}: rpmkeys cannot import it: "
                f"{imported.stderr.decode(errors='replace').strip()}"
            )
        names = sorted(files)
        run = subprocess.run(
            [*base, "--define", "_pkgverify_level all", "--checksig", *(str(files[n]) for n in names)],
            capture_output=True,
            timeout=600,
        )
    lines = run.stdout.decode(errors="replace").splitlines()
    by_path = {str(files[n]): n for n in names}
    bad = []
    for line in lines:
        path, _, verdict = line.rpartition(": ")
        if path in by_path and "signatures OK" not in verdict:
            bad.append(f"{by_path[path]} ({verdict.strip()})")
    if run.returncode != 0 or bad:
        detail = ", ".join(bad) or run.stderr.decode(errors="replace").strip()
        raise FetchError(
            f"{where}: rpm signature check failed with gpgkey {key_name}: {detail}; the package is "
            "unsigned, signed by another key or altered on the mirror"
        )
