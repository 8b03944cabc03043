"""Layer compression: deterministic gzip and zstd encoders, and chunks compressed as they come.

No anyio: pure computation (ISA-L's deflate via python-isal; libzstd via the standard
library's ``compression.zstd``, or its backport before Python 3.14), and the reads of large
files.
Rule 1: the same input gives the same bytes on every run and machine with the same library
version (``library_version`` names it): each encoder's input is re-cut into fixed blocks,
so its output does not depend on how reads and chunks fell. gzip: the header is ours and
fixed (no name, mtime 0, XFL 0, OS 255 "unknown", as Go's compress/gzip writes it), the
deflate stream is raw, the trailer CRC-32 + ISIZE. zstd: one frame, single-threaded, with
its content checksum, no content size (unknown when the frame starts), no dictionary.
Rule 2: the hash pass and the stream pass compress through ``compressed_chunks`` alone, so
the compressed digest and size the hash pass finds are the bytes the stream pass writes.
"""

from __future__ import annotations

import struct
import sys
import zlib
from collections.abc import Callable, Iterable, Iterator
from typing import Protocol

import isal
from isal import isal_zlib

from streamimage.engine.framing import Chunk, no_checkpoint, read_pieces
from streamimage.options import GZIP, GZIP_DEFAULT_LEVEL, ZSTD, Compression

if sys.version_info >= (3, 14):
    from compression import zstd
else:  # the same API, from PyPI (pyproject.toml)
    from backports import zstd

FLUSH_BYTES = 1024 * 1024  # compressed bytes gathered before they go on to the inner sink
DEFLATE_BLOCK = 256 * 1024  # uncompressed bytes per deflate call (see GzipEncoder)
ZSTD_BLOCK = 1024 * 1024  # uncompressed bytes per libzstd call (see ZstdEncoder)

# RFC 1952 member header: ID1 ID2, CM=8 (deflate), FLG=0 (no name, comment or extra),
# MTIME=0 (none), XFL=0, OS=255 (unknown): nothing of the machine or the moment.
GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"
_RAW_DEFLATE = -15  # wbits: a raw deflate stream with a 32 KiB window, no zlib wrapper


def _recut(buffer: bytearray, data: bytes | memoryview, block: int) -> Iterator[memoryview]:
    """``buffer`` (what was left over) then ``data``, in whole pieces of ``block`` bytes;
    what is left of ``data`` stays in ``buffer`` (copied: the caller may reuse its own)."""
    view = memoryview(data)
    if buffer:
        taken = block - len(buffer)
        buffer += view[:taken]
        view = view[taken:]
        if len(buffer) < block:
            return
        whole = bytes(buffer)
        buffer.clear()
        yield memoryview(whole)
    while len(view) >= block:
        yield view[:block]
        view = view[block:]
    buffer += view


class GzipEncoder:
    """One gzip member, fed piece by piece; ``finish`` returns the last bytes.

    ISA-L's output depends on how its input is split between calls (zlib's does not), so
    the input is re-cut into DEFLATE_BLOCK pieces: the bytes out depend on the bytes in
    alone, however reads and chunks happened to fall.
    """

    __slots__ = ("_buffer", "_crc", "_deflate", "_header", "_size")

    def __init__(self, level: int) -> None:
        self._deflate = isal_zlib.compressobj(level, isal_zlib.DEFLATED, _RAW_DEFLATE)
        self._crc = 0
        self._size = 0
        self._header = True
        self._buffer = bytearray()

    def _start(self) -> bytes:
        if self._header:
            self._header = False
            return GZIP_HEADER
        return b""

    def compress(self, data: bytes | memoryview) -> bytes:
        self._crc = zlib.crc32(data, self._crc)
        self._size += len(data)
        deflate = self._deflate.compress
        pieces = [deflate(piece) for piece in _recut(self._buffer, data, DEFLATE_BLOCK)]
        return self._start() + b"".join(pieces)

    def finish(self) -> bytes:
        out = self._start()
        if self._buffer:
            out += self._deflate.compress(bytes(self._buffer))
            self._buffer.clear()
        # trailer: CRC-32 and the input size modulo 2**32, both little-endian
        trailer = struct.pack("<II", self._crc, self._size & 0xFFFFFFFF)
        return out + self._deflate.flush() + trailer


def gzip_bytes(data: bytes, level: int = GZIP_DEFAULT_LEVEL) -> bytes:
    """``data`` as one deterministic gzip member (small documents and tests)."""
    encoder = GzipEncoder(level)
    return encoder.compress(data) + encoder.finish()


class ZstdEncoder:
    """One zstd frame, fed piece by piece; ``finish`` returns the last bytes.

    libzstd's streaming output is not promised to be independent of how the input is split
    between calls, so the input is re-cut into ZSTD_BLOCK pieces, as GzipEncoder's is."""

    __slots__ = ("_buffer", "_zstd")

    def __init__(self, level: int) -> None:
        parameter = zstd.CompressionParameter
        self._zstd = zstd.ZstdCompressor(
            options={
                parameter.compression_level: level,
                parameter.checksum_flag: 1,  # a content checksum, as the zstd command adds
                parameter.nb_workers: 0,  # one thread: the frame doesn't depend on jobs
            }
        )
        self._buffer = bytearray()

    def compress(self, data: bytes | memoryview) -> bytes:
        compress = self._zstd.compress
        return b"".join([compress(piece) for piece in _recut(self._buffer, data, ZSTD_BLOCK)])

    def finish(self) -> bytes:
        out = self._zstd.compress(bytes(self._buffer))
        self._buffer.clear()
        return out + self._zstd.flush(zstd.ZstdCompressor.FLUSH_FRAME)


def zstd_bytes(data: bytes, level: int) -> bytes:
    """``data`` as one deterministic zstd frame (small documents and tests)."""
    encoder = ZstdEncoder(level)
    return encoder.compress(data) + encoder.finish()


def library_version(compression: Compression) -> str:
    """What the compressed bytes depend on besides the input and level: the library and its
    version (for a cache key, and to say so)."""
    if compression.codec == GZIP:
        return f"isal {isal.__version__}"
    if compression.codec == ZSTD:
        return f"libzstd {zstd.zstd_version}"
    return ""


class Encoder(Protocol):
    """A compressor fed piece by piece: what ``compress`` returns, then ``finish``."""

    def compress(self, data: bytes | memoryview) -> bytes: ...

    def finish(self) -> bytes: ...


def encoder(compression: Compression) -> Encoder:
    """A new encoder for ``compression``.

    Raises:
        ValueError: not a compression this module has.
    """
    if compression.codec == GZIP:
        return GzipEncoder(compression.level)
    if compression.codec == ZSTD:
        return ZstdEncoder(compression.level)
    raise ValueError(f"no encoder for compression {compression}")


def compressed_chunks(
    chunks: Iterable[Chunk],
    compression: Compression,
    observe: Callable[[bytes | memoryview], object] | None = None,
    checkpoint: Callable[[], None] = no_checkpoint,
) -> Iterator[bytes]:
    """``chunks`` compressed (large files read, not sent), in pieces of about FLUSH_BYTES:
    memory stays bounded whatever the file sizes. ``observe`` sees every uncompressed
    piece (a hash pass's diff_id); ``checkpoint`` runs between large reads.

    Raises:
        StoreError, ChangedError: a large file can't be read, or changed.
    """
    compressor = encoder(compression)
    pending: list[bytes] = []
    held = 0
    for chunk in chunks:
        pieces: Iterable[bytes | memoryview] = (
            (chunk,) if isinstance(chunk, bytes) else read_pieces(chunk, checkpoint)
        )
        for piece in pieces:
            if observe is not None:
                observe(piece)
            out = compressor.compress(piece)
            if out:
                pending.append(out)
                held += len(out)
                if held >= FLUSH_BYTES:
                    yield b"".join(pending)
                    pending.clear()
                    held = 0
    pending.append(compressor.finish())
    yield b"".join(pending)
