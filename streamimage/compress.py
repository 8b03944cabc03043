"""Layer compression: a deterministic gzip encoder and a sink that compresses onto another.

ASYNC at the sink only; the encoder is pure computation (ISA-L's deflate, via python-isal).
Rule 1: the same input gives the same gzip bytes on every run and machine with the same
library version: the header is ours and fixed (no name, mtime 0, XFL 0, OS 255 "unknown",
as Go's compress/gzip writes it), the deflate stream is raw, the trailer CRC-32 + ISIZE.
Rule 2: the hash pass and the stream pass compress the same chunks with the same settings,
so the compressed digest and size the hash pass finds are the bytes the stream pass writes.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable
from typing import TYPE_CHECKING

import anyio.from_thread
import anyio.to_thread
from anyio.from_thread import check_cancelled
from isal import isal_zlib

from streamimage.layer import Chunk, read_span
from streamimage.spec import GZIP, GZIP_DEFAULT_LEVEL, Compression

if TYPE_CHECKING:  # pipeline imports this module: the Sink protocol is for the checker only
    from streamimage.pipeline import Sink

FLUSH_BYTES = 1024 * 1024  # compressed bytes gathered before they go on to the inner sink
DEFLATE_BLOCK = 256 * 1024  # uncompressed bytes per deflate call (see GzipEncoder)

# RFC 1952 member header: ID1 ID2, CM=8 (deflate), FLG=0 (no name, comment or extra),
# MTIME=0 (none), XFL=0, OS=255 (unknown): nothing of the machine or the moment.
GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"
_RAW_DEFLATE = -15  # wbits: a raw deflate stream with a 32 KiB window, no zlib wrapper


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
        view = memoryview(data)
        out = [self._start()]
        buffer = self._buffer
        if buffer:
            taken = DEFLATE_BLOCK - len(buffer)
            buffer += view[:taken]
            view = view[taken:]
            if len(buffer) < DEFLATE_BLOCK:
                return out[0]
            out.append(self._deflate.compress(buffer))
            buffer.clear()
        while len(view) >= DEFLATE_BLOCK:
            out.append(self._deflate.compress(view[:DEFLATE_BLOCK]))
            view = view[DEFLATE_BLOCK:]
        buffer += view  # a copy: the caller may reuse its buffer
        return b"".join(out)

    def finish(self) -> bytes:
        out = self._start()
        if self._buffer:
            out += self._deflate.compress(self._buffer)
            self._buffer.clear()
        # trailer: CRC-32 and the input size modulo 2**32, both little-endian
        trailer = struct.pack("<II", self._crc, self._size & 0xFFFFFFFF)
        return out + self._deflate.flush() + trailer


def gzip_bytes(data: bytes, level: int = GZIP_DEFAULT_LEVEL) -> bytes:
    """``data`` as one deterministic gzip member (small documents and tests)."""
    encoder = GzipEncoder(level)
    return encoder.compress(data) + encoder.finish()


class CompressingSink:
    """A Sink that gzip-compresses what it is given onto ``inner``.

    ``written`` counts the uncompressed bytes (what the framing promised); ``observe``
    sees every uncompressed piece too (the hash pass's diff_id).  Compression runs in a
    worker thread, a batch per call; large files are read (no sendfile: their bytes must
    pass through the compressor) and the output goes on every FLUSH_BYTES, so memory
    stays bounded whatever the file sizes.  Call ``close`` once, after the last write.
    """

    def __init__(
        self,
        inner: Sink,
        compression: Compression,
        observe: Callable[[bytes | memoryview], object] | None = None,
    ) -> None:
        if compression.codec != GZIP:
            raise ValueError(f"CompressingSink: unsupported compression {compression}")
        self.written = 0
        self._inner = inner
        self._encoder = GzipEncoder(compression.level)
        self._observe = observe
        self._pending: list[bytes] = []
        self._held = 0

    def _feed(self, data: bytes | memoryview) -> None:
        if self._observe is not None:
            self._observe(data)
        out = self._encoder.compress(data)
        if out:
            self._pending.append(out)
            self._held += len(out)
            if self._held >= FLUSH_BYTES:
                anyio.from_thread.run(self._inner.write, self._take())

    def _take(self) -> bytes:
        data = b"".join(self._pending)
        self._pending.clear()
        self._held = 0
        return data

    def _compress_batch(self, batch: list[Chunk]) -> tuple[int, bytes]:
        written = 0
        for chunk in batch:
            check_cancelled()
            if isinstance(chunk, bytes):
                self._feed(chunk)
                written += len(chunk)
            else:
                read_span(chunk, self._feed, check_cancelled)
                written += chunk.size
        return written, self._take()

    async def write_batch(self, batch: list[Chunk]) -> None:
        """Raises: StoreError, ChangedError (a large file), OutputError (the inner sink)."""
        written, rest = await anyio.to_thread.run_sync(self._compress_batch, batch)
        self.written += written
        if rest:
            await self._inner.write(rest)

    async def write(self, data: bytes) -> None:
        await self.write_batch([data])

    async def close(self) -> None:
        """Write the end of the gzip member (and anything still held) to ``inner``."""
        await self._inner.write(self._take() + self._encoder.finish())
