"""The outer archive of the tar destinations: members framed onto a sink, then the
end-of-archive record padding.

ASYNC; the content of big members comes from ``pipeline.stream_chunks``.
Rule: a member's content must be exactly the size its header promised; anything else is
a ChangedError before another byte is written.
"""

from __future__ import annotations

from collections.abc import Iterator

from streamimage.engine.framing import Chunk
from streamimage.engine.pipeline import Sink, stream_chunks
from streamimage.errors import ChangedError
from streamimage.tarheader import DIRTYPE, REGTYPE, HeaderEncoder, end_of_archive, padding

GENERATED_MODE = 0o644  # tarfile.TarInfo's default mode, which the reference's members keep
DIRECTORY_MODE = 0o755  # of generated directories (blobs/, blobs/sha256/)


class TarWriter:
    """Writes tar members to a sink; generated members are owned by 0:0 with no names. A
    streamed member's padding goes out with the next write (the next member's header, or
    the end of the archive): a layer of a few small files is one write, not three."""

    def __init__(self, sink: Sink, mtime: int) -> None:
        self.sink = sink
        self.encoder = HeaderEncoder(uid=0, gid=0, uname="", gname="", mtime=mtime)
        self._due = b""  # the last streamed member's padding, not written yet

    def _take_due(self) -> bytes:
        due, self._due = self._due, b""
        return due

    def header(self, name: str, size: int) -> bytes:
        """The header of a generated regular file member."""
        return self.encoder.encode(name, REGTYPE, GENERATED_MODE, size)

    async def add_bytes(self, name: str, data: bytes) -> None:
        member = self.header(name, len(data)) + data + padding(len(data))
        await self.sink.write(self._take_due() + member)

    async def add_directory(self, name: str) -> None:
        await self.sink.write(self._take_due() + self.encoder.encode(name, DIRTYPE, DIRECTORY_MODE))

    async def add_stream(
        self, header: bytes, size: int, chunks: Iterator[Chunk], what: str
    ) -> None:
        """A member whose ``size`` bytes of content ``chunks`` yields (``what`` names it).

        Raises:
            ChangedError: the content was not the size the hash pass found.
        """
        written = await stream_chunks(chunks, self.sink, self._take_due() + header)
        if written != size:
            raise ChangedError(f"{what}: {size} bytes hashed but {written} streamed")
        self._due = padding(size)

    async def close(self) -> None:
        due = self._take_due()
        await self.sink.write(due + end_of_archive(self.sink.written + len(due)))
