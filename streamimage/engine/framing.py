"""Entries -> the blocks of one layer tar: the single framing used by the hash and stream passes.

IO: reads file content (small files inline, large ones handed on as FileSpans).
Rule 1: ``layer_chunks`` is the only place a store layer is framed; the hash pass and the
stream pass both consume it, so the bytes hashed are the bytes streamed.
Rule 2: the stream pass proves it streams what the hash pass hashed: every entry's inode,
size, mtime, ctime and mode are checked against the hash pass's record (a Witness), and
every file is checked again after its content is read; any difference is a ChangedError.
"""

from __future__ import annotations

import hashlib
import os
from array import array
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

from streamimage.engine.walk import Entry, FileIdentity, LayerPart, lstats, store_error
from streamimage.errors import ChangedError
from streamimage.tarheader import DIRTYPE, REGTYPE, HeaderEncoder, end_of_archive, padding

INLINE_MAX = 64 * 1024  # bytes: files up to this size travel inside a chunk
CHUNK_TARGET = 256 * 1024  # bytes: a chunk is handed on once this much has gathered
READ_SIZE = 1024 * 1024  # bytes per read when hashing a large file
NIX_DIR_MODE = 0o755  # /nix and /nix/store, as the docker tools write them

_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass(frozen=True, slots=True)
class FileSpan:
    """The content of a large regular file, to be read (hash pass) or sent (stream pass)."""

    path: str
    size: int
    identity: FileIdentity  # as Entry.identity, checked when opened


@dataclass(frozen=True, slots=True)
class SpoolRange:
    """Bytes framed already, in an open spool file (a run's spool, or kept frames): sent
    from the page cache with sendfile, read with pread; never held in memory. The fd is
    its owner's, open until the layer is released."""

    fd: int
    offset: int
    size: int
    name: str  # what the spool is, for errors: "store layer 3 (/nix/store/...): its spool"


Chunk = bytes | FileSpan | SpoolRange


class Named(Iterator[Chunk]):
    """Chunks that name their bytes and read none to be made: spool ranges and large
    files' spans (a spooled layer's, kept frames', the customisation layer's file). Their
    producer needs no worker thread (pipeline.stream_chunks): the sink reads them."""

    __slots__ = ("_chunks",)

    def __init__(self, chunks: Iterable[Chunk]) -> None:
        self._chunks = iter(chunks)

    def __next__(self) -> Chunk:
        return next(self._chunks)

    def close(self) -> None:
        close = getattr(self._chunks, "close", None)
        if close is not None:
            close()


class Witness:
    """What the hash pass saw of each entry, for the stream pass to hold it to."""

    __slots__ = ("_cursor", "_seen", "newest_ctime_ns")

    def __init__(self) -> None:
        self._seen = array("q")
        self._cursor = 0
        self.newest_ctime_ns = 0  # of the entries recorded: how recently the store changed

    def record(self, entry: Entry) -> None:
        self._seen.append(entry.fingerprint)
        ctime = entry.identity.ctime_ns
        if ctime > self.newest_ctime_ns:
            self.newest_ctime_ns = ctime

    def record_stats(self, stats: Iterable[os.stat_result]) -> None:
        """Record entries from their lstat alone, as ``record`` records their Entry: an
        Entry's fingerprint is the hash of its FileIdentity, a NamedTuple, which hashes as
        the plain tuple of its fields (the tests hold the two ways to the same digest)."""
        append = self._seen.append
        newest = self.newest_ctime_ns
        for st in stats:
            ctime = st.st_ctime_ns
            append(hash((st.st_ino, st.st_size, st.st_mtime_ns, ctime, st.st_mode)))
            if ctime > newest:
                newest = ctime
        self.newest_ctime_ns = newest

    def check(self, entry: Entry) -> None:
        """Raises: ChangedError: the entry is not what the hash pass saw at this place."""
        cursor = self._cursor
        if cursor >= len(self._seen) or self._seen[cursor] != entry.fingerprint:
            raise ChangedError(f"{entry.path}: changed between the hash pass and the stream pass")
        self._cursor = cursor + 1

    def rewind(self) -> None:
        """Hold a stream pass from the first entry again: a registry's upload that failed
        is retried from the start of the layer."""
        self._cursor = 0

    def __len__(self) -> int:
        """Entries recorded."""
        return len(self._seen)

    def extend(self, other: Witness) -> None:
        """Append what ``other`` recorded (a later part of the same layer)."""
        self._seen.extend(other._seen)
        self.newest_ctime_ns = max(self.newest_ctime_ns, other.newest_ctime_ns)

    def digest(self) -> str:
        """A sha256 of everything recorded, in order: the layer's fingerprint (cache.py)."""
        return hashlib.sha256(self._seen.tobytes()).hexdigest()

    def check_complete(self, layer: str) -> None:
        """Raises: ChangedError: the stream pass met fewer entries than the hash pass."""
        if self._cursor != len(self._seen):
            raise ChangedError(f"{layer}: entries disappeared between the hash and stream passes")


def witness_of(store_paths: Sequence[str]) -> Witness:
    """What a walk of ``store_paths`` sees of every entry, as a hash pass records it (the
    lstats alone: a digest cache lookup's fingerprint, made without an Entry each).

    Raises:
        StoreError: a store path can't be walked.
    """
    witness = Witness()
    for store_path in store_paths:
        witness.record_stats(lstats(store_path))
    return witness


def check_unchanged(path: str, fd: int, identity: FileIdentity) -> None:
    """Raises: ChangedError: the open file is not (or no longer) the one that was walked."""
    now = FileIdentity.of(os.fstat(fd))
    if now != identity:
        raise ChangedError(f"{path}: changed while being archived ({identity.changes(now)})")


def open_checked(path: str, identity: FileIdentity) -> int:
    """Open a regular file of the store for reading, checking it is the one walked.

    Raises:
        StoreError: it can't be opened.
        ChangedError: it was replaced or modified since it was walked.
    """
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except OSError as exc:
        raise store_error(path, exc, "open") from exc
    try:
        check_unchanged(path, fd, identity)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _read_small(entry: Entry) -> bytes:
    # No check at open: the one after reading also proves it was the file walked.
    path, size = entry.path, entry.size
    try:
        fd = os.open(entry.base, _OPEN_FLAGS, dir_fd=entry.dir_fd)
    except OSError as exc:
        raise store_error(path, exc, "open") from exc
    try:
        data = os.read(fd, size)
        while len(data) < size and (more := os.read(fd, size - len(data))):
            data += more
        if FileIdentity.of(os.fstat(fd)) != entry.identity:
            check_unchanged(path, fd, entry.identity)
    finally:
        os.close(fd)
    if len(data) != size:
        raise ChangedError(f"{path}: size {size} -> {len(data)} while being read")
    return data


def layer_chunks(
    store_paths: Sequence[str] | LayerPart,
    encoder: HeaderEncoder,
    on_entry: Callable[[Entry], None],
    *,
    nix_dirs: bool = True,
    end: bool = True,
) -> Iterator[Chunk]:
    """The layer tar of ``store_paths`` (or of a part of their walk): bytes chunks, and
    FileSpans for large files' content.

    ``on_entry`` sees every walked entry before it is framed (Witness.record or .check).
    ``nix_dirs=False``, ``end=False``: without the /nix and /nix/store members before the
    entries, without the end of the archive after them: a part of a layer, framed apart
    (members don't depend on where they are in the layer; the end does).

    Raises:
        StoreError: a store path can't be read or holds something tar can't carry.
        ChangedError: a file changed while it was read.
    """
    encode = encoder.encode
    parts: list[bytes] = []
    append = parts.append
    held = 0  # bytes in parts
    done = 0  # bytes handed on before them
    if nix_dirs:
        # /nix and /nix/store come first, to be consistent with the docker tools
        append(encode("/nix/", DIRTYPE, NIX_DIR_MODE))
        append(encode("/nix/store/", DIRTYPE, NIX_DIR_MODE))
        held = 2 * len(parts[0])
    part = store_paths if isinstance(store_paths, LayerPart) else LayerPart(tuple(store_paths))
    for entry in part.entries():
        on_entry(entry)
        header = encode(
            entry.name, entry.type, entry.mode, entry.size, entry.linkname, entry.device
        )
        append(header)
        held += len(header)
        size = entry.size
        if size and entry.type == REGTYPE:
            pad = padding(size)
            if size <= INLINE_MAX:
                append(_read_small(entry))
            else:
                yield b"".join(parts)
                parts.clear()
                yield FileSpan(entry.path, size, entry.identity)
                done += held + size
                held = 0
            append(pad)
            held += len(pad) + (size if size <= INLINE_MAX else 0)
        if held >= CHUNK_TARGET:
            yield b"".join(parts)
            parts.clear()
            done += held
            held = 0
    if end:
        append(end_of_archive(done + held))
    if parts:
        yield b"".join(parts)


def no_checkpoint() -> None:
    """A checkpoint that never cancels: a worker process is cancelled by killing it."""


def read_pieces(
    span: FileSpan | SpoolRange, checkpoint: Callable[[], None] = no_checkpoint
) -> Iterator[memoryview]:
    """A FileSpan's content in large reads, checking it is unchanged (or a SpoolRange's).
    Each piece is a view of one buffer, reused for the next: consume it before asking
    for the next.

    Raises:
        StoreError: it can't be opened.
        ChangedError: it changed since it was walked or while it was read (a spool: it is
            shorter than written).
    """
    if isinstance(span, SpoolRange):
        yield from _read_range(span, checkpoint)
        return
    fd = open_checked(span.path, span.identity)
    try:
        buffer = bytearray(min(READ_SIZE, span.size))
        view = memoryview(buffer)
        left = span.size
        with os.fdopen(fd, "rb", buffering=0, closefd=False) as file:
            while left:
                checkpoint()
                got = file.readinto(view[: min(left, len(buffer))])
                if not got:
                    raise ChangedError(f"{span.path}: size {span.size} -> {span.size - left}")
                yield view[:got]
                left -= got
        check_unchanged(span.path, fd, span.identity)
    finally:
        os.close(fd)


def _read_range(span: SpoolRange, checkpoint: Callable[[], None]) -> Iterator[memoryview]:
    buffer = bytearray(min(READ_SIZE, span.size))
    view = memoryview(buffer)
    done = 0
    while done < span.size:
        checkpoint()
        got = os.preadv(span.fd, [view[: min(span.size - done, len(buffer))]], span.offset + done)
        if not got:
            raise ChangedError(f"{span.name}: shorter than written ({span.offset + done} bytes)")
        yield view[:got]
        done += got


def read_span(
    span: FileSpan | SpoolRange,
    consume: Callable[[memoryview], object],
    checkpoint: Callable[[], None] = no_checkpoint,
) -> None:
    """Feed a FileSpan's content to ``consume``, as read_pieces reads it.

    Raises:
        StoreError, ChangedError: as read_pieces.
    """
    for piece in read_pieces(span, checkpoint):
        consume(piece)
