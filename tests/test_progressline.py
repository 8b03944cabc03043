"""The progress line as text: what it says of a run's counters, and that it fits.

Pure: snapshots in, strings out; no terminal, no event loop (test_progress.py runs the
real command on terminals).
"""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streamimage.progressline import (
    RateWindow,
    Snapshot,
    eta,
    format_duration,
    format_size,
    percent,
    render,
)

GIB = 2**30
MIB = 2**20
STEP = "Creating layer 3 from paths: ['/nix/store/zcb6z8gqrjqcd9cr2v2rxfil79ps7vp9-glibc-2.40']"


def snapshot(**changes: object) -> Snapshot:
    """A run a third of the way through a 3 GiB image of 5 layers, at 45 MiB/s."""
    fields: dict[str, object] = {
        "layer": 3,
        "layers": 5,
        "done": GIB,
        "total": 3 * GIB,
        "complete": True,
        "files": 12_345,
        "elapsed": 22.0,
        "rate": 45.0 * MIB,
        "step": STEP,
    }
    fields.update(changes)
    return Snapshot(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize("width", [80, 200])
def test_a_known_total_shows_layer_bytes_percentage_and_eta(width: int) -> None:
    line = render(snapshot(), width)
    assert len(line) <= width
    assert line.startswith("layer 3/5  ")
    assert "1.00 GiB/3.00 GiB" in line
    assert re.search(r"\b33%", line)
    assert "ETA 0:45" in line  # 2 GiB left at 45 MiB/s: 45.5 s
    assert "45.0 MiB/s" in line


@pytest.mark.parametrize("width", [80, 200])
def test_an_unknown_total_shows_what_is_known_without_percentage_or_eta(width: int) -> None:
    line = render(snapshot(complete=False), width)
    assert len(line) <= width
    assert "1.00 GiB/>=3.00 GiB" in line
    assert "%" not in line
    assert "ETA" not in line
    assert "#" not in line  # no bar either
    assert "1.00 GiB/≥3.00 GiB" in render(snapshot(complete=False), width, unicode=True)


def test_at_200_columns_a_bar_and_the_step_join_the_fields() -> None:
    line = render(snapshot(), 200)
    bar = re.search(r"\[(#*)(\.*)\]", line)
    assert bar is not None
    filled, empty = len(bar[1]), len(bar[2])
    assert filled * 100 // (filled + empty) in range(30, 34)  # a third of it
    assert "12,345 files" in line
    assert "elapsed 0:22" in line
    assert len(line) == 200
    assert line.endswith("...")  # the step, cut to fit
    assert "Creating layer 3 from paths: ['/nix/store/" in line


def test_at_80_columns_the_least_useful_fields_go_first() -> None:
    line = render(snapshot(), 80)
    assert "[" not in line  # no bar
    assert "Creating layer" not in line  # no step
    huge = snapshot(layers=1234, layer=1000, done=999 * 2**40, total=1000 * 2**40, files=12_345_678)
    tight = render(huge, 80)
    assert len(tight) <= 80
    for field in ("layer 1000/1234", "999 TiB/0.98 PiB", "99%", "ETA "):
        assert field in tight


def test_no_bar_when_asked() -> None:
    assert "[" not in render(snapshot(step=""), 200, bar=False)
    assert "[" in render(snapshot(step=""), 200)


def test_a_step_too_long_is_cut_with_an_ellipsis() -> None:
    line = render(snapshot(step="x" * 500), 200)
    assert len(line) == 200
    assert line.endswith("x...")


def test_a_step_with_control_or_wide_characters_is_made_printable() -> None:
    line = render(snapshot(step="a\nb\x1b[2Jc 日本"), 200)
    assert line.endswith("a b?[2Jc ??")
    assert "\x1b" not in line


def test_no_rate_yet_means_no_eta() -> None:
    line = render(snapshot(rate=None), 200)
    assert "33%" in line
    assert "ETA" not in line
    assert "MiB/s" not in line
    assert "ETA" not in render(snapshot(rate=0.0), 200)


def test_bytes_beyond_the_total_are_not_claimed() -> None:
    # the archive's headers and documents are written too; the total is the layers'
    line = render(snapshot(done=3 * GIB + 10_240), 200)
    assert "3.00 GiB/3.00 GiB  100%" in line
    assert "ETA 0:00" in line


@pytest.mark.parametrize(
    ("size", "text"),
    [
        (0, "0 B"),
        (999, "999 B"),
        (1000, "0.98 KiB"),
        (1024, "1.00 KiB"),
        (10 * 1024 - 1, "10.0 KiB"),
        (100 * 1024, "100 KiB"),
        (999 * 1024, "999 KiB"),
        (1000 * 1024, "0.98 MiB"),
        (3 * GIB, "3.00 GiB"),
        (2**60, "1024 PiB"),
    ],
)
def test_sizes_in_binary_units(size: int, text: str) -> None:
    assert format_size(size) == text


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0:00"), (59.9, "0:59"), (60, "1:00"), (3599, "59:59"), (3600, "1:00:00"), (-1, "0:00")],
)
def test_durations(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


def test_percent_is_100_only_when_done() -> None:
    assert percent(999, 1000) == 99
    assert percent(1000, 1000) == 100
    assert percent(0, 0) == 100  # nothing to send: done
    assert eta(0, 100, None) is None
    assert eta(50, 100, 10.0) == 5.0


def test_the_rate_is_measured_over_the_window() -> None:
    window = RateWindow(window=5.0)
    assert window.rate() is None
    window.add(0.0, 0)
    assert window.rate() is None  # one sample says nothing
    for second in range(1, 11):  # 100 B/s for 10 s, then stalled for 3 s
        window.add(float(second), 100 * second)
    assert window.rate() == pytest.approx(100.0)
    for second in range(11, 14):
        window.add(float(second), 1000)
    # the last 5 s: 8 -> 13 s, 800 -> 1000 bytes
    assert window.rate() == pytest.approx(200 / 5)
    for second in range(14, 20):  # an upload retried: the count goes back
        window.add(float(second), 0)
    assert window.rate() == 0.0


@given(
    layer=st.integers(0, 10**6),
    layers=st.integers(0, 10**6),
    done=st.integers(0, 2**70),
    total=st.integers(0, 2**70),
    complete=st.booleans(),
    files=st.integers(0, 10**12),
    elapsed=st.floats(0, 1e9),
    rate=st.none() | st.floats(0, 1e15),
    step=st.text(max_size=300),
    width=st.integers(-1, 260),
    unicode=st.booleans(),
)
def test_never_wider_than_the_width(
    layer: int,
    layers: int,
    done: int,
    total: int,
    complete: bool,
    files: int,
    elapsed: float,
    rate: float | None,
    step: str,
    width: int,
    unicode: bool,
) -> None:
    s = Snapshot(layer, layers, done, total, complete, files, elapsed, rate, step)
    line = render(s, width, unicode=unicode)
    assert len(line) <= max(0, width)
    assert "\n" not in line
    assert "\r" not in line
    if width >= 40:
        assert line.startswith(f"layer {layer}/{layers}")
