"""Store paths -> the entries of a layer, in the reference's order, one lstat each.

IO: lstat, listdir, readlink; nothing is opened.
Rule 1: the order is pathlib's ``sorted(chain([p], p.rglob("*")))``: the store path, then a
depth-first walk with each directory's names sorted by code point (names that are not
UTF-8 sort by their surrogate escapes), never following a symlink.
Rule 2: every OSError leaves this module as a StoreError naming the path.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import PurePosixPath

from streamimage.errors import StoreError
from streamimage.tarheader import BLKTYPE, CHRTYPE, DIRTYPE, FIFOTYPE, REGTYPE, SYMTYPE


@dataclass(slots=True)  # not frozen: a frozen dataclass's __init__ costs 5x, per entry
class Entry:
    """One member of a layer, as found on disk (treat as immutable)."""

    path: str  # where it is on disk
    name: str  # its name in the layer: absolute, a directory's ending in "/"
    type: bytes  # tar type flag
    mode: int
    size: int  # content bytes: st_size for a regular file, else 0
    linkname: str
    device: tuple[int, int]
    identity: tuple[int, int, int, int, int]  # inode, size, mtime_ns, ctime_ns, mode

    @property
    def fingerprint(self) -> int:
        """What the hash pass records and the stream pass checks (ints hash the same in
        every process, unlike str)."""
        return hash(self.identity)


def store_error(path: str, exc: OSError, doing: str) -> StoreError:
    """The one-line StoreError for an OSError met while ``doing`` something to ``path``."""
    reason = exc.strerror or str(exc)
    return StoreError(f"{path}: cannot {doing}: {reason}")


def _entry(path: str, name: str) -> Entry:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise StoreError(f"{path}: does not exist") from None
    except OSError as exc:
        raise store_error(path, exc, "stat") from exc
    mode = st.st_mode
    identity = (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, mode)
    size, linkname, device = 0, "", (0, 0)
    if stat.S_ISREG(mode):
        # A second name of an inode also goes in as a regular file with all of its content
        # (the reference turns tarfile's hardlinks back into files), so nothing to track.
        type_, size = REGTYPE, st.st_size
    elif stat.S_ISDIR(mode):
        type_, name = DIRTYPE, name + "/"
    elif stat.S_ISLNK(mode):
        type_ = SYMTYPE
        try:
            linkname = os.readlink(path)
        except OSError as exc:
            raise store_error(path, exc, "read the symlink") from exc
    elif stat.S_ISFIFO(mode):
        type_ = FIFOTYPE
    elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        type_ = CHRTYPE if stat.S_ISCHR(mode) else BLKTYPE
        device = (os.major(st.st_rdev), os.minor(st.st_rdev))
    else:
        kind = "a socket" if stat.S_ISSOCK(mode) else f"of file type {stat.S_IFMT(mode):o}"
        raise StoreError(f"{path}: is {kind}, which a tar layer cannot carry")
    return Entry(path, name, type_, mode & 0o7777, size, linkname, device, identity)


def _names(directory: str) -> list[str]:
    try:
        return sorted(os.listdir(directory))
    except OSError as exc:
        raise store_error(directory, exc, "list the directory") from exc


def walk_store_path(store_path: str) -> Iterator[Entry]:
    """The store path and everything below it, in the reference's member order.

    Raises:
        StoreError: a path is missing, unreadable or of a kind a tar layer can't carry.
    """
    path = str(PurePosixPath(store_path))
    top = _entry(path, "/" + path.lstrip("/"))
    yield top
    if top.type != DIRTYPE:
        return
    # Depth-first with an explicit stack: a deep tree must not meet the recursion limit.
    stack = [(path, top.name, iter(_names(path)))]
    while stack:
        parent_path, parent_name, names = stack[-1]
        for child in names:
            entry = _entry(f"{parent_path}/{child}", parent_name + child)
            yield entry
            if entry.type == DIRTYPE:
                stack.append((entry.path, entry.name, iter(_names(entry.path))))
                break
        else:
            stack.pop()
