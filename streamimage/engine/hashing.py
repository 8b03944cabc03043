"""The hash pass of one store layer: its diff_id and size (compressed, also its blob's),
what it saw of every entry (a Witness), and what it spooled for its stream pass to copy.

Blocking, no anyio: it runs in a forked worker (workers.run_in_child) or a worker thread.
Rule 1: the bytes hashed are those the stream pass writes: framed by
``framing.layer_chunks`` and, compressed, by ``compress.compressed_chunks``.
Rule 2: an uncompressed layer is framed and hashed in one thread: framing and hashing in
two threads of one process fight for the GIL (on the benchmark corpus's python layer,
hashing 1 MiB pieces in a second thread took 1.43-1.69 s wall and 1.66-1.97 s CPU,
against 1.40-1.45 s in one). A compressed layer is framed in a second thread while this
one deflates and hashes: ISA-L and hashlib release the GIL, so the two overlap.
"""

from __future__ import annotations

import hashlib
import queue
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import TypeVar, cast

from streamimage.engine.compress import compressed_chunks
from streamimage.engine.framing import Chunk, Witness, layer_chunks, no_checkpoint, read_span
from streamimage.engine.spool import (
    Segment,
    Segments,
    SpoolFile,
    SpoolWriter,
    pieces,
    segment_chunks,
)
from streamimage.engine.walk import LayerPart
from streamimage.imagejson import Digest
from streamimage.options import Compression
from streamimage.tarheader import HeaderEncoder, end_of_archive

T = TypeVar("T")

READ_AHEAD = 2  # pieces (about 1 MiB each) framed ahead of the compressor


@dataclass(frozen=True, slots=True)
class Spooled:
    """What a hash pass left in its spool files for the stream pass to copy."""

    segments: Segments
    size: int  # bytes in the spool files
    compressed: bool = False  # the layer as stored (compressed): copied, not compressed again
    # kept frames of an earlier run (frames.py): sent from the files it kept; the
    # entries were walked by the digest cache's lookup, not walked again
    kept: bool = False


@dataclass(frozen=True, slots=True)
class LayerHash:
    """What the outer archive needs to know of a store layer before streaming it."""

    diff_id: Digest
    size: int  # of the uncompressed layer tar
    blob_digest: Digest  # of the layer as stored: the diff_id unless compressed
    blob_size: int
    witness: Witness
    spooled: Spooled | None = None  # None: the stream pass frames the layer again


class _Sha256:
    """A sha256 and the number of bytes it has seen."""

    __slots__ = ("_sha", "size")

    def __init__(self) -> None:
        self._sha = hashlib.sha256()
        self.size = 0

    def update(self, data: bytes | memoryview) -> None:
        self._sha.update(data)
        self.size += len(data)

    def copy(self) -> _Sha256:
        twin = _Sha256()
        twin._sha = self._sha.copy()
        twin.size = self.size
        return twin

    def digest(self) -> Digest:
        return Digest(self._sha.hexdigest())

    def hash_chunks(self, chunks: Iterable[Chunk], checkpoint: Callable[[], None]) -> None:
        """Hash the chunks' bytes, large files read from the store."""
        for chunk in chunks:
            checkpoint()
            if isinstance(chunk, bytes):
                self.update(chunk)
            else:
                read_span(chunk, self.update, checkpoint)


@dataclass(frozen=True, slots=True)
class Digests:
    """A content's uncompressed digest and size, and its digest and size as stored."""

    diff_id: Digest
    size: int
    blob_digest: Digest
    blob_size: int


def digest_chunks(
    chunks: Iterable[Chunk],
    compression: Compression,
    checkpoint: Callable[[], None] = no_checkpoint,
    stored: Callable[[bytes], object] | None = None,
) -> Digests:
    """Hash what ``chunks`` frame and, with ``compression``, compress it exactly as the
    stream pass will, hashing the compressed bytes too; ``stored`` sees each piece of
    them. ``checkpoint`` runs between pieces (a worker thread's cancellation check).

    Raises:
        StoreError, ChangedError: as the chunks' source.
    """
    plain = _Sha256()
    if not compression.enabled:
        plain.hash_chunks(chunks, checkpoint)
        digest = plain.digest()
        return Digests(digest, plain.size, digest, plain.size)
    blob = _Sha256()
    with read_ahead(iter(chunks), READ_AHEAD) as framed:
        for data in compressed_chunks(framed, compression, plain.update, checkpoint):
            checkpoint()
            blob.update(data)
            if stored is not None:
                stored(data)
    return Digests(plain.digest(), plain.size, blob.digest(), blob.size)


def _layer_hash(found: Digests, witness: Witness, spooled: Spooled | None) -> LayerHash:
    return LayerHash(
        found.diff_id, found.size, found.blob_digest, found.blob_size, witness, spooled
    )


def _framed_spool(writer: SpoolWriter | None) -> Spooled | None:
    segments = None if writer is None else writer.segments
    return None if segments is None or writer is None else Spooled(segments, writer.size)


def hash_layer(
    store_paths: Sequence[str],
    encoder: HeaderEncoder,
    compression: Compression,
    spool: SpoolFile | None,
    checkpoint: Callable[[], None] = no_checkpoint,
) -> LayerHash:
    """Frame the layer of ``store_paths`` and hash it (compressing it as ``compression``
    says), spooling what the stream pass will copy into ``spool`` while its budget lasts:
    the framed bytes (but large files), or a compressed layer's stored bytes.
    ``checkpoint`` runs between pieces (a worker thread's cancellation check).

    Raises:
        StoreError, ChangedError: as layer_chunks.
    """
    witness = Witness()
    chunks = layer_chunks(store_paths, encoder, witness.record)
    writer = None if spool is None else SpoolWriter(spool)
    if not compression.enabled:
        framed = pieces(chunks) if writer is None else writer.tee(chunks, witness.__len__)
        found = digest_chunks(framed, compression, checkpoint)
        return _layer_hash(found, witness, _framed_spool(writer))
    found = digest_chunks(
        pieces(chunks), compression, checkpoint, None if writer is None else writer.add
    )
    segments = None if writer is None else writer.segments_after(len(witness))
    spooled = None
    if segments is not None and writer is not None:
        spooled = Spooled(segments, writer.size, compressed=True)
    return _layer_hash(found, witness, spooled)


def hash_layer_head(
    head: LayerPart,
    rest: LayerPart,
    encoder: HeaderEncoder,
    spool: SpoolFile,
    helper_fd: int,
    records: Connection,
) -> LayerHash:
    """The hash pass of an uncompressed layer framed by two worker processes, as its first
    one runs it: frames, spools and hashes the ``head`` of the layer's walk while a helper
    (spool.spool_part) frames the ``rest`` into spool file ``helper_fd``; then hashes the
    helper's segments from there as ``records`` brings them, then the end. A helper that
    gave up leaves its part to be framed here. The witness returned holds this process's
    entries; the caller adds the helper's.

    Raises:
        StoreError, ChangedError: as layer_chunks.
    """
    witness = Witness()
    writer = SpoolWriter(spool)
    plain = _Sha256()
    framed = layer_chunks(head, encoder, witness.record, end=False)
    plain.hash_chunks(writer.tee(framed, witness.__len__), no_checkpoint)
    before = plain.copy()
    part: list[Segment] = []
    while isinstance(record := records.recv(), Segment):
        plain.hash_chunks(segment_chunks(helper_fd, (record,)), no_checkpoint)
        part.append(record)
    if record is None:  # the helper gave up: forget its segments, frame its part here
        plain = before
        framed = layer_chunks(rest, encoder, witness.record, nix_dirs=False, end=False)
        plain.hash_chunks(writer.tee(framed, witness.__len__), no_checkpoint)
        total = len(witness)
    else:
        writer.adopt(tuple(part), len(witness), file=1)
        total = len(witness) + record
    end = end_of_archive(plain.size)
    plain.hash_chunks(writer.tee(iter([end]), lambda: total), no_checkpoint)
    digest = plain.digest()
    return _layer_hash(
        Digests(digest, plain.size, digest, plain.size), witness, _framed_spool(writer)
    )


_END = object()


@contextmanager
def read_ahead(items: Iterator[T], depth: int) -> Iterator[Iterator[T]]:
    """``items``, advanced by a thread of their own up to ``depth`` items ahead of the
    caller. The thread is stopped and joined when the block ends, however it ends; an
    exception it met is raised in the caller where the item would have been.

    Raises:
        ValueError: ``depth`` < 1 (a queue of size 0 is unbounded).
    """
    if depth < 1:
        raise ValueError(f"read_ahead depth must be at least 1, not {depth}")
    ready: queue.Queue[object] = queue.Queue(depth)
    stop = threading.Event()

    def put(item: object) -> bool:
        while not stop.is_set():
            try:
                ready.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put(item):
                    return
            put(_END)
        except BaseException as exc:  # raised again in the caller
            put(exc)

    def consume() -> Iterator[T]:
        while (item := ready.get()) is not _END:
            if isinstance(item, BaseException):
                raise item
            yield cast(T, item)

    thread = threading.Thread(target=produce, name="read-ahead", daemon=True)
    thread.start()
    try:
        yield consume()
    finally:
        stop.set()
        thread.join()
        close = getattr(items, "close", None)
        if close is not None:
            close()
