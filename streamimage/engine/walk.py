"""Store paths -> the entries of a layer, in the reference's order, one lstat each.

IO: lstat, listdir, readlink, relative to an open descriptor of each directory on the
current branch (fstatat/openat skip resolving a deep path again for every entry).
Rule 1: the order is pathlib's ``sorted(chain([p], p.rglob("*")))``: the store path, then a
depth-first walk with each directory's names sorted by code point (names that are not
UTF-8 sort by their surrogate escapes), never following a symlink.
Rule 2: every OSError leaves this module as a StoreError naming the path.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import NamedTuple

from streamimage.errors import ConfError, StoreError
from streamimage.tarheader import BLKTYPE, CHRTYPE, DIRTYPE, FIFOTYPE, REGTYPE, SYMTYPE


class FileIdentity(NamedTuple):
    """What a file is, as lstat/fstat see it: a file that keeps its identity is the file
    that was hashed (a NamedTuple, not a dataclass: one is made per entry walked, and a
    tuple is made, compared and hashed several times faster)."""

    inode: int
    size: int
    mtime_ns: int
    ctime_ns: int
    mode: int

    @classmethod
    def of(cls, st: os.stat_result) -> FileIdentity:
        return cls(st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_mode)

    def changes(self, now: FileIdentity) -> str:
        """What differs in ``now``: ``size 3 -> 4, mtime_ns ...``."""
        return ", ".join(
            f"{field} {old} -> {new}"
            for field, old, new in zip(self._fields, self, now, strict=True)
            if old != new
        )


@dataclass(slots=True)  # not frozen: a frozen dataclass's __init__ costs 5x, per entry
class Entry:
    """One member of a layer, as found on disk (treat as immutable)."""

    path: str  # where it is on disk
    name: str  # its name in the layer: absolute, a directory's ending in "/"
    dir_fd: int | None  # its directory, open while the walk is in it (None: use path)
    base: str  # its name in that directory
    type: bytes  # tar type flag
    mode: int
    size: int  # content bytes: st_size for a regular file, else 0
    linkname: str
    device: tuple[int, int]
    identity: FileIdentity

    @property
    def fingerprint(self) -> int:
        """What the hash pass records and the stream pass checks (ints hash the same in
        every process, unlike str)."""
        return hash(self.identity)


def store_error(path: str, exc: OSError, doing: str) -> StoreError:
    """The one-line StoreError for an OSError met while ``doing`` something to ``path``."""
    reason = exc.strerror or str(exc)
    return StoreError(f"{path}: cannot {doing}: {reason}")


def _entry(path: str, name: str, dir_fd: int | None, base: str) -> Entry:
    try:
        st = os.stat(base, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        raise StoreError(f"{path}: does not exist") from None
    except OSError as exc:
        raise store_error(path, exc, "stat") from exc
    mode = st.st_mode
    identity = FileIdentity(st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, mode)
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
            linkname = os.readlink(base, dir_fd=dir_fd)
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
    return Entry(path, name, dir_fd, base, type_, mode & 0o7777, size, linkname, device, identity)


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _open_directory(path: str, dir_fd: int | None, base: str) -> tuple[int, list[str]]:
    """An open descriptor of the directory and its names, sorted by code point."""
    try:
        fd = os.open(base, _DIR_FLAGS, dir_fd=dir_fd)
    except OSError as exc:
        raise store_error(path, exc, "open the directory") from exc
    try:
        return fd, sorted(os.listdir(fd))
    except OSError as exc:
        os.close(fd)
        raise store_error(path, exc, "list the directory") from exc


def check_under(store_paths: Sequence[str], store_dir: str) -> None:
    """Hold every store path to be in ``store_dir`` as the file system resolves it, not only
    as it is spelled: with ``STORE/evil -> /etc``, ``STORE/evil/hostname`` is spelled under
    the store and is not. A store path that is itself a symlink stays legal (the walk
    archives the link, never what it names), and so does a store_dir reached through
    symlinks (``/nix -> /data/nix``).

    Raises:
        ConfError: a store path's directory resolves outside store_dir.
    """
    real_dir = os.path.realpath(store_dir)
    for store_path in store_paths:
        parent = os.path.realpath(os.path.dirname(os.path.abspath(store_path)))
        if parent != real_dir and not parent.startswith(real_dir.rstrip("/") + "/"):
            raise ConfError(
                f"store path {store_path!r} is not under store_dir {store_dir!r}: "
                f"a symlink on the way leads to {parent}"
            )


def walk_store_path(store_path: str) -> Generator[Entry, None, None]:
    """The store path and everything below it, in the reference's member order.

    An entry's ``dir_fd`` is open only until the walk moves on from it.

    Raises:
        StoreError: a path is missing, unreadable or of a kind a tar layer can't carry.
    """
    path = str(PurePosixPath(store_path))
    top = _entry(path, "/" + path.lstrip("/"), None, path)
    yield top
    if top.type != DIRTYPE:
        return
    # Depth-first with an explicit stack: a deep tree must not meet the recursion limit.
    fd, names = _open_directory(path, None, path)
    stack = [(fd, path, top.name, iter(names))]
    try:
        while stack:
            dir_fd, parent_path, parent_name, children = stack[-1]
            for child in children:
                entry = _entry(f"{parent_path}/{child}", parent_name + child, dir_fd, child)
                yield entry
                if entry.type == DIRTYPE:
                    fd, names = _open_directory(entry.path, dir_fd, child)
                    stack.append((fd, entry.path, entry.name, iter(names)))
                    break
            else:
                stack.pop()
                os.close(dir_fd)
    finally:
        for dir_fd, *_ in stack:
            os.close(dir_fd)
