"""What a successful run shows on stderr: the reference's lines and a summary by default,
a live progress line on a terminal or with --progress=always, nothing with --quiet; the
image on stdout is the same bytes whatever is shown.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from tests import storegen
from tests.failures import Store, make_store, run, tool_env

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
    assert "written" not in never.stderr.decode()


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
    assert re.search(r"B written, \d+ files, ", shown)
    assert "Done." in shown
    assert any(SUMMARY.match(part) for part in re.split(r"[\r\n]", shown))


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
    assert b"B written" in shown
    assert result.stdout == run(store, "--progress", "never").stdout


def test_quiet_shows_nothing_on_success(store: Store) -> None:
    result = run(store, "--quiet", "--progress", "always")
    assert result.returncode == 0
    assert result.stderr == b""
