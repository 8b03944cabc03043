"""Worker processes: a function run in a forked child, its result or exception sent back.

ASYNC (the parent waits in a worker thread); the child runs plain blocking code.
Rule: a child is owned by the task that forked it: killed when that task is cancelled,
always reaped, so no worker outlives the run; a child that dies without an answer is a
ChildError, never a hang. Where fork is missing or unsafe (FORK is None), there are no
worker processes: hash passes run in threads (``--hash-in thread``, then the default).
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
from collections.abc import Callable
from multiprocessing.connection import Connection
from multiprocessing.context import BaseContext, ForkContext
from typing import Any, TypeVar, cast

import anyio
import anyio.to_thread

from streamimage.engine.pipeline import STDOUT
from streamimage.errors import ChildError

T = TypeVar("T")


def fork_context() -> ForkContext | None:
    """The fork start method, or None where it is missing, or unsafe: on macOS a forked
    child of a threaded process may crash in system libraries (CPython's default start
    method there is spawn since 3.8). Spawn would need every argument pickled and the
    spool's open files passed anew: threads stand in instead."""
    if sys.platform == "darwin" or "fork" not in multiprocessing.get_all_start_methods():
        return None
    return multiprocessing.get_context("fork")


FORK = fork_context()
# Shared memory and pipes between hash passes: fork's, so that workers inherit them; a
# thread's way where there are no workers.
SHARED: BaseContext = FORK if FORK is not None else multiprocessing.get_context()

# The signals whose default is to end a process, and that a user or a supervisor sends to
# stop a run: the command line turns each into a clean stop (one line, its spool and
# workers gone, no partial output left), a worker dies of it. SIGPIPE is not among them:
# Python ignores it, and a reader gone is an EPIPE that says so.
STOP_SIGNALS = (
    signal.SIGINT,
    signal.SIGTERM,
    signal.SIGHUP,
    signal.SIGQUIT,
    signal.SIGUSR1,
    signal.SIGUSR2,
    signal.SIGALRM,
)


def _child(send: Connection, func: Callable[..., T], args: tuple[Any, ...]) -> None:
    # In the forked child. The parent's signal handling is the parent's: its wakeup fd
    # would carry a signal the child got to the parent's event loop. stdout is the image,
    # and not the child's to keep open.
    signal.set_wakeup_fd(-1)
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_DFL)
    fd = os.open(os.devnull, os.O_WRONLY)
    os.dup2(fd, STDOUT)
    os.close(fd)
    try:
        outcome: tuple[bool, Any] = (True, func(*args))
    except BaseException as exc:  # every failure goes back to the parent, which raises it
        outcome = (False, exc)
    send.send(outcome)
    send.close()


async def run_in_child(func: Callable[..., T], *args: Any) -> T:
    """``func(*args)`` in a forked child process, its result (or exception) pickled back.

    Forked, not spawned: a spawned interpreter (anyio.to_process) starts Python and
    imports the package again, about 0.3 s and 0.2 s of CPU per worker here, on the
    critical path of the largest layer. The fork happens in a worker thread, so the child
    is not inside this event loop. Cancelling kills the child; it is always reaped.

    Raises:
        whatever ``func`` raised; ChildError if the child died without an answer, or if
        there is no fork (FORK is None: hash in threads instead).
    """
    if FORK is None:
        raise ChildError("no worker processes here: fork is missing or unsafe; hash in threads")
    receive, send = FORK.Pipe(duplex=False)
    child = FORK.Process(target=_child, args=(send, func, args), daemon=True)
    try:
        await anyio.to_thread.run_sync(child.start)
        send.close()
        try:
            ok, value = await anyio.to_thread.run_sync(receive.recv, abandon_on_cancel=True)
        except EOFError:
            raise ChildError(f"a hash worker died (exit status {child.exitcode})") from None
    finally:
        send.close()
        if child.pid is not None:
            if child.is_alive():
                child.kill()
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(child.join)
        receive.close()
    if not ok:
        raise value
    return cast(T, value)


def cpu_workers() -> int:
    """How many hash passes may run at once: one per CPU this process may use (its
    affinity mask where the platform has one, as os.process_cpu_count of Python 3.13;
    else every CPU)."""
    process_cpu_count: Callable[[], int | None] | None = getattr(os, "process_cpu_count", None)
    if process_cpu_count is not None:
        return max(1, process_cpu_count() or 1)
    if hasattr(os, "sched_getaffinity"):  # Linux, some BSDs; not macOS
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)
