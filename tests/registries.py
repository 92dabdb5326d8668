"""Real CNCF distribution registries on loopback for the tests (TESTBED.md).

Three kinds: open, htpasswd Basic auth, and Bearer-token auth whose realm is
a small loopback token server issuing real ES256 JWTs that the registry
verifies against the server's certificate. Images reach them with skopeo,
straight from a test Docker engine.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import http.server
import json
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path

import bcrypt
import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

USER, PASSWORD = "puller", "s3cret-pass"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class TokenServer:
    """A Bearer-token realm: checks Basic credentials, issues ES256 JWTs for the asked scope."""

    def __init__(self, folder: Path, service: str = "test-registry", issuer: str = "test-issuer") -> None:
        self.service, self.issuer = service, issuer
        self.key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "airbundle test token issuer")])
        now = datetime.datetime.now(datetime.timezone.utc)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .sign(self.key, hashes.SHA256())
        )
        self.cert_path = folder / "token.crt"
        self.cert_path.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))
        self.requests: list[dict[str, str]] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                query = dict(urllib.parse.parse_qsl(urllib.parse.urlparse(self.path).query))
                server.requests.append({**query, "auth": self.headers.get("Authorization", "")})
                expected = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
                if self.headers.get("Authorization") != expected:
                    self.send_response(401)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                body = json.dumps({"token": server.token(query.get("scope", "")), "expires_in": 300}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True).start()
        self.realm = f"http://127.0.0.1:{self.httpd.server_address[1]}/token"

    def token(self, scope: str) -> str:
        access = []
        for item in scope.split():
            kind, name, actions = item.split(":", 2) if item.count(":") >= 2 else ("", "", "")
            if kind == "repository":
                access.append({"type": kind, "name": name, "actions": actions.split(",")})
        now = int(time.time())
        claims = {
            "iss": self.issuer,
            "sub": USER,
            "aud": self.service,
            "exp": now + 300,
            "nbf": now - 10,
            "iat": now,
            "jti": _b64url(str(time.time_ns()).encode()),
            "access": access,
        }
        der = self.cert.public_bytes(serialization.Encoding.DER)
        header = {"typ": "JWT", "alg": "ES256", "x5c": [base64.b64encode(der).decode()]}
        signing_input = _b64url(json.dumps(header).encode()) + "." + _b64url(json.dumps(claims).encode())
        r, s = decode_dss_signature(self.key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256())))
        return signing_input + "." + _b64url(r.to_bytes(32, "big") + s.to_bytes(32, "big"))

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class Registry:
    """``docker-registry serve`` on 127.0.0.1, open or with Basic or token auth."""

    def __init__(self, mode: str = "open") -> None:
        binary = shutil.which("docker-registry")
        if binary is None:
            pytest.fail("docker-registry is not installed; run 'make install'")
        self.root = Path(tempfile.mkdtemp(prefix=f"ab-reg-{mode}-"))
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        self.mode = mode
        self.token_server: TokenServer | None = None
        auth = ""
        if mode == "basic":
            hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode()
            (self.root / "htpasswd").write_text(f"{USER}:{hashed}\n")
            auth = f"auth:\n  htpasswd:\n    realm: test\n    path: {self.root / 'htpasswd'}\n"
        elif mode == "token":
            self.token_server = TokenServer(self.root)
            auth = (
                f"auth:\n  token:\n    realm: {self.token_server.realm}\n    service: test-registry\n"
                f"    issuer: test-issuer\n    rootcertbundle: {self.token_server.cert_path}\n"
            )
        (self.root / "config.yml").write_text(
            f"version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {self.root / 'data'}\n"
            f"  delete:\n    enabled: true\nhttp:\n  addr: {self.host}\n{auth}"
        )
        self.log = open(self.root / "registry.log", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [binary, "serve", str(self.root / "config.yml")], stdout=self.log, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                requests.get(f"http://{self.host}/v2/", timeout=1)
                break
            except requests.ConnectionError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    pytest.fail("docker-registry did not start: " + (self.root / "registry.log").read_text())
                time.sleep(0.1)

    @property
    def creds(self) -> list[str]:
        return [] if self.mode == "open" else ["--dest-creds", f"{USER}:{PASSWORD}"]

    def push_from_engine(self, engine_host: str, tag: str, dest: str | None = None) -> None:
        """Copy ``tag`` from a Docker engine into this registry with skopeo (layers gzip-compressed)."""
        subprocess.run(
            [
                "skopeo",
                "copy",
                "--quiet",
                "--src-daemon-host",
                engine_host,
                "--dest-tls-verify=false",
                *self.creds,
                f"docker-daemon:{tag}",
                f"docker://{self.host}/{dest or tag}",
            ],
            check=True,
            capture_output=True,
        )

    def blob_file(self, digest: str) -> Path:
        hexd = digest.removeprefix("sha256:")
        return self.root / "data" / "docker/registry/v2/blobs/sha256" / hexd[:2] / hexd / "data"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.log.close()
        if self.token_server:
            self.token_server.close()
        shutil.rmtree(self.root, ignore_errors=True)


class SiteRegistry:
    """A site's own registry: ``docker-registry serve`` at ``address`` (HOST:PORT) inside the network
    namespace ``netns`` (``nodes.SiteNet``), TLS with ``cert``/``key`` (``site_certificate``), Basic
    auth for one user."""

    def __init__(
        self, netns: str, address: str, ca: Path, cert: Path, key: Path, user: str, password: str
    ) -> None:
        binary = shutil.which("docker-registry")
        if binary is None:
            pytest.fail("docker-registry is not installed; run 'make install'")
        self.root = Path(tempfile.mkdtemp(prefix="ab-reg-site-"))
        self.address = address
        hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()
        (self.root / "htpasswd").write_text(f"{user}:{hashed}\n")
        (self.root / "config.yml").write_text(
            f"version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: {self.root / 'data'}\n"
            f"http:\n  addr: {address}\n  tls:\n    certificate: {cert}\n    key: {key}\n"
            f"auth:\n  htpasswd:\n    realm: site\n    path: {self.root / 'htpasswd'}\n"
        )
        self.log = open(self.root / "registry.log", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            ["nsenter", f"--net=/run/netns/{netns}", binary, "serve", str(self.root / "config.yml")],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                if requests.get(f"https://{address}/v2/", verify=str(ca), timeout=1).status_code == 401:
                    break
            except requests.ConnectionError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                text = self.log_text()
                self.stop()
                pytest.fail(f"docker-registry at {address} did not start: {text}")
            time.sleep(0.1)

    def log_text(self) -> str:
        return (self.root / "registry.log").read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.log.close()
        shutil.rmtree(self.root, ignore_errors=True)


def docker_config(folder: Path, host: str, user: str = USER, password: str = PASSWORD) -> dict[str, str]:
    """A DOCKER_CONFIG folder whose config.json holds Basic credentials for ``host``."""
    folder.mkdir(parents=True, exist_ok=True)
    auth = base64.b64encode(f"{user}:{password}".encode()).decode()
    (folder / "config.json").write_text(json.dumps({"auths": {host: {"auth": auth}}}))
    return {"DOCKER_CONFIG": str(folder)}


class Proxy:
    """A loopback HTTP proxy in front of a registry, adding faults a real registry can't be asked for.

    ``drop_blob_once``: the first blob body is cut off half-way (the connection closes).
    ``redirect_blobs``: blob GETs answer 307 to a storage server on another loopback
    address (127.0.0.2), which records the headers it receives.
    """

    def __init__(self, upstream: str, behaviour: str) -> None:
        self.upstream = upstream
        self.behaviour = behaviour
        self.seen: list[tuple[str, str | None]] = []  # (path, Range)
        self.storage_headers: list[dict[str, str]] = []
        self.dropped = False
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                proxy.seen.append((self.path, self.headers.get("Range")))
                is_blob = "/blobs/" in self.path
                if is_blob and proxy.behaviour == "redirect_blobs":
                    self.send_response(307)
                    self.send_header("Location", f"{proxy.storage_url}{self.path}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                headers = {
                    k: v for k, v in self.headers.items() if k.lower() in ("authorization", "accept", "range")
                }
                resp = requests.get(
                    f"http://{proxy.upstream}{self.path}",
                    headers=headers,
                    stream=True,
                    allow_redirects=False,
                    timeout=30,
                )
                body = resp.raw.read()
                self.send_response(resp.status_code)
                for key, value in resp.headers.items():
                    if key.lower() not in ("content-length", "transfer-encoding", "connection"):
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if is_blob and proxy.behaviour == "drop_blob_once" and not proxy.dropped and len(body) > 1000:
                    proxy.dropped = True
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                self.wfile.write(body)

        class Storage(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                proxy.storage_headers.append(dict(self.headers.items()))
                # Fetch the blob from the registry with the proxy's own credentials.
                auth = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
                resp = requests.get(
                    f"http://{proxy.upstream}{self.path}",
                    headers={"Authorization": f"Basic {auth}"},
                    timeout=30,
                )
                self.send_response(resp.status_code)
                self.send_header("Content-Length", str(len(resp.content)))
                self.end_headers()
                self.wfile.write(resp.content)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.storage = http.server.ThreadingHTTPServer(("127.0.0.2", 0), Storage)
        for server in (self.httpd, self.storage):
            threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
        self.host = f"127.0.0.1:{self.httpd.server_address[1]}"
        self.storage_url = f"http://127.0.0.2:{self.storage.server_address[1]}"

    def close(self) -> None:
        for server in (self.httpd, self.storage):
            server.shutdown()
            server.server_close()


def make_multiplatform(reg: Registry, source: str, dest: str, tag: str = "1") -> dict[str, str]:
    """Publish ``dest:tag`` as a manifest list: the amd64 image ``source`` plus an arm64 twin.

    The twin shares the layers and differs only in its config's architecture (it
    is never run). Returns platform -> manifest digest.
    """
    base = f"http://{reg.host}/v2"
    accept = {"Accept": "application/vnd.docker.distribution.manifest.v2+json"}
    amd64 = requests.get(
        f"{base}/{source.split(':')[0]}/manifests/{source.split(':')[1]}", headers=accept, timeout=10
    )
    amd64.raise_for_status()
    manifest = amd64.json()
    src_repo = source.split(":")[0]
    config = requests.get(f"{base}/{src_repo}/blobs/{manifest['config']['digest']}", timeout=10).content
    for digest in [manifest["config"]["digest"], *(layer["digest"] for layer in manifest["layers"])]:
        mounted = requests.post(
            f"{base}/{dest}/blobs/uploads/", params={"mount": digest, "from": src_repo}, timeout=10
        )
        assert mounted.status_code == 201, mounted.text
    arm_config = json.loads(config)
    arm_config["architecture"] = "arm64"
    arm_bytes = json.dumps(arm_config).encode()
    arm_digest = "sha256:" + hashlib.sha256(arm_bytes).hexdigest()
    upload = requests.post(f"{base}/{dest}/blobs/uploads/", timeout=10)
    location = upload.headers["Location"]
    location = location if location.startswith("http") else f"http://{reg.host}{location}"
    sep = "&" if "?" in location else "?"
    put = requests.put(
        f"{location}{sep}digest={arm_digest}",
        data=arm_bytes,
        headers={"Content-Type": "application/octet-stream"},
        timeout=10,
    )
    assert put.status_code == 201, put.text
    arm_manifest = {
        **manifest,
        "config": {**manifest["config"], "digest": arm_digest, "size": len(arm_bytes)},
    }
    digests = {}
    entries = []
    for platform, body in (("amd64", amd64.content), ("arm64", json.dumps(arm_manifest).encode())):
        digest = "sha256:" + hashlib.sha256(body).hexdigest()
        resp = requests.put(
            f"{base}/{dest}/manifests/{digest}",
            data=body,
            timeout=10,
            headers={"Content-Type": "application/vnd.docker.distribution.manifest.v2+json"},
        )
        assert resp.status_code == 201, resp.text
        digests[f"linux/{platform}"] = digest
        entries.append(
            {
                "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                "digest": digest,
                "size": len(body),
                "platform": {"os": "linux", "architecture": platform},
            }
        )
    index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.list.v2+json",
        "manifests": entries,
    }
    resp = requests.put(
        f"{base}/{dest}/manifests/{tag}",
        data=json.dumps(index).encode(),
        timeout=10,
        headers={"Content-Type": "application/vnd.docker.distribution.manifest.list.v2+json"},
    )
    assert resp.status_code == 201, resp.text
    return digests


def site_certificate(folder: Path, ip: str) -> tuple[Path, Path, Path]:
    """A site CA and a server certificate for ``ip`` signed by it, as an operator's PKI would give:
    (ca.crt, server.crt, server.key)."""
    import ipaddress

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Example Site Root CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, ip)]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(ip))]), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    paths = folder / "site-ca.crt", folder / "registry.crt", folder / "registry.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return paths
