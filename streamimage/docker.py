"""The docker-archive writer: the reference's image, member for member.

ASYNC; the layer sequence comes from assemble.write_layers, framed by tarwriter.
Rule: members in the reference's order (base layers, store layers, customisation layer,
config, manifest.json last); manifest.json is written only once every layer is proved,
so an archive cut short by any failure is never a loadable image.
"""

from __future__ import annotations

from collections.abc import Iterator

from streamimage.assemble import BASE, CUSTOMISATION, PlannedLayer, write_layers
from streamimage.baseimage import BaseImage
from streamimage.customisation import Customisation
from streamimage.imagejson import Digest, docker_manifest, image_config, merge_env
from streamimage.layer import Chunk
from streamimage.pipeline import Sink
from streamimage.report import Reporter
from streamimage.spec import Conf, Options
from streamimage.tarwriter import TarWriter


class DockerLayers:
    """Layers as the reference names them: ``<diff_id>/layer.tar`` (``layer.tar.gz`` when
    compressed: clients accept gzip members, FORMATS.md); base layers keep their names and
    headers; the uncompressed customisation layer keeps layer.tar's owner and mode."""

    def __init__(self, tar: TarWriter, customisation: Customisation, mtime: int) -> None:
        self._tar = tar
        self._customisation = customisation
        self._mtime = mtime

    def existing(self, layer: PlannedLayer) -> str | None:
        return None  # the reference writes a repeated layer again

    async def add_layer(self, layer: PlannedLayer, chunks: Iterator[Chunk]) -> str:
        tar = self._tar
        if layer.kind == BASE:
            assert layer.base_layer is not None
            name = layer.base_layer.name
            header = layer.base_layer.header()
        elif layer.compression.enabled:
            name = f"{layer.diff_id.hex}/layer.tar.gz"
            header = tar.header(name, layer.blob_size)
        elif layer.kind == CUSTOMISATION:
            name = f"{layer.diff_id.hex}/layer.tar"
            header = self._customisation.header(name, self._mtime)
        else:
            name = f"{layer.diff_id.hex}/layer.tar"
            header = tar.header(name, layer.size)
        await tar.add_stream(
            header, layer.blob_size, chunks, name, layer.applied, content_size=layer.yielded
        )
        return name


async def write_docker_archive(
    conf: Conf,
    base: BaseImage | None,
    customisation: Customisation,
    sink: Sink,
    reporter: Reporter,
    options: Options,
) -> None:
    """Write the image as a docker-archive to ``sink``.

    Raises:
        StreamImageError: any failure; the archive is then left without manifest.json.
    """
    tar = TarWriter(sink, conf.mtime)
    layers = DockerLayers(tar, customisation, conf.mtime)
    written = await write_layers(
        conf, base, customisation, reporter, options, layers, describe_base=False
    )
    records = written.records

    reporter.line("Adding manifests...")
    config = merge_env(base.config, conf.config) if base is not None else conf.config
    config_json = image_config(
        created=conf.created, architecture=conf.architecture, config=config, layers=records
    )
    config_name = f"{Digest.of(config_json).hex}.json"
    await tar.add_bytes(config_name, config_json)
    await tar.add_bytes(
        "manifest.json",
        docker_manifest(config_name, conf.repo_tag, [r.member for r in records]),
    )
    await tar.close()
    reporter.line("Done.")
    reporter.timeline([f"layer {i + 1}" for i in range(len(written.timelines))], written.timelines)
    reporter.summary(len(records), sink.written)
