"""hashing.py: a hash pass finds the digests and sizes of the bytes the stream pass writes.

What must hold: diff_id and size are those of the layer tar ``framing.layer_chunks`` frames
(large files read in), blob_digest and blob_size those of its ``gzip_bytes``, with or
without a spool, and a compressed spool holds that very blob; ``read_ahead`` hands on every
item or the producer's error, and never leaves its thread or its source behind.
Oracles: ``hashlib.sha256`` of the framed bytes, and ``gzip_bytes`` of them whole.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from streamimage.engine.cache import KeyContext, LayerCache, open_cache
from streamimage.engine.compress import gzip_bytes
from streamimage.engine.framing import Chunk, FileSpan, layer_chunks, read_span
from streamimage.engine.hashing import LayerHash, digest_chunks, hash_layer, read_ahead
from streamimage.engine.scheduler import HashPass
from streamimage.engine.spool import SpoolBudget, SpoolFile
from streamimage.engine.timeline import Timeline
from streamimage.engine.walk import FileIdentity, walk_store_path
from streamimage.imagejson import Digest
from streamimage.options import GZIP_LEVELS, UNCOMPRESSED, Compression
from streamimage.tarheader import HeaderEncoder
from tests import storegen

ENCODER = HeaderEncoder(uid=0, gid=0, uname="root", gname="root", mtime=1)
GZIP_1 = Compression("gzip", 1)
MIB = 1024 * 1024
BIG_FILE = 3 * MIB  # > framing.INLINE_MAX: a FileSpan; compressed, more than one flush


def sha256(data: bytes) -> Digest:
    return Digest(hashlib.sha256(data).hexdigest())


def half_compressible(size: int) -> bytes:
    """``size`` bytes alternating 64 KiB of noise and 64 KiB of zeros."""
    block = 1 << 16
    return ((os.urandom(block) + bytes(block)) * (size // (2 * block) + 1))[:size]


def span_of(path: Path) -> FileSpan:
    st = path.stat()
    return FileSpan(str(path), st.st_size, FileIdentity.of(st))


# --- digest_chunks -------------------------------------------------------------------


@pytest.fixture
def chunks_and_bytes(tmp_path: Path) -> tuple[list[Chunk], bytes]:
    """Bytes around a large file of several reads and flushes, and the bytes they frame."""
    path = tmp_path / "big"
    data = half_compressible(5 * MIB + 77)
    path.write_bytes(data)
    head, tail = b"head" * 100, b"tail"
    return [head, span_of(path), tail], head + data + tail


def test_uncompressed_digests_are_the_sha256_of_the_bytes_files_read_in(
    chunks_and_bytes: tuple[list[Chunk], bytes],
) -> None:
    chunks, whole = chunks_and_bytes
    found = digest_chunks(iter(chunks), UNCOMPRESSED)
    assert found.diff_id == sha256(whole)
    assert found.size == len(whole)
    assert (found.blob_digest, found.blob_size) == (found.diff_id, found.size)


@pytest.mark.parametrize("level", list(GZIP_LEVELS))
def test_the_hash_pass_compresses_large_files_as_the_stream_pass_will(
    chunks_and_bytes: tuple[list[Chunk], bytes], level: int
) -> None:
    chunks, whole = chunks_and_bytes
    stored: list[bytes] = []
    found = digest_chunks(iter(chunks), Compression("gzip", level), stored=stored.append)
    blob = gzip_bytes(whole, level)
    assert found.diff_id == sha256(whole)
    assert found.size == len(whole)
    assert found.blob_digest == sha256(blob)
    assert found.blob_size == len(blob)
    assert b"".join(stored) == blob  # every piece, in order
    assert len(stored) > 1
    assert gzip.decompress(blob) == whole


class Cancelled(BaseException):
    """As anyio's check_cancelled raises in a worker thread: not an Exception."""


@pytest.mark.parametrize("compression", [UNCOMPRESSED, GZIP_1], ids=str)
def test_a_checkpoint_that_raises_stops_the_pass(
    chunks_and_bytes: tuple[list[Chunk], bytes], compression: Compression
) -> None:
    chunks, _ = chunks_and_bytes
    calls = 0

    def cancel_on_the_third_call() -> None:
        nonlocal calls
        calls += 1
        if calls == 3:
            raise Cancelled

    with pytest.raises(Cancelled):
        digest_chunks(iter(chunks), compression, cancel_on_the_third_call)
    assert calls == 3
    assert not read_ahead_threads()


# --- hash_layer ----------------------------------------------------------------------


@pytest.fixture
def store_paths(tmp_path: Path) -> list[str]:
    """Two store paths: a directory of small files, a large one, a symlink, a
    subdirectory and an empty file; and a store path that is a file."""
    store = tmp_path / storegen.STORE_DIR
    package = store / storegen.store_name("package")
    (package / "bin").mkdir(parents=True)
    (package / "bin" / "tool").write_bytes(storegen.content("tool", 5000))
    (package / "lib" / "sub").mkdir(parents=True)
    (package / "lib" / "big").write_bytes(half_compressible(BIG_FILE))
    (package / "lib" / "link").symlink_to("big")
    (package / "lib" / "sub" / "empty").write_bytes(b"")
    (package / "lib" / "sub" / "small").write_bytes(storegen.content("small", 511))
    single = store / storegen.store_name("file.txt")
    single.write_bytes(b"a store path that is a file\n")
    return [str(package), str(single)]


def framed(paths: list[str]) -> bytes:
    """The layer tar as layer_chunks frames it, large files read in."""
    out = bytearray()
    spans = 0
    for chunk in layer_chunks(paths, ENCODER, lambda entry: None):
        if isinstance(chunk, FileSpan):
            read_span(chunk, out.extend)
            spans += 1
        else:
            assert isinstance(chunk, bytes)  # framed: no spool's ranges
            out += chunk
    assert spans == 1  # the large file is not framed inline: the layer is the one meant
    return bytes(out)


def entries(paths: list[str]) -> int:
    return sum(1 for path in paths for _ in walk_store_path(path))


@pytest.fixture
def spool_fd(tmp_path: Path) -> Iterator[int]:
    fd = os.open(tmp_path, os.O_TMPFILE | os.O_RDWR)
    yield fd
    os.close(fd)


def target(fd: int, total: int = 1 << 30) -> SpoolFile:
    """A spool file of its own budget of ``total`` bytes."""
    return SpoolFile(fd, SpoolBudget("/nonexistent", total, 1), 0)


def spool_bytes(fd: int, result: LayerHash) -> bytes:
    assert result.spooled is not None
    return b"".join(os.pread(fd, s.size, s.offset) for s in result.spooled.segments)


@pytest.mark.parametrize("spooled", [False, True], ids=["no-spool", "spool"])
def test_an_uncompressed_layer_hash_is_the_sha256_of_its_framed_tar(
    store_paths: list[str], spool_fd: int, spooled: bool
) -> None:
    result = hash_layer(store_paths, ENCODER, UNCOMPRESSED, target(spool_fd) if spooled else None)
    whole = framed(store_paths)
    assert result.diff_id == sha256(whole)
    assert result.size == len(whole)
    assert (result.blob_digest, result.blob_size) == (result.diff_id, result.size)
    assert len(result.witness) == entries(store_paths)
    assert (result.spooled is not None) == spooled
    if result.spooled is not None:
        assert not result.spooled.compressed
        assert result.spooled.size == len(whole) - BIG_FILE  # the large file stays put


@pytest.mark.parametrize("spooled", [False, True], ids=["no-spool", "spool"])
def test_a_compressed_layer_hash_is_that_of_the_gzip_of_its_framed_tar(
    store_paths: list[str], spool_fd: int, spooled: bool
) -> None:
    result = hash_layer(store_paths, ENCODER, GZIP_1, target(spool_fd) if spooled else None)
    whole = framed(store_paths)
    blob = gzip_bytes(whole, 1)
    assert result.diff_id == sha256(whole)
    assert result.size == len(whole)
    assert result.blob_digest == sha256(blob)
    assert result.blob_size == len(blob)
    assert len(result.witness) == entries(store_paths)
    assert (result.spooled is not None) == spooled


def test_a_compressed_spool_holds_the_blob_as_stored(store_paths: list[str], spool_fd: int) -> None:
    result = hash_layer(store_paths, ENCODER, GZIP_1, target(spool_fd))
    assert result.spooled is not None
    assert result.spooled.compressed
    blob = spool_bytes(spool_fd, result)
    assert sha256(blob) == result.blob_digest
    assert len(blob) == result.blob_size == result.spooled.size
    assert gzip.decompress(blob) == framed(store_paths)
    segments = result.spooled.segments
    assert len(segments) > 1
    # a compressed layer's bytes can't be matched to entries: each waits for them all
    assert all(s.span is None and s.entries == len(result.witness) for s in segments)


def test_a_compressed_layer_over_its_spool_budget_is_hashed_the_same(
    store_paths: list[str], spool_fd: int
) -> None:
    result = hash_layer(store_paths, ENCODER, GZIP_1, target(spool_fd, total=1000))
    unspooled = hash_layer(store_paths, ENCODER, GZIP_1, None)
    assert result.spooled is None
    assert os.fstat(spool_fd).st_size == 0
    assert (result.diff_id, result.size, result.blob_digest, result.blob_size) == (
        unspooled.diff_id,
        unspooled.size,
        unspooled.blob_digest,
        unspooled.blob_size,
    )


# --- read_ahead ----------------------------------------------------------------------


def read_ahead_threads() -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name == "read-ahead"]


class Source:
    """Items 0, 1, 2... (``count`` of them, or without end), counting those taken, and
    whether the generator was closed (its finally ran). It holds its generator, so that
    only a close, not the garbage collector, runs that finally."""

    def __init__(self, count: int | None = None) -> None:
        self.count = count
        self.taken = 0
        self.closed = False
        self.items = self._items()

    def _items(self) -> Iterator[int]:
        try:
            while self.count is None or self.taken < self.count:
                self.taken += 1
                yield self.taken - 1
        finally:
            self.closed = True


def test_read_ahead_yields_every_item_in_order() -> None:
    source = Source(1000)
    with read_ahead(source.items, 2) as items:
        assert list(items) == list(range(1000))
    assert not read_ahead_threads()


def test_read_ahead_raises_the_producers_error_in_the_consumer() -> None:
    boom = ValueError("boom")

    def failing() -> Iterator[int]:
        yield 1
        yield 2
        raise boom

    got: list[int] = []
    with read_ahead(failing(), 2) as items, pytest.raises(ValueError, match="boom") as raised:
        got.extend(items)  # keeps the items before the error
    assert raised.value is boom
    assert got == [1, 2]
    assert not read_ahead_threads()


def test_read_ahead_stays_a_bounded_distance_ahead() -> None:
    source = Source(10_000)
    depth = 2
    with read_ahead(source.items, depth) as items:
        assert next(items) == 0
        time.sleep(0.1)  # time for an unbounded producer to take them all
        # the one handed on, ``depth`` in the queue, one in the producer's hand
        assert source.taken <= 1 + depth + 1
    assert source.closed


def leave_early(source: Source, how: str) -> None:
    with read_ahead(source.items, 2) as items:
        assert next(items) == 0
        assert read_ahead_threads()
        if how == "raise":
            raise KeyError("the consumer failed")


@pytest.mark.parametrize("how", ["return", "raise"])
def test_read_ahead_stops_its_thread_and_closes_its_source_when_the_consumer_leaves(
    how: str,
) -> None:
    source = Source()  # without end: the producer waits on a full queue
    if how == "raise":
        with pytest.raises(KeyError, match="the consumer failed"):
            leave_early(source, how)
    else:
        leave_early(source, how)
    assert not read_ahead_threads()
    assert source.closed


async def passes_started(layers: list[list[str]], cache: LayerCache | None = None) -> list[int]:
    """The order the passes of ``layers`` began in, with one worker (the order started)."""
    hashes = HashPass(layers, ENCODER, UNCOMPRESSED, workers=1, processes=False, cache=cache)
    async with anyio.create_task_group() as tg:
        hashes.start(tg)
        for index in range(len(layers)):
            await hashes.result(index)
    return sorted(range(len(layers)), key=lambda i: hashes.timeline(i).hash_start)


@pytest.fixture
def sized_layers(tmp_path: Path) -> list[list[str]]:
    sizes = [3, 5, 400, 2, 60]  # entries below each store path, by layer
    layers = []
    for n, count in enumerate(sizes):
        path = tmp_path / f"abc-path{n}"
        path.mkdir()
        for i in range(count):
            (path / f"f{i}").write_bytes(b"x")
        layers.append([str(path)])
    return layers


async def test_the_first_layer_then_the_layers_of_most_entries_hash_first(
    sized_layers: list[list[str]],
) -> None:
    # nixpkgs orders layers by popularity: its largest (a Python env) comes near the end;
    # its pass must not start last.
    assert await passes_started(sized_layers) == [0, 2, 4, 1, 3]


async def test_layers_the_cache_holds_are_looked_up_in_the_streams_order(
    sized_layers: list[list[str]], tmp_path: Path
) -> None:
    # a lookup is a walk, not a hash pass: in the stream's order the stream starts at once
    layers = sized_layers
    context = KeyContext(0, 0, "root", "root", 1, UNCOMPRESSED)
    cache = LayerCache(open_cache(str(tmp_path / "cache")), context, processes=False)
    try:
        for index in (1, 3):  # held: 1 and 3; the others are misses, most entries first
            found = hash_layer(layers[index], ENCODER, UNCOMPRESSED, None)
            await cache.remember(layers[index], found, Timeline(), time.time() + 10)
        assert await passes_started(layers, cache) == [0, 1, 3, 2, 4]
    finally:
        cache.close()
