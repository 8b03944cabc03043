"""What a live progress line costs drawn by report.py itself (progressline.render, then
CR and erase-in-line), with tqdm and with rich: the measurement behind the choice.

    python -m benchmarks.progress_libs [--refreshes 2000] [--imports 5]

streamimage's display is a task that redraws one line every REFRESH seconds (report.py);
the pipeline doesn't know it is watched. So a way of drawing costs the run its import time
plus its cost per redraw times the redraws. Each is measured here the way report.py draws:
a line of the same fields (bytes, files, rate, elapsed, current step), written to a
pseudo-terminal that a thread drains, no thread of the library's own (tqdm:
monitor_interval=0; rich: auto_refresh=False). Imports are timed in fresh interpreters
(median). tqdm and rich are dev dependencies, for this measurement only.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TextIO

from streamimage.report import REFRESH

RUN_SECONDS = 2.4  # a streamimage run of the default corpus here (benchmarks/README.md)


@contextmanager
def terminal() -> Iterator[TextIO]:
    """A text stream on a pty's slave end; a thread reads the master end, as a terminal."""
    master, slave = os.openpty()
    done = threading.Event()

    def drain() -> None:
        while not done.is_set():
            try:
                if not os.read(master, 65536):
                    return
            except OSError:
                return

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    stream = os.fdopen(slave, "w", buffering=1)
    try:
        yield stream
    finally:
        done.set()
        stream.close()
        os.close(master)
        reader.join(5)


def own_redraws(stream: TextIO, count: int) -> list[float]:
    from streamimage.progressline import Snapshot, render
    from streamimage.report import CLEAR_LINE

    times = []
    for i in range(count):
        start = time.perf_counter()
        snapshot = Snapshot(
            layer=i % 5 + 1,
            layers=5,
            done=i * 1_000_000,
            total=count * 1_000_000,
            complete=True,
            files=i * 25,
            elapsed=i * REFRESH,
            rate=5_000_000.0,
            step=f"Creating layer {i % 5 + 1} from paths: [...]",
        )
        stream.write(CLEAR_LINE + render(snapshot, 99))
        stream.flush()
        times.append(time.perf_counter() - start)
    stream.write(CLEAR_LINE)
    return times


def tqdm_redraws(stream: TextIO, count: int) -> list[float]:
    from tqdm import tqdm

    tqdm.monitor_interval = 0
    bar = tqdm(
        file=stream,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        mininterval=0,
        leave=False,
        ncols=100,
        nrows=24,
        postfix="0",
        bar_format="{n_fmt}B written{postfix} files, {rate_fmt}, {elapsed} | {desc}",
    )
    times = []
    for i in range(count):
        start = time.perf_counter()
        bar.n = i * 1_000_000
        bar.set_postfix_str(str(i * 25), refresh=False)
        bar.set_description_str(f"Creating layer {i % 5 + 1} from paths: [...]", refresh=False)
        bar.refresh()
        times.append(time.perf_counter() - start)
    bar.close()
    return times


def rich_redraws(stream: TextIO, count: int) -> list[float]:
    from rich.console import Console
    from rich.progress import (
        DownloadColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TransferSpeedColumn,
    )

    console = Console(file=stream, force_terminal=True, width=100)
    progress = Progress(
        DownloadColumn(),
        TextColumn("written, {task.fields[files]} files,"),
        TransferSpeedColumn(),
        TimeElapsedColumn(),
        TextColumn("| {task.description}"),
        console=console,
        auto_refresh=False,
        transient=True,
    )
    times = []
    with progress:
        task = progress.add_task("", total=None, files=0)
        for i in range(count):
            start = time.perf_counter()
            progress.update(
                task,
                completed=i * 1_000_000,
                files=i * 25,
                description=f"Creating layer {i % 5 + 1} from paths: [...]",
            )
            progress.refresh()
            times.append(time.perf_counter() - start)
    return times


def import_seconds(statement: str, runs: int) -> float:
    """Median seconds to run ``statement`` in a fresh interpreter, less an empty one's."""

    def once(code: str) -> float:
        timer = f"import time; t = time.perf_counter(); {code}; print(time.perf_counter() - t)"
        out = subprocess.run(
            [sys.executable, "-c", timer], capture_output=True, text=True, check=True
        )
        return float(out.stdout)

    return statistics.median(once(statement) for _ in range(runs))


def measure(
    name: str, redraws: Callable[[TextIO, int], list[float]], args: argparse.Namespace
) -> None:
    module = {"own": "streamimage.progressline", "tqdm": "tqdm"}.get(name, "rich.progress")
    imported = import_seconds(f"import {module}", args.imports)
    with terminal() as stream:
        per_redraw = statistics.median(redraws(stream, args.refreshes))
    per_run = imported + per_redraw * RUN_SECONDS / REFRESH
    sys.stdout.write(
        f"{name:6s} import {imported * 1e3:7.1f} ms   redraw {per_redraw * 1e6:8.1f} us   "
        f"a {RUN_SECONDS} s run ({RUN_SECONDS / REFRESH:.0f} redraws): {per_run * 1e3:6.1f} ms\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--refreshes", type=int, default=2000)
    parser.add_argument("--imports", type=int, default=5)
    args = parser.parse_args()
    measure("own", own_redraws, args)
    for name, redraws in (("tqdm", tqdm_redraws), ("rich", rich_redraws)):
        try:
            __import__(name)
        except ImportError:
            sys.stdout.write(f"{name:6s} not installed (pip install -e '.[dev]' to measure it)\n")
            continue
        measure(name, redraws, args)


if __name__ == "__main__":
    main()
