"""The OCI writers: one tar that is both an OCI image layout and a docker-archive (as
Docker 25+'s ``docker save`` writes it), and an OCI image layout directory.

ASYNC; the layer sequence comes from assemble.write_layers, like docker.py's.
Rule 1: every blob is ``blobs/sha256/<hex>`` of its own bytes, written once; the stream
needs no seeking: layers first (each as soon as its digest is known), then the config,
the OCI manifest, index.json, oci-layout and, in the tar, manifest.json last, so that an
archive cut short is never a loadable image.
Rule 2: a directory is built beside its destination and renamed into place only when
complete; a failure leaves the destination as it was.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from typing import Protocol

import anyio.to_thread

from streamimage.assemble import LayerWriter, PlannedLayer, write_layers
from streamimage.baseimage import BaseImage
from streamimage.compress import CompressingSink
from streamimage.customisation import Customisation
from streamimage.errors import ChangedError, OutputError
from streamimage.imagejson import (
    MEDIA_TYPE_CONFIG,
    MEDIA_TYPE_MANIFEST,
    OCI_LAYOUT,
    Descriptor,
    LayerRecord,
    docker_manifest,
    image_config,
    image_ref_annotations,
    merge_env,
    oci_index,
    oci_manifest,
)
from streamimage.layer import Chunk
from streamimage.pipeline import FdSink, Sink, output_error, stream_chunks
from streamimage.report import Reporter
from streamimage.spec import Conf, Options
from streamimage.tarwriter import TarWriter

BLOBS = "blobs/sha256"
LAYOUT_FILE = "oci-layout"
INDEX_FILE = "index.json"
BLOB_MODE = 0o644  # of files in an oci-dir layout, as `docker save` and skopeo write them


def blob_path(descriptor: Descriptor) -> str:
    return f"blobs/{descriptor.digest.algorithm}/{descriptor.digest.hex}"


class BlobStore(LayerWriter, Protocol):
    """Where an OCI writer puts blobs and the layout's own files."""

    async def add_file(self, name: str, data: bytes) -> None: ...


async def _write_documents(
    conf: Conf,
    base: BaseImage | None,
    records: list[LayerRecord],
    store: BlobStore,
) -> str:
    """Config, OCI manifest, index.json and oci-layout; returns the config's blob path."""
    config = merge_env(base.config, conf.config) if base is not None else conf.config
    config_json = image_config(
        created=conf.created, architecture=conf.architecture, config=config, layers=records
    )
    config_blob = Descriptor.of(MEDIA_TYPE_CONFIG, config_json)
    layers = []
    for record in records:
        if record.blob is None:  # write_layers describes every layer when asked to
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
        image_ref_annotations(conf.repo_tag),
    )
    await store.add_file(INDEX_FILE, oci_index([annotated]))
    await store.add_file(LAYOUT_FILE, OCI_LAYOUT)
    return blob_path(config_blob)


class TarBlobs:
    """Blobs as members of the outer tar; a digest already written is not written again."""

    def __init__(self, tar: TarWriter) -> None:
        self._tar = tar
        self._written: set[str] = set()

    def existing(self, layer: PlannedLayer) -> str | None:
        assert layer.blob is not None
        name = blob_path(layer.blob)
        return name if name in self._written else None

    async def add_layer(self, layer: PlannedLayer, chunks: Iterator[Chunk]) -> str:
        assert layer.blob is not None
        name = blob_path(layer.blob)
        header = self._tar.header(name, layer.blob.size)
        await self._tar.add_stream(
            header, layer.blob.size, chunks, name, layer.applied, content_size=layer.yielded
        )
        self._written.add(name)
        return name

    async def add_file(self, name: str, data: bytes) -> None:
        if name not in self._written:
            await self._tar.add_bytes(name, data)
            self._written.add(name)


async def write_oci_archive(
    conf: Conf,
    base: BaseImage | None,
    customisation: Customisation,
    sink: Sink,
    reporter: Reporter,
    options: Options,
) -> None:
    """Write the image to ``sink`` as one tar that is an OCI image layout and a
    docker-archive (its manifest.json names the same blobs).

    Raises:
        StreamImageError: any failure; the archive is then left without manifest.json.
    """
    tar = TarWriter(sink, conf.mtime)
    await tar.add_directory("blobs/")
    await tar.add_directory(f"{BLOBS}/")
    store = TarBlobs(tar)
    written = await write_layers(
        conf, base, customisation, reporter, options, store, describe_base=True
    )
    reporter.line("Adding manifests...")
    records = written.records
    config_path = await _write_documents(conf, base, records, store)
    await tar.add_bytes(
        "manifest.json", docker_manifest(config_path, conf.repo_tag, [r.member for r in records])
    )
    await tar.close()
    reporter.line("Done.")
    reporter.timeline([f"layer {i + 1}" for i in range(len(written.timelines))], written.timelines)
    reporter.summary(len(records), sink.written)


class DirBlobs:
    """Blobs as files under ``root`` (the temporary directory being built)."""

    def __init__(self, root: str) -> None:
        self.root = root
        self.written = 0  # bytes, for the summary
        self._names: set[str] = set()

    def existing(self, layer: PlannedLayer) -> str | None:
        assert layer.blob is not None
        name = blob_path(layer.blob)
        return name if name in self._names else None

    def _open(self, name: str) -> int:
        path = os.path.join(self.root, name)
        try:
            return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, BLOB_MODE)
        except OSError as exc:
            raise output_error(path, exc) from exc

    async def add_layer(self, layer: PlannedLayer, chunks: Iterator[Chunk]) -> str:
        blob = layer.blob
        assert blob is not None
        name = blob_path(blob)
        fd = await anyio.to_thread.run_sync(self._open, name)
        try:
            sink = FdSink(fd, os.path.join(self.root, name))
            if layer.applied.enabled:
                encoder = CompressingSink(sink, layer.applied)
                content = await stream_chunks(chunks, encoder)
                await encoder.close()
            else:
                content = await stream_chunks(chunks, sink)
        finally:
            os.close(fd)
        if content != layer.yielded or sink.written != blob.size:
            raise ChangedError(
                f"{name}: {layer.yielded} bytes ({blob.size} stored) hashed but {content} "
                f"({sink.written} stored) streamed"
            )
        self._names.add(name)
        self.written += blob.size
        return name

    def _write_file(self, name: str, data: bytes) -> None:
        fd = self._open(name)
        sink_name = os.path.join(self.root, name)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        except OSError as exc:
            raise output_error(sink_name, exc) from exc
        finally:
            os.close(fd)

    async def add_file(self, name: str, data: bytes) -> None:
        if name not in self._names:
            await anyio.to_thread.run_sync(self._write_file, name, data)
            self._names.add(name)
            self.written += len(data)


def _make_temporary(destination: str) -> str:
    """Raises: OutputError: it can't be created beside ``destination``."""
    parent, name = os.path.split(os.path.abspath(destination))
    try:
        root = tempfile.mkdtemp(prefix=f".{name}.", suffix=".part", dir=parent)
        os.chmod(root, 0o755)  # mkdtemp makes 0700; a layout is for others to read too
        os.makedirs(os.path.join(root, BLOBS))
    except OSError as exc:
        raise OutputError(f"{destination}: cannot create: {exc.strerror or exc}") from None
    return root


def _replaceable(destination: str) -> bool:
    # Only an empty directory or an OCI layout is swapped out: never someone's other files.
    try:
        names = os.listdir(destination)
    except FileNotFoundError:
        return True
    except NotADirectoryError:
        return False
    return not names or LAYOUT_FILE in names


def _put_in_place(root: str, destination: str) -> None:
    """Rename the finished layout to ``destination``, replacing an old layout there.

    Raises:
        OutputError: destination holds something other than an OCI layout, or renaming fails.
    """
    if not _replaceable(destination):
        raise OutputError(f"{destination}: exists and is not an OCI image layout; not replacing it")
    try:
        if os.path.lexists(destination):
            parent, name = os.path.split(os.path.abspath(destination))
            old = tempfile.mkdtemp(prefix=f".{name}.", suffix=".old", dir=parent)
            os.rename(destination, os.path.join(old, name))
            os.rename(root, destination)
            shutil.rmtree(old)
        else:
            os.rename(root, destination)
    except OSError as exc:
        raise OutputError(f"{destination}: cannot put the layout in place: {exc}") from None


async def write_oci_dir(
    conf: Conf,
    base: BaseImage | None,
    customisation: Customisation,
    destination: str,
    reporter: Reporter,
    options: Options,
) -> None:
    """Write the image as an OCI image layout directory ``destination``.

    Raises:
        StreamImageError: any failure; ``destination`` is then left as it was.
    """
    if not _replaceable(destination):
        raise OutputError(f"{destination}: exists and is not an OCI image layout; not replacing it")
    root = await anyio.to_thread.run_sync(_make_temporary, destination)
    try:
        store = DirBlobs(root)
        written = await write_layers(
            conf, base, customisation, reporter, options, store, describe_base=True
        )
        reporter.line("Adding manifests...")
        await _write_documents(conf, base, written.records, store)
        await anyio.to_thread.run_sync(_put_in_place, root, destination)
    except BaseException:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(shutil.rmtree, root, True)
        raise
    reporter.line("Done.")
    reporter.timeline([f"layer {i + 1}" for i in range(len(written.timelines))], written.timelines)
    reporter.summary(len(written.records), store.written)
