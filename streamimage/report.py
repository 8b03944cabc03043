"""What the user sees on stderr while an image is written: the reference's lines, a summary.

IO: writes to a text stream (stderr); never to stdout, which carries the image.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TextIO

from streamimage.pipeline import Timeline


class Reporter:
    """One line per layer as the reference prints them, a summary at the end; ``quiet``
    keeps only errors, ``verbose`` adds each layer's hash and stream timeline."""

    def __init__(self, stream: TextIO, *, quiet: bool = False, verbose: bool = False) -> None:
        self._stream = stream
        self._quiet = quiet
        self._verbose = verbose
        self._start = time.monotonic()

    def line(self, text: str) -> None:
        if not self._quiet:
            self._stream.write(text + "\n")
            self._stream.flush()

    def note(self, text: str) -> None:
        """A remark about the input that the user should see even when quiet."""
        self._stream.write(f"streamimage: note: {text}\n")
        self._stream.flush()

    def timeline(self, labels: Sequence[str], timelines: Sequence[Timeline]) -> None:
        if not self._verbose:
            return
        for label, t in zip(labels, timelines, strict=True):
            hash_pass = f"{t.hash_start - self._start:7.3f}-{t.hash_end - self._start:7.3f}s"
            stream = f"{t.stream_start - self._start:7.3f}-{t.stream_end - self._start:7.3f}s"
            self.line(f"  {label}: hash {hash_pass}  stream {stream}")

    def summary(self, layers: int, size: int) -> None:
        seconds = time.monotonic() - self._start
        rate = size / seconds / 1e6 if seconds > 0 else 0.0
        self.line(
            f"streamimage: {layers} layers, {size} bytes in {seconds:.2f} s ({rate:.1f} MB/s)"
        )
