"""compress.py: the deterministic gzip encoder and ``compressed_chunks``, which both passes use.

What must hold: the output is one gzip member the stdlib's ``gzip`` decompresses to the
input, the same bytes however the input is cut (bytes chunks or a FileSpan read from disk),
in pieces of bounded size; a large file that changed is a ChangedError naming it.
Oracles: ``gzip.decompress`` and ``gzip_bytes`` of the whole input at once.
"""

from __future__ import annotations

import gzip
import os
import re
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from streamimage.engine.compress import (
    DEFLATE_BLOCK,
    FLUSH_BYTES,
    GZIP_HEADER,
    GzipEncoder,
    compressed_chunks,
    encoder,
    gzip_bytes,
    library_version,
    zstd_bytes,
)
from streamimage.engine.framing import READ_SIZE, Chunk, FileSpan
from streamimage.engine.walk import FileIdentity
from streamimage.errors import ChangedError, UsageError
from streamimage.options import GZIP_LEVELS, UNCOMPRESSED, Compression, parse_compression
from tests.conftest import require_command

GZIP_1 = Compression("gzip", 1)
MIB = 1024 * 1024


def span_of(path: Path) -> FileSpan:
    """The FileSpan layer_chunks would make of ``path`` as it is now."""
    st = path.stat()
    return FileSpan(str(path), st.st_size, FileIdentity.of(st))


def half_compressible(size: int) -> bytes:
    """``size`` bytes alternating 64 KiB of noise and 64 KiB of zeros."""
    block = 1 << 16
    return ((os.urandom(block) + bytes(block)) * (size // (2 * block) + 1))[:size]


def compress_all(chunks: list[Chunk], compression: Compression = GZIP_1) -> bytes:
    return b"".join(compressed_chunks(chunks, compression))


# --- the encoder ---------------------------------------------------------------------


def test_gzip_encoder_is_gzip_with_fixed_header_fields() -> None:
    for data in (b"", b"x", os.urandom(3000) * 50):
        blob = gzip_bytes(data)
        assert blob[:10] == b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"  # mtime 0, OS 255
        assert gzip.decompress(blob) == data
        assert gzip_bytes(data) == blob


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("none", UNCOMPRESSED),
        ("gzip", Compression("gzip", 1)),
        ("gzip:0", Compression("gzip", 0)),
        ("gzip:3", Compression("gzip", 3)),
        ("zstd", Compression("zstd", 3)),
        ("zstd:1", Compression("zstd", 1)),
        ("zstd:19", Compression("zstd", 19)),
    ],
)
def test_compress_option_parses_codec_and_level(text: str, expected: Compression) -> None:
    assert parse_compression(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "none:1",
        "gzip:",
        "gzip:4",
        "gzip:x",
        "xz",
        "zstd:",
        "zstd:0",
        "zstd:20",
        "zstd:-1",
        "zstd:\u0663",
    ],
)
def test_compress_option_rejects_other_values(text: str) -> None:
    with pytest.raises(UsageError):
        parse_compression(text)


@pytest.mark.parametrize("piece", [1, 511, 4096, 300_000, 1 << 20])
def test_gzip_bytes_do_not_depend_on_how_the_input_is_split(piece: int) -> None:
    # ISA-L's output depends on its call boundaries; the encoder re-cuts its input so
    # that the hash pass (whole reads) and the stream pass give the same bytes. Two
    # DEFLATE_BLOCKs and some: 1-byte pieces stay quick.
    data = (os.urandom(1 << 15) + b"abc" * 30_000) * 4
    encoder = GzipEncoder(1)
    view = memoryview(data)
    pieces = [encoder.compress(view[i : i + piece]) for i in range(0, len(data), piece)]
    assert b"".join(pieces) + encoder.finish() == gzip_bytes(data, 1)


@pytest.mark.parametrize("level", list(GZIP_LEVELS))
def test_every_gzip_level_round_trips(level: int) -> None:
    data = half_compressible(3 * DEFLATE_BLOCK + 1234) + b"text " * 5000
    compressor = encoder(Compression("gzip", level))
    blob = compressor.compress(data[:1000]) + compressor.compress(data[1000:])
    blob += compressor.finish()
    assert blob.startswith(GZIP_HEADER)
    assert gzip.decompress(blob) == data
    assert blob == gzip_bytes(data, level)


@pytest.mark.parametrize("compression", [Compression("xz", 1), UNCOMPRESSED], ids=str)
def test_no_encoder_for_another_codec(compression: Compression) -> None:
    with pytest.raises(ValueError, match=f"no encoder for compression {compression}"):
        encoder(compression)


# --- compressed_chunks ---------------------------------------------------------------


def test_compressed_chunks_are_the_gzip_of_bytes_and_large_files(tmp_path: Path) -> None:
    # A file of several reads (READ_SIZE) and flushes (FLUSH_BYTES), between bytes chunks.
    path = tmp_path / "big"
    data = half_compressible(5 * MIB + 333)
    path.write_bytes(data)
    seen = bytearray()
    pieces = list(
        compressed_chunks([b"head" * 100, span_of(path), b"tail"], GZIP_1, observe=seen.extend)
    )
    whole = b"head" * 100 + data + b"tail"
    blob = b"".join(pieces)
    assert blob == gzip_bytes(whole, 1)
    assert gzip.decompress(blob) == whole
    assert bytes(seen) == whole  # what a hash pass's diff_id sees
    assert len(pieces) > 1


@pytest.mark.parametrize("level", list(GZIP_LEVELS))
def test_compressed_pieces_stay_bounded_whatever_the_file_size(tmp_path: Path, level: int) -> None:
    # Incompressible: every read comes out about as large as it went in. A piece is what
    # was held below FLUSH_BYTES plus one compress call's output: at most one read
    # (READ_SIZE) and what the encoder had buffered (under DEFLATE_BLOCK) go into it.
    path = tmp_path / "noise"
    size = 5 * MIB
    path.write_bytes(os.urandom(size))
    bound = FLUSH_BYTES + READ_SIZE + DEFLATE_BLOCK
    sizes = [len(piece) for piece in compressed_chunks([span_of(path)], Compression("gzip", level))]
    assert max(sizes) <= bound < size
    assert sum(sizes) > size  # noise does not shrink: nothing was left out
    assert len(sizes) >= size // bound


def cut(data: bytes, piece: int) -> list[Chunk]:
    return [data[i : i + piece] for i in range(0, len(data), piece)]


CUTS: dict[str, Callable[[bytes, Path], list[Chunk]]] = {
    "one-chunk": lambda data, _: [data],
    "bytes-of-511": lambda data, _: cut(data, 511),
    "bytes-of-64k": lambda data, _: cut(data, 1 << 16),
    "bytes-of-1m-plus-1": lambda data, _: cut(data, MIB + 1),
    "one-file": lambda data, path: [span_of(path)],
}


@pytest.mark.parametrize("how", list(CUTS))
def test_compressed_chunks_do_not_depend_on_the_chunking(tmp_path: Path, how: str) -> None:
    data = half_compressible(2 * MIB + 12345)
    path = tmp_path / "data"
    path.write_bytes(data)
    assert compress_all(CUTS[how](data, path)) == gzip_bytes(data, 1)


def test_a_file_split_between_bytes_and_a_span_compresses_the_same(tmp_path: Path) -> None:
    data = half_compressible(3 * MIB)
    path = tmp_path / "middle"
    path.write_bytes(data[1000 : 2 * MIB + 7])
    chunks: list[Chunk] = [data[:1000], span_of(path), data[2 * MIB + 7 :]]
    assert compress_all(chunks) == gzip_bytes(data, 1)


def grow(path: Path) -> None:
    with path.open("ab") as file:
        file.write(b"more")


def rewrite_in_place(path: Path) -> None:
    # Same size and inode; the mtime moves far enough that no clock granularity hides it.
    st = path.stat()
    path.write_bytes(b"y" * st.st_size)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))


def replace(path: Path) -> None:
    other = path.with_name("other")
    other.write_bytes(b"z" * path.stat().st_size)
    other.replace(path)


@pytest.mark.parametrize("change", [grow, rewrite_in_place, replace], ids=lambda f: f.__name__)
def test_a_file_changed_after_it_was_walked_is_a_changed_error(
    tmp_path: Path, change: Callable[[Path], None]
) -> None:
    path = tmp_path / "victim"
    path.write_bytes(b"x" * (2 * READ_SIZE))
    span = span_of(path)
    change(path)
    with pytest.raises(ChangedError, match=re.escape(str(path))):
        compress_all([b"before", span])


def cut_short(path: Path) -> str:
    os.truncate(path, READ_SIZE + 10)
    return f"{path}: size {3 * READ_SIZE} -> "


def rewrite_behind_the_reader(path: Path) -> str:
    # Its size stays: only the check after the last read can see it.
    with path.open("r+b") as file:
        file.write(b"z" * 10)
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    return f"{path}: changed while being archived"


@pytest.mark.parametrize("change", [cut_short, rewrite_behind_the_reader], ids=lambda f: f.__name__)
def test_a_file_changed_while_read_is_a_changed_error(
    tmp_path: Path, change: Callable[[Path], str]
) -> None:
    path = tmp_path / "victim"
    path.write_bytes(b"x" * (3 * READ_SIZE))
    calls = 0
    expected: list[str] = []

    def change_before_the_second_read() -> None:
        nonlocal calls
        calls += 1
        if calls == 2:
            expected.append(change(path))

    pieces = compressed_chunks([span_of(path)], GZIP_1, checkpoint=change_before_the_second_read)
    with pytest.raises(ChangedError) as raised:
        b"".join(pieces)
    assert expected
    assert str(raised.value).startswith(expected[0])


# --- zstd -----------------------------------------------------------------------------
# Oracle: the zstd command (a libzstd build of its own), not the library under test.

ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


def zstd_command(*args: str, data: bytes) -> bytes:
    proc = subprocess.run(
        [require_command("zstd"), *args], input=data, capture_output=True, check=False
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.mark.parametrize("level", [1, 3, 19])
def test_zstd_frames_are_what_the_zstd_command_reads_back(level: int, tmp_path: Path) -> None:
    data = os.urandom(100_000) + b"layer tar " * 200_000 + bytes(3_000_000)
    blob = zstd_bytes(data, level)
    assert blob.startswith(ZSTD_MAGIC)
    assert zstd_command("-d", "-c", data=blob) == data
    (tmp_path / "blob.zst").write_bytes(blob)
    listed = zstd_command("-lv", str(tmp_path / "blob.zst"), data=b"")
    assert b"Check: XXH64" in listed  # its content checksum
    # Frame_Header_Descriptor: content checksum flag set (bit 2), no content size (bits
    # 6-7 and the single-segment bit 5 clear), no dictionary id (bits 0-1)
    descriptor = blob[4]
    assert descriptor & 0b100
    assert descriptor & 0b1110_0011 == 0


@pytest.mark.parametrize("piece", [1, 4097, 1 << 20, (1 << 20) + 1])
def test_zstd_bytes_do_not_depend_on_how_the_input_is_split(piece: int) -> None:
    data = (os.urandom(1 << 15) + b"abc" * 30_000) * 24  # more than two ZSTD_BLOCKs
    compressor = encoder(Compression("zstd", 3))
    view = memoryview(data)
    stop = len(data) if piece > 1 else 100_000  # byte by byte: a prefix is enough
    pieces = [compressor.compress(view[i : i + piece]) for i in range(0, stop, piece)]
    expected = zstd_bytes(data[:stop], 3)
    assert b"".join(pieces) + compressor.finish() == expected


def test_compressed_chunks_of_zstd_are_the_zstd_of_the_whole(tmp_path: Path) -> None:
    path = tmp_path / "big"
    path.write_bytes(os.urandom(3 * (1 << 20)) + bytes(1 << 20))
    st = path.stat()
    chunks: list[Chunk] = [b"head" * 1000, FileSpan(str(path), st.st_size, FileIdentity.of(st))]
    whole = b"head" * 1000 + path.read_bytes()
    blob = b"".join(compressed_chunks(chunks, Compression("zstd", 3)))
    assert blob == zstd_bytes(whole, 3)
    assert zstd_command("-d", "-c", data=blob) == whole


def test_the_library_versions_are_named() -> None:
    assert re.fullmatch(r"isal \d+\.\d+\.\d+", library_version(Compression("gzip", 1)))
    assert re.fullmatch(r"libzstd \d+\.\d+\.\d+", library_version(Compression("zstd", 3)))
    assert library_version(UNCOMPRESSED) == ""
