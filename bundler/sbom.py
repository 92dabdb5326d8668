"""The bundle's software bill of materials (``sbom.cdx.json``, CycloneDX 1.5); the only
user of ``cyclonedx-python-lib`` and ``packageurl``.

One document covers everything the bundle carries: container images
(``pkg:oci`` with their manifest digest), Debian packages (``pkg:deb`` with
version and architecture), rpms (``pkg:rpm``, epoch as a qualifier), binaries (SHA-256 and
download URL) and files. It
is made from the lock alone, so the same lock gives the same bytes: the
serial number is derived from the lock's content and the timestamp is the
build's ``SOURCE_DATE_EPOCH``. The SBOM is itself a member the lock covers.

Linear in the number of components: cyclonedx-python-lib's ``Bom.register_dependency``
finds a target by a linear scan of the graph, and its JSON output calls the deprecated
``Bom.validate()``, which registers every component that way again, and its
``BomRefDiscriminator`` checks each bom-ref against a list of the others: three
quadratic steps (10,000 files took two minutes), and its sorted sets compare components
through tuples built per comparison (n log n of them, the bulk of the rest). So the library
serializes the document (``Bom.as_json``, 1.5 view) and each component (``as_json``, same
view); the components are put in the library's order by a sort on plain strings, bom-refs
are made unique here, and the flat dependency list (the root depends on every component)
is written in the library's shape. The bytes are the same as the library's whole-BOM output.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import uuid
from typing import Any

from cyclonedx.model import ExternalReference, ExternalReferenceType, HashAlgorithm, HashType, XsUri
from cyclonedx.model.bom import Bom, BomMetaData
from cyclonedx.model.component import Component, ComponentType
from cyclonedx.output.json import JsonV1Dot5
from cyclonedx.schema import SchemaVersion
from cyclonedx.schema.schema import SCHEMA_VERSIONS
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
    for rpm in lock.rpms:
        # purl's rpm type: the epoch is a qualifier, the version is version-release.
        epoch, _, evr = rpm.version.rpartition(":")
        qualifiers = {"arch": rpm.arch, **({"epoch": epoch} if epoch else {})}
        components.append(
            Component(
                name=rpm.name,
                version=rpm.version,
                type=ComponentType.LIBRARY,
                bom_ref=f"rpm:{rpm.name}.{rpm.arch}",
                purl=PackageURL(
                    type="rpm", namespace=distro, name=rpm.name, version=evr, qualifiers=qualifiers
                ),
                hashes=_sha256(rpm.sha256),
                external_references=_download(rpm.url),
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
    _unique_refs(components)
    digest = hashlib.sha256(lock.to_bytes()).hexdigest()
    root = Component(
        name=lock.name,
        version=lock.version,
        type=ComponentType.APPLICATION,
        bom_ref=f"bundle:{lock.name}",
        description=f"airbundle bundle built by airbundle {__version__}",
    )
    bom = Bom(
        serial_number=uuid.uuid5(uuid.NAMESPACE_URL, f"airbundle:{lock.name}:{lock.version}:{digest}"),
        metadata=BomMetaData(
            timestamp=datetime.datetime.fromtimestamp(lock.source_date_epoch, datetime.timezone.utc),
            component=root,
        ),
    )
    # The document and each component are serialized by the library, with its 1.5 view;
    # the components go in the order its sorted set keeps them (type, group, name,
    # version, ref), sorted here on plain strings.
    view = SCHEMA_VERSIONS[SchemaVersion.V1_5]
    doc = json.loads(bom.as_json(view_=view))  # type: ignore[attr-defined]
    components.sort(key=lambda c: (c.type.value, c.name, c.version or "", str(c.bom_ref.value)))
    doc["components"] = [json.loads(c.as_json(view_=view)) for c in components]  # type: ignore[attr-defined]
    # The bundle carries each component directly: the root depends on all of them, and
    # each has its own entry (as the library's validate() would add), sorted by ref.
    refs = sorted(str(c.bom_ref.value) for c in components)
    entries: list[dict[str, Any]] = [{"ref": str(root.bom_ref.value), "dependsOn": refs}]
    entries += ({"ref": r} for r in refs)
    doc["dependencies"] = sorted(entries, key=lambda d: str(d["ref"]))
    doc.update(_HEADER)
    # Sorted keys: one canonical byte form for the same content.
    return (json.dumps(doc, sort_keys=True, indent=1) + "\n").encode()


# $schema, bomFormat and specVersion as the library writes them (from an empty BOM: cheap).
_HEADER = {
    k: v
    for k, v in json.loads(JsonV1Dot5(Bom()).output_as_string()).items()
    if k in ("$schema", "bomFormat", "specVersion")
}


def _unique_refs(components: list[Component]) -> None:
    """Make bom-refs unique in one pass (two images may share a manifest digest).

    The library would give a duplicate a random ref; a counted suffix keeps the SBOM
    deterministic.
    """
    seen: dict[str, int] = {}
    for component in components:
        ref = str(component.bom_ref.value)
        seen[ref] = seen.get(ref, 0) + 1
        if seen[ref] > 1:
            component.bom_ref.value = f"{ref}#{seen[ref]}"
