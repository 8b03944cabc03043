"""The header encoder against its oracle, CPython's tarfile (``TarInfo.tobuf`` in PAX format).

Boundary tables in the manner of tarfile's own LimitsTest, then hypothesis over random
names, link targets, modes, sizes, ids and times, for both the general encoder and the
per-layer fast path.
"""

from __future__ import annotations

import io
import tarfile

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streamimage.tarheader import (
    BLKTYPE,
    BLOCKSIZE,
    CHRTYPE,
    DIRTYPE,
    FIFOTYPE,
    RECORDSIZE,
    REGTYPE,
    SYMTYPE,
    HeaderEncoder,
    Member,
    encode_header,
    end_of_archive,
    padding,
)

TYPES = [REGTYPE, SYMTYPE, DIRTYPE, FIFOTYPE, CHRTYPE, BLKTYPE]


def tarfile_header(member: Member) -> bytes:
    info = tarfile.TarInfo(member.name)
    info.type = member.type
    info.mode = member.mode
    info.uid, info.gid = member.uid, member.gid
    info.size = member.size
    info.mtime = member.mtime
    info.linkname = member.linkname
    info.uname, info.gname = member.uname, member.gname
    info.devmajor, info.devminor = member.devmajor, member.devminor
    info.pax_headers = dict(member.pax_headers)
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


def fast_header(member: Member) -> bytes:
    assert isinstance(member.mtime, int)
    encoder = HeaderEncoder(
        uid=member.uid,
        gid=member.gid,
        uname=member.uname,
        gname=member.gname,
        mtime=member.mtime,
    )
    name = member.name
    if member.type == DIRTYPE and not name.endswith("/"):
        name += "/"
    return encoder.encode(
        name,
        member.type,
        member.mode,
        member.size,
        member.linkname,
        (member.devmajor, member.devminor),
    )


def assert_both_match(member: Member) -> None:
    expected = tarfile_header(member)
    assert encode_header(member) == expected
    if not member.pax_headers and isinstance(member.mtime, int):
        assert fast_header(member) == expected


def name_of(length: int, filler: str = "n") -> str:
    return "/nix/store/" + filler * (length - len("/nix/store/"))


@pytest.mark.parametrize("length", [1, 99, 100, 101, 255, 256, 1000])
@pytest.mark.parametrize("kind", [REGTYPE, DIRTYPE, SYMTYPE])
def test_name_lengths_around_the_ustar_field_match_tarfile(length: int, kind: bytes) -> None:
    name = name_of(max(length, 12))
    assert_both_match(
        Member(name=name, type=kind, linkname="t" * length if kind == SYMTYPE else "")
    )


@pytest.mark.parametrize(
    "name",
    [
        "/nix/store/é",  # non-ASCII, short: still a path record
        "/nix/store/日本語/ファイル",
        "/nix/store/\U0001f600",
        "/nix/store/\udcff\udcfe",  # bytes that are not UTF-8: hdrcharset=BINARY
        "/nix/store/mixed-é-\udc80",
        "/nix/store/" + "é" * 60,  # 60 characters, 120 bytes
        "/nix/store/" + "a" * 89,  # exactly 100 characters
    ],
)
def test_names_that_are_not_ascii_match_tarfile(name: str) -> None:
    assert_both_match(Member(name=name))
    assert_both_match(Member(name="/nix/store/l", type=SYMTYPE, linkname=name))


@pytest.mark.parametrize("number", [0, 8**7 - 1, 8**7, 2**32, 4_000_000_000])
def test_ids_past_the_octal_fields_match_tarfile(number: int) -> None:
    assert_both_match(Member(name="/f", uid=number, gid=number))


@pytest.mark.parametrize("size", [0, 1, 511, 512, 513, 8**11 - 1, 8**11, 5 * 2**40])
def test_sizes_match_tarfile(size: int) -> None:
    assert_both_match(Member(name="/f", size=size))


@pytest.mark.parametrize("mtime", [0, -1, -(2**31), 8**11 - 1, 8**11, 32503680000, 1.5, -0.5])
def test_mtimes_match_tarfile(mtime: int | float) -> None:
    assert_both_match(Member(name="/f", mtime=mtime))


@pytest.mark.parametrize("owner", ["", "root", "x" * 32, "x" * 33, "ünïcode", "\udcff"])
def test_owner_names_match_tarfile(owner: str) -> None:
    assert_both_match(Member(name="/f", uname=owner, gname=owner[::-1]))


@pytest.mark.parametrize("mode", [0, 0o644, 0o4755, 0o2755, 0o1777, 0o7777, 0o100644])
def test_modes_match_tarfile(mode: int) -> None:
    assert_both_match(Member(name="/f", mode=mode))


def test_device_numbers_and_existing_pax_records_match_tarfile() -> None:
    assert_both_match(Member(name="/dev/null", type=CHRTYPE, devmajor=1, devminor=3))
    assert_both_match(Member(name="/b", type=BLKTYPE, devmajor=259, devminor=0))
    assert_both_match(
        Member(
            name="/f", mtime=1.25, pax_headers={"mtime": "1.25", "comment": "kept", "path": "/g"}
        )
    )


def test_padding_and_end_of_archive_are_what_tarfile_writes() -> None:
    for size in (0, 1, 511, 512, 513):
        assert len(padding(size)) == (-size) % BLOCKSIZE
    for members in (0, 1, 18, 19, 40):
        out = io.BytesIO()
        with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
            for number in range(members):
                tar.addfile(tarfile.TarInfo(f"f{number}"))
        headers = members * BLOCKSIZE
        assert end_of_archive(headers) == out.getvalue()[headers:]
        assert (headers + len(end_of_archive(headers))) % RECORDSIZE == 0


# Text as os.fsdecode gives it: any code point but NUL and "/", and lone surrogates only
# in the escape range; path-like, often long enough to need a record.
name_chars = st.one_of(
    st.characters(blacklist_categories=["Cs"], blacklist_characters="\0/"),
    st.characters(min_codepoint=0xDC80, max_codepoint=0xDCFF),
)
components = st.text(name_chars, min_size=1, max_size=40)
paths = st.lists(components, min_size=1, max_size=8).map(lambda parts: "/" + "/".join(parts))
ids = st.one_of(st.integers(0, 70000), st.integers(0, 2**40))
times = st.one_of(st.integers(-(2**40), 2**40), st.integers(0, 8**11 + 10))


@given(
    name=paths,
    kind=st.sampled_from(TYPES),
    linkname=st.one_of(st.just(""), paths, st.text(name_chars, max_size=300)),
    mode=st.integers(0, 0o177777),
    size=st.one_of(st.integers(0, 2**20), st.integers(0, 2**45)),
    uid=ids,
    gid=ids,
    mtime=times,
    uname=st.text(name_chars, max_size=40),
    gname=st.text(name_chars, max_size=40),
    device=st.tuples(st.integers(0, 8**7 - 1), st.integers(0, 8**7 - 1)),
)
def test_random_members_match_tarfile(
    name: str,
    kind: bytes,
    linkname: str,
    mode: int,
    size: int,
    uid: int,
    gid: int,
    mtime: int,
    uname: str,
    gname: str,
    device: tuple[int, int],
) -> None:
    assert_both_match(
        Member(
            name=name,
            type=kind,
            mode=mode,
            uid=uid,
            gid=gid,
            size=size,
            mtime=mtime,
            linkname=linkname,
            uname=uname,
            gname=gname,
            devmajor=device[0],
            devminor=device[1],
        )
    )


@given(mtime=st.floats(-(2.0**40), 2.0**40, allow_nan=False), size=st.integers(0, 2**40))
def test_float_mtimes_of_base_layers_match_tarfile(mtime: float, size: int) -> None:
    assert_both_match(Member(name="/f", mtime=mtime, size=size))
