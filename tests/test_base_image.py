"""Reading a from_image archive: docker-archive (plain, gzip, Docker 25+) and OCI layout.

Oracle: archives built here with the standard library (tarfile, gzip, json, hashlib), so what
open_base_image must find (layers, diff_ids, config, bytes, digests) is known independently;
headers against ``TarInfo.tobuf`` in PAX format; each refusal names the archive and culprit.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import random
import tarfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest

from streamimage.errors import BaseImageError
from streamimage.layers.base import BaseImage, BaseImageLayer, BaseLayer, open_base_image
from tests.conftest import sha256_hex

OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"

BASE_CONFIG: dict[str, Any] = {"Env": ["PATH=/bin", "A=1"], "Cmd": ["/bin/sh"]}


def json_bytes(document: Any) -> bytes:
    return json.dumps(document).encode()


def layer_tar(*files: tuple[str, bytes]) -> bytes:
    """A small layer: a tar of the given files, as tarfile writes it."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in files:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 1700000000
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


LAYER_1 = layer_tar(("etc/os-release", b"ID=base\n"))
LAYER_2 = layer_tar(("bin/sh", b"\x7fELF" + bytes(range(256)) * 3), ("bin/ls", b""))
LAYER_GZ_INNER = layer_tar(("usr/share/doc", b"zipped " * 100))
LAYER_GZ = gzip.compress(LAYER_GZ_INNER, mtime=0)


@dataclass(frozen=True, slots=True)
class Entry:
    """One member of the archive under construction."""

    name: str
    data: bytes = b""
    tweak: Callable[[tarfile.TarInfo], None] | None = None
    directory: bool = False


def write_tar(
    path: Path, entries: Sequence[Entry], *, compress: bool = False, fmt: int = tarfile.PAX_FORMAT
) -> str:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=fmt) as tar:
        for entry in entries:
            info = tarfile.TarInfo(entry.name)
            if entry.directory:
                info.type = tarfile.DIRTYPE
                info.mode = 0o755
                tar.addfile(info)
                continue
            info.size = len(entry.data)
            info.mode = 0o644
            if entry.tweak is not None:
                entry.tweak(info)
            tar.addfile(info, io.BytesIO(entry.data))
    data = buffer.getvalue()
    path.write_bytes(gzip.compress(data, mtime=0) if compress else data)
    return str(path)


@dataclass(frozen=True, slots=True)
class DockerArchive:
    """A docker-archive as ``docker save`` before Docker 25 lays it out."""

    layers: Sequence[bytes] = (LAYER_1, LAYER_2)
    diff_ids: Sequence[str] | None = None  # default: the uncompressed layers' sha256
    config: Any = field(default_factory=lambda: dict(BASE_CONFIG))
    image: dict[str, Any] | None = None  # the whole image config, overriding the above
    manifest: Any = None  # the whole manifest.json, overriding the computed one
    prefix: str = ""  # "./" for an archive written by `tar -C dir .`
    leave_out: Sequence[str] = ()  # member names not to write

    def layer_names(self) -> list[str]:
        return [f"{sha256_hex(layer)}/layer.tar" for layer in self.layers]

    def image_config(self) -> dict[str, Any]:
        if self.image is not None:
            return self.image
        diff_ids = self.diff_ids
        if diff_ids is None:
            diff_ids = [f"sha256:{sha256_hex(uncompressed(layer))}" for layer in self.layers]
        return {
            "architecture": "amd64",
            "os": "linux",
            "config": self.config,
            "rootfs": {"type": "layers", "diff_ids": list(diff_ids)},
        }

    def config_name(self) -> str:
        return f"{sha256_hex(json_bytes(self.image_config()))}.json"

    def entries(self) -> list[Entry]:
        manifest = self.manifest
        if manifest is None:
            manifest = [
                {"Config": self.config_name(), "RepoTags": ["base:1"], "Layers": self.layer_names()}
            ]
        members = [Entry(self.config_name(), json_bytes(self.image_config()))]
        for name, data in zip(self.layer_names(), self.layers, strict=True):
            members += [Entry(name.split("/")[0], directory=True), Entry(name, data)]
        members.append(Entry("manifest.json", json_bytes(manifest)))
        return [
            replace(entry, name=self.prefix + entry.name)
            for entry in members
            if entry.name not in self.leave_out
        ]

    def write(self, path: Path, *, compress: bool = False) -> str:
        return write_tar(path, self.entries(), compress=compress)


def uncompressed(blob: bytes) -> bytes:
    return gzip.decompress(blob) if blob.startswith(b"\x1f\x8b") else blob


def descriptor(media_type: str, data: bytes) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": f"sha256:{sha256_hex(data)}", "size": len(data)}


@dataclass(frozen=True, slots=True)
class OciArchive:
    """An OCI image layout in a tar (image-layout.md): oci-layout, index.json, blobs."""

    layers: Sequence[tuple[str, bytes]] = ((OCI_LAYER, LAYER_1), (OCI_LAYER_GZIP, LAYER_GZ))
    config: Any = field(default_factory=lambda: dict(BASE_CONFIG))
    index: Any = None  # the whole index.json, overriding the computed one
    sizes: dict[int, int] = field(default_factory=dict)  # layer number -> size claimed
    leave_out: Sequence[bytes] = ()  # blobs not to write
    prefix: str = ""

    def image_config(self) -> bytes:
        diff_ids = [f"sha256:{sha256_hex(uncompressed(data))}" for _, data in self.layers]
        image = {
            "os": "linux",
            "config": self.config,
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        }
        return json_bytes(image)

    def manifest(self) -> bytes:
        layers = [descriptor(media_type, data) for media_type, data in self.layers]
        for number, size in self.sizes.items():
            layers[number]["size"] = size
        return json_bytes(
            {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": descriptor(OCI_CONFIG, self.image_config()),
                "layers": layers,
            }
        )

    def entries(self) -> list[Entry]:
        index = self.index
        if index is None:
            index = {
                "schemaVersion": 2,
                "mediaType": OCI_INDEX,
                "manifests": [descriptor(OCI_MANIFEST, self.manifest())],
            }
        blobs = [self.manifest(), self.image_config(), *(data for _, data in self.layers)]
        members = [
            Entry("oci-layout", b'{"imageLayoutVersion":"1.0.0"}'),
            Entry("index.json", json_bytes(index)),
            Entry("blobs", directory=True),
            Entry("blobs/sha256", directory=True),
        ]
        members += [
            Entry(f"blobs/sha256/{sha256_hex(blob)}", blob)
            for blob in dict.fromkeys(blobs)
            if blob not in self.leave_out
        ]
        return [replace(entry, name=self.prefix + entry.name) for entry in members]

    def write(self, path: Path) -> str:
        return write_tar(path, self.entries())


@pytest.fixture
def archive_path(tmp_path: Path) -> Path:
    return tmp_path / "base.tar"


@pytest.fixture
def opened() -> Iterator[list[BaseImage]]:
    """Images opened by a test, closed after it."""
    images: list[BaseImage] = []
    yield images
    for image in images:
        image.close()


def open_image(path: str, opened: list[BaseImage]) -> BaseImage:
    image = open_base_image(path)
    opened.append(image)
    return image


def layer_bytes(image: BaseImage, layer: BaseLayer) -> bytes:
    return b"".join(image.chunks(layer))


def refusal(path: str, *, one_line: bool = True) -> str:
    """The message of the BaseImageError opening ``path`` raises; it names the archive."""
    with pytest.raises(BaseImageError) as caught:
        open_base_image(path).close()
    message = str(caught.value)
    assert message.startswith(f"{path}: ")
    if one_line:  # errors.py: one line, which the cli prints as it is
        assert "\n" not in message
    return message


# --- docker-archive ----------------------------------------------------------------------


def test_a_docker_archive_gives_its_layers_in_manifest_order(
    archive_path: Path, opened: list[BaseImage]
) -> None:
    archive = DockerArchive()
    image = open_image(archive.write(archive_path), opened)
    assert image.path == str(archive_path)
    assert [layer.name for layer in image.layers] == archive.layer_names()
    assert [str(layer.diff_id) for layer in image.layers] == [
        f"sha256:{sha256_hex(LAYER_1)}",
        f"sha256:{sha256_hex(LAYER_2)}",
    ]
    assert [layer.size for layer in image.layers] == [len(LAYER_1), len(LAYER_2)]
    assert [layer_bytes(image, layer) for layer in image.layers] == [LAYER_1, LAYER_2]
    assert image.config == BASE_CONFIG


def test_the_manifest_order_wins_over_the_archive_order(
    archive_path: Path, opened: list[BaseImage]
) -> None:
    archive = DockerArchive()
    names = archive.layer_names()
    image_config = archive.image_config()
    image_config["rootfs"]["diff_ids"].reverse()
    swapped = replace(archive, image=image_config)
    swapped = replace(swapped, manifest=[{"Config": swapped.config_name(), "Layers": names[::-1]}])
    image = open_image(swapped.write(archive_path), opened)
    assert [layer.name for layer in image.layers] == names[::-1]
    assert [layer.diff_id.hex for layer in image.layers] == [
        sha256_hex(LAYER_2),
        sha256_hex(LAYER_1),
    ]
    assert layer_bytes(image, image.layers[0]) == LAYER_2


def test_a_gzip_docker_archive_is_read_like_a_plain_one(
    tmp_path: Path, opened: list[BaseImage]
) -> None:
    archive = DockerArchive()
    plain = open_image(archive.write(tmp_path / "plain.tar"), opened)
    zipped_path = archive.write(tmp_path / "base.tar.gz", compress=True)
    assert Path(zipped_path).read_bytes()[:2] == b"\x1f\x8b"
    zipped = open_image(zipped_path, opened)
    assert [(layer.name, layer.diff_id) for layer in zipped.layers] == [
        (layer.name, layer.diff_id) for layer in plain.layers
    ]
    assert zipped.config == plain.config == BASE_CONFIG
    assert [layer_bytes(zipped, layer) for layer in zipped.layers] == [LAYER_1, LAYER_2]


def test_an_image_config_without_config_gives_none(
    archive_path: Path, opened: list[BaseImage]
) -> None:
    image = DockerArchive().image_config()
    del image["config"]
    path = DockerArchive(image=image).write(archive_path)
    assert open_image(path, opened).config is None


def test_a_base_image_without_layers_is_read(archive_path: Path, opened: list[BaseImage]) -> None:
    image = open_image(DockerArchive(layers=()).write(archive_path), opened)
    assert image.layers == ()
    assert image.config == BASE_CONFIG


def test_a_docker_25_archive_is_read_through_its_manifest_json(
    archive_path: Path, opened: list[BaseImage]
) -> None:
    # docker save (25+) writes one tar that is both layouts, layers under blobs/sha256/
    oci = OciArchive(layers=((OCI_LAYER, LAYER_1), (OCI_LAYER, LAYER_2)))
    config_blob = oci.image_config()
    layer_names = [f"blobs/sha256/{sha256_hex(LAYER_1)}", f"blobs/sha256/{sha256_hex(LAYER_2)}"]
    manifest = [
        {
            "Config": f"blobs/sha256/{sha256_hex(config_blob)}",
            "RepoTags": ["base:1"],
            "Layers": layer_names,
        }
    ]
    path = write_tar(archive_path, [*oci.entries(), Entry("manifest.json", json_bytes(manifest))])
    image = open_image(path, opened)
    assert [layer.name for layer in image.layers] == layer_names
    assert [layer.blob for layer in image.layers] == [None, None]  # read as a docker-archive
    assert [layer_bytes(image, layer) for layer in image.layers] == [LAYER_1, LAYER_2]


def test_a_layer_larger_than_one_read_comes_whole_in_order(
    archive_path: Path, opened: list[BaseImage]
) -> None:
    big = bytes(range(251)) * (5 * 1024 * 1024 // 251)  # some MiB, a prime-length pattern
    image = open_image(DockerArchive(layers=(big,)).write(archive_path), opened)
    chunks = list(image.chunks(image.layers[0]))
    assert len(chunks) > 1
    assert b"".join(chunks) == big
    described = image.describe(image.layers[0])
    assert (described.digest.hex, described.size) == (sha256_hex(big), len(big))


def test_a_docker_archive_with_dot_slash_names_is_read(
    archive_path: Path, opened: list[BaseImage]
) -> None:
    image = open_image(DockerArchive(prefix="./").write(archive_path), opened)
    assert [layer_bytes(image, layer) for layer in image.layers] == [LAYER_1, LAYER_2]
    assert image.config == BASE_CONFIG


# --- describe ----------------------------------------------------------------------------


def test_describe_an_uncompressed_docker_layer_reads_its_sha256_and_size(
    archive_path: Path, opened: list[BaseImage]
) -> None:
    image = open_image(DockerArchive().write(archive_path), opened)
    described = image.describe(image.layers[1])
    assert described.media_type == OCI_LAYER
    assert str(described.digest) == f"sha256:{sha256_hex(LAYER_2)}"
    assert described.size == len(LAYER_2)


def test_describe_a_gzip_docker_layer_gives_the_compressed_digest(
    archive_path: Path, opened: list[BaseImage]
) -> None:
    image = open_image(DockerArchive(layers=(LAYER_1, LAYER_GZ)).write(archive_path), opened)
    layer = image.layers[1]
    assert layer.diff_id.hex == sha256_hex(LAYER_GZ_INNER)
    described = image.describe(layer)
    assert described.media_type == OCI_LAYER_GZIP
    assert described.digest.hex == sha256_hex(LAYER_GZ)
    assert described.size == len(LAYER_GZ)
    assert image.describe(image.layers[0]).media_type == OCI_LAYER


def test_describe_an_empty_layer(archive_path: Path, opened: list[BaseImage]) -> None:
    image = open_image(DockerArchive(layers=(b"",)).write(archive_path), opened)
    described = image.describe(image.layers[0])
    assert (described.media_type, described.digest.hex, described.size) == (
        OCI_LAYER,
        sha256_hex(b""),
        0,
    )


# --- BaseLayer.header --------------------------------------------------------------------


def set_mtime(info: tarfile.TarInfo) -> None:
    info.mtime = 1700000000.75  # a PAX mtime may be fractional: tarfile rounds it


def set_large_ids(info: tarfile.TarInfo) -> None:
    info.uid, info.gid = 8**8, 8**7
    info.uname, info.gname = "ünïcode", "g" * 40
    info.mtime = -5


def set_old_regular_type(info: tarfile.TarInfo) -> None:
    info.type = tarfile.AREGTYPE


def set_owner(info: tarfile.TarInfo) -> None:
    info.uid, info.gid, info.uname, info.gname, info.mode = 1000, 100, "user", "users", 0o600


HEADER_CASES = [
    pytest.param(tarfile.PAX_FORMAT, "abc/layer.tar", None, id="pax-plain"),
    pytest.param(tarfile.PAX_FORMAT, "d/" * 60 + "layer.tar", None, id="pax-long-name"),
    pytest.param(tarfile.PAX_FORMAT, "é/layer.tar", None, id="pax-non-ascii"),
    pytest.param(tarfile.PAX_FORMAT, "a\udcff/layer.tar", None, id="pax-non-utf8"),
    pytest.param(tarfile.PAX_FORMAT, "l.tar", set_mtime, id="pax-fractional-mtime"),
    pytest.param(tarfile.PAX_FORMAT, "l.tar", set_large_ids, id="pax-large-ids"),
    pytest.param(tarfile.PAX_FORMAT, "l.tar", set_owner, id="pax-owner"),
    pytest.param(tarfile.GNU_FORMAT, "d/" * 60 + "layer.tar", None, id="gnu-long-name"),
    pytest.param(tarfile.GNU_FORMAT, "l.tar", set_large_ids, id="gnu-large-ids"),
    pytest.param(tarfile.USTAR_FORMAT, "p/" * 60 + "layer.tar", None, id="ustar-prefix"),
    pytest.param(tarfile.USTAR_FORMAT, "l.tar", set_old_regular_type, id="ustar-aregtype"),
]


@pytest.mark.parametrize(("fmt", "name", "tweak"), HEADER_CASES)
def test_a_layer_header_is_tarfiles_pax_header_of_the_member(
    archive_path: Path,
    opened: list[BaseImage],
    fmt: int,
    name: str,
    tweak: Callable[[tarfile.TarInfo], None] | None,
) -> None:
    archive = DockerArchive(layers=(LAYER_1,))
    config = Entry(archive.config_name(), json_bytes(archive.image_config()))
    manifest = Entry("manifest.json", json_bytes([{"Config": config.name, "Layers": [name]}]))
    path = write_tar(archive_path, [config, Entry(name, LAYER_1, tweak), manifest], fmt=fmt)
    image = open_image(path, opened)
    (layer,) = image.layers
    with tarfile.open(archive_path) as tar:
        member = tar.getmember(name)
    assert layer.name == name
    assert layer.header() == member.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
    assert layer_bytes(image, layer) == LAYER_1


# --- OCI image layout --------------------------------------------------------------------


def test_an_oci_archive_gives_layers_diff_ids_config_and_blobs(
    archive_path: Path, opened: list[BaseImage]
) -> None:
    image = open_image(OciArchive().write(archive_path), opened)
    assert [layer.name for layer in image.layers] == [
        f"blobs/sha256/{sha256_hex(LAYER_1)}",
        f"blobs/sha256/{sha256_hex(LAYER_GZ)}",
    ]
    assert [layer.diff_id.hex for layer in image.layers] == [
        sha256_hex(LAYER_1),
        sha256_hex(LAYER_GZ_INNER),
    ]
    assert [layer_bytes(image, layer) for layer in image.layers] == [LAYER_1, LAYER_GZ]
    assert image.config == BASE_CONFIG


def test_describe_an_oci_layer_gives_its_manifest_descriptor(
    archive_path: Path, opened: list[BaseImage]
) -> None:
    image = open_image(OciArchive().write(archive_path), opened)
    described = [image.describe(layer) for layer in image.layers]
    assert [(d.media_type, str(d.digest), d.size) for d in described] == [
        (OCI_LAYER, f"sha256:{sha256_hex(LAYER_1)}", len(LAYER_1)),
        (OCI_LAYER_GZIP, f"sha256:{sha256_hex(LAYER_GZ)}", len(LAYER_GZ)),
    ]


def test_describe_an_oci_layer_reads_nothing(
    archive_path: Path, opened: list[BaseImage], monkeypatch: pytest.MonkeyPatch
) -> None:
    image = open_image(OciArchive().write(archive_path), opened)

    def no_reading(self: BaseImage, layer: BaseLayer) -> Iterator[bytes]:
        raise AssertionError(f"{layer.name} read to describe it")

    monkeypatch.setattr(BaseImage, "stored", no_reading)
    assert image.describe(image.layers[1]).digest.hex == sha256_hex(LAYER_GZ)


def test_an_oci_layout_with_docker_media_types_is_described_with_oci_ones(
    archive_path: Path, opened: list[BaseImage]
) -> None:
    archive = OciArchive(layers=((DOCKER_LAYER, LAYER_1), (DOCKER_LAYER_GZIP, LAYER_GZ)))
    image = open_image(archive.write(archive_path), opened)
    assert [image.describe(layer).media_type for layer in image.layers] == [
        OCI_LAYER,
        OCI_LAYER_GZIP,
    ]


def test_an_oci_archive_reads_the_first_manifest_of_its_index(
    archive_path: Path, opened: list[BaseImage]
) -> None:
    archive = OciArchive()
    other = descriptor(OCI_MANIFEST, b"{}")
    index = {"schemaVersion": 2, "manifests": [descriptor(OCI_MANIFEST, archive.manifest()), other]}
    image = open_image(replace(archive, index=index).write(archive_path), opened)
    assert len(image.layers) == 2


def test_an_oci_archive_with_dot_slash_names_is_read(
    archive_path: Path, opened: list[BaseImage]
) -> None:
    # what `tar -C layout -cf base.tar .` writes: every name starts with "./"
    path = write_tar(archive_path, [Entry(".", directory=True), *OciArchive(prefix="./").entries()])
    image = open_image(path, opened)
    assert [layer_bytes(image, layer) for layer in image.layers] == [LAYER_1, LAYER_GZ]
    assert image.config == BASE_CONFIG


# --- refusals ----------------------------------------------------------------------------


def test_a_missing_archive_is_refused(tmp_path: Path) -> None:
    assert "does not exist" in refusal(str(tmp_path / "absent.tar"))


def test_a_directory_is_refused(tmp_path: Path) -> None:
    assert "is a directory" in refusal(str(tmp_path))


def test_a_file_that_is_not_a_tar_is_refused(archive_path: Path) -> None:
    archive_path.write_bytes(b"this is not a tar archive\n" * 40)
    assert "from_image is not a tar archive" in refusal(str(archive_path), one_line=False)


def test_a_gzip_file_that_is_not_a_tar_is_refused(archive_path: Path) -> None:
    archive_path.write_bytes(gzip.compress(b"this is not a tar archive\n" * 40))
    assert "from_image is not a tar archive" in refusal(str(archive_path), one_line=False)


def test_the_not_a_tar_refusal_is_one_line(archive_path: Path) -> None:
    archive_path.write_bytes(b"this is not a tar archive\n" * 40)
    refusal(str(archive_path))


def test_an_archive_without_manifest_or_index_is_refused(archive_path: Path) -> None:
    path = write_tar(archive_path, [Entry("hello.txt", b"hi")])
    assert "has no manifest.json" in refusal(path)


def test_a_manifest_json_that_is_not_json_is_refused(archive_path: Path) -> None:
    path = write_tar(archive_path, [Entry("manifest.json", b"[{")])
    assert "manifest.json is not valid JSON" in refusal(path)


@pytest.mark.parametrize(
    "manifest",
    [{"Config": "c.json", "Layers": []}, [], ["c.json"], "manifest"],
    ids=["object", "empty-list", "list-of-strings", "string"],
)
def test_a_manifest_json_that_is_not_a_list_of_entries_is_refused(
    archive_path: Path, manifest: Any
) -> None:
    path = DockerArchive(manifest=manifest).write(archive_path)
    assert "manifest.json is not a list of image entries" in refusal(path)


@pytest.mark.parametrize(
    "entry",
    [
        {"Layers": []},
        {"Config": "c.json"},
        {"Config": 1, "Layers": []},
        {"Config": "c", "Layers": "l"},
    ],
    ids=["no-config", "no-layers", "config-not-a-name", "layers-not-a-list"],
)
def test_a_manifest_entry_without_config_or_layers_is_refused(
    archive_path: Path, entry: dict[str, Any]
) -> None:
    path = DockerArchive(manifest=[entry]).write(archive_path)
    assert "manifest.json lacks Config or Layers" in refusal(path)


def test_a_config_named_but_absent_is_refused(archive_path: Path) -> None:
    archive = DockerArchive()
    path = replace(archive, leave_out=[archive.config_name()]).write(archive_path)
    assert f"has no {archive.config_name()}" in refusal(path)


def test_a_layer_named_but_absent_is_refused(archive_path: Path) -> None:
    archive = DockerArchive()
    absent = archive.layer_names()[1]
    message = refusal(replace(archive, leave_out=[absent]).write(archive_path))
    assert f"layer {absent} is named in manifest.json but absent" in message


@pytest.mark.parametrize("count", [1, 3])
def test_a_diff_id_count_other_than_the_layer_count_is_refused(
    archive_path: Path, count: int
) -> None:
    archive = DockerArchive(diff_ids=[f"sha256:{'0' * 64}"] * count)
    message = refusal(archive.write(archive_path))
    assert (
        f"manifest.json lists 2 layers but {archive.config_name()} has {count} diff_ids" in message
    )


def test_an_image_config_without_diff_ids_is_refused(archive_path: Path) -> None:
    archive = DockerArchive(image={"config": {}, "rootfs": {"type": "layers"}})
    assert f"{archive.config_name()} has no rootfs.diff_ids" in refusal(archive.write(archive_path))


@pytest.mark.parametrize(
    "diff_id", [f"sha512:{'a' * 128}", f"sha256:{'A' * 64}", f"sha256:{'a' * 63}", 7, None]
)
def test_a_diff_id_that_is_not_a_sha256_is_refused(archive_path: Path, diff_id: Any) -> None:
    archive = DockerArchive(diff_ids=[f"sha256:{sha256_hex(LAYER_1)}", diff_id])
    message = refusal(archive.write(archive_path))
    assert f"diff_id {diff_id!r} is not a sha256 digest" in message


@pytest.mark.parametrize("config", [["Env"], "config", 3])
def test_a_config_that_is_not_an_object_is_refused(archive_path: Path, config: Any) -> None:
    archive = DockerArchive(config=config)
    message = refusal(archive.write(archive_path))
    assert f"{archive.config_name()} has a config that is not an object" in message


def test_a_layer_that_is_not_a_regular_file_is_refused_on_open(archive_path: Path) -> None:
    archive = DockerArchive(layers=(LAYER_1,))
    (name,) = archive.layer_names()
    entries = [e for e in archive.entries() if e.name != name] + [Entry(name, directory=True)]
    assert name in refusal(write_tar(archive_path, entries))


@pytest.mark.parametrize(
    "index",
    [{"schemaVersion": 2, "manifests": []}, {"schemaVersion": 2}, [], {"manifests": {}}],
    ids=["empty-list", "no-manifests", "not-an-object", "manifests-not-a-list"],
)
def test_an_oci_index_with_no_manifests_is_refused(archive_path: Path, index: Any) -> None:
    assert "index.json lists no manifests" in refusal(OciArchive(index=index).write(archive_path))


def test_an_oci_layer_whose_size_differs_from_its_descriptor_is_refused(
    archive_path: Path,
) -> None:
    archive = OciArchive(sizes={1: len(LAYER_GZ) + 1})
    message = refusal(archive.write(archive_path))
    blob = f"blobs/sha256/{sha256_hex(LAYER_GZ)}"
    manifest = f"blobs/sha256/{sha256_hex(archive.manifest())}"
    assert f"layer {blob}: size {len(LAYER_GZ) + 1} in {manifest} -> {len(LAYER_GZ)}" in message


def test_an_oci_layer_named_but_absent_is_refused(archive_path: Path) -> None:
    archive = OciArchive(leave_out=[LAYER_1])
    message = refusal(archive.write(archive_path))
    assert f"layer blobs/sha256/{sha256_hex(LAYER_1)} is named in" in message


def test_an_oci_manifest_named_but_absent_is_refused(archive_path: Path) -> None:
    archive = OciArchive()
    message = refusal(replace(archive, leave_out=[archive.manifest()]).write(archive_path))
    assert f"has no blobs/sha256/{sha256_hex(archive.manifest())}" in message


def test_an_oci_diff_id_count_other_than_the_layer_count_is_refused(archive_path: Path) -> None:
    archive = OciArchive()
    manifest = json.loads(archive.manifest())
    manifest["layers"].pop()
    manifest_blob = json_bytes(manifest)
    index = {"schemaVersion": 2, "manifests": [descriptor(OCI_MANIFEST, manifest_blob)]}
    entries = [*replace(archive, index=index).entries()]
    entries.append(Entry(f"blobs/sha256/{sha256_hex(manifest_blob)}", manifest_blob))
    message = refusal(write_tar(archive_path, entries))
    assert f"blobs/sha256/{sha256_hex(manifest_blob)} lists 1 layers but" in message
    assert "has 2 diff_ids" in message


def test_a_base_config_env_of_other_than_strings_is_refused(archive_path: Path) -> None:
    archive = DockerArchive(config={"Env": ["A=1", 2, None]})
    assert "config.Env is not a list of strings" in refusal(archive.write(archive_path))


def test_an_archive_cut_short_is_refused_by_name(archive_path: Path) -> None:
    whole = Path(DockerArchive().write(archive_path)).read_bytes()
    archive_path.write_bytes(whole[: len(whole) // 2 + 100])  # inside a member
    assert "from_image is cut short or damaged" in refusal(str(archive_path))


def test_a_device_is_not_read_as_an_archive() -> None:
    assert "not a regular file" in refusal("/dev/zero")


def test_a_manifest_whose_layers_hold_a_number_or_null_is_refused(archive_path: Path) -> None:
    for odd, shown in ((7, "7"), (None, "null")):
        archive = DockerArchive(layers=(LAYER_1,))
        manifest = [{"Config": archive.config_name(), "Layers": [odd]}]
        message = refusal(replace(archive, manifest=manifest).write(archive_path))
        assert f"manifest.json's Layers holds {shown}, not a member name" in message


# --- member names --------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["../evil", "/etc/passwd", "a/../../evil", "./.."])
def test_a_member_outside_the_archive_is_refused(archive_path: Path, name: str) -> None:
    entries = [*DockerArchive().entries(), Entry(name, b"x")]
    message = refusal(write_tar(archive_path, entries))
    assert f"member {name!r}: an absolute name or one with '..'" in message


@pytest.mark.parametrize("again", ["{}", "./{}"])
def test_a_member_twice_is_refused(archive_path: Path, again: str) -> None:
    archive = DockerArchive()
    layer = archive.layer_names()[0]
    entries = [*archive.entries(), Entry(again.format(layer), LAYER_2)]
    message = refusal(write_tar(archive_path, entries))
    assert f"member {again.format(layer)!r} is in the archive twice" in message


@pytest.mark.parametrize("name", ["manifest.json", "repositories", "index.json", "oci-layout"])
def test_a_layer_named_as_a_member_the_output_writes_is_refused(
    archive_path: Path, name: str
) -> None:
    archive = DockerArchive(layers=(LAYER_1,))
    manifest = [{"Config": archive.config_name(), "Layers": [name]}]
    entries = replace(archive, manifest=manifest).entries()
    if name != "manifest.json":
        entries.append(Entry(name, LAYER_1))
    message = refusal(write_tar(archive_path, entries))
    assert f"layer {name}: the name of a member the image archive writes" in message


# --- copying: each layer held to its diff_id (and its blob's digest) ------------------------


def test_a_layer_whose_tar_is_not_its_diff_id_is_refused_once_copied(
    archive_path: Path, opened: list[BaseImage]
) -> None:
    wrong = f"sha256:{sha256_hex(LAYER_1)}"
    path = DockerArchive(diff_ids=[wrong, wrong]).write(archive_path)
    image = open_image(path, opened)  # opening reads no layer
    assert layer_bytes(image, image.layers[0]) == LAYER_1
    copied: list[bytes] = []
    with pytest.raises(BaseImageError) as caught:
        copied.extend(image.chunks(image.layers[1]))
    assert b"".join(copied) == LAYER_2  # refused at its end, every byte read
    message = str(caught.value)
    assert message.startswith(f"{path}: layer {image.layers[1].name}: ")
    assert f"its tar's sha256 is sha256:{sha256_hex(LAYER_2)}, not the diff_id {wrong}" in message
    with pytest.raises(BaseImageError, match="not the diff_id"):
        image.describe(image.layers[1])


def test_a_gzip_layer_is_held_to_the_sha256_of_its_tar(
    archive_path: Path, opened: list[BaseImage]
) -> None:
    right = DockerArchive(layers=(LAYER_GZ,))
    image = open_image(right.write(archive_path), opened)
    assert layer_bytes(image, image.layers[0]) == LAYER_GZ
    image.close()
    # the compressed blob's sha256 is not its diff_id
    wrong = DockerArchive(layers=(LAYER_GZ,), diff_ids=[f"sha256:{sha256_hex(LAYER_GZ)}"])
    image = open_image(wrong.write(archive_path), opened)
    with pytest.raises(
        BaseImageError, match=f"its tar's sha256 is sha256:{sha256_hex(LAYER_GZ_INNER)}"
    ):
        layer_bytes(image, image.layers[0])


def test_a_layer_cut_inside_its_gzip_stream_is_refused(
    archive_path: Path, opened: list[BaseImage]
) -> None:
    cut = LAYER_GZ[:-12]
    archive = DockerArchive(layers=(cut,), diff_ids=[f"sha256:{sha256_hex(LAYER_GZ_INNER)}"])
    image = open_image(archive.write(archive_path), opened)
    with pytest.raises(BaseImageError) as caught:
        layer_bytes(image, image.layers[0])
    assert (
        str(caught.value) == f"{archive_path}: layer {image.layers[0].name}: gzip stream: cut short"
    )


def test_an_oci_blob_whose_bytes_are_not_its_digest_is_refused(
    archive_path: Path, opened: list[BaseImage]
) -> None:
    archive = OciArchive()
    # the same tar compressed again with another mtime: the same size, other bytes
    other = gzip.compress(LAYER_GZ_INNER, mtime=1)
    assert len(other) == len(LAYER_GZ)
    assert other != LAYER_GZ
    blob = f"blobs/sha256/{sha256_hex(LAYER_GZ)}"
    entries = [replace(e, data=other) if e.name == blob else e for e in archive.entries()]
    image = open_image(write_tar(archive_path, entries), opened)
    with pytest.raises(BaseImageError) as caught:
        layer_bytes(image, image.layers[1])
    assert str(caught.value) == (
        f"{archive_path}: layer {blob}: its sha256 is sha256:{sha256_hex(other)}, "
        f"not the digest sha256:{sha256_hex(LAYER_GZ)} its descriptor says (refused)"
    )


def gzip_base(path: Path, layers: Sequence[bytes]) -> int:
    """A gzip docker-archive of ``layers`` at ``path``; returns its size."""
    DockerArchive(layers=layers).write(path, compress=True)
    return path.stat().st_size


@pytest.mark.parametrize("spool", [True, False], ids=["spooled", "read-twice"])
async def test_a_gzip_base_described_and_copied_is_read_in_one_pass_more_than_open(
    archive_path: Path, opened: list[BaseImage], spool: bool
) -> None:
    # issue 14, bug 5: each layer read back from the start of the gzip stream to be copied
    rng = random.Random(20)
    layers = [layer_tar(("data", rng.randbytes(32 * 1024))) for _ in range(20)]
    size = gzip_base(archive_path, layers)
    image = open_image(str(archive_path), opened)
    assert image.compressed
    opening = image.bytes_read
    assert opening >= size  # tarfile found the members: one pass
    for data, base_layer in zip(layers, image.layers, strict=True):
        layer = BaseImageLayer(image, base_layer, str(archive_path.parent), spool)
        descriptor = await layer.descriptor()
        assert (descriptor.digest.hex, descriptor.size) == (sha256_hex(data), len(data))
        assert b"".join(bytes(c) for c in layer.chunks()) == data  # type: ignore[arg-type]
        layer.release()
    again = image.bytes_read - opening
    if spool:  # one more pass: back to the first layer, then on to the last
        assert again <= 1.2 * size
    else:  # each layer again from the start: about ten passes over 20 layers
        assert again >= 5 * size


def test_a_fifo_is_refused_not_waited_on(tmp_path: Path) -> None:
    fifo = tmp_path / "base.tar"
    os.mkfifo(fifo)  # no writer: opening it to read without O_NONBLOCK would wait for one
    assert "from_image is not a regular file" in refusal(str(fifo))
