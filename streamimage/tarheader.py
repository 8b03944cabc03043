"""Tar member headers, byte for byte as CPython 3.11 ``tarfile`` writes them in PAX format.

PURE: no I/O, no os, no anyio; bytes in, bytes out.
Rule: every header equals ``TarInfo.tobuf(PAX_FORMAT, "utf-8", "surrogateescape")`` for the
same fields (tests/test_tarheader.py holds that against tarfile itself).  Names and link
targets are ``str`` as ``os.fsdecode`` gives them: bytes that are not UTF-8 arrive as
surrogate escapes and leave as the original bytes under ``hdrcharset=BINARY``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from zlib import adler32

BLOCKSIZE = 512  # tar block, bytes
RECORDSIZE = 20 * BLOCKSIZE  # tarfile pads the archive to whole records (tar -b20)
NUL = b"\0"

REGTYPE = b"0"
SYMTYPE = b"2"
CHRTYPE = b"3"
BLKTYPE = b"4"
DIRTYPE = b"5"
FIFOTYPE = b"6"
XHDTYPE = b"x"  # POSIX.1-2001 extended header

POSIX_MAGIC = b"ustar\x0000"  # magic "ustar\0" + version "00"
PAX_NAME = "././@PaxHeader"  # tarfile's fixed name for extended headers, as star writes
LENGTH_NAME = 100
LENGTH_LINK = 100
LENGTH_OWNER = 32
_CHECKSUM_SPACES = 8 * ord(" ")  # the checksum field counts as 8 spaces while summing
_BINARY_RECORD = b"21 hdrcharset=BINARY\n"
_DEVICE_TYPES = (CHRTYPE, BLKTYPE)
_NO_DEVICE = NUL * 16  # devmajor, devminor: NUL-filled unless a device (Go writes "0000000")
_PREFIX_AND_PAD = NUL * (155 + 12)  # prefix (unused in PAX output) + block remainder


@dataclass(frozen=True, slots=True)
class Member:
    """Every field of a tar header, as on ``tarfile.TarInfo``."""

    name: str
    type: bytes = REGTYPE
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    size: int = 0
    mtime: int | float = 0
    linkname: str = ""
    uname: str = ""
    gname: str = ""
    devmajor: int = 0
    devminor: int = 0
    pax_headers: Mapping[str, str] = field(default_factory=dict)


_PADDING = [NUL * (-used % BLOCKSIZE) for used in range(BLOCKSIZE)]


def padding(size: int) -> bytes:
    """The NULs that fill a member's data of ``size`` bytes up to a whole block."""
    return _PADDING[size % BLOCKSIZE]


def end_of_archive(offset: int) -> bytes:
    """Two zero blocks, then zeros up to a whole record, for an archive ``offset`` bytes long."""
    end = offset + 2 * BLOCKSIZE
    return NUL * (2 * BLOCKSIZE + (-end % RECORDSIZE))


def _octal(value: int, digits: int) -> bytes:
    # tarfile.itn: digits-1 zero-padded octal digits and a NUL
    return b"%0*o\0" % (digits - 1, value)


def _text(value: str, length: int) -> bytes:
    # tarfile.stn with ("ascii", "replace"): one "?" per character that isn't ASCII
    data = value.encode("ascii", "replace")[:length]
    return data + NUL * (length - len(data))


def _byte_sum(data: bytes) -> int:
    """sum(data) for at most 256 bytes, at C speed: adler32's low half is 1 + the byte sum
    modulo 65521, and 256 bytes of 0xff sum to 65280, which doesn't wrap."""
    return (adler32(data) & 0xFFFF) - 1


def _pax_record(keyword: bytes, value: bytes) -> bytes:
    # "%d %s=%s\n", where %d counts the whole record including its own digits: the
    # fixed point tarfile's loop finds (a length of 8 gives 9; of 9, 11; of 98, 101)
    length = len(keyword) + len(value) + 3
    if length <= 8:
        total = length + 1
    elif length <= 97:
        total = length + 2
    elif length <= 996:
        total = length + 3
    else:
        total = length + len(str(length))
        if len(str(total)) != len(str(length)):
            total = length + len(str(total))
    return b"%d %s=%s\n" % (total, keyword, value)


def _pax_value(value: str) -> tuple[bytes, bool]:
    """The record bytes of a text value, and whether it forces ``hdrcharset=BINARY``."""
    if value.isascii():
        return value.encode("ascii"), False
    try:
        return value.encode("utf-8"), False
    except UnicodeEncodeError:
        return value.encode("utf-8", "surrogateescape"), True


def _ustar_block(
    name: bytes,
    mode: bytes,
    owner: bytes,
    size: bytes,
    mtime: bytes,
    type_: bytes,
    linkname: bytes,
    tail: bytes,
) -> bytes:
    # tail: magic, uname, gname, devmajor, devminor, prefix, pad (all of it after linkname)
    head = name + mode + owner + size + mtime
    rest = type_ + linkname + tail
    checksum = sum(head) + sum(rest) + _CHECKSUM_SPACES
    # the checksum: six octal digits, a NUL, and one of the spaces it was summed as
    return b"%s%06o\0 %s" % (head, checksum, rest)


# The extended header's block differs only in its size field: everything else is fixed.
_PAX_HEAD = _text(PAX_NAME, LENGTH_NAME) + _octal(0, 8) * 3  # name, mode, uid, gid
_PAX_MTIME = _octal(0, 12)
_PAX_REST = XHDTYPE + NUL * LENGTH_LINK + POSIX_MAGIC + NUL * (2 * LENGTH_OWNER)
_PAX_REST += _NO_DEVICE + _PREFIX_AND_PAD
_PAX_FIXED_SUM = sum(_PAX_HEAD) + sum(_PAX_MTIME) + sum(_PAX_REST) + _CHECKSUM_SPACES


def _extended_block(length: int) -> bytes:
    size = b"%011o\0" % length
    checksum = _PAX_FIXED_SUM + sum(size)
    return b"%s%s%s%06o\0 %s" % (_PAX_HEAD, size, _PAX_MTIME, checksum, _PAX_REST)


_EXTENDED_BLOCKS = [_extended_block(length) for length in range(2 * BLOCKSIZE)]


def _extended_header(records: bytes) -> bytes:
    """The ``././@PaxHeader`` block and its zero-padded records."""
    length = len(records)
    # the block depends on the records' length alone: the usual ones are made once
    block = _EXTENDED_BLOCKS[length] if length < 2 * BLOCKSIZE else _extended_block(length)
    return block + records + _PADDING[length % BLOCKSIZE]


def _with_pax(records: list[bytes], binary: bool, block: bytes) -> bytes:
    if not records:
        return block
    if binary:
        records.insert(0, _BINARY_RECORD)
    return _extended_header(b"".join(records)) + block


def encode_header(member: Member) -> bytes:
    """The header blocks of ``member``: an extended header first where one is needed.

    Raises:
        ValueError: a device number does not fit its octal field (tarfile raises too).
    """
    name = member.name
    if member.type == DIRTYPE and not name.endswith("/"):
        name += "/"
    pax: dict[str, str] = dict(member.pax_headers)
    texts = {"name": name, "linkname": member.linkname, "uname": member.uname}
    texts["gname"] = member.gname
    for key, keyword, limit in (
        ("name", "path", LENGTH_NAME),
        ("linkname", "linkpath", LENGTH_LINK),
        ("uname", "uname", LENGTH_OWNER),
        ("gname", "gname", LENGTH_OWNER),
    ):
        text = texts[key]
        if keyword not in pax and (not text.isascii() or len(text) > limit):
            pax[keyword] = text
    numbers: dict[str, int] = {}
    number: int | float
    for key, number, digits in (
        ("uid", member.uid, 8),
        ("gid", member.gid, 8),
        ("size", member.size, 12),
        ("mtime", member.mtime, 12),
    ):
        # tarfile: out of range -> 0 in the field and the value in a record; a float
        # -> rounded in the field and its repr in a record; an existing record wins
        whole = round(number) if isinstance(number, float) else number
        fits = 0 <= whole < 8 ** (digits - 1)
        numbers[key] = whole if fits else 0
        if (not fits or isinstance(number, float)) and key not in pax:
            pax[key] = str(number)

    records: list[bytes] = []
    binary = False
    for keyword, text in pax.items():
        encoded, surrogates = _pax_value(text)
        binary = binary or surrogates
        records.append(_pax_record(keyword.encode("utf-8"), encoded))

    if member.type in _DEVICE_TYPES:
        device = _octal(member.devmajor, 8) + _octal(member.devminor, 8)
        if len(device) != 16:
            raise ValueError(f"{member.name}: device number out of range")
    else:
        device = _NO_DEVICE
    block = _ustar_block(
        _text(name, LENGTH_NAME),
        _octal(member.mode & 0o7777, 8),
        _octal(numbers["uid"], 8) + _octal(numbers["gid"], 8),
        _octal(numbers["size"], 12),
        _octal(numbers["mtime"], 12),
        member.type,
        _text(member.linkname, LENGTH_LINK),
        POSIX_MAGIC
        + _text(member.uname, LENGTH_OWNER)
        + _text(member.gname, LENGTH_OWNER)
        + device
        + _PREFIX_AND_PAD,
    )
    return _with_pax(records, binary, block)


class HeaderEncoder:
    """Headers for the members of one archive that share uid, gid, names and mtime.

    The fast path of :func:`encode_header`: every field that is the same for all members
    of a layer (and its pax records, and its share of the checksum) is prepared once.
    Integers only: mtime is whole seconds, as the conf gives it.
    """

    __slots__ = (
        "_binary",
        "_fixed_sum",
        "_modes",
        "_mtime_field",
        "_owner",
        "_records_after_size",
        "_records_before_size",
        "_tail",
        "_tail_device",
        "_tail_sum",
    )

    def __init__(self, *, uid: int, gid: int, uname: str, gname: str, mtime: int) -> None:
        # Records in tarfile's order: path, linkpath | uname, gname, uid, gid | size | mtime.
        before: list[bytes] = []
        binary = False
        for keyword, text in ((b"uname", uname), (b"gname", gname)):
            if not text.isascii() or len(text) > LENGTH_OWNER:
                value, surrogates = _pax_value(text)
                binary = binary or surrogates
                before.append(_pax_record(keyword, value))
        owner = b""
        for keyword, number in ((b"uid", uid), (b"gid", gid)):
            fits = 0 <= number < 8**7
            owner += _octal(number if fits else 0, 8)
            if not fits:
                before.append(_pax_record(keyword, str(number).encode()))
        fits = 0 <= mtime < 8**11
        self._mtime_field = _octal(mtime if fits else 0, 12)
        self._records_after_size = b"" if fits else _pax_record(b"mtime", str(mtime).encode())
        self._records_before_size = b"".join(before)
        self._binary = binary
        self._owner = owner
        self._tail_device = POSIX_MAGIC + _text(uname, LENGTH_OWNER) + _text(gname, LENGTH_OWNER)
        self._tail = self._tail_device + _NO_DEVICE + _PREFIX_AND_PAD
        self._tail_sum = sum(self._tail)
        self._fixed_sum = sum(owner) + sum(self._mtime_field) + _CHECKSUM_SPACES
        self._modes: dict[int, tuple[bytes, int]] = {}

    def _mode(self, mode: int) -> tuple[bytes, int]:
        field = b"%07o\0" % (mode & 0o7777)
        self._modes[mode] = entry = (field, sum(field))
        return entry

    def encode(
        self,
        name: str,
        type_: bytes,
        mode: int,
        size: int = 0,
        linkname: str = "",
        device: tuple[int, int] = (0, 0),
    ) -> bytes:
        """The header blocks of one member; ``name`` of a directory ends in ``/``."""
        records = b""
        binary = self._binary
        if name.isascii():
            name_field = name.encode("ascii")
            if (length := len(name_field)) > LENGTH_NAME:
                records = _pax_record(b"path", name_field)
                name_field = name_field[:LENGTH_NAME]
                checksum = _byte_sum(name_field)
            else:
                checksum = _byte_sum(name_field)
                name_field += NUL * (LENGTH_NAME - length)
        else:
            value, binary_name = _pax_value(name)
            binary = binary or binary_name
            records = _pax_record(b"path", value)
            name_field = _text(name, LENGTH_NAME)
            checksum = sum(name_field)
        if not linkname:
            link_field = NUL * LENGTH_LINK
        elif linkname.isascii() and len(linkname) <= LENGTH_LINK:
            link_field = linkname.encode("ascii")
            checksum += _byte_sum(link_field)
            link_field += NUL * (LENGTH_LINK - len(link_field))
        else:
            value, binary_link = _pax_value(linkname)
            binary = binary or binary_link
            records += _pax_record(b"linkpath", value)
            link_field = _text(linkname, LENGTH_LINK)
            checksum += sum(link_field)
        records += self._records_before_size
        if size < 8**11:
            size_field = b"%011o\0" % size
        else:
            size_field = _octal(0, 12)
            records += _pax_record(b"size", str(size).encode())
        records += self._records_after_size
        if type_ in _DEVICE_TYPES:
            tail = self._tail_device + _octal(device[0], 8) + _octal(device[1], 8)
            tail += _PREFIX_AND_PAD
            checksum += sum(tail)
        else:
            tail = self._tail
            checksum += self._tail_sum
        mode_field, mode_sum = self._modes.get(mode) or self._mode(mode)
        checksum += self._fixed_sum + mode_sum + _byte_sum(size_field) + type_[0]
        block = b"%s%s%s%s%s%06o\0 %s%s%s" % (
            name_field,
            mode_field,
            self._owner,
            size_field,
            self._mtime_field,
            checksum,
            type_,
            link_field,
            tail,
        )
        if not records:
            return block
        if binary:
            records = _BINARY_RECORD + records
        return _extended_header(records) + block
