# Runs one command with its stdout on a pipe into a consumer that reads every byte, and
# measures it. Rule: every tool and every baseline goes through `run_once`, so all of them
# see the same consumer and are timed the same way: wall time from spawn to reap, and the
# child's rusage from os.wait4. Two consumers: "harness" (this process drains the pipe into
# a sha256, 1 MiB reads) and "process" (`openssl dgst -sha256` in a process of its own, as
# `docker load` hashes every layer it reads: what a user piping the image sees).
from __future__ import annotations

import contextlib
import fcntl
import functools
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
from typing import Literal

READ_SIZE = 1024 * 1024  # bytes per readinto() of the child's stdout
PIPE_SIZE = 1024 * 1024  # F_SETPIPE_SZ; the Linux default cap (/proc/sys/fs/pipe-max-size)
CONSUMER_ARGV = ("openssl", "dgst", "-sha256")  # the "process" consumer
Consumer = Literal["harness", "process"]
COLD = ("env", "STREAMIMAGE_NO_CACHE=1")  # streamimage with its digest cache off
CONSUMERS: tuple[Consumer, ...] = ("process", "harness")


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
    exit_code: int  # the command's; the consumer's when the command succeeded and it failed
    consumer: Consumer = "harness"
    consumer_cpu_s: float = 0.0  # user + system time of the "process" consumer


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
    consumer: Consumer = "harness",
) -> RunResult:
    """Runs `argv`, drains and hashes its stdout, reaps it with os.wait4.

    With `consumer="process"`, `openssl dgst -sha256` reads the pipe instead of this
    process (`progress` is then not updated; the output is always hashed).
    stderr goes to `log` (appended, after a header line) or to /dev/null.
    Raises OSError when the command (or the consumer) cannot be started.
    """
    if consumer == "process":
        return _run_into_process(label, argv, log, cwd, pipe_size, on_start)
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


def _run_into_process(
    label: str,
    argv: Sequence[str],
    log: Path | None,
    cwd: Path | None,
    pipe_size: int,
    on_start: Callable[[int], None] | None,
) -> RunResult:
    with open(log, "ab") if log is not None else open(os.devnull, "wb") as err:
        err.write(f"=== {label}: {shlex.join(argv)} | {shlex.join(CONSUMER_ARGV)}\n".encode())
        err.flush()
        harness_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        read_end, write_end = os.pipe()
        if pipe_size:
            with contextlib.suppress(OSError):
                fcntl.fcntl(write_end, fcntl.F_SETPIPE_SZ, pipe_size)
        started = time.perf_counter()
        try:
            # close_fds (the default) keeps the write end out of the consumer: it sees EOF
            # once the command's tree has closed its stdout.
            reader = subprocess.Popen(
                CONSUMER_ARGV, stdin=read_end, stdout=subprocess.PIPE, stderr=err
            )
        finally:
            os.close(read_end)
        try:
            proc = subprocess.Popen(argv, stdout=write_end, stderr=err, cwd=cwd)
        except OSError:
            os.close(write_end)
            _reap(reader)
            raise
        os.close(write_end)
        try:
            if on_start is not None:
                on_start(proc.pid)
            assert reader.stdout is not None
            printed = reader.stdout.read()
            consumed = _consumed(reader)
            reader_code, reader_usage = _wait(reader)
            code, usage = _wait(proc)
            wall = time.perf_counter() - started
        finally:
            _reap(proc)
            _reap(reader)
    return RunResult(
        label=label,
        wall_s=wall,
        cpu_s=usage.ru_utime + usage.ru_stime,
        out_bytes=consumed - consumer_overhead(),
        sha256=printed.split()[-1].decode() if printed.split() else "",
        maxrss_kib=usage.ru_maxrss,
        harness_rss_kib=harness_rss,
        exit_code=code or reader_code,
        consumer="process",
        consumer_cpu_s=reader_usage.ru_utime + reader_usage.ru_stime,
    )


def _wait(proc: subprocess.Popen[bytes]) -> tuple[int, resource.struct_rusage]:
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, usage


def _reap(proc: subprocess.Popen[bytes]) -> None:
    if proc.returncode is None:
        proc.kill()
        proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()


def _consumed(proc: subprocess.Popen[bytes]) -> int:
    """Bytes the exited (not yet reaped) `proc` read: `rchar` of /proc/PID/io, which a
    zombie keeps until it is reaped. It counts every read(), its config file's too: hence
    consumer_overhead()."""
    os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)
    with open(f"/proc/{proc.pid}/io") as f:
        for line in f:
            if line.startswith("rchar:"):
                return int(line.split()[1])
    raise OSError(f"/proc/{proc.pid}/io: no rchar line")


@functools.cache
def consumer_overhead() -> int:
    """What the "process" consumer reads besides its input (openssl.cnf, ELF headers):
    its `rchar` for an empty input. Raises OSError when openssl cannot be run."""
    with open(os.devnull, "rb") as empty:
        proc = subprocess.Popen(
            CONSUMER_ARGV, stdin=empty, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            return _consumed(proc)
        finally:
            proc.wait()


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def log_tail(log: Path, lines: int = 5) -> str:
    """The last lines of a log, for an error message."""
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""
