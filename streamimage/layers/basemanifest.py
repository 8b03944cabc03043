"""What a from_image archive says it holds: its manifest.json (docker-archive, Docker 25+)
or index.json (OCI image layout), the image config they name, and every layer they list.

IO: reads the archive's JSON members through an open ``tarfile.TarFile``; no anyio.
Rule: everything the image needs from the base is checked here, before a byte is written:
the members' names (none absolute, none with ``..``, none twice: a layer's member name is
copied into a docker-archive as it is), manifest.json, the config it names, every layer it
lists (a regular file, not named as a member the output writes) and as many diff_ids as
layers; each failure is a BaseImageError naming the archive and the member.
"""

from __future__ import annotations

import json
import tarfile
from dataclasses import dataclass
from typing import Any

from streamimage.errors import BaseImageError
from streamimage.imagejson import MEDIA_TYPE_LAYER, MEDIA_TYPE_LAYER_GZIP, Descriptor, Digest
from streamimage.tarheader import Member, encode_header

# Names the image archives streamimage writes use for their own members (docker-archive,
# OCI layout; `repositories` is what `docker load` reads tags from): a base layer copied
# under one of these names would be taken for that member.
RESERVED_NAMES = frozenset({"manifest.json", "repositories", "index.json", "oci-layout"})


@dataclass(frozen=True, slots=True)
class BaseLayer:
    """One layer of the base image, copied into the new image as it is."""

    member: tarfile.TarInfo
    diff_id: Digest
    blob: Descriptor | None = None  # media type, digest, size as stored, when the base says

    @property
    def name(self) -> str:
        return self.member.name

    @property
    def size(self) -> int:
        return self.member.size

    def header(self) -> bytes:
        """Its member header, re-encoded as the reference's ``addfile`` does (PAX)."""
        info = self.member
        return encode_header(
            Member(
                name=info.name,
                type=info.type,
                mode=info.mode,
                uid=info.uid,
                gid=info.gid,
                size=info.size,
                mtime=info.mtime,
                linkname=info.linkname,
                uname=info.uname,
                gname=info.gname,
                devmajor=info.devmajor,
                devminor=info.devminor,
                pax_headers=info.pax_headers,
            )
        )


@dataclass(frozen=True, slots=True)
class BaseContents:
    """What the archive holds for the image: its layers in order and its config."""

    layers: tuple[BaseLayer, ...]
    config: dict[str, Any] | None  # the "config" object of its image config


def normal_name(name: str) -> str:
    """A member name as an extractor places it: no leading ``./``, no trailing ``/``."""
    while name.startswith("./"):
        name = name[2:]
    return "" if name == "." else name.rstrip("/")


def check_member_names(archive: tarfile.TarFile, path: str) -> None:
    """Raises: BaseImageError: a member's name is absolute, has a ``..`` component, or is
    another member's (tarfile would give the last of them, an extractor either)."""
    seen: set[str] = set()
    for member in archive.getmembers():
        name = member.name
        if name.startswith("/") or ".." in name.split("/"):
            raise BaseImageError(
                f"{path}: member {name!r}: an absolute name or one with '..' (refused)"
            )
        key = normal_name(name)
        if key in seen:
            raise BaseImageError(f"{path}: member {name!r} is in the archive twice (refused)")
        if key:
            seen.add(key)


def read_contents(archive: tarfile.TarFile, path: str) -> BaseContents:
    """The layers and config the archive's manifest.json (or index.json) names.

    Raises:
        BaseImageError: not a usable image archive (the message names the member).
        tarfile.TarError, EOFError, OSError: the archive can't be read.
    """
    check_member_names(archive, path)
    if _member(archive, "manifest.json") is None and _member(archive, "index.json") is not None:
        return _load_oci(archive, path)
    return _load_docker(archive, path)


def _json_member(archive: tarfile.TarFile, path: str, name: str) -> Any:
    member = _member(archive, name)
    if member is None:
        raise BaseImageError(f"{path}: has no {name}")
    source = archive.extractfile(member)
    if source is None:
        raise BaseImageError(f"{path}: {name} is not a regular file")
    try:
        with source:
            return json.load(source)
    except (ValueError, OSError, EOFError, tarfile.TarError) as exc:
        raise BaseImageError(f"{path}: {name} is not valid JSON: {exc}") from None


def _member(archive: tarfile.TarFile, name: str) -> tarfile.TarInfo | None:
    # OCI archives written by `tar -C dir .` name their members "./blobs/..."
    for candidate in (name, f"./{name}"):
        try:
            return archive.getmember(candidate)
        except KeyError:
            continue
    return None


def _layer_member(
    archive: tarfile.TarFile, path: str, name: str, listed_in: str
) -> tarfile.TarInfo:
    member = _member(archive, name)
    if member is None:
        raise BaseImageError(f"{path}: layer {name} is named in {listed_in} but absent")
    if not member.isfile():
        raise BaseImageError(f"{path}: layer {member.name} is not a regular file")
    if normal_name(member.name) in RESERVED_NAMES:
        raise BaseImageError(
            f"{path}: layer {member.name}: the name of a member the image archive writes (refused)"
        )
    return member


def _blob_name(path: str, descriptor: Any, what: str) -> tuple[str, Descriptor]:
    if not isinstance(descriptor, dict):
        raise BaseImageError(f"{path}: {what} is not an OCI descriptor")
    try:
        digest = Digest.parse(descriptor["digest"])
        size = descriptor["size"]
        media_type = descriptor.get("mediaType", "")
    except (KeyError, ValueError, TypeError, AttributeError):
        raise BaseImageError(f"{path}: {what} has no sha256 digest and size") from None
    if not isinstance(size, int) or not isinstance(media_type, str):
        raise BaseImageError(f"{path}: {what} has a malformed size or mediaType")
    # a layout may hold Docker's media types; an OCI manifest must name the OCI ones
    media_type = _DOCKER_LAYER_TYPES.get(media_type, media_type)
    return f"blobs/{digest.algorithm}/{digest.hex}", Descriptor(media_type, digest, size)


_DOCKER_LAYER_TYPES = {
    "application/vnd.docker.image.rootfs.diff.tar": MEDIA_TYPE_LAYER,
    "application/vnd.docker.image.rootfs.diff.tar.gzip": MEDIA_TYPE_LAYER_GZIP,
}


def _load_oci(archive: tarfile.TarFile, path: str) -> BaseContents:
    """An OCI image layout archive: index.json -> its first manifest -> config, layers."""
    index = _json_member(archive, path, "index.json")
    manifests = index.get("manifests") if isinstance(index, dict) else None
    if not isinstance(manifests, list) or not manifests:
        raise BaseImageError(f"{path}: index.json lists no manifests")
    manifest_name, _ = _blob_name(path, manifests[0], "index.json's first manifest")
    manifest = _json_member(archive, path, manifest_name)
    if not isinstance(manifest, dict) or "layers" not in manifest:
        raise BaseImageError(
            f"{path}: {manifest_name} is not an image manifest (an index of indexes?)"
        )
    config_name, _ = _blob_name(path, manifest.get("config"), f"{manifest_name}'s config")
    image = _json_member(archive, path, config_name)
    descriptors = manifest["layers"]
    if not isinstance(descriptors, list):
        raise BaseImageError(f"{path}: {manifest_name} has no layers list")
    diff_ids, config = _diff_ids(image, path, config_name, len(descriptors), manifest_name)
    layers = []
    for number, (descriptor, diff_id) in enumerate(zip(descriptors, diff_ids, strict=True)):
        name, blob = _blob_name(path, descriptor, f"{manifest_name}'s layer {number + 1}")
        member = _layer_member(archive, path, name, manifest_name)
        if member.size != blob.size:
            raise BaseImageError(
                f"{path}: layer {name}: size {blob.size} in {manifest_name} -> {member.size}"
            )
        layers.append(BaseLayer(member, _diff_id(path, diff_id), blob))
    return BaseContents(tuple(layers), config)


def _diff_id(path: str, diff_id: Any) -> Digest:
    try:
        return Digest.parse(diff_id)
    except (ValueError, AttributeError):
        raise BaseImageError(f"{path}: diff_id {diff_id!r} is not a sha256 digest") from None


def _diff_ids(
    image: Any, path: str, config_name: str, layer_count: int, listed_in: str
) -> tuple[list[Any], dict[str, Any] | None]:
    try:
        diff_ids = image["rootfs"]["diff_ids"]
        config = image.get("config")
    except (KeyError, TypeError, AttributeError):
        raise BaseImageError(f"{path}: {config_name} has no rootfs.diff_ids") from None
    if not isinstance(diff_ids, list) or len(diff_ids) != layer_count:
        count = len(diff_ids) if isinstance(diff_ids, list) else "no"
        raise BaseImageError(
            f"{path}: {listed_in} lists {layer_count} layers but {config_name} has {count} diff_ids"
        )
    if config is not None and not isinstance(config, dict):
        raise BaseImageError(f"{path}: {config_name} has a config that is not an object")
    env = (config or {}).get("Env")
    if env is not None and not (isinstance(env, list) and all(isinstance(e, str) for e in env)):
        raise BaseImageError(f"{path}: {config_name}'s config.Env is not a list of strings")
    return diff_ids, config


def _load_docker(archive: tarfile.TarFile, path: str) -> BaseContents:
    manifest = _json_member(archive, path, "manifest.json")
    if not isinstance(manifest, list) or not manifest or not isinstance(manifest[0], dict):
        raise BaseImageError(f"{path}: manifest.json is not a list of image entries")
    entry = manifest[0]
    config_name, layer_names = entry.get("Config"), entry.get("Layers")
    if not isinstance(config_name, str) or not isinstance(layer_names, list):
        raise BaseImageError(f"{path}: manifest.json lacks Config or Layers")
    for name in layer_names:
        if not isinstance(name, str):
            raise BaseImageError(
                f"{path}: manifest.json's Layers holds {json.dumps(name)[:80]}, not a member name"
            )
    image = _json_member(archive, path, config_name)
    diff_ids, config = _diff_ids(image, path, config_name, len(layer_names), "manifest.json")
    layers = []
    for name, diff_id in zip(layer_names, diff_ids, strict=True):
        member = _layer_member(archive, path, name, "manifest.json")
        layers.append(BaseLayer(member, _diff_id(path, diff_id)))
    return BaseContents(tuple(layers), config)
