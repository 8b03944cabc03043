"""Real clients read --compress zstd output: skopeo, umoci, podman, containerd and Docker 20.10.

Oracles: the `zstd` command decompresses every zstd layer blob to bytes whose sha256 is the
diff_id the config lists for it; skopeo re-hashes every blob against its digest while copying;
containerd unpacks each layer into its native snapshotter and refuses one whose uncompressed
digest is not its diff_id ("wrong diff id calculated on extraction"), and the snapshots it
commits are keyed by the chain IDs of the diff_ids; podman's OCI reader checks only the blob
digests, so the files podman unpacked are compared with the fixture's.
umoci 0.4.7 refuses zstd blobs ("blob is not correct mediatype"), and skopeo 1.9 won't write
zstd layers into a docker-archive ("zstd compression is not supported for docker images"): the
OCI directory reaches umoci through skopeo's gzip recompression. Docker 20.10 can't read zstd
layers at all (so `--format docker --compress zstd` is refused; the dual OCI archive's
manifest.json names the zstd blobs, and docker 20.10 fails on them, as documented). Every
client gets fresh storage (stores that hold a layer skip re-checking it); daemons run per
test. Rule: with CI=true a missing client fails; a daemon that can't start
here skips, with its log.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from tests import storegen
from tests.conftest import FixtureStore, require_command, sha256_hex
from tests.daemons import Client, attempt, containerd, dockerd
from tests.images import OciImage, blob_name, build, read_dir, tar_members

pytestmark = pytest.mark.clients

TIMEOUT = 120  # seconds per client command
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"  # RFC 8878 frame magic, little-endian 0xFD2FB528
OCI_TAR = "application/vnd.oci.image.layer.v1.tar"
OCI_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
OCI_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
CUSTOM = "etc/streamimage-test.conf"
# What each fixture's rootfs must hold, as the fixture's store has it (store name / rest).
ENTRIES = {
    "basic": [
        "hello-2.12/bin/hello",
        "hello-2.12/bin/hi",
        "hello-2.12/lib",
        "libgreet-1.0/lib/libgreet.so.1",
        "libgreet-1.0/lib/libgreet.so",
        "hello-doc/share/doc/hello/README",
    ],
    "from-image": ["tiny/bin/tiny", "tiny/bin/t"],
}
BASE_SH = f"{storegen.store_path('base-tools')}/bin/sh"  # from the from_image base's layer
FIXTURES = list(ENTRIES)


def _run(cmd: Sequence[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    proc = attempt(cmd, env)
    assert proc.returncode == 0, f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stderr}"
    return proc


def _archive(
    fixture_store: FixtureStore, tool_cmd: list[str], fixture_id: str, args: list[str], at: Path
) -> Path:
    """The fixture built with ``args`` into ``at`` (skopeo and ctr need a real file)."""
    at.write_bytes(build(fixture_store, tool_cmd, fixture_id, args))
    return at


def _diff_ids(archive: Path) -> list[str]:
    """The config's rootfs.diff_ids, read through the archive's manifest.json."""
    members = tar_members(archive.read_bytes())
    manifest = json.loads(members["manifest.json"])
    config = json.loads(members[manifest[0]["Config"]])
    ids: list[str] = config["rootfs"]["diff_ids"]
    return ids


def _built_here(fixture_store: FixtureStore, fixture_id: str) -> int:
    """How many layers this tool builds (and compresses): the store layers + customisation;
    a from_image base's layers come before them and are copied as they are."""
    conf = json.loads(fixture_store.get(fixture_id).conf.read_text())
    return len(conf["store_layers"]) + 1


def _sha256_of_zstd(blob: Path) -> str:
    zstd = require_command("zstd")
    with blob.open("rb") as source:
        assert source.read(4) == ZSTD_MAGIC, blob
    proc = subprocess.run(
        [zstd, "-d", "-c", "-q", str(blob)], capture_output=True, timeout=TIMEOUT, check=False
    )
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    return f"sha256:{sha256_hex(proc.stdout)}"


def _check_layers_are_their_diff_ids(layout: Path) -> OciImage:
    """Each layer blob of the OCI layout, decompressed by the `zstd` command (zstd) or gzip,
    hashes to the diff_id the config lists for it; returns the image read back."""
    image = OciImage.of(read_dir(layout))
    diff_ids: list[str] = image.config["rootfs"]["diff_ids"]
    for layer, diff_id in zip(image.manifest["layers"], diff_ids, strict=True):
        blob = layout / blob_name(layer["digest"])
        if layer["mediaType"] == OCI_ZSTD:
            assert _sha256_of_zstd(blob) == diff_id, blob
            continue
        data = blob.read_bytes()
        if layer["mediaType"] == OCI_GZIP:
            data = gzip.decompress(data)
        else:
            assert layer["mediaType"] == OCI_TAR, layer
        assert f"sha256:{sha256_hex(data)}" == diff_id, blob
    return image


def _run_bytes(cmd: Sequence[str], data: bytes) -> bytes:
    proc = subprocess.run(cmd, input=data, capture_output=True, timeout=TIMEOUT, check=False)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    return proc.stdout


def _chain_ids(diff_ids: list[str]) -> list[str]:
    """OCI image-spec ChainID: ChainID(L0) = DiffID(L0), then sha256 of "parent diff_id"."""
    chain = [diff_ids[0]]
    for diff_id in diff_ids[1:]:
        chain.append(f"sha256:{sha256_hex(f'{chain[-1]} {diff_id}'.encode())}")
    return chain


def _check_rootfs(rootfs: Path, fixture: storegen.BuiltFixture) -> None:
    for entry in ENTRIES[fixture.id]:
        name, _, rest = entry.partition("/")
        rel = Path(storegen.store_path(name)) / rest
        source, unpacked = fixture.root / rel, rootfs / rel
        if source.is_symlink():
            assert unpacked.is_symlink(), unpacked
            assert os.readlink(unpacked) == os.readlink(source)
        else:
            assert unpacked.read_bytes() == source.read_bytes(), rel
            assert unpacked.stat().st_mode & 0o777 == source.stat().st_mode & 0o777, rel
    assert (rootfs / CUSTOM).read_bytes() == b"greeting=hello\n"
    if fixture.id == "from-image":
        assert (rootfs / BASE_SH).read_bytes() == b"#!/bin/false\n"


# --- skopeo, umoci ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fixture_id", "compress"),
    [("basic", "zstd"), ("from-image", "zstd"), ("basic", "zstd:19"), ("from-image", "zstd:19")],
)
def test_skopeo_copies_the_zstd_oci_archive_and_each_layer_decompresses_to_its_diff_id(
    tmp_path: Path, fixture_store: FixtureStore, tool_cmd: list[str], fixture_id: str, compress: str
) -> None:
    skopeo = require_command("skopeo")
    args = ["--format", "oci", "--compress", compress]
    image = _archive(fixture_store, tool_cmd, fixture_id, args, tmp_path / "image.tar")
    raw = _run([skopeo, "inspect", "--raw", f"oci-archive:{image}"]).stdout
    layers = json.loads(raw)["layers"]
    media_types = [layer["mediaType"] for layer in layers]
    ours = _built_here(fixture_store, fixture_id)
    assert media_types[-ours:] == [OCI_ZSTD] * ours
    assert media_types[:-ours] == [OCI_TAR] * (len(media_types) - ours)  # the base's, as is
    layout = tmp_path / "copy"
    _run([skopeo, "--insecure-policy", "copy", "-q", f"oci-archive:{image}", f"oci:{layout}:t"])
    copied = _check_layers_are_their_diff_ids(layout)
    # skopeo keeps compressed blobs as they are (the zstd ones, byte for byte) and gzips the
    # uncompressed base layers on their way into an OCI layout.
    assert copied.manifest["layers"][-ours:] == layers[-ours:]
    assert {layer["mediaType"] for layer in copied.manifest["layers"][:-ours]} <= {OCI_GZIP}


@pytest.mark.parametrize("fixture_id", FIXTURES)
def test_skopeo_copies_the_zstd_oci_dir_and_umoci_unpacks_it_recompressed_gzip(
    tmp_path: Path, fixture_store: FixtureStore, tool_cmd: list[str], fixture_id: str
) -> None:
    skopeo = require_command("skopeo")
    umoci = require_command("umoci")
    fixture = fixture_store.get(fixture_id)
    out = tmp_path / "layout"
    args = ["--format", "oci-dir", "--compress", "zstd", "-o", str(out)]
    result = storegen.run_tool(tool_cmd, storegen.CONF_NAME, cwd=fixture.root, args=args)
    assert result.returncode == 0, result.stderr
    layers = _check_layers_are_their_diff_ids(out).manifest["layers"]
    ours = _built_here(fixture_store, fixture_id)
    assert [layer["mediaType"] for layer in layers[-ours:]] == [OCI_ZSTD] * ours
    # skopeo 1.9 refuses `oci:DIR docker-archive:FILE` ("zstd compression is not supported for
    # docker images"), with --dest-compress-format gzip too: an OCI layout it is.
    other = tmp_path / "other"
    _run([skopeo, "--insecure-policy", "copy", "-q", f"oci:{out}:latest", f"oci:{other}:t"])
    assert OciImage.of(read_dir(other)).manifest["layers"][-ours:] == layers[-ours:]
    gz = tmp_path / "gz"
    recompress = ["--dest-compress", "--dest-compress-format", "gzip"]
    _run(
        [skopeo, "--insecure-policy", "copy", "-q", *recompress, f"oci:{out}:latest", f"oci:{gz}:t"]
    )
    manifest = OciImage.of(read_dir(gz)).manifest
    assert {layer["mediaType"] for layer in manifest["layers"]} == {OCI_GZIP}
    bundle = tmp_path / "bundle"
    _run([umoci, "unpack", "--rootless", "--image", f"{gz}:t", str(bundle)])
    _check_rootfs(bundle / "rootfs", fixture)


# --- podman ----------------------------------------------------------------------------


@pytest.fixture
def podman(tmp_path: Path) -> Iterator[Client]:
    command = require_command("podman")
    # podman refuses a runroot longer than 50 characters: pytest's tmp_path is too long.
    with tempfile.TemporaryDirectory(prefix="si-podman-") as runroot:
        argv = [command, "--root", str(tmp_path / "root"), "--runroot", runroot]
        yield Client([*argv, "--storage-driver", "vfs"])


def _podman_loads(podman: Client, image: Path, fixture: storegen.BuiltFixture) -> None:
    """Load ``image``: its RootFS layers must be its diff_ids, its files the fixture's."""
    podman("load", "-q", "-i", str(image))
    tag = f"localhost/streamimage-test/{fixture.id}:latest"
    layers = podman("image", "inspect", tag, "--format", "{{json .RootFS.Layers}}").stdout
    assert json.loads(layers) == _diff_ids(image)
    # vfs: the top layer's directory is the whole rootfs, nothing is mounted
    rootfs = Path(podman("image", "mount", tag).stdout.strip())
    try:
        _check_rootfs(rootfs, fixture)
    finally:
        podman("image", "unmount", tag)


@pytest.mark.parametrize("fixture_id", FIXTURES)
def test_podman_loads_the_zstd_oci_archive_into_fresh_storage(
    tmp_path: Path,
    podman: Client,
    fixture_store: FixtureStore,
    tool_cmd: list[str],
    fixture_id: str,
) -> None:
    args = ["--format", "oci", "--compress", "zstd"]
    image = _archive(fixture_store, tool_cmd, fixture_id, args, tmp_path / "image.tar")
    _podman_loads(podman, image, fixture_store.get(fixture_id))


# --- containerd ------------------------------------------------------------------------


@pytest.fixture
def ctr(tmp_path: Path) -> Iterator[Client]:
    with containerd(tmp_path) as client:
        yield client


def _table(ctr: Client, *args: str) -> dict[str, list[str]]:
    """A table ctr prints (images ls, images check, snapshots ls): first column -> row."""
    lines = ctr(*args).stdout.splitlines()[1:]
    return {line.split()[0]: line.split() for line in lines if line.strip()}


def _unpacked_rootfs(ctr: Client, diff_ids: list[str]) -> Path:
    """Check the committed snapshots are the image's chain; a view of the top one (with the
    native snapshotter a copy, nothing mounted) is the rootfs."""
    chain = _chain_ids(diff_ids)
    snapshots = _table(ctr, "snapshots", "--snapshotter", "native", "ls")
    for parent, child in zip([None, *chain[:-1]], chain, strict=True):
        assert snapshots[child][-1] == "Committed", snapshots
        assert snapshots[child][1:-1] == ([parent] if parent else [])
    view = ctr("snapshots", "--snapshotter", "native", "view", "--mounts", "si-view", chain[-1])
    mounts: list[dict[str, Any]] = json.loads(view.stdout)
    assert [mount["Type"] for mount in mounts] == ["bind"], mounts
    return Path(mounts[0]["Source"])


def _check_complete(ctr: Client, ref: str, unpacked: bool) -> None:
    row = " ".join(_table(ctr, "images", "check", "--snapshotter", "native")[ref])
    assert re.search(r"complete \((\d+)/\1\)", row), row
    assert row.endswith(" true" if unpacked else " false"), row


@pytest.mark.parametrize("unpack", ["import-unpacks", "import-no-unpack"])
@pytest.mark.parametrize("fixture_id", FIXTURES)
def test_containerd_imports_and_unpacks_the_zstd_oci_archive(
    tmp_path: Path,
    ctr: Client,
    fixture_store: FixtureStore,
    tool_cmd: list[str],
    fixture_id: str,
    unpack: str,
) -> None:
    args = ["--format", "oci", "--compress", "zstd"]
    image = _archive(fixture_store, tool_cmd, fixture_id, args, tmp_path / "image.tar")
    ref = f"streamimage-test/{fixture_id}:latest"  # index.json's io.containerd.image.name
    if unpack == "import-no-unpack":
        ctr("images", "import", "--no-unpack", str(image))
        assert ctr("images", "ls", "-q").stdout.split() == [ref]
        _check_complete(ctr, ref, unpacked=False)
    # ctr 1.6 has no `images unpack`, and `images mount --snapshotter native` still looks
    # for the layers in overlayfs ("snapshotter not loaded: overlayfs"): importing again
    # unpacks the blobs the first import stored.
    ctr("images", "import", "--snapshotter", "native", str(image))
    assert ctr("images", "ls", "-q").stdout.split() == [ref]
    _check_complete(ctr, ref, unpacked=True)
    rootfs = _unpacked_rootfs(ctr, _diff_ids(image))
    _check_rootfs(rootfs, fixture_store.get(fixture_id))


# --- Docker 20.10 knows no zstd ---------------------------------------------------------
# (--format docker --compress zstd is refused: test_formats.py; these are the reasons.)


@pytest.fixture
def docker(tmp_path: Path) -> Iterator[Client]:
    with dockerd(tmp_path) as client:
        yield client


def _docker_20_refuses(
    docker: Client, fixture_store: FixtureStore, tool_cmd: list[str], fmt: str, tmp_path: Path
) -> None:
    """Docker 20.10 knows no zstd: it untars the compressed bytes as they are. Then the same
    image with gzip layers loads in the same daemon (zstd first: a daemon that already holds
    a layer's chain skips reading it)."""
    if not docker("version", "--format", "{{.Server.Version}}").stdout.startswith("20."):
        pytest.skip("this documents Docker 20.10; Docker 23+ reads zstd layers")
    zstd = ["--format", fmt, "--compress", "zstd"]
    image = _archive(fixture_store, tool_cmd, "basic", zstd, tmp_path / "zstd.tar")
    proc = docker.attempt("load", "-i", str(image))
    assert proc.returncode != 0
    assert "archive/tar: invalid tar header" in proc.stderr, proc.stderr
    assert docker("images", "-q").stdout.split() == []
    gzipped = ["--format", fmt, "--compress", "gzip"]
    control = _archive(fixture_store, tool_cmd, "basic", gzipped, tmp_path / "gzip.tar")
    assert (
        "Loaded image: streamimage-test/basic:latest" in docker("load", "-i", str(control)).stdout
    )


def test_docker_20_cannot_load_the_zstd_oci_archive(
    tmp_path: Path, docker: Client, fixture_store: FixtureStore, tool_cmd: list[str]
) -> None:
    # The dual tar's manifest.json names the same zstd blobs: docker load reads those.
    _docker_20_refuses(docker, fixture_store, tool_cmd, "oci", tmp_path)
