"""destinations/tarball.py: TarWriter frames members onto a sink; a streamed member's
padding goes out with the next write, so a small member is one write; a member cut short
raises before its padding, or anything after it, is written.
Oracle: tarfile reads the archive back (names, contents, its end); the sink's writes.
"""

from __future__ import annotations

import io
import tarfile

import anyio
import pytest

from streamimage.destinations.tarball import TarWriter
from streamimage.engine.framing import Chunk, Named
from streamimage.engine.pipeline import Batch
from streamimage.errors import ChangedError
from streamimage.tarheader import BLOCKSIZE, RECORDSIZE
from tests.failures import STOP_BOUND


class Writes:
    """A sink of bytes chunks that keeps each write apart."""

    def __init__(self) -> None:
        self.written = 0
        self.writes: list[bytes] = []

    async def write(self, data: bytes) -> None:
        await self.write_batch([data])

    async def write_batch(self, batch: Batch) -> None:
        assert all(isinstance(chunk, bytes) for chunk in batch)
        data = b"".join(chunk for chunk in batch if isinstance(chunk, bytes))
        self.writes.append(data)
        self.written += len(data)
        await anyio.lowlevel.checkpoint()


async def test_members_read_back_and_a_small_streamed_member_is_one_write() -> None:
    sink = Writes()
    tar = TarWriter(sink, mtime=1700000000)
    contents = {"a": b"abc", "b": b"d" * 700, "c": b"xyz"}
    with anyio.fail_after(STOP_BOUND):
        await tar.add_directory("d/")
        await tar.add_stream(tar.header("a", 3), 3, iter([contents["a"]]), "a")
        chunks: list[Chunk] = [contents["b"][:500], contents["b"][500:]]
        await tar.add_stream(tar.header("b", 700), 700, Named(chunks), "b")
        await tar.add_bytes("c", contents["c"])
        await tar.close()
    data = b"".join(sink.writes)
    # one write per member (a streamed one's padding rides with what follows), one to end
    assert len(sink.writes) == 5
    assert sink.writes[2].startswith(b"\0" * (BLOCKSIZE - 3))  # a's padding, then b's header
    assert len(data) % RECORDSIZE == 0
    assert sink.written == len(data)
    with tarfile.open(fileobj=io.BytesIO(data)) as archive:
        assert archive.getnames() == ["d", "a", "b", "c"]
        for name, content in contents.items():
            member = archive.extractfile(name)
            assert member is not None
            assert member.read() == content


async def test_a_member_cut_short_fails_before_its_padding_is_written() -> None:
    sink = Writes()
    tar = TarWriter(sink, mtime=0)
    with anyio.fail_after(STOP_BOUND), pytest.raises(ChangedError, match="5 bytes hashed but 3"):
        await tar.add_stream(tar.header("a", 5), 5, iter([b"abc"]), "a")
    assert b"".join(sink.writes) == tar.header("a", 5) + b"abc"
