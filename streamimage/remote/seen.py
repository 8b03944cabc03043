"""Where earlier pushes left each blob: (registry, digest) -> repositories, so that a push
to another repository of the same registry can mount a blob instead of uploading it (as
docker's distribution metadata service remembers, `docker push` mounts).

IO: one SQLite database (``blobs.sqlite3``, WAL) beside the digest cache, in its
directory; sync calls, for a worker thread.
Rule 1: never a reason to fail: a directory that can't be made, a database that is corrupt,
locked or of another schema means no mount sources (a warning), and a push as without it.
Rule 2: only what a registry confirmed goes in: the blobs of a manifest it accepted (so
they are referenced there, not garbage); a mount it declines forgets that source.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Iterable

DATABASE = "blobs.sqlite3"
SCHEMA_VERSION = 1
BUSY_TIMEOUT = 2.0  # seconds a locked database is waited for
KEEP_SECONDS = 30 * 24 * 3600  # rows not used for this long go
KEEP_ROWS = 100_000  # at most; the least recently used go first (a row: ~150 bytes)
SOURCES_MAX = 3  # repositories tried for one blob before it is uploaded

_SCHEMA = """
CREATE TABLE IF NOT EXISTS blobs (
    registry TEXT NOT NULL,
    digest TEXT NOT NULL,
    repository TEXT NOT NULL,
    used REAL NOT NULL,
    PRIMARY KEY (registry, digest, repository)
) WITHOUT ROWID
"""


class SeenUnavailable(Exception):
    """The database can't be used; the message says why (a warning, never an error)."""


class SeenBlobs:
    """The database of blobs seen in registries; use from one thread at a time."""

    def __init__(self, connection: sqlite3.Connection) -> None:
        self._db = connection

    @classmethod
    def open(cls, directory: str) -> SeenBlobs:
        """Open (or create) the database in ``directory``.

        Raises:
            SeenUnavailable: it can't be made or read, or is of another schema version.
        """
        path = os.path.join(directory, DATABASE)
        try:
            os.makedirs(directory, exist_ok=True)
            # one thread at a time, not always the same one (anyio's worker threads)
            db = sqlite3.connect(
                path, timeout=BUSY_TIMEOUT, isolation_level=None, check_same_thread=False
            )
        except (OSError, sqlite3.Error) as exc:
            raise SeenUnavailable(f"{path}: cannot open: {exc}") from None
        try:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version not in (0, SCHEMA_VERSION):
                raise SeenUnavailable(f"{path}: schema version {version}, not {SCHEMA_VERSION}")
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(_SCHEMA)
            db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        except sqlite3.Error as exc:
            db.close()
            raise SeenUnavailable(f"{path}: not usable: {exc}") from None
        except SeenUnavailable:
            db.close()
            raise
        return cls(db)

    def sources(self, registry: str, digest: str, repository: str) -> list[str]:
        """Repositories of ``registry`` that held ``digest`` (most recently seen first),
        ``repository`` itself left out; [] if the database fails."""
        try:
            rows = self._db.execute(
                "SELECT repository FROM blobs WHERE registry = ? AND digest = ? "
                "AND repository != ? ORDER BY used DESC LIMIT ?",
                (registry, digest, repository, SOURCES_MAX),
            ).fetchall()
        except sqlite3.Error:
            return []
        return [str(row[0]) for row in rows]

    def recent_repositories(self, registry: str, repository: str) -> list[str]:
        """The repositories of ``registry`` pushed to most recently (at most SOURCES_MAX),
        ``repository`` left out: the mount sources of a push, fixed before it starts (an
        auth token's scope names each repository a blob is mounted from); [] if the
        database fails."""
        try:
            rows = self._db.execute(
                "SELECT repository FROM blobs WHERE registry = ? AND repository != ? "
                "GROUP BY repository ORDER BY MAX(used) DESC LIMIT ?",
                (registry, repository, SOURCES_MAX),
            ).fetchall()
        except sqlite3.Error:
            return []
        return [str(row[0]) for row in rows]

    def remember(self, registry: str, repository: str, digests: Iterable[str]) -> None:
        """``repository`` of ``registry`` holds ``digests`` (a manifest naming them was
        accepted); old rows are pruned. A database that fails is left as it is."""
        now = time.time()
        rows = [(registry, digest, repository, now) for digest in digests]
        try:
            with self._transaction():
                self._db.executemany("INSERT OR REPLACE INTO blobs VALUES (?, ?, ?, ?)", rows)
                self._db.execute("DELETE FROM blobs WHERE used < ?", (now - KEEP_SECONDS,))
                self._db.execute(
                    "DELETE FROM blobs WHERE used <= (SELECT used FROM blobs ORDER BY used "
                    "DESC LIMIT 1 OFFSET ?)",
                    (KEEP_ROWS,),
                )
        except sqlite3.Error:
            pass

    def forget(self, registry: str, digest: str, repository: str) -> None:
        """The registry would not mount ``digest`` from ``repository``: not a source."""
        try:
            with self._transaction():
                self._db.execute(
                    "DELETE FROM blobs WHERE registry = ? AND digest = ? AND repository = ?",
                    (registry, digest, repository),
                )
        except sqlite3.Error:
            pass

    def _transaction(self) -> _Transaction:
        return _Transaction(self._db)

    def close(self) -> None:
        self._db.close()


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on an error (autocommit connection)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, kind: type[BaseException] | None, *rest: object) -> None:
        self._db.execute("COMMIT" if kind is None else "ROLLBACK")
