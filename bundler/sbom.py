"""The bundle's software bill of materials (``sbom.cdx.json``, CycloneDX 1.5); the only
user of ``cyclonedx-python-lib`` and ``packageurl``.

One document covers everything the bundle carries: container images
(``pkg:oci`` with their manifest digest), Debian packages (``pkg:deb`` with
version and architecture), binaries (SHA-256 and download URL) and files. It
is made from the lock alone, so the same lock gives the same bytes: the
serial number is derived from the lock's content and the timestamp is the
build's ``SOURCE_DATE_EPOCH``. The SBOM is itself a member the lock covers.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import uuid

from cyclonedx.model import ExternalReference, ExternalReferenceType, HashAlgorithm, HashType, XsUri
from cyclonedx.model.bom import Bom, BomMetaData
from cyclonedx.model.component import Component, ComponentType
from cyclonedx.output.json import JsonV1Dot5
from packageurl import PackageURL

from bundler import __version__, oci
from bundler.lock import Lock

SBOM_NAME = "sbom.cdx.json"


def _sha256(hex_digest: str) -> list[HashType]:
    return [HashType(alg=HashAlgorithm.SHA_256, content=hex_digest)]


def _download(url: str) -> list[ExternalReference]:
    return [ExternalReference(type=ExternalReferenceType.DISTRIBUTION, url=XsUri(url))]


def make_sbom(lock: Lock) -> bytes:
    """The CycloneDX JSON for everything ``lock`` lists (deterministic for a given lock)."""
    components = []
    for image in lock.images:
        ref = oci.parse_reference(image.ref) if not image.ref.startswith("sha256:") else None
        name = ref.path.rsplit("/", 1)[-1] if ref else image.config[7:19]
        qualifiers = {"repository_url": ref.name} if ref else {}
        if ref and ref.tag:
            qualifiers["tag"] = ref.tag
        components.append(
            Component(
                name=name,
                version=image.manifest,
                type=ComponentType.CONTAINER,
                bom_ref=f"image:{image.manifest}",
                purl=PackageURL(type="oci", name=name, version=image.manifest, qualifiers=qualifiers),
                hashes=_sha256(image.manifest.split(":", 1)[1]),
                description=", ".join(image.tags) or image.ref,
            )
        )
    distro = lock.platform.get("os", "debian")
    for deb in lock.debs:
        components.append(
            Component(
                name=deb.name,
                version=deb.version,
                type=ComponentType.LIBRARY,
                bom_ref=f"deb:{deb.name}",
                purl=PackageURL(
                    type="deb",
                    namespace=distro,
                    name=deb.name,
                    version=deb.version,
                    qualifiers={"arch": deb.arch},
                ),
                hashes=_sha256(deb.sha256),
                external_references=_download(deb.url),
            )
        )
    for binary in lock.binaries:
        components.append(
            Component(
                name=binary.name,
                type=ComponentType.APPLICATION,
                bom_ref=f"binary:{binary.name}",
                purl=PackageURL(type="generic", name=binary.name, qualifiers={"download_url": binary.url}),
                hashes=_sha256(binary.sha256),
                external_references=_download(binary.url),
                description=f"installed at {binary.dest}",
            )
        )
    for member in lock.members:
        if member.kind in ("file", "script"):
            components.append(
                Component(
                    name=member.path,
                    type=ComponentType.FILE,
                    bom_ref=f"file:{member.path}",
                    hashes=_sha256(member.sha256),
                )
            )
    digest = hashlib.sha256(lock.to_bytes()).hexdigest()
    root = Component(
        name=lock.name,
        version=lock.version,
        type=ComponentType.APPLICATION,
        bom_ref=f"bundle:{lock.name}",
        description=f"airbundle bundle built by airbundle {__version__}",
    )
    bom = Bom(
        components=components,
        serial_number=uuid.uuid5(uuid.NAMESPACE_URL, f"airbundle:{lock.name}:{lock.version}:{digest}"),
        metadata=BomMetaData(
            timestamp=datetime.datetime.fromtimestamp(lock.source_date_epoch, datetime.timezone.utc),
            component=root,
        ),
    )
    bom.register_dependency(root, components)  # the bundle carries each component directly
    text = JsonV1Dot5(bom).output_as_string()
    # Re-serialize with sorted keys: one canonical byte form for the same content.
    return (json.dumps(json.loads(text), sort_keys=True, indent=1) + "\n").encode()
