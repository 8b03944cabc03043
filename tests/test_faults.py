"""Faults while running: files that change under us, readers that go away or never read,
a full disk, signals, and in-process fault injection into the pipeline.

Rule: every run ends promptly, non-zero, with one error line naming the culprit, and never
with exit 0 and a diff_id that doesn't match its layer.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import resource
import signal
import subprocess
import tarfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import anyio.to_thread
import pytest

from streamimage import cli
from streamimage.engine import framing, pipeline, walk
from streamimage.engine.framing import FileSpan
from streamimage.engine.hashing import LayerHash
from streamimage.engine.pipeline import FdSink, Sink
from streamimage.engine.scheduler import SPLIT_MIN_ENTRIES, HashPass
from streamimage.engine.walk import Entry, walk_store_path
from streamimage.errors import ChangedError, OutputError, StoreError
from streamimage.options import Options
from tests import storegen
from tests.failures import (
    STOP_BOUND,
    FailingSink,
    Store,
    add_entries,
    assert_failed,
    assert_run_failed,
    build_docker_archive,
    make_store,
    run,
    tool_env,
)
from tests.images import tar_members, uncompressed

BLOCK = 512  # tar block
SMALL_FILE = 60 * 1024  # bytes: below framing.INLINE_MAX, so read inline by the producer
FILLER_FILES = 200  # 12 MB of small files: far more than the pipeline buffers ahead
HASH_IN = ["process", "thread"]  # forked workers (the default), and threads of the tool


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return make_store(tmp_path)


def add_layer(store: Store, name: str) -> str:
    path = storegen.store_path(name)
    (store.root / path).mkdir()
    store.conf["store_layers"].append([path])
    return path


def popen(store: Store, *args: str, stdout: int = subprocess.PIPE) -> subprocess.Popen[bytes]:
    """The tool in a session of its own, so that its process group lists its workers."""
    return subprocess.Popen(
        [*storegen.tool_cmd(), storegen.CONF_NAME, *args],
        cwd=store.root,
        env=tool_env(),
        stdout=stdout,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )


def group_members(pgid: int) -> list[int]:
    """Processes still in process group ``pgid`` (from /proc, no psutil)."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            stat = Path(f"/proc/{name}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[2]) == pgid:  # state, ppid, pgrp
            found.append(int(name))
    return found


def read_exactly(stream: io.BufferedReader, size: int) -> bytes:
    data = stream.read(size)
    assert len(data) == size, "the image ended early"
    return data


def read_member_header(stream: io.BufferedReader) -> tuple[str, int, bytes]:
    """Name and size of the next outer member (plain ustar: layer names are short), and
    the header block read."""
    header = read_exactly(stream, BLOCK)
    name = header[:100].rstrip(b"\0").decode()
    return name, int(header[124:136].rstrip(b"\0 ") or b"0", 8), header


def finish(proc: subprocess.Popen[bytes], stdout: bytes) -> tuple[int, bytes, bytes]:
    assert proc.stdout is not None
    assert proc.stderr is not None
    rest = proc.stdout.read()
    status = proc.wait(STOP_BOUND)
    return status, stdout + rest, proc.stderr.read()


# --- a file changes between the hash pass and the stream pass ------------------------


@pytest.mark.parametrize("restore_mtime", [False, True], ids=["new-mtime", "mtime-restored"])
@pytest.mark.parametrize("spool", ["spooled", "framed-again"])
def test_file_changed_between_passes_never_disagrees_with_its_digest(
    store: Store, restore_mtime: bool, spool: str
) -> None:
    # Layer 2 is FILLER_FILES small files, then the victim: its outer header on stdout
    # proves its hash pass is done, and the bounded pipeline can't have read the victim
    # yet while this reader holds back. The reference writes a wrong diff_id and exits 0.
    # A layer framed again from the store fails naming the file; a spooled one sends the
    # bytes its pass hashed (the victim as it was): an image true to its digests.
    late = add_layer(store, "late-layer")
    for i in range(FILLER_FILES):
        (store.root / late / f"filler-{i:03}").write_bytes(os.urandom(SMALL_FILE))
    victim = store.root / late / "zz-victim"
    victim.write_bytes(b"a" * 1000)
    store.write_conf()
    args = ["--spool-max", "0"] if spool == "framed-again" else []
    with popen(store, *args) as proc:
        status, stdout, stderr = check_late_change(store, proc, victim, restore_mtime)
    if spool == "framed-again":
        assert_failed(status, stdout, stderr, 1, f"{victim.parent.name}/zz-victim", "changed")
        return
    assert status == 0, stderr
    layers = layers_as_configured(stdout)
    assert len(layers) == len(store.layers) + 1  # and the customisation layer
    late_layer = layers[len(store.layers) - 1]
    assert member_content(late_layer, f"/{late}/zz-victim") == b"a" * 1000  # as hashed


def member_content(layer: bytes, name: str) -> bytes:
    with tarfile.open(fileobj=io.BytesIO(layer), mode="r:") as tar:
        source = tar.extractfile(name)
        assert source is not None, name
        return source.read()


def layers_as_configured(archive: bytes) -> list[bytes]:
    """A docker-archive's layers (uncompressed), each checked to be the one its config's
    rootfs.diff_ids names."""
    members = tar_members(archive)
    (manifest,) = json.loads(members["manifest.json"])
    diff_ids = json.loads(members[manifest["Config"]])["rootfs"]["diff_ids"]
    layers = [uncompressed(members[name]) for name in manifest["Layers"]]
    assert [f"sha256:{hashlib.sha256(layer).hexdigest()}" for layer in layers] == diff_ids
    return layers


def check_late_change(
    store: Store, proc: subprocess.Popen[bytes], victim: Path, restore_mtime: bool
) -> tuple[int, bytes, bytes]:
    assert proc.stdout is not None
    seen = b""  # every byte read so far: with the rest, the whole output
    for _ in range(len(store.layers) - 1):
        name, size, header = read_member_header(proc.stdout)  # type: ignore[arg-type]
        assert name.endswith("/layer.tar")
        seen += header + read_exactly(proc.stdout, size + -size % BLOCK)  # type: ignore[arg-type]
    name, _, header = read_member_header(proc.stdout)  # type: ignore[arg-type]
    assert name.endswith("/layer.tar")  # the late layer: hashed, and streaming
    seen += header
    before = victim.stat()
    victim.write_bytes(b"b" * 1000)  # same size, new content
    if restore_mtime:
        os.utime(victim, ns=(before.st_atime_ns, before.st_mtime_ns))  # ctime still moves
    return finish(proc, seen)


@pytest.mark.parametrize("hash_in", HASH_IN)
@pytest.mark.parametrize(
    "args",
    [(), ("--spool-max", "0"), ("--compress", "gzip")],
    ids=["spooled", "framed-again", "gzip-spooled"],
)
def test_file_changed_between_passes_in_process(
    store: Store,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    args: tuple[str, ...],
    hash_in: str,
) -> None:
    victim = store.root / store.layers[1][0] / "bin" / "hello"
    hashed_bytes = victim.read_bytes()
    original = HashPass.result

    async def result_then_change(self: HashPass, index: int) -> LayerHash:
        hashed = await original(self, index)
        if index == 1:  # hashed, not yet streamed
            mode = victim.stat().st_mode
            victim.write_bytes(victim.read_bytes().upper())
            victim.chmod(mode)
        return hashed

    monkeypatch.setattr(HashPass, "result", result_then_change)
    output = tmp_path / "image.tar"
    status, stderr = main_in_process(store, monkeypatch, output, "--hash-in", hash_in, *args)
    if "--spool-max" in args:  # framed again from the store: the change is found
        assert_failed(status, b"", stderr, 1, "bin/hello", "changed between the hash pass")
        assert not (tmp_path / "image.tar").exists()
        return
    # sent from its spool: the bytes hashed, the file as it was (compressed, if it was)
    assert status == 0, stderr
    layer = layers_as_configured(output.read_bytes())[1]
    assert victim.read_bytes() != hashed_bytes
    assert member_content(layer, f"/{store.layers[1][0]}/bin/hello") == hashed_bytes


def main_in_process(
    store: Store, monkeypatch: pytest.MonkeyPatch, output: Path, *args: str
) -> tuple[int, str]:
    """cli.main in this process: its hash passes (forked workers, as by default, or
    threads with ``--hash-in thread``) see the monkeypatches."""
    store.write_conf()
    monkeypatch.chdir(store.root)
    errors = io.StringIO()
    monkeypatch.setattr("sys.stderr", errors)
    argv = [storegen.CONF_NAME, "-o", str(output), *args]
    return cli.main(argv), errors.getvalue()


def make_big_file(store: Store, size: int) -> Path:
    big = store.root / store.layers[0][0] / "lib" / "big.bin"
    with big.open("wb") as file:
        file.truncate(size)
    return big


@pytest.mark.parametrize("hash_in", HASH_IN)
def test_file_changed_while_hashed_fails(
    store: Store, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, hash_in: str
) -> None:
    big = make_big_file(store, 3 * framing.READ_SIZE)
    original = framing.read_pieces

    def read_then_change(
        span: FileSpan, checkpoint: Callable[[], None] = framing.no_checkpoint
    ) -> Iterator[memoryview]:
        for count, piece in enumerate(original(span, checkpoint)):
            yield piece
            if count == 0 and span.path.endswith("big.bin"):  # one READ_SIZE hashed
                with big.open("r+b") as file:
                    file.write(b"changed")

    monkeypatch.setattr(framing, "read_pieces", read_then_change)
    output = tmp_path / "image.tar"
    status, stderr = main_in_process(store, monkeypatch, output, "--hash-in", hash_in)
    assert_failed(status, b"", stderr, 1, "lib/big.bin", "changed while being archived")


@pytest.mark.parametrize("hash_in", HASH_IN)
def test_file_changed_while_sent_fails(
    store: Store, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, hash_in: str
) -> None:
    big = make_big_file(store, pipeline.SEND_SIZE + 1)
    original = FdSink._send_some

    def send_then_change(self: FdSink, fd: int, offset: int, count: int) -> int:
        sent = original(self, fd, offset, count)
        if offset == 0 and count == pipeline.SEND_SIZE:
            with big.open("r+b") as file:
                file.write(b"changed")
        return sent

    monkeypatch.setattr(FdSink, "_send_some", send_then_change)
    output = tmp_path / "image.tar"
    status, stderr = main_in_process(store, monkeypatch, output, "--hash-in", hash_in)
    assert_failed(status, b"", stderr, 1, "lib/big.bin", "changed while being archived")


# --- the reader: gone early, never reading, a full disk ------------------------------


@pytest.fixture
def big_store(store: Store) -> Store:
    """Layer 1 holds 20 MB of random data, layer 2 a 1 GB sparse file, layer 3 two store
    paths of 512 MB sparse files and entries enough to be hashed by two worker processes:
    hashes still run (in worker processes) when a reader leaves after the first bytes."""
    lib = store.root / store.layers[0][0] / "lib"
    (lib / "random.bin").write_bytes(os.urandom(20 * 1024 * 1024))
    with (store.root / store.layers[1][0] / "huge.bin").open("wb") as file:
        file.truncate(1024 * 1024 * 1024)
    add_layer(store, "split-head")
    store.layers[-1].append(storegen.store_path("split-help"))
    for path in store.layers[-1]:
        (store.root / path).mkdir(exist_ok=True)
        with (store.root / path / "half.bin").open("wb") as file:
            file.truncate(512 * 1024 * 1024)
    add_entries(store.root / store.layers[-1][0] / "lib", SPLIT_MIN_ENTRIES)
    store.write_conf()
    return store


def test_reader_gone_early_exits_promptly(big_store: Store) -> None:
    with popen(big_store) as proc:
        assert proc.stdout is not None
        assert proc.stderr is not None
        head = proc.stdout.read(100)  # `| head -c 100`
        proc.stdout.close()
        gone = time.monotonic()
        status = proc.wait(STOP_BOUND)
        took = time.monotonic() - gone
        assert group_members(proc.pid) == [], "a hash worker or the tool outlived the run"
        assert_failed(status, head, proc.stderr.read(), 1, "stdout", "reader went away")
    print(f"exited {took:.3f} s after the reader left")  # noqa: T201 (shown with -s)


@pytest.fixture
def big_first_layer_store(store: Store) -> Store:
    """Layer 1 holds a 2 GiB sparse file: its hash pass, before the first byte out, takes
    seconds."""
    with (store.root / store.layers[0][0] / "first.bin").open("wb") as file:
        file.truncate(2 * 1024**3)
    store.write_conf()
    return store


def children_cpu() -> float:
    """CPU seconds of the children waited for so far, and of their children they waited for
    (the tool reaps its hash workers)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def first_byte_after(store: Store, *args: str) -> tuple[float, float]:
    """Seconds from starting the tool to the first byte of its image (then it is stopped
    by closing the pipe), and the CPU seconds the run took."""
    cpu = children_cpu()
    started = time.monotonic()
    with popen(store, *args) as proc:
        assert proc.stdout is not None
        assert proc.stdout.read(1), "no image"
        took = time.monotonic() - started
        proc.stdout.close()
        proc.wait(STOP_BOUND)
    return took, children_cpu() - cpu


@pytest.mark.parametrize("hash_in", HASH_IN)
def test_reader_gone_before_the_first_byte_exits_promptly(
    big_first_layer_store: Store, hash_in: str
) -> None:
    # Compared with a normal run of the same store, not with a bound in seconds: until its
    # first byte, a run hashes layer 1 (all of it); a run whose reader is gone must stop
    # hashing at once. The CPU time says so even when other work slows the machine down.
    # The run whose reader is gone goes first: reading the new sparse file first costs
    # the most (the page cache fills), so the cache can only make it look slower.
    store = big_first_layer_store
    read_end, write_end = os.pipe()
    os.close(read_end)  # `| true`: the reader is gone before the tool starts
    cpu = children_cpu()
    try:
        started = time.monotonic()
        proc = popen(store, "--hash-in", hash_in, stdout=write_end)
    finally:
        os.close(write_end)
    with proc:
        assert proc.stderr is not None
        status = proc.wait(STOP_BOUND * 6)
        took, took_cpu = time.monotonic() - started, children_cpu() - cpu
        assert group_members(proc.pid) == [], "a hash worker or the tool outlived the run"
        assert_failed(status, b"", proc.stderr.read(), 1, "stdout", "reader went away")
    first_byte, first_byte_cpu = first_byte_after(store, "--hash-in", hash_in)
    said = f"exited after {took:.2f} s, {took_cpu:.2f} s of CPU; a normal run's first byte: "
    said += f"{first_byte:.2f} s, {first_byte_cpu:.2f} s of CPU"
    assert took_cpu < first_byte_cpu / 2, said
    assert took < first_byte / 2, said
    print(said)  # noqa: T201


@pytest.mark.parametrize("hash_in", HASH_IN)
def test_non_blocking_stdout_read_slowly_gets_the_whole_image(store: Store, hash_in: str) -> None:
    # O_NONBLOCK on stdout's open file, as some CI runners and Node parents leave it: a
    # write into a full pipe fails with EAGAIN (after 1 MiB, the pipe's size) unless the
    # tool waits for room. Large files (sendfile) and small ones (write) alike.
    lib = store.root / store.layers[0][0] / "lib"
    (lib / "large.bin").write_bytes(os.urandom(3 * 1024 * 1024))
    for index in range(FILLER_FILES):
        (lib / f"small-{index}.bin").write_bytes(os.urandom(8 * 1024))
    store.write_conf()
    normal = run(store, "--hash-in", hash_in)
    assert normal.returncode == 0, normal.stderr.decode()
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)
    try:
        proc = popen(store, "--hash-in", hash_in, stdout=write_end)
    finally:
        os.close(write_end)
    received = bytearray()
    with proc, open(read_end, "rb", buffering=0) as reader:
        assert proc.stderr is not None
        while data := reader.read(4096):  # small reads, a pause each: the pipe stays full
            received += data
            time.sleep(0.0005)
        status = proc.wait(STOP_BOUND)
        stderr = proc.stderr.read().decode()
    assert status == 0, stderr
    assert len(received) > 4 * 1024 * 1024  # far more than the pipe holds
    assert bytes(received) == normal.stdout


def test_full_disk_is_one_line_enospc(store: Store) -> None:
    store.write_conf()
    with open("/dev/full", "wb") as full:
        result = run(store, stdout=full.fileno())
    assert_run_failed(result, 1, "stdout", "no space left on device")


def wait_until_blocked_on_pipe(proc: subprocess.Popen[bytes]) -> None:
    """Until a thread of the tool sleeps in the kernel waiting for room in a pipe (its
    stdout: the only pipe it writes), read from /proc."""
    deadline = time.monotonic() + STOP_BOUND
    while True:
        assert proc.poll() is None, "the tool ended before filling the pipe"
        waits = []
        for task in os.listdir(f"/proc/{proc.pid}/task"):
            try:
                waits.append(Path(f"/proc/{proc.pid}/task/{task}/wchan").read_text())
            except OSError:
                continue
        if any(wait.startswith("pipe_") for wait in waits):  # pipe_wait_writable, pipe_write
            return
        assert time.monotonic() < deadline, f"the tool never blocked on its pipe: {waits}"
        time.sleep(0.01)  # polling the kernel's view, not waiting for a guess


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
@pytest.mark.parametrize("hash_in", ["process", "thread"])
def test_signal_stops_a_run_blocked_on_its_reader(
    big_store: Store, signum: signal.Signals, hash_in: str
) -> None:
    with popen(big_store, "--hash-in", hash_in) as proc:
        assert proc.stderr is not None
        wait_until_blocked_on_pipe(proc)
        sent = time.monotonic()
        proc.send_signal(signum)
        try:
            status = proc.wait(STOP_BOUND)
        finally:
            proc.kill()
        took = time.monotonic() - sent
        assert group_members(proc.pid) == []
        assert_failed(status, b"", proc.stderr.read(), 128 + signum, signum.name)
    print(f"{signum.name}: exited {took:.3f} s after the signal")  # noqa: T201


OTHER_STOP_SIGNALS = [signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2, signal.SIGALRM]


@pytest.mark.parametrize("signum", OTHER_STOP_SIGNALS, ids=lambda s: s.name)
def test_every_stopping_signal_cleans_up_as_int_and_term_do(
    big_store: Store, tmp_path: Path, signum: signal.Signals
) -> None:
    # Mid-run, writing -o FILE: one line, 128+N, no worker left, no .part and no file.
    out = tmp_path / "out" / "image.tar"
    out.parent.mkdir()
    with popen(big_store, "-o", str(out), stdout=subprocess.DEVNULL) as proc:
        assert proc.stderr is not None
        deadline = time.monotonic() + STOP_BOUND
        while not (list(out.parent.iterdir()) and len(group_members(proc.pid)) > 1):
            assert proc.poll() is None, "the run ended before it could be stopped"
            assert time.monotonic() < deadline, "no .part file and worker seen"
            time.sleep(0.01)
        proc.send_signal(signum)
        try:
            status = proc.wait(STOP_BOUND)
        finally:
            proc.kill()
        assert group_members(proc.pid) == [], "a hash worker outlived the run"
        assert_failed(status, b"", proc.stderr.read(), 128 + signum, signum.name)
    assert list(out.parent.iterdir()) == []


# --- in-process fault injection into the pipeline ------------------------------------


async def build(store: Store, sink: Sink, processes: bool = False, spool_max: int = -1) -> None:
    options = Options(hash_workers=2, hash_in_processes=processes)
    if spool_max >= 0:
        options = dataclasses.replace(options, spool_max=spool_max)
    await build_docker_archive(store.conf, sink, options)


@pytest.fixture
def in_store(store: Store, monkeypatch: pytest.MonkeyPatch) -> Store:
    monkeypatch.chdir(store.root)
    return store


@pytest.mark.parametrize("processes", [True, False], ids=HASH_IN)
@pytest.mark.parametrize("limit", [0, 700, 10 * BLOCK, 30000])
async def test_sink_failing_after_n_bytes_ends_cleanly(
    in_store: Store, limit: int, processes: bool
) -> None:
    sink = FailingSink(limit)
    with anyio.fail_after(STOP_BOUND), pytest.RaisesGroup(OutputError, flatten_subgroups=True):
        await build(in_store, sink, processes)
    assert sink.written <= limit


@pytest.mark.parametrize("processes", [True, False], ids=HASH_IN)
async def test_walk_raising_mid_layer_ends_cleanly(
    in_store: Store, monkeypatch: pytest.MonkeyPatch, processes: bool
) -> None:
    original = walk_store_path  # what a layer's walk calls, until patched

    def walk_then_fail(store_path: str, **cut: Any) -> Iterator[Entry]:
        for count, entry in enumerate(original(store_path, **cut)):
            if count == 2 and "hello-2.12" in store_path:
                raise StoreError(f"{entry.path}: injected failure")
            yield entry

    monkeypatch.setattr(walk, "walk_store_path", walk_then_fail)
    sink = FailingSink(1 << 30)
    with anyio.fail_after(STOP_BOUND), pytest.RaisesGroup(StoreError, flatten_subgroups=True):
        await build(in_store, sink, processes)
    assert b"manifest.json" not in bytes(sink.data)


async def test_slow_reader_gets_the_whole_image(in_store: Store) -> None:
    whole = FailingSink(1 << 30)
    await build(in_store, whole)
    read_end, write_end = os.pipe()
    received = bytearray()

    def read_slowly() -> None:
        while data := os.read(read_end, 777):  # small reads: the writer waits on each
            received.extend(data)

    try:
        with anyio.fail_after(STOP_BOUND):
            async with anyio.create_task_group() as tg:
                tg.start_soon(anyio.to_thread.run_sync, read_slowly)
                try:
                    await build(in_store, FdSink(write_end, "pipe"))
                finally:
                    os.close(write_end)
    finally:
        os.close(read_end)
    assert bytes(received) == bytes(whole.data)
    with tarfile.open(fileobj=io.BytesIO(received)) as image:
        assert image.getnames()[-1] == "manifest.json"


@pytest.mark.parametrize("processes", [True, False], ids=HASH_IN)
async def test_changed_error_is_raised_not_written(
    in_store: Store, monkeypatch: pytest.MonkeyPatch, processes: bool
) -> None:
    victim = in_store.root / in_store.layers[0][0] / "lib" / "libgreet.so.1"
    original = HashPass.result

    async def result_then_change(self: HashPass, index: int) -> LayerHash:
        hashed = await original(self, index)
        os.utime(victim, ns=(0, 0))
        return hashed

    monkeypatch.setattr(HashPass, "result", result_then_change)
    sink = FailingSink(1 << 30)
    with anyio.fail_after(STOP_BOUND), pytest.RaisesGroup(ChangedError, flatten_subgroups=True):
        await build(in_store, sink, processes, spool_max=0)  # framed again: the walk sees it
    assert b"manifest.json" not in bytes(sink.data)
