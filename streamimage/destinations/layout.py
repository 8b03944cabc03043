"""What the OCI destinations share: an OCI image layout's documents (config, manifest,
index.json, oci-layout) and where its blobs go.

ASYNC at the BlobStore only; the documents are imagejson's bytes.
Rule: every blob is ``blobs/sha256/<hex>`` of its own bytes, written once; the documents
come after every layer, index.json and oci-layout last of the layout's files.
"""

from __future__ import annotations

from typing import Protocol

from streamimage.image import Image, LayerWriter
from streamimage.imagejson import (
    MEDIA_TYPE_CONFIG,
    MEDIA_TYPE_MANIFEST,
    OCI_LAYOUT,
    Descriptor,
    LayerRecord,
    image_ref_annotations,
    oci_index,
    oci_manifest,
)

BLOBS = "blobs/sha256"
LAYOUT_FILE = "oci-layout"
INDEX_FILE = "index.json"


def blob_path(descriptor: Descriptor) -> str:
    return f"blobs/{descriptor.digest.algorithm}/{descriptor.digest.hex}"


class BlobStore(LayerWriter, Protocol):
    """Where an OCI destination puts blobs and the layout's own files."""

    async def add_file(self, name: str, data: bytes) -> None: ...


async def write_documents(image: Image, records: list[LayerRecord], store: BlobStore) -> str:
    """Config, OCI manifest, index.json and oci-layout; returns the config's blob path."""
    config_json = image.config_json(records)
    config_blob = Descriptor.of(MEDIA_TYPE_CONFIG, config_json)
    layers = []
    for record in records:
        if record.blob is None:  # the OCI destinations describe every layer they write
            raise AssertionError(f"{record.member}: layer without a descriptor")
        layers.append(record.blob)
    manifest_json = oci_manifest(config_blob, layers)
    manifest_blob = Descriptor.of(MEDIA_TYPE_MANIFEST, manifest_json)
    await store.add_file(blob_path(config_blob), config_json)
    await store.add_file(blob_path(manifest_blob), manifest_json)
    annotated = Descriptor(
        manifest_blob.media_type,
        manifest_blob.digest,
        manifest_blob.size,
        image_ref_annotations(image.build.conf.repo_tag),
    )
    await store.add_file(INDEX_FILE, oci_index([annotated]))
    await store.add_file(LAYOUT_FILE, OCI_LAYOUT)
    return blob_path(config_blob)
