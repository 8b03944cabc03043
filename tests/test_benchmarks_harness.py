"""The harness's consumers and rows: what `compare` runs and how `runner` measures it.

Rule: no timing is asserted here (benchmarks/README.md has the numbers); only what each
mode runs, reads and reports.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import mmap
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import compare, corpus, layers, memory
from benchmarks.runner import CONSUMER_ARGV, consumer_overhead, run_once

needs_openssl = pytest.mark.skipif(shutil.which("openssl") is None, reason="no openssl")


@needs_openssl
def test_process_consumer_counts_and_hashes_every_byte(tmp_path: Path) -> None:
    data = bytes(range(256)) * 12_000 + b"tail"
    source = tmp_path / "data"
    source.write_bytes(data)

    result = run_once("cat", ["cat", str(source)], log=tmp_path / "log", consumer="process")

    assert result.exit_code == 0
    assert result.consumer == "process"
    assert result.out_bytes == len(data)
    assert result.sha256 == hashlib.sha256(data).hexdigest()
    assert result.consumer_cpu_s > 0
    assert "| openssl dgst -sha256" in (tmp_path / "log").read_text()


@needs_openssl
def test_process_consumer_of_no_output_is_the_empty_digest() -> None:
    result = run_once("true", ["true"], consumer="process")

    assert (result.out_bytes, result.exit_code) == (0, 0)
    assert result.sha256 == hashlib.sha256(b"").hexdigest()
    assert consumer_overhead() > 0  # openssl reads its config: subtracted above


@needs_openssl
def test_process_consumer_reports_the_commands_failure(tmp_path: Path) -> None:
    source = tmp_path / "data"
    source.write_bytes(b"y" * 5000)

    result = run_once("fail", ["sh", "-c", f"head -c 100 {source}; exit 3"], consumer="process")

    assert result.exit_code == 3
    assert result.out_bytes == 100
    assert result.sha256 == hashlib.sha256(b"y" * 100).hexdigest()


@needs_openssl
def test_both_consumers_agree_on_bytes_and_digest(tmp_path: Path) -> None:
    source = tmp_path / "data"
    source.write_bytes(b"z" * 2_500_001)
    argv = ["cat", str(source)]

    harness = run_once("h", argv, consumer="harness")
    process = run_once("p", argv, consumer="process")

    assert (harness.out_bytes, harness.sha256) == (process.out_bytes, process.sha256)
    assert harness.consumer_cpu_s == 0


def bench_corpus(tmp_path: Path) -> compare.Corpus:
    store = tmp_path / "store"
    paths = tuple(str(store / f"{'a' * 32}-p{i}") for i in range(3))
    return compare.Corpus(str(tmp_path / "conf.json"), str(store), paths, 10, 100, str(tmp_path))


def test_process_mode_floor_is_tar_into_the_same_consumer(tmp_path: Path) -> None:
    args = compare.parse_args(["--skip-reference"])
    field = {c.name: c for c in compare.contenders(args, bench_corpus(tmp_path), "/tmp/x")}

    assert args.consumer == "process"
    assert field[compare.FLOOR].argv[0] == "tar"
    assert compare.TAR_TO_HARNESS not in field
    assert field[compare.STREAMIMAGE].cache == "cold"


def test_harness_mode_floor_pipes_tar_into_openssl(tmp_path: Path) -> None:
    args = compare.parse_args(["--skip-reference", "--consumer", "harness"])
    field = {c.name: c for c in compare.contenders(args, bench_corpus(tmp_path), "/tmp/x")}

    assert field[compare.FLOOR].argv[:3] == ("bash", "-o", "pipefail")
    assert " ".join(CONSUMER_ARGV) in field[compare.FLOOR].argv[-1]
    assert field[compare.TAR_TO_HARNESS].argv[0] == "tar"


def resident_pages(path: Path) -> int:
    """How many of the file's pages are in the page cache now (mincore)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int]
    libc.mmap.argtypes += [ctypes.c_int, ctypes.c_long]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    size = path.stat().st_size
    pages = -(-size // mmap.PAGESIZE)
    with path.open("rb") as file:
        address = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, file.fileno(), 0)
        assert address not in (None, ctypes.c_void_p(-1).value)
        try:
            vector = ctypes.create_string_buffer(pages)
            assert libc.mincore(address, size, vector) == 0, os.strerror(ctypes.get_errno())
        finally:
            libc.munmap(address, size)
    return sum(byte & 1 for byte in vector.raw)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mincore, fadvise: Linux")
def test_keep_hot_reads_evicted_files_back_into_the_page_cache(tmp_path: Path) -> None:
    tree = tmp_path / "store" / "-odd name"
    tree.mkdir(parents=True)
    files = [tree / "a", tree / "b", tmp_path / "image.tar"]
    for file in files:
        file.write_bytes(os.urandom(256 * 1024))
        fd = os.open(file, os.O_RDONLY)
        os.fsync(fd)  # clean pages: DONTNEED drops them
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.close(fd)
    if any(resident_pages(file) for file in files):
        pytest.skip("this file system keeps the pages (tmpfs)")

    compare.keep_hot([str(tmp_path / "store"), str(tmp_path / "image.tar")])

    every_page = 256 * 1024 // mmap.PAGESIZE
    assert [resident_pages(file) for file in files] == [every_page] * 3


@needs_openssl
def test_replay_row_sends_the_tools_image_byte_for_byte(tmp_path: Path) -> None:
    # A stand-in tool whose "image" spans several sendfile calls' worth of a pipe.
    image = bytes(range(251)) * 9_000
    writer = tmp_path / "tool.py"
    writer.write_text("import sys\nsys.stdout.buffer.write(bytes(range(251)) * 9_000)\n")
    args = compare.parse_args(
        ["--skip-reference", "--replay", "--tool-cmd", f"{sys.executable} {writer}"]
    )
    scratch = tmp_path / "scratch"
    scratch.mkdir()

    row = compare.replay_contender(args, bench_corpus(tmp_path), tmp_path / "log", str(scratch))
    result = run_once("replay", row.argv, consumer="process")

    assert row.name == compare.REPLAY
    assert row.role == "floor"
    assert (result.exit_code, result.out_bytes) == (0, len(image))
    assert result.sha256 == hashlib.sha256(image).hexdigest()


def test_replay_row_refuses_a_tool_that_failed(tmp_path: Path) -> None:
    args = compare.parse_args(["--skip-reference", "--tool-cmd", "false"])

    with pytest.raises(RuntimeError, match="writing the image to replay failed"):
        compare.replay_contender(args, bench_corpus(tmp_path), tmp_path / "log", str(tmp_path))


def files_of(conf_path: str) -> dict[str, str]:
    """file name -> sha256, over every store path of the conf."""
    conf = json.loads(Path(conf_path).read_text())
    found = {}
    for layer in conf["store_layers"]:
        for path in layer:
            for file in Path(path).rglob("*"):
                if file.is_file():
                    found[file.name] = hashlib.sha256(file.read_bytes()).hexdigest()
    return found


def test_layer_sets_hold_the_same_files_in_one_path_per_layer(tmp_path: Path) -> None:
    sets = [layers.build_layer_set(tmp_path / str(n), n, 30, 10_007) for n in (1, 10)]

    for layer_set in sets:
        store_layers = json.loads(Path(layer_set.conf).read_text())["store_layers"]
        assert len(store_layers) == layer_set.layers
        assert all(len(layer) == 1 for layer in store_layers)
        assert all(any(Path(layer[0]).rglob("*.txt")) for layer in store_layers)
    contents = [files_of(s.conf) for s in sets]
    assert len(contents[0]) == 30
    assert contents[0] == contents[1]
    sizes = sum(f.stat().st_size for f in (tmp_path / "10" / "store").rglob("*.txt"))
    assert sizes == 10_007


def test_a_layer_set_is_reused_when_its_stamp_matches(tmp_path: Path) -> None:
    first = layers.build_layer_set(tmp_path, 3, 6, 600)
    marker = tmp_path / "store" / "marker"
    marker.write_text("kept")

    assert layers.build_layer_set(tmp_path, 3, 6, 600) == first
    assert marker.exists()
    layers.build_layer_set(tmp_path, 2, 6, 600)
    assert not marker.exists()


def test_layers_refuses_counts_it_cannot_compare() -> None:
    with pytest.raises(SystemExit):
        layers.parse_args(["--skip-reference", "--counts", "10"])
    with pytest.raises(SystemExit):
        layers.parse_args(["--skip-reference", "--counts", "1", "100", "--files", "50"])


def test_one_changed_row_makes_the_apps_layer_the_only_miss(tmp_path: Path) -> None:
    info = corpus.ensure_corpus(
        tmp_path / "corpus", corpus.CorpusParams(scale=0.002, seed=5, shape="nixpkgs")
    )
    bench = compare.Corpus(
        info.conf,
        info.store_dir,
        info.store_paths,
        info.entries,
        info.file_bytes,
        info.directory,
        info.app_layer,
    )
    cache = tmp_path / "cache"
    argv = [sys.executable, "-m", "streamimage", info.conf, "--cache-dir", str(cache), "-v"]
    env = {k: v for k, v in os.environ.items() if k != "STREAMIMAGE_NO_CACHE"}
    compare.settle(bench)
    subprocess.run(argv, capture_output=True, check=True, env=env)

    compare.forget_app_layer(bench, compare.parse_args(["--skip-reference"]), str(cache))
    rerun = subprocess.run(argv, capture_output=True, check=True, env=env)

    missed = re.findall(r"layer (\d+):.*cache miss", rerun.stderr.decode())
    assert missed == [str(info.app_layer + 1)]
    assert info.store_layers[info.app_layer][0].endswith("-bench-app-1.0")


SHARED_MIB = 32  # touched by a process before it forks: shared by both, copy-on-write

FORKS_AND_WAITS = f"""
import os, sys
data = bytearray({SHARED_MIB} * 1024 * 1024)
for i in range(0, len(data), 4096):
    data[i] = 1  # resident, in the parent and (shared) in the child
if os.fork() == 0:
    sys.stdin.read()
    os._exit(0)
print("forked", flush=True)
sys.stdin.read()
os.wait()
"""


def test_the_tree_is_measured_by_pss_which_counts_shared_pages_once() -> None:
    with subprocess.Popen(
        [sys.executable, "-c", FORKS_AND_WAITS],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as proc:
        assert proc.stdout is not None
        assert proc.stdin is not None
        assert proc.stdout.readline() == "forked\n"
        tree = memory.sample_tree(proc.pid)
        proc.stdin.close()
    assert len(tree.hwm_kib) == 2  # the process and its forked child
    assert all(hwm >= SHARED_MIB * 1024 for hwm in tree.hwm_kib.values())
    # summed RSS counts the shared pages in both processes, PSS half in each
    assert tree.rss_kib - tree.pss_kib >= SHARED_MIB * 1024 // 2
    assert tree.pss_kib >= SHARED_MIB * 1024
