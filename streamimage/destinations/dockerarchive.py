"""The docker-archive destination: the reference's image, member for member.

ASYNC; the layers come from image.Image, framed by tarball.TarWriter.
Rule: members in the reference's order (base layers, store layers, customisation layer,
config, manifest.json last); manifest.json is written only once every layer is proved,
so an archive cut short by any failure is never a loadable image.
"""

from __future__ import annotations

from streamimage.destinations.tarball import TarWriter
from streamimage.engine.pipeline import Sink
from streamimage.errors import BaseImageError
from streamimage.image import Image
from streamimage.imagejson import (
    MEDIA_TYPE_LAYER_GZIP,
    MEDIA_TYPE_LAYER_ZSTD,
    Digest,
    LayerRecord,
    docker_manifest,
)
from streamimage.layers import Layer

# A compressed layer's member name: clients read gzip members (FORMATS.md)
_SUFFIXES = {MEDIA_TYPE_LAYER_GZIP: ".gz", MEDIA_TYPE_LAYER_ZSTD: ".zst"}


class DockerLayers:
    """Layers as the reference names them: ``<diff_id>/layer.tar`` (``layer.tar.gz`` when
    compressed); a layer that keeps its origin's member (a base layer, the uncompressed
    customisation layer) keeps its name or header."""

    def __init__(self, tar: TarWriter) -> None:
        self._tar = tar
        self._written: dict[str, Digest] = {}  # member name -> the diff_id written there

    async def add_layer(self, layer: Layer) -> LayerRecord:
        # the reference writes a repeated layer again: no check for one already written
        diff_id = await layer.diff_id()
        member = layer.docker_member(f"{diff_id.hex}/layer.tar")
        if member is None:
            blob = await layer.descriptor()
            name = f"{diff_id.hex}/layer.tar{_SUFFIXES.get(blob.media_type, '')}"
            header, size = self._tar.header(name, blob.size), blob.size
        else:
            name, header, size = member.name, member.header, member.size
        there = self._written.setdefault(name, diff_id)
        if there != diff_id:
            # a base layer keeps its own member name: one that a later layer's name is
            # would leave two layers in one place (the same layer twice is the reference's)
            raise BaseImageError(
                f"{name}: a base layer's member name, also the name of a layer with another "
                f"diff_id ({there}, then {diff_id}) (refused)"
            )
        await self._tar.add_stream(header, size, layer.chunks(), name)
        return LayerRecord(diff_id, name, layer.history)


async def write_docker_archive(image: Image, sink: Sink) -> None:
    """Write ``image`` as a docker-archive to ``sink``.

    Raises:
        StreamImageError: any failure; the archive is then left without manifest.json.
    """
    tar = TarWriter(sink, image.build.conf.mtime)
    records = await image.write_layers(DockerLayers(tar))
    config_json = image.config_json(records)
    config_name = f"{Digest.of(config_json).hex}.json"
    await tar.add_bytes(config_name, config_json)
    manifest = docker_manifest(config_name, image.build.conf.repo_tag, [r.member for r in records])
    await tar.add_bytes("manifest.json", manifest)
    await tar.close()
