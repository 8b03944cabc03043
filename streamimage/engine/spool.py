"""The spool: what a layer's hash pass framed, kept on disk for its stream pass to copy.

IO. Framing a layer (walk, headers, small files' content) is most of a pass's cost on a
store of many small files, and without a spool the stream pass pays it twice. With one,
the hash pass writes what it framed, but large files' content (FileSpans, sent from the
store as before), to an unlinked temporary file; the stream pass sends its pieces from
it (SpoolRanges: sendfile, never read back into memory).
Rule 1: what goes out is what was hashed: the spool holds the bytes the pass hashed (it
tees them), so the stream pass sends them as they are, without walking the store again; a
large file is sent from the store, held to the identity it was hashed with, before and
after (a change fails the run). A store that changes after a layer's hash pass can't make
the image disagree with its digests: the layer is the store as its pass saw it.
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
from multiprocessing.connection import Connection

from streamimage.engine.framing import Chunk, FileSpan, SpoolRange, Witness, layer_chunks
from streamimage.engine.walk import LayerPart
from streamimage.engine.workers import SHARED
from streamimage.tarheader import HeaderEncoder

PIECE = 1024 * 1024  # bytes: the spool is written, and released to the stream, in pieces


@dataclass(frozen=True, slots=True)
class Segment:
    """A piece of a layer tar: spooled bytes, or a large file's content in the store."""

    entries: int  # entries framed up to its end: the stream pass checks them before it
    offset: int  # in the spool
    size: int
    span: FileSpan | None = None  # set: the content of this file instead of spooled bytes
    file: int = 0  # which of the layer's spool files: 0 its own, 1 its helper's (a split pass)


Segments = tuple[Segment, ...]


@dataclass(frozen=True, slots=True)
class SpoolFile:
    """Where a hash pass may spool: an open spool file, and the budget it counts against."""

    fd: int
    budget: SpoolBudget
    counter: int  # the budget's counter of this pass's bytes


def pieces(chunks: Iterator[Chunk]) -> Iterator[Chunk]:
    """``chunks``, their bytes joined into pieces of about PIECE bytes (large files'
    FileSpans pass as they are): fewer, larger hash updates, and whole pieces for the
    spool."""
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

    def __init__(
        self, target: SpoolFile, on_segment: Callable[[Segment], object] | None = None
    ) -> None:
        """``on_segment``: told of each segment once it is in the spool; then giving up
        leaves the spool as it is (the segments told of may still be read)."""
        self._fd = target.fd
        self._budget = target.budget
        self._counter = target.counter
        self._size = 0
        self._segments: list[Segment] | None = []
        self._on_segment = on_segment

    @property
    def segments(self) -> Segments | None:
        """The layer as spooled, or None if spooling was given up."""
        return None if self._segments is None else tuple(self._segments)

    @property
    def size(self) -> int:
        """Bytes in the spool."""
        return self._size

    @property
    def gave_up(self) -> bool:
        """Spooling was given up (over budget, or a write failed)."""
        return self._segments is None

    def tee(self, chunks: Iterator[Chunk], entries: Callable[[], int]) -> Iterator[Chunk]:
        """``chunks`` as pieces (their bytes unchanged), spooled; ``entries()``: how many
        entries the chunks have framed so far (each chunk frames only entries counted by
        the time it is yielded, so a piece frames those counted when it is made)."""
        for piece in pieces(chunks):
            if self._segments is not None:
                if isinstance(piece, bytes):
                    self._write(piece, entries())
                else:
                    assert isinstance(piece, FileSpan)  # framed here: no spool's ranges
                    self._append(Segment(entries(), 0, piece.size, piece))
            yield piece

    def _append(self, segment: Segment) -> None:
        assert self._segments is not None
        self._segments.append(segment)
        if self._on_segment is not None:
            self._on_segment(segment)

    def add(self, data: bytes, entries: int = 0) -> None:
        """Spool ``data``, which frames the first ``entries`` entries (unless given up)."""
        if self._segments is not None:
            self._write(data, entries)

    def segments_after(self, entries: int) -> Segments | None:
        """The segments, each made to wait for all ``entries`` of the layer: the spool of
        a compressed layer, whose bytes can't be matched to entries."""
        if self._segments is None:
            return None
        return tuple(Segment(entries, s.offset, s.size) for s in self._segments)

    def adopt(self, segments: Segments, entries: int, file: int) -> None:
        """Append a part of the layer spooled by a helper into spool file number ``file``,
        its entries coming after the ``entries`` framed here."""
        if self._segments is not None:
            self._segments.extend(
                Segment(s.entries + entries, s.offset, s.size, s.span, file) for s in segments
            )

    def _write(self, piece: bytes, entries: int) -> None:
        assert self._segments is not None
        size = len(piece)
        if not self._budget.take(self._counter, self._size + size):
            self._give_up()
            return
        try:
            write_all(self._fd, piece, self._size)
        except OSError:  # a full disk, a quota: frame the layer again instead
            self._give_up()
            return
        self._append(Segment(entries, self._size, size))
        self._size += size

    def _give_up(self) -> None:
        self._segments = None
        self._size = 0
        if self._on_segment is None:
            self._budget.count(self._counter, 0)
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)  # give the space back now


def write_all(fd: int, data: bytes, offset: int) -> None:
    """Write all of ``data`` at ``offset`` of ``fd``.

    Raises:
        OSError: it can't (ENOSPC, EDQUOT, EIO...).
    """
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view = view[written:]
        offset += written


@dataclass(frozen=True, slots=True)
class SpooledPart:
    """What a split hash pass's helper spooled: a later part of a layer, framed apart."""

    witness: Witness
    size: int  # bytes spooled


def spool_part(
    store_paths: Sequence[str] | LayerPart,
    encoder: HeaderEncoder,
    target: SpoolFile,
    records: Connection,
) -> SpooledPart | None:
    """Frame the members of ``store_paths`` (or of a part of their walk) into the spool (a
    split pass's helper, in a worker process), sending each Segment on ``records`` once it
    is in the spool, for the layer's hash pass, in another process, to hash it from
    there; then the number of
    entries framed, or None: the part didn't fit (the hash pass frames it itself). Large
    files are neither read nor spooled here.

    Raises:
        StoreError, ChangedError: as layer_chunks.
    """
    witness = Witness()
    writer = SpoolWriter(target, on_segment=records.send)
    chunks = layer_chunks(store_paths, encoder, witness.record, nix_dirs=False, end=False)
    for _ in writer.tee(chunks, witness.__len__):
        if writer.gave_up:
            records.send(None)
            return None
    records.send(len(witness))
    return SpooledPart(witness, writer.size)


def segment_chunks(fd: int, segments: Segments) -> Iterator[Chunk]:
    """The chunks of a part spooled into ``fd``: ranges of it (read back by whoever hashes
    them: read_span), and its FileSpans."""
    for segment in segments:
        if segment.span is not None:
            yield segment.span
        else:
            yield SpoolRange(fd, segment.offset, segment.size, "a split pass's helper spool")


def sent_chunks(fds: Sequence[int], segments: Segments, label: str) -> Iterator[tuple[Chunk, int]]:
    """The chunks of a spooled layer as its stream pass sends them, each with the entries
    framed up to its end: the spooled pieces as ranges of the spool files ``fds`` (sent,
    never read here: the bytes that were hashed), large files' FileSpans (sent from the
    store, each held to the identity it was hashed with). ``label`` names the layer."""
    name = f"{label}: its spool"
    for segment in segments:
        if segment.span is not None:
            yield segment.span, segment.entries
        else:
            yield SpoolRange(fds[segment.file], segment.offset, segment.size, name), segment.entries


class SpoolBudget:
    """How many bytes the spools of a run may hold at once, counted across the hash
    passes' worker processes: one counter per pass in shared memory, each written by one
    process at a time (the pass's, then the parent's once the pass is over), so no lock
    that a killed worker could leave taken. Passes check the sum before each piece, so
    together they may overshoot ``total`` by a piece each, no more."""

    def __init__(self, directory: str, total: int, counters: int) -> None:
        self.directory = directory
        self.total = total
        self._counts = SHARED.Array("q", counters, lock=False)

    def used(self) -> int:
        """Bytes in all spools now."""
        return sum(self._counts)

    def take(self, counter: int, size: int) -> bool:
        """Let ``counter`` hold ``size`` bytes, if the total allows; False if not."""
        if self.used() - self._counts[counter] + size > self.total:
            return False
        self._counts[counter] = size
        return True

    def count(self, counter: int, size: int) -> None:
        """``counter`` holds ``size`` bytes now (0: its spool was given up or closed)."""
        self._counts[counter] = size

    def open(self, counter: int) -> SpoolFile | None:
        """A new spool file counted by ``counter``, or None: no room left, or it can't
        be created (spooling is never a failure)."""
        if self.total - self.used() < PIECE:
            return None
        try:
            fd = _unlinked_file(self.directory)
        except OSError:
            return None
        self._counts[counter] = 0
        return SpoolFile(fd, self, counter)


def _unlinked_file(directory: str) -> int:
    """A new file in ``directory`` with no name.

    Raises:
        OSError: it can't be created.
    """
    # O_TMPFILE (Linux) where the file system has it: never a name, nothing ever left
    # behind; elsewhere (macOS, BSDs, file systems without it) a name unlinked at once.
    tmpfile = getattr(os, "O_TMPFILE", 0)
    if tmpfile:
        try:
            return os.open(directory, os.O_RDWR | os.O_CLOEXEC | tmpfile, 0o600)
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
                raise
    fd, name = tempfile.mkstemp(prefix=".streamimage-spool.", dir=directory)
    try:
        os.unlink(name)
    except OSError:
        os.close(fd)
        raise
    return fd


def spool_budget(directory: str | None, maximum: int, counters: int) -> SpoolBudget | None:
    """The budget for this run: at most ``maximum`` bytes and half the free space of
    ``directory`` (default: the temporary directory) at the start; None: no spooling."""
    where = directory if directory is not None else tempfile.gettempdir()
    try:
        st = os.statvfs(where)
        free = st.f_bavail * st.f_frsize
    except OSError:
        free = 0
    total = min(maximum, free // 2)
    return SpoolBudget(where, total, counters) if total >= PIECE else None
