"""The OCI directory destination: an OCI image layout, as files.

ASYNC; the layers come from image.Image, each blob streamed to its own file.
Rule: a new layout is built beside its destination and renamed into place only when
complete. An OCI layout is shared by design (skopeo and others add images to one): into
a layout already there, blobs are added (renamed into place when whole) and index.json,
last and under a lock, gains this image's entry in place of one with the same tag only;
a directory holding anything but a layout is refused.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from typing import Any

import anyio
import anyio.to_thread

from streamimage.destinations.layout import (
    BLOBS,
    INDEX_FILE,
    LAYOUT_FILE,
    blob_path,
    write_documents,
)
from streamimage.engine.framing import Chunk
from streamimage.engine.pipeline import FdSink, output_error, stream_chunks
from streamimage.errors import ChangedError, OutputError
from streamimage.image import Image, Progress
from streamimage.imagejson import ANNOTATION_REF_NAME, Descriptor, LayerRecord, oci_index
from streamimage.layers import Layer

BLOB_MODE = 0o644  # of files in an oci-dir layout, as `docker save` and skopeo write them


class DirBlobs:
    """Blobs as files under ``root``: each written under a temporary name and renamed to
    its digest when whole, so a blob's name never holds less than the blob; a blob already
    there (content-addressed: the same bytes) is kept. ``index.json`` is merged with the
    one already there, under a lock, last (``merge``), or written as it is."""

    def __init__(self, root: str, progress: Progress, *, merge: bool = False) -> None:
        self.root = root
        self.written = 0  # bytes, for the summary
        self._progress = progress
        self._merge = merge
        self._names: set[str] = set()

    def _path(self, name: str) -> str:
        return os.path.join(self.root, name)

    def _open_temporary(self, name: str) -> tuple[int, str]:
        directory, base = os.path.split(self._path(name))
        try:
            fd, temporary = tempfile.mkstemp(prefix=f".{base}.", suffix=".part", dir=directory)
            os.fchmod(fd, BLOB_MODE)
        except OSError as exc:
            raise output_error(self._path(name), exc) from exc
        return fd, temporary

    def _settle(self, temporary: str, name: str) -> None:
        try:
            os.replace(temporary, self._path(name))
        except OSError as exc:
            raise output_error(self._path(name), exc) from exc

    async def add_layer(self, layer: Layer) -> LayerRecord:
        blob = await layer.descriptor()
        name = blob_path(blob)
        if name not in self._names and not await anyio.Path(self._path(name)).exists():
            await self._write_blob(name, blob, layer.chunks())
            self.written += blob.size
        else:
            self._progress.skip(blob.size)
        self._names.add(name)
        return LayerRecord(await layer.diff_id(), name, layer.history, blob)

    async def _write_blob(self, name: str, blob: Descriptor, chunks: Iterator[Chunk]) -> None:
        fd, temporary = await anyio.to_thread.run_sync(self._open_temporary, name)
        try:
            try:
                sink = FdSink(fd, self._path(name))
                self._progress.watch(sink)
                await stream_chunks(chunks, sink)
            finally:
                os.close(fd)
            if sink.written != blob.size:
                raise ChangedError(f"{name}: {blob.size} bytes hashed but {sink.written} streamed")
            await anyio.to_thread.run_sync(self._settle, temporary, name)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise

    def _write_file(self, name: str, data: bytes) -> None:
        fd, temporary = self._open_temporary(name)
        try:
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
            finally:
                os.close(fd)
            self._settle(temporary, name)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise output_error(self._path(name), exc) from exc
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise

    def _merge_index(self, data: bytes) -> None:
        """index.json: the entries there, but those tagged as ours are, then ours."""
        with _locked(self.root):
            try:
                with open(self._path(INDEX_FILE), "rb") as file:
                    there = json.load(file).get("manifests")
            except FileNotFoundError:
                there = []
            except (OSError, ValueError, AttributeError) as exc:
                raise OutputError(f"{self._path(INDEX_FILE)}: not an OCI index: {exc}") from None
            if not isinstance(there, list):
                raise OutputError(f"{self._path(INDEX_FILE)}: not an OCI index: no manifests")
            ours = json.loads(data)["manifests"]
            tags = {_tag(entry) for entry in ours}
            kept = [e for e in there if not (isinstance(e, dict) and _tag(e) in tags)]
            self._write_file(INDEX_FILE, oci_index([*kept, *ours]))

    async def add_file(self, name: str, data: bytes) -> None:
        if name in self._names:
            return
        if name == INDEX_FILE and self._merge:
            await anyio.to_thread.run_sync(self._merge_index, data)
        elif name == LAYOUT_FILE or not await anyio.Path(self._path(name)).exists():
            await anyio.to_thread.run_sync(self._write_file, name, data)
        self._names.add(name)
        self.written += len(data)


def _tag(entry: dict[str, Any]) -> str | None:
    annotations = entry.get("annotations")
    return annotations.get(ANNOTATION_REF_NAME) if isinstance(annotations, dict) else None


@contextlib.contextmanager
def _locked(root: str) -> Iterator[None]:
    """An exclusive lock on the layout directory: two writers merge index.json in turn."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


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


def _existing_layout(destination: str) -> bool:
    """True: ``destination`` is an OCI layout (or an empty directory) to add the image to;
    False: there is nothing there.

    Raises:
        OutputError: something else is there: never someone's other files.
    """
    try:
        names = os.listdir(destination)
    except FileNotFoundError:
        return False
    except NotADirectoryError:
        raise OutputError(f"{destination}: exists and is not a directory") from None
    except OSError as exc:
        raise OutputError(f"{destination}: cannot read: {exc.strerror or exc}") from None
    if names and LAYOUT_FILE not in names:
        raise OutputError(f"{destination}: exists and is not an OCI image layout; not writing")
    try:
        os.makedirs(os.path.join(destination, BLOBS), exist_ok=True)
    except OSError as exc:
        raise OutputError(f"{destination}: cannot create {BLOBS}: {exc.strerror or exc}") from None
    return True


async def write_oci_dir(image: Image, destination: str) -> int:
    """Write ``image`` into the OCI image layout directory ``destination``: a new one is
    built beside it and renamed into place when complete; into one already there (an OCI
    layout is shared by design) its blobs are added and its index.json entry, tagged with
    ``org.opencontainers.image.ref.name``, replaces only an entry of the same tag, last.
    Returns the bytes written.

    Raises:
        StreamImageError: any failure; a new ``destination`` is then not made, an existing
        one's index.json is as it was (blobs written may stay: nothing names them).
    """
    if await anyio.to_thread.run_sync(_existing_layout, destination):
        store = DirBlobs(destination, image.build.progress, merge=True)
        records = await image.write_layers(store)
        await write_documents(image, records, store)
        return store.written
    root = await anyio.to_thread.run_sync(_make_temporary, destination)
    try:
        store = DirBlobs(root, image.build.progress)
        records = await image.write_layers(store)
        await write_documents(image, records, store)
        try:
            await anyio.to_thread.run_sync(os.rename, root, destination)
        except OSError as exc:
            raise OutputError(f"{destination}: cannot put the layout in place: {exc}") from None
    except BaseException:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(shutil.rmtree, root, True)
        raise
    return store.written
