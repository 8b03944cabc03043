"""Where a tar image goes: stdout, or the file ``-o`` names.

IO. Rule: only a regular file (or nothing yet) is written by temporary name and renamed
into place when the image is whole, so a failure leaves it as it was; a symlink is
followed (its target is written, the link stays); a device, FIFO or socket is opened and
written through, never replaced (a cut-short image there has no manifest.json).
"""

from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

from streamimage.engine.pipeline import STDOUT, FdSink, grow_pipe
from streamimage.errors import OutputError, UsageError


def check_output_file(path: str) -> None:
    """Raises: UsageError: ``-o PATH`` can't name an image file (empty, a directory)."""
    if not path:
        raise UsageError("-o '': not a file name")
    if path.endswith("/") or os.path.isdir(path):
        raise UsageError(f"-o {path}: is a directory; name a file (or use --format oci-dir)")


@contextmanager
def open_output(path: str | None, opened: list[FdSink] | None = None) -> Iterator[FdSink]:
    """stdout; or ``path``: a symlink is followed; a regular file (or nothing) is written
    as a temporary file beside it that becomes it only on success; a device, FIFO or
    socket is opened and written through, never replaced. The sink is also appended to
    ``opened``, for main to see a write left stuck.

    Raises:
        OutputError: the file can't be created, opened or renamed.
    """
    if path is None:
        grow_pipe(STDOUT)  # one write of a batch: one wake-up of the reader, not sixteen
        sink = FdSink(STDOUT, "stdout")
        if opened is not None:
            opened.append(sink)
        yield sink
        return
    target = os.path.realpath(path)  # the file a symlink names is the output, not the link
    try:
        special = not stat.S_ISREG(os.stat(target).st_mode)
    except OSError:
        special = False  # nothing there yet (or unreadable: creating it will say)
    if special:
        yield from _write_through(path, target, opened)
        return
    directory, name = os.path.split(target)
    try:
        fd, temporary = tempfile.mkstemp(prefix=f".{name}.", suffix=".part", dir=directory)
    except OSError as exc:
        raise OutputError(f"{path}: cannot create: {exc.strerror or exc}") from None
    sink = FdSink(fd, path)
    if opened is not None:
        opened.append(sink)
    try:
        yield sink
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)  # what open() would have made; mkstemp makes 0600
        os.close(fd)
        fd = -1
        os.replace(temporary, target)
    except BaseException:
        if fd >= 0 and not sink.busy:  # a stuck write still holds the fd: leave it
            os.close(fd)
        os.unlink(temporary)
        raise


def _write_through(path: str, target: str, opened: list[FdSink] | None) -> Iterator[FdSink]:
    """A device, FIFO or socket as the output: opened (a FIFO waits for its reader) and
    written, as a shell's redirection would; renaming over it would replace the node."""
    try:
        fd = os.open(target, os.O_WRONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise OutputError(f"{path}: cannot open for writing: {exc.strerror or exc}") from None
    grow_pipe(fd)
    sink = FdSink(fd, path)
    if opened is not None:
        opened.append(sink)
    try:
        yield sink
    finally:
        if not sink.busy:
            os.close(fd)
