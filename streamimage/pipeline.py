"""The async machinery: sinks, the producer/consumer stream of one member, concurrent hashing.

ASYNC; knows no image format (docker.py and the OCI writers use it).
Rule 1: structured concurrency only: every task lives in a task group, every thread is an
``anyio.to_thread.run_sync`` call that checks for cancellation between chunks, so an error
anywhere stops everything and surfaces once.
Rule 2: memory is bounded: chunks are at most CHUNK_TARGET (+ one small file) bytes, at
most STREAM_BUFFER of them wait between producer and consumer; large files are never in
memory (the sink sends them with sendfile).
"""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import anyio
import anyio.to_thread
from anyio.abc import TaskGroup
from anyio.from_thread import check_cancelled

from streamimage.errors import ChangedError, OutputError
from streamimage.layer import Chunk, FileSpan, LayerHash, check_unchanged, hash_layer, open_checked
from streamimage.tarheader import HeaderEncoder

STREAM_BUFFER = 4  # chunks in flight between a producer and its consumer
SEND_SIZE = 8 * 1024 * 1024  # bytes per sendfile call: the cancellation check interval
_END = object()


class Sink(Protocol):
    """Where the archive goes; counts what it has written."""

    written: int

    async def write(self, data: bytes) -> None: ...

    async def send_span(self, span: FileSpan) -> None: ...


def output_error(name: str, exc: OSError) -> OutputError:
    """The one-line OutputError for a failed write to ``name``."""
    if isinstance(exc, BrokenPipeError):
        return OutputError(f"{name}: the reader went away before the image was complete")
    if exc.errno == errno.ENOSPC:
        return OutputError(f"{name}: no space left on device")
    return OutputError(f"{name}: write failed: {exc.strerror or exc}")


class FdSink:
    """A sink on a file descriptor (stdout, a pipe, a file); writes run in worker threads."""

    def __init__(self, fd: int, name: str) -> None:
        self.fd = fd
        self.name = name
        self.written = 0
        self._sendfile = True

    def _write_all(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self.fd, view) :]
        except OSError as exc:
            raise output_error(self.name, exc) from exc

    async def write(self, data: bytes) -> None:
        await anyio.to_thread.run_sync(self._write_all, data)
        self.written += len(data)

    def _send(self, span: FileSpan) -> None:
        fd = open_checked(span.path, span.identity)
        try:
            offset = 0
            while offset < span.size:
                check_cancelled()
                count = min(SEND_SIZE, span.size - offset)
                sent = self._send_some(fd, offset, count)
                if not sent:
                    raise ChangedError(f"{span.path}: size {span.size} -> {offset} while sent")
                offset += sent
            check_unchanged(span.path, fd, span.identity)
        finally:
            os.close(fd)

    def _send_some(self, fd: int, offset: int, count: int) -> int:
        if self._sendfile:
            try:
                return os.sendfile(self.fd, fd, offset, count)
            except OSError as exc:
                if exc.errno not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
                    raise output_error(self.name, exc) from exc
                self._sendfile = False  # e.g. an O_APPEND file: fall back to read + write
        data = os.pread(fd, count, offset)
        self._write_all(data)
        return len(data)

    async def send_span(self, span: FileSpan) -> None:
        await anyio.to_thread.run_sync(self._send, span)
        self.written += span.size


async def _produce(chunks: Iterator[Chunk], send: anyio.abc.ObjectSendStream[Chunk]) -> None:
    async with send:
        try:
            while (chunk := await anyio.to_thread.run_sync(next, chunks, _END)) is not _END:
                await send.send(chunk)  # type: ignore[arg-type]
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:
                close()


async def stream_chunks(chunks: Iterator[Chunk], sink: Sink) -> int:
    """Stream one member's content: a producer task advances ``chunks`` in a worker thread
    and sends them through a bounded memory stream; this task writes them to ``sink``.

    Returns the number of content bytes written.
    """
    start = sink.written
    send, receive = anyio.create_memory_object_stream[Chunk](STREAM_BUFFER)
    async with anyio.create_task_group() as tg:
        tg.start_soon(_produce, chunks, send)
        async with receive:
            async for chunk in receive:
                if isinstance(chunk, bytes):
                    await sink.write(chunk)
                else:
                    await sink.send_span(chunk)
    return sink.written - start


@dataclass(slots=True)
class Timeline:
    """When each layer's passes ran (monotonic seconds), for --verbose."""

    hash_start: float = 0.0
    hash_end: float = 0.0
    stream_start: float = 0.0
    stream_end: float = 0.0


@dataclass(slots=True)
class _Slot:
    done: anyio.Event = field(default_factory=anyio.Event)
    result: LayerHash | None = None


class HashPass:
    """The hash pass of every store layer, run ahead of streaming, ``workers`` at a time,
    in layer order so that the first layer's hash is ready first."""

    def __init__(
        self,
        layers: Sequence[Sequence[str]],
        encoder: HeaderEncoder,
        workers: int,
        timelines: Sequence[Timeline],
    ) -> None:
        self._layers = layers
        self._encoder = encoder
        self._limiter = anyio.CapacityLimiter(workers)
        self._slots = [_Slot() for _ in layers]
        self._timelines = timelines

    def start(self, tg: TaskGroup) -> None:
        for index in range(len(self._layers)):
            tg.start_soon(self._hash, index)

    async def _hash(self, index: int) -> None:
        slot = self._slots[index]
        async with self._limiter:
            self._timelines[index].hash_start = time.monotonic()
            slot.result = await anyio.to_thread.run_sync(
                hash_layer, self._layers[index], self._encoder, check_cancelled
            )
            self._timelines[index].hash_end = time.monotonic()
        slot.done.set()

    async def result(self, index: int) -> LayerHash:
        """The hash of layer ``index`` (0-based), once its pass has finished."""
        slot = self._slots[index]
        await slot.done.wait()
        assert slot.result is not None
        return slot.result


def cpu_workers() -> int:
    """How many hash passes may run at once: one per CPU this process may use."""
    return max(1, len(os.sched_getaffinity(0)))
