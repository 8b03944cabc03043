"""pipeline.py: ``stream_chunks`` moves a member's chunks to a sink, in order, in bounded
batches, with a bounded producer (Named chunks made in the event loop, others in a worker
thread), its lead first, and an error on either side ends it with that error;
``FdSink`` writes bytes and sends large files (falling back where sendfile can't).
Oracles: the chunks given, read back from a recording sink or the output file; the
kernel's own answers (EPIPE, EINVAL on O_APPEND, /dev/full's ENOSPC, F_GETPIPE_SZ).
"""

from __future__ import annotations

import errno
import fcntl
import math
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import anyio.lowlevel
import anyio.to_thread
import pytest

from streamimage.engine.framing import Chunk, FileSpan, Named
from streamimage.engine.pipeline import (
    BATCH_BYTES,
    BATCH_SPANS,
    PIPE_SIZE,
    READER_POLL,
    STREAM_BUFFER,
    Batch,
    FdSink,
    grow_pipe,
    output_error,
    stream_chunks,
    watch_reader,
)
from streamimage.engine.walk import FileIdentity
from streamimage.errors import OutputError, StoreError
from tests.failures import STOP_BOUND

KIB = 1024


def size_of(chunk: Chunk) -> int:
    return len(chunk) if isinstance(chunk, bytes) else chunk.size


def fake_span(size: int, name: str = "big") -> FileSpan:
    """A FileSpan no test sink here reads: only its size and identity matter."""
    return FileSpan(f"/nonexistent/{name}", size, FileIdentity(0, size, 0, 0, 0o100644))


def span_of(path: Path) -> FileSpan:
    st = path.stat()
    return FileSpan(str(path), st.st_size, FileIdentity.of(st))


class RecordingSink:
    """Keeps every batch it is given; counts bytes as FdSink does (spans by their size)."""

    def __init__(self, written: int = 0) -> None:
        self.written = written
        self.batches: list[Batch] = []

    async def write(self, data: bytes) -> None:
        await self.write_batch([data])

    async def write_batch(self, batch: Batch) -> None:
        self.batches.append(list(batch))
        self.written += sum(map(size_of, batch))
        await anyio.lowlevel.checkpoint()

    def chunks(self) -> list[Chunk]:
        return [chunk for batch in self.batches for chunk in batch]


class Counted:
    """A chunk generator that counts the chunks pulled and knows when it was closed. It
    holds its generator, so that only a close, not the garbage collector, runs its
    finally."""

    def __init__(self, chunks: Iterator[Chunk], fail_after: int | None = None) -> None:
        self._chunks = chunks
        self._fail_after = fail_after
        self.pulled: list[Chunk] = []
        self.closed = False
        self.chunks = self._generate()

    def _generate(self) -> Iterator[Chunk]:
        try:
            for chunk in self._chunks:
                if len(self.pulled) == self._fail_after:
                    raise StoreError("/nix/store/x: injected failure")
                self.pulled.append(chunk)
                yield chunk
        finally:
            self.closed = True


def mixed_chunks() -> list[Chunk]:
    """Large and tiny bytes chunks and runs of spans, so every limit of a batch is met."""
    chunks: list[Chunk] = [bytes([i]) * (300 * KIB) for i in range(10)]
    chunks += [fake_span(100_000 + i, f"span{i}") for i in range(600)]
    chunks += [b"%05d" % i for i in range(20_000)]
    for i in range(50):
        chunks += [fake_span(1 << 20, f"pair{i}"), b"y" * (200 * KIB)]
    return chunks


async def test_stream_chunks_writes_every_chunk_in_order_and_counts_them() -> None:
    chunks = mixed_chunks()
    sink = RecordingSink(written=1000)  # an earlier member's bytes are not this one's
    with anyio.fail_after(STOP_BOUND):
        count = await stream_chunks(iter(chunks), sink)
    assert sink.chunks() == chunks
    assert count == sum(map(size_of, chunks)) == sink.written - 1000


async def test_batches_are_bounded_in_bytes_and_spans() -> None:
    chunks = mixed_chunks()
    sink = RecordingSink()
    with anyio.fail_after(STOP_BOUND):
        await stream_chunks(iter(chunks), sink)
    largest = max(len(chunk) for chunk in chunks if isinstance(chunk, bytes))
    assert all(sink.batches)
    for batch in sink.batches:
        assert sum(len(chunk) for chunk in batch if isinstance(chunk, bytes)) <= (
            BATCH_BYTES + largest
        )
        assert sum(isinstance(chunk, FileSpan) for chunk in batch) <= BATCH_SPANS
    assert len(sink.batches) < len(chunks) / 10  # one thread hop moves many chunks


class BlockedSink(RecordingSink):
    """A sink whose every write waits until ``release`` is set (a reader that stalls);
    ``arrived`` is set once the first batch has come."""

    def __init__(self) -> None:
        super().__init__()
        self.arrived = anyio.Event()
        self.release = anyio.Event()

    async def write_batch(self, batch: Batch) -> None:
        self.arrived.set()
        await self.release.wait()
        await super().write_batch(batch)


async def test_a_stalled_sink_holds_the_producer_a_bounded_distance_ahead() -> None:
    chunk = b"c" * (64 * KIB)
    total = 2000  # 125 MiB of chunks (one bytes object): far more than may be held
    source = Counted(iter([chunk] * total))
    sink = BlockedSink()
    per_batch = math.ceil(BATCH_BYTES / len(chunk))
    # one batch in the sink's hands, STREAM_BUFFER in the stream, one in the producer's
    bound = (1 + STREAM_BUFFER + 1) * per_batch
    counted: list[int] = []

    async def stream() -> None:
        counted.append(await stream_chunks(source.chunks, sink))

    with anyio.fail_after(STOP_BOUND):
        async with anyio.create_task_group() as tg:
            tg.start_soon(stream)
            await sink.arrived.wait()
            await anyio.sleep(0.2)  # time for an unbounded producer to run far ahead
            assert per_batch <= len(source.pulled) <= bound
            sink.release.set()
    assert counted == [total * len(chunk)]
    assert len(sink.chunks()) == total


class FailingSink(RecordingSink):
    """Takes ``batches`` batches, then fails as a closed pipe does."""

    def __init__(self, batches: int) -> None:
        super().__init__()
        self.left = batches

    async def write_batch(self, batch: Batch) -> None:
        if not self.left:
            raise OutputError("test sink: the reader went away")
        self.left -= 1
        await super().write_batch(batch)


@pytest.mark.parametrize("batches", [0, 1, 3])
async def test_a_failing_sink_ends_the_stream_with_its_error(batches: int) -> None:
    source = Counted(iter([b"d" * (64 * KIB)] * 2000))
    sink = FailingSink(batches)
    with (
        anyio.fail_after(STOP_BOUND),
        pytest.RaisesGroup(
            pytest.RaisesExc(OutputError, match="reader went away"), flatten_subgroups=True
        ),
    ):
        await stream_chunks(source.chunks, sink)
    assert len(sink.batches) == batches
    assert source.closed  # the producer closed its chunks: a layer's files are closed
    assert len(source.pulled) < 2000


@pytest.mark.parametrize("fail_after", [0, 5, 100])
async def test_an_error_from_the_chunks_ends_the_stream_with_that_error(fail_after: int) -> None:
    source = Counted(iter([b"e" * (64 * KIB)] * 2000), fail_after=fail_after)
    sink = RecordingSink()
    with (
        anyio.fail_after(STOP_BOUND),
        pytest.RaisesGroup(
            pytest.RaisesExc(StoreError, match="injected failure"), flatten_subgroups=True
        ),
    ):
        await stream_chunks(source.chunks, sink)
    assert len(source.pulled) == fail_after
    written = sink.chunks()
    assert written == source.pulled[: len(written)]  # what went out came in that order


async def test_the_lead_goes_out_in_the_first_write_and_is_not_counted() -> None:
    chunks = mixed_chunks()
    sink = RecordingSink(written=1000)
    lead = b"h" * 1024  # a member's header after the padding of the member before
    with anyio.fail_after(STOP_BOUND):
        count = await stream_chunks(iter(chunks), sink, lead)
    assert sink.batches[0][0] == lead
    assert sink.chunks() == [lead, *chunks]
    assert count == sum(map(size_of, chunks))
    assert sink.written == 1000 + len(lead) + count


async def test_a_lead_without_content_is_written_alone() -> None:
    sink = RecordingSink()
    with anyio.fail_after(STOP_BOUND):
        assert await stream_chunks(iter([]), sink, b"h" * 512) == 0
    assert sink.batches == [[b"h" * 512]]


@pytest.mark.parametrize("named", [False, True])
async def test_named_chunks_are_made_in_the_event_loop_and_others_in_a_worker_thread(
    named: bool,
) -> None:
    loop_thread = threading.current_thread()
    made_in: list[threading.Thread] = []

    def source() -> Iterator[Chunk]:
        for chunk in mixed_chunks():
            made_in.append(threading.current_thread())
            yield chunk

    sink = RecordingSink()
    with anyio.fail_after(STOP_BOUND):
        await stream_chunks(Named(source()) if named else source(), sink)
    assert sink.chunks() == mixed_chunks()
    assert {thread is loop_thread for thread in made_in} == {named}


async def test_named_chunks_are_closed_when_the_sink_fails() -> None:
    source = Counted(iter([fake_span(1 << 20, f"span{i}") for i in range(2000)]))
    with (
        anyio.fail_after(STOP_BOUND),
        pytest.RaisesGroup(
            pytest.RaisesExc(OutputError, match="reader went away"), flatten_subgroups=True
        ),
    ):
        await stream_chunks(Named(source.chunks), FailingSink(1))
    assert source.closed  # a layer's spool iterator is closed too
    assert len(source.pulled) < 2000


# --- FdSink --------------------------------------------------------------------------


@pytest.fixture
def files(tmp_path: Path) -> tuple[list[Chunk], bytes]:
    """Chunks with two large files (one needs more than one sendfile call, SEND_SIZE),
    and the bytes they stand for."""
    big_data = os.urandom(8 * 1024 * KIB + 12345)
    small_data = os.urandom(100 * KIB)
    big, small = tmp_path / "big", tmp_path / "small"
    big.write_bytes(big_data)
    small.write_bytes(small_data)
    chunks: list[Chunk] = [b"head", span_of(big), b"middle" * 1000, span_of(small), b"tail"]
    return chunks, b"head" + big_data + b"middle" * 1000 + small_data + b"tail"


def sendfile_error(fd: int, tmp_path: Path) -> int:
    """The errno sendfile fails with on ``fd`` (0: it works)."""
    source = tmp_path / "probe"
    source.write_bytes(b"p")
    src = os.open(source, os.O_RDONLY)
    try:
        os.sendfile(fd, src, 0, 1)
    except OSError as exc:
        return exc.errno or -1
    finally:
        os.close(src)
    return 0


@pytest.mark.parametrize("append", [False, True], ids=["sendfile", "o-append"])
async def test_fd_sink_writes_bytes_and_sends_file_content(
    tmp_path: Path, files: tuple[list[Chunk], bytes], append: bool
) -> None:
    chunks, expected = files
    out = tmp_path / "out"
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | (os.O_APPEND if append else 0)
    fd = os.open(out, flags, 0o600)
    try:
        if append:  # what the fallback is for: sendfile refuses an O_APPEND file
            assert sendfile_error(fd, tmp_path) == errno.EINVAL
        sink = FdSink(fd, "out")
        await sink.write(b"prefix")
        with anyio.fail_after(STOP_BOUND):
            count = await stream_chunks(iter(chunks), sink)
    finally:
        os.close(fd)
    assert out.read_bytes() == b"prefix" + expected
    assert count == len(expected)
    assert sink.written == len(expected) + len(b"prefix")


@pytest.mark.parametrize("what", ["bytes", "file"])
async def test_fd_sink_on_a_pipe_whose_reader_left_is_an_output_error(
    files: tuple[list[Chunk], bytes], what: str
) -> None:
    chunks, _ = files
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        sink = FdSink(write_end, "stdout")
        with pytest.raises(OutputError, match="stdout: the reader went away"):
            await sink.write_batch([chunks[0] if what == "bytes" else chunks[1]])
    finally:
        os.close(write_end)
    assert sink.written == 0
    assert not sink.busy


async def test_fd_sink_counts_what_is_written_within_a_batch(
    files: tuple[list[Chunk], bytes],
) -> None:
    # the progress display reads ``written`` a few times a second: a batch of large files
    # (gigabytes, with a slow reader) must not show as nothing until it is all out
    chunks, expected = files
    read_end, write_end = os.pipe()
    sink = FdSink(write_end, "pipe")
    received = bytearray()

    def read_slowly() -> None:
        while data := os.read(read_end, 64 * KIB):
            received.extend(data)
            time.sleep(0.002)

    seen: list[int] = []
    done = anyio.Event()
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(anyio.to_thread.run_sync, read_slowly)

            async def write() -> None:
                try:
                    await sink.write_batch(chunks)
                finally:
                    os.close(write_end)
                    done.set()

            tg.start_soon(write)
            with anyio.fail_after(STOP_BOUND):
                while not done.is_set():
                    seen.append(sink.written)
                    await anyio.sleep(0.005)
    finally:
        os.close(read_end)
    assert bytes(received) == expected
    assert sink.written == len(expected)
    assert seen == sorted(seen)  # it only grows
    # while the one batch was being written: counts within it, not only the whole
    assert any(0 < written < len(expected) for written in seen), seen[-5:]


def refuse_sendfile(monkeypatch: pytest.MonkeyPatch, code: int) -> None:
    """sendfile fails as it does where it can't write to this output (EINVAL on Linux for
    an O_APPEND file; ENOTSOCK on macOS for anything but a socket)."""

    def refused(out_fd: int, in_fd: int, offset: int | None, count: int) -> int:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, "sendfile", refused)


@pytest.mark.parametrize("send", [True, False], ids=["sendfile", "read-write"])
async def test_fd_sink_waits_for_a_non_blocking_pipe_to_take_more(
    files: tuple[list[Chunk], bytes], send: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # O_NONBLOCK, as a CI runner or a Node parent may leave stdout: every write and every
    # sendfile that finds the pipe full fails with EAGAIN; the sink waits for room instead,
    # and leaves the flag alone (the parent shares it).
    if not send:
        refuse_sendfile(monkeypatch, errno.EINVAL)
    chunks, expected = files
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)
    received = bytearray()

    def read_slowly() -> None:
        while data := os.read(read_end, 64 * KIB):
            received.extend(data)
            time.sleep(0.001)  # slower than the sink: the pipe is full most of the time

    try:
        with anyio.fail_after(STOP_BOUND):
            async with anyio.create_task_group() as tg:
                tg.start_soon(anyio.to_thread.run_sync, read_slowly)
                try:
                    await stream_chunks(iter(chunks), FdSink(write_end, "stdout"))
                    assert not os.get_blocking(write_end)
                finally:
                    os.close(write_end)
    finally:
        os.close(read_end)
    assert bytes(received) == expected


async def test_a_write_cancelled_before_it_starts_leaves_the_sink_free() -> None:
    # busy means "a thread may still be inside a write": then the fd is never closed and
    # the process exits without joining; a write that never started must not say so.
    read_end, write_end = os.pipe()
    try:
        sink = FdSink(write_end, "pipe")
        with anyio.CancelScope() as scope:
            scope.cancel()
            await sink.write(b"x")
        assert not sink.busy
        assert sink.written == 0
    finally:
        os.close(read_end)
        os.close(write_end)


async def test_fd_sink_on_a_full_device_says_so() -> None:
    fd = os.open("/dev/full", os.O_WRONLY)  # every write fails with ENOSPC
    try:
        with pytest.raises(OutputError, match=r"^full: no space left on device$"):
            await FdSink(fd, "full").write(b"data")
    finally:
        os.close(fd)


@pytest.mark.parametrize(
    ("exc", "message"),
    [
        (BrokenPipeError(errno.EPIPE, "Broken pipe"), "the reader went away before"),
        (OSError(errno.ENOSPC, "No space left on device"), "no space left on device"),
        (OSError(errno.EIO, "Input/output error"), "write failed: Input/output error"),
    ],
    ids=["epipe", "enospc", "eio"],
)
def test_output_errors_name_the_output_and_the_cause(exc: OSError, message: str) -> None:
    error = output_error("out.tar", exc)
    assert isinstance(error, OutputError)
    assert str(error).startswith(f"out.tar: {message}")
    assert "\n" not in str(error)


def pipe_size(fd: int) -> int:
    return fcntl.fcntl(fd, fcntl.F_GETPIPE_SZ)  # 1032


def test_grow_pipe_gives_a_pipe_a_1_mib_buffer() -> None:
    read_end, write_end = os.pipe()
    try:
        assert pipe_size(write_end) < PIPE_SIZE  # the kernel's default, 64 KiB
        grow_pipe(write_end)
        assert pipe_size(write_end) == PIPE_SIZE == 1024 * KIB
        assert pipe_size(read_end) == PIPE_SIZE  # one buffer, both ends
    finally:
        os.close(read_end)
        os.close(write_end)


def test_grow_pipe_leaves_other_files_alone(tmp_path: Path) -> None:
    path = tmp_path / "regular"
    path.write_bytes(b"unchanged")
    fd = os.open(path, os.O_RDWR)
    try:
        grow_pipe(fd)
        assert os.pread(fd, 100, 0) == b"unchanged"
        assert os.fstat(fd).st_size == len(b"unchanged")
    finally:
        os.close(fd)


# --- watch_reader -----------------------------------------------------------------------


async def test_watch_reader_raises_as_soon_as_a_pipe_s_reader_is_gone() -> None:
    read_end, write_end = os.pipe()
    closed = False
    try:
        sink = FdSink(write_end, "stdout")
        with anyio.fail_after(STOP_BOUND), pytest.RaisesGroup(OutputError) as caught:
            async with anyio.create_task_group() as tg:
                tg.start_soon(watch_reader, sink)
                await anyio.sleep(3 * READER_POLL)  # a reader there: nothing to say
                os.close(read_end)
                closed = True
                await anyio.sleep_forever()
    finally:
        os.close(write_end)
        if not closed:
            os.close(read_end)
    assert closed, "raised while the reader was there"
    # the words a write would have said (EPIPE), no write made
    assert str(caught.value.exceptions[0]) == str(output_error("stdout", BrokenPipeError()))
    assert sink.written == 0


async def test_watch_reader_raises_when_a_socket_s_peer_is_gone() -> None:
    ours, theirs = socket.socketpair()
    with ours:
        theirs.close()
        with anyio.fail_after(STOP_BOUND), pytest.raises(OutputError, match="reader went away"):
            await watch_reader(FdSink(ours.fileno(), "stdout"))


async def test_watch_reader_has_nothing_to_watch_on_a_file(tmp_path: Path) -> None:
    fd = os.open(tmp_path / "out", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        with anyio.fail_after(STOP_BOUND):
            await watch_reader(FdSink(fd, "out"))  # returns: a file has no reader to lose
    finally:
        os.close(fd)
