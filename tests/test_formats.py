"""--format oci / oci-dir and --compress gzip, read back with tarfile, gzip and json.

The oracle is the specs (OCI image-layout, manifest, index; the docker-archive manifest)
and the standard library: every blob hashes to its name, every layer decompresses to a
tar whose sha256 is its diff_id, the OCI manifest and manifest.json name the same blobs,
gzip output is the same bytes on every run. Real clients are in test_clients_oci.py.
"""

from __future__ import annotations

import gzip
import io
import json
import tarfile
from pathlib import Path

import anyio
import pytest

from streamimage.destinations.ociarchive import write_oci_archive
from streamimage.errors import OutputError
from streamimage.options import Compression, Options
from tests import storegen
from tests.conftest import FixtureStore, sha256_hex
from tests.failures import FailingSink, image_of
from tests.images import (
    OciImage,
    blob_name,
    build,
    conf_with_base,
    oci_only,
    private_fixture,
    read_dir,
    tar_members,
    tar_names,
    uncompressed,
)

LAYER = "application/vnd.oci.image.layer.v1.tar"
LAYER_GZIP = LAYER + "+gzip"
LAYER_ZSTD = LAYER + "+zstd"
OCI_ORDER_TAIL = ["index.json", "oci-layout", "manifest.json"]
GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"  # RFC 1952: no name, mtime 0, OS 255


def _check_oci_image(image: OciImage, compressed: bool) -> None:
    assert json.loads(image.files["oci-layout"]) == {"imageLayoutVersion": "1.0.0"}
    assert image.index["mediaType"] == "application/vnd.oci.image.index.v1+json"
    for name, data in image.files.items():
        if name.startswith("blobs/"):
            assert name == f"blobs/sha256/{sha256_hex(data)}", f"{name} does not hash to its name"
    manifest = image.manifest
    assert manifest["schemaVersion"] == 2
    assert manifest["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    assert manifest["config"]["mediaType"] == "application/vnd.oci.image.config.v1+json"
    config_blob = image.files[blob_name(manifest["config"]["digest"])]
    assert manifest["config"]["size"] == len(config_blob)
    diff_ids = []
    for descriptor, blob in zip(manifest["layers"], image.layer_blobs(), strict=True):
        assert descriptor["size"] == len(blob)
        is_gzip = blob.startswith(b"\x1f\x8b")
        assert descriptor["mediaType"] == (LAYER_GZIP if is_gzip else LAYER)
        plain = uncompressed(blob)
        with tarfile.open(fileobj=io.BytesIO(plain), mode="r:"):
            pass  # a valid tar
        diff_ids.append(f"sha256:{sha256_hex(plain)}")
    assert diff_ids == image.config["rootfs"]["diff_ids"]
    ours = manifest["layers"][-2:]  # the last store layer and the customisation layer
    assert {d["mediaType"] for d in ours} == {LAYER_GZIP if compressed else LAYER}


@pytest.mark.parametrize("compress", ["none", "gzip"])
def test_oci_archive_is_an_oci_layout_and_a_docker_archive(
    fixture_store: FixtureStore, tool_cmd: list[str], compress: str
) -> None:
    data = build(fixture_store, tool_cmd, "basic", ["--format", "oci", "--compress", compress])
    files = tar_members(data)
    image = OciImage.of(files)
    _check_oci_image(image, compress == "gzip")
    annotations = image.index["manifests"][0]["annotations"]
    assert annotations == {
        "io.containerd.image.name": "streamimage-test/basic:latest",
        "org.opencontainers.image.ref.name": "latest",
    }
    # Docker 25+'s dual layout: manifest.json names the same blobs
    docker = json.loads(files["manifest.json"])
    assert docker[0]["Config"] == blob_name(image.manifest["config"]["digest"])
    assert docker[0]["Layers"] == [blob_name(d["digest"]) for d in image.manifest["layers"]]
    assert docker[0]["RepoTags"] == ["streamimage-test/basic:latest"]
    # streamable order: directories, layers, config, manifest, index, layout, manifest.json
    names = tar_names(data)
    layers = docker[0]["Layers"]
    config = docker[0]["Config"]
    manifest = blob_name(image.index["manifests"][0]["digest"])
    assert names == ["blobs", "blobs/sha256", *layers, config, manifest, *OCI_ORDER_TAIL]


def test_docker_format_with_gzip_has_gzip_layers_of_the_diff_ids(
    fixture_store: FixtureStore, tool_cmd: list[str]
) -> None:
    files = tar_members(build(fixture_store, tool_cmd, "hardlinks", ["--compress", "gzip"]))
    manifest = json.loads(files["manifest.json"])[0]
    config = json.loads(files[manifest["Config"]])
    assert manifest["Config"] == f"{sha256_hex(files[manifest['Config']])}.json"
    blobs = [files[name] for name in manifest["Layers"]]
    assert all(blob.startswith(GZIP_HEADER) for blob in blobs)
    plain = [gzip.decompress(blob) for blob in blobs]
    assert [f"sha256:{sha256_hex(p)}" for p in plain] == config["rootfs"]["diff_ids"]
    # the uncompressed layers are exactly the docker format's
    reference = tar_members(build(fixture_store, tool_cmd, "hardlinks"))
    ref_manifest = json.loads(reference["manifest.json"])[0]
    assert plain == [reference[name] for name in ref_manifest["Layers"]]
    assert json.loads(reference[ref_manifest["Config"]]) == config


@pytest.mark.parametrize(
    "args", [["--compress", "gzip"], ["--format", "oci", "--compress", "gzip:3"]]
)
def test_gzip_output_is_the_same_bytes_on_every_run(
    fixture_store: FixtureStore, tool_cmd: list[str], args: list[str]
) -> None:
    built = fixture_store.get("sizes")
    runs = [
        storegen.run_tool(tool_cmd, storegen.CONF_NAME, cwd=built.root, args=args) for _ in range(2)
    ]
    assert all(run.returncode == 0 for run in runs), runs[0].stderr
    assert runs[0].stdout == runs[1].stdout


@pytest.mark.parametrize("fixture_id", ["sizes", "many-paths", "from-image"])
@pytest.mark.parametrize(
    "args",
    [["--compress", "gzip"], ["--format", "oci", "--compress", "gzip:3"]],
    ids=["docker-gzip", "oci-gzip3"],
)
def test_a_compressed_layer_copied_from_its_spool_is_the_one_compressed_again(
    fixture_store: FixtureStore, tool_cmd: list[str], args: list[str], fixture_id: str
) -> None:
    # By default the hash pass of a compressed layer spools its compressed bytes and the
    # stream pass copies them; with --spool-max 0 the stream pass frames and compresses
    # the layer again. The two must be the same bytes.
    spooled = fixture_store.run(tool_cmd, fixture_id, [*args, "-v"])
    assert spooled.returncode == 0, spooled.stderr
    again = fixture_store.run(tool_cmd, fixture_id, [*args, "--spool-max", "0"])
    assert again.returncode == 0, again.stderr
    assert spooled.stdout == again.stdout
    timeline = [line for line in spooled.stderr.splitlines() if "  layer " in line]
    assert timeline
    assert all("(spool " in line for line in timeline)


@pytest.mark.parametrize("fixture_id", ["basic", "from-image-gz"])
@pytest.mark.parametrize("output", ["oci", "oci-dir"])
def test_zstd_layers_decompress_to_their_diff_ids(
    tmp_path: Path, fixture_store: FixtureStore, tool_cmd: list[str], fixture_id: str, output: str
) -> None:
    args = ["--format", output, "--compress", "zstd"]
    if output == "oci":
        files = tar_members(build(fixture_store, tool_cmd, fixture_id, args))
    else:
        built = fixture_store.get(fixture_id)
        layout = tmp_path / "layout"
        result = storegen.run_tool(
            tool_cmd, storegen.CONF_NAME, cwd=built.root, args=[*args, "-o", str(layout)]
        )
        assert result.returncode == 0, result.stderr
        files = read_dir(layout)
    image = OciImage.of(files)
    plain_archive = tar_members(build(fixture_store, tool_cmd, fixture_id))
    plain_manifest = json.loads(plain_archive["manifest.json"])[0]
    plain_layers = [plain_archive[name] for name in plain_manifest["Layers"]]
    layers = image.manifest["layers"]
    conf = json.loads(fixture_store.get(fixture_id).conf.read_text())
    base = len(layers) - len(conf["store_layers"]) - 1  # then store layers, customisation
    for number, (descriptor, blob) in enumerate(zip(layers, image.layer_blobs(), strict=True)):
        assert descriptor["digest"] == f"sha256:{sha256_hex(blob)}"
        assert descriptor["size"] == len(blob)
        ours = number >= base  # base layers are copied as they are stored
        assert (descriptor["mediaType"] == LAYER_ZSTD) == ours
        assert blob.startswith(b"\x28\xb5\x2f\xfd") == ours
    plain = [uncompressed(blob) for blob in image.layer_blobs()]
    assert [f"sha256:{sha256_hex(p)}" for p in plain] == image.config["rootfs"]["diff_ids"]
    # the layers are the docker format's, compressed (a gzip base's are gzip in both)
    assert plain == [uncompressed(layer) for layer in plain_layers]


@pytest.mark.parametrize("fixture_id", ["sizes", "many-paths"])
def test_zstd_output_is_the_same_bytes_every_way(
    fixture_store: FixtureStore, tool_cmd: list[str], fixture_id: str
) -> None:
    # spooled or compressed again, one worker or two, threads or processes, run to run
    args = ["--format", "oci", "--compress", "zstd:3"]
    ways = [[], ["-j", "1"], ["--spool-max", "0"], ["--hash-in", "thread"]]
    outputs = [build(fixture_store, tool_cmd, fixture_id, [*args, *way]) for way in ways]
    again = storegen.run_tool(
        tool_cmd, storegen.CONF_NAME, cwd=fixture_store.get(fixture_id).root, args=args
    )
    assert again.returncode == 0, again.stderr
    assert all(output == outputs[0] for output in [*outputs, again.stdout])


def test_oci_dir_holds_the_same_files_as_the_oci_archive(
    tmp_path: Path, fixture_store: FixtureStore, tool_cmd: list[str]
) -> None:
    built = fixture_store.get("links")
    out = tmp_path / "layout"
    args = ["--format", "oci-dir", "--compress", "gzip", "-o", str(out)]
    result = storegen.run_tool(tool_cmd, storegen.CONF_NAME, cwd=built.root, args=args)
    assert result.returncode == 0, result.stderr
    archive = tar_members(
        build(fixture_store, tool_cmd, "links", ["--format", "oci", "--compress", "gzip"])
    )
    del archive["manifest.json"]
    assert read_dir(out) == archive
    _check_oci_image(OciImage.of(read_dir(out)), True)
    assert oct(out.stat().st_mode & 0o777) == oct(0o755)
    assert [p.name for p in tmp_path.iterdir()] == ["layout"], "temporary files left behind"


def test_oci_dir_replaces_a_layout_but_not_other_directories(
    tmp_path: Path, fixture_store: FixtureStore, tool_cmd: list[str]
) -> None:
    built = fixture_store.get("ids-as-numbers")
    out = tmp_path / "layout"
    args = ["--format", "oci-dir", "-o", str(out)]
    for _ in range(2):  # the second run replaces the first's layout
        result = storegen.run_tool(tool_cmd, storegen.CONF_NAME, cwd=built.root, args=args)
        assert result.returncode == 0, result.stderr
    assert (out / "oci-layout").exists()
    other = tmp_path / "other"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    args = ["--format", "oci-dir", "-o", str(other)]
    result = storegen.run_tool(tool_cmd, storegen.CONF_NAME, cwd=built.root, args=args)
    assert result.returncode == 1
    assert "not an OCI image layout" in result.stderr
    assert [p.name for p in other.iterdir()] == ["keep.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["layout", "other"]


def test_oci_dir_failure_leaves_no_directory(
    tmp_path: Path, fixture_store: FixtureStore, tool_cmd: list[str]
) -> None:
    built = private_fixture(fixture_store, tool_cmd, "basic", tmp_path / "fixture")
    conf = json.loads(built.conf.read_text())
    conf["store_layers"][-1].append(f"{storegen.STORE_DIR}/missing-path")
    (built.root / "conf-missing.json").write_text(json.dumps(conf))
    out = tmp_path / "layout"
    result = storegen.run_tool(
        tool_cmd, "conf-missing.json", cwd=built.root, args=["--format", "oci-dir", "-o", str(out)]
    )
    assert result.returncode == 1
    assert "missing-path" in result.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["fixture"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--compress", "xz"], "expected none, gzip[:LEVEL] or zstd[:LEVEL]"),
        (["--compress", "gzip:9"], "LEVEL must be 0-3"),
        (["--compress", "zstd:20", "--format", "oci"], "zstd LEVEL must be 1-19"),
        # docker load (before Docker 23) and skopeo can't read a docker-archive of zstd
        # layers (test_clients_zstd.py): refused, not an image that fails later
        (["--compress", "zstd"], "needs --format oci or oci-dir"),
        (["--format", "docker", "--compress", "zstd:3"], "needs --format oci or oci-dir"),
        (["--format", "oci-dir"], "-o DIR"),
    ],
)
def test_bad_format_options_are_usage_errors(
    fixture_store: FixtureStore, tool_cmd: list[str], args: list[str], message: str
) -> None:
    result = fixture_store.run(tool_cmd, "basic", args)
    assert result.returncode == 2
    assert message in result.stderr
    assert result.stdout == b""


@pytest.fixture(scope="module")
def from_image(
    tmp_path_factory: pytest.TempPathFactory, fixture_store: FixtureStore, tool_cmd: list[str]
) -> storegen.BuiltFixture:
    return private_fixture(fixture_store, tool_cmd, "from-image", tmp_path_factory.mktemp("f"))


def _base_variants(built: storegen.BuiltFixture, tool_cmd: list[str]) -> dict[str, str]:
    """from_image archives beside the from-image fixture's conf: an OCI-only archive with
    gzip layers, and a Docker 25+ dual archive (uncompressed); returns kind -> conf name."""
    base_dir = built.root / "base"
    confs = {}
    for kind, args in (
        ("oci-gzip", ["--format", "oci", "--compress", "gzip"]),
        ("dual", ["--format", "oci"]),
    ):
        target = built.root / f"base-{kind}.tar"
        if not target.exists():
            result = storegen.run_tool(tool_cmd, storegen.CONF_NAME, cwd=base_dir, args=args)
            assert result.returncode == 0, result.stderr
            target.write_bytes(oci_only(result.stdout) if kind == "oci-gzip" else result.stdout)
        confs[kind] = conf_with_base(built.root, target.name, f"conf-{kind}.json")
    return confs


@pytest.mark.parametrize("kind", ["oci-gzip", "dual"])
@pytest.mark.parametrize("out_format", ["docker", "oci"])
def test_base_image_may_be_an_oci_archive_or_a_dual_archive(
    from_image: storegen.BuiltFixture, tool_cmd: list[str], kind: str, out_format: str
) -> None:
    built = from_image
    conf = _base_variants(built, tool_cmd)[kind]
    base = OciImage.of(tar_members((built.root / f"base-{kind}.tar").read_bytes()))
    result = storegen.run_tool(tool_cmd, conf, cwd=built.root, args=["--format", out_format])
    assert result.returncode == 0, result.stderr
    files = tar_members(result.stdout)
    docker = json.loads(files["manifest.json"])[0]
    config = json.loads(files[docker["Config"]])
    base_count = len(base.manifest["layers"])
    assert config["rootfs"]["diff_ids"][:base_count] == base.config["rootfs"]["diff_ids"]
    assert config["config"]["Env"] == ["PATH=/base/bin", "A=2", "B=3"]
    for name, diff_id in zip(docker["Layers"], config["rootfs"]["diff_ids"], strict=True):
        assert f"sha256:{sha256_hex(uncompressed(files[name]))}" == diff_id
    if out_format == "oci":
        image = OciImage.of(files)
        _check_oci_image(image, compressed=False)
        # the base's blobs are copied as they are, described as the base describes them
        assert image.manifest["layers"][:base_count] == base.manifest["layers"]


@pytest.mark.parametrize("out_format", ["oci", "oci-dir"])
def test_an_oci_image_over_a_gzip_base_is_the_same_spooled_or_read_twice(
    fixture_store: FixtureStore, tool_cmd: list[str], tmp_path: Path, out_format: str
) -> None:
    # a layer of a gzip base is read once to be described and, copied, from its spool;
    # with --spool-max 0 it is read again from the archive: the same image either way
    images: list[dict[str, bytes]] = []
    for number, spool in enumerate(([], ["--spool-max", "0"])):
        layout = tmp_path / f"layout{number}"
        args = [
            "--format",
            out_format,
            *spool,
            *(["-o", str(layout)] if out_format == "oci-dir" else []),
        ]
        out = build(fixture_store, tool_cmd, "from-image-gz", args)
        images.append(read_dir(layout) if out_format == "oci-dir" else tar_members(out))
    assert images[0] == images[1]
    image = OciImage.of(images[0])
    _check_oci_image(image, compressed=False)


@pytest.mark.parametrize("limit", [0, 5000, 200_000])
async def test_gzip_stream_into_a_failing_sink_raises_output_error(
    fixture_store: FixtureStore, monkeypatch: pytest.MonkeyPatch, limit: int
) -> None:
    built = fixture_store.get("sizes")  # large files: spans read through the compressor
    monkeypatch.chdir(built.root)
    options = Options(hash_in_processes=False, format="oci", compression=Compression("gzip", 1))
    image = image_of(json.loads(built.conf.read_text()), options)
    sink = FailingSink(limit)
    failed = pytest.RaisesGroup(OutputError, allow_unwrapped=True, flatten_subgroups=True)
    with anyio.fail_after(30), failed:
        await write_oci_archive(image, sink)
