"""A layer stored compressed: a wrapper around any layer, as GGCR's ``partial`` derives a
compressed layer from an uncompressed one.

ASYNC at its descriptor (a compressing hash pass in a worker thread, unless the layer
under it knows its compressed digest already), blocking in its chunks.
Rule: the bytes streamed are copied from what the inner layer's own hash pass compressed,
or compressed again by ``compress.compressed_chunks``, as they were hashed; compressed
again, their uncompressed size is held to the inner layer's and their sha256 to the
descriptor's, so a change (or a compressor that doesn't repeat itself) is a ChangedError
before the image's manifest is written.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import anyio.to_thread
from anyio.from_thread import check_cancelled

from streamimage.engine.compress import compressed_chunks
from streamimage.engine.framing import Chunk
from streamimage.engine.hashing import Digests, digest_chunks
from streamimage.errors import ChangedError
from streamimage.imagejson import Descriptor, Digest, layer_media_type_of
from streamimage.layers import Layer, Once
from streamimage.options import Compression


class CompressedLayer(Layer):
    """``inner``, stored compressed as ``compression`` says."""

    def __init__(self, inner: Layer, compression: Compression) -> None:
        self.kind = inner.kind
        self.history = inner.history
        self.timeline = inner.timeline
        self._inner = inner
        self._compression = compression
        self._described = Once(self._describe)
        self._size = -1  # of the uncompressed layer, once described
        self._blob: Descriptor | None = None  # once described

    async def prepare(self) -> None:
        await self._inner.prepare()
        await self._described()

    async def diff_id(self) -> Digest:
        return await self._inner.diff_id()

    async def descriptor(self) -> Descriptor:
        return await self._described()

    def known_size(self) -> int | None:
        return None if self._blob is None else self._blob.size

    async def _describe(self) -> Descriptor:
        self._blob = await self._find_descriptor()
        return self._blob

    async def _find_descriptor(self) -> Descriptor:
        uncompressed = await self._inner.descriptor()
        self._size = uncompressed.size
        known = await self._inner.compressed_descriptor(self._compression)
        if known is not None:
            return known
        found: Digests = await anyio.to_thread.run_sync(self._hash)
        if found.diff_id != uncompressed.digest or found.size != uncompressed.size:
            raise ChangedError(
                f"{self.history[-1]}: {uncompressed.size} bytes, {uncompressed.digest}, "
                f"hashed, then {found.size} bytes, {found.diff_id}, compressed"
            )
        media_type = layer_media_type_of(self._compression.codec)
        return Descriptor(media_type, found.blob_digest, found.blob_size)

    def _hash(self) -> Digests:
        return digest_chunks(self._inner.chunks(), self._compression, check_cancelled)

    def chunks(self) -> Iterator[Chunk]:
        stored = self._inner.compressed_chunks(self._compression)
        return stored if stored is not None else self._compressed()

    def _compressed(self) -> Iterator[Chunk]:
        blob = self._blob
        assert blob is not None, "chunks() before descriptor()"
        read = 0

        def count(data: bytes | memoryview) -> None:
            nonlocal read
            read += len(data)

        sha = hashlib.sha256()
        chunks = self._inner.chunks()
        for data in compressed_chunks(chunks, self._compression, count, check_cancelled):
            sha.update(data)
            yield data
        if read != self._size:
            raise ChangedError(f"{self.history[-1]}: {self._size} bytes hashed but {read} streamed")
        if sha.hexdigest() != blob.digest.hex:
            raise ChangedError(
                f"{self.history[-1]}: compressed to {blob.digest} when hashed but to "
                f"sha256:{sha.hexdigest()} when streamed"
            )

    def release(self) -> None:
        self._inner.release()
