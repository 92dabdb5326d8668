"""The site registry for ``--images-mode registry``: its TLS, its container, and the nodes' trust in it.

``ensure_tls`` makes, once and with the stock ``openssl``, a site CA and a
certificate for the registry's address in the installer's work folder (or takes
the operator's site certificate). ``start_on`` loads the bundle's registry image
on the chosen node over SSH when missing, puts the certificate and key in the
registry's data folder there, and runs the registry container (host network,
``--restart always``) unless one with the same image, address and certificate
already runs; then waits until it answers. ``trust_on`` writes the CA to a
node's ``/etc/docker/certs.d/HOST:PORT/ca.crt`` (Docker reads it at each pull);
``login_on`` runs ``docker login`` there, the password on stdin. For nodes whose images go
into containerd (``plan.runtime``), ``trust_on`` writes the CA and a ``hosts.toml`` naming it
under ``/etc/containerd/certs.d/HOST:PORT/`` (containerd's registry host configuration, read
by ``ctr --hosts-dir`` and by the CRI plugin with ``config_path``), plus a mirror ``hosts.toml`` for
each upstream registry of the images (``certs.d/registry.k8s.io/``: the kubelet's own pulls by
those names reach the site registry), and each node pulls with ``ctr -n k8s.io images pull --hosts-dir``.

``deliver`` is the registry route of the images phase: start,
trust, log in, push (``push``), then every target pulls each image by digest.
"""

import hashlib
import io
import ipaddress
import os
import shlex
import shutil
import subprocess
import tarfile
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO, Callable, Dict, List, Optional, Set, Tuple

from bundler import oci
from bundler.compat import dataclass
from bundler.errors import InstallError
from bundler.installer import containerdconf, ctrimport, remote
from bundler.installer.dockerload import ensure_tags, load_missing
from bundler.installer.inventory import Node
from bundler.installer.plan import PhasePlan, Route
from bundler.installer.push import Access, Client, PushProgress, push_images
from bundler.installer.remote import sudo_prefix
from bundler.installer.results import NodeResult
from bundler.lock import Lock

CONTAINER = "airbundle-registry"
DEFAULT_DATA = "/var/lib/airbundle/registry"
CERTS_D = "/etc/docker/certs.d"
CONTAINERD_CERTS_D = "/etc/containerd/certs.d"
START_TIMEOUT = 30.0


@dataclass(frozen=True)
class Tls:
    """The registry's certificate and key (PEM files here), and the CA the nodes must trust."""

    cert: Path
    key: Path
    ca: Path


def _openssl(args: List[str], cwd: Path) -> None:
    openssl = shutil.which("openssl")
    if openssl is None:
        raise InstallError(
            "making the site registry's certificate needs openssl on this node; install it, or give "
            "a site certificate with --registry-cert and --registry-key"
        )
    done = subprocess.run([openssl, *args], cwd=str(cwd), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if done.returncode != 0:
        detail = done.stderr.decode(errors="replace").strip().splitlines()[-1:]
        raise InstallError(f"openssl {args[0]} failed in {cwd}: {' '.join(detail)}")


def subject_alt_name(host: str) -> str:
    """The ``subjectAltName`` for a registry host: an IP entry for an address, else a DNS name."""
    try:
        ipaddress.ip_address(host)
        return f"IP:{host}"
    except ValueError:
        return f"DNS:{host}"


RENEW_BEFORE = 30 * 24 * 3600  # seconds: a certificate closer than this to its end is made anew


def _still_good(cert: Path, ca: Path) -> bool:
    """Whether ``cert`` chains to ``ca`` and stays valid for ``RENEW_BEFORE`` more seconds."""
    if shutil.which("openssl") is None:
        return True  # nothing here can check it (or make another); keep what an earlier run made
    for args in (["verify", "-CAfile", str(ca), str(cert)],
                 ["x509", "-checkend", str(RENEW_BEFORE), "-noout", "-in", str(cert)]):  # fmt: skip
        if subprocess.run(["openssl", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE).returncode != 0:
            return False
    return True


def ensure_tls(folder: Path, address: str) -> Tls:
    """The installer's own site CA and a certificate for ``address``, made once under ``folder``.

    The CA is kept (so nodes trusting it keep trusting re-issued certificates);
    a certificate is made per ``HOST:PORT``, and made again when it nears its end
    (``RENEW_BEFORE``) or no longer chains to the CA. Keys are 0600, the folder
    0700; files appear under their final names only when complete.
    """
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(folder, 0o700)
    ca, ca_key = folder / "ca.crt", folder / "ca.key"
    stem = address.replace(":", "_")
    cert, key = folder / f"{stem}.crt", folder / f"{stem}.key"
    if ca.is_file() and cert.is_file() and key.is_file() and _still_good(cert, ca):
        return Tls(cert, key, ca)
    host = address.rsplit(":", 1)[0]
    work = Path(tempfile.mkdtemp(prefix=".tls-", dir=str(folder)))
    try:
        ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
        if not (ca.is_file() and ca_key.is_file()):
            _openssl(
                ["req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "3650", "-sha256",
                 "-subj", "/CN=airbundle site registry CA",
                 "-addext", "basicConstraints=critical,CA:TRUE",
                 "-addext", "keyUsage=critical,keyCertSign,cRLSign"],
                work,
            )  # fmt: skip
            os.chmod(work / "ca.key", 0o600)
            os.replace(work / "ca.key", ca_key)
            os.replace(work / "ca.crt", ca)
        (work / "ext.cnf").write_text(
            f"subjectAltName={subject_alt_name(host)}\nbasicConstraints=CA:FALSE\n"
            "keyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n"
        )
        _openssl(["req", "-new", *ec, "-keyout", "tls.key", "-out", "tls.csr", "-subj", f"/CN={host}"], work)
        _openssl(
            ["x509", "-req", "-in", "tls.csr", "-CA", str(ca), "-CAkey", str(ca_key), "-CAcreateserial",
             "-days", "825", "-sha256", "-extfile", "ext.cnf", "-out", "tls.crt"],
            work,
        )  # fmt: skip
        os.chmod(work / "tls.key", 0o600)
        os.replace(work / "tls.key", key)
        os.replace(work / "tls.crt", cert)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return Tls(cert, key, ca)


def _certs_tar(tls: Tls, out: IO[bytes]) -> None:
    with tarfile.open(fileobj=out, mode="w|") as tar:
        for path, name, mode in ((tls.cert, "tls.crt", 0o644), (tls.key, "tls.key", 0o600)):
            data = path.read_bytes()
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), mode
            tar.addfile(info, io.BytesIO(data))


def _bytes(data: bytes) -> Callable[[IO[bytes]], None]:
    def write(out: IO[bytes]) -> None:
        out.write(data)

    return write


def _listen_address(address: str) -> str:
    """Where the registry binds: the node's address when it is an IP, else every address."""
    host, port = address.rsplit(":", 1)
    return address if subject_alt_name(host).startswith("IP:") else f":{port}"


def start_on(
    node: Node,
    image: oci.Image,
    images_dir: Path,
    address: str,
    data: str,
    tls: Tls,
    opts: remote.SshOptions,
    echo: Callable[[str], None],
) -> None:
    """Run the site registry on ``node`` from the bundle's ``image``, serving TLS on ``address``.

    Raises:
        InstallError: the node failed a step, or the registry did not answer in time (its log is quoted).
    """
    # The running registry is kept only when it runs this image, address, data folder and certificate.
    config = f"{image.config} {address} {data}".encode() + tls.cert.read_bytes()
    label = hashlib.sha256(config).hexdigest()[:16]
    state = remote.run(
        node,
        opts,
        "docker inspect --format "
        + shlex.quote('{{.State.Running}} {{index .Config.Labels "airbundle.registry"}}')
        + f" {CONTAINER} 2>/dev/null || true",
    ).split()
    if state == ["true", label]:
        echo(f"  registry on {node.name}: already running at {address}")
    else:
        loaded, sent = load_missing(node, [image], images_dir, opts)
        q = shlex.quote
        remote.stream(
            node,
            opts,
            f"{sudo_prefix(node)}sh -c "
            + q(f"mkdir -p {q(data)}/storage {q(data)}/certs && tar -x -C {q(data)}/certs"),
            lambda out: _certs_tar(tls, out),
        )
        run = [
            "docker", "run", "--detach", "--name", CONTAINER, "--restart", "always", "--network", "host",
            "--label", f"airbundle.registry={label}",
            "--env", f"REGISTRY_HTTP_ADDR={_listen_address(address)}",
            "--env", "REGISTRY_HTTP_TLS_CERTIFICATE=/certs/tls.crt",
            "--env", "REGISTRY_HTTP_TLS_KEY=/certs/tls.key",
            "--env", "REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY=/var/lib/registry",
            "--volume", f"{data}/storage:/var/lib/registry",
            "--volume", f"{data}/certs:/certs:ro",
            image.config,
        ]  # fmt: skip
        command = " ".join(shlex.quote(a) for a in run)  # shlex.join is 3.8+
        remote.run(node, opts, f"docker rm --force {CONTAINER} >/dev/null 2>&1; {command} >/dev/null")
        how = f"image loaded, {sent} bytes sent" if loaded else "image was present"
        echo(f"  registry on {node.name}: started at {address} ({how}; data in {data})")
    _wait(node, Access(address, ca=tls.ca), opts)


def _wait(node: Node, access: Access, opts: remote.SshOptions) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        client = Client(access)
        try:
            client.connect()
            return
        except InstallError as exc:
            if time.monotonic() > deadline:
                log = remote.run(node, opts, f"docker logs --tail 5 {CONTAINER} 2>&1 || true").strip()
                raise InstallError(
                    f"{node.name}: the site registry did not answer at {access.address} within "
                    f"{START_TIMEOUT:.0f} s ({exc}); its last log lines: {log[-800:] or '(none)'}"
                ) from None
            time.sleep(0.5)
        finally:
            client.close()


def hosts_toml(address: str) -> bytes:
    """containerd's ``hosts.toml`` for the site registry at ``address``: pull and resolve there
    over HTTPS, trusting the CA written beside it."""
    return (
        f'server = "https://{address}"\n\n[host."https://{address}"]\n'
        f'  capabilities = ["pull", "resolve"]\n  ca = "{CONTAINERD_CERTS_D}/{address}/ca.crt"\n'
    ).encode()


def _write_on(node: Node, folder: str, name: str, data: bytes, opts: remote.SshOptions) -> bool:
    """``folder/name`` on ``node`` holds ``data`` (written beside, then renamed); False when it did."""
    path = shlex.quote(f"{folder}/{name}")
    have = remote.run(node, opts, f"{sudo_prefix(node)}sha256sum {path} 2>/dev/null || true").split()
    if have and have[0] == hashlib.sha256(data).hexdigest():
        return False
    script = (
        f"set -e; mkdir -p {shlex.quote(folder)}; t=$(mktemp {shlex.quote(folder)}/.ab.XXXXXX); "
        f'cat > "$t"; chmod 0644 "$t"; mv "$t" {path}'
    )
    remote.stream(node, opts, f"{sudo_prefix(node)}sh -c {shlex.quote(script)}", _bytes(data))
    return True


def trust_on(
    node: Node,
    address: str,
    ca: Path,
    opts: remote.SshOptions,
    runtime: str = "docker",
    mirrored: Tuple[str, ...] = (),
) -> bool:
    """Make ``node``'s Docker (or containerd: the CA and a ``hosts.toml``) trust ``ca`` for
    ``address``; False when it already did. For containerd, each registry of ``mirrored``
    (``registry.k8s.io``) gets a ``hosts.toml`` sending its pulls to ``address``, so the kubelet's
    own pulls by the images' upstream names (``config_path`` in ``containerdconf``) reach the site."""
    data = ca.read_bytes()
    if runtime == "containerd":
        folder = f"{CONTAINERD_CERTS_D}/{address}"
        wrote = _write_on(node, folder, "ca.crt", data, opts)
        wrote = _write_on(node, folder, "hosts.toml", hosts_toml(address), opts) or wrote
        for upstream in mirrored:
            mirror = containerdconf.mirror_hosts_toml(upstream, address)
            wrote = _write_on(node, f"{CONTAINERD_CERTS_D}/{upstream}", "hosts.toml", mirror, opts) or wrote
        return wrote
    return _write_on(node, f"{CERTS_D}/{address}", "ca.crt", data, opts)


def login_on(node: Node, access: Access, opts: remote.SshOptions) -> None:
    """``docker login`` on ``node`` to the registry, the password on stdin (never in a command line)."""
    remote.stream(
        node,
        opts,
        f"docker login --username {shlex.quote(access.user)} --password-stdin {shlex.quote(access.address)}",
        _bytes(access.password.encode()),
    )


_UNTRUSTED = ("x509:", "certificate signed by unknown authority", "certificate is not trusted")


PULLS_PER_NODE = 4  # concurrent pulls on one node: Docker fetches and unpacks their layers side by side


def _pull(node: Node, pulled: str, route: Route, opts: remote.SshOptions) -> None:
    try:
        remote.run(node, opts, f"docker pull --quiet {shlex.quote(pulled)}", timeout=3600)
    except remote.RemoteError as exc:
        if any(mark in str(exc) for mark in _UNTRUSTED):
            raise InstallError(
                f"{node.name}: Docker there does not trust the TLS certificate of {route.address}, "
                f"so it cannot pull {pulled}; put the site CA at {CERTS_D}/{route.address}/ca.crt on "
                f"{node.name} (the installer does it when given --registry-ca FILE, or when it runs "
                f"the registry itself with --registry-node) ({exc})"
            ) from None
        raise


def _pull_on(
    node: Node,
    images: List[oci.Image],
    fresh: Set[str],
    pulls: Dict[oci.Image, str],
    route: Route,
    opts: remote.SshOptions,
) -> NodeResult:
    """Pull every one of ``images`` by digest on ``node`` (a few at once), check each one's ID
    against the lock and point its tags at it. Those the node had (not in ``fresh``) are pulled
    too: that checks the node reaches and trusts the registry (Docker then fetches only the
    manifest); they count as already present."""
    result = NodeResult(node, verb="pulled")
    refs = [pulls[i] for i in images]
    try:
        with ThreadPoolExecutor(max_workers=max(1, min(PULLS_PER_NODE, len(refs)))) as pool:
            list(pool.map(lambda pulled: _pull(node, pulled, route, opts), refs))
        found = remote.run(
            node, opts, "docker image inspect --format '{{.Id}}' " + " ".join(shlex.quote(p) for p in refs)
        ).split() if refs else []  # fmt: skip
        for image, pulled, got in zip(images, refs, found):
            if got != image.config:
                raise InstallError(f"{node.name}: {pulled} is {got}, the lock says {image.config}")
            (result.done if image.config in fresh else result.skipped).append(pulled)
            ensure_tags(node, opts, image)
    except InstallError as exc:
        result.error = str(exc)
    return result


def _ctr_pull_on(
    node: Node,
    images: List[oci.Image],
    fresh: Set[str],
    pulls: Dict[oci.Image, str],
    route: Route,
    opts: remote.SshOptions,
) -> NodeResult:
    """containerd's pull of ``images`` by digest on ``node`` through ``hosts.toml`` (its CA), each
    then named by its full names and checked against the locked manifest digest."""
    result = NodeResult(node, verb="pulled")
    ctr = f"{sudo_prefix(node)}{ctrimport.CTR}"
    try:
        for image in images:
            pulled = pulls[image]
            try:
                remote.run(
                    node,
                    opts,
                    f"{ctr} images pull --hosts-dir {CONTAINERD_CERTS_D} {shlex.quote(pulled)}",
                    timeout=3600,
                )
            except remote.RemoteError as exc:
                if any(mark in str(exc) for mark in _UNTRUSTED):
                    raise InstallError(
                        f"{node.name}: containerd there does not trust the TLS certificate of "
                        f"{route.address}, so it cannot pull {pulled}; put the site CA and a hosts.toml "
                        f"naming it in {CONTAINERD_CERTS_D}/{route.address}/ on {node.name} (the installer "
                        f"does it when given --registry-ca FILE) ({exc})"
                    ) from None
                raise
            for name in oci.full_names(image):
                remote.run(node, opts, f"{ctr} images tag --force {shlex.quote(pulled)} {shlex.quote(name)}")
            (result.done if image.config in fresh else result.skipped).append(pulled)
        wrong = ctrimport.check(node, opts, images)
        if wrong:
            raise InstallError(f"{node.name}: " + "; ".join(wrong))
    except InstallError as exc:
        result.error = str(exc)
    return result


def deliver(
    lock: Lock,
    bundle_dir: Path,
    phase: PhasePlan,
    opts: remote.SshOptions,
    route: Route,
    tls_folder: Path,
    echo: Callable[[str], None],
    progress: Optional[PushProgress] = None,
    runtime: str = "docker",
) -> List[NodeResult]:
    """The registry route of the images phase: start the registry (``--registry-node``), make
    every node of ``phase`` trust it (and log in), push every image those nodes get (what they
    have too: the registry is where the cluster pulls from later), then have each node pull by
    digest the images its actions name. ``progress`` follows the push (blobs and bytes of total).

    Raises:
        InstallError: the registry could not be started or pushed to (exit 6); a node's own
        failure is in its result instead.
    """
    images_dir = bundle_dir / "images"
    targets = list(phase.nodes)
    ca = route.ca
    if route.node is not None:
        image = lock.find_image(lock.registry_image)
        assert image is not None  # the options checked it before unpacking
        if route.cert and route.key:
            tls = Tls(route.cert, route.key, route.ca or route.cert)
        else:
            tls = ensure_tls(tls_folder, route.address)
        ca = tls.ca
        start_on(route.node, image, images_dir, route.address, route.data, tls, opts, echo)
    access = Access(route.address, ca, route.user, route.password, route.chunk)
    trusted: List[str] = []
    if runtime == "containerd" and route.user:
        raise InstallError(
            f"images: the nodes pull with containerd, and the installer does not log containerd in to "
            f"{route.address} (--registry-user): use a registry open to pulls from the nodes, or "
            "--images-mode ssh-load"
        )
    if runtime == "containerd" and ca is None:
        raise InstallError(
            f"images: the nodes pull from {route.address} with containerd, which needs the registry's CA "
            "in its hosts.toml: give --registry-ca FILE"
        )

    wanted = {a.item for a in phase.actions} | {i for items in phase.present.values() for i in items}
    union = [i for i in lock.images if i.config in wanted]
    # the registries the kubelet would pull these images from by their names: mirrored to the site's
    mirrored = tuple(sorted({oci.parse_reference(n).domain for i in union for n in oci.full_names(i)}))

    def prepare(node: Node) -> NodeResult:
        result = NodeResult(node)
        try:
            if ca is not None and trust_on(node, route.address, ca, opts, runtime, mirrored):
                trusted.append(node.name)
            if route.user:
                login_on(node, access, opts)
        except InstallError as exc:
            result.error = str(exc)
        return result

    # The registry's own node trusts it too: an operator may pull from there.
    every = [*targets, route.node] if route.node is not None and route.node not in targets else targets
    failed = [r for r in remote.for_each(every, prepare) if r.error]
    if trusted:
        where = CONTAINERD_CERTS_D if runtime == "containerd" else CERTS_D
        mirrors = f" (mirrors for {', '.join(mirrored)})" if runtime == "containerd" and mirrored else ""
        echo(f"  CA for {route.address} written to {where} on {', '.join(sorted(trusted))}{mirrors}")
    report = push_images(union, images_dir, access, *([progress] if progress else []))
    pulls = dict(zip(union, report.images))
    echo(
        f"  registry {route.address}: {report.blobs_sent} blobs sent ({report.bytes_sent} bytes"
        + (f", {report.chunks} chunks" if report.chunks else "")
        + f"), {report.blobs_mounted} mounted, {report.blobs_present} already there"
        + ("" if report.scheme == "https" else " (plain HTTP: no TLS)")
        + f"; of {report.blobs_total} blobs, {report.bytes_total} bytes in all"
    )
    bad = {r.node.name for r in failed}

    def pull(node: Node) -> NodeResult:
        fresh = {a.item for a in phase.of(node.name) if a.kind == "pull"}
        mine = {a.item for a in phase.of(node.name)} | set(phase.present.get(node.name, ()))
        pull_on = _ctr_pull_on if runtime == "containerd" else _pull_on
        return pull_on(node, [i for i in union if i.config in mine], fresh, pulls, route, opts)

    return failed + remote.for_each([n for n in targets if n.name not in bad], pull)
