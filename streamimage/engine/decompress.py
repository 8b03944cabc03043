"""A stored layer back to its tar: gzip (ISA-L's inflate) or zstd, told by the magic number
of its first bytes, or as it is; for holding a layer copied as stored to its diff_id.

No anyio: pure computation.
Rule: memory stays bounded whatever the input: every call gives at most PIECE bytes, so a
small layer that inflates to gigabytes (a "zip bomb") is hashed piece by piece, never held.
A stream that ends early, or has anything but zero padding after its last member or frame,
is a ValueError.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import cast

from isal import isal_zlib

if sys.version_info >= (3, 14):
    from compression import zstd
else:  # the same API, from PyPI (pyproject.toml)
    from backports import zstd

PIECE = 1024 * 1024  # uncompressed bytes per inflate or libzstd call, at most
GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_INFLATE_ERROR = cast("type[Exception]", isal_zlib.error)  # its stubs call the class an instance
_GZIP_WBITS = 31  # zlib's wbits: a gzip wrapper (16) over a 32 KiB window (15)


class Decoder:
    """Feed it a stored layer's bytes in order; ``sink`` gets its tar's. ``finish`` at the
    end. A gzip stream may hold several members, a zstd stream several frames (pigz and
    zstd -T write them); zeros may pad the end (as gzip(1) allows)."""

    def __init__(self, head: bytes, sink: Callable[[bytes], None]) -> None:
        if head.startswith(GZIP_MAGIC):
            self.codec = "gzip"
        elif head.startswith(ZSTD_MAGIC):
            self.codec = "zstd"
        else:
            self.codec = ""  # a plain tar: its bytes as they are
        self._sink = sink
        self._inflate: isal_zlib.Decompress | None = None  # the gzip member under way
        self._frame: zstd.ZstdDecompressor | None = None  # the zstd frame under way
        self._members = 0  # finished
        self._padding = False  # zeros seen after the last member

    def feed(self, data: bytes | memoryview) -> None:
        """Raises: ValueError: not a valid stream of the codec."""
        if not self.codec:
            self._sink(bytes(data))
            return
        rest = bytes(data)
        while rest:
            if self._inflate is None and self._frame is None:
                if self._members and (self._padding or rest[:1] == b"\0"):
                    if rest.strip(b"\0"):
                        raise ValueError(f"{self.codec} stream: data after its end")
                    self._padding = True
                    return
                if self.codec == "gzip":
                    self._inflate = isal_zlib.decompressobj(wbits=_GZIP_WBITS)
                else:
                    self._frame = zstd.ZstdDecompressor()
            try:
                rest = self._gunzip(rest) if self._inflate is not None else self._unzstd(rest)
            except (_INFLATE_ERROR, zstd.ZstdError) as exc:
                raise ValueError(f"{self.codec} stream: {exc}") from None

    def _gunzip(self, data: bytes) -> bytes:
        """Inflate what of ``data`` the member under way takes; returns the rest."""
        inflate = self._inflate
        assert inflate is not None
        out = inflate.decompress(data, PIECE)
        self._sink(out)
        # a full piece may leave output behind even when all the input was taken
        while inflate.unconsumed_tail or (len(out) == PIECE and not inflate.eof):
            out = inflate.decompress(inflate.unconsumed_tail, PIECE)
            self._sink(out)
        if not inflate.eof:
            return b""
        self._inflate = None
        self._members += 1
        return inflate.unused_data

    def _unzstd(self, data: bytes) -> bytes:
        """Decode what of ``data`` the frame under way takes; returns the rest."""
        frame = self._frame
        assert frame is not None
        self._sink(frame.decompress(data, PIECE))
        while not frame.eof and not frame.needs_input:
            self._sink(frame.decompress(b"", PIECE))
        if not frame.eof:
            return b""
        self._frame = None
        self._members += 1
        return frame.unused_data

    def finish(self) -> None:
        """Raises: ValueError: the stream ended inside a member or frame, or held none."""
        if self.codec and (
            self._inflate is not None or self._frame is not None or not self._members
        ):
            raise ValueError(f"{self.codec} stream: cut short")
