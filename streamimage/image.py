"""One image: its layers in order (base, store, customisation), their hash passes, and
the config that describes them.

ASYNC; knows the order of an image's layers and what the reference prints as each one
goes out, not where they go (a LayerWriter: destinations/).
Rule 1: a layer's digests are known before its first byte is written: store layers are
hashed ahead (the engine's HashPass), the customisation layer is verified, a base layer is
described when the destination asks (layers/); but for a store layer its writer was
asked to hash as it writes (``start``'s stream_misses: a push to a new repository).
Rule 2: the image's documents are made from the records the destination returned for
the layers it wrote, so they describe exactly the bytes written.
"""

from __future__ import annotations

import os
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import anyio
from anyio.abc import TaskGroup

from streamimage.engine.cache import CacheUnavailable, KeyContext, LayerCache, open_cache
from streamimage.engine.frames import FRAMES_DIR, FrameStore
from streamimage.engine.scheduler import HashPass
from streamimage.engine.spool import spool_budget
from streamimage.engine.timeline import Timeline
from streamimage.imagejson import LayerRecord, image_config, merge_env
from streamimage.layers import BASE, STORE, Layer
from streamimage.layers.base import BaseImage, BaseImageLayer
from streamimage.layers.compressed import CompressedLayer
from streamimage.layers.customisation import Customisation, CustomisationLayer
from streamimage.layers.store import StoreLayer
from streamimage.options import Options
from streamimage.spec import Conf
from streamimage.tarheader import HeaderEncoder


class Meter(Protocol):
    """A count of bytes sent that grows as they go: a sink's, an upload's."""

    @property
    def written(self) -> int:
        """Bytes sent so far; read a few times a second, from the event loop."""
        ...


class Progress(Protocol):
    """Where the reference's lines go, and what the progress display counts: the store
    entries streamed, the layers, the bytes sent. Each call is once per layer or blob,
    never per chunk: the display reads the counters (``Meter.written``,
    ``Layer.known_size``) on its own, a few times a second."""

    files: int

    def line(self, text: str) -> None: ...

    def warn(self, text: str) -> None:
        """Something the user may want to know (shown with -v), never a failure."""
        ...

    def plan(self, layers: Sequence[Layer]) -> None:
        """The image's layers, in the order they are written (their sizes are read as
        they become known): the total is theirs, the documents are not counted."""
        ...

    def layer(self, number: int) -> None:
        """Layer ``number`` (1-based, of those planned) is being written."""
        ...

    def watch(self, meter: Meter) -> None:
        """Count ``meter.written`` as bytes of layers sent: a destination calls this for
        each sink or upload it opens (the output file or stdout, given to the display,
        is counted already)."""
        ...

    def skip(self, size: int) -> None:
        """A blob of ``size`` bytes that the destination won't send (it has it already,
        or the registry does): it leaves the total."""
        ...


class LayerWriter(Protocol):
    """A destination's side: where an image's layers go."""

    async def add_layer(self, layer: Layer) -> LayerRecord:
        """Write ``layer`` (unless the destination holds its blob already) and say what
        the image's documents are to say of it.

        Raises:
            ChangedError: the layer's bytes were not the ones described.
            OutputError: writing failed.
        """
        ...


@dataclass(frozen=True, slots=True)
class Build:
    """One run's context: the conf (what to build), the options (how), what was opened
    of it (a base image, the customisation layer), and where progress goes."""

    conf: Conf
    options: Options
    base: BaseImage | None
    customisation: Customisation
    progress: Progress


class Image:
    """The image of a Build: ``layers`` in the reference's order."""

    def __init__(self, build: Build) -> None:
        conf, options = build.conf, build.options
        self.build = build
        store_layers = conf.store_layers
        encoder = HeaderEncoder(
            uid=conf.uid, gid=conf.gid, uname=conf.uname, gname=conf.gname, mtime=conf.mtime
        )
        self._cache = self._open_cache(build)
        self._hashes = HashPass(
            store_layers,
            encoder,
            options.compression,
            workers=options.hash_workers,
            processes=options.hash_in_processes,
            spool=spool_budget(options.spool_dir, options.spool_max, 2 * len(store_layers)),
            cache=self._cache,
        )
        built: list[Layer] = [
            StoreLayer(index, paths, self._hashes, encoder, build.progress)
            for index, paths in enumerate(store_layers)
        ]
        built.append(CustomisationLayer(build.customisation, conf.mtime))
        if options.compression.enabled:  # base layers are copied as they are stored
            built = [CompressedLayer(layer, options.compression) for layer in built]
        base = build.base
        layers: list[Layer] = []
        if base is not None:  # a layer described from a gzip base is spooled, unless never
            spooling = options.spool_max > 0
            layers = [BaseImageLayer(base, x, options.spool_dir, spooling) for x in base.layers]
        self.layers: tuple[Layer, ...] = (*layers, *built)
        self._started = False  # the hash passes (start)

    @staticmethod
    def _open_cache(build: Build) -> LayerCache | None:
        conf, options = build.conf, build.options
        if options.cache_dir is None:
            return None
        try:
            db = open_cache(options.cache_dir)
        except CacheUnavailable as exc:
            build.progress.warn(f"{exc}: running without the digest cache")
            return None
        context = KeyContext(
            conf.uid, conf.gid, conf.uname, conf.gname, conf.mtime, options.compression
        )
        # frames are kept of uncompressed spools only (a compressed one is the whole blob)
        keeps = not options.compression.enabled and options.spool_max > 0
        frames = FrameStore(os.path.join(options.cache_dir, FRAMES_DIR)) if keeps else None
        return LayerCache(db, context, processes=options.hash_in_processes, frames=frames)

    @property
    def timelines(self) -> list[Timeline]:
        """The store layers' timelines, in order."""
        return [layer.timeline for layer in self.layers if layer.timeline is not None]

    def config_json(self, records: list[LayerRecord]) -> bytes:
        """The image config of the layers ``records`` describe."""
        conf, base = self.build.conf, self.build.base
        config = merge_env(base.config, conf.config) if base is not None else conf.config
        return image_config(
            created=conf.created, architecture=conf.architecture, config=config, layers=records
        )

    def start(
        self, tg: TaskGroup, *, stream_misses: Callable[[], Awaitable[bool]] | None = None
    ) -> None:
        """Start the hash passes (and each layer's work ahead) in ``tg`` before
        ``write_layers``, which then waits for them: a push starts them before it has a
        registry client. ``stream_misses``: whether the store layers the digest cache
        can't give are to be left to their writer to hash (``Layer.streamed``), asked
        once it can answer. ``close`` the image once ``tg`` is done."""
        self._hashes.start(tg, stream_misses=stream_misses)
        for layer in self.layers:
            tg.start_soon(layer.prepare)
        self._started = True

    def close(self) -> None:
        """Close what the hash passes left open (spools) and the digest cache, whose
        warning, if any, goes to the progress."""
        self._hashes.close()
        cache, self._cache = self._cache, None
        if cache is not None:
            cache.close()
            if cache.warning is not None:
                self.build.progress.warn(cache.warning)

    async def write_layers(self, writer: LayerWriter, *, at_once: int = 1) -> list[LayerRecord]:
        """Write every layer through ``writer``, in order and with the reference's lines,
        while the hash passes run ahead (started here, unless ``start`` did); returns
        what to say of each layer. With ``at_once`` > 1, up to that many layers are
        written at the same time (a registry's uploads), started in order.

        Raises:
            StreamImageError: any failure (StoreError, ChangedError, CustomisationError...).
        """
        progress = self.build.progress
        progress.plan(self.layers)
        records: list[LayerRecord] = []
        started_here = not self._started
        try:
            async with anyio.create_task_group() as tg:
                if started_here:
                    self.start(tg)
                if self.build.base is None:
                    progress.line("No 'fromImage' provided")
                if at_once > 1:
                    records = await self._write_at_once(writer, at_once)
                else:
                    for number, layer in enumerate(self.layers, start=1):
                        progress.layer(number)
                        if layer.kind != BASE:
                            progress.line(_announcement(layer, number))
                        records.append(await self._write(layer, writer))
                        if layer.kind == BASE:
                            progress.line(_announcement(layer, number))
        finally:
            if started_here:
                self.close()
        progress.line("Adding manifests...")
        return records

    async def _write_at_once(self, writer: LayerWriter, at_once: int) -> list[LayerRecord]:
        progress = self.build.progress
        slots = anyio.Semaphore(at_once)
        written: dict[int, LayerRecord] = {}

        async def write(number: int, layer: Layer) -> None:
            try:
                written[number] = await self._write(layer, writer)
            finally:
                slots.release()

        async with anyio.create_task_group() as writers:
            for number, layer in enumerate(self.layers, start=1):
                await slots.acquire()
                progress.layer(number)  # layers start in order: k is the latest started
                # every line as its layer starts (a base layer's too, which a file run
                # prints once written): the reference's lines in the reference's order
                progress.line(_announcement(layer, number))
                writers.start_soon(write, number, layer)
        return [written[number] for number in range(1, len(self.layers) + 1)]

    async def _write(self, layer: Layer, writer: LayerWriter) -> LayerRecord:
        try:
            if not await layer.streamed():  # else its writer hashes it
                await layer.diff_id()  # hashed, or verified: ready to stream
            if layer.timeline is not None:
                layer.timeline.stream_start = time.monotonic()
            record = await writer.add_layer(layer)
            if layer.timeline is not None:
                layer.timeline.stream_end = time.monotonic()
        finally:
            layer.release()
        return record


def _announcement(layer: Layer, number: int) -> str:
    """The line the reference prints for layer ``number``."""
    if layer.kind == BASE:
        return f"Adding base layer {number} from {layer.history[0]}"
    if layer.kind == STORE:
        # the reference formats the Python list of paths: its repr is the format
        return f"Creating layer {number} from paths: {list(layer.history)!r}"
    return f"Creating layer {number} with customisation..."
