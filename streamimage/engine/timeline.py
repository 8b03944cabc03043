"""When each layer's passes ran, for ``-v``: filled in by the engine and the image
assembly, printed by report.py.

PURE: a record; no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class Timeline:
    """When a store layer's passes ran (monotonic seconds), and where its stream came from."""

    hash_start: float = 0.0
    hash_end: float = 0.0
    stream_start: float = 0.0
    stream_end: float = 0.0
    spooled: int | None = None  # bytes the stream pass copied from the spool; None: framed
    kept: bool = False  # that spool was kept frames of an earlier run (frames.py)
    parts: int = 1  # processes that framed the layer in its hash pass
    hashed_as_sent: bool = False  # no hash pass: hashed by its stream (a push's upload)
    cache: str | None = None  # what the digest cache said: hit, miss (why), stored; None: off
