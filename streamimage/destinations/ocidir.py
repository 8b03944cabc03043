"""The OCI directory destination: an OCI image layout, as files.

ASYNC; the layers come from image.Image, each blob streamed to its own file.
Rule: the layout is built beside its destination and renamed into place only when
complete; a failure leaves the destination as it was.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator

import anyio
import anyio.to_thread

from streamimage.destinations.layout import BLOBS, LAYOUT_FILE, blob_path, write_documents
from streamimage.engine.framing import Chunk
from streamimage.engine.pipeline import FdSink, output_error, stream_chunks
from streamimage.errors import ChangedError, OutputError
from streamimage.image import Image
from streamimage.imagejson import Descriptor, LayerRecord
from streamimage.layers import Layer

BLOB_MODE = 0o644  # of files in an oci-dir layout, as `docker save` and skopeo write them


class DirBlobs:
    """Blobs as files under ``root`` (the temporary directory being built)."""

    def __init__(self, root: str) -> None:
        self.root = root
        self.written = 0  # bytes, for the summary
        self._names: set[str] = set()

    def _open(self, name: str) -> int:
        path = os.path.join(self.root, name)
        try:
            return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, BLOB_MODE)
        except OSError as exc:
            raise output_error(path, exc) from exc

    async def add_layer(self, layer: Layer) -> LayerRecord:
        blob = await layer.descriptor()
        name = blob_path(blob)
        if name not in self._names:
            await self._write_blob(name, blob, layer.chunks())
            self._names.add(name)
            self.written += blob.size
        return LayerRecord(await layer.diff_id(), name, layer.history, blob)

    async def _write_blob(self, name: str, blob: Descriptor, chunks: Iterator[Chunk]) -> None:
        fd = await anyio.to_thread.run_sync(self._open, name)
        try:
            sink = FdSink(fd, os.path.join(self.root, name))
            await stream_chunks(chunks, sink)
        finally:
            os.close(fd)
        if sink.written != blob.size:
            raise ChangedError(f"{name}: {blob.size} bytes hashed but {sink.written} streamed")

    def _write_file(self, name: str, data: bytes) -> None:
        fd = self._open(name)
        sink_name = os.path.join(self.root, name)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        except OSError as exc:
            raise output_error(sink_name, exc) from exc
        finally:
            os.close(fd)

    async def add_file(self, name: str, data: bytes) -> None:
        if name not in self._names:
            await anyio.to_thread.run_sync(self._write_file, name, data)
            self._names.add(name)
            self.written += len(data)


def _make_temporary(destination: str) -> str:
    """Raises: OutputError: it can't be created beside ``destination``."""
    parent, name = os.path.split(os.path.abspath(destination))
    try:
        root = tempfile.mkdtemp(prefix=f".{name}.", suffix=".part", dir=parent)
        os.chmod(root, 0o755)  # mkdtemp makes 0700; a layout is for others to read too
        os.makedirs(os.path.join(root, BLOBS))
    except OSError as exc:
        raise OutputError(f"{destination}: cannot create: {exc.strerror or exc}") from None
    return root


def _replaceable(destination: str) -> bool:
    # Only an empty directory or an OCI layout is swapped out: never someone's other files.
    try:
        names = os.listdir(destination)
    except FileNotFoundError:
        return True
    except NotADirectoryError:
        return False
    return not names or LAYOUT_FILE in names


def _put_in_place(root: str, destination: str) -> None:
    """Rename the finished layout to ``destination``, replacing an old layout there.

    Raises:
        OutputError: destination holds something other than an OCI layout, or renaming fails.
    """
    if not _replaceable(destination):
        raise OutputError(f"{destination}: exists and is not an OCI image layout; not replacing it")
    try:
        if os.path.lexists(destination):
            parent, name = os.path.split(os.path.abspath(destination))
            old = tempfile.mkdtemp(prefix=f".{name}.", suffix=".old", dir=parent)
            os.rename(destination, os.path.join(old, name))
            os.rename(root, destination)
            shutil.rmtree(old)
        else:
            os.rename(root, destination)
    except OSError as exc:
        raise OutputError(f"{destination}: cannot put the layout in place: {exc}") from None


async def write_oci_dir(image: Image, destination: str) -> int:
    """Write ``image`` as an OCI image layout directory ``destination``; returns the
    bytes written.

    Raises:
        StreamImageError: any failure; ``destination`` is then left as it was.
    """
    if not _replaceable(destination):
        raise OutputError(f"{destination}: exists and is not an OCI image layout; not replacing it")
    root = await anyio.to_thread.run_sync(_make_temporary, destination)
    try:
        store = DirBlobs(root)
        records = await image.write_layers(store)
        await write_documents(image, records, store)
        await anyio.to_thread.run_sync(_put_in_place, root, destination)
    except BaseException:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(shutil.rmtree, root, True)
        raise
    return store.written
