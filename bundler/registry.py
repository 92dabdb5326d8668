"""Pull images from registries (Registry HTTP API v2 / OCI distribution) without a Docker engine.

A pull resolves ``ref`` to a manifest (through a manifest list or OCI index,
choosing the bundle's platform), verifies every manifest and blob against
the digest it was fetched by, and stores config and layers in the cache in
parallel, resumably (``fetch.Fetcher``). Authentication follows the
registry's ``WWW-Authenticate`` challenge: anonymous, Basic, or a Bearer token
from the realm it names, with credentials from Docker's ``config.json``
(``auths``, ``credHelpers``, ``credsStore`` via ``docker-credential-*``).
Plain ``http://`` is used only for loopback registries or when an image says
``insecure: true``. A ``Mirror`` (the manifest's ``mirrors:``, ``build --mirror``)
serves a registry's repositories for the build host: pulls go there, with the
mirror host's credentials, and the images keep their canonical names.

HTTP itself is ``bundler.fetch``'s; this module never imports requests.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import logging
import os
import re
import subprocess
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from bundler import oci
from bundler.errors import FetchError
from bundler.fetch import Fetcher, FetchProgress, Reply
from bundler.images import Collected
from bundler.manifest import Mirror

log = logging.getLogger(__name__)

ACCEPT = ", ".join([oci.OCI_INDEX, oci.DOCKER_LIST, oci.OCI_MANIFEST, oci.DOCKER_MANIFEST])
DOCKER_HUB_ENDPOINT = "registry-1.docker.io"
DOCKER_HUB_AUTH_KEYS = ("https://index.docker.io/v1/", "index.docker.io", "docker.io", "registry-1.docker.io")
MAX_CHALLENGES = 20  # token renewals in one pull (tokens may expire in 60 s)
_CHALLENGE_PARAM = re.compile(r'(\w+)="([^"]*)"')


def _no_progress(_url: str, _done: int, _total: int | None) -> None:
    pass


def is_loopback(domain: str) -> bool:
    """True for ``localhost`` and 127.0.0.0/8 or ::1 addresses (with or without a port)."""
    if domain.startswith("["):  # [::1]:5000
        host = domain[1 : domain.find("]")]
    else:
        host = domain.rsplit(":", 1)[0] if domain.count(":") == 1 else domain
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def base_url(domain: str, insecure: bool = False) -> str:
    """The API root of a registry; plain HTTP only for loopback or an explicit ``insecure``."""
    endpoint = DOCKER_HUB_ENDPOINT if domain == oci.DEFAULT_DOMAIN else domain
    scheme = "http" if insecure or is_loopback(domain) else "https"
    return f"{scheme}://{endpoint}"


class Credentials:
    """Registry credentials from Docker's ``config.json`` (``$DOCKER_CONFIG`` or ``~/.docker``)."""

    def __init__(self, config_dir: Path | None = None) -> None:
        folder = config_dir or Path(os.environ.get("DOCKER_CONFIG") or Path.home() / ".docker")
        self.path = folder / "config.json"
        self.doc: dict[str, Any] = {}
        try:
            doc = json.loads(self.path.read_text())
            self.doc = doc if isinstance(doc, dict) else {}
        except FileNotFoundError:
            pass
        except (OSError, ValueError) as exc:
            raise FetchError(f"{self.path}: cannot read Docker's credentials file: {exc}") from exc

    def lookup(self, domain: str) -> tuple[str, str] | None:
        """(user, secret) for ``domain``, or None for anonymous access."""
        keys = (
            DOCKER_HUB_AUTH_KEYS
            if domain == oci.DEFAULT_DOMAIN
            else (domain, f"https://{domain}", f"http://{domain}")
        )
        helpers = self.doc.get("credHelpers") or {}
        for key in keys:
            if isinstance(helpers, dict) and key in helpers:
                return self._helper(str(helpers[key]), key)
        auths = self.doc.get("auths") or {}
        for key in keys:
            entry = auths.get(key) if isinstance(auths, dict) else None
            if isinstance(entry, dict):
                if entry.get("identitytoken"):
                    return "<token>", str(entry["identitytoken"])
                if entry.get("auth"):
                    try:
                        user, sep, secret = (
                            base64.b64decode(entry["auth"], validate=True).decode().partition(":")
                        )
                        if not sep:
                            raise ValueError("no colon")
                    except (ValueError, UnicodeDecodeError) as exc:
                        raise FetchError(
                            f"{self.path}: auths[{key!r}].auth is not base64 of user:password"
                        ) from exc
                    return user, secret
        if self.doc.get("credsStore"):
            return self._helper(str(self.doc["credsStore"]), keys[0])
        return None

    def _helper(self, name: str, server: str) -> tuple[str, str] | None:
        program = f"docker-credential-{name}"
        try:
            run = subprocess.run([program, "get"], input=server.encode(), capture_output=True, timeout=60)
        except FileNotFoundError:
            raise FetchError(
                f"{self.path} names the credential helper {program!r}, which is not installed; "
                "install it or remove it from credHelpers/credsStore"
            ) from None
        except subprocess.TimeoutExpired as exc:
            raise FetchError(f"{program} did not answer within 60 s") from exc
        if run.returncode != 0:
            if b"credentials not found" in run.stdout + run.stderr:
                return None
            raise FetchError(
                f"{program} get failed: {(run.stderr or run.stdout).decode(errors='replace').strip()}"
            )
        try:
            doc = json.loads(run.stdout)
            return str(doc["Username"]), str(doc["Secret"])
        except (ValueError, KeyError, TypeError) as exc:
            raise FetchError(f"{program} get answered something other than its JSON protocol") from exc


class RegistryAuth:
    """Answers a registry's 401 challenges for one repository (implements ``fetch.Auth``)."""

    def __init__(self, fetcher: Fetcher, creds: tuple[str, str] | None, scope: str, where: str) -> None:
        self.fetcher = fetcher
        self.creds = creds
        self.scope = scope
        self.where = where
        self.header: str | None = None
        self.tries = 0
        self.lock = threading.Lock()  # parallel blob downloads share one token

    def headers(self) -> dict[str, str]:
        return {"Authorization": self.header} if self.header else {}

    def _basic(self) -> str:
        assert self.creds is not None
        return "Basic " + base64.b64encode(f"{self.creds[0]}:{self.creds[1]}".encode()).decode()

    def challenge(self, www_authenticate: str) -> bool:
        with self.lock:
            return self._challenge(www_authenticate)

    def _challenge(self, www_authenticate: str) -> bool:
        self.tries += 1
        if self.tries > MAX_CHALLENGES:  # tokens that keep failing: the credentials lack access
            return False
        scheme, _, rest = www_authenticate.partition(" ")
        params = dict(_CHALLENGE_PARAM.findall(rest))
        if scheme.lower() == "basic":
            if self.creds is None or self.header == self._basic():
                return False
            self.header = self._basic()
            return True
        if scheme.lower() == "bearer" and params.get("realm"):
            self.header = "Bearer " + self._token(params)
            return True
        return False

    def _token(self, params: dict[str, str]) -> str:
        query = {"scope": params.get("scope") or self.scope}
        if params.get("service"):
            query["service"] = params["service"]
        url = f"{params['realm']}?{urlencode(query)}"
        headers = {"Authorization": self._basic()} if self.creds else {}
        reply = self.fetcher.get(url, headers)
        if reply.status != 200:
            who = "the credentials were refused" if self.creds else "anonymous access was refused"
            raise FetchError(
                f"{self.where}: token server {params['realm']} answered HTTP {reply.status}: {who}"
            )
        try:
            doc = json.loads(reply.body)
            return str(doc.get("token") or doc["access_token"])
        except (ValueError, KeyError, TypeError) as exc:
            raise FetchError(f"{self.where}: token server {params['realm']} sent no token") from exc


def _media_type(reply: Reply) -> str:
    header = reply.headers.get("Content-Type", "").split(";")[0].strip()
    if header in (*oci.INDEX_TYPES, *oci.MANIFEST_TYPES):
        return header
    try:
        doc = json.loads(reply.body)
    except ValueError:
        return header
    if isinstance(doc, dict):
        return str(doc.get("mediaType") or (oci.OCI_INDEX if "manifests" in doc else oci.OCI_MANIFEST))
    return header


def _choose(index: bytes, want: str, where: str) -> str:
    """The digest of the index entry for platform ``want`` (``os/arch[/variant]``)."""
    doc = oci.load_json(index, f"{where}: index")
    entries = doc.get("manifests") if isinstance(doc, dict) else None
    if not isinstance(entries, list):
        raise FetchError(f"{where}: the manifest list has no manifests")
    os_, arch, *variant = want.split("/")
    seen = []
    candidates = []
    for entry in entries:
        plat = entry.get("platform") if isinstance(entry, dict) else None
        if not isinstance(plat, dict):
            continue
        name = f"{plat.get('os')}/{plat.get('architecture')}" + (
            f"/{plat['variant']}" if plat.get("variant") else ""
        )
        seen.append(name)
        if plat.get("os") == os_ and plat.get("architecture") == arch:
            exact = not variant or plat.get("variant") == variant[0]
            candidates.append((not exact, entry.get("digest")))
    if not candidates:
        raise FetchError(f"{where}: no image for {want}; the registry has: {', '.join(seen) or 'none'}")
    return oci.check_digest(sorted(candidates)[0][1], f"{where}: index entry")


@dataclass(frozen=True)
class Resolved:
    """An image's platform manifest, as fetched and verified, and how to reach its blobs."""

    ref: oci.Reference
    api: str
    auth: RegistryAuth
    body: bytes
    digest: str
    media_type: str
    config: str
    layers: tuple[oci.Layer, ...]


def resolve(
    fetcher: Fetcher,
    ref: oci.Reference,
    platform: str,
    insecure: bool = False,
    credentials: Credentials | None = None,
    mirror: Mirror | None = None,
) -> Resolved:
    """Fetch and verify the manifest of ``ref`` for ``platform`` (through a list/index if needed),
    from ``mirror`` when given (with the mirror host's credentials).

    Raises:
        FetchError: unreachable registry, refused credentials, unknown tag or
            platform, or a digest mismatch (exit 5).
    """
    where = str(ref)
    if mirror is not None:
        # The mirror serves the same repositories under its prefix; digests are checked as ever,
        # and the image keeps its canonical name.
        path = f"{mirror.prefix}/{ref.path}" if mirror.prefix else ref.path
        scheme = mirror.scheme or ("http" if is_loopback(mirror.host) else "https")
        api = f"{scheme}://{mirror.host}/v2/{path}"
        creds = (credentials or Credentials()).lookup(mirror.host)
        where = f"{ref} (through the mirror {mirror})"
    else:
        path = ref.path
        api = f"{base_url(ref.domain, insecure)}/v2/{path}"
        creds = (credentials or Credentials()).lookup(ref.domain)
    auth = RegistryAuth(fetcher, creds, f"repository:{path}:pull", where)

    def manifest(target: str) -> tuple[bytes, str, str]:
        reply = fetcher.get(f"{api}/manifests/{target}", {"Accept": ACCEPT}, auth)
        if reply.status == 404:
            raise FetchError(f"{where}: {target} not found in {ref.name} (unknown tag, digest or repository)")
        if reply.status != 200:
            raise FetchError(f"{where}: the registry answered HTTP {reply.status} for manifest {target}")
        digest = oci.sha256_digest(reply.body)
        if target.startswith("sha256:") and digest != target:
            raise FetchError(f"{where}: manifest fetched by {target} hashes to {digest}; refusing it")
        announced = reply.headers.get("Docker-Content-Digest")
        if announced and announced != digest:
            raise FetchError(f"{where}: manifest hashes to {digest} but the registry says {announced}")
        return reply.body, _media_type(reply), digest

    body, media_type, digest = manifest(ref.digest or ref.tag or "latest")
    if media_type in oci.INDEX_TYPES:
        body, media_type, digest = manifest(_choose(body, platform, where))
    try:
        media_type, config, layers = oci.parse_manifest(body, f"{where}: manifest {digest}")
    except oci.ImageFormatError as exc:
        raise FetchError(str(exc)) from exc
    return Resolved(ref, api, auth, body, digest, media_type, config, tuple(layers))


def pull(
    fetcher: Fetcher,
    ref: oci.Reference,
    platform: str,
    insecure: bool = False,
    jobs: int = 4,
    progress: FetchProgress = _no_progress,
    credentials: Credentials | None = None,
    mirror: Mirror | None = None,
) -> Collected:
    """Pull one image for ``platform`` into the cache (``resolve``, then the blobs in parallel).

    Raises:
        FetchError: as ``resolve``, or a blob that does not match its digest (exit 5).
    """
    found = resolve(fetcher, ref, platform, insecure, credentials, mirror)
    where, api, auth = str(ref), found.api, found.auth
    body, digest, media_type, config, layers = (
        found.body,
        found.digest,
        found.media_type,
        found.config,
        found.layers,
    )
    cache = fetcher.cache
    out = Collected()
    out.blobs[digest] = cache.put_bytes(body)

    def blob(digest_: str, size: int | None) -> Path:
        hexd = digest_.removeprefix("sha256:")
        return fetcher.fetch(f"{api}/blobs/{digest_}", hexd, progress, max_bytes=size, auth=auth)

    config_path = blob(config, oci.MAX_JSON_BYTES)
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        paths = list(pool.map(lambda la: blob(la.digest, la.size), layers))
    try:
        image_platform, diff_ids = oci.config_platform(config_path.read_bytes(), f"{where}: config")
    except oci.ImageFormatError as exc:
        raise FetchError(str(exc)) from exc
    if len(diff_ids) != len(layers):
        raise FetchError(f"{where}: manifest has {len(layers)} layers, its config {len(diff_ids)} diff_ids")
    out.blobs[config] = config_path
    for layer, path in zip(layers, paths):
        out.blobs[layer.digest] = path
    tagged = oci.Reference(ref.domain, ref.path, ref.tag) if ref.tag else None
    out.images.append(
        oci.Image(
            ref=str(ref),
            tags=(tagged.familiar,) if tagged else (),
            source="registry",
            manifest=digest,
            media_type=media_type,
            config=config,
            platform=image_platform,
            layers=tuple(layers),
        )
    )
    return out
