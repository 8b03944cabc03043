"""Wherever the reference runs: each Linux-only feature streamimage uses, taken away as it
is elsewhere (macOS, the BSDs), has a fallback, and the image is byte for byte the same.

Oracles: the same store's image from a normal run; the kernel's own answers (a pipe's size,
a directory's entries). In process, a feature is patched away; end to end, the command runs
under a prelude that takes it away before streamimage is imported.
"""

from __future__ import annotations

import errno
import fcntl
import multiprocessing
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import anyio
import pytest

from streamimage.engine import spool, workers
from streamimage.engine.framing import Chunk, FileSpan
from streamimage.engine.pipeline import FdSink, stream_chunks
from streamimage.engine.scheduler import SPLIT_MIN_ENTRIES
from streamimage.engine.walk import FileIdentity
from streamimage.errors import ChildError
from tests import storegen
from tests.failures import STOP_BOUND, Store, add_entries, assert_run_failed, make_store, tool_env

KIB = 1024

# --- in process -------------------------------------------------------------------------


def test_cpu_workers_is_the_process_cpu_count_where_python_has_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(os, "process_cpu_count", lambda: 3, raising=False)
    assert workers.cpu_workers() == 3


def test_cpu_workers_is_the_affinity_mask_on_linux_before_python_3_13(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delattr(os, "process_cpu_count", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 2})
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    assert workers.cpu_workers() == 2


@pytest.mark.parametrize(("cpus", "expected"), [(5, 5), (None, 1)])
def test_cpu_workers_is_the_cpu_count_without_an_affinity_mask(
    monkeypatch: pytest.MonkeyPatch, cpus: int | None, expected: int
) -> None:
    # macOS before Python 3.13: neither process_cpu_count nor sched_getaffinity
    monkeypatch.delattr(os, "process_cpu_count", raising=False)
    monkeypatch.delattr(os, "sched_getaffinity")
    monkeypatch.setattr(os, "cpu_count", lambda: cpus)
    assert workers.cpu_workers() == expected


@pytest.mark.parametrize(
    ("platform", "methods", "forks"),
    [
        ("linux", ["fork", "spawn", "forkserver"], True),
        ("darwin", ["fork", "spawn", "forkserver"], False),  # there, but unsafe
        ("linux", ["spawn", "forkserver"], False),
    ],
)
def test_fork_is_used_only_where_it_is_there_and_safe(
    monkeypatch: pytest.MonkeyPatch, platform: str, methods: list[str], forks: bool
) -> None:
    monkeypatch.setattr(sys, "platform", platform)
    monkeypatch.setattr(multiprocessing, "get_all_start_methods", lambda: methods)
    assert (workers.fork_context() is not None) == forks


async def test_without_fork_run_in_child_says_to_hash_in_threads(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(workers, "FORK", None)
    with pytest.raises(ChildError, match="hash in threads"):
        await workers.run_in_child(len, "abc")


def test_spool_file_without_o_tmpfile_is_named_then_unlinked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delattr(os, "O_TMPFILE")
    opened: list[str] = []
    real_mkstemp = tempfile.mkstemp

    def mkstemp(prefix: str, dir: str) -> tuple[int, str]:
        fd, name = real_mkstemp(prefix=prefix, dir=dir)
        opened.append(name)
        return fd, name

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    fd = spool._unlinked_file(str(tmp_path))
    try:
        assert len(opened) == 1, "the fallback made a named file"
        assert list(tmp_path.iterdir()) == [], "and unlinked it"
        spool.write_all(fd, b"spooled", 0)
        assert os.pread(fd, 100, 0) == b"spooled"
    finally:
        os.close(fd)


def test_spool_file_where_the_file_system_refuses_o_tmpfile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_open = os.open

    def no_tmpfile(path: str, flags: int, mode: int = 0o777) -> int:
        if flags & os.O_TMPFILE == os.O_TMPFILE:
            raise OSError(errno.EOPNOTSUPP, os.strerror(errno.EOPNOTSUPP))
        return real_open(path, flags, mode)

    monkeypatch.setattr(os, "open", no_tmpfile)
    fd = spool._unlinked_file(str(tmp_path))
    try:
        assert list(tmp_path.iterdir()) == []
        spool.write_all(fd, b"x" * 5000, 0)
        assert os.fstat(fd).st_size == 5000
    finally:
        os.close(fd)


def file_chunks(tmp_path: Path) -> tuple[list[Chunk], bytes]:
    data = os.urandom(300 * KIB)
    big = tmp_path / "big"
    big.write_bytes(data)
    st = big.stat()
    span = FileSpan(str(big), st.st_size, FileIdentity.of(st))
    return [b"head", span, b"tail"], b"head" + data + b"tail"


def refuse_sendfile_to_non_sockets(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """sendfile as on macOS: only to a socket, ENOTSOCK for anything else; the calls
    made are counted."""
    calls: list[int] = []

    def sendfile(out_fd: int, in_fd: int, offset: int | None, count: int) -> int:
        calls.append(out_fd)
        raise OSError(errno.ENOTSOCK, os.strerror(errno.ENOTSOCK))

    monkeypatch.setattr(os, "sendfile", sendfile)
    return calls


@pytest.mark.parametrize("how", ["enotsock", "missing"])
async def test_fd_sink_without_sendfile_into_a_pipe_reads_and_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    calls: list[int] = []
    if how == "enotsock":
        calls = refuse_sendfile_to_non_sockets(monkeypatch)
    else:
        monkeypatch.delattr(os, "sendfile")
    chunks, expected = file_chunks(tmp_path)
    out = tmp_path / "out"
    fd = os.open(out, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        sink = FdSink(fd, "out")
        with anyio.fail_after(STOP_BOUND):
            await stream_chunks(iter(chunks + chunks), sink)  # a second file: no retry
    finally:
        os.close(fd)
    assert out.read_bytes() == expected + expected
    assert len(calls) == (1 if how == "enotsock" else 0)


# --- end to end -------------------------------------------------------------------------

MAIN = "import sys\nfrom streamimage.cli import main\nsys.exit(main(sys.argv[1:]))\n"

# Each takes one feature away as it is elsewhere, before streamimage is imported.
NO_PROCESS_CPU_COUNT = "import os\nif hasattr(os, 'process_cpu_count'): del os.process_cpu_count\n"
PRELUDES = {
    "no-sched_getaffinity": NO_PROCESS_CPU_COUNT + "del os.sched_getaffinity\n",
    "no-pipe-resize": "import fcntl\ndel fcntl.F_SETPIPE_SZ, fcntl.F_GETPIPE_SZ\n",
    "no-fork": "import multiprocessing\n"
    "multiprocessing.get_all_start_methods = lambda: ['spawn', 'forkserver']\n",
    "no-o_tmpfile": "import os\ndel os.O_TMPFILE\n",
    "sendfile-to-sockets-only": "import errno, os\n"
    "def sendfile(out_fd, in_fd, offset, count):\n"
    "    raise OSError(errno.ENOTSOCK, os.strerror(errno.ENOTSOCK))\n"
    "os.sendfile = sendfile\n",
}
PRELUDES["all-of-them"] = "".join(PRELUDES.values())


@pytest.fixture
def store(tmp_path: Path) -> Store:
    """The basic store with a large file (sent with sendfile, where it can be), small ones
    (spooled), and entries enough in layer 1 to be hashed by two processes where there
    is fork."""
    store = make_store(tmp_path)
    lib = store.root / store.layers[0][0]
    (lib / "large.bin").write_bytes(os.urandom(300 * KIB))
    for index in range(64):
        (lib / f"small-{index}").write_bytes(os.urandom(8 * KIB))
    add_entries(lib / "many", SPLIT_MIN_ENTRIES)
    store.write_conf()
    return store


@dataclass(frozen=True, slots=True)
class Run:
    status: int
    stdout: bytes
    stderr: str
    pipe_size: int  # of stdout's pipe, once the run is over


def run_with(store: Store, prelude: str, *args: str) -> Run:
    """The command run under ``prelude``, its stdout a pipe."""
    read_end, write_end = os.pipe()
    with open(read_end, "rb") as reader:
        try:
            proc = subprocess.Popen(
                [sys.executable, "-c", prelude + MAIN, storegen.CONF_NAME, "-v", *args],
                cwd=store.root,
                env=tool_env(),
                stdout=write_end,
                stderr=subprocess.PIPE,
            )
        finally:
            os.close(write_end)
        with proc:
            assert proc.stderr is not None
            stdout = reader.read()
            status = proc.wait(STOP_BOUND)
            stderr = proc.stderr.read().decode()
        return Run(status, stdout, stderr, fcntl.fcntl(read_end, fcntl.F_GETPIPE_SZ))


def spooled_mb(stderr: str) -> float:
    found = re.search(r"layer 1: .*\(spool ([0-9.]+) MB", stderr)
    assert found is not None, stderr
    return float(found.group(1))


DEFAULT_PIPE = 64 * KIB  # Linux's
GROWN_PIPE = 1024 * KIB  # pipeline.PIPE_SIZE


@pytest.mark.parametrize("feature", list(PRELUDES))
def test_without_a_linux_feature_the_image_is_the_same(store: Store, feature: str) -> None:
    normal = run_with(store, "")
    assert normal.status == 0, normal.stderr
    assert normal.pipe_size == GROWN_PIPE
    without = run_with(store, PRELUDES[feature])
    assert without.status == 0, without.stderr
    assert "Traceback" not in without.stderr
    assert without.stdout == normal.stdout
    # -v's timelines: layer 1 went through the spool (an unlinked file) in both runs
    assert spooled_mb(normal.stderr) > 0
    assert spooled_mb(without.stderr) > 0
    forked = feature not in ("no-fork", "all-of-them")
    assert ("hashed in 2 processes" in without.stderr) == forked  # threads don't split
    resized = feature not in ("no-pipe-resize", "all-of-them")
    assert without.pipe_size == (GROWN_PIPE if resized else DEFAULT_PIPE)


@pytest.mark.parametrize("feature", ["no-fork", "all-of-them"])
def test_without_fork_hash_in_process_is_a_usage_error(store: Store, feature: str) -> None:
    without = run_with(store, PRELUDES[feature], "--hash-in", "process")
    assert without.stdout == b""
    completed = subprocess.CompletedProcess[bytes]([], without.status, b"", without.stderr.encode())
    assert_run_failed(completed, 2, "--hash-in process", "fork", "--hash-in thread")
