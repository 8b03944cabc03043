"""The spool: what a layer's hash pass framed, kept on disk for its stream pass to copy.

IO. Framing a layer (walk, headers, small files' content) is most of a pass's cost on a
store of many small files, and without a spool the stream pass pays it twice. With one,
the hash pass writes what it framed, but large files' content (FileSpans, sent from the
store as before), to an unlinked temporary file; the stream pass copies it.
Rule 1: the stream pass still walks the store and holds every entry to the hash pass's
witness before the spooled bytes that frame it go out (``Segment.entries``), so a store
that changes between the passes fails the run as before; what goes out is what was hashed.
Rule 2: spooling is an optimisation, never a failure: over its budget, or when the spool
can't be created or written (a full disk), the layer is framed again from the store.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from itertools import chain

from streamimage.errors import ChangedError
from streamimage.layer import Chunk, FileSpan
from streamimage.walk import Entry, walk_store_path

PIECE = 1024 * 1024  # bytes: the spool is written, and released to the stream, in pieces


@dataclass(frozen=True, slots=True)
class Segment:
    """A piece of a layer tar: spooled bytes, or a large file's content in the store."""

    entries: int  # entries framed up to its end: the stream pass checks them before it
    offset: int  # in the spool
    size: int
    span: FileSpan | None = None  # set: the content of this file instead of spooled bytes


Segments = tuple[Segment, ...]


@dataclass(frozen=True, slots=True)
class SpoolTarget:
    """Where a hash pass may spool: an open spool file and how much of it to use."""

    fd: int
    limit: int  # bytes; beyond them the hash pass gives up spooling


def pieces(chunks: Iterator[Chunk]) -> Iterator[Chunk]:
    """``chunks``, their bytes joined into pieces of about PIECE bytes (large files'
    FileSpans pass as they are): fewer, larger updates for a hash in another thread, and
    whole pieces for the spool."""
    pending: list[bytes] = []
    held = 0
    for chunk in chunks:
        if isinstance(chunk, bytes):
            pending.append(chunk)
            held += len(chunk)
            if held < PIECE:
                continue
            yield b"".join(pending)
        else:
            if held:
                yield b"".join(pending)
            yield chunk
        pending.clear()
        held = 0
    if held:
        yield b"".join(pending)


class SpoolWriter:
    """The hash pass's side: passes a layer's pieces on, writing their bytes to the spool."""

    def __init__(self, target: SpoolTarget) -> None:
        self._fd = target.fd
        self._limit = target.limit
        self._size = 0
        self._segments: list[Segment] | None = []

    @property
    def segments(self) -> Segments | None:
        """The layer as spooled, or None if spooling was given up."""
        return None if self._segments is None else tuple(self._segments)

    @property
    def size(self) -> int:
        """Bytes in the spool."""
        return self._size

    def tee(self, chunks: Iterator[Chunk], entries: Callable[[], int]) -> Iterator[Chunk]:
        """``chunks`` as pieces (their bytes unchanged), spooled; ``entries()``: how many
        entries the chunks have framed so far (each chunk frames only entries counted by
        the time it is yielded, so a piece frames those counted when it is made)."""
        for piece in pieces(chunks):
            if self._segments is not None:
                if isinstance(piece, bytes):
                    self._write(piece, entries())
                else:
                    self._segments.append(Segment(entries(), 0, piece.size, piece))
            yield piece

    def _write(self, piece: bytes, entries: int) -> None:
        assert self._segments is not None
        size = len(piece)
        if self._size + size > self._limit:
            self._give_up()
            return
        data = memoryview(piece)
        offset = self._size
        try:
            while data:
                written = os.pwrite(self._fd, data, offset)
                data = data[written:]
                offset += written
        except OSError:  # a full disk, a quota: frame the layer again instead
            self._give_up()
            return
        self._segments.append(Segment(entries, self._size, size))
        self._size += size

    def _give_up(self) -> None:
        self._segments = None
        self._size = 0
        with contextlib.suppress(OSError):
            os.ftruncate(self._fd, 0)  # give the space back now


def _read(fd: int, segment: Segment) -> bytes:
    data = os.pread(fd, segment.size, segment.offset)
    while len(data) < segment.size:
        more = os.pread(fd, segment.size - len(data), segment.offset + len(data))
        if not more:
            raise OSError(errno.EIO, "the spool is shorter than written")
        data += more
    return data


def spooled_chunks(
    fd: int,
    segments: Segments,
    store_paths: Sequence[str],
    on_entry: Callable[[Entry], None],
) -> Iterator[Chunk]:
    """The stream pass of a spooled layer: the chunks of ``layer_chunks``, from the spool,
    each after ``on_entry`` has seen every entry it frames (walked again from the store).

    Raises:
        StoreError: a store path can't be walked.
        ChangedError: an entry changed (from on_entry), or entries disappeared.
    """
    walked = chain.from_iterable(walk_store_path(path) for path in store_paths)
    seen = 0
    for segment in segments:
        while seen < segment.entries:
            entry = next(walked, None)
            if entry is None:
                raise ChangedError(
                    f"{store_paths[-1]}: entries disappeared between the hash and stream passes"
                )
            on_entry(entry)
            seen += 1
        yield segment.span if segment.span is not None else _read(fd, segment)
    for entry in walked:
        on_entry(entry)  # one more than the hash pass saw: the witness refuses it


class SpoolBudget:
    """Hands each hash pass a spool file and its share of the bytes that may be spooled
    at once: ``total`` split between ``workers`` passes, returned when a layer is streamed.
    Used by one event loop only (no lock)."""

    def __init__(self, directory: str, total: int, workers: int) -> None:
        self.directory = directory
        self.total = total
        self._share = total // max(1, workers)
        self._available = total

    def open(self) -> tuple[int, SpoolTarget] | None:
        """A spool file and its target, or None (nothing left, or it can't be created)."""
        limit = min(self._share, self._available)
        if limit < PIECE:
            return None
        try:
            fd = _unlinked_file(self.directory)
        except OSError:
            return None
        self._available -= limit
        return limit, SpoolTarget(fd, limit)

    def settle(self, reserved: int, used: int) -> None:
        """A hash pass ended, using ``used`` of its ``reserved`` bytes."""
        self._available += reserved - used

    def release(self, used: int) -> None:
        """A spool of ``used`` bytes was closed."""
        self._available += used


def _unlinked_file(directory: str) -> int:
    # O_TMPFILE where the file system has it: never a name, so nothing is ever left behind
    file = tempfile.TemporaryFile(dir=directory, buffering=0)  # noqa: SIM115 (fd kept)
    fd = os.dup(file.fileno())
    file.close()
    return fd


def spool_budget(directory: str | None, maximum: int, workers: int) -> SpoolBudget:
    """The budget for this run: at most ``maximum`` bytes and half the free space of
    ``directory`` (default: the temporary directory) at the start."""
    where = directory if directory is not None else tempfile.gettempdir()
    try:
        st = os.statvfs(where)
        free = st.f_bavail * st.f_frsize
    except OSError:
        free = 0
    return SpoolBudget(where, min(maximum, free // 2), workers)
