"""The registry destination: an image pushed over the OCI distribution API, as
go-containerregistry's ``remote.Write`` does it.

ASYNC; the layers come from image.Image, the registry is remote.client's.
Rule 1: every blob is asked for first (HEAD; Rule 3) and sent only if missing: mounted from
``--mount-from``'s repository when the registry has it there, else uploaded, streamed,
UPLOADS_AT_ONCE at a time; a layer the registry has is never read.
Rule 2: the manifest is put last, after every blob it names (and the config) is in
place, so a push that fails, or is stopped, never tags a partial image.
Rule 3: a store layer whose digest nothing knows yet (the digest cache lacks it) is hashed
first, so that it can be asked for, unless the repository is new (no tag) and no
repository could lend a mount: then it is uploaded as it is hashed, in one pass.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import AsyncGenerator, Callable, Generator, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import anyio
import anyio.to_thread
from anyio.from_thread import check_cancelled

from streamimage.engine.framing import Chunk, read_pieces
from streamimage.errors import ChangedError, RegistryError
from streamimage.image import Image, Progress
from streamimage.imagejson import (
    MEDIA_TYPE_CONFIG,
    MEDIA_TYPE_DOCKER_CONFIG,
    MEDIA_TYPE_DOCKER_MANIFEST,
    MEDIA_TYPE_MANIFEST,
    Descriptor,
    Digest,
    LayerRecord,
    docker_distribution_manifest,
    oci_manifest,
)
from streamimage.layers import BASE, Layer
from streamimage.options import FORMAT_DOCKER
from streamimage.remote.authn import credentials_for
from streamimage.remote.reference import Reference
from streamimage.remote.seen import SeenBlobs, SeenUnavailable

if TYPE_CHECKING:  # httpx: imported by connect, in a thread, while the hash passes run
    from streamimage.remote.client import RegistryClient
    from streamimage.remote.transport import RegistryAuth

# Uploads at once: one upload waits on round trips (POST, PATCH's answer, PUT) and on its
# layer's reads; a few keep a link to a remote registry busy meanwhile (docker pushes 5
# at once, GGCR 4). Each holds one block in memory; more would only compete with the
# hash passes (-j) for the CPUs and keep more spools open.
UPLOADS_AT_ONCE = 3
BLOCK = 1024 * 1024  # bytes of a body handed to the connection at once

PRESENT = "present"
MOUNTED = "mounted"
UPLOADED = "uploaded"


@dataclass(frozen=True, slots=True)
class BlobOutcome:
    """What the push did with one blob: ``action`` PRESENT (skipped), MOUNTED or UPLOADED
    (``size`` bytes in ``seconds``)."""

    what: str  # "layer 3", "config"
    digest: Digest
    size: int
    action: str
    seconds: float = 0.0
    source: str | None = None  # the repository it was mounted from


@dataclass(frozen=True, slots=True)
class Pushed:
    """A push done: the manifest's digest, where, and each blob's outcome in order."""

    reference: str
    manifest_digest: Digest
    blobs: list[BlobOutcome]

    @property
    def uploaded(self) -> int:
        """Bytes uploaded."""
        return sum(b.size for b in self.blobs if b.action == UPLOADED)


def _blocks(chunks: Iterator[Chunk]) -> Generator[bytes, None, None]:
    """A layer's chunks as blocks of about BLOCK bytes: a registry gets bytes, so large
    files' FileSpans are read here (checked as the file sink checks them), not sent."""
    held: list[bytes] = []
    size = 0
    try:
        for chunk in chunks:
            pieces = [chunk] if isinstance(chunk, bytes) else read_pieces(chunk, check_cancelled)
            for piece in pieces:
                held.append(bytes(piece))  # a FileSpan's piece is a view of a reused buffer
                size += len(piece)
                if size >= BLOCK:
                    yield b"".join(held)
                    held, size = [], 0
        if held:
            yield b"".join(held)
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:
            close()


class RegistryBlobs:
    """A LayerWriter into a registry repository: each layer's blob made present there.

    A blob the repository lacks is mounted from ``mount_from`` (--mount-from), else from
    those of ``seen_sources`` (repositories earlier pushes went to, fixed before the push
    so that its auth can ask for their pull scope) that ``seen`` says hold it.
    """

    def __init__(
        self,
        client: RegistryClient,
        mount_from: str | None,
        layers: Sequence[Layer],
        seen: SeenBlobs | None = None,
        seen_sources: Sequence[str] = (),
        progress: Progress | None = None,
    ) -> None:
        self._client = client
        self._progress = progress  # told of each layer blob not sent: it leaves the total
        self._mount_from = mount_from
        self._seen = seen
        self._seen_sources = set(seen_sources)  # those the push's auth was scoped for
        self._seen_limiter = anyio.CapacityLimiter(1)  # one SQLite call at a time
        self._numbers = {id(layer): number for number, layer in enumerate(layers, start=1)}
        self._done: set[Digest] = set()
        self._locks: dict[Digest, anyio.Lock] = {}
        self._outcomes: dict[int, BlobOutcome] = {}  # by layer number; the config: 0
        # A base image's layers are members of one archive, read through one file object
        # (seek, then read: not safe from two threads; a gzip archive reads cheaply only
        # forward): one base layer at a time, in order (anyio's Lock is fair)
        self._base_archive = anyio.Lock()
        self.written = 0  # bytes uploaded so far (the progress line reads it)

    @property
    def outcomes(self) -> list[BlobOutcome]:
        """Each layer's outcome in the image's order, then the config's."""
        return [self._outcomes[n] for n in sorted(self._outcomes, key=lambda n: n or 1 << 30)]

    async def add_layer(self, layer: Layer) -> LayerRecord:
        if layer.kind == BASE:
            async with self._base_archive:
                return await self._add_layer(layer)
        return await self._add_layer(layer)

    async def _add_layer(self, layer: Layer) -> LayerRecord:
        number = self._numbers[id(layer)]
        what = f"layer {number}"
        if await layer.streamed():
            return await self._add_streamed(layer, number, what)
        blob = await layer.descriptor()
        # a layer repeated in the image (uploads run at once): sent once, then present
        async with self._locks.setdefault(blob.digest, anyio.Lock()):
            if blob.digest in self._done:
                outcome = BlobOutcome(what, blob.digest, blob.size, PRESENT)
            else:
                outcome = await self.ensure(blob, layer.chunks, what)
        if outcome.action != UPLOADED and self._progress is not None:
            self._progress.skip(blob.size)
        self._outcomes[number] = outcome
        return LayerRecord(await layer.diff_id(), str(blob.digest), layer.history, blob)

    async def _add_streamed(self, layer: Layer, number: int, what: str) -> LayerRecord:
        """A layer nothing hashed ahead (a push to a new repository, which holds none of
        the image's blobs: a HEAD would say no, a hash pass would only delay the upload):
        framed once, uploaded as it is hashed, the PUT naming the digest found."""
        sent = _Sent()
        started, clock = time.time(), time.monotonic()
        body = self._body(None, layer.chunks, what, sent)
        await self._client.upload(lambda: str(sent.digest()), None, body, what)
        seconds = time.monotonic() - clock
        await layer.streamed_as(sent.digest(), sent.size, started)
        blob = await layer.descriptor()
        self._outcomes[number] = BlobOutcome(what, blob.digest, blob.size, UPLOADED, seconds)
        self._done.add(blob.digest)
        return LayerRecord(await layer.diff_id(), str(blob.digest), layer.history, blob)

    async def add_config(self, blob: Descriptor, data: bytes) -> None:
        """The image config's blob, after the layers'."""

        def chunks() -> Iterator[Chunk]:
            yield data

        self._outcomes[0] = await self.ensure(blob, chunks, "config")

    async def ensure(
        self, blob: Descriptor, chunks: Callable[[], Iterator[Chunk]], what: str
    ) -> BlobOutcome:
        """Make ``blob`` present in the repository: HEAD, then a mount, then an upload of
        what ``chunks()`` gives.

        Raises:
            RegistryError: the registry refused or went away.
            ChangedError: the layer's bytes are not the ones described.
        """
        digest = str(blob.digest)
        label = f"{what} {digest}"
        source: str | None = None
        if await self._client.has_blob(digest, label):
            outcome = BlobOutcome(what, blob.digest, blob.size, PRESENT)
        elif (source := await self._mount(digest, label)) is not None:
            outcome = BlobOutcome(what, blob.digest, blob.size, MOUNTED, source=source)
        else:
            started = time.monotonic()
            await self._client.upload(digest, blob.size, self._body(blob.size, chunks, what), label)
            seconds = time.monotonic() - started
            outcome = BlobOutcome(what, blob.digest, blob.size, UPLOADED, seconds)
        self._done.add(blob.digest)
        return outcome

    async def _mount(self, digest: str, label: str) -> str | None:
        """Mount ``digest`` from --mount-from's repository, else from those earlier pushes
        left it in; returns the one it was mounted from, or None."""
        reference = self._client.reference
        sources = [self._mount_from] if self._mount_from is not None else []
        if self._seen is not None:
            seen = await anyio.to_thread.run_sync(
                self._seen.sources,
                reference.registry,
                digest,
                reference.repository,
                limiter=self._seen_limiter,
            )
            sources += [s for s in seen if s in self._seen_sources and s not in sources]
        for source in sources:
            if await self._client.mount(digest, source, label):
                return source
            if self._seen is not None and source != self._mount_from:
                await anyio.to_thread.run_sync(
                    self._seen.forget,
                    reference.registry,
                    digest,
                    source,
                    limiter=self._seen_limiter,
                )
        return None

    async def remember(self) -> None:
        """The manifest was accepted: its blobs are in this repository, for later pushes
        to mount from."""
        if self._seen is None:
            return
        reference = self._client.reference
        digests = [str(outcome.digest) for outcome in self.outcomes]
        await anyio.to_thread.run_sync(
            self._seen.remember,
            reference.registry,
            reference.repository,
            digests,
            limiter=self._seen_limiter,
        )

    def _body(
        self,
        size: int | None,
        chunks: Callable[[], Iterator[Chunk]],
        what: str,
        sent: _Sent | None = None,
    ) -> Callable[[], AsyncGenerator[bytes, None]]:
        """The factory of the upload's body: each attempt reads the blob anew, ``size``
        bytes; None: a streamed layer's, hashed into ``sent`` as it goes."""

        counted = 0  # of an attempt before: taken back, or a retry shows 100 % too soon
        read = next if sent is None else sent.next

        async def body() -> AsyncGenerator[bytes, None]:
            nonlocal counted
            self.written -= counted
            counted = 0
            if sent is not None:
                sent.reset()  # an attempt hashes from the start
            blocks = _blocks(chunks())
            total = 0
            try:
                while block := await anyio.to_thread.run_sync(read, blocks, b""):
                    total += len(block)
                    if size is not None and total > size:
                        break
                    self.written += len(block)
                    counted += len(block)
                    yield block
            finally:
                await anyio.to_thread.run_sync(blocks.close)
            if size is not None and total != size:
                raise ChangedError(f"{what}: {size} bytes hashed but {total} read to send")

        return body


class _Sent:
    """What an upload of a streamed layer sent: its sha256 and size (hashed in the worker
    thread that reads each block: hashlib releases the GIL)."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self._sha = hashlib.sha256()
        self.size = 0

    def next(self, blocks: Iterator[bytes], default: bytes) -> bytes:
        block = next(blocks, default)
        self._sha.update(block)
        self.size += len(block)
        return block

    def digest(self) -> Digest:
        return Digest(self._sha.hexdigest())


class _Answer:
    """A yes or no given once, which any number of tasks wait for."""

    def __init__(self) -> None:
        self._given = anyio.Event()
        self._value = False

    def give(self, value: bool) -> None:
        self._value = value
        self._given.set()

    async def wait(self) -> bool:
        await self._given.wait()
        return self._value


async def push_image(
    image: Image, client: RegistryClient, blobs: RegistryBlobs, docker: bool
) -> Pushed:
    """Push ``image`` to ``client``'s repository: layers, config, then the manifest (a
    Docker v2 schema 2 one if ``docker``, else OCI) under the reference's tag or digest.

    Raises:
        StreamImageError: any failure; the manifest is then not put, nothing is tagged.
    """
    reference = client.reference
    records = await image.write_layers(blobs, at_once=UPLOADS_AT_ONCE)
    config_json = image.config_json(records)
    config = Descriptor.of(MEDIA_TYPE_DOCKER_CONFIG if docker else MEDIA_TYPE_CONFIG, config_json)
    layers = [record.blob for record in records if record.blob is not None]
    await blobs.add_config(config, config_json)
    if docker:
        try:
            manifest = docker_distribution_manifest(config, layers)
        except ValueError as exc:
            raise RegistryError(f"{client.name}: {exc}") from None
        media_type = MEDIA_TYPE_DOCKER_MANIFEST
    else:
        manifest, media_type = oci_manifest(config, layers), MEDIA_TYPE_MANIFEST
    digest = Digest.of(manifest)
    if reference.digest is not None and reference.digest != str(digest):
        raise RegistryError(
            f"{reference}: the image's manifest is {digest}, not the digest asked for"
        )
    await client.put_manifest(media_type, manifest, reference.manifest_reference)
    await blobs.remember()
    return Pushed(str(reference), digest, blobs.outcomes)


@dataclass(frozen=True, slots=True)
class RegistryTarget:
    """``-o docker://...``: where to push, and how."""

    reference: Reference
    tls_verify: bool = True
    mount_from: str | None = None  # a repository of the same registry that may hold blobs


def registry_auth(target: RegistryTarget, mount_sources: Sequence[str]) -> RegistryAuth:
    """How a push answers the registry's challenges: the credentials found for it where
    containers/image and Docker keep them (remote/authn.py; none: anonymous), Basic or a
    Bearer token (remote/transport.py) whose scope is push on the repository and pull on
    ``mount_sources``, the repositories a blob may be mounted from (--mount-from's, and
    those earlier pushes went to). Blocking: credential helpers are programs.

    Raises:
        CredentialsError: an auth file is malformed, or a credential helper failed.
    """
    from streamimage.remote.transport import RegistryAuth

    reference = target.reference
    credentials = credentials_for(reference.registry, reference.repository)
    return RegistryAuth(
        reference.registry, reference.repository, credentials, mount_from=mount_sources
    )


def connect(target: RegistryTarget, mount_sources: Sequence[str]) -> RegistryClient:
    """The client of ``target``'s repository, its auth as registry_auth makes it. Blocking,
    for a worker thread: it imports httpx, which imports httpcore (and the async libraries
    it finds installed) for its first client: 0.2 s here, which a push spends while its
    hash passes run.

    Raises:
        CredentialsError: as registry_auth.
    """
    from streamimage.remote.client import RegistryClient

    auth = registry_auth(target, mount_sources)
    return RegistryClient(target.reference, auth=auth, tls_verify=target.tls_verify)


async def push(image: Image, target: RegistryTarget) -> Pushed:
    """Push ``image`` to ``target``, mounting from where --mount-from and earlier pushes
    (remembered beside the digest cache) say the blobs are; the bytes uploaded count on
    the image's progress.

    Raises:
        RegistryError, AuthError, CredentialsError: the registry, its auth or the
            credentials failed (one line each).
        ChangedError: a layer's bytes were not the ones described.
    """
    progress = image.build.progress
    options = image.build.options
    reference = target.reference
    seen = None
    seen_sources: list[str] = []
    if options.cache_dir is not None:
        try:
            seen = await anyio.to_thread.run_sync(SeenBlobs.open, options.cache_dir)
            seen_sources = await anyio.to_thread.run_sync(
                seen.recent_repositories, reference.registry, reference.repository
            )
        except SeenUnavailable as exc:
            progress.warn(f"{exc}: no mounts from earlier pushes")
    mount_sources = [target.mount_from] if target.mount_from is not None else []
    mount_sources += [s for s in seen_sources if s not in mount_sources]
    new_repository = _Answer()
    try:
        async with anyio.create_task_group() as tg:
            # the hash passes first (with a warm digest cache: walks of the store, 0.3 s
            # for the default corpus), so that they run while the client is made; those
            # of layers the cache can't give wait to know whether the registry may hold them
            image.start(tg, stream_misses=new_repository.wait)
            client = await anyio.to_thread.run_sync(connect, target, mount_sources)
            async with client:
                await client.ping()
                # Rule 3: a new repository holds none of the image's blobs, and without a
                # repository to mount from, each one is to be uploaded: hashing a layer
                # first would only delay its upload (a cold push: 6.8 s hash first, 5.0 s
                # in one pass); elsewhere a HEAD may spare an upload (2.6 s, 4.9 s)
                new_repository.give(not mount_sources and await client.has_tags() is False)
                blobs = RegistryBlobs(
                    client,
                    target.mount_from,
                    image.layers,
                    seen,
                    seen_sources=seen_sources,
                    progress=progress,
                )
                progress.watch(blobs)
                pushed = await push_image(image, client, blobs, options.format == FORMAT_DOCKER)
        return pushed
    finally:
        image.close()
        if seen is not None:
            seen.close()
