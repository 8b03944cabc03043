"""The JSON documents of an image: config, docker-archive manifest, OCI manifest and index.

PURE: no I/O; dicts and records in, the exact bytes to write out.
Rule: the docker-archive documents are ``json.dumps(..., indent=4)`` with the reference's
key order, so that the config digest, and with it the image, is the reference's.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

SHA256 = "sha256"


@dataclass(frozen=True, slots=True, order=True)
class Digest:
    """A content digest, ``sha256:<hex>`` (the OCI descriptor form) when printed."""

    hex: str
    algorithm: str = SHA256

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.hex}"

    @classmethod
    def of(cls, data: bytes) -> Digest:
        return cls(hashlib.sha256(data).hexdigest())

    @classmethod
    def parse(cls, text: str) -> Digest:
        """``sha256:<hex>`` or a bare 64-digit hex, as base images and checksum files hold.

        Raises:
            ValueError: not a sha256 digest.
        """
        hex_ = text.removeprefix(f"{SHA256}:")
        if len(hex_) != 64 or any(c not in "0123456789abcdef" for c in hex_):
            raise ValueError(f"not a sha256 digest: {text!r}")
        return cls(hex_)


@dataclass(frozen=True, slots=True)
class LayerRecord:
    """What the image documents say of one layer."""

    diff_id: Digest  # sha256 of the uncompressed layer tar
    member: str  # its name inside the archive
    comment_paths: Sequence[str]  # what the history comment lists
    blob: Descriptor | None = None  # the layer as stored (OCI manifests need it)


def merge_env(base_config: dict[str, Any] | None, config: dict[str, Any] | None) -> Any:
    """The image's ``config``: the conf's, with ``Env`` merged after the base image's.

    A later ``NAME=`` wins but keeps the first one's position; with no Env on either side
    the conf's config is returned as it is (the reference's overlay_base_config).
    """
    final = dict(config or {})
    env = list((base_config or {}).get("Env") or []) + list(final.get("Env") or [])
    if not env:
        return config
    resolved: dict[str, str] = {}
    for entry in env:
        resolved[entry.split("=", 1)[0]] = entry
    final["Env"] = list(resolved.values())
    return final


def image_config(
    *,
    created: datetime,
    architecture: str,
    config: Any,
    layers: Sequence[LayerRecord],
) -> bytes:
    """The image config (docker image spec v1.2, OCI image config) as the reference writes it."""
    stamp = created.isoformat()
    document = {
        "created": stamp,
        "architecture": architecture,
        "os": "linux",  # whatever the conf says, as the reference
        "config": config,
        "rootfs": {"diff_ids": [str(layer.diff_id) for layer in layers], "type": "layers"},
        "history": [
            # the reference formats the Python list of paths: its repr is the format
            {"created": stamp, "comment": f"store paths: {list(layer.comment_paths)!r}"}
            for layer in layers
        ],
    }
    return json.dumps(document, indent=4).encode("utf-8")


def docker_manifest(config_member: str, repo_tag: str, layer_members: Sequence[str]) -> bytes:
    """``manifest.json`` of a docker-archive."""
    manifest = [{"Config": config_member, "RepoTags": [repo_tag], "Layers": list(layer_members)}]
    return json.dumps(manifest, indent=4).encode("utf-8")


# OCI image-spec media types (media-types.md); Docker 25+'s `docker save` uses the same.
MEDIA_TYPE_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_TYPE_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_TYPE_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_TYPE_LAYER = "application/vnd.oci.image.layer.v1.tar"
MEDIA_TYPE_LAYER_GZIP = MEDIA_TYPE_LAYER + "+gzip"
MEDIA_TYPE_LAYER_ZSTD = MEDIA_TYPE_LAYER + "+zstd"
ANNOTATION_REF_NAME = "org.opencontainers.image.ref.name"  # the tag (image-layout.md)
ANNOTATION_IMAGE_NAME = "io.containerd.image.name"  # the full name:tag (containerd, docker)
OCI_LAYOUT = b'{"imageLayoutVersion":"1.0.0"}'  # the oci-layout file (image-layout.md)
_LAYER_MEDIA_TYPES = {
    "none": MEDIA_TYPE_LAYER,
    "gzip": MEDIA_TYPE_LAYER_GZIP,
    "zstd": MEDIA_TYPE_LAYER_ZSTD,
}


def layer_media_type_of(codec: str) -> str:
    """The OCI media type of a layer tar stored with ``codec`` (none, gzip, zstd).

    Raises:
        ValueError: a codec with no OCI media type.
    """
    try:
        return _LAYER_MEDIA_TYPES[codec]
    except KeyError:
        raise ValueError(f"no OCI layer media type for compression {codec!r}") from None


@dataclass(frozen=True, slots=True)
class Descriptor:
    """An OCI content descriptor: what a blob is, its digest and its size in bytes."""

    media_type: str
    digest: Digest
    size: int
    annotations: tuple[tuple[str, str], ...] = ()

    def to_json(self) -> dict[str, Any]:
        document: dict[str, Any] = {
            "mediaType": self.media_type,
            "digest": str(self.digest),
            "size": self.size,
        }
        if self.annotations:
            document["annotations"] = dict(self.annotations)
        return document

    @classmethod
    def of(cls, media_type: str, data: bytes) -> Descriptor:
        return cls(media_type, Digest.of(data), len(data))


def _compact(document: Any) -> bytes:
    # Go's json.Marshal layout, which docker, containerd and skopeo write for these
    return json.dumps(document, separators=(",", ":")).encode("utf-8")


def oci_manifest(config: Descriptor, layers: Sequence[Descriptor]) -> bytes:
    """An OCI image manifest (manifest.md)."""
    return _compact(
        {
            "schemaVersion": 2,
            "mediaType": MEDIA_TYPE_MANIFEST,
            "config": config.to_json(),
            "layers": [layer.to_json() for layer in layers],
        }
    )


def image_ref_annotations(repo_tag: str) -> tuple[tuple[str, str], ...]:
    """The annotations Docker 25+ puts on index.json's manifest descriptor: the tag alone
    (the part after the last ``:`` that follows the last ``/``; ``latest`` if none) and the
    full name."""
    name, colon, tag = repo_tag.rpartition(":")
    if not colon or "/" in tag or not name:
        tag = "latest"
        full = f"{repo_tag}:latest"
    else:
        full = repo_tag
    return ((ANNOTATION_IMAGE_NAME, full), (ANNOTATION_REF_NAME, tag))


def oci_index(manifests: Sequence[Descriptor | dict[str, Any]]) -> bytes:
    """``index.json`` of an OCI image layout: an image index (image-index.md); a manifest
    given as a dict (read from an index already there) is written as it is."""
    return _compact(
        {
            "schemaVersion": 2,
            "mediaType": MEDIA_TYPE_INDEX,
            "manifests": [m if isinstance(m, dict) else m.to_json() for m in manifests],
        }
    )


def layer_media_type(head: bytes) -> str:
    """The OCI media type of a stored layer from its first bytes (its magic number)."""
    if head.startswith(b"\x1f\x8b"):
        return MEDIA_TYPE_LAYER_GZIP
    if head.startswith(b"\x28\xb5\x2f\xfd"):
        return MEDIA_TYPE_LAYER_ZSTD
    return MEDIA_TYPE_LAYER


# Docker's Image Manifest V2, Schema 2 (distribution's docs/spec/manifest-v2-2.md): the
# same shape as an OCI manifest, with Docker's media types
MEDIA_TYPE_DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
MEDIA_TYPE_DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
MEDIA_TYPE_DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar"
MEDIA_TYPE_DOCKER_LAYER_GZIP = MEDIA_TYPE_DOCKER_LAYER + ".gzip"
_DOCKER_LAYER_MEDIA_TYPES = {
    MEDIA_TYPE_LAYER: MEDIA_TYPE_DOCKER_LAYER,
    MEDIA_TYPE_LAYER_GZIP: MEDIA_TYPE_DOCKER_LAYER_GZIP,
}


def docker_layer_media_type(media_type: str) -> str:
    """Docker's media type of a layer the OCI ``media_type`` describes.

    Raises:
        ValueError: none (zstd: schema 2 has no media type for it).
    """
    try:
        return _DOCKER_LAYER_MEDIA_TYPES[media_type]
    except KeyError:
        raise ValueError(
            f"a Docker v2 schema 2 manifest has no media type for {media_type}"
        ) from None


def docker_distribution_manifest(config: Descriptor, layers: Sequence[Descriptor]) -> bytes:
    """A Docker v2 schema 2 manifest of ``config`` (the image config's blob) and ``layers``
    (described with OCI media types, given Docker's here).

    Raises:
        ValueError: a layer Docker's schema has no media type for (zstd).
    """
    return _compact(
        {
            "schemaVersion": 2,
            "mediaType": MEDIA_TYPE_DOCKER_MANIFEST,
            "config": {
                "mediaType": MEDIA_TYPE_DOCKER_CONFIG,
                "size": config.size,
                "digest": str(config.digest),
            },
            "layers": [
                {
                    "mediaType": docker_layer_media_type(layer.media_type),
                    "size": layer.size,
                    "digest": str(layer.digest),
                }
                for layer in layers
            ],
        }
    )
