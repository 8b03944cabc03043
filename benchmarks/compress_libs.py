# Chooses --compress's libraries and default levels by numbers: single-thread throughput and
# ratio of zlib (the stdlib's) and ISA-L (python-isal's isal_zlib) raw deflate, and of libzstd
# (compression.zstd, or backports.zstd before Python 3.14) as streamimage's ZstdEncoder
# calls it, over one file, e.g. a tar of the benchmark corpus. Rule: the same file and the
# same 1 MiB pieces for all; best of --runs; the input is read into memory first so disk
# speed is not measured.
#
#   tar -C /tmp/streamimage-bench/default-scale-0.25-seed-1/store -cf /tmp/corpus.tar .
#   python -m benchmarks.compress_libs /tmp/corpus.tar
from __future__ import annotations

import argparse
import sys
import time
import zlib
from collections.abc import Callable
from types import ModuleType

from isal import isal_zlib

from streamimage.engine.compress import ZstdEncoder, library_version
from streamimage.options import ZSTD, Compression

PIECE = 1024 * 1024  # bytes per compress() call
RAW_DEFLATE = -15


def best_time(run: Callable[[], int], runs: int) -> tuple[float, int]:
    best, size = float("inf"), 0
    for _ in range(runs):
        start = time.perf_counter()
        size = run()
        best = min(best, time.perf_counter() - start)
    return best, size


def deflate(module: ModuleType, level: int, data: bytes) -> Callable[[], int]:
    def run() -> int:
        compressor = module.compressobj(level, zlib.DEFLATED, RAW_DEFLATE)
        view = memoryview(data)
        pieces = (view[i : i + PIECE] for i in range(0, len(data), PIECE))
        size = sum(len(compressor.compress(piece)) for piece in pieces)
        return size + len(compressor.flush())

    return run


def zstd(level: int, data: bytes) -> Callable[[], int]:
    def run() -> int:
        encoder = ZstdEncoder(level)
        view = memoryview(data)
        pieces = (view[i : i + PIECE] for i in range(0, len(data), PIECE))
        return sum(len(encoder.compress(piece)) for piece in pieces) + len(encoder.finish())

    return run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.compress_libs")
    parser.add_argument("file", help="what to compress (a layer-like tar)")
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--zstd-levels", type=int, nargs="*", default=[1, 2, 3, 4, 6, 9, 19])
    args = parser.parse_args(argv)
    with open(args.file, "rb") as file:
        data = file.read()
    crc_s, _ = best_time(lambda: zlib.crc32(data), args.runs)
    out = sys.stdout
    out.write(f"input {len(data) / 1e6:.1f} MB, zlib {zlib.ZLIB_RUNTIME_VERSION}, ")
    out.write(f"zlib.crc32 {len(data) / crc_s / 1e6:.0f} MB/s\n")
    out.write(f"{'library':<8} {'level':>5} {'MB/s':>8} {'ratio':>6} {'MB out':>8}\n")
    runs: list[tuple[str, int, Callable[[], int]]] = [
        *(
            (name, level, deflate(module, level, data))
            for name, module, levels in (
                ("zlib", zlib, (1, 6, 9)),
                ("isal", isal_zlib, (0, 1, 2, 3)),
            )
            for level in levels
        ),
        *(("zstd", level, zstd(level, data)) for level in args.zstd_levels),
    ]
    for name, level, run in runs:
        seconds, size = best_time(run, args.runs)
        out.write(
            f"{name:<8} {level:>5} {len(data) / seconds / 1e6:8.1f} {size / len(data):6.3f}"
            f" {size / 1e6:8.1f}\n"
        )
    out.write(f"zstd: {library_version(Compression(ZSTD, 3))}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
