"""A base image's layers: the from_image archive (a docker-archive or an OCI image layout
archive, plain or gzip-compressed; a Docker 25+ archive, which is both, is read as a
docker-archive; what it holds is read and checked by ``basemanifest``), and each of its
layers as a Layer, copied as stored.

IO: opens the archive with ``tarfile`` (reading archives is what tarfile is for); a layer
described for an OCI format is kept in an unlinked spool file until it is copied when the
archive is compressed (read again, a gzip stream is decompressed again from its start).
Rule: a base layer's bytes are held to its diff_id (the sha256 of its tar, decompressed if
it is stored compressed) and to its blob digest when one is known, as they are copied; a
mismatch is a BaseImageError naming the archive and the layer before the image is whole.
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
import tarfile
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import IO, Any

import anyio.to_thread
from anyio.from_thread import check_cancelled

from streamimage.engine.decompress import Decoder
from streamimage.engine.framing import Chunk, no_checkpoint
from streamimage.errors import BaseImageError
from streamimage.imagejson import Descriptor, Digest, layer_media_type
from streamimage.layers import BASE, Layer, Once, TarMember
from streamimage.layers.basemanifest import BaseLayer, read_contents

READ_SIZE = 1024 * 1024  # bytes per read when copying a base layer

__all__ = ["BaseImage", "BaseImageLayer", "BaseLayer", "open_base_image"]


class _CountingFile(io.FileIO):
    """The archive file, counting the bytes read from it (the cost of reading a
    compressed archive: seeking back in a gzip stream reads it again from its start)."""

    bytes_read = 0

    def readinto(self, buffer: Any) -> int | None:
        count = super().readinto(buffer)
        self.bytes_read += count or 0
        return count


class _Check:
    """The running sha256s of one layer's bytes as stored and of its tar, and what they
    must come to: its diff_id, and ``digest`` when the blob's digest is known."""

    def __init__(self, where: str, diff_id: Digest, digest: Digest | None) -> None:
        self._where = where  # "ARCHIVE: layer NAME", for the messages
        self._diff_id = diff_id
        self._digest = digest
        self._stored = hashlib.sha256()
        self._tar = hashlib.sha256()
        self._decoder: Decoder | None = None

    def update(self, data: bytes) -> None:
        self._stored.update(data)
        if self._decoder is None:
            self._decoder = Decoder(data[:8], self._tar.update)
        if self._decoder.codec:  # a plain tar's sha256 is the stored bytes' own
            try:
                self._decoder.feed(data)
            except ValueError as exc:
                raise BaseImageError(f"{self._where}: {exc}") from None

    def finish(self) -> Digest:
        """The sha256 of the bytes as stored.

        Raises:
            BaseImageError: they or their tar are not what the base image says.
        """
        decoder = self._decoder or Decoder(b"", self._tar.update)
        try:
            decoder.finish()
        except ValueError as exc:
            raise BaseImageError(f"{self._where}: {exc}") from None
        stored = Digest(self._stored.hexdigest())
        tar = Digest(self._tar.hexdigest()) if decoder.codec else stored
        if tar != self._diff_id:
            raise BaseImageError(
                f"{self._where}: its tar's sha256 is {tar}, not the diff_id "
                f"{self._diff_id} the image config says (refused)"
            )
        if self._digest is not None and stored != self._digest:
            raise BaseImageError(
                f"{self._where}: its sha256 is {stored}, not the digest {self._digest} "
                "its descriptor says (refused)"
            )
        return stored


@dataclass(frozen=True, slots=True)
class BaseImage:
    """An opened base image; ``close`` it when done."""

    path: str
    archive: tarfile.TarFile
    layers: tuple[BaseLayer, ...]
    config: dict[str, Any] | None  # the "config" object of its image config
    source: _CountingFile  # the archive file
    compressed: bool  # read through a decompressor: reading back means reading again

    @property
    def bytes_read(self) -> int:
        """Bytes read from the archive file so far (a gzip one: compressed bytes)."""
        return self.source.bytes_read

    def stored(
        self, layer: BaseLayer, checkpoint: Callable[[], None] = no_checkpoint
    ) -> Iterator[bytes]:
        """The layer's bytes as the archive stores them, unchecked (blocking)."""
        source = self.archive.extractfile(layer.member)
        if source is None:
            raise BaseImageError(f"{self.path}: layer {layer.name} is not a regular file")
        with source:
            try:
                while data := source.read(READ_SIZE):
                    yield data
                    checkpoint()
            except (OSError, EOFError, tarfile.TarError) as exc:
                raise BaseImageError(f"{self.path}: cannot read layer {layer.name}: {exc}") from exc

    def checked(
        self, layer: BaseLayer, chunks: Iterable[bytes], digest: Digest | None = None
    ) -> Iterator[bytes]:
        """``chunks``, the layer's bytes, held to its diff_id and to ``digest`` (its
        blob's, when known) once the last has gone (blocking).

        Raises:
            BaseImageError: they are not (after the last chunk).
        """
        if digest is None and layer.blob is not None:
            digest = layer.blob.digest
        check = _Check(f"{self.path}: layer {layer.name}", layer.diff_id, digest)
        for data in chunks:
            check.update(data)
            yield data
        check.finish()

    def chunks(self, layer: BaseLayer) -> Iterator[bytes]:
        """The layer as stored, in reads of READ_SIZE, checked (blocking).

        Raises:
            BaseImageError: it can't be read, or is not what the base image says.
        """
        return self.checked(layer, self.stored(layer))

    def describe(
        self,
        layer: BaseLayer,
        keep: Callable[[bytes], None] | None = None,
        checkpoint: Callable[[], None] = no_checkpoint,
    ) -> Descriptor:
        """The layer's descriptor as stored: the base's own, else found by reading the
        layer (sha256, size, media type by its magic number), which is then held to its
        diff_id, and given to ``keep`` as it is read (blocking).

        Raises:
            BaseImageError: it can't be read, or is not what the base image says.
        """
        if layer.blob is not None:
            return layer.blob
        check = _Check(f"{self.path}: layer {layer.name}", layer.diff_id, None)
        head = b""
        size = 0
        for data in self.stored(layer, checkpoint):
            if not head:
                head = data[:8]
            check.update(data)
            size += len(data)
            if keep is not None:
                keep(data)
        return Descriptor(layer_media_type(head), check.finish(), size)

    def close(self) -> None:
        self.archive.close()
        self.source.close()


def _open_regular(path: str) -> _CountingFile:
    """Raises: BaseImageError: missing, unreadable, or not a regular file."""
    try:
        # O_NONBLOCK: a FIFO is refused below, not waited on for a writer
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise BaseImageError(f"{path}: from_image does not exist") from None
    except OSError as exc:
        raise BaseImageError(f"{path}: cannot read from_image: {exc.strerror or exc}") from None
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise BaseImageError(f"{path}: from_image is a directory, not an image archive")
        # only a regular file: a device (/dev/zero) or a FIFO would be read for ever
        if not stat.S_ISREG(mode):
            raise BaseImageError(f"{path}: from_image is not a regular file")
        os.set_blocking(fd, True)
        return _CountingFile(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def open_base_image(path: str) -> BaseImage:
    """Open and check a base image archive (blocking).

    Raises:
        BaseImageError: missing, not a regular file, not a tar (plain or gzip), or not a
        usable image.
    """
    source = _open_regular(path)
    buffered = io.BufferedReader(source)
    try:
        archive = tarfile.open(path, "r:*", fileobj=buffered)  # noqa: SIM115 (closed by .close)
    except (tarfile.TarError, EOFError) as exc:
        buffered.close()
        # tarfile lists every method it tried, one per line: the first line says enough
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise BaseImageError(f"{path}: from_image is not a tar archive: {reason}") from None
    except OSError as exc:
        buffered.close()
        raise BaseImageError(f"{path}: cannot read from_image: {exc.strerror or exc}") from None
    try:
        contents = read_contents(archive, path)
    except (tarfile.TarError, EOFError, OSError) as exc:
        archive.close()
        buffered.close()
        raise BaseImageError(f"{path}: from_image is cut short or damaged: {exc}") from None
    except BaseException:
        archive.close()
        buffered.close()
        raise
    return BaseImage(
        path,
        archive,
        contents.layers,
        contents.config,
        source,
        compressed=archive.fileobj is not buffered,
    )


class BaseImageLayer(Layer):
    """One layer of the base image, copied into the new image as it is stored there.

    ``spool_dir``: where a layer of a compressed archive read to be described is kept
    until it is copied (None: the temporary directory); ``spool``: False to read it
    again instead (``--spool-max 0``)."""

    kind = BASE

    def __init__(
        self, image: BaseImage, layer: BaseLayer, spool_dir: str | None = None, spool: bool = True
    ) -> None:
        self.history = (layer.name,)
        self._image = image
        self._layer = layer
        self._spool_dir = spool_dir
        self._spooling = spool and image.compressed
        self._spool: IO[bytes] | None = None  # the layer as described, while it is written
        self._blob: Descriptor | None = None
        self._described = Once(self._describe)

    async def diff_id(self) -> Digest:
        return self._layer.diff_id

    async def descriptor(self) -> Descriptor:
        self._blob = await self._described()
        return self._blob

    async def _describe(self) -> Descriptor:
        return await anyio.to_thread.run_sync(self._describe_blocking)

    def _describe_blocking(self) -> Descriptor:
        keep = None
        if self._spooling and self._layer.blob is None:
            try:
                self._spool = tempfile.TemporaryFile(dir=self._spool_dir)  # noqa: SIM115
            except OSError:
                self._spool = None  # no spool: the layer is read again to be copied
            keep = self._keep
        return self._image.describe(self._layer, keep, check_cancelled)

    def _keep(self, data: bytes) -> None:
        if self._spool is None:
            return
        try:
            self._spool.write(data)
        except OSError:  # a full spool disk: read the layer again instead
            self._spool.close()
            self._spool = None

    def known_size(self) -> int:
        return self._layer.size  # copied as stored: the member's size

    def chunks(self) -> Iterator[Chunk]:
        digest = self._blob.digest if self._blob is not None else None
        if self._spool is None:
            return self._image.checked(self._layer, self._image.stored(self._layer), digest)
        return self._image.checked(self._layer, self._spooled(self._spool), digest)

    def _spooled(self, spool: IO[bytes]) -> Iterator[bytes]:
        try:
            spool.seek(0)
            while data := spool.read(READ_SIZE):
                yield data
        except OSError as exc:
            raise BaseImageError(
                f"{self._image.path}: layer {self._layer.name}: cannot read its spool: {exc}"
            ) from exc

    def docker_member(self, name: str) -> TarMember:
        # the reference copies a base layer's member as it is: its name and header
        return TarMember(self._layer.name, self._layer.header(), self._layer.size)

    def release(self) -> None:
        if self._spool is not None:
            self._spool.close()
            self._spool = None
