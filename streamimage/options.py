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
ZSTD = "zstd"
ZSTD_LEVELS = range(1, 20)  # libzstd's regular levels: 1 fastest ... 19 smallest
ZSTD_DEFAULT_LEVEL = 3  # benchmarks/README.md: libzstd's own default

FORMAT_DOCKER = "docker"  # the reference's docker-archive, byte for byte
FORMAT_OCI = "oci"  # one tar that is an OCI image layout and a docker-archive (Docker 25+)
FORMAT_OCI_DIR = "oci-dir"  # an OCI image layout directory
FORMATS = (FORMAT_DOCKER, FORMAT_OCI, FORMAT_OCI_DIR)


@dataclass(frozen=True, slots=True)
class Compression:
    """How the layers this tool builds are stored: ``none``, or ``gzip``/``zstd`` at ``level``."""

    codec: str = NONE
    level: int = 0

    @property
    def enabled(self) -> bool:
        return self.codec != NONE

    def __str__(self) -> str:
        return f"{self.codec}:{self.level}" if self.enabled else NONE


UNCOMPRESSED = Compression()


def parse_compression(text: str) -> Compression:
    """``none``, ``gzip[:LEVEL]`` (LEVEL 0-3, ISA-L's levels; default 1) or
    ``zstd[:LEVEL]`` (LEVEL 1-19; default 3).

    Raises:
        UsageError: anything else.
    """
    codec, colon, level_text = text.partition(":")
    if codec == NONE and not colon:
        return UNCOMPRESSED
    levels = {GZIP: (GZIP_LEVELS, GZIP_DEFAULT_LEVEL), ZSTD: (ZSTD_LEVELS, ZSTD_DEFAULT_LEVEL)}
    if codec not in levels:
        raise UsageError(f"--compress {text!r}: expected none, gzip[:LEVEL] or zstd[:LEVEL]")
    allowed, default = levels[codec]
    if not colon:
        return Compression(codec, default)
    # ASCII digits only: str.isdigit() also takes other scripts' digits
    if not (level_text.isascii() and level_text.isdigit()) or int(level_text) not in allowed:
        raise UsageError(
            f"--compress {text!r}: {codec} LEVEL must be {allowed.start}-{allowed.stop - 1}"
            + (" (ISA-L's levels: 0 fastest, 3 smallest)" if codec == GZIP else "")
        )
    return Compression(codec, int(level_text))


SPOOL_MAX = 2 * 1024**3  # bytes: the default spool budget
_SIZE_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}


def parse_size(text: str, option: str) -> int:
    """A byte count: digits, then optionally K, M, G or T (powers of 1024), as ``2G``.

    Raises:
        UsageError: anything else.
    """
    digits, unit = (text[:-1], text[-1:].upper()) if text[-1:].isalpha() else (text, "")
    # ASCII digits only: str.isdigit() also takes other scripts' digits ("٣" is 3)
    if not (digits.isascii() and digits.isdigit()) or unit not in _SIZE_UNITS:
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
    cache_dir: str | None = None  # where the digest cache is; None: no cache
