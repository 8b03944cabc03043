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


def merge_env(base_config: dict[str, Any] | None, config: dict[str, Any] | None) -> Any:
    """The image's ``config``: the conf's, with ``Env`` merged after the base image's.

    A later ``NAME=`` wins but keeps the first one's position; with no Env on either side
    the conf's config is returned as it is (the reference's overlay_base_config).
    """
    if base_config is None and config is None:
        return None
    final = dict(config or {})
    env = list((base_config or {}).get("Env") or []) + list(final.get("Env") or [])
    if env:
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
