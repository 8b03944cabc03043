"""The async machinery: sinks, and the producer/consumer stream of one member.

ASYNC; knows no image format and no layer: the destinations stream layers' chunks through
it to their sinks.
Rule 1: structured concurrency only: every task lives in a task group, every thread is an
``anyio.to_thread.run_sync`` call of one batch (large files' sends check for cancellation
between calls), so an error anywhere stops everything, within a batch, and surfaces once.
The one exception: a write to the output, which a reader that stops reading blocks for
ever, is abandoned on cancellation (``FdSink.busy`` then tells the caller not to close the
fd, and to exit without joining).
Rule 2: memory is bounded: a batch carries at most BATCH_BYTES (+ one chunk) of headers
and small files, at most STREAM_BUFFER batches wait between producer and consumer; large
files and spooled pieces (FileSpans, SpoolRanges) are never in memory (the sink sends them
with sendfile).
Rule 3: an output inherited non-blocking (as some CI runners and Node parents leave stdout)
is waited on until writable, never set blocking (the flag is the open file's, shared with
the parent); a reader gone before anything is written is noticed (``watch_reader``).
"""

from __future__ import annotations

import errno
import fcntl
import os
import select
import stat
from collections.abc import Callable, Iterator
from typing import Protocol

import anyio
import anyio.lowlevel
import anyio.to_thread
from anyio.from_thread import check_cancelled

from streamimage.engine.framing import (
    Chunk,
    FileSpan,
    Named,
    SpoolRange,
    check_unchanged,
    open_checked,
)
from streamimage.errors import ChangedError, OutputError

# Linux only: elsewhere a pipe keeps its size (1031 and 1032 mean other things, or nothing)
F_SETPIPE_SZ: int | None = getattr(fcntl, "F_SETPIPE_SZ", None)
F_GETPIPE_SZ: int | None = getattr(fcntl, "F_GETPIPE_SZ", None)
# sendfile refusing an output: EINVAL (Linux: an O_APPEND file), ENOTSOCK (macOS: anything
# but a socket), ENOSYS, EOPNOTSUPP; then read + write
SENDFILE_REFUSED = (errno.EINVAL, errno.ENOTSOCK, errno.ENOSYS, errno.EOPNOTSUPP)
STDOUT = 1
STREAM_BUFFER = 2  # batches in flight between a producer and its consumer
BATCH_BYTES = 1024 * 1024  # bytes of headers and small files that one batch carries
BATCH_SPANS = 256  # large files one batch names (their content is not in memory)
SEND_SIZE = 8 * 1024 * 1024  # bytes per sendfile call: the cancellation check interval
WRITABLE_WAIT = 200  # ms: a wait for a non-blocking output to take more checks cancellation
READER_POLL = 0.2  # seconds between checks that a pipe's or socket's reader is still there
READER_GONE = select.POLLERR | select.POLLHUP  # a pipe without readers; a socket shut down


Batch = list[Chunk]


class Sink(Protocol):
    """Where the archive goes; counts what it has written."""

    written: int

    async def write(self, data: bytes) -> None: ...

    async def write_batch(self, batch: Batch) -> None: ...


def output_error(name: str, exc: OSError) -> OutputError:
    """The one-line OutputError for a failed write to ``name``."""
    if isinstance(exc, BrokenPipeError):
        return OutputError(f"{name}: the reader went away before the image was complete")
    if exc.errno == errno.ENOSPC:
        return OutputError(f"{name}: no space left on device")
    return OutputError(f"{name}: write failed: {exc.strerror or exc}")


class FdSink:
    """A sink on a file descriptor (stdout, a pipe, a file); writes run in worker threads,
    a whole batch per thread call; large files and spooled pieces go out with sendfile."""

    def __init__(self, fd: int, name: str) -> None:
        self.fd = fd
        self.name = name
        # bytes out so far, counted by the worker thread as each write or sendfile call
        # returns (one write runs at a time: one writer); the progress display reads it
        # a few times a second, so a batch of large files doesn't show as nothing until
        # it is all out
        self.written = 0
        self._sendfile = hasattr(os, "sendfile")
        self._busy = False  # a worker thread is inside a write (set here, cleared there)

    @property
    def busy(self) -> bool:
        """True while a write runs, or after one was abandoned and is still blocked: then
        the fd must not be closed (its number could be reused under the stuck write)."""
        return self._busy

    def _run_busy(self, func: Callable[[Batch], None], batch: Batch) -> None:
        try:
            return func(batch)
        finally:
            self._busy = False

    async def _in_thread(self, func: Callable[[Batch], None], batch: Batch) -> None:
        # abandon_on_cancel: a reader that stops reading blocks os.write (or sendfile) for
        # ever, and cancelling (a signal, a failed hash pass) must not wait for it; one
        # write runs at a time, so _busy needs no lock. A task cancelled already never
        # starts the thread: it must not be left marked busy (a leaked fd, an _exit).
        await anyio.lowlevel.checkpoint_if_cancelled()
        self._busy = True
        await anyio.to_thread.run_sync(self._run_busy, func, batch, abandon_on_cancel=True)

    def _write_all(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        try:
            while view:
                try:
                    count = os.write(self.fd, view)
                except BlockingIOError:
                    self._wait_writable()
                    continue
                self.written += count
                view = view[count:]
        except OSError as exc:
            raise output_error(self.name, exc) from exc

    def _wait_writable(self) -> None:
        """Until a non-blocking output has room (or its reader is gone: the next write
        says so), checking for cancellation in between."""
        poller = select.poll()
        poller.register(self.fd, select.POLLOUT)
        while not poller.poll(WRITABLE_WAIT):
            check_cancelled()

    async def write(self, data: bytes) -> None:
        await self._in_thread(self._write_batch, [data])

    def _write_batch(self, batch: Batch) -> None:
        for chunk in batch:
            if isinstance(chunk, bytes):
                self._write_all(chunk)
            elif isinstance(chunk, SpoolRange):
                self._send_range(chunk.fd, chunk.offset, chunk.size, chunk.name)
            else:
                self._send(chunk)

    async def write_batch(self, batch: Batch) -> None:
        await self._in_thread(self._write_batch, batch)

    def _send(self, span: FileSpan) -> None:
        fd = open_checked(span.path, span.identity)
        try:
            self._send_range(fd, 0, span.size, span.path)
            check_unchanged(span.path, fd, span.identity)
        finally:
            os.close(fd)

    def _send_range(self, fd: int, start: int, size: int, name: str) -> None:
        """Send ``size`` bytes of the open file ``fd`` from ``start`` (``name`` it)."""
        offset = start
        end = start + size
        while offset < end:
            check_cancelled()
            sent = self._send_some(fd, offset, min(SEND_SIZE, end - offset))
            if not sent:
                raise ChangedError(f"{name}: size {end} -> {offset} while sent")
            offset += sent

    def _send_some(self, fd: int, offset: int, count: int) -> int:
        while self._sendfile:
            try:
                sent = os.sendfile(self.fd, fd, offset, count)
                self.written += sent
                return sent
            except BlockingIOError:
                self._wait_writable()
            except OSError as exc:
                if exc.errno not in SENDFILE_REFUSED:
                    raise output_error(self.name, exc) from exc
                self._sendfile = False  # e.g. an O_APPEND file: fall back to read + write
        data = os.pread(fd, count, offset)
        self._write_all(data)
        return len(data)


async def watch_reader(sink: FdSink) -> None:
    """Until cancelled, or until the reader of ``sink`` (a pipe or a socket) is gone: then
    raise the OutputError a write would have raised. The first write may be far away
    (after the first layer's hash pass, 38 s for 12 GB): a reader that left at once, as
    ``| head -c0`` or a failed ``docker load`` does, stops the run now. Other outputs
    (files, devices) have no reader to lose: it returns.

    Raises:
        OutputError: the reader went away (POLLERR on a pipe, POLLHUP on a socket).
    """
    mode = os.fstat(sink.fd).st_mode
    if not (stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)):
        return
    poller = select.poll()
    poller.register(sink.fd, 0)  # POLLERR and POLLHUP are reported whatever is asked
    while True:
        if any(events & READER_GONE for _, events in poller.poll(0)):
            raise output_error(sink.name, BrokenPipeError(errno.EPIPE, os.strerror(errno.EPIPE)))
        await anyio.sleep(READER_POLL)


def _next_batch(chunks: Iterator[Chunk]) -> Batch:
    """Up to BATCH_BYTES of chunks (large files' spans count as nothing: they stay on
    disk), so that one thread hop moves many small files; empty when ``chunks`` is done."""
    batch: Batch = []
    held = 0
    for chunk in chunks:
        batch.append(chunk)
        if isinstance(chunk, bytes):
            held += len(chunk)
            if held >= BATCH_BYTES:
                break
        elif len(batch) >= BATCH_SPANS:
            break
    return batch


async def _produce(chunks: Iterator[Chunk], send: anyio.abc.ObjectSendStream[Batch]) -> None:
    async with send:
        try:
            if isinstance(chunks, Named):  # nothing to read: no thread hop per batch
                while batch := _next_batch(chunks):
                    await send.send(batch)
            else:
                while batch := await anyio.to_thread.run_sync(_next_batch, chunks):
                    await send.send(batch)
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:
                close()


async def stream_chunks(chunks: Iterator[Chunk], sink: Sink, lead: bytes = b"") -> int:
    """Stream one member's content: a producer task advances ``chunks`` (in a worker
    thread, unless they are Named: they read nothing) and sends batches of them through a
    bounded memory stream; this task, the consumer, writes them to ``sink``. ``lead`` (the
    member's header, the padding of the member before) goes out first, in the same write
    as the first batch: one thread hop for a small layer, not three.

    Returns the number of content bytes written (``lead`` not counted).
    """
    start = sink.written + len(lead)
    send, receive = anyio.create_memory_object_stream[Batch](STREAM_BUFFER)
    async with anyio.create_task_group() as tg:
        tg.start_soon(_produce, chunks, send)
        async with receive:
            async for batch in receive:
                if lead:
                    batch, lead = [lead, *batch], b""
                await sink.write_batch(batch)
    if lead:  # no content
        await sink.write(lead)
    return sink.written - start


PIPE_SIZE = 1024 * 1024  # bytes: Linux's default pipe-max-size for unprivileged users


def grow_pipe(fd: int) -> None:
    """Give a pipe on ``fd`` a 1 MiB buffer (the default is 64 KiB): stdout, so that one
    write of a batch is one wake-up of the reader (`docker load`, `gzip`); a split pass's
    records, so that its helper rarely waits for its head. Best effort: not a pipe, an
    older kernel, a lower limit or a system without pipe resizing leave it as it is."""
    if F_GETPIPE_SZ is None or F_SETPIPE_SZ is None:
        return
    try:
        if stat.S_ISFIFO(os.fstat(fd).st_mode) and fcntl.fcntl(fd, F_GETPIPE_SZ) < PIPE_SIZE:
            fcntl.fcntl(fd, F_SETPIPE_SZ, PIPE_SIZE)
    except OSError:
        pass
