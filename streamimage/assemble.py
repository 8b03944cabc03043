"""The layer sequence every image writer shares: base layers, store layers, customisation.

ASYNC; knows the order of an image's layers and the pass that proves each one, not where
the layers go (a LayerWriter: tar members of docker.py or oci.py, files of an OCI layout).
Rule 1: a layer's stored digest and size are known before its first byte is written:
store layers are hashed ahead (HashPass, compressing too when asked), the customisation
layer is verified (and compressed) by a hash pass, a base layer is described by its base
(OCI) or hashed as stored (docker-archive) when the writer needs its digest.
Rule 2: every store layer streamed is held to its hash pass's witness, so the image's
digests describe exactly the bytes written.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

import anyio
import anyio.to_thread
from anyio.from_thread import check_cancelled

from streamimage.baseimage import BaseImage, BaseLayer
from streamimage.customisation import Customisation
from streamimage.hashpass import HashPass, Timeline
from streamimage.imagejson import (
    MEDIA_TYPE_LAYER,
    MEDIA_TYPE_LAYER_GZIP,
    Descriptor,
    Digest,
    LayerRecord,
)
from streamimage.layer import Chunk
from streamimage.pipeline import ContentHash, hash_chunks
from streamimage.report import Reporter
from streamimage.spec import UNCOMPRESSED, Compression, Conf, Options
from streamimage.spool import spool_budget
from streamimage.tarheader import HeaderEncoder
from streamimage.walk import Entry

BASE = "base"
STORE = "store"
CUSTOMISATION = "customisation"


@dataclass(frozen=True, slots=True)
class PlannedLayer:
    """One layer about to be written: what it is, and what its chunks will amount to."""

    kind: str  # BASE, STORE or CUSTOMISATION
    diff_id: Digest
    size: int  # uncompressed (a base layer: as stored)
    blob: Descriptor | None  # as stored; None for a base layer the writer didn't describe
    compression: Compression  # of the layer as stored
    comment_paths: tuple[str, ...]
    base_layer: BaseLayer | None = None
    stored: bool = False  # the chunks yield the layer as stored (compressed by its hash pass)

    @property
    def blob_size(self) -> int:
        """How many bytes the stored layer has."""
        return self.size if self.blob is None else self.blob.size

    @property
    def applied(self) -> Compression:
        """The compression to apply to the chunks on the way out."""
        return UNCOMPRESSED if self.stored else self.compression

    @property
    def yielded(self) -> int:
        """How many bytes the chunks yield."""
        return self.blob_size if self.stored else self.size


class LayerWriter(Protocol):
    """Where an image's layers go."""

    def existing(self, layer: PlannedLayer) -> str | None:
        """The name of an identical blob already written (then the layer is not written
        again), else None."""
        ...

    async def add_layer(self, layer: PlannedLayer, chunks: Iterator[Chunk]) -> str:
        """Write the layer, compressing as ``layer.applied`` says; return its name.

        Raises:
            ChangedError: the chunks did not amount to ``layer.yielded`` bytes.
            OutputError: writing failed.
        """
        ...


def _counting(check: Callable[[Entry], None], reporter: Reporter) -> Callable[[Entry], None]:
    """The stream pass's per-entry check, counting entries for the progress display."""

    def on_entry(entry: Entry) -> None:
        check(entry)
        reporter.files += 1

    return on_entry


def layer_media_type(compression: Compression) -> str:
    """The OCI media type of a layer this tool builds."""
    return MEDIA_TYPE_LAYER_GZIP if compression.enabled else MEDIA_TYPE_LAYER


@dataclass(frozen=True, slots=True)
class WrittenLayers:
    records: list[LayerRecord]
    timelines: list[Timeline]


async def write_layers(
    conf: Conf,
    base: BaseImage | None,
    customisation: Customisation,
    reporter: Reporter,
    options: Options,
    writer: LayerWriter,
    *,
    describe_base: bool,
) -> WrittenLayers:
    """Write every layer of the image through ``writer``, in the reference's order and with
    its progress lines; ``describe_base``: find each base layer's stored digest first.

    Raises:
        StreamImageError: any failure (StoreError, ChangedError, CustomisationError, ...).
    """
    compression: Compression = options.compression
    encoder = HeaderEncoder(
        uid=conf.uid, gid=conf.gid, uname=conf.uname, gname=conf.gname, mtime=conf.mtime
    )
    timelines = [Timeline() for _ in conf.store_layers]
    records: list[LayerRecord] = []
    custom_hash: list[ContentHash] = []
    custom_done = anyio.Event()

    async def verify_customisation() -> None:
        span = customisation.span
        if compression.enabled:
            found = await hash_chunks(iter([span]), compression)
            customisation.check(found.diff_id)
            custom_hash.append(found)
        else:
            await anyio.to_thread.run_sync(customisation.verify, check_cancelled)
            diff_id = customisation.diff_id
            custom_hash.append(ContentHash(diff_id, span.size, diff_id, span.size))
        custom_done.set()

    async def put(layer: PlannedLayer, chunks: Iterator[Chunk]) -> str:
        name = writer.existing(layer)
        if name is None:
            return await writer.add_layer(layer, chunks)
        close = getattr(chunks, "close", None)
        if close is not None:
            close()
        return name

    hashes = HashPass(
        conf.store_layers,
        encoder,
        options.hash_workers,
        timelines,
        processes=options.hash_in_processes,
        compression=compression,
        spool=spool_budget(options.spool_dir, options.spool_max, 2 * len(conf.store_layers)),
    )
    try:
        async with anyio.create_task_group() as tg:
            hashes.start(tg)
            tg.start_soon(verify_customisation)

            if base is None:
                reporter.line("No 'fromImage' provided")
            else:
                for number, layer in enumerate(base.layers, start=1):
                    blob = None
                    if describe_base:
                        blob = await anyio.to_thread.run_sync(base.describe, layer)
                    planned = PlannedLayer(
                        BASE, layer.diff_id, layer.size, blob, UNCOMPRESSED, (layer.name,), layer
                    )
                    name = await put(planned, base.chunks(layer))
                    reporter.line(f"Adding base layer {number} from {layer.name}")
                    records.append(LayerRecord(layer.diff_id, name, [layer.name], blob))

            media_type = layer_media_type(compression)
            for index, paths in enumerate(conf.store_layers):
                reporter.line(f"Creating layer {len(records) + 1} from paths: {list(paths)!r}")
                result = await hashes.result(index)
                blob = Descriptor(media_type, result.blob_digest, result.blob_size)
                planned = PlannedLayer(
                    STORE,
                    result.diff_id,
                    result.size,
                    blob,
                    compression,
                    paths,
                    stored=result.stored,
                )
                timelines[index].stream_start = time.monotonic()
                found_name = writer.existing(planned)
                if found_name is None:
                    on_entry = _counting(result.witness.check, reporter)
                    name = await writer.add_layer(planned, hashes.chunks(index, result, on_entry))
                    result.witness.check_complete(name)
                else:
                    name = found_name
                hashes.release(index)
                timelines[index].stream_end = time.monotonic()
                records.append(LayerRecord(result.diff_id, name, paths, blob))

            reporter.line(f"Creating layer {len(records) + 1} with customisation...")
            await custom_done.wait()
            found = custom_hash[0]
            blob = Descriptor(media_type, found.blob_digest, found.blob_size)
            planned = PlannedLayer(
                CUSTOMISATION,
                found.diff_id,
                found.size,
                blob,
                compression,
                (customisation.directory,),
            )
            name = await put(planned, iter([customisation.span]))
            records.append(LayerRecord(found.diff_id, name, [customisation.directory], blob))
    finally:
        hashes.close()
    return WrittenLayers(records, timelines)
