"""Helpers for the failure tests: a small store to break, running the tool on it, and the
one assertion every failure must pass.

Rule: a failure is a non-zero status, exactly one ``streamimage: error:`` line on stderr
naming the culprit, no traceback, and no manifest.json on stdout (never a loadable image).
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio.lowlevel

from streamimage.destinations.dockerarchive import write_docker_archive
from streamimage.engine.framing import Chunk, read_span
from streamimage.engine.pipeline import Batch, Sink
from streamimage.errors import OutputError
from streamimage.image import Build, Image
from streamimage.layers.customisation import open_customisation
from streamimage.options import Options
from streamimage.report import Reporter
from streamimage.spec import parse_conf
from tests import storegen

ERROR_PREFIX = "streamimage: error:"
NOBODY = 65534
STOP_BOUND = 10.0  # seconds: only a hang takes this long (a prompt exit takes < 1 s)


@dataclass(frozen=True, slots=True)
class Store:
    """A fixture store (two layers, customisation) to break; paths are relative to root."""

    root: Path
    conf: dict[str, Any]

    @property
    def layers(self) -> list[list[str]]:
        paths: list[list[str]] = self.conf["store_layers"]
        return paths

    def write_conf(self, conf: object | None = None, name: str = storegen.CONF_NAME) -> Path:
        path = self.root / name
        path.write_text(json.dumps(self.conf if conf is None else conf))
        return path

    def with_(self, **changes: Any) -> dict[str, Any]:
        """The conf with some keys replaced."""
        return {**self.conf, **changes}

    def without(self, key: str) -> dict[str, Any]:
        return {k: v for k, v in self.conf.items() if k != key}


def make_store(parent: Path, fixture_id: str = "basic") -> Store:
    built = storegen.build_fixture(fixture_id, parent, None)
    return Store(built.root, json.loads(built.conf.read_text()))


def add_entries(directory: Path, count: int) -> None:
    """``count`` entries more below ``directory``: small files, 100 to a directory (a layer
    of many entries is hashed by worker processes, split in two past SPLIT_MIN_ENTRIES)."""
    for i in range(count):
        parent = directory / f"d{i // 100:03}"
        if i % 100 == 0:
            parent.mkdir(parents=True)
        (parent / f"f{i:05}").write_bytes(b"%d\n" % i)


def tool_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["TZ"] = storegen.DEFAULT_TZ
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(storegen.REPO_ROOT), env.get("PYTHONPATH", "")) if p
    )
    env.update(extra or {})
    return env


def run(
    store: Store,
    *args: str,
    conf: str = storegen.CONF_NAME,
    timeout: float = 60,
    preexec_fn: Callable[[], None] | None = None,
    stdout: int | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """Run the tool on ``conf`` (relative to the store root) with ``args``."""
    return subprocess.run(
        [*storegen.tool_cmd(), conf, *args],
        cwd=store.root,
        env=tool_env(),
        stdout=subprocess.PIPE if stdout is None else stdout,
        stderr=subprocess.PIPE,
        timeout=timeout,
        check=False,
        preexec_fn=preexec_fn,
    )


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith(ERROR_PREFIX)]


def member_names(data: bytes) -> list[str]:
    """The outer members tarfile can read from ``data`` (a cut-short archive gives those
    before the cut)."""
    names: list[str] = []
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r|") as tar:
            names.extend(member.name for member in tar)
    except (tarfile.TarError, EOFError, OSError):
        pass
    return names


def assert_failed(
    status: int, stdout: bytes, stderr: bytes | str, expected: int, *culprits: str
) -> str:
    """The failure contract; returns the error line."""
    text = stderr if isinstance(stderr, str) else stderr.decode("utf-8", "replace")
    assert status == expected, f"exit status {status}, expected {expected}; stderr:\n{text}"
    lines = error_lines(text)
    assert len(lines) == 1, f"expected one error line, got:\n{text}"
    for culprit in culprits:
        assert culprit in lines[0], f"{culprit!r} not named in {lines[0]!r}"
    assert "Traceback" not in text, text
    assert "manifest.json" not in member_names(stdout)
    return lines[0]


def assert_run_failed(
    result: subprocess.CompletedProcess[bytes], expected: int, *culprits: str
) -> str:
    return assert_failed(result.returncode, result.stdout, result.stderr, expected, *culprits)


def as_nobody() -> None:
    """preexec_fn: drop root, so that mode 000 means unreadable."""
    os.setgroups([])
    os.setgid(NOBODY)
    os.setuid(NOBODY)


def nobody_command(argv: Sequence[str]) -> list[str]:
    """Run streamimage's main as nobody in a Python started as root: the interpreter lives
    under /root, which nobody can't enter, so one run as root (output to /dev/null) first
    imports every module the real run needs, then the process drops root."""
    program = f"""
import os, sys
import streamimage.cli as cli
saved = os.dup(1), os.dup(2)
null = os.open(os.devnull, os.O_WRONLY)
os.dup2(null, 1)
os.dup2(null, 2)
cli.main(sys.argv[1:])
os.dup2(saved[0], 1)
os.dup2(saved[1], 2)
os.setgroups([])
os.setgid({NOBODY})
os.setuid({NOBODY})
sys.exit(cli.main(sys.argv[1:]))
"""
    return [sys.executable, "-c", program, *argv]


def chunk_bytes(chunks: Iterable[Chunk]) -> bytes:
    """The bytes ``chunks`` amount to, large files (FileSpans) read in."""
    out = bytearray()
    for chunk in chunks:
        if isinstance(chunk, bytes):
            out += chunk
        else:
            read_span(chunk, out.extend)
    return bytes(out)


class FailingSink:
    """A sink that takes ``limit`` bytes, then fails like a closed pipe."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.written = 0
        self.data = bytearray()

    async def write(self, data: bytes) -> None:
        await self.write_batch([data])

    async def write_batch(self, batch: Batch) -> None:
        for chunk in batch:
            if not isinstance(chunk, bytes):
                content = bytearray()
                read_span(chunk, content.extend)
                chunk = bytes(content)
            if self.written + len(chunk) > self.limit:
                raise OutputError("test sink: the reader went away")
            self.data += chunk
            self.written += len(chunk)
            await anyio.lowlevel.checkpoint()


def image_of(conf: dict[str, Any], options: Options) -> Image:
    """The Image of a conf (run from its store's root), with a Reporter on a StringIO."""
    checked = parse_conf(conf, "conf")
    customisation = open_customisation(checked.customisation_layer)
    return Image(Build(checked, options, None, customisation, Reporter(io.StringIO())))


async def build_docker_archive(conf: dict[str, Any], sink: Sink, options: Options) -> None:
    """Write the docker-archive of ``conf`` to ``sink``, in this process."""
    await write_docker_archive(image_of(conf, options), sink)
