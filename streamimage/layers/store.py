"""A store layer: the layer tar of some store paths, framed by the engine.

ASYNC at its digests (they wait for the layer's hash pass), blocking in its chunks.
Rule: what a layer streams is what its hash pass hashed. A spooled layer (or one with
kept frames, a digest cache hit: frames.py) is sent from its spool, the bytes that were
hashed, its large files from the store, each held to the identity it was hashed with; a
layer framed again from the store holds every entry to what the hash pass saw (its
Witness), and one that streams other entries, or fewer, fails with a ChangedError. A
layer with no hash pass (``streamed``: a push to a new repository) is framed once, what it
frames recorded, and its digests are those of what its writer sent.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from typing import Protocol

from streamimage.engine.framing import Chunk, Named, Witness, layer_chunks
from streamimage.engine.hashing import LayerHash
from streamimage.engine.scheduler import HashPass
from streamimage.engine.spool import sent_chunks
from streamimage.engine.walk import Entry
from streamimage.imagejson import MEDIA_TYPE_LAYER, Descriptor, Digest, layer_media_type_of
from streamimage.layers import STORE, Layer
from streamimage.options import Compression
from streamimage.tarheader import HeaderEncoder


class FileCounter(Protocol):
    files: int  # store entries streamed so far


class StoreLayer(Layer):
    """Layer ``index`` of the store layers, hashed by ``hashes``."""

    kind = STORE

    def __init__(
        self,
        index: int,
        store_paths: Sequence[str],
        hashes: HashPass,
        encoder: HeaderEncoder,
        counter: FileCounter,
    ) -> None:
        self.history = tuple(store_paths)
        self.timeline = self._timeline = hashes.timeline(index)
        self._index = index
        self._hashes = hashes
        self._encoder = encoder
        self._counter = counter
        self._streamed: Witness | None = None  # what a streamed layer's stream recorded

    async def _hash(self) -> LayerHash:
        return await self._hashes.result(self._index)

    async def diff_id(self) -> Digest:
        return (await self._hash()).diff_id

    async def descriptor(self) -> Descriptor:
        found = await self._hash()
        return Descriptor(MEDIA_TYPE_LAYER, found.diff_id, found.size)

    def known_size(self) -> int | None:
        found = self._hashes.finished(self._index)
        return None if found is None else found.size

    async def compressed_descriptor(self, compression: Compression) -> Descriptor | None:
        if compression != self._hashes.compression:
            return None
        found = await self._hash()
        return Descriptor(
            layer_media_type_of(compression.codec), found.blob_digest, found.blob_size
        )

    async def streamed(self) -> bool:
        return await self._hashes.streamed(self._index)

    async def streamed_as(self, digest: Digest, size: int, started: float) -> None:
        if self._streamed is None:
            raise RuntimeError(f"{self._label()}: not streamed")
        found = LayerHash(digest, size, digest, size, self._streamed, None)
        await self._hashes.streamed_as(self._index, found, started)

    def chunks(self) -> Iterator[Chunk]:
        if self._hashes.finished(self._index) is None:  # streamed: nothing to hold it to
            return self._recorded()
        found = self._hashes.known(self._index)
        spooled = found.spooled
        if spooled is None or spooled.compressed or not self._hashes.spool_fds(self._index):
            return self._framed(found)
        return Named(self._sent(found))

    def compressed_chunks(self, compression: Compression) -> Iterator[Chunk] | None:
        found = self._hashes.known(self._index)
        if compression != self._hashes.compression or found.spooled is None:
            return None
        if not found.spooled.compressed or not self._hashes.spool_fds(self._index):
            return None
        return Named(self._sent(found))

    def release(self) -> None:
        self._hashes.release(self._index)

    def _on_entry(self, found: LayerHash) -> Callable[[Entry], None]:
        check = found.witness.check
        counter = self._counter

        def on_entry(entry: Entry) -> None:
            check(entry)
            counter.files += 1

        return on_entry

    def _recorded(self) -> Iterator[Chunk]:
        """Framed from the store for the first time, every entry recorded: the witness of
        a layer that its stream hashes (a retried upload records anew)."""
        self._timeline.spooled = None
        self._timeline.hash_start = self._timeline.hash_start or time.monotonic()
        self._timeline.hashed_as_sent = True
        witness = self._streamed = Witness()
        record, counter = witness.record, self._counter

        def on_entry(entry: Entry) -> None:
            record(entry)
            counter.files += 1

        yield from layer_chunks(self.history, self._encoder, on_entry)

    def _framed(self, found: LayerHash) -> Iterator[Chunk]:
        """Framed again from the store, every entry checked against the hash pass's."""
        self._timeline.spooled = None
        found.witness.rewind()  # a stream pass again (a retried upload) starts over
        yield from layer_chunks(self.history, self._encoder, self._on_entry(found))
        found.witness.check_complete(self._label())

    def _sent(self, found: LayerHash) -> Iterator[Chunk]:
        """Sent from the spool its hash pass wrote, or from the frames an earlier run kept
        (whose entries the cache's lookup has just walked): the bytes that were hashed,
        neither framed nor walked again."""
        assert found.spooled is not None
        self._timeline.spooled = found.spooled.size
        self._timeline.kept = found.spooled.kept
        fds = self._hashes.spool_fds(self._index)
        counted = 0
        for chunk, entries in sent_chunks(fds, found.spooled.segments, self._label()):
            self._counter.files += entries - counted
            counted = entries
            yield chunk

    def _label(self) -> str:
        return (
            f"store layer {self._index + 1} ({self.history[-1]})" if self.history else "store layer"
        )
