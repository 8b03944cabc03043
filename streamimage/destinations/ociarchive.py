"""The OCI archive destination: one tar that is both an OCI image layout and a
docker-archive, as Docker 25+'s ``docker save`` writes it.

ASYNC; the layers come from image.Image, framed by tarball.TarWriter.
Rule: the stream needs no seeking: layers first (each as soon as its digest is known),
then the config, the OCI manifest, index.json, oci-layout and manifest.json last, so that
an archive cut short is never a loadable image.
"""

from __future__ import annotations

from streamimage.destinations.layout import BLOBS, blob_path, write_documents
from streamimage.destinations.tarball import TarWriter
from streamimage.engine.pipeline import Sink
from streamimage.image import Image, Progress
from streamimage.imagejson import LayerRecord, docker_manifest
from streamimage.layers import Layer


class TarBlobs:
    """Blobs as members of the outer tar; a digest already written is not written again."""

    def __init__(self, tar: TarWriter, progress: Progress) -> None:
        self._tar = tar
        self._progress = progress
        self._written: set[str] = set()

    async def add_layer(self, layer: Layer) -> LayerRecord:
        blob = await layer.descriptor()
        name = blob_path(blob)
        if name not in self._written:
            header = self._tar.header(name, blob.size)
            await self._tar.add_stream(header, blob.size, layer.chunks(), name)
            self._written.add(name)
        else:
            self._progress.skip(blob.size)
        return LayerRecord(await layer.diff_id(), name, layer.history, blob)

    async def add_file(self, name: str, data: bytes) -> None:
        if name not in self._written:
            await self._tar.add_bytes(name, data)
            self._written.add(name)


async def write_oci_archive(image: Image, sink: Sink) -> None:
    """Write ``image`` to ``sink`` as one tar that is an OCI image layout and a
    docker-archive (its manifest.json names the same blobs).

    Raises:
        StreamImageError: any failure; the archive is then left without manifest.json.
    """
    tar = TarWriter(sink, image.build.conf.mtime)
    await tar.add_directory("blobs/")
    await tar.add_directory(f"{BLOBS}/")
    store = TarBlobs(tar, image.build.progress)
    records = await image.write_layers(store)
    config_path = await write_documents(image, records, store)
    members = [r.member for r in records]
    await tar.add_bytes(
        "manifest.json", docker_manifest(config_path, image.build.conf.repo_tag, members)
    )
    await tar.close()
