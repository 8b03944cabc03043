"""The hash passes: every store layer's size and sha256, ahead of its stream pass.

ASYNC, with forked worker processes. Knows no image format (assemble.py drives it).
Rule 1: each hash pass frames its layer with ``layer_chunks`` (the one framing) in a
forked child owned by the task that forked it: killed when that task is cancelled, always
reaped; ``-j`` passes at a time (the limiter).
Rule 2: a pass spools what its stream pass will copy (spool.py) while the budget lasts;
spooling is never a failure. A layer of several store paths is framed by two children
(a head and a helper), its sha256 computed in order by the head.
"""

from __future__ import annotations

import contextlib
import dataclasses
import multiprocessing
import os
import signal
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any, TypeVar, cast

import anyio
import anyio.to_thread
from anyio.abc import TaskGroup

from streamimage.compress import CompressingSink
from streamimage.errors import ChildError
from streamimage.layer import Chunk, LayerHash, Witness, layer_chunks
from streamimage.pipeline import (
    STDOUT,
    ContentHash,
    HashSink,
    grow_pipe,
    hash_chunks,
    stream_chunks,
)
from streamimage.spec import UNCOMPRESSED, Compression
from streamimage.spool import (
    Segment,
    SpoolBudget,
    SpooledPart,
    SpoolTarget,
    SpoolWriter,
    pieces,
    segment_chunks,
    spool_part,
    spooled_chunks,
)
from streamimage.tarheader import HeaderEncoder, end_of_archive
from streamimage.walk import Entry

T = TypeVar("T")


class StoredSpool:
    """A compressed layer's hash pass: the sink under its compressor that hashes the
    stored bytes (``blob``) and spools them, for the stream pass to copy instead of
    compressing again."""

    def __init__(self, blob: HashSink, writer: SpoolWriter) -> None:
        self._blob = blob
        self._writer = writer
        self.written = 0

    async def write(self, data: bytes) -> None:
        self.written += len(data)
        self._blob.update(data)
        self._writer.add(data, 0)  # a pwrite into the page cache; entries are set at the end

    async def write_batch(self, batch: list[Chunk]) -> None:
        for chunk in batch:
            assert isinstance(chunk, bytes), "a compressor's output is bytes"
            await self.write(chunk)


def _framed(
    store_paths: Sequence[str], encoder: HeaderEncoder, spool: SpoolTarget | None
) -> tuple[Witness, SpoolWriter | None, Iterator[Chunk]]:
    """The hash pass's chunks of a layer, recording each entry, spooled when asked."""
    witness = Witness()
    chunks = layer_chunks(store_paths, encoder, witness.record)
    if spool is None:
        return witness, None, pieces(chunks)
    writer = SpoolWriter(spool)
    return witness, writer, writer.tee(chunks, witness.__len__)


def _layer_hash(found: ContentHash, witness: Witness, writer: SpoolWriter | None) -> LayerHash:
    segments = None if writer is None else writer.segments
    spooled = 0 if writer is None else writer.size
    return LayerHash(
        found.diff_id, found.size, witness, found.blob_digest, found.blob_size, segments, spooled
    )


async def hash_layer(
    store_paths: Sequence[str],
    encoder: HeaderEncoder,
    compression: Compression = UNCOMPRESSED,
    spool: SpoolTarget | None = None,
) -> LayerHash:
    """The hash pass of one layer: the same framing and pipeline as the stream pass, into
    a HashSink; returns its diff_id and size (and its compressed digest and size), what
    it saw of every entry, and what it spooled for the stream pass: the framed bytes, or
    a compressed layer's stored bytes.

    Raises:
        StoreError, ChangedError: as layer_chunks.
    """
    if compression.enabled and spool is not None:
        return await _hash_stored(store_paths, encoder, compression, spool)
    witness, writer, chunks = _framed(store_paths, encoder, spool)
    return _layer_hash(await hash_chunks(chunks, compression), witness, writer)


async def _hash_stored(
    store_paths: Sequence[str], encoder: HeaderEncoder, compression: Compression, spool: SpoolTarget
) -> LayerHash:
    # a compressed layer spools what its compressor writes: the stream pass copies it
    witness, _, chunks = _framed(store_paths, encoder, None)
    plain, blob, writer = HashSink(), HashSink(), SpoolWriter(spool)
    sink = CompressingSink(StoredSpool(blob, writer), compression, observe=plain.update)
    await stream_chunks(chunks, sink)
    await sink.close()
    segments = writer.stored(len(witness))
    spooled = 0 if segments is None else writer.size
    stored = segments is not None
    return LayerHash(
        plain.diff_id, plain.written, witness, blob.diff_id, blob.written, segments, spooled, stored
    )


def _no_checkpoint() -> None:
    pass  # a worker process is cancelled by killing it


def hash_layer_blocking(
    store_paths: Sequence[str],
    encoder: HeaderEncoder,
    compression: Compression = UNCOMPRESSED,
    spool: SpoolTarget | None = None,
) -> LayerHash:
    """The hash pass as a worker process runs it. Uncompressed, the pieces are hashed as
    they come, in one thread: framing and hashing in two threads of one process fight for
    the GIL (on the benchmark corpus's python layer, hashing 1 MiB pieces in a second
    thread took 1.43-1.69 s wall and 1.66-1.97 s CPU, against 1.40-1.45 s of both in one).
    Compressed, hash_layer's pipeline overlaps the deflate."""
    if compression.enabled:
        return anyio.run(hash_layer, store_paths, encoder, compression, spool)
    witness, writer, framed = _framed(store_paths, encoder, spool)
    sink = HashSink()
    sink.hash_batch(framed, _no_checkpoint)
    return _layer_hash(sink.uncompressed(), witness, writer)


def hash_layer_head(
    store_paths: Sequence[str],
    split: int,
    encoder: HeaderEncoder,
    spool: SpoolTarget,
    helper_fd: int,
    records: Connection,
) -> LayerHash:
    """A split hash pass, as its worker process runs it (uncompressed layers): frames,
    spools and hashes ``store_paths[:split]`` while a helper (spool_part) frames the rest
    into spool ``helper_fd``; then hashes the helper's segments from its spool as
    ``records`` brings them, then the end. A helper that gave up leaves its part to be
    framed here. The witness returned holds this process's entries; the parent adds the
    helper's.
    """
    witness = Witness()
    writer = SpoolWriter(spool)
    sink = HashSink()
    head = layer_chunks(store_paths[:split], encoder, witness.record, end=False)
    sink.hash_batch(writer.tee(head, witness.__len__), _no_checkpoint)
    before = sink.copy()
    part: list[Segment] = []
    while isinstance(record := records.recv(), Segment):
        sink.hash_batch(segment_chunks(helper_fd, (record,)), _no_checkpoint)
        part.append(record)
    if record is None:  # the helper gave up: forget its segments, frame its part here
        sink = before
        rest = layer_chunks(store_paths[split:], encoder, witness.record, nix_dirs=False, end=False)
        sink.hash_batch(writer.tee(rest, witness.__len__), _no_checkpoint)
        total = len(witness)
    else:
        writer.adopt(tuple(part), len(witness), spool=1)
        total = len(witness) + record
    end = end_of_archive(sink.written)
    sink.hash_batch(writer.tee(iter([end]), lambda: total), _no_checkpoint)
    return _layer_hash(sink.uncompressed(), witness, writer)


@dataclass(slots=True)
class Timeline:
    """When each layer's passes ran (monotonic seconds), for --verbose."""

    hash_start: float = 0.0
    hash_end: float = 0.0
    stream_start: float = 0.0
    stream_end: float = 0.0
    spooled: int | None = None  # bytes the stream pass copied from the spool; None: framed
    parts: int = 1  # processes that framed the layer in its hash pass


@dataclass(slots=True)
class _Split:
    """What a split pass's head and helper tasks share."""

    at: int  # the helper frames the layer's store paths from this one on
    prepared: anyio.Event = field(default_factory=anyio.Event)  # set by the head
    helper: SpoolTarget | None = None  # the helper's spool; None: not needed
    records: Connection | None = None  # the helper's worker sends its segments on it
    part: SpooledPart | None = None  # what the helper spooled
    helped: anyio.Event = field(default_factory=anyio.Event)  # set by the helper


@dataclass(slots=True)
class _Slot:
    done: anyio.Event = field(default_factory=anyio.Event)
    result: LayerHash | None = None
    spool_fds: list[int] = field(default_factory=list)  # open until the layer is streamed


_FORK = multiprocessing.get_context("fork")
_DEVNULL = os.devnull


def _child(send: Connection, func: Callable[..., T], args: tuple[Any, ...]) -> None:
    # In the forked child. The parent's signal handling is the parent's: its wakeup fd
    # would carry a signal the child got to the parent's event loop. stdout is the image,
    # and not the child's to keep open.
    signal.set_wakeup_fd(-1)
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_DFL)
    fd = os.open(_DEVNULL, os.O_WRONLY)
    os.dup2(fd, STDOUT)
    os.close(fd)
    try:
        outcome: tuple[bool, Any] = (True, func(*args))
    except BaseException as exc:  # every failure goes back to the parent, which raises it
        outcome = (False, exc)
    send.send(outcome)
    send.close()


async def run_in_child(func: Callable[..., T], *args: Any) -> T:
    """``func(*args)`` in a forked child process, its result (or exception) pickled back.

    Forked, not spawned: a spawned interpreter (anyio.to_process) starts Python and
    imports the package again, about 0.3 s and 0.2 s of CPU per worker here, on the
    critical path of the largest layer. The fork happens in a worker thread, so the child
    is not inside this event loop. Cancelling kills the child; it is always reaped.

    Raises:
        whatever ``func`` raised; ChildError if the child died without an answer.
    """
    receive, send = _FORK.Pipe(duplex=False)
    child = _FORK.Process(target=_child, args=(send, func, args), daemon=True)
    try:
        await anyio.to_thread.run_sync(child.start)
        send.close()
        try:
            ok, value = await anyio.to_thread.run_sync(receive.recv, abandon_on_cancel=True)
        except EOFError:
            raise ChildError(f"a hash worker died (exit status {child.exitcode})") from None
    finally:
        send.close()
        if child.pid is not None:
            if child.is_alive():
                child.kill()
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(child.join)
        receive.close()
    if not ok:
        raise value
    return cast(T, value)


class HashPass:
    """The hash pass of every store layer, run ahead of streaming, ``workers`` at a time:
    the first layer first, so that streaming starts as soon as can be, then the layers
    with the most store paths, likely the largest (streamLayeredImage puts all that
    doesn't get a layer of its own into the last one), so that the longest pass doesn't
    start last and keep the stream waiting. Each pass spools what it framed while the
    budget lasts, for the layer's stream pass to copy; a layer of several store paths is
    framed by two processes (split_at). ``close`` closes every spool."""

    def __init__(
        self,
        layers: Sequence[Sequence[str]],
        encoder: HeaderEncoder,
        workers: int,
        timelines: Sequence[Timeline],
        processes: bool = True,
        compression: Compression = UNCOMPRESSED,
        spool: SpoolBudget | None = None,
    ) -> None:
        self._layers = layers
        self._encoder = encoder
        self._limiter = anyio.CapacityLimiter(workers)
        self._slots = [_Slot() for _ in layers]
        self._timelines = timelines
        self._processes = processes
        self._compression = compression
        self._budget = spool

    def order(self) -> list[int]:
        """The layers' indices in the order their passes start."""
        rest = sorted(range(1, len(self._layers)), key=lambda i: -len(self._layers[i]))
        return [0, *rest] if self._layers else []

    def start(self, tg: TaskGroup) -> None:
        # The limiter lets tasks in as they queued; a split pass's helper queues right
        # behind its head, so a head never waits for a helper that can't get a slot.
        for index in self.order():
            split = self.split_at(index)
            if split is None:
                tg.start_soon(self._hash, index)
            else:
                state = _Split(split)
                tg.start_soon(self._hash_head, index, state)
                tg.start_soon(self._help, index, state)

    def split_at(self, index: int) -> int | None:
        """Where layer ``index``'s store paths split between two processes, or None.

        A layer of several store paths (streamLayeredImage's last layer holds all that
        didn't get one of their own: often the largest) is framed by two worker
        processes: the first hashes its half, then the second's half from its spool.
        Uncompressed layers in worker processes only, with a spool and two workers."""
        paths = self._layers[index]
        if (
            len(paths) < 2
            or self._budget is None
            or not self._processes
            or self._compression.enabled
            or self._limiter.total_tokens < 2
        ):
            return None
        return len(paths) // 2

    async def _hash(self, index: int) -> None:
        async with self._limiter:
            await self._hash_whole(index)
        self._slots[index].done.set()

    def _open_spool(self, index: int, part: int = 0) -> SpoolTarget | None:
        """A spool for layer ``index``'s pass (part 1: a split pass's helper), or None."""
        target = None if self._budget is None else self._budget.open(2 * index + part)
        if target is not None:
            self._slots[index].spool_fds.append(target.fd)
        return target

    async def _hash_whole(self, index: int) -> None:
        self._timelines[index].hash_start = time.monotonic()
        target = self._open_spool(index)
        paths = self._layers[index]
        if self._processes:
            # A process of its own: the hash pass's Python work doesn't contend for the
            # GIL with the stream pass; cancelling kills the worker.
            result = await run_in_child(
                hash_layer_blocking, paths, self._encoder, self._compression, target
            )
        else:
            result = await hash_layer(paths, self._encoder, self._compression, target)
        self._finish(index, result)

    async def _hash_head(self, index: int, split: _Split) -> None:
        async with self._limiter:
            try:
                head = self._open_spool(index)
                helper = None if head is None else self._open_spool(index, 1)
                if head is None or helper is None:  # no room for two spools: one pass
                    self.release(index)
                    split.prepared.set()  # the helper is not needed
                    await self._hash_whole(index)
                else:
                    receive, split.records = _FORK.Pipe(duplex=False)
                    grow_pipe(split.records.fileno())
                    split.helper = helper
                    split.prepared.set()
                    try:
                        await self._run_head(index, split, head, receive)
                    finally:
                        receive.close()
            finally:
                split.prepared.set()
        self._slots[index].done.set()

    async def _run_head(
        self, index: int, split: _Split, head: SpoolTarget, records: Connection
    ) -> None:
        assert split.helper is not None
        self._timelines[index].hash_start = time.monotonic()
        self._timelines[index].parts = 2
        result = await run_in_child(
            hash_layer_head,
            self._layers[index],
            split.at,
            self._encoder,
            head,
            split.helper.fd,
            records,
        )
        await split.helped.wait()  # its worker has ended, and its witness is here
        if split.part is None:  # it gave up: its spool is not the layer's
            self._budget_count(2 * index + 1, 0)
            with contextlib.suppress(OSError):
                os.ftruncate(split.helper.fd, 0)
        else:
            result.witness.extend(split.part.witness)
            if result.segments is not None:  # the layer is in both spools
                result = dataclasses.replace(result, spooled=result.spooled + split.part.size)
        self._finish(index, result)

    async def _help(self, index: int, split: _Split) -> None:
        """A split pass's helper: frames the later part of layer ``index`` into its spool,
        sending each segment to the head's worker, which hashes them as they come."""
        try:
            async with self._limiter:
                await split.prepared.wait()
                if split.helper is None or split.records is None:
                    return
                split.part = await run_in_child(
                    spool_part,
                    self._layers[index][split.at :],
                    self._encoder,
                    split.helper,
                    split.records,
                )
        finally:
            if split.records is not None:
                split.records.close()
            split.helped.set()

    def _budget_count(self, counter: int, size: int) -> None:
        if self._budget is not None:
            self._budget.count(counter, size)

    def _finish(self, index: int, result: LayerHash) -> None:
        slot = self._slots[index]
        slot.result = result
        if result.segments is None:
            self.release(index)  # nothing spooled: the files go now
        self._timelines[index].hash_end = time.monotonic()

    async def result(self, index: int) -> LayerHash:
        """The hash of layer ``index`` (0-based), once its pass has finished."""
        slot = self._slots[index]
        await slot.done.wait()
        assert slot.result is not None
        return slot.result

    def chunks(
        self, index: int, result: LayerHash, on_entry: Callable[[Entry], None]
    ) -> Iterator[Chunk]:
        """The stream pass's chunks of layer ``index``: copied from its spool, or framed
        again from the store; either way ``on_entry`` checks each entry first."""
        paths = self._layers[index]
        fds = self._slots[index].spool_fds
        if not fds or result.segments is None:
            self._timelines[index].spooled = None
            return layer_chunks(paths, self._encoder, on_entry)
        self._timelines[index].spooled = result.spooled
        return spooled_chunks(fds, result.segments, paths, on_entry)

    def release(self, index: int) -> None:
        """Close layer ``index``'s spools (it was streamed, or won't be), if it has any."""
        slot = self._slots[index]
        for fd in slot.spool_fds:
            os.close(fd)
        slot.spool_fds.clear()
        self._budget_count(2 * index, 0)  # its passes are over: the counters are ours now
        self._budget_count(2 * index + 1, 0)

    def close(self) -> None:
        """Close every spool still open (after a failure, or a layer not streamed)."""
        for index in range(len(self._slots)):
            self.release(index)


def cpu_workers() -> int:
    """How many hash passes may run at once: one per CPU this process may use."""
    return max(1, len(os.sched_getaffinity(0)))
