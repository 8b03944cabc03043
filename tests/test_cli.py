"""The command line's own promises: no image on a terminal, the console script and
``python -m`` are one command, stdout carries nothing but the image."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from tests import storegen

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = "examples/hello/conf.json"


def test_refuses_to_write_an_image_to_a_terminal() -> None:
    parent, child = os.openpty()
    try:
        result = subprocess.run(
            [sys.executable, "-m", "streamimage", EXAMPLE],
            cwd=REPO,
            stdout=child,
            stderr=subprocess.PIPE,
            timeout=60,
            check=False,
        )
        os.close(child)
        child = -1
        os.set_blocking(parent, False)
        try:
            shown = os.read(parent, 65536)
        except (BlockingIOError, OSError):
            shown = b""
    finally:
        os.close(parent)
        if child >= 0:
            os.close(child)
    assert result.returncode == 2
    errors = result.stderr.decode().splitlines()
    assert errors == [
        "streamimage: error: refusing to write an image to a terminal: "
        "redirect stdout or use -o FILE"
    ]
    assert shown == b""


def test_console_script_and_module_write_the_same_image(tmp_path: Path) -> None:
    script = shutil.which("streamimage")
    if script is None:
        pytest.skip("the console script is not installed (pip install -e .)")
    by_module = subprocess.run(
        [sys.executable, "-m", "streamimage", EXAMPLE, "-q"],
        cwd=REPO,
        capture_output=True,
        timeout=60,
        check=True,
    )
    by_script = subprocess.run(
        [script, EXAMPLE, "-q", "-o", str(tmp_path / "hello.tar")],
        cwd=REPO,
        capture_output=True,
        timeout=60,
        check=True,
    )
    assert by_script.stdout == b""  # -o: stdout stays empty
    assert (tmp_path / "hello.tar").read_bytes() == by_module.stdout
    with tarfile.open(tmp_path / "hello.tar") as archive:
        assert archive.getnames()[-1] == "manifest.json"


def test_the_shipped_example_is_the_references_image() -> None:
    reference = storegen.reference_cmd()
    if reference is None:
        pytest.skip(f"reference absent: {storegen.reference_path()}")
    expected = storegen.run_tool(reference, EXAMPLE, cwd=REPO)
    actual = storegen.run_tool(storegen.tool_cmd(), EXAMPLE, cwd=REPO)
    assert expected.returncode == actual.returncode == 0
    assert actual.stdout == expected.stdout


def test_the_command_line_imports_no_http_client_until_a_push() -> None:
    # httpx and the registry client take ~120 ms to import, about half of the command's
    # start: a run writing a file or stdout must not pay it (benchmarks.layers counts it)
    probe = (
        "import sys, streamimage.cli; print(sorted(m for m in sys.modules"
        " if m.startswith(('httpx', 'streamimage.remote.client'))))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    assert proc.stdout.strip() == "[]"
