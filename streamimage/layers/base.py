"""A base image's layers: reading a from_image archive (a docker-archive or an OCI image
layout archive, plain or gzip-compressed; a Docker 25+ archive, which is both, is read as a
docker-archive), and each of its layers as a Layer, copied as stored.

IO: opens the archive with ``tarfile`` (reading archives is what tarfile is for).
Rule: everything the image needs from the base is checked when it is opened, before a
byte is written: manifest.json, the config it names, every layer it lists, and as many
diff_ids as layers; each failure is a BaseImageError naming the archive and the member.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import anyio.to_thread

from streamimage.engine.framing import Chunk
from streamimage.errors import BaseImageError
from streamimage.imagejson import (
    MEDIA_TYPE_LAYER,
    MEDIA_TYPE_LAYER_GZIP,
    Descriptor,
    Digest,
    layer_media_type,
)
from streamimage.layers import BASE, Layer, Once, TarMember
from streamimage.tarheader import Member, encode_header

READ_SIZE = 1024 * 1024  # bytes per read when copying a base layer


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
class BaseImage:
    """An opened base image; ``close`` it when done."""

    path: str
    archive: tarfile.TarFile
    layers: tuple[BaseLayer, ...]
    config: dict[str, Any] | None  # the "config" object of its image config

    def chunks(self, layer: BaseLayer) -> Iterator[bytes]:
        """The content of one base layer, in reads of READ_SIZE (blocking)."""
        source = self.archive.extractfile(layer.member)
        if source is None:
            raise BaseImageError(f"{self.path}: layer {layer.name} is not a regular file")
        with source:
            try:
                while data := source.read(READ_SIZE):
                    yield data
            except (OSError, EOFError, tarfile.TarError) as exc:
                raise BaseImageError(f"{self.path}: cannot read layer {layer.name}: {exc}") from exc

    def describe(self, layer: BaseLayer) -> Descriptor:
        """The layer's descriptor as stored: the base's own, else found by reading the
        layer (sha256, size, media type by its magic number) (blocking).

        Raises:
            BaseImageError: it can't be read.
        """
        if layer.blob is not None:
            return layer.blob
        digest = hashlib.sha256()
        head = b""
        size = 0
        for data in self.chunks(layer):
            if not head:
                head = data[:8]
            digest.update(data)
            size += len(data)
        return Descriptor(layer_media_type(head), Digest(digest.hexdigest()), size)

    def close(self) -> None:
        self.archive.close()


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


def _load_oci(archive: tarfile.TarFile, path: str) -> BaseImage:
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
        member = _member(archive, name)
        if member is None:
            raise BaseImageError(f"{path}: layer {name} is named in {manifest_name} but absent")
        _check_file(path, member)
        if member.size != blob.size:
            raise BaseImageError(
                f"{path}: layer {name}: size {blob.size} in {manifest_name} -> {member.size}"
            )
        layers.append(BaseLayer(member, _diff_id(path, diff_id), blob))
    return BaseImage(path, archive, tuple(layers), config)


def _check_file(path: str, member: tarfile.TarInfo) -> None:
    if not member.isfile():
        raise BaseImageError(f"{path}: layer {member.name} is not a regular file")


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


def _load(archive: tarfile.TarFile, path: str) -> BaseImage:
    if _member(archive, "manifest.json") is None and _member(archive, "index.json") is not None:
        return _load_oci(archive, path)
    manifest = _json_member(archive, path, "manifest.json")
    if not isinstance(manifest, list) or not manifest or not isinstance(manifest[0], dict):
        raise BaseImageError(f"{path}: manifest.json is not a list of image entries")
    entry = manifest[0]
    config_name, layer_names = entry.get("Config"), entry.get("Layers")
    if not isinstance(config_name, str) or not isinstance(layer_names, list):
        raise BaseImageError(f"{path}: manifest.json lacks Config or Layers")
    image = _json_member(archive, path, config_name)
    diff_ids, config = _diff_ids(image, path, config_name, len(layer_names), "manifest.json")
    layers = []
    for name, diff_id in zip(layer_names, diff_ids, strict=True):
        member = _member(archive, name) if isinstance(name, str) else None
        if member is None:
            raise BaseImageError(f"{path}: layer {name} is named in manifest.json but absent")
        _check_file(path, member)
        layers.append(BaseLayer(member, _diff_id(path, diff_id)))
    return BaseImage(path, archive, tuple(layers), config)


def open_base_image(path: str) -> BaseImage:
    """Open and check a base image archive (blocking).

    Raises:
        BaseImageError: missing, not a tar (plain or gzip), or not a usable image.
    """
    try:
        # only a regular file: a device or FIFO (/dev/zero) would be read for ever
        regular = stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        regular = True  # tarfile.open says what is wrong
    if not regular and not os.path.isdir(path):
        raise BaseImageError(f"{path}: from_image is not a regular file")
    try:
        archive = tarfile.open(path)  # noqa: SIM115 (BaseImage owns it; closed by .close)
    except FileNotFoundError:
        raise BaseImageError(f"{path}: from_image does not exist") from None
    except IsADirectoryError:
        raise BaseImageError(f"{path}: from_image is a directory, not an image archive") from None
    except OSError as exc:
        raise BaseImageError(f"{path}: cannot read from_image: {exc.strerror or exc}") from None
    except (tarfile.TarError, EOFError) as exc:
        # tarfile lists every method it tried, one per line: the first line says enough
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise BaseImageError(f"{path}: from_image is not a tar archive: {reason}") from None
    try:
        return _load(archive, path)
    except (tarfile.TarError, EOFError, OSError) as exc:
        archive.close()
        raise BaseImageError(f"{path}: from_image is cut short or damaged: {exc}") from None
    except BaseException:
        archive.close()
        raise


class BaseImageLayer(Layer):
    """One layer of the base image, copied into the new image as it is stored there."""

    kind = BASE

    def __init__(self, image: BaseImage, layer: BaseLayer) -> None:
        self.history = (layer.name,)
        self._image = image
        self._layer = layer
        self._described = Once(self._describe)

    async def diff_id(self) -> Digest:
        return self._layer.diff_id

    async def descriptor(self) -> Descriptor:
        return await self._described()

    async def _describe(self) -> Descriptor:
        return await anyio.to_thread.run_sync(self._image.describe, self._layer)

    def known_size(self) -> int:
        return self._layer.size  # copied as stored: the member's size

    def chunks(self) -> Iterator[Chunk]:
        return self._image.chunks(self._layer)

    def docker_member(self, name: str) -> TarMember:
        # the reference copies a base layer's member as it is: its name and header
        return TarMember(self._layer.name, self._layer.header(), self._layer.size)
