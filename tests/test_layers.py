"""The layer kinds and the image that orders them: what each Layer says of itself (diff_id,
descriptor, docker member) is what its bytes are, and a compressed layer is its inner
layer compressed. Oracles: hashlib and gzip of the bytes, tarfile's own headers, the
reference's progress lines.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import tarfile
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import anyio.to_thread
import pytest

from streamimage.engine import compress
from streamimage.engine.scheduler import HashPass
from streamimage.engine.spool import spool_budget
from streamimage.errors import ChangedError, CustomisationError
from streamimage.image import Build, Image, Meter
from streamimage.imagejson import LayerRecord
from streamimage.layers import BASE, CUSTOMISATION, STORE, Layer
from streamimage.layers.base import BaseImageLayer, open_base_image
from streamimage.layers.compressed import CompressedLayer
from streamimage.layers.customisation import CustomisationLayer, open_customisation
from streamimage.layers.store import StoreLayer
from streamimage.options import UNCOMPRESSED, Compression, Options
from streamimage.spec import parse_conf
from streamimage.tarheader import HeaderEncoder
from tests.failures import Store, chunk_bytes, make_store

ENCODER = HeaderEncoder(uid=0, gid=0, uname="root", gname="root", mtime=1)
GZIP = Compression("gzip", 1)
LAYER = "application/vnd.oci.image.layer.v1.tar"
LAYER_GZIP = LAYER + "+gzip"


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Store:
    built = make_store(tmp_path)
    big = built.root / built.layers[0][0] / "lib" / "big.bin"
    big.write_bytes(os.urandom(100_000) * 3)  # a FileSpan: sent or read, never inline
    monkeypatch.chdir(built.root)
    return built


@dataclass
class Counter:
    files: int = 0


content = chunk_bytes


async def stream(layer: Layer) -> bytes:
    """The layer's bytes as a destination reads them: its chunks, in a worker thread."""
    return await anyio.to_thread.run_sync(content, layer.chunks())


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.fixture
async def hashed(store: Store) -> AsyncIterator[HashPass]:
    """The store's layers hashed (uncompressed) in threads, with a spool."""
    async with hash_pass(store, UNCOMPRESSED) as hashes:
        yield hashes


@asynccontextmanager
async def hash_pass(
    store: Store, compression: Compression, spool: bool = True
) -> AsyncIterator[HashPass]:
    """Every layer of the store hashed (in threads), its spool files open until the end."""
    budget = spool_budget(None, (1 << 30) if spool else 0, 2 * len(store.layers))
    hashes = HashPass(store.layers, ENCODER, compression, workers=2, processes=False, spool=budget)
    try:
        async with anyio.create_task_group() as tg:
            hashes.start(tg)
        yield hashes
    finally:
        hashes.close()


async def test_a_store_layer_is_what_it_describes(store: Store, hashed: HashPass) -> None:
    counter = Counter()
    layer = StoreLayer(0, store.layers[0], hashed, ENCODER, counter)
    descriptor = await layer.descriptor()
    data = await stream(layer)
    assert descriptor.media_type == LAYER
    assert str(descriptor.digest) == sha256(data) == str(await layer.diff_id())
    assert descriptor.size == len(data)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        names = tar.getnames()
    assert names[:2] == ["/nix", "/nix/store"]  # absolute, as the reference writes them
    assert counter.files == len(names) - 2  # every store entry, checked and counted
    assert layer.kind == STORE
    assert layer.history == tuple(store.layers[0])
    assert layer.docker_member("x") is None
    assert await layer.compressed_descriptor(GZIP) is None  # its pass didn't compress


async def test_a_store_layer_copied_from_its_spool_is_the_one_framed_again(
    store: Store, hashed: HashPass
) -> None:
    async with hash_pass(store, UNCOMPRESSED, spool=False) as unspooled:
        again = StoreLayer(1, store.layers[1], unspooled, ENCODER, Counter())
        await again.diff_id()
        framed = await stream(again)
        assert again.timeline is not None
        assert again.timeline.spooled is None
    layer = StoreLayer(1, store.layers[1], hashed, ENCODER, Counter())
    await layer.diff_id()
    assert await stream(layer) == framed
    assert layer.timeline is not None
    assert layer.timeline.spooled is not None


@pytest.mark.parametrize("spool", [True, False])
async def test_a_store_layer_streams_whole_again_for_a_retried_upload(
    store: Store, spool: bool
) -> None:
    async with hash_pass(store, UNCOMPRESSED, spool=spool) as hashes:
        layer = StoreLayer(0, store.layers[0], hashes, ENCODER, Counter())
        digest = await layer.diff_id()
        cut_short = layer.chunks()
        next(cut_short)  # an upload that failed after its first chunk
        getattr(cut_short, "close")()  # noqa: B009 (a generator; Layer says Iterator)
        first, second = await stream(layer), await stream(layer)
    assert first == second
    assert sha256(second) == str(digest)


async def test_a_store_layer_framed_again_fails_if_its_store_changed(store: Store) -> None:
    async with hash_pass(store, UNCOMPRESSED, spool=False) as unspooled:
        layer = StoreLayer(0, store.layers[0], unspooled, ENCODER, Counter())
        await layer.diff_id()
        (Path(store.layers[0][0]) / "zz-new").write_text("new")
        with pytest.raises(ChangedError, match="changed between the hash pass and the stream"):
            await stream(layer)


async def test_a_spooled_store_layer_streams_what_was_hashed(
    store: Store, hashed: HashPass
) -> None:
    # Its spool holds the bytes hashed: a store changed since can't make the two disagree.
    layer = StoreLayer(0, store.layers[0], hashed, ENCODER, Counter())
    digest = await layer.diff_id()
    (Path(store.layers[0][0]) / "zz-new").write_text("new")
    data = await stream(layer)
    assert sha256(data) == str(digest)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        assert not any(name.endswith("/zz-new") for name in tar.getnames())


async def test_release_closes_the_spool_files(store: Store, hashed: HashPass) -> None:
    layer = StoreLayer(0, store.layers[0], hashed, ENCODER, Counter())
    await layer.diff_id()
    fds = list(hashed.spool_fds(0))
    assert fds
    layer.release()
    assert not hashed.spool_fds(0)
    for fd in fds:
        with pytest.raises(OSError, match="Bad file descriptor"):
            os.fstat(fd)


@pytest.mark.parametrize("spool", [True, False], ids=["copied-from-spool", "compressed-again"])
async def test_a_compressed_store_layer_is_its_layer_gzipped(store: Store, spool: bool) -> None:
    async with hash_pass(store, UNCOMPRESSED, spool=False) as plain_pass:
        plain = StoreLayer(0, store.layers[0], plain_pass, ENCODER, Counter())
        await plain.diff_id()
        uncompressed = await stream(plain)
    async with hash_pass(store, GZIP, spool=spool) as hashes:
        inner = StoreLayer(0, store.layers[0], hashes, ENCODER, Counter())
        layer = CompressedLayer(inner, GZIP)
        descriptor = await layer.descriptor()
        assert (inner.compressed_chunks(GZIP) is not None) == spool
        blob = await stream(layer)
    assert descriptor.media_type == LAYER_GZIP
    assert str(descriptor.digest) == sha256(blob)
    assert descriptor.size == len(blob)
    assert blob == compress.gzip_bytes(uncompressed, GZIP.level)
    assert str(await layer.diff_id()) == sha256(uncompressed)
    assert layer.docker_member("x") is None
    assert (layer.kind, layer.history) == (STORE, tuple(store.layers[0]))


def customisation_layer(store: Store) -> CustomisationLayer:
    conf = parse_conf(store.conf, "conf")
    return CustomisationLayer(open_customisation(conf.customisation_layer), conf.mtime)


async def test_the_customisation_layer_is_its_layer_tar(store: Store) -> None:
    layer = customisation_layer(store)
    path = Path(store.conf["customisation_layer"]) / "layer.tar"
    data = path.read_bytes()
    descriptor = await layer.descriptor()
    assert (descriptor.media_type, str(descriptor.digest), descriptor.size) == (
        LAYER,
        sha256(data),
        len(data),
    )
    assert await stream(layer) == data
    member = layer.docker_member("abc/layer.tar")
    info = tarfile.TarInfo.frombuf(member.header, "utf-8", "surrogateescape")
    st = path.stat()
    assert (info.name, info.size, info.mode, info.uid, info.gid) == (
        "abc/layer.tar",
        len(data),
        st.st_mode & 0o7777,
        st.st_uid,
        st.st_gid,
    )
    assert layer.kind == CUSTOMISATION


async def test_a_customisation_layer_with_a_wrong_checksum_fails_when_asked(store: Store) -> None:
    checksum = Path(store.conf["customisation_layer"]) / "checksum"
    checksum.write_text("0" * 64)
    layer = customisation_layer(store)
    with pytest.raises(CustomisationError, match="does not match"):
        await layer.diff_id()


async def test_a_compressed_customisation_layer_is_compressed_when_described(
    store: Store,
) -> None:
    data = (Path(store.conf["customisation_layer"]) / "layer.tar").read_bytes()
    layer = CompressedLayer(customisation_layer(store), GZIP)
    await layer.prepare()
    descriptor = await layer.descriptor()
    blob = await stream(layer)
    assert gzip.decompress(blob) == data
    assert (str(descriptor.digest), descriptor.size) == (sha256(blob), len(blob))
    assert descriptor.media_type == LAYER_GZIP


async def test_a_compressor_that_does_not_repeat_itself_fails_the_stream(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The bytes streamed must be the ones hashed, even when they are compressed twice.
    layer = CompressedLayer(customisation_layer(store), GZIP)
    await layer.descriptor()
    original = compress.compressed_chunks

    def other_bytes(*args: object, **kwargs: object) -> Iterator[bytes]:
        for data in original(*args, **kwargs):  # type: ignore[arg-type]
            yield data[:-1] + bytes([data[-1] ^ 1])

    monkeypatch.setattr("streamimage.layers.compressed.compressed_chunks", other_bytes)
    with pytest.raises(ChangedError, match="when hashed but to"):
        await stream(layer)


def write_base(path: Path, layers: list[bytes]) -> list[str]:
    """A docker-archive of ``layers`` (their names returned), written with tarfile."""
    names = [f"{hashlib.sha256(data).hexdigest()}/layer.tar" for data in layers]
    config = {
        "config": {"Env": ["A=1"]},
        "rootfs": {"type": "layers", "diff_ids": [sha256(data) for data in layers]},
    }
    manifest = [{"Config": "config.json", "RepoTags": ["base:1"], "Layers": names}]
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in [
            *zip(names, layers, strict=True),
            ("config.json", json.dumps(config).encode()),
            ("manifest.json", json.dumps(manifest).encode()),
        ]:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode, info.uname = len(data), 12345, 0o600, "someone"
            tar.addfile(info, io.BytesIO(data))
    return names


async def test_a_base_layer_keeps_its_member_and_is_described_by_reading_it(
    tmp_path: Path,
) -> None:
    layers = [b"first layer" * 100, b"second" * 1000]
    names = write_base(tmp_path / "base.tar", layers)
    image = open_base_image(str(tmp_path / "base.tar"))
    try:
        base_layers = [BaseImageLayer(image, layer) for layer in image.layers]
        for layer, name, data in zip(base_layers, names, layers, strict=True):
            assert layer.kind == BASE
            assert layer.history == (name,)
            assert str(await layer.diff_id()) == sha256(data)
            member = layer.docker_member("ignored")
            with tarfile.open(tmp_path / "base.tar") as tar:
                info = tar.getmember(name)
            assert member.name == name
            assert member.header == info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
            assert content(layer.chunks()) == data
            descriptor = await layer.descriptor()
            assert (descriptor.media_type, str(descriptor.digest)) == (LAYER, sha256(data))
    finally:
        image.close()


@dataclass
class Recorder:
    """A destination that reads every layer and notes what it was asked, in order."""

    progress: list[str]
    seen: list[tuple[str, str, int]] = field(default_factory=list)

    async def add_layer(self, layer: Layer) -> LayerRecord:
        diff_id = await layer.diff_id()
        descriptor = await layer.descriptor()
        data = await stream(layer)
        self.progress.append(f"<{layer.kind} written>")
        self.seen.append((layer.kind, descriptor.media_type, len(data)))
        return LayerRecord(diff_id, f"{len(self.seen)}", layer.history, descriptor)


@dataclass
class Lines:
    lines: list[str] = field(default_factory=list)
    files: int = 0
    planned: list[Layer] = field(default_factory=list)
    numbers: list[int] = field(default_factory=list)

    def line(self, text: str) -> None:
        self.lines.append(text)

    def warn(self, text: str) -> None:
        self.lines.append(f"warning: {text}")

    def plan(self, layers: Sequence[Layer]) -> None:
        self.planned = list(layers)

    def layer(self, number: int) -> None:
        self.numbers.append(number)

    def watch(self, meter: Meter) -> None:
        pass

    def skip(self, size: int) -> None:
        pass


@pytest.mark.parametrize("compression", [UNCOMPRESSED, GZIP], ids=str)
async def test_an_image_writes_base_store_and_customisation_layers_in_order(
    store: Store, tmp_path: Path, compression: Compression
) -> None:
    write_base(tmp_path / "base.tar", [b"base" * 300])
    conf = parse_conf({**store.conf, "from_image": str(tmp_path / "base.tar")}, "conf")
    base = open_base_image(str(tmp_path / "base.tar"))
    progress = Lines()
    options = Options(hash_in_processes=False, compression=compression)
    try:
        customisation = open_customisation(conf.customisation_layer)
        image = Image(Build(conf, options, base, customisation, progress))
        recorder = Recorder(progress.lines)
        records = await image.write_layers(recorder)
    finally:
        base.close()
    kinds = [BASE] + [STORE] * len(store.layers) + [CUSTOMISATION]
    assert [kind for kind, _, _ in recorder.seen] == kinds
    stored = LAYER_GZIP if compression.enabled else LAYER
    assert [media for _, media, _ in recorder.seen] == [LAYER] + [stored] * (len(kinds) - 1)
    # the reference's lines: a base layer announced once added, the others before
    assert progress.lines[:3] == [
        f"<{BASE} written>",
        f"Adding base layer 1 from {base.layers[0].name}",
        f"Creating layer 2 from paths: {store.layers[0]!r}",
    ]
    assert progress.lines[-3:] == [
        f"Creating layer {len(kinds)} with customisation...",
        f"<{CUSTOMISATION} written>",
        "Adding manifests...",
    ]
    # the progress display: told each layer as it starts, every size known once written
    assert progress.numbers == list(range(1, len(kinds) + 1))
    assert [layer.known_size() for layer in progress.planned] == [n for _, _, n in recorder.seen]
    assert len(image.timelines) == len(store.layers)
    assert all(t.hash_end <= t.stream_start <= t.stream_end for t in image.timelines)
    config = json.loads(image.config_json(records))
    assert config["rootfs"]["diff_ids"] == [str(r.diff_id) for r in records]
    assert config["config"]["Env"][0] == "A=1"  # the base's Env comes first
