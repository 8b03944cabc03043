"""The digest cache: each store layer's digests, kept between runs, so that a run over
unchanged store paths needs no hash pass.

IO: one SQLite database (WAL, a busy timeout) in the user's cache directory; ASYNC in
LayerCache, which the scheduler asks before a layer's hash pass.
Rule 1: a stale entry can never make a wrong image. The key is everything a layer's bytes
depend on: its store paths in order, owner, names and mtime of its members, the framing's
version, and for a compressed blob the compressor, its level and its library's version.
An entry is used only when a walk of the store now gives the fingerprint it was stored
with: the lstat of every entry (inode, size, mtime, ctime, mode; in walk order), as git's
index holds a file to its stat; a file changed in place moves its ctime, one replaced moves
its inode, an entry added or removed changes its directory and the count.
An entry whose store changed less than RACY_SECONDS before its hash pass began is not
stored ("racily clean", as git calls it): a file rewritten within one tick of a coarse
file system clock keeps its stat. Each row carries a checksum of its fields, so a damaged
database gives misses, not wrong digests.
Rule 2: a large layer's spool is kept beside its entry (frames.py), for a warm run to copy
instead of framing the layer again; kept frames are used with their entry only.
Rule 3: the cache is never a reason to fail: a database that can't be opened, read or
written (missing, read-only, locked, corrupt, of another version) is a warning and a run
without it.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import anyio
import anyio.to_thread

from streamimage.engine.compress import library_version
from streamimage.engine.frames import Frames, FrameStore
from streamimage.engine.framing import witness_of
from streamimage.engine.hashing import LayerHash, Spooled
from streamimage.engine.timeline import Timeline
from streamimage.engine.workers import run_in_child
from streamimage.imagejson import Digest
from streamimage.options import Compression

T = TypeVar("T")

FRAMING_VERSION = 1  # raise when framing.layer_chunks frames a layer differently
SCHEMA_VERSION = 1  # of the database; another version is a database to leave alone
DATABASE = "digests.sqlite3"
BUSY_TIMEOUT = 2.0  # seconds to wait for another run's write (a write takes milliseconds)
RACY_SECONDS = 2.0  # a store changed this close to its hash pass is not cached (see above)
KEEP_SECONDS = 30 * 24 * 3600  # entries not used for 30 days are pruned
KEEP_ENTRIES = 20_000  # and no more than these, the least recently used first
# a hit on a layer of this many entries without kept frames is a miss: hashed again
REHASH_ENTRIES = 512
HELD_BATCH = 500  # keys per query (SQLite before 3.32 takes at most 999 parameters)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS layers (
    key TEXT PRIMARY KEY,
    fingerprint TEXT NOT NULL,
    diff_id TEXT NOT NULL,
    size INTEGER NOT NULL,
    blob_digest TEXT NOT NULL,
    blob_size INTEGER NOT NULL,
    used REAL NOT NULL,
    checksum TEXT NOT NULL
);
"""


class CacheUnavailable(Exception):
    """The cache can't be used in this run (the message says why); never shown as an error."""


@dataclass(frozen=True, slots=True)
class KeyContext:
    """What every store layer's bytes depend on besides its store paths."""

    uid: int
    gid: int
    uname: str
    gname: str
    mtime: int
    compression: Compression

    def key(self, store_paths: Sequence[str]) -> str:
        """The cache key of the layer of ``store_paths``."""
        document = {
            "framing": FRAMING_VERSION,
            # a witness holds hash() of int tuples: stable across processes and runs, but
            # CPython doesn't promise it across versions
            "python": list(sys.version_info[:2]),
            "paths": list(store_paths),
            "owner": [self.uid, self.gid, self.uname, self.gname],
            "mtime": self.mtime,
            "compression": str(self.compression),
            "library": library_version(self.compression),
        }
        text = json.dumps(document, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
        return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()


@dataclass(frozen=True, slots=True)
class CachedDigests:
    """A layer's digests, and the fingerprint of the store they were found on."""

    fingerprint: str
    diff_id: Digest
    size: int
    blob_digest: Digest
    blob_size: int

    def checksum(self, key: str) -> str:
        fields = (key, self.fingerprint, self.diff_id, self.size, self.blob_digest, self.blob_size)
        return hashlib.sha256(" ".join(map(str, fields)).encode()).hexdigest()


class DigestCache:
    """The database, opened; every method raises CacheUnavailable rather than sqlite3's
    errors. One connection, used from one thread at a time (the caller's lock)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._pruned = False  # put prunes once a run (see put)
        try:
            self._db = sqlite3.connect(path, timeout=BUSY_TIMEOUT, check_same_thread=False)
        except sqlite3.Error as exc:
            raise CacheUnavailable(f"{path}: {exc}") from None
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            # No fsync: under GBs of dirty spool pages one can take seconds (ext4 flushes
            # them all); a crash may lose or damage recent rows, which the row checksums and
            # the fingerprints turn into misses.
            self._db.execute("PRAGMA synchronous=OFF")
            self._db.executescript(_SCHEMA)
            row = self._db.execute("SELECT value FROM meta WHERE name = 'schema'").fetchone()
            if row is None:
                with self._db:
                    self._db.execute(
                        "INSERT OR IGNORE INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),)
                    )
            elif row[0] != str(SCHEMA_VERSION):
                raise CacheUnavailable(f"{path}: schema version {row[0]}, not {SCHEMA_VERSION}")
        except (sqlite3.Error, CacheUnavailable) as exc:
            self._db.close()
            if isinstance(exc, CacheUnavailable):
                raise
            raise CacheUnavailable(f"{path}: {exc}") from None

    def get(self, key: str) -> CachedDigests | None:
        """The entry of ``key``, marked as used now; None if there is none."""
        try:
            row = self._db.execute(
                "SELECT fingerprint, diff_id, size, blob_digest, blob_size, checksum "
                "FROM layers WHERE key = ?",
                (key,),
            ).fetchone()
            if row is None:
                return None
            with self._db:
                self._db.execute("UPDATE layers SET used = ? WHERE key = ?", (time.time(), key))
        except sqlite3.Error as exc:
            raise CacheUnavailable(f"{self.path}: {exc}") from None
        fingerprint, diff_id, size, blob_digest, blob_size, checksum = row
        try:
            entry = CachedDigests(
                str(fingerprint),
                Digest.parse(diff_id),
                int(size),
                Digest.parse(blob_digest),
                int(blob_size),
            )
        except (ValueError, TypeError):
            return None  # a damaged row: a miss
        return entry if entry.checksum(key) == checksum else None

    def held(self, keys: Sequence[str]) -> set[str]:
        """Those of ``keys`` that have an entry, whatever its fingerprint (not marked used)."""
        found: set[str] = set()
        try:
            for start in range(0, len(keys), HELD_BATCH):
                batch = keys[start : start + HELD_BATCH]
                marks = ", ".join("?" * len(batch))
                rows = self._db.execute(f"SELECT key FROM layers WHERE key IN ({marks})", batch)
                found.update(str(key) for (key,) in rows)
        except sqlite3.Error as exc:
            raise CacheUnavailable(f"{self.path}: {exc}") from None
        return found

    def put(self, key: str, entry: CachedDigests) -> None:
        """Remember ``entry`` under ``key`` (replacing what was there); the first put of
        a run (of this connection) prunes too: a prune sorts the whole table (46 ms at
        KEEP_ENTRIES rows here), and a run puts up to one entry per layer."""
        now = time.time()
        try:
            with self._db:
                self._db.execute(
                    "INSERT OR REPLACE INTO layers VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        key,
                        entry.fingerprint,
                        str(entry.diff_id),
                        entry.size,
                        str(entry.blob_digest),
                        entry.blob_size,
                        now,
                        entry.checksum(key),
                    ),
                )
                if not self._pruned:
                    self._db.execute("DELETE FROM layers WHERE used < ?", (now - KEEP_SECONDS,))
                    self._db.execute(
                        "DELETE FROM layers WHERE key NOT IN "
                        "(SELECT key FROM layers ORDER BY used DESC LIMIT ?)",
                        (KEEP_ENTRIES,),
                    )
            self._pruned = True
        except sqlite3.Error as exc:
            raise CacheUnavailable(f"{self.path}: {exc}") from None

    def drop(self, key: str) -> None:
        """Forget the entry of ``key``."""
        try:
            with self._db:
                self._db.execute("DELETE FROM layers WHERE key = ?", (key,))
        except sqlite3.Error as exc:
            raise CacheUnavailable(f"{self.path}: {exc}") from None

    def close(self) -> None:
        self._db.close()


def open_cache(directory: str) -> DigestCache:
    """The cache database in ``directory``, created (with the directory) if need be.

    Raises:
        CacheUnavailable: it can't be used; the message says why.
    """
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
    except OSError as exc:
        raise CacheUnavailable(f"{directory}: {exc.strerror or exc}") from None
    return DigestCache(os.path.join(directory, DATABASE))


@dataclass(frozen=True, slots=True)
class CacheHit:
    """A layer found in the cache: its digests, and its kept frames' spool files, opened
    (the caller closes them), if it has kept frames."""

    found: LayerHash
    spool_fds: tuple[int, ...] = ()


class LayerCache:
    """The digest cache as the hash passes use it: asked before a layer's pass (a hit needs
    a walk of the store, no hash), told its digests (and given its spool to keep) after.
    Every database call runs in a worker thread, one at a time; the first failure turns
    the cache off for the run and is kept in ``warning``."""

    def __init__(
        self,
        db: DigestCache,
        context: KeyContext,
        *,
        processes: bool,
        frames: FrameStore | None = None,
    ) -> None:
        self._db: DigestCache | None = db
        self._context = context
        self._processes = processes
        self._frames = frames
        self._lock = anyio.Lock()
        self.warning: str | None = None

    async def _call(self, op: Callable[[DigestCache], T]) -> T:
        """``op(database)`` in a worker thread, one at a time."""
        async with self._lock:
            db = self._db
            if db is None:
                raise CacheUnavailable(self.warning or "off")
            try:
                return await anyio.to_thread.run_sync(op, db)
            except CacheUnavailable as exc:
                self.warning = f"{exc}: running without the digest cache"
                self.close()
                raise

    async def held(self, layers: Sequence[Sequence[str]]) -> set[int] | None:
        """The indices of the ``layers`` (store paths each) the cache has an entry for,
        whatever its fingerprint: lookups that will likely hit (a walk, not a hash pass).
        One query for them all; None: the cache failed (and is off)."""
        keys = [self._context.key(store_paths) for store_paths in layers]
        try:
            found = await self._call(lambda db: db.held(keys))
        except CacheUnavailable:
            return None
        return {index for index, key in enumerate(keys) if key in found}

    async def lookup(
        self, store_paths: Sequence[str], timeline: Timeline, *, small: bool = False
    ) -> CacheHit | None:
        """The layer's digests if the cache has them for the store as it is now, with the
        witness of that walk for its stream pass and its kept frames, if any; None: hash
        it (``timeline`` says why). A ``small`` layer is walked in a thread even with
        worker processes (a fork costs more than its walk)."""
        key = self._context.key(store_paths)
        try:
            entry = await self._call(lambda db: db.get(key))
        except CacheUnavailable:
            return None
        if entry is None:
            timeline.cache = "miss (new key)"
            return None
        frames: Frames | None = None
        if self._frames is not None:
            load = self._frames.load
            frames = await anyio.to_thread.run_sync(
                load, key, entry.fingerprint, str(entry.diff_id)
            )
        try:
            if self._processes and not small:  # lstat-bound Python: away from the stream's GIL
                witness = await run_in_child(witness_of, store_paths)
            else:
                witness = await anyio.to_thread.run_sync(witness_of, store_paths)
        except BaseException:
            if frames is not None:
                frames.close()
            raise
        if witness.digest() != entry.fingerprint:
            if frames is not None:
                frames.close()
            timeline.cache = "miss (fingerprint changed)"
            return None
        if frames is None and self._frames is not None and len(witness) >= REHASH_ENTRIES:
            # hashed again, for its frames to be kept: framing it again would cost as much
            # (its hash pass runs ahead, in a worker), and the next run can send them; a
            # smaller layer is a hit, framed again if streamed (a push may need no byte)
            timeline.cache = "miss (no kept frames)"
            return None
        timeline.cache = "hit"
        spooled = None if frames is None else Spooled(frames.segments, frames.size, kept=True)
        found = LayerHash(
            entry.diff_id, entry.size, entry.blob_digest, entry.blob_size, witness, spooled
        )
        return CacheHit(found, () if frames is None else frames.fds)

    async def remember(
        self, store_paths: Sequence[str], found: LayerHash, timeline: Timeline, started: float
    ) -> bool:
        """Keep the digests a hash pass found, with the fingerprint of what it walked,
        unless the store changed less than RACY_SECONDS before ``started`` (time.time()
        when the pass began) or after it. Returns whether they were kept."""
        if found.witness.newest_ctime_ns >= (started - RACY_SECONDS) * 1e9:
            timeline.cache = f"{timeline.cache or 'miss'}, not stored (the store just changed)"
            return False
        key = self._context.key(store_paths)
        entry = CachedDigests(
            found.witness.digest(), found.diff_id, found.size, found.blob_digest, found.blob_size
        )
        try:
            await self._call(lambda db: db.put(key, entry))
        except CacheUnavailable:
            return False
        timeline.cache = f"{timeline.cache or 'miss'}, stored"
        return True

    def keeps_frames(self, found: LayerHash) -> bool:
        """Whether the spool of a layer hashed as ``found`` (and remembered) is worth
        keeping: whole and uncompressed."""
        spooled = found.spooled
        return (
            self._frames is not None
            and spooled is not None
            and not spooled.compressed
            and not spooled.kept
        )

    def keep_frames(self, store_paths: Sequence[str], found: LayerHash, fds: Sequence[int]) -> None:
        """Keep the spool files ``fds`` of a layer that ``remember`` kept (keeps_frames):
        blocking, run it in a thread; never fails."""
        assert self._frames is not None
        assert found.spooled is not None
        key = self._context.key(store_paths)
        fingerprint = found.witness.digest()
        self._frames.save(key, fingerprint, str(found.diff_id), fds, found.spooled.segments)

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
