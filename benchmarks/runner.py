# Runs one command with its stdout on a pipe that the harness drains, and measures it.
# Rule: every tool and every baseline goes through `run_once`, so all of them see the same
# consumer (1 MiB reads into a sha256, data discarded) and are timed the same way: wall time
# from spawn to reap, and the child's rusage from os.wait4.
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import resource
import shlex
import statistics
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

READ_SIZE = 1024 * 1024  # bytes per readinto() of the child's stdout
PIPE_SIZE = 1024 * 1024  # F_SETPIPE_SZ; the Linux default cap (/proc/sys/fs/pipe-max-size)


@dataclass(frozen=True, slots=True)
class RunResult:
    """One timed run of one command."""

    label: str
    wall_s: float
    cpu_s: float  # user + system time of the child and all it reaped
    out_bytes: int  # bytes the harness read from the child's stdout
    sha256: str  # of those bytes ("" when not hashed)
    # ru_maxrss from wait4, KiB: the largest single process in the child's tree. Linux
    # carries the parent's high-water RSS across fork+exec, so the harness's own peak at
    # spawn is a floor under this number (`harness_rss_kib`).
    maxrss_kib: int
    harness_rss_kib: int
    exit_code: int


class Progress:
    """A live byte counter, shared with a sampler thread (a plain int store is atomic)."""

    def __init__(self) -> None:
        self.out_bytes = 0


def shell_pipeline(*commands: Sequence[str]) -> list[str]:
    """argv running `commands` as one bash pipeline that fails if any stage fails."""
    script = " | ".join(shlex.join(command) for command in commands)
    return ["bash", "-o", "pipefail", "-c", script]


def run_once(
    label: str,
    argv: Sequence[str],
    *,
    log: Path | None = None,
    cwd: Path | None = None,
    hash_output: bool = True,
    pipe_size: int = PIPE_SIZE,
    progress: Progress | None = None,
    on_start: Callable[[int], None] | None = None,
) -> RunResult:
    """Runs `argv`, drains and hashes its stdout, reaps it with os.wait4.

    stderr goes to `log` (appended, after a header line) or to /dev/null.
    Raises OSError when the command cannot be started.
    """
    digest = hashlib.sha256()
    buffer = memoryview(bytearray(READ_SIZE))
    counter = progress if progress is not None else Progress()
    with open(log, "ab") if log is not None else open(os.devnull, "wb") as err:
        err.write(f"=== {label}: {shlex.join(argv)}\n".encode())
        err.flush()
        harness_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        started = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=err, cwd=cwd, bufsize=0)
        try:
            assert proc.stdout is not None
            if pipe_size:
                # An unprivileged size over pipe-max-size fails: keep the default then.
                with contextlib.suppress(OSError):
                    fcntl.fcntl(proc.stdout.fileno(), fcntl.F_SETPIPE_SZ, pipe_size)
            if on_start is not None:
                on_start(proc.pid)
            fd = proc.stdout.fileno()
            while n := os.readv(fd, [buffer]):
                if hash_output:
                    digest.update(buffer[:n])
                counter.out_bytes += n
            _, status, usage = os.wait4(proc.pid, 0)
            wall = time.perf_counter() - started
            proc.returncode = os.waitstatus_to_exitcode(status)
        finally:
            if proc.returncode is None:
                proc.kill()
                proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()
    return RunResult(
        label=label,
        wall_s=wall,
        cpu_s=usage.ru_utime + usage.ru_stime,
        out_bytes=counter.out_bytes,
        sha256=digest.hexdigest() if hash_output else "",
        maxrss_kib=usage.ru_maxrss,
        harness_rss_kib=harness_rss,
        exit_code=proc.returncode,
    )


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def log_tail(log: Path, lines: int = 5) -> str:
    """The last lines of a log, for an error message."""
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""
