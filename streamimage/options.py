"""How to build, from the command line: output format, layer compression, hash workers, spool.

PURE: no I/O; strings from argparse in, frozen records out (the conf, what to build, is
spec.py's).
Rule: every value is checked here, and anything out of range is a UsageError naming the
option and the value.
"""

from __future__ import annotations

from dataclasses import dataclass

from streamimage.errors import UsageError

NONE = "none"
GZIP = "gzip"
GZIP_LEVELS = range(4)  # ISA-L's levels: 0 fastest ... 3 smallest
GZIP_DEFAULT_LEVEL = 1  # benchmarks/README.md: zlib -1's ratio at about 6x its speed

FORMAT_DOCKER = "docker"  # the reference's docker-archive, byte for byte
FORMAT_OCI = "oci"  # one tar that is an OCI image layout and a docker-archive (Docker 25+)
FORMAT_OCI_DIR = "oci-dir"  # an OCI image layout directory
FORMATS = (FORMAT_DOCKER, FORMAT_OCI, FORMAT_OCI_DIR)


@dataclass(frozen=True, slots=True)
class Compression:
    """How the layers this tool builds are stored: ``none``, or ``gzip`` at ``level``."""

    codec: str = NONE
    level: int = 0

    @property
    def enabled(self) -> bool:
        return self.codec != NONE

    def __str__(self) -> str:
        return f"{self.codec}:{self.level}" if self.enabled else NONE


UNCOMPRESSED = Compression()


def parse_compression(text: str) -> Compression:
    """``none``, ``gzip`` or ``gzip:LEVEL`` (LEVEL 0-3, ISA-L's levels; default 1).

    Raises:
        UsageError: anything else.
    """
    codec, colon, level_text = text.partition(":")
    if codec == NONE and not colon:
        return UNCOMPRESSED
    if codec != GZIP:
        raise UsageError(f"--compress {text!r}: expected none, gzip or gzip:LEVEL")
    if not colon:
        return Compression(GZIP, GZIP_DEFAULT_LEVEL)
    if not level_text.isdigit() or int(level_text) not in GZIP_LEVELS:
        raise UsageError(
            f"--compress {text!r}: gzip LEVEL must be 0-3 (ISA-L's levels: 0 fastest, 3 smallest)"
        )
    return Compression(GZIP, int(level_text))


SPOOL_MAX = 2 * 1024**3  # bytes: the default spool budget
_SIZE_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}


def parse_size(text: str, option: str) -> int:
    """A byte count: digits, then optionally K, M, G or T (powers of 1024), as ``2G``.

    Raises:
        UsageError: anything else.
    """
    digits, unit = (text[:-1], text[-1:].upper()) if text[-1:].isalpha() else (text, "")
    if not digits.isdigit() or unit not in _SIZE_UNITS:
        raise UsageError(f"{option} {text!r}: expected a size such as 0, 512M or 2G")
    return int(digits) * _SIZE_UNITS[unit]


@dataclass(frozen=True, slots=True)
class Options:
    """How to build, from the command line (the conf says what to build)."""

    hash_workers: int = 2  # hash passes at once
    hash_in_processes: bool = True  # worker processes (no GIL contention) or threads
    format: str = FORMAT_DOCKER  # one of FORMATS
    compression: Compression = UNCOMPRESSED  # of the layers built here (base layers: as is)
    spool_dir: str | None = None  # where hash passes spool; None: the temporary directory
    spool_max: int = SPOOL_MAX  # bytes spooled at once, at most; 0: never spool
