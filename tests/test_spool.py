"""The spool: a hash pass keeps what it framed, the stream pass copies it.

What must hold: the spooled layer is, byte for byte, the layer ``layer_chunks`` frames;
the stream pass checks every entry against the hash pass's witness before the bytes that
frame it go out; over budget or on a failed write the layer is framed again, never a
failure; spool files never outlive the run or show in the directory.
(The golden tests run every fixture both spooled and with --spool-max 0.)
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import multiprocessing
import os
import socket
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from streamimage.engine import framing
from streamimage.engine.framing import FileSpan, SpoolRange, layer_chunks, read_span
from streamimage.engine.hashing import LayerHash, Spooled, hash_layer, hash_layer_head
from streamimage.engine.listing import count_below, place_of
from streamimage.engine.scheduler import SPLIT_MIN_ENTRIES, STREAM_RATE
from streamimage.engine.spool import (
    PIECE,
    Segment,
    SpoolBudget,
    SpoolFile,
    sent_chunks,
    spool_part,
)
from streamimage.engine.walk import LayerPart
from streamimage.errors import ChangedError, OutputError
from streamimage.options import UNCOMPRESSED, Options
from streamimage.tarheader import HeaderEncoder
from tests import storegen
from tests.failures import (
    STOP_BOUND,
    FailingSink,
    Store,
    add_entries,
    assert_run_failed,
    build_docker_archive,
    chunk_bytes,
    make_store,
    run,
)

ENCODER = HeaderEncoder(uid=0, gid=0, uname="root", gname="root", mtime=1)
SMALL_FILES = 300  # of 4 KiB: the layer frames more than one PIECE
BIG_FILE = 3 * framing.INLINE_MAX  # a FileSpan, sent from the store, never spooled


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Store:
    """The basic fixture plus a layer of many small files around one large one."""
    built = make_store(tmp_path)
    path = storegen.store_path("many-small")
    root = built.root / path
    (root / "lib").mkdir(parents=True)
    for i in range(SMALL_FILES):
        (root / "lib" / f"f{i:04}").write_bytes(storegen.content(f"small{i}", 4096))
    (root / "lib" / "f0150-big").write_bytes(storegen.content("big", BIG_FILE))
    (root / "lib" / "link").symlink_to("f0001")
    (root / "share").mkdir()
    built.conf["store_layers"].append([path])
    built.write_conf()
    monkeypatch.chdir(built.root)
    return built


def big_layer(store: Store) -> list[str]:
    return store.layers[-1]


def framed(paths: list[str]) -> bytes:
    """The layer tar as layer_chunks frames it, large files read in."""
    return chunk_bytes(layer_chunks(paths, ENCODER, lambda entry: None))


def unspool(fd: int, segments: tuple[Segment, ...]) -> bytes:
    out = bytearray()
    for segment in segments:
        if segment.span is not None:
            read_span(segment.span, out.extend)
        else:
            out += os.pread(fd, segment.size, segment.offset)
    return bytes(out)


def target(fd: int, total: int = 1 << 30) -> SpoolFile:
    """A spool file of its own budget of ``total`` bytes."""
    return SpoolFile(fd, SpoolBudget("/nonexistent", total, 1), 0)


def hashed(paths: list[str], spool: SpoolFile | None = None) -> LayerHash:
    """The uncompressed hash pass of ``paths``, in this process."""
    return hash_layer(paths, ENCODER, UNCOMPRESSED, spool)


def spool_of(result: LayerHash) -> Spooled:
    assert result.spooled is not None
    return result.spooled


@pytest.fixture
def spool_fd(tmp_path: Path) -> Iterator[int]:
    fd = os.open(tmp_path, os.O_TMPFILE | os.O_RDWR)
    yield fd
    os.close(fd)


def test_the_spooled_layer_is_the_framed_layer(store: Store, spool_fd: int) -> None:
    paths = big_layer(store)
    result = hashed(paths, target(spool_fd))
    spooled = spool_of(result)
    whole = framed(paths)
    assert unspool(spool_fd, spooled.segments) == whole
    assert result.size == len(whole)
    # only headers and small files are spooled: the large file stays in the store
    assert spooled.size == len(whole) - BIG_FILE == os.fstat(spool_fd).st_size
    assert not spooled.compressed
    assert [s.span.size for s in spooled.segments if s.span is not None] == [BIG_FILE]
    counts = [s.entries for s in spooled.segments]
    assert counts == sorted(counts)
    assert counts[-1] == len(result.witness)
    largest = max(s.size for s in spooled.segments if s.span is None)
    assert largest < PIECE + 2 * framing.CHUNK_TARGET


def test_over_its_limit_a_pass_gives_up_spooling(store: Store, spool_fd: int) -> None:
    paths = big_layer(store)
    result = hashed(paths, target(spool_fd, PIECE))
    plain = hashed(paths)
    assert result.spooled is None
    assert os.fstat(spool_fd).st_size == 0  # the space is given back at once
    assert (result.diff_id, result.size) == (plain.diff_id, plain.size)


def test_a_failed_spool_write_gives_up_spooling(store: Store) -> None:
    paths = big_layer(store)
    full = os.open("/dev/full", os.O_WRONLY)  # every write fails
    try:
        result = hashed(paths, target(full))
    finally:
        os.close(full)
    assert result.spooled is None
    assert result.diff_id == hashed(paths).diff_id


def spooled(store: Store, fd: int) -> tuple[list[str], LayerHash, tuple[Segment, ...]]:
    paths = big_layer(store)
    result = hashed(paths, target(fd))
    return paths, result, spool_of(result).segments


def sent(fds: list[int], segments: tuple[Segment, ...]) -> bytes:
    """What the stream pass of a spooled layer sends, large files read in."""
    return chunk_bytes(chunk for chunk, _ in sent_chunks(fds, segments, "layer 1"))


def test_a_spooled_layer_is_sent_from_its_spool(store: Store, spool_fd: int) -> None:
    paths, result, segments = spooled(store, spool_fd)
    pieces = list(sent_chunks([spool_fd], segments, "layer 1"))
    assert [type(chunk) for chunk, _ in pieces].count(FileSpan) == 1  # the large file
    assert all(isinstance(chunk, (SpoolRange, FileSpan)) for chunk, _ in pieces)  # no bytes
    assert [entries for _, entries in pieces] == [s.entries for s in segments]
    data = sent([spool_fd], segments)
    assert data == framed(paths)
    assert f"sha256:{hashlib.sha256(data).hexdigest()}" == str(result.diff_id)


@pytest.mark.parametrize("change", ["content", "removed", "added"])
def test_a_store_changed_after_the_hash_pass_streams_what_was_hashed(
    store: Store, spool_fd: int, change: str
) -> None:
    # The spool holds the bytes that were hashed: the layer streamed is the store as its
    # hash pass saw it, never bytes that disagree with its digests (the reference's fault).
    paths, result, segments = spooled(store, spool_fd)
    before = framed(paths)
    lib = Path(paths[0]) / "lib"
    if change == "content":
        (lib / "f0200").write_bytes(b"x" * 4096)  # same size: ctime and mtime move
    elif change == "removed":
        (lib / "f0200").unlink()
    else:
        (Path(paths[0]) / "zz-new").write_bytes(b"new")
    assert framed(paths) != before
    data = sent([spool_fd], segments)
    assert data == before
    assert f"sha256:{hashlib.sha256(data).hexdigest()}" == str(result.diff_id)


def test_a_large_file_changed_after_the_hash_pass_fails_the_stream_pass(
    store: Store, spool_fd: int
) -> None:
    # Large files are sent from the store, each held to the identity it was hashed with.
    _, _, segments = spooled(store, spool_fd)
    (span,) = (s.span for s in segments if s.span is not None)
    big = Path(span.path)
    big.write_bytes(big.read_bytes()[::-1])  # the same size, other bytes
    with pytest.raises(ChangedError, match=f"{big.name}: changed"):
        sent([spool_fd], segments)


def test_the_budget_counts_every_pass_and_comes_back(tmp_path: Path) -> None:
    budget = SpoolBudget(str(tmp_path), 4 * PIECE, counters=3)
    first = budget.open(0)
    assert first is not None
    assert budget.take(0, 3 * PIECE)
    second = budget.open(1)  # one PIECE left: enough to start
    assert second is not None
    assert not budget.take(1, 2 * PIECE)  # over the total with the first pass's
    assert budget.take(1, PIECE)
    assert budget.used() == 4 * PIECE
    assert budget.open(2) is None  # nothing left
    budget.count(0, 0)  # the first layer was streamed
    assert budget.take(1, 3 * PIECE)
    third = budget.open(2)
    assert third is not None
    for opened in (first, second, third):
        os.close(opened.fd)
    assert list(tmp_path.iterdir()) == []  # unlinked from the start


def test_no_spool_where_a_file_cant_be_made(tmp_path: Path) -> None:
    assert SpoolBudget(str(tmp_path / "missing"), 4 * PIECE, 1).open(0) is None


def spool_fds(directory: Path) -> list[str]:
    links = []
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            links.append(os.readlink(f"/proc/self/fd/{fd}"))
    return [link for link in links if link.startswith(str(directory))]


async def build(store: Store, sink: FailingSink, spool_dir: Path) -> None:
    options = Options(hash_workers=2, hash_in_processes=False, spool_dir=str(spool_dir))
    await build_docker_archive(store.conf, sink, options)


@pytest.mark.parametrize("limit", [1 << 30, 40000], ids=["success", "reader-gone"])
async def test_spool_files_are_closed_when_the_run_ends(
    store: Store, tmp_path: Path, limit: int
) -> None:
    spool_dir = tmp_path / "spool"
    spool_dir.mkdir()
    sink = FailingSink(limit)
    if limit > 1 << 20:
        await build(store, sink, spool_dir)
        with tarfile.open(fileobj=io.BytesIO(sink.data)) as image:
            assert image.getnames()[-1] == "manifest.json"
    else:
        with pytest.RaisesGroup(OutputError, flatten_subgroups=True):
            await build(store, sink, spool_dir)
    assert spool_fds(spool_dir) == []
    assert list(spool_dir.iterdir()) == []


def layer_sources(stderr: bytes) -> list[str]:
    lines = stderr.decode().splitlines()
    return [line.rsplit("(", 1)[1].rstrip(")") for line in lines if line.startswith("  layer")]


def test_a_small_budget_spools_the_small_layers_only(store: Store, tmp_path: Path) -> None:
    default = run(store, "-v")
    assert default.returncode == 0, default.stderr
    assert all(source.startswith("spool") for source in layer_sources(default.stderr))
    small = run(store, "-v", "--spool-max", "1M", "--spool-dir", str(tmp_path))
    assert small.returncode == 0, small.stderr
    assert small.stdout == default.stdout
    sources = layer_sources(small.stderr)
    assert sources[-1] == "framed again"
    assert sources[0].startswith("spool")
    none = run(store, "-v", "--spool-max", "0")
    assert none.stdout == default.stdout
    assert set(layer_sources(none.stderr)) == {"framed again"}


@pytest.mark.parametrize(
    ("args", "culprit"),
    [
        (("--spool-max", "lots"), "--spool-max 'lots': expected a size"),
        (("--spool-max", "2Q"), "--spool-max '2Q': expected a size"),
        (("--spool-dir", "no/such/dir"), "--spool-dir no/such/dir: not a directory"),
    ],
)
def test_bad_spool_options_are_usage_errors(
    store: Store, args: tuple[str, ...], culprit: str
) -> None:
    assert_run_failed(run(store, *args), 2, culprit)


# --- a layer of several store paths: hashed by two processes ---------------------------


@pytest.fixture
def two_path_layer(store: Store) -> list[str]:
    """The store's last layer with a second store path after the many small files, with
    entries enough for a split pass, which cuts the walk inside the second store path."""
    second = storegen.store_path("second-half")
    (store.root / second / "bin").mkdir(parents=True)
    (store.root / second / "bin" / "tool").write_bytes(storegen.content("tool", 5000))
    (store.root / second / "bin" / "big").write_bytes(storegen.content("big2", BIG_FILE))
    add_entries(store.root / second / "share", SPLIT_MIN_ENTRIES)
    store.conf["store_layers"][-1].append(second)
    store.write_conf()
    return store.layers[-1]


@pytest.fixture
def one_path_layer(store: Store) -> list[str]:
    """A layer of one store path with entries enough for a split pass (auto-layering
    gives the largest store path a layer of its own: a Python or Node environment)."""
    path = storegen.store_path("python-env")
    (store.root / path / "bin").mkdir(parents=True)
    (store.root / path / "bin" / "python").write_bytes(storegen.content("py", BIG_FILE))
    add_entries(store.root / path / "lib", SPLIT_MIN_ENTRIES)
    store.conf["store_layers"].insert(0, [path])
    store.write_conf()
    return store.layers[0]


def header_ends(paths: list[str]) -> list[int]:
    """Where each member's header (PAX records included) ends in the layer of ``paths``."""
    with tarfile.open(fileobj=io.BytesIO(framed(paths))) as layer_tar:
        return [m.offset_data for m in layer_tar.getmembers()]


HELPER_BUDGETS = {
    "helper-spooled": 1 << 30,
    "helper-gave-up-at-once": 0,
    "helper-gave-up-midway": PIECE + PIECE // 8,  # its first piece fits, its second not
}


def cut_of(paths: list[str], where: str) -> tuple[LayerPart, LayerPart]:
    """The walk of ``paths`` cut between its store paths, or inside the second one, a few
    entries deep (the helper frames the rest: more than one spool piece)."""
    if where == "between-store-paths":
        return LayerPart.halves(paths, 1, ())
    place = place_of(paths[1], 3, count_below(paths[1]))
    assert len(place) > 1  # inside a directory of the store path
    return LayerPart.halves(paths, 1, place)


@pytest.mark.parametrize("where", ["between-store-paths", "inside-a-store-path"])
@pytest.mark.parametrize("helper_budget", list(HELPER_BUDGETS))
def test_a_split_pass_is_the_whole_pass(
    two_path_layer: list[str], tmp_path: Path, helper_budget: str, where: str
) -> None:
    # the helper frames the many small files: more than one piece
    paths = [two_path_layer[1], two_path_layer[0]]
    head, rest = cut_of(paths, where)
    whole = hashed(paths)
    head_fd = os.open(tmp_path, os.O_TMPFILE | os.O_RDWR)
    helper_fd = os.open(tmp_path, os.O_TMPFILE | os.O_RDWR)
    receive, send = multiprocessing.Pipe(duplex=False)
    try:
        budget = target(helper_fd, HELPER_BUDGETS[helper_budget])
        part = spool_part(rest, ENCODER, budget, send)  # its records wait in the pipe
        assert (part is not None) == (helper_budget == "helper-spooled")
        result = hash_layer_head(head, rest, ENCODER, target(head_fd), helper_fd, receive)
        assert not receive.poll()  # every record was read
        assert (result.diff_id, result.size) == (whole.diff_id, whole.size)
        segments = spool_of(result).segments
        files = {s.file for s in segments}
        assert files == ({0, 1} if part is not None else {0})
        if part is not None:
            result.witness.extend(part.witness)
        assert len(result.witness) == len(whole.witness)
        counts = [s.entries for s in segments]
        assert counts == sorted(counts)
        assert counts[-1] == len(whole.witness)
        # a segment counts every entry whose header ends in it or before it: the stream
        # pass checks an entry before the bytes that frame it go out
        position = 0
        ends = header_ends(paths)
        for segment in segments:
            position += segment.size
            framed_here = sum(1 for end in ends if end <= position)
            assert framed_here <= segment.entries + 2  # /nix/ and /nix/store/: no entries
        assert sent([head_fd, helper_fd], segments) == framed(paths)
    finally:
        os.close(head_fd)
        os.close(helper_fd)
        receive.close()
        send.close()


@pytest.mark.parametrize("layer", ["several-store-paths", "one-store-path"])
def test_a_large_layer_is_hashed_in_two_processes(
    store: Store, request: pytest.FixtureRequest, layer: str
) -> None:
    fixture = "two_path_layer" if layer == "several-store-paths" else "one_path_layer"
    paths = request.getfixturevalue(fixture)
    split = run(store, "-v")
    assert split.returncode == 0, split.stderr
    sources = layer_sources(split.stderr)
    large = [layer_paths == paths for layer_paths in store.layers]
    assert [source.endswith("hashed in 2 processes") for source in sources] == large
    for args in (("--spool-max", "0"), ("--hash-in", "thread"), ("-j", "1")):
        one = run(store, "-v", *args)
        assert one.stdout == split.stdout, args
        assert not any(source.endswith("processes") for source in layer_sources(one.stderr))


@pytest.mark.parametrize("before", ["nothing-big", "a-big-file"])
def test_a_large_layer_the_stream_reaches_late_is_hashed_by_one_process(
    store: Store, two_path_layer: list[str], before: str
) -> None:
    # nixpkgs puts its largest layer near the end: while the stream gets through the
    # layers before it, a lone pass has time, and a split would only take the second
    # core from the passes the stream needs first
    if before == "a-big-file":
        with (store.root / store.layers[0][0] / "big.bin").open("wb") as file:
            file.truncate(int(STREAM_RATE))  # a second of streaming (sparse: cheap here)
        store.write_conf()
    result = run(store, "-v")
    assert result.returncode == 0, result.stderr
    split = layer_sources(result.stderr)[store.layers.index(two_path_layer)]
    assert split.endswith("hashed in 2 processes") == (before == "nothing-big")


@pytest.mark.parametrize("half", [0, 1], ids=["head", "helper"])
def test_a_failure_in_either_half_ends_the_run(
    store: Store, two_path_layer: list[str], half: int
) -> None:
    path = f"{two_path_layer[half]}/zz.sock"
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(path)
        assert_run_failed(run(store, timeout=STOP_BOUND), 1, path, "is a socket")
