"""Kept frames: every layer's spool, kept beside the digest cache, so that a warm run
sends the layer's headers and small files from them instead of framing them again from
the store.

IO: files in ``CACHE_DIR/frames``: for each kept layer a recipe ``KEY.json`` (the layer's
segments: where each piece of its tar is, in the spool files or, for a large file, in the
store) and the spool files it names ``KEY.TOKEN.N`` (linked from the run's spool when on
the same file system, else copied).
Rule 1: kept frames are used only with their digest cache entry: the recipe names the
fingerprint and diff_id it was framed with, and the cache's lookup has just walked the
store and found that fingerprint (every entry's lstat). A warm layer's entries are walked
once, by that lookup; its large files are held to their identity when sent, as always.
Rule 2: damage never makes a wrong image: the recipe carries a checksum of itself, and
each spool file's identity (inode, size, mtime, ctime, mode) as it was once kept, which
``load`` holds the file it opens to, as the store's files are held to theirs: a file
written to, replaced or cut short since is a miss (the layer is hashed again, its frames
kept anew). The pieces are then sent from the files ``load`` opened (sendfile: never read
here); a file cut short after that fails the send, and the next run's ``load`` sees it.
Rule 3: writers never change a file in place: a new spool file has a name of its own, a
recipe is replaced by rename; a reader keeps the files it opened. Frames not used for
KEEP_SECONDS are pruned, and the least recently used beyond MAX_BYTES, once a run (at its
first save: a prune reads every recipe, and a run keeps the frames of each of its layers).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass

from streamimage.engine.framing import FileSpan
from streamimage.engine.spool import Segment, Segments
from streamimage.engine.walk import FileIdentity

FRAMES_DIR = "frames"
MAX_BYTES = 4 * 1024**3  # bytes of spool files kept, the least recently used pruned first
KEEP_SECONDS = 30 * 24 * 3600  # as the digest cache's entries
ORPHAN_SECONDS = 3600  # a spool file no recipe names is removed after this (a writer's, until)
VERSION = 2  # 2: spool files held to their identity (1: a crc32 of each piece)
COPY_SIZE = 8 * 1024 * 1024
_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass(frozen=True, slots=True)
class Frames:
    """A layer's kept frames, opened: its spool files and segments."""

    fds: tuple[int, ...]
    segments: Segments
    size: int  # bytes in the spool files

    def close(self) -> None:
        for fd in self.fds:
            os.close(fd)


def _checksum(document: dict[str, object]) -> str:
    text = json.dumps(document, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def _segment_row(segment: Segment) -> list[object]:
    span = segment.span
    if span is None:
        return [segment.entries, segment.offset, segment.size, segment.file]
    return [segment.entries, span.path, *span.identity]


def _integers(values: Sequence[object]) -> list[int]:
    """Raises: ValueError: one is not an int (JSON numbers only: no bool, no text)."""
    if not all(type(value) is int for value in values):
        raise ValueError("not a segment")
    return [int(str(value)) for value in values]


def _segment_of(row: Sequence[object]) -> Segment:
    """Raises: ValueError: not a row _segment_row writes."""
    if len(row) == 4:
        entries, offset, size, file = _integers(row)
        return Segment(entries, offset, size, None, file)
    if len(row) != 2 + len(FileIdentity._fields) or not isinstance(row[1], str):
        raise ValueError("not a segment")
    entries, *stat = _integers([row[0], *row[2:]])
    identity = FileIdentity(*stat)
    return Segment(entries, 0, identity.size, FileSpan(row[1], identity.size, identity))


class FrameStore:
    """The kept frames in ``directory`` (the digest cache's ``frames`` directory)."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self._pruned = False  # a run prunes once, at its first save (prune reads every recipe)

    def _recipe(self, key: str) -> str:
        return os.path.join(self.directory, f"{key}.json")

    def load(self, key: str, fingerprint: str, diff_id: str) -> Frames | None:
        """The frames kept for ``key`` at ``fingerprint`` and ``diff_id``, opened; None if
        there are none, or they don't fit (damaged, short, of another store)."""
        try:
            with open(self._recipe(key), "rb") as file:
                document = json.loads(file.read())
            checksum = document.pop("checksum")
            if _checksum(document) != checksum or document["version"] != VERSION:
                return None
            if (document["fingerprint"], document["diff_id"]) != (fingerprint, diff_id):
                return None
            segments = tuple(_segment_of(row) for row in document["segments"])
            names = document["files"]
            identities = [FileIdentity(*_integers(row)) for row in document["identities"]]
        except (OSError, ValueError, TypeError, KeyError, AttributeError):
            return None
        fds: list[int] = []
        try:
            for name, identity in zip(names, identities, strict=True):
                if os.path.basename(name) != name or not name.startswith(key):
                    return None
                fds.append(os.open(os.path.join(self.directory, name), _OPEN_FLAGS))
                if FileIdentity.of(os.fstat(fds[-1])) != identity:
                    return None  # written to, or cut short, since it was kept
            if any(s.span is None and not 0 <= s.file < len(fds) for s in segments):
                return None
            with contextlib.suppress(OSError):
                os.utime(self._recipe(key))  # used now: the last to be pruned
            frames = Frames(tuple(fds), segments, sum(i.size for i in identities))
            fds = []
            return frames
        except (OSError, ValueError, TypeError):
            return None
        finally:
            for fd in fds:
                os.close(fd)

    def save(
        self, key: str, fingerprint: str, diff_id: str, fds: Sequence[int], segments: Segments
    ) -> None:
        """Keep a layer's spool files ``fds`` and ``segments`` (a hash pass's, whole) as
        the frames of ``key``; never fails (frames are an optimisation).

        Blocking: links (or copies) the spool files."""
        with contextlib.suppress(OSError):
            self._save(key, fingerprint, diff_id, fds, segments)
            if not self._pruned:
                self._pruned = True
                self.prune()

    def _save(
        self, key: str, fingerprint: str, diff_id: str, fds: Sequence[int], segments: Segments
    ) -> None:
        os.makedirs(self.directory, mode=0o700, exist_ok=True)
        token = secrets.token_hex(8)
        names = [f"{key}.{token}.{n}" for n in range(len(fds))]
        try:
            for fd, name in zip(fds, names, strict=True):
                _link_or_copy(fd, os.path.join(self.directory, name))
            # as linked (a link moves the ctime) or copied: what load holds them to
            identities = [
                list(FileIdentity.of(os.stat(os.path.join(self.directory, name)))) for name in names
            ]
            document: dict[str, object] = {
                "version": VERSION,
                "fingerprint": fingerprint,
                "diff_id": diff_id,
                "files": names,
                "identities": identities,
                "segments": [_segment_row(segment) for segment in segments],
            }
            document["checksum"] = _checksum(document)
            staged = os.path.join(self.directory, f".{key}.{token}.json")
            with open(staged, "x") as file:
                json.dump(document, file, separators=(",", ":"))
            replaced = self._names(key)
            os.replace(staged, self._recipe(key))
        except BaseException:
            for name in names:
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(self.directory, name))
            raise
        for name in replaced:  # the frames this recipe replaced (a reader keeps its fds)
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(self.directory, name))

    def _names(self, key: str) -> list[str]:
        """The spool files the recipe of ``key`` names now (none if it can't be read)."""
        try:
            with open(self._recipe(key), "rb") as file:
                names = json.loads(file.read())["files"]
            return [n for n in names if isinstance(n, str) and os.path.basename(n) == n]
        except (OSError, ValueError, TypeError, KeyError):
            return []

    def drop(self, key: str) -> None:
        """Remove the frames of ``key`` (found damaged)."""
        names = self._names(key)
        with contextlib.suppress(OSError):
            os.unlink(self._recipe(key))
        for name in names:
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(self.directory, name))

    def prune(self) -> None:
        """Remove frames unused for KEEP_SECONDS, then the least recently used beyond
        MAX_BYTES, and spool files no recipe names (after ORPHAN_SECONDS)."""
        now = time.time()
        used: dict[str, float] = {}  # key -> when its recipe was last used
        others: dict[str, os.stat_result] = {}
        with os.scandir(self.directory) as listing:
            for item in listing:
                with contextlib.suppress(OSError):
                    st = item.stat(follow_symlinks=False)
                    if item.name.endswith(".json") and not item.name.startswith("."):
                        used[item.name[: -len(".json")]] = st.st_mtime
                    else:
                        others[item.name] = st
        sizes = dict.fromkeys(used, 0)
        named = {name: key for key in used for name in self._names(key)}
        for name, st in others.items():
            if name in named:
                sizes[named[name]] += st.st_size
            elif now - st.st_mtime > ORPHAN_SECONDS:
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(self.directory, name))
        total = sum(sizes.values())
        for key in sorted(used, key=used.__getitem__):  # least recently used first
            if now - used[key] > KEEP_SECONDS or total > MAX_BYTES:
                self.drop(key)
                total -= sizes[key]


def _link_or_copy(fd: int, path: str) -> None:
    """Give the spool file ``fd`` the name ``path``: a link where it can be (an O_TMPFILE
    file on the same file system), else a copy.

    Raises:
        OSError: neither can be made.
    """
    with contextlib.suppress(OSError):
        # linkat(2) with AT_SYMLINK_FOLLOW through /proc/self/fd/N: CPython calls plain
        # link(2) (which links the magic symlink itself: EXDEV) unless a dir fd is given
        proc = os.open("/proc/self/fd", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.link(str(fd), path, src_dir_fd=proc, follow_symlinks=True)
            return
        finally:
            os.close(proc)
    size = os.fstat(fd).st_size
    out = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        offset = 0
        while offset < size:
            data = os.pread(fd, min(COPY_SIZE, size - offset), offset)
            if not data:
                raise OSError(errno.EIO, "the spool is shorter than written")
            os.pwrite(out, data, offset)  # a short write on a full disk: ENOSPC next time
            offset += len(data)
    except BaseException:
        os.close(out)
        os.unlink(path)
        raise
    os.close(out)
