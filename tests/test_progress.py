"""What a successful run shows on stderr: the reference's lines and a summary by default,
a live progress line on a terminal or with --progress=always, nothing with --quiet; the
image on stdout is the same bytes whatever is shown.
"""

from __future__ import annotations

import io
import json
import os
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import anyio
import pytest

from streamimage.engine.framing import Chunk
from streamimage.imagejson import Descriptor, Digest
from streamimage.layers import STORE, Layer
from streamimage.report import CLEAR_LINE, PLAIN_WIDTH, REFRESH, Reporter
from tests import storegen
from tests.conftest import require_command
from tests.failures import Store, make_store, run, tool_env

PROGRESS = re.compile(r"^layer \d+/\d+  ")
SUMMARY = re.compile(r"^streamimage: (\d+) layers, (\d+) bytes in [\d.]+ s \([\d.]+ MB/s\)$")
REFERENCE_LINES = ["No 'fromImage' provided", "Creating layer 1 from paths: "]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Store:
    built = make_store(tmp_path_factory.mktemp("progress"))
    built.write_conf()
    return built


def test_default_shows_the_reference_lines_and_a_summary(store: Store) -> None:
    result = run(store)
    lines = result.stderr.decode().splitlines()
    assert result.returncode == 0
    assert lines[0] == REFERENCE_LINES[0]
    assert lines[1].startswith(REFERENCE_LINES[1])
    assert lines[-2] == "Done."
    summary = SUMMARY.match(lines[-1])
    assert summary is not None, lines[-1]
    assert int(summary[1]) == 3
    assert int(summary[2]) == len(result.stdout)
    assert "\r" not in result.stderr.decode()  # no live display off a terminal


def test_progress_never_shows_only_the_lines(store: Store) -> None:
    default = run(store)
    never = run(store, "--progress", "never")
    assert never.stdout == default.stdout
    strip = [line for line in never.stderr.decode().splitlines() if not SUMMARY.match(line)]
    assert strip == [
        line for line in default.stderr.decode().splitlines() if not SUMMARY.match(line)
    ]
    assert not any(PROGRESS.match(line) for line in never.stderr.decode().splitlines())


def test_progress_always_leaves_the_image_unchanged(store: Store, tmp_path: Path) -> None:
    never = run(store, "--progress", "never")
    errors = tmp_path / "stderr"
    with errors.open("wb") as file:
        always = subprocess.run(
            [*storegen.tool_cmd(), storegen.CONF_NAME, "--progress", "always"],
            cwd=store.root,
            env=tool_env(),
            stdout=subprocess.PIPE,
            stderr=file,
            timeout=60,
            check=True,
        )
    assert always.stdout == never.stdout
    shown = errors.read_text()
    # off a terminal: whole lines (here, a short run: only the last), no redraws
    assert "\r" not in shown
    assert "\x1b" not in shown
    progress = [line for line in shown.splitlines() if PROGRESS.match(line)]
    assert progress, shown
    assert all(len(line) <= PLAIN_WIDTH for line in progress)
    assert progress[-1].startswith("layer 3/3  ")
    assert " 100%  " in progress[-1]
    assert "Done." in shown
    assert SUMMARY.match(shown.splitlines()[-1])


def test_progress_auto_shows_on_a_terminal(store: Store) -> None:
    parent, child = os.openpty()
    try:
        result = subprocess.run(
            [*storegen.tool_cmd(), storegen.CONF_NAME],
            cwd=store.root,
            env=tool_env(),
            stdout=subprocess.PIPE,
            stderr=child,
            timeout=60,
            check=True,
        )
        os.close(child)
        child = -1
        shown = b""
        while True:
            try:
                data = os.read(parent, 65536)
            except OSError:  # EIO: the terminal's last writer is gone
                break
            if not data:
                break
            shown += data
    finally:
        os.close(parent)
        if child >= 0:
            os.close(child)
    assert re.search(rb"\r\x1b\[Klayer \d/3  ", shown)  # drawn in place
    done = shown.index(b"Done.")
    assert shown[:done].endswith(b"\r\x1b[K")  # and cleared before the summary
    assert not re.search(rb"layer \d", shown[done:])
    assert result.stdout == run(store, "--progress", "never").stdout


def test_quiet_shows_nothing_on_success(store: Store) -> None:
    result = run(store, "--quiet", "--progress", "always")
    assert result.returncode == 0
    assert result.stderr == b""


def test_progress_counts_the_blobs_of_an_oci_dir_and_skips_those_there(
    store: Store, tmp_path: Path
) -> None:
    layout = tmp_path / "layout"
    first = run(store, "--format", "oci-dir", "-o", str(layout), "--progress", "always")
    assert first.returncode == 0, first.stderr
    last = [line for line in first.stderr.decode().splitlines() if PROGRESS.match(line)][-1]
    sizes = re.search(r"  ([\d.]+ \w+)/([\d.]+ \w+)  100%", last)
    assert sizes is not None, last
    assert sizes[1] == sizes[2] != "0 B"  # each blob file's bytes counted
    again = run(store, "--format", "oci-dir", "-o", str(layout), "--progress", "always")
    assert again.returncode == 0, again.stderr
    last = [line for line in again.stderr.decode().splitlines() if PROGRESS.match(line)][-1]
    assert "  0 B/0 B  100%" in last  # every blob was there: nothing to send


@pytest.mark.parametrize("image_format", ["docker", "oci"])
def test_the_total_of_compressed_layers_is_known_and_reached(
    store: Store, image_format: str
) -> None:
    # a compressed layer's size is known once compressed: by its hash pass (store
    # layers) or ahead of streaming (the customisation layer)
    result = run(store, "--format", image_format, "--compress", "gzip", "--progress", "always")
    assert result.returncode == 0, result.stderr
    last = [line for line in result.stderr.decode().splitlines() if PROGRESS.match(line)][-1]
    sizes = re.match(r"layer 3/3  ([\d.]+ \w+)/([\d.]+ \w+)  100%", last)
    assert sizes is not None, last
    assert sizes[1] == sizes[2] != "0 B"


def test_a_layer_repeated_in_an_oci_archive_is_counted_once(store: Store) -> None:
    conf = store.write_conf(store.with_(store_layers=[store.layers[0]]), "once.json")
    twice = store.write_conf(store.with_(store_layers=[store.layers[0]] * 2), "twice.json")
    lines = []
    for name in (conf.name, twice.name):
        result = run(store, "--format", "oci", "--progress", "always", conf=name)
        assert result.returncode == 0, result.stderr
        lines.append(
            [line for line in result.stderr.decode().splitlines() if PROGRESS.match(line)][-1]
        )
    # the same blob is written once: the total to write is the same
    assert lines[0].startswith("layer 2/2  ")
    assert lines[1].startswith("layer 3/3  ")
    assert lines[0].split("  ")[1:3] == lines[1].split("  ")[1:3]
    assert " 100%" in lines[1]


class Sized(Layer):
    """A layer that is only a size, known or not yet."""

    kind = STORE
    history = ("sized",)

    def __init__(self, size: int | None) -> None:
        self.size = size

    def known_size(self) -> int | None:
        return self.size

    async def diff_id(self) -> Digest:
        raise NotImplementedError

    async def descriptor(self) -> Descriptor:
        raise NotImplementedError

    def chunks(self) -> Iterator[Chunk]:
        raise NotImplementedError


@dataclass
class Upload:
    written: int = 0


def test_the_total_is_the_layers_once_every_size_is_known() -> None:
    reporter = Reporter(io.StringIO(), live=True)
    layers = [Sized(1000), Sized(None), Sized(24)]
    reporter.plan(layers)
    upload = Upload()
    reporter.watch(upload)
    reporter.layer(1)
    upload.written = 600
    before = reporter.snapshot()
    assert (before.layer, before.layers, before.done) == (1, 3, 600)
    assert before.total == 1024
    assert not before.complete
    layers[1].size = 2000
    reporter.layer(2)
    after = reporter.snapshot()
    assert after.layer == 2
    assert after.total == 3024
    assert after.complete


def test_a_skipped_blob_leaves_the_total() -> None:
    # a destination that has a blob already (an OCI layout, a registry) doesn't send it
    reporter = Reporter(io.StringIO(), live=True)
    reporter.plan([Sized(1000), Sized(500)])
    reporter.skip(1000)
    assert reporter.snapshot().total == 500
    assert reporter.snapshot().complete


PRINTED = "Creating layer 1 from paths: ['nix/store/x']"


class Terminal(io.StringIO):
    """A terminal of COLUMNS columns, as far as the Reporter can tell."""

    def isatty(self) -> bool:
        return True


async def test_on_a_terminal_the_line_is_redrawn_in_place_below_the_lines(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("COLUMNS", "60")
    stream = Terminal()
    reporter = Reporter(stream, live=True)
    reporter.plan([Sized(2000), Sized(3000)])
    sink = Upload(written=1000)
    async with anyio.create_task_group() as tg:
        tg.start_soon(reporter.show_progress, [sink])
        await anyio.sleep(0.05)
        reporter.line(PRINTED)
        await anyio.sleep(REFRESH * 1.5)
        tg.cancel_scope.cancel()
    shown = stream.getvalue()
    assert "\n" not in shown.replace(PRINTED + "\n", "")
    draws = shown.split(CLEAR_LINE)
    assert draws[0] == ""
    assert draws[-1] == ""  # cleared at the end
    lines = [d for d in draws if d.startswith("layer ")]
    assert len(lines) >= 2
    assert all(len(line) <= 59 for line in lines)  # one column spare
    assert lines[-1].startswith("layer 0/2  0.98 KiB/4.88 KiB  20%")
    # the line printed went where the live line was, and the live line below it
    index = draws.index(PRINTED + "\n")
    assert draws[index + 1].startswith("layer 0/2  ")


async def test_off_a_terminal_the_last_line_is_written_when_the_display_stops() -> None:
    stream = io.StringIO()
    reporter = Reporter(stream, live=True)
    reporter.plan([Sized(2000), Sized(3000)])
    reporter.layer(2)
    async with anyio.create_task_group() as tg:
        tg.start_soon(reporter.show_progress, [Upload(written=5000 + 1024)])
        await anyio.sleep(0.05)
        tg.cancel_scope.cancel()
    (line,) = stream.getvalue().splitlines()
    assert stream.getvalue() == line + "\n"
    assert line.startswith("layer 2/2  4.88 KiB/4.88 KiB  100%  ")
    assert len(line) <= PLAIN_WIDTH


BIG_LAYERS = 4
BIG_FILE = 8 * 2**20  # bytes per layer: a slow reader makes the run last a few seconds
SLOW_READER = "import os, time\nwhile os.read(0, 65536):\n    time.sleep(0.03)\n"  # ~2 MiB/s
TMUX_WAIT = 30.0  # seconds: only a broken display takes this long


@pytest.fixture(scope="module")
def big_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Store layers of one large file each (and short names: the reference's lines fit
    in 80 columns), the conf in conf.json."""
    root = tmp_path_factory.mktemp("big")
    builder = storegen.StoreBuilder(root)
    builder.dir("nix", 0o755)
    builder.dir(storegen.STORE_DIR, 0o755)
    storegen.write_customisation_layer(root / storegen.CUSTOMISATION_DIR)
    layers = []
    for number in range(BIG_LAYERS):
        path = storegen.store_path(str(number))
        builder.file(f"{path}/data", storegen.content(str(number), BIG_FILE), 0o444)
        layers.append([path])
    conf = storegen.base_conf("progress", layers)
    (root / storegen.CONF_NAME).write_text(json.dumps(conf))
    return root


def tmux(socket: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["tmux", "-S", str(socket), *args],
        env=tool_env(),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


@pytest.mark.slow
@pytest.mark.parametrize("columns", [80, 200])
def test_on_a_real_terminal_the_line_fits_and_says_how_far(
    big_store: Path, tmp_path: Path, columns: int
) -> None:
    """The real command under tmux, its stdout read slowly: the pane, captured mid-run
    (wrapped lines joined), holds one live line that says layer k/N and a percentage,
    and no line wider than the pane."""
    require_command("tmux")
    socket = tmp_path / "tmux"
    run_it = (
        f"cd {shlex.quote(str(big_store))} && "
        f"{shlex.join([*storegen.tool_cmd(), storegen.CONF_NAME])} "
        f"| {shlex.join([sys.executable, '-c', SLOW_READER])}; sleep 60"
    )
    started = tmux(
        socket, "-f", "/dev/null", "new-session", "-d", "-x", str(columns), "-y", "20", run_it
    )
    if started.returncode != 0:
        pytest.skip(f"tmux can't start here: {started.stderr.strip()}")
    try:
        pane: list[str] = []
        deadline = time.monotonic() + TMUX_WAIT
        while time.monotonic() < deadline:
            captured = tmux(socket, "capture-pane", "-p", "-J")
            pane = [line.rstrip() for line in captured.stdout.splitlines() if line.strip()]
            live = [line for line in pane if PROGRESS.match(line)]
            if live and re.search(r"  \d+%  .*ETA \d+:\d\d", live[0]):
                break
            time.sleep(0.2)
        else:
            pytest.fail("no progress line with a percentage and an ETA:\n" + "\n".join(pane))
    finally:
        tmux(socket, "kill-server")
    assert len(live) == 1, pane  # redrawn in place: no stale copies above
    assert re.match(rf"layer [1-{BIG_LAYERS + 1}]/{BIG_LAYERS + 1}  ", live[0])
    assert all(len(line) <= columns for line in pane), pane
    assert len(live[0]) < columns  # the last column stays free
    if columns >= 200:
        assert re.search(r"  \[#*\.*\]  ", live[0])  # room for a bar
