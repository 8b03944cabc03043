"""What the user sees on stderr while an image is written: the reference's lines, a summary,
and (on a terminal, or asked for) a live progress line (progressline.py formats it).

IO: writes to a text stream (stderr); never to stdout, which carries the image.
Rule: the live display costs the pipeline nothing per chunk: a task of its own reads the
counters (the sinks' bytes written, the layers' sizes once known) REFRESH times a second;
the run tells it only which layer is being written, and of a blob not sent.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, TextIO

import anyio

from streamimage.engine.timeline import Timeline
from streamimage.image import Meter
from streamimage.layers import Layer
from streamimage.progressline import RateWindow, Snapshot, render

if TYPE_CHECKING:  # httpx (120 ms of import) only for pushes
    from streamimage.destinations.registry import Pushed

REFRESH = 0.2  # seconds between two redraws of the live line on a terminal
PLAIN_EVERY = 5.0  # seconds between two progress lines off a terminal (a log, a file)
PLAIN_WIDTH = 100  # characters of a progress line off a terminal
DEFAULT_COLUMNS = 80  # of a terminal that doesn't say (0x0: `script`, a fresh pty)
CLEAR_LINE = "\r\x1b[K"  # to the line's start, erase to its end (VT100 EL): no padding
# that a narrowed terminal would wrap, as a redraw padded with spaces would


class Reporter:
    """One line per layer as the reference prints them, a summary at the end; ``quiet``
    keeps only errors, ``verbose`` adds each layer's hash and stream timeline, ``live``
    a progress line (redrawn in place on a terminal, else a line every PLAIN_EVERY)."""

    def __init__(
        self, stream: TextIO, *, quiet: bool = False, verbose: bool = False, live: bool = False
    ) -> None:
        self._stream = stream
        self._quiet = quiet
        self._verbose = verbose
        self._live = live and not quiet
        self._drawn = False  # the live line is on the terminal's last line
        self._current = ""  # the last line shown: which layer is being written
        self.files = 0  # store entries streamed so far (the stream pass counts them)
        self._layers: tuple[Layer, ...] = ()
        self._number = 0  # of the layer being written
        self._meters: list[Meter] = []
        self._sinks: Sequence[Meter] = ()  # the output, given to show_progress
        self._skipped = 0  # bytes of blobs the destination didn't send
        self._rate = RateWindow()
        self._start = time.monotonic()
        encoding = (getattr(stream, "encoding", None) or "").lower().replace("-", "")
        self._unicode = encoding == "utf8"

    def _write(self, text: str) -> None:
        if self._drawn:
            # the line goes where the live line was, which is drawn again below it
            self._stream.write(CLEAR_LINE + text + "\n")
            self._draw_in_place()
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

    def plan(self, layers: Sequence[Layer]) -> None:
        self._layers = tuple(layers)

    def layer(self, number: int) -> None:
        self._number = number

    def watch(self, meter: Meter) -> None:
        self._meters.append(meter)

    def skip(self, size: int) -> None:
        self._skipped += size

    def _sent(self) -> int:
        return sum(m.written for m in self._sinks) + sum(m.written for m in self._meters)

    def snapshot(self, *, step: bool = True) -> Snapshot:
        """The counters now, as the progress line shows them (rate: as last sampled)."""
        sizes = [layer.known_size() for layer in self._layers]
        known = [size for size in sizes if size is not None]
        return Snapshot(
            layer=self._number,
            layers=len(sizes),
            done=self._sent(),  # with the archive's headers and documents: render caps it
            total=max(0, sum(known) - self._skipped),
            complete=bool(sizes) and len(known) == len(sizes),
            files=self.files,
            elapsed=time.monotonic() - self._start,
            rate=self._rate.rate(),
            step=self._current if step else "",
        )

    def _columns(self) -> int:
        try:
            columns = os.get_terminal_size(self._stream.fileno()).columns
        except (OSError, ValueError, AttributeError):  # not a terminal after all
            columns = 0
        if columns <= 0:  # a terminal that doesn't know its size: $COLUMNS may
            text = os.environ.get("COLUMNS", "")
            columns = int(text) if text.isascii() and text.isdigit() else 0
        return columns or DEFAULT_COLUMNS

    def _draw_in_place(self) -> None:
        # one column spare: writing the last column leaves some terminals about to wrap,
        # and a "≥" may be drawn two columns wide (East Asian ambiguous width)
        text = render(self.snapshot(), self._columns() - 1, unicode=self._unicode)
        self._stream.write(CLEAR_LINE + text)
        self._stream.flush()
        self._drawn = True

    def _draw_plain(self) -> None:
        # a log's line: the fields only (the steps are the lines above), no bar
        text = render(self.snapshot(step=False), PLAIN_WIDTH, unicode=self._unicode, bar=False)
        self._stream.write(text + "\n")
        self._stream.flush()

    async def show_progress(self, sinks: Sequence[Meter]) -> None:
        """The live display of how far the run is (layer k of N, bytes sent of the
        layers' total, percentage and ETA once the total is known, rate, files) until
        cancelled: redrawn in place on a terminal, a line every PLAIN_EVERY seconds and
        a last one otherwise; does nothing unless the display was asked for. ``sinks``
        (the output) is read as it grows; a destination adds others with ``watch``."""
        if not self._live:
            return
        self._sinks = sinks
        terminal = self._stream.isatty()
        self._rate.add(time.monotonic(), self._sent())
        try:
            while True:
                if terminal:
                    self._draw_in_place()
                await anyio.sleep(REFRESH if terminal else PLAIN_EVERY)
                self._rate.add(time.monotonic(), self._sent())
                if not terminal:
                    self._draw_plain()
        finally:
            if terminal:
                self._drawn = False
                self._stream.write(CLEAR_LINE)  # the summary takes its place
            else:
                self._draw_plain()
            self._stream.flush()

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
            if t.kept and t.spooled is not None:
                source = f"kept frames {t.spooled / 1e6:.1f} MB"
            if t.hashed_as_sent:
                source = "framed once, hashed as sent"
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
        from streamimage.destinations.registry import MOUNTED, PRESENT, UPLOADED

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
