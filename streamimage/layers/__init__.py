"""Layers: what an image is made of. A Layer knows its digests and gives its bytes, as
go-containerregistry's ``v1.Layer`` does (``DiffID``, ``Digest``, ``MediaType``, ``Size``,
``Compressed``).

Kinds: ``store.py`` (framed from store paths; digests from the engine's hash pass),
``base.py`` (a base image's layer, copied as stored), ``customisation.py`` (the pre-built
``layer.tar``); ``compressed.py`` wraps any of them, as GGCR's ``partial`` derives a
compressed layer from an uncompressed one.
Rule: a destination asks a layer for what it needs (its diff_id, its descriptor, its
bytes) and knows nothing of how it is made: spools, hash passes and compressors stay
below this line.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar

import anyio

from streamimage.engine.framing import Chunk
from streamimage.engine.timeline import Timeline
from streamimage.imagejson import Descriptor, Digest
from streamimage.options import Compression

T = TypeVar("T")

BASE = "base"
STORE = "store"
CUSTOMISATION = "customisation"


@dataclass(frozen=True, slots=True)
class TarMember:
    """A layer as a docker-archive member where the reference keeps its origin's metadata."""

    name: str
    header: bytes
    size: int  # of the content


class Layer(ABC):
    """One layer of an image.

    ``diff_id`` and ``descriptor`` may wait (for a hash pass, a checksum to be verified);
    ``chunks`` is called only after one of them has answered (or ``streamed`` said yes),
    and runs in a worker thread (it reads files), unless it gives Named chunks (which read
    nothing). Whoever asks for ``chunks`` runs them to the end or closes them.
    """

    kind: str  # BASE, STORE or CUSTOMISATION
    history: tuple[str, ...]  # what the image config's history comment lists
    timeline: Timeline | None = None  # when its passes ran, where the engine made it

    @abstractmethod
    async def diff_id(self) -> Digest:
        """The sha256 of the uncompressed layer tar."""

    @abstractmethod
    async def descriptor(self) -> Descriptor:
        """Media type, digest and size of the layer as stored."""

    @abstractmethod
    def chunks(self) -> Iterator[Chunk]:
        """The layer as stored: bytes, and FileSpans of large files (sent, not read).
        Each call gives the whole layer again (a registry upload retried from its start)."""

    async def streamed(self) -> bool:
        """Whether the layer's digests are to be found by streaming it, once (GGCR's
        ``stream.Layer``): nothing hashed it ahead, so ``diff_id`` and ``descriptor``
        wait until its writer, which hashes what ``chunks`` gives, says ``streamed_as``.
        Most layers know their digests ahead: False."""
        return False

    async def streamed_as(self, digest: Digest, size: int, started: float) -> None:
        """The digest and size of what ``chunks`` gave, a ``streamed`` layer's stream
        having begun at time.time() ``started``.

        Raises:
            RuntimeError: the layer is not streamed.
        """
        raise RuntimeError("only a streamed layer is hashed by its stream")

    def known_size(self) -> int | None:
        """The size of the layer as stored, if known now without waiting or work (after
        its hash pass, its compression); None otherwise. The progress display asks."""
        return None

    async def prepare(self) -> None:  # noqa: B027 (most layers have nothing to do ahead)
        """Work the layer can do ahead, while other layers stream (verify a checksum)."""

    def docker_member(self, name: str) -> TarMember | None:
        """The docker-archive member the reference writes for this layer when it keeps
        the layer's own metadata (a base layer's name and header, layer.tar's owner and
        mode), given the member's ``name`` otherwise; None: a generated member."""
        return None

    async def compressed_descriptor(self, compression: Compression) -> Descriptor | None:
        """The descriptor of this layer compressed, if known without compressing it again
        (GGCR's optional interfaces: a hash pass that compressed as it hashed)."""
        return None

    def compressed_chunks(self, compression: Compression) -> Iterator[Chunk] | None:
        """The layer compressed, if it can be had without compressing it again."""
        return None

    def release(self) -> None:  # noqa: B027 (most layers hold nothing)
        """Free what the layer holds for its stream (its spool files): it was written,
        or won't be."""


class Once(Generic[T]):
    """An async computation run once; every caller waits for the one result."""

    def __init__(self, compute: Callable[[], Awaitable[T]]) -> None:
        self._compute = compute
        self._lock = anyio.Lock()
        self._result: tuple[T] | None = None

    async def __call__(self) -> T:
        async with self._lock:
            if self._result is None:
                self._result = (await self._compute(),)
        return self._result[0]
