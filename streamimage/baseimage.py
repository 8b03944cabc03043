"""Reading a from_image archive: a docker-archive, plain or gzip-compressed.

IO: opens the archive with ``tarfile`` (reading archives is what tarfile is for).
Rule: everything the image needs from the base is checked when it is opened, before a
byte is written: manifest.json, the config it names, every layer it lists, and as many
diff_ids as layers; each failure is a BaseImageError naming the archive and the member.
"""

from __future__ import annotations

import json
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from streamimage.errors import BaseImageError
from streamimage.imagejson import Digest
from streamimage.tarheader import Member, encode_header

READ_SIZE = 1024 * 1024  # bytes per read when copying a base layer


@dataclass(frozen=True, slots=True)
class BaseLayer:
    """One layer of the base image, copied into the new image as it is."""

    member: tarfile.TarInfo
    diff_id: Digest

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

    def close(self) -> None:
        self.archive.close()


def _json_member(archive: tarfile.TarFile, path: str, name: str) -> Any:
    try:
        member = archive.getmember(name)
    except KeyError:
        raise BaseImageError(f"{path}: has no {name}") from None
    source = archive.extractfile(member)
    if source is None:
        raise BaseImageError(f"{path}: {name} is not a regular file")
    try:
        with source:
            return json.load(source)
    except (ValueError, OSError, EOFError, tarfile.TarError) as exc:
        raise BaseImageError(f"{path}: {name} is not valid JSON: {exc}") from None


def _load(archive: tarfile.TarFile, path: str) -> BaseImage:
    manifest = _json_member(archive, path, "manifest.json")
    if not isinstance(manifest, list) or not manifest or not isinstance(manifest[0], dict):
        raise BaseImageError(f"{path}: manifest.json is not a list of image entries")
    entry = manifest[0]
    config_name, layer_names = entry.get("Config"), entry.get("Layers")
    if not isinstance(config_name, str) or not isinstance(layer_names, list):
        raise BaseImageError(f"{path}: manifest.json lacks Config or Layers")
    image = _json_member(archive, path, config_name)
    try:
        diff_ids = image["rootfs"]["diff_ids"]
        config = image.get("config")
    except (KeyError, TypeError, AttributeError):
        raise BaseImageError(f"{path}: {config_name} has no rootfs.diff_ids") from None
    if not isinstance(diff_ids, list) or len(diff_ids) != len(layer_names):
        count = len(diff_ids) if isinstance(diff_ids, list) else "no"
        raise BaseImageError(
            f"{path}: manifest.json lists {len(layer_names)} layers but {config_name} "
            f"has {count} diff_ids"
        )
    layers = []
    for name, diff_id in zip(layer_names, diff_ids, strict=True):
        try:
            member = archive.getmember(name)
        except KeyError:
            raise BaseImageError(
                f"{path}: layer {name} is named in manifest.json but absent"
            ) from None
        try:
            digest = Digest.parse(diff_id)
        except (ValueError, AttributeError):
            raise BaseImageError(f"{path}: diff_id {diff_id!r} is not a sha256 digest") from None
        layers.append(BaseLayer(member, digest))
    if config is not None and not isinstance(config, dict):
        raise BaseImageError(f"{path}: {config_name} has a config that is not an object")
    return BaseImage(path, archive, tuple(layers), config)


def open_base_image(path: str) -> BaseImage:
    """Open and check a base image archive (blocking).

    Raises:
        BaseImageError: missing, not a tar (plain or gzip), or not a usable image.
    """
    try:
        archive = tarfile.open(path)  # noqa: SIM115 (BaseImage owns it; closed by .close)
    except FileNotFoundError:
        raise BaseImageError(f"{path}: from_image does not exist") from None
    except IsADirectoryError:
        raise BaseImageError(f"{path}: from_image is a directory, not an image archive") from None
    except OSError as exc:
        raise BaseImageError(f"{path}: cannot read from_image: {exc.strerror or exc}") from None
    except (tarfile.TarError, EOFError) as exc:
        raise BaseImageError(f"{path}: from_image is not a tar archive: {exc}") from None
    try:
        return _load(archive, path)
    except BaseException:
        archive.close()
        raise
