"""What the user sees on stderr while an image is written: the reference's lines, a summary,
and (on a terminal, or asked for) a live progress line.

IO: writes to a text stream (stderr); never to stdout, which carries the image.
Rule: the live display costs the pipeline nothing per chunk: a task of its own reads the
sinks' byte counters REFRESH times a second; the pipeline doesn't know it is watched.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, NoReturn, Protocol, TextIO

import anyio

from streamimage.destinations.registry import MOUNTED, PRESENT, UPLOADED, Pushed
from streamimage.engine.timeline import Timeline

if TYPE_CHECKING:
    from tqdm import tqdm

REFRESH = 0.2  # seconds between two refreshes of the live display


class Counted(Protocol):
    written: int


class Reporter:
    """One line per layer as the reference prints them, a summary at the end; ``quiet``
    keeps only errors, ``verbose`` adds each layer's hash and stream timeline."""

    def __init__(
        self, stream: TextIO, *, quiet: bool = False, verbose: bool = False, live: bool = False
    ) -> None:
        self._stream = stream
        self._quiet = quiet
        self._verbose = verbose
        self._live = live and not quiet
        self._bar: tqdm[NoReturn] | None = None
        self._current = ""  # the last line shown: which layer is being written
        self.files = 0  # store entries streamed so far (the stream pass counts them)
        self._start = time.monotonic()

    def _write(self, text: str) -> None:
        if self._bar is not None:
            self._bar.clear()  # the line goes above the live display, which then redraws
            self._stream.write(text + "\n")
            self._bar.refresh()
        else:
            self._stream.write(text + "\n")
        self._stream.flush()

    def line(self, text: str) -> None:
        if not self._quiet:
            self._current = text
            self._write(text)

    def warn(self, text: str) -> None:
        """Something not worth failing for, that the user may want to know: with -v."""
        if self._verbose:
            self._write(f"streamimage: warning: {text}")

    def note(self, text: str) -> None:
        """A remark about the input that the user should see even when quiet."""
        self._write(f"streamimage: note: {text}")

    async def show_progress(self, sinks: Sequence[Counted]) -> None:
        """The live display of bytes written to ``sinks``, rate and current step, until
        cancelled; does nothing unless the display was asked for."""
        if not self._live:
            return
        from tqdm import tqdm  # here: 25 ms of import, paid only when the display is shown

        tqdm.monitor_interval = 0  # no monitor thread: this task refreshes
        bar: tqdm[NoReturn] = tqdm(
            file=self._stream,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            mininterval=0,
            leave=False,
            # a terminal of unknown size (0x0: `script`, a fresh pty) would hide the line
            ncols=shutil.get_terminal_size().columns,
            nrows=shutil.get_terminal_size().lines,
            postfix="0",  # tqdm puts ", " before it
            bar_format="{n_fmt}B written{postfix} files, {rate_fmt}, {elapsed} | {desc}",
        )
        self._bar = bar
        try:
            while True:
                bar.n = sum(sink.written for sink in sinks)
                bar.set_postfix_str(str(self.files), refresh=False)
                bar.set_description_str(self._current[:60], refresh=False)
                bar.refresh()
                await anyio.sleep(REFRESH)
        finally:
            self._bar = None
            bar.close()

    def done(self, layers: int, size: int, timelines: Sequence[Timeline]) -> None:
        """The end of a run that wrote ``layers`` layers in ``size`` bytes: the reference's
        last line, each store layer's timeline with ``-v``, and the summary."""
        self.line("Done.")
        self._timeline(timelines)
        self._summary(layers, size, timelines)

    def _timeline(self, timelines: Sequence[Timeline]) -> None:
        if not self._verbose:
            return
        for number, t in enumerate(timelines, start=1):
            label = f"layer {number}"
            hash_pass = f"{t.hash_start - self._start:7.3f}-{t.hash_end - self._start:7.3f}s"
            stream = f"{t.stream_start - self._start:7.3f}-{t.stream_end - self._start:7.3f}s"
            source = "framed again" if t.spooled is None else f"spool {t.spooled / 1e6:.1f} MB"
            if t.parts > 1:
                source += f", hashed in {t.parts} processes"
            if t.cache is not None:
                source += f", cache {t.cache}"
            self.line(f"  {label}: hash {hash_pass}  stream {stream}  ({source})")

    def _summary(self, layers: int, size: int, timelines: Sequence[Timeline]) -> None:
        seconds = time.monotonic() - self._start
        rate = size / seconds / 1e6 if seconds > 0 else 0.0
        said = [t.cache for t in timelines if t.cache is not None]
        cache = ""
        if said:
            hits = sum(1 for s in said if s == "hit")
            stored = sum(1 for s in said if s.endswith("stored"))
            cache = f"; digest cache: {hits} hit, {len(said) - hits} missed, {stored} stored"
        self.line(
            f"streamimage: {layers} layers, {size} bytes in {seconds:.2f} s ({rate:.1f} MB/s)"
            + cache
        )

    def pushed(self, pushed: Pushed) -> None:
        """After a push: with -v each blob's outcome (present: skipped, mounted, uploaded:
        bytes and rate), then the counts and the manifest's digest."""
        if self._verbose:
            for blob in pushed.blobs:
                said = "skipped (present)" if blob.action == PRESENT else blob.action
                if blob.source is not None:
                    said += f" from {blob.source}"
                if blob.action == UPLOADED:
                    rate = blob.size / blob.seconds / 1e6 if blob.seconds > 0 else 0.0
                    said += f" {blob.size} bytes in {blob.seconds:.2f} s ({rate:.1f} MB/s)"
                self.line(f"  {blob.what}: {blob.digest} {said}")
        counts = dict.fromkeys((PRESENT, MOUNTED, UPLOADED), 0)
        for blob in pushed.blobs:
            counts[blob.action] += 1
        self.line(
            f"streamimage: pushed {pushed.reference} ({pushed.manifest_digest}): "
            f"{counts[PRESENT]} blobs present, {counts[MOUNTED]} mounted, "
            f"{counts[UPLOADED]} uploaded ({pushed.uploaded} bytes)"
        )
