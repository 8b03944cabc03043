"""The progress line: how far a run is, as one line of text that fits a given width.

PURE: no IO, no anyio, no clock (times are given); report.py reads the counters and draws.
Rule 1: the line is never wider than the width it is given; fields are dropped, least
useful first, until it fits (a terminal wraps a longer line, and the redraw breaks).
Rule 2: it claims nothing that isn't known: until every layer's size is known the total
reads "≥ X" (the sizes known so far) and there is no percentage, bar or ETA.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")  # binary units, 1024 apart
SEPARATOR = "  "
BAR_MIN = 10  # columns: a narrower bar says nothing the percentage doesn't
BAR_MAX = 30  # columns
STEP_MIN = 20  # columns: a step cut shorter than this is noise
RATE_WINDOW = 5.0  # seconds of samples the rate is measured over


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The counters of a run at one moment, as the display read them."""

    layer: int  # the layer being written (1-based, in the order written); 0: none yet
    layers: int  # how many layers the image has
    done: int  # bytes of layers sent so far
    total: int  # bytes of layers to send, of those whose size is known
    complete: bool  # every layer's size is known: ``total`` is the image's
    files: int  # store entries streamed so far
    elapsed: float  # seconds since the run started
    rate: float | None  # bytes a second over the last RATE_WINDOW; None: not measured yet
    step: str = ""  # what is being done (the last line printed), shown where there is room


def format_size(size: int) -> str:
    """``size`` bytes in at most 4 significant characters and a binary unit: 999 B,
    0.98 KiB, 12.3 MiB, 512 GiB."""
    value = float(size)
    unit = 0
    while value >= 1000 and unit < len(UNITS) - 1:
        value /= 1024
        unit += 1
    if unit == 0:
        return f"{size} B"
    if value < 9.995:
        return f"{value:.2f} {UNITS[unit]}"
    if value < 99.95:
        return f"{value:.1f} {UNITS[unit]}"
    return f"{value:.0f} {UNITS[unit]}"


def format_duration(seconds: float) -> str:
    """``seconds`` as m:ss, or h:mm:ss from an hour on."""
    whole = max(0, int(seconds))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def percent(done: int, total: int) -> int:
    """Whole percent of ``total`` that ``done`` is, rounded down: 100 only when done."""
    if total <= 0:
        return 100
    return min(100, done * 100 // total)


def eta(done: int, total: int, rate: float | None) -> float | None:
    """Seconds left at ``rate``; None when the rate is unknown or nothing moves."""
    if rate is None or rate <= 0 or not math.isfinite(rate):
        return None
    return max(0, total - done) / rate


def render(snapshot: Snapshot, width: int, *, unicode: bool = False, bar: bool = True) -> str:
    """The line for ``snapshot``, at most ``width`` characters (``unicode``: may use "≥",
    one character that some terminals draw two columns wide: keep a column spare).

    Fields by usefulness: layer k/N, bytes done of the total, percentage and ETA (once the
    total is known), rate, files, elapsed time; then, where there is room, a bar (unless
    not ``bar``) and the current step, cut to fit.
    """
    if width <= 0:
        return ""
    s = snapshot
    done = min(s.done, s.total)
    total = format_size(s.total)
    at_least = "≥" if unicode else ">="
    fields: dict[str, str] = {
        "layer": f"layer {s.layer}/{s.layers}",
        "bytes": f"{format_size(done)}/{total if s.complete else at_least + total}",
    }
    left = None
    if s.complete:
        fields["percent"] = f"{percent(done, s.total)}%"
        left = eta(done, s.total, s.rate)
        if left is not None:
            fields["eta"] = f"ETA {format_duration(left)}"
    if s.rate is not None:
        fields["rate"] = f"{format_size(round(s.rate))}/s"
    if s.files:
        fields["files"] = f"{s.files:,} files"
    fields["elapsed"] = f"elapsed {format_duration(s.elapsed)}"

    kept: list[str] = []
    used = -len(SEPARATOR)
    for name, text in fields.items():  # most useful first
        if used + len(SEPARATOR) + len(text) > width:
            break
        kept.append(name)
        used += len(SEPARATOR) + len(text)
    if not kept:
        return fields["layer"][:width]
    order = ("layer", "bytes", "percent", "rate", "eta", "files", "elapsed")
    parts = [fields[name] for name in order if name in kept]

    room = width - used
    if bar and s.complete and room >= len(SEPARATOR) + BAR_MIN + 2:
        columns = min(BAR_MAX, room - len(SEPARATOR) - 2)
        filled = columns * percent(done, s.total) // 100
        parts.insert(1, "[" + "#" * filled + "." * (columns - filled) + "]")
        room -= len(SEPARATOR) + columns + 2
    step = _printable(s.step)
    if step and room >= len(SEPARATOR) + STEP_MIN:
        fit = room - len(SEPARATOR)
        parts.append(step if len(step) <= fit else step[: fit - 3] + "...")
    return SEPARATOR.join(parts)


def _printable(text: str) -> str:
    """``text`` as one line of printable ASCII: a control character (a newline, an escape
    sequence in a file name) would break the line, a wide one its width."""
    return "".join(c if " " <= c <= "~" else "?" for c in " ".join(text.split()))


class RateWindow:
    """Bytes a second, measured over the samples of the last RATE_WINDOW seconds."""

    def __init__(self, window: float = RATE_WINDOW) -> None:
        self._window = window
        self._samples: deque[tuple[float, int]] = deque()

    def add(self, when: float, count: int) -> None:
        """``count`` bytes were done by time ``when`` (seconds, increasing)."""
        self._samples.append((when, count))
        # keep one sample at or before the window's start, so the window is covered
        while len(self._samples) > 2 and self._samples[1][0] <= when - self._window:
            self._samples.popleft()

    def rate(self) -> float | None:
        """Bytes a second across the samples kept; None before two samples apart."""
        if len(self._samples) < 2:
            return None
        (start, first), (end, last) = self._samples[0], self._samples[-1]
        if end <= start:
            return None
        # a count may go down (an upload retried from an earlier offset): no negative rate
        return max(0.0, (last - first) / (end - start))
