"""Push the bundle's images into a site registry (Registry HTTP API v2), standard library only.

Every blob is first asked for (``HEAD``) and skipped when the registry has
it; a blob already pushed under another repository in this run is mounted
rather than sent again; the rest go up in one monolithic ``PUT`` streamed from
the unpacked ``images/`` folder. Manifests are put under their tags. So a
re-run, or a delta bundle, sends only what is new. Runs on the site with
python3 3.7+ (``http.client``, no requests).

Registries without TLS are reached over plain HTTP; TLS and credentials for
a site registry are not handled here yet.
"""

from __future__ import annotations

import http.client
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

from bundler import oci
from bundler.errors import InstallError
from bundler.lock import Lock


@dataclass
class PushReport:
    """What a push sent and what the registry already had."""

    blobs_sent: int = 0
    blobs_mounted: int = 0
    blobs_present: int = 0
    bytes_sent: int = 0
    images: list[str] = field(default_factory=list)  # REGISTRY/REPO@DIGEST of each image


class _Registry:
    def __init__(self, address: str) -> None:
        self.address = address

    def request(
        self,
        method: str,
        path: str,
        body: object = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection(self.address, timeout=300)
        try:
            conn.request(method, path, body=body, headers=headers or {})  # type: ignore[arg-type]
            resp = conn.getresponse()
            data = resp.read()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data
        except OSError as exc:
            raise InstallError(
                f"registry {self.address}: {method} {path} failed: {exc}; check that the site registry "
                "is running and reachable from this node (--registry HOST:PORT)"
            ) from exc
        finally:
            conn.close()

    def check(self, status: int, want: tuple[int, ...], what: str, body: bytes) -> None:
        if status not in want:
            raise InstallError(f"registry {self.address}: {what} answered HTTP {status}: {body[:200]!r}")


def repository(image: oci.Image) -> tuple[str, str | None]:
    """(repository path on the site registry, tag) for an image: its name without the domain."""
    ref = oci.parse_reference(image.ref) if not image.ref.startswith("sha256:") else None
    if ref is None:
        return "airbundle/untagged", None
    return ref.path, ref.tag


def push_images(lock: Lock, images_dir: Path, address: str) -> PushReport:
    """Push every locked image into the registry at ``address`` (``HOST:PORT``).

    Raises:
        InstallError: the registry refused a request or is unreachable (exit 6).
    """
    reg = _Registry(address)
    # One cheap request first, so an unreachable or auth-only registry is named before any upload.
    status, _, body = reg.request("GET", "/v2/")
    if status == 401:
        raise InstallError(
            f"registry {address} asks for credentials; this installer pushes to open registries only"
        )
    if status != 200:
        raise InstallError(
            f"registry {address}: GET /v2/ answered HTTP {status}: not a Docker registry API v2?"
        )
    report = PushReport()
    pushed: dict[str, str] = {}  # digest -> repository it is already in (for mounts)
    for image in lock.images:
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
            report.bytes_sent += _upload(reg, repo, digest, images_dir / oci.blob_path(digest))
            report.blobs_sent += 1
            pushed[digest] = repo
        manifest = (images_dir / oci.blob_path(image.manifest)).read_bytes()
        target = tag or image.manifest  # an untagged image is put under its digest
        status, _, body = reg.request(
            "PUT", f"/v2/{repo}/manifests/{target}", manifest, {"Content-Type": image.media_type}
        )
        reg.check(status, (201,), f"putting the manifest of {repo}:{target}", body)
        report.images.append(f"{address}/{repo}@{image.manifest}")
    return report


def _upload(reg: _Registry, repo: str, digest: str, path: Path) -> int:
    status, headers, body = reg.request("POST", f"/v2/{repo}/blobs/uploads/")
    reg.check(status, (202,), f"starting an upload to {repo}", body)
    location = urllib.parse.urlsplit(headers.get("location", ""))
    query = [*urllib.parse.parse_qsl(location.query), ("digest", digest)]
    target = f"{location.path}?{urllib.parse.urlencode(query)}"
    size = path.stat().st_size
    with open(path, "rb") as f:
        status, _, body = reg.request(
            "PUT", target, f, {"Content-Type": "application/octet-stream", "Content-Length": str(size)}
        )
    reg.check(status, (201,), f"uploading {digest} to {repo}", body)
    return size
