"""engine/decompress: a stored layer back to its tar, for holding it to its diff_id.

Oracle: streams made by the standard library's gzip and the zstd binding's compressor;
what comes out must be their input, in pieces never over PIECE, whatever the feeding.
"""

from __future__ import annotations

import gzip
import random
import sys

import pytest

from streamimage.engine.decompress import PIECE, Decoder

if sys.version_info >= (3, 14):
    from compression import zstd
else:
    from backports import zstd

DATA = b"ustar" + random.Random(14).randbytes(50_000) + bytes(200_000) + b"tail"  # a tar-like head


def decoded(stream: bytes, feed_size: int = 4096) -> tuple[bytes, list[int]]:
    """What the decoder gives for ``stream`` fed ``feed_size`` bytes at a time, and the
    size of each piece it gave."""
    pieces: list[bytes] = []
    decoder = Decoder(stream[:8], pieces.append)
    for start in range(0, len(stream), feed_size):
        decoder.feed(stream[start : start + feed_size])
    decoder.finish()
    return b"".join(pieces), [len(p) for p in pieces]


@pytest.mark.parametrize("feed_size", [1, 7, 4096, 10**7])
def test_a_gzip_stream_gives_its_input_however_it_is_fed(feed_size: int) -> None:
    data = DATA if feed_size > 1 else DATA[:3000]  # byte by byte: a shorter input
    stream = gzip.compress(data, mtime=0)
    assert decoded(stream, feed_size)[0] == data


def test_gzip_members_one_after_another_give_their_inputs_in_order() -> None:
    stream = gzip.compress(b"first ", mtime=0) + gzip.compress(b"second", mtime=0)
    assert decoded(stream, 5)[0] == b"first second"


def test_zeros_after_the_last_gzip_member_are_padding() -> None:
    assert decoded(gzip.compress(DATA, mtime=0) + bytes(1000))[0] == DATA


def test_data_after_the_last_gzip_member_is_refused() -> None:
    with pytest.raises(ValueError, match="gzip stream"):
        decoded(gzip.compress(DATA, mtime=0) + b"\0\0garbage")


def test_a_gzip_stream_cut_short_is_refused_at_its_end() -> None:
    with pytest.raises(ValueError, match="gzip stream: cut short"):
        decoded(gzip.compress(DATA, mtime=0)[:-10])


def test_a_damaged_gzip_stream_is_refused() -> None:
    stream = bytearray(gzip.compress(DATA, mtime=0))
    stream[20:40] = b"\xff" * 20
    with pytest.raises(ValueError, match="gzip stream"):
        decoded(bytes(stream))


@pytest.mark.parametrize("codec", ["gzip", "zstd"])
def test_a_small_stream_of_a_huge_tar_comes_in_bounded_pieces(codec: str) -> None:
    size = 40 * PIECE + 123
    huge = bytes(size)
    stream = gzip.compress(huge, mtime=0) if codec == "gzip" else zstd.compress(huge)
    assert len(stream) < PIECE  # all of it in one feed
    data, pieces = decoded(stream, len(stream))
    assert len(data) == size
    assert max(pieces) <= PIECE


def test_zstd_frames_one_after_another_give_their_inputs_in_order() -> None:
    stream = zstd.compress(DATA) + zstd.compress(b"second frame")
    assert decoded(stream, 333)[0] == DATA + b"second frame"


def test_a_zstd_stream_cut_short_is_refused() -> None:
    with pytest.raises(ValueError, match="zstd stream: cut short"):
        decoded(zstd.compress(DATA)[:-5])


def test_a_plain_tar_is_given_as_it_is() -> None:
    decoder = Decoder(b"ustar", lambda data: None)
    assert decoder.codec == ""
    assert decoded(DATA, 1000)[0] == DATA


def test_an_empty_plain_layer_is_empty() -> None:
    assert decoded(b"")[0] == b""
