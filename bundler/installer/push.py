"""Push the bundle's images into a site registry (Registry HTTP API v2), standard library only.

Every blob is first asked for (``HEAD``) and skipped when the registry has
it; a blob already pushed under another repository in this run is mounted
rather than sent again; the rest go up streamed from the unpacked
``images/`` folder, in one monolithic ``PUT`` or, above ``Access.chunk``
bytes, in ``PATCH`` chunks (for registries behind proxies that cap request
bodies). Manifests are put under their tags. So a re-run, or a delta bundle,
sends only what is new. Runs on the site with python3 3.7+ (``http.client``
and ``ssl``, no requests).

HTTPS is tried first, verified against ``Access.ca`` (else the system's CAs);
a registry that answers in plain HTTP is then spoken to in plain HTTP unless a
CA was given. Credentials are sent as the registry asks: Basic, or a Bearer
token from the realm its challenge names. This module does not start
registries or touch nodes (see ``siteregistry``).
"""

import base64
import http.client
import json
import re
import ssl
import urllib.parse
from bundler.compat import dataclass, field
from pathlib import Path
from typing import Dict, IO, List, Optional, Tuple

from bundler import oci
from bundler.errors import InstallError

_CHALLENGE_PARAM = re.compile(r'(\w+)="([^"]*)"')


@dataclass(frozen=True)
class Access:
    """How to reach a site registry."""

    address: str  # HOST:PORT
    ca: Optional[Path] = None  # the CA its certificate chains to (else the system's CAs)
    user: str = ""
    password: str = ""
    chunk: int = 0  # blobs above this many bytes go up in PATCH chunks of this size; 0 = one PUT


@dataclass
class PushReport:
    """What a push sent and what the registry already had."""

    blobs_sent: int = 0
    blobs_mounted: int = 0
    blobs_present: int = 0
    bytes_sent: int = 0
    chunks: int = 0  # PATCH requests of chunked uploads
    scheme: str = "https"
    images: List[str] = field(default_factory=list)  # REGISTRY/REPO@DIGEST of each image


class _Slice:
    """``size`` bytes of an open file from its current position, as a readable (and rewindable) body."""

    def __init__(self, f: IO[bytes], size: int) -> None:
        self.f, self.size, self.left, self.start = f, size, size, f.tell()

    def seek(self, offset: int) -> None:
        self.f.seek(self.start + offset)
        self.left = self.size - offset

    def read(self, n: int = -1) -> bytes:
        n = self.left if n < 0 else min(n, self.left)
        data = self.f.read(n)
        self.left -= len(data)
        return data


def _connection(
    scheme: str, netloc: str, context: ssl.SSLContext, timeout: float = 300
) -> http.client.HTTPConnection:
    if scheme == "https":
        return http.client.HTTPSConnection(netloc, timeout=timeout, context=context)
    return http.client.HTTPConnection(netloc, timeout=timeout)


def _rewind(body: object) -> bool:
    """Whether ``body`` can be sent again (rewound when it is a file)."""
    if body is None or isinstance(body, bytes):
        return True
    seek = getattr(body, "seek", None)
    if seek is None:
        return False
    seek(0)
    return True


def _exchange(
    scheme: str,
    netloc: str,
    context: ssl.SSLContext,
    method: str,
    path: str,
    body: object,
    headers: Dict[str, str],
    timeout: float = 300,
) -> Tuple[int, Dict[str, str], bytes]:
    """One HTTP(S) request on a fresh connection: (status, lower-cased headers, body); raises ``OSError``."""
    conn = _connection(scheme, netloc, context, timeout)
    try:
        conn.request(method, path, body=body, headers=headers)  # type: ignore[arg-type]
        resp = conn.getresponse()
        data = resp.read()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data
    finally:
        conn.close()


class Client:
    """One site registry: scheme found by ``connect``, then requests that answer its auth challenges."""

    def __init__(self, access: Access) -> None:
        self.access = access
        self.address = access.address
        self.scheme = "https"
        self.context = ssl.create_default_context(cafile=str(access.ca) if access.ca else None)
        self.auth = ""  # the Authorization header the registry last accepted
        self.tokens: Dict[str, str] = {}  # Bearer scope -> token
        # One kept-alive connection for every request: a TLS handshake per blob request would
        # cost more than the request itself on a LAN.
        self.conn: Optional[http.client.HTTPConnection] = None

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def connect(self) -> None:
        """One ``GET /v2/`` (TLS first): a registry down, untrusted or locked is named before uploads."""
        try:
            status, headers, _ = self._send("GET", "/v2/")
        except ssl.SSLCertVerificationError as exc:
            raise InstallError(
                f"registry {self.address}: its TLS certificate is not trusted here ({exc.verify_message}); "
                "give the CA that signed it with --registry-ca FILE"
            ) from None
        except ssl.SSLError as exc:
            if self.access.ca is not None:
                raise InstallError(
                    f"registry {self.address}: TLS failed ({exc.reason}) though --registry-ca was given; "
                    "is it serving HTTPS on that port?"
                ) from None
            self.scheme = "http"  # it speaks plain HTTP (the TLS hello got a plain answer)
            status, headers, _ = self._send("GET", "/v2/")
        if status == 401:
            status, headers, _ = self._authorize("GET", "/v2/", None, {}, headers)
        if status != 200:
            raise InstallError(
                f"registry {self.address}: GET /v2/ answered HTTP {status}: not a Docker registry API v2?"
            )

    def _send(
        self, method: str, path: str, body: object = None, headers: Optional[Dict[str, str]] = None
    ) -> Tuple[int, Dict[str, str], bytes]:
        while True:
            fresh = self.conn is None
            if self.conn is None:
                self.conn = _connection(self.scheme, self.address, self.context)
            try:
                self.conn.request(method, path, body=body, headers=headers or {})  # type: ignore[arg-type]
                resp = self.conn.getresponse()
                data = resp.read()
                if resp.will_close:
                    self.close()
                return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data
            except (OSError, http.client.HTTPException) as exc:
                self.close()
                if not fresh and _rewind(body):
                    continue  # the registry closed the kept-alive connection meanwhile: a new one
                if isinstance(exc, ssl.SSLError):
                    raise  # connect() tells a plain-HTTP registry from an untrusted one
                raise InstallError(
                    f"registry {self.address}: {method} {path} failed: {exc}; check that the site "
                    "registry is running and reachable from this node"
                ) from exc

    def request(
        self, method: str, path: str, body: object = None, headers: Optional[Dict[str, str]] = None
    ) -> Tuple[int, Dict[str, str], bytes]:
        """Send a request with the credentials the registry asked for; answers a 401 challenge once."""
        headers = dict(headers or {})
        if self.auth:
            headers["Authorization"] = self.auth
        try:
            status, answer, data = self._send(method, path, body, headers)
        except ssl.SSLError as exc:
            raise InstallError(f"registry {self.address}: {method} {path}: TLS failed: {exc}") from None
        if status == 401:
            _rewind(body)
            return self._authorize(method, path, body, headers, answer)
        return status, answer, data

    def _authorize(
        self, method: str, path: str, body: object, headers: Dict[str, str], answer: Dict[str, str]
    ) -> Tuple[int, Dict[str, str], bytes]:
        challenge = answer.get("www-authenticate", "")
        if not self.access.user:
            raise InstallError(
                f"registry {self.address} asks for credentials; give --registry-user and the password "
                "in AIRBUNDLE_REGISTRY_PASSWORD"
            )
        basic = base64.b64encode(f"{self.access.user}:{self.access.password}".encode()).decode()
        if challenge.lower().startswith("bearer"):
            params = dict(_CHALLENGE_PARAM.findall(challenge))
            scope = params.get("scope", "")
            if scope not in self.tokens:
                self.tokens[scope] = self._token(params, basic)
            self.auth = f"Bearer {self.tokens[scope]}"
        else:
            self.auth = f"Basic {basic}"
        status, answer, data = self._send(method, path, body, {**headers, "Authorization": self.auth})
        if status == 401:
            raise InstallError(
                f"registry {self.address} refused the credentials of {self.access.user!r} "
                f"({method} {path}); check --registry-user and AIRBUNDLE_REGISTRY_PASSWORD"
            )
        return status, answer, data

    def _token(self, params: Dict[str, str], basic: str) -> str:
        realm = urllib.parse.urlsplit(params.get("realm", ""))
        if realm.scheme not in ("http", "https") or not realm.netloc:
            raise InstallError(
                f"registry {self.address}: its token realm {params.get('realm')!r} is not a URL"
            )
        query = urllib.parse.urlencode({k: v for k, v in params.items() if k in ("service", "scope")})
        try:
            status, _, data = _exchange(
                realm.scheme, realm.netloc, self.context, "GET", f"{realm.path}?{query}", None,
                {"Authorization": f"Basic {basic}"}, timeout=60,
            )  # fmt: skip
        except OSError as exc:
            raise InstallError(
                f"registry {self.address}: its token server {realm.netloc} failed: {exc}"
            ) from exc
        if status != 200:
            raise InstallError(
                f"registry {self.address}: its token server refused the credentials of "
                f"{self.access.user!r} (HTTP {status}); check --registry-user and "
                "AIRBUNDLE_REGISTRY_PASSWORD"
            )
        doc = json.loads(data.decode())
        return str(doc.get("token") or doc.get("access_token") or "")

    def check(self, status: int, want: Tuple[int, ...], what: str, body: bytes) -> None:
        if status not in want:
            raise InstallError(f"registry {self.address}: {what} answered HTTP {status}: {body[:200]!r}")


def repository(image: oci.Image) -> Tuple[str, Optional[str]]:
    """(repository path on the site registry, tag) for an image: its name without the domain."""
    ref = oci.parse_reference(image.ref) if not image.ref.startswith("sha256:") else None
    if ref is None:
        return "airbundle/untagged", None
    return ref.path, ref.tag


def push_images(images: List[oci.Image], images_dir: Path, access: Access) -> PushReport:
    """Push ``images`` (from the lock, their blobs in ``images_dir``) into the registry ``access`` names.

    Raises:
        InstallError: the registry refused a request, is unreachable or untrusted (exit 6).
    """
    reg = Client(access)
    try:
        return _push(reg, images, images_dir, access)
    finally:
        reg.close()


def _push(reg: Client, images: List[oci.Image], images_dir: Path, access: Access) -> PushReport:
    reg.connect()
    report = PushReport(scheme=reg.scheme)
    pushed: Dict[str, str] = {}  # digest -> repository it is already in (for mounts)
    for image in images:
        repo, tag = repository(image)
        for digest in [image.config, *(layer.digest for layer in image.layers)]:
            status, _, body = reg.request("HEAD", f"/v2/{repo}/blobs/{digest}")
            if status == 200:
                report.blobs_present += 1
                pushed.setdefault(digest, repo)
                continue
            if digest in pushed and pushed[digest] != repo:
                query = urllib.parse.urlencode({"mount": digest, "from": pushed[digest]})
                status, _, body = reg.request("POST", f"/v2/{repo}/blobs/uploads/?{query}")
                if status == 201:
                    report.blobs_mounted += 1
                    continue
            report.bytes_sent += _upload(reg, repo, digest, images_dir / oci.blob_path(digest), report)
            report.blobs_sent += 1
            pushed[digest] = repo
        manifest = (images_dir / oci.blob_path(image.manifest)).read_bytes()
        target = tag or image.manifest  # an untagged image is put under its digest
        status, _, body = reg.request(
            "PUT", f"/v2/{repo}/manifests/{target}", manifest, {"Content-Type": image.media_type}
        )
        reg.check(status, (201,), f"putting the manifest of {repo}:{target}", body)
        report.images.append(f"{access.address}/{repo}@{image.manifest}")
    return report


def _target(location: str, extra: List[Tuple[str, str]] = []) -> str:  # noqa: B006 - never mutated
    """The path and query of an upload ``Location`` (absolute or not), with ``extra`` query items."""
    parts = urllib.parse.urlsplit(location)
    query = urllib.parse.urlencode([*urllib.parse.parse_qsl(parts.query), *extra])
    return f"{parts.path}?{query}" if query else parts.path


def _upload(reg: Client, repo: str, digest: str, path: Path, report: PushReport) -> int:
    status, headers, body = reg.request("POST", f"/v2/{repo}/blobs/uploads/")
    reg.check(status, (202,), f"starting an upload to {repo}", body)
    location = headers.get("location", "")
    size = path.stat().st_size
    octets = {"Content-Type": "application/octet-stream"}
    with open(path, "rb") as f:
        if reg.access.chunk and size > reg.access.chunk:
            for start in range(0, size, reg.access.chunk):
                length = min(reg.access.chunk, size - start)
                status, headers, body = reg.request(
                    "PATCH",
                    _target(location),
                    _Slice(f, length),
                    {
                        **octets,
                        "Content-Length": str(length),
                        "Content-Range": f"{start}-{start + length - 1}",
                    },
                )
                reg.check(status, (202,), f"uploading bytes {start}- of {digest} to {repo}", body)
                location = headers.get("location", location)
                report.chunks += 1
            status, _, body = reg.request(
                "PUT", _target(location, [("digest", digest)]), b"", {**octets, "Content-Length": "0"}
            )
        else:
            status, _, body = reg.request(
                "PUT", _target(location, [("digest", digest)]), f, {**octets, "Content-Length": str(size)}
            )
    reg.check(status, (201,), f"uploading {digest} to {repo}", body)
    return size
