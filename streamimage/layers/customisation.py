"""The customisation layer: a pre-built ``layer.tar`` and the ``checksum`` file beside it.

IO: reads the checksum file, stats layer.tar, reads its tar headers when it is opened,
and hashes it to verify the checksum (ASYNC as a Layer: the verification runs in a worker
thread, ahead, beside the other layers).
Rule: the checksum is proved before the image is finished; a checksum that doesn't match
layer.tar, or a layer.tar that is not a tar archive, is a CustomisationError, never a layer
with a wrong diff_id or one no client can unpack.
"""

from __future__ import annotations

import grp
import hashlib
import os
import pwd
import stat
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import anyio.to_thread
from anyio.from_thread import check_cancelled

from streamimage.engine.framing import Chunk, FileSpan, Named, read_span
from streamimage.engine.walk import FileIdentity
from streamimage.errors import CustomisationError
from streamimage.imagejson import MEDIA_TYPE_LAYER, Descriptor, Digest
from streamimage.layers import CUSTOMISATION, Layer, Once, TarMember
from streamimage.tarheader import REGTYPE, Member, encode_header


@dataclass(frozen=True, slots=True)
class Customisation:
    """The customisation layer, as found on disk."""

    directory: str  # as the conf names it (the history comment shows it)
    checksum_path: str
    diff_id: Digest  # what the checksum file says
    span: FileSpan  # layer.tar's content
    mode: int
    uid: int
    gid: int
    uname: str
    gname: str

    def header(self, name: str, mtime: int) -> bytes:
        """Its outer member header: owner and mode of layer.tar on disk, as gettarinfo."""
        return encode_header(
            Member(
                name=name,
                type=REGTYPE,
                mode=self.mode,
                uid=self.uid,
                gid=self.gid,
                size=self.span.size,
                mtime=mtime,
                uname=self.uname,
                gname=self.gname,
            )
        )

    def verify(self, checkpoint: Callable[[], None]) -> None:
        """Hash layer.tar and hold it to the checksum file (blocking).

        Raises:
            CustomisationError: they differ.
            StoreError, ChangedError: layer.tar can't be read, or changed.
        """
        digest = hashlib.sha256()
        read_span(self.span, digest.update, checkpoint)
        self.check(Digest(digest.hexdigest()))

    def check(self, found: Digest) -> None:
        """Hold the sha256 ``found`` of layer.tar (by verify or a hash pass) to the checksum.

        Raises:
            CustomisationError: they differ.
        """
        if found != self.diff_id:
            raise CustomisationError(
                f"{self.checksum_path}: checksum {self.diff_id.hex} does not match "
                f"{self.span.path}, whose sha256 is {found.hex}"
            )


def _user(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return ""  # no passwd entry: tarfile's gettarinfo leaves the name empty


def _group(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return ""


def _check_tar(layer_path: str, real: str) -> None:
    """Raises: CustomisationError: layer.tar is not a (plain) tar archive: its headers,
    read one by one to the end, are not tar headers or end inside a member."""
    try:
        with tarfile.open(real, "r:") as tar:
            while tar.next() is not None:
                vars(tar)["members"].clear()  # each header checked, none kept (tarfile keeps all)
    except (tarfile.TarError, EOFError) as exc:
        raise CustomisationError(f"{layer_path}: is not a tar archive: {exc}") from None
    except OSError as exc:
        raise CustomisationError(f"{layer_path}: cannot read: {exc.strerror or exc}") from None


def open_customisation(directory: str) -> Customisation:
    """Read the checksum file and stat layer.tar (blocking).

    Raises:
        CustomisationError: either is missing, the checksum is malformed, or layer.tar
        is not a tar archive.
    """
    checksum_path = os.path.join(directory, "checksum")
    layer_path = os.path.join(directory, "layer.tar")
    try:
        with open(checksum_path, encoding="ascii", errors="replace") as file:
            text = file.read(200).strip()
    except FileNotFoundError:
        raise CustomisationError(f"{checksum_path}: customisation checksum is missing") from None
    except OSError as exc:
        raise CustomisationError(f"{checksum_path}: cannot read: {exc.strerror}") from None
    try:
        diff_id = Digest.parse(text)
    except ValueError:
        raise CustomisationError(
            f"{checksum_path}: not a sha256 (64 lowercase hex digits): {text[:80]!r}"
        ) from None
    real = os.path.realpath(layer_path)
    try:
        st = os.stat(real)
    except FileNotFoundError:
        raise CustomisationError(f"{layer_path}: customisation layer.tar is missing") from None
    except OSError as exc:
        raise CustomisationError(f"{layer_path}: cannot stat: {exc.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise CustomisationError(f"{layer_path}: is not a regular file")
    _check_tar(layer_path, real)
    identity = FileIdentity.of(st)
    return Customisation(
        directory=directory,
        checksum_path=checksum_path,
        diff_id=diff_id,
        span=FileSpan(real, st.st_size, identity),
        mode=st.st_mode,
        uid=st.st_uid,
        gid=st.st_gid,
        uname=_user(st.st_uid),
        gname=_group(st.st_gid),
    )


class CustomisationLayer(Layer):
    """The customisation layer: layer.tar as it is, once its checksum is proved."""

    kind = CUSTOMISATION

    def __init__(self, customisation: Customisation, mtime: int) -> None:
        self.history = (customisation.directory,)
        self._customisation = customisation
        self._mtime = mtime
        self._verified = Once(self._verify)

    async def _verify(self) -> Digest:
        await anyio.to_thread.run_sync(self._customisation.verify, check_cancelled)
        return self._customisation.diff_id

    async def prepare(self) -> None:
        await self._verified()

    async def diff_id(self) -> Digest:
        return await self._verified()

    async def descriptor(self) -> Descriptor:
        return Descriptor(MEDIA_TYPE_LAYER, await self._verified(), self._customisation.span.size)

    def known_size(self) -> int:
        return self._customisation.span.size

    def chunks(self) -> Iterator[Chunk]:
        return Named([self._customisation.span])

    def docker_member(self, name: str) -> TarMember:
        # the reference adds layer.tar with gettarinfo: its owner and mode on disk
        header = self._customisation.header(name, self._mtime)
        return TarMember(name, header, self._customisation.span.size)
