"""Differential tests: streamimage's output must equal the reference's, byte for byte.

Each fixture of tests/storegen.py runs through both tools (cwd = fixture root, relative
store paths, TZ pinned). Without the reference the byte comparison skips, but the golden
check does not: tests/golden.json holds the sha256 of the reference's output per fixture
(recorded by `python -m tests.storegen --record-golden`). A mismatch names the first
differing offset and the outer/inner tar member it falls in.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests import storegen
from tests.conftest import FixtureStore, sha256_hex

GOLDEN = storegen.load_golden()


def _members(data: bytes) -> list[tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        return tar.getmembers()


def _locate(data: bytes, offset: int, depth: int = 0) -> str:
    """Which member (and, inside a layer, which inner member) holds byte `offset`."""
    try:
        members = _members(data)
    except (tarfile.TarError, EOFError) as exc:
        return f"offset {offset} of an archive tarfile cannot read ({exc})"
    for m in members:
        end = m.offset_data + ((m.size + 511) // 512) * 512
        if m.offset <= offset < m.offset_data:
            return f"header of {m.name!r} (+{offset - m.offset}; headers start at {m.offset})"
        if m.offset_data <= offset < end:
            inner = offset - m.offset_data
            where = f"data of {m.name!r} at +{inner} (size {m.size})"
            if depth == 0 and m.name.endswith("layer.tar"):
                layer = data[m.offset_data : m.offset_data + m.size]
                where += " -> " + _locate(layer, inner, depth + 1)
            elif depth == 0 and m.name.endswith(".json"):
                body = data[m.offset_data : m.offset_data + m.size]
                where += f": ...{body[max(0, inner - 40) : inner + 40]!r}..."
            return where
    return f"offset {offset} past the last member (end-of-archive blocks / record padding)"


def _names(data: bytes) -> list[str]:
    try:
        return [m.name for m in _members(data)]
    except (tarfile.TarError, EOFError) as exc:
        return [f"<unreadable: {exc}>"]


def describe_difference(expected: bytes, actual: bytes) -> str:
    """A readable account of where `actual` first departs from `expected`."""
    common = min(len(expected), len(actual))
    first = next((i for i in range(common) if expected[i] != actual[i]), common)
    lines = [
        f"sizes: reference {len(expected)}, streamimage {len(actual)}; first difference at "
        f"byte {first}",
        f"  reference:   {_locate(expected, first)}",
        f"  streamimage: {_locate(actual, first)}",
    ]
    ref_names, got_names = _names(expected), _names(actual)
    if ref_names != got_names:
        lines.append(
            f"  outer members differ:\n    reference   {ref_names}\n    streamimage {got_names}"
        )
    return "\n".join(lines)


@pytest.mark.parametrize("fixture_id", storegen.FIXTURE_IDS)
def test_output_is_byte_identical_to_reference(
    fixture_store: FixtureStore, require_reference: list[str], tool_cmd: list[str], fixture_id: str
) -> None:
    expected = fixture_store.run(require_reference, fixture_id)
    assert expected.returncode == 0, expected.stderr
    actual = fixture_store.run(tool_cmd, fixture_id)
    assert actual.returncode == 0, actual.stderr
    if expected.stdout != actual.stdout:
        pytest.fail(describe_difference(expected.stdout, actual.stdout), pytrace=False)


# The stream pass copies each layer from its hash pass's spool by default; without a spool
# it frames the layer again from the store. Both must give the reference's bytes.
STREAM_PASSES = {"spooled": (), "framed-twice": ("--spool-max", "0")}


@pytest.mark.parametrize("stream_pass", list(STREAM_PASSES))
@pytest.mark.parametrize("fixture_id", storegen.FIXTURE_IDS)
def test_output_sha256_matches_golden_reference_output(
    fixture_store: FixtureStore, tool_cmd: list[str], fixture_id: str, stream_pass: str
) -> None:
    built = fixture_store.get(fixture_id)
    tree = storegen.tree_digest(built.root)
    assert tree == GOLDEN[fixture_id]["tree"], (
        f"fixture {fixture_id} is not the tree the golden was recorded from: the builder is "
        "not deterministic here (or storegen changed without --record-golden)"
    )
    actual = fixture_store.run(tool_cmd, fixture_id, STREAM_PASSES[stream_pass])
    assert actual.returncode == 0, actual.stderr
    assert sha256_hex(actual.stdout) == GOLDEN[fixture_id]["output"], (
        f"{fixture_id}: output differs from the reference's recorded output "
        "(run with the reference present for the first differing member)"
    )


def test_golden_covers_exactly_the_fixtures() -> None:
    assert sorted(GOLDEN) == sorted(storegen.FIXTURE_IDS)


def _read_image(data: bytes) -> tuple[list[dict[str, Any]], dict[str, Any], dict[str, bytes]]:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        blobs = {}
        for m in tar.getmembers():
            f = tar.extractfile(m)
            assert f is not None, m.name
            blobs[m.name] = f.read()
    manifest = json.loads(blobs["manifest.json"])
    config = json.loads(blobs[manifest[0]["Config"]])
    return manifest, config, blobs


@pytest.mark.parametrize("fixture_id", storegen.FIXTURE_IDS)
def test_output_layers_hash_to_their_diff_ids(
    fixture_store: FixtureStore, tool_cmd: list[str], fixture_id: str
) -> None:
    result = fixture_store.run(tool_cmd, fixture_id)
    assert result.returncode == 0, result.stderr
    manifest, config, blobs = _read_image(result.stdout)
    assert manifest[0]["Config"] == sha256_hex(blobs[manifest[0]["Config"]]) + ".json"
    diff_ids = [f"sha256:{sha256_hex(blobs[name])}" for name in manifest[0]["Layers"]]
    assert diff_ids == config["rootfs"]["diff_ids"]
    assert list(blobs)[-1] == "manifest.json"
    for name in manifest[0]["Layers"]:
        assert len(blobs[name]) % 10240 == 0, f"{name} does not end on a 10240-byte record"


def test_output_does_not_depend_on_build_directory(
    tmp_path: Path, fixture_store: FixtureStore, tool_cmd: list[str]
) -> None:
    for fixture_id in ("names-order", "links"):
        outputs = []
        for parent in (tmp_path / "x", tmp_path / "a much longer parent directory"):
            built = storegen.build_fixture(fixture_id, parent, fixture_store.reference or tool_cmd)
            result = storegen.run_tool(tool_cmd, storegen.CONF_NAME, cwd=built.root)
            assert result.returncode == 0, result.stderr
            outputs.append((storegen.tree_digest(built.root), result.stdout))
        assert outputs[0][0] == outputs[1][0], f"{fixture_id}: fixture trees differ"
        assert outputs[0][1] == outputs[1][1], describe_difference(outputs[0][1], outputs[1][1])


@pytest.mark.parametrize("flag", ["-t", "--repo_tag"])
def test_repo_tag_flag_overrides_conf_repo_tag(
    fixture_store: FixtureStore, reference_cmd: list[str] | None, tool_cmd: list[str], flag: str
) -> None:
    result = fixture_store.run(tool_cmd, "basic", [flag, "other/name:v2"])
    assert result.returncode == 0, result.stderr
    manifest, _, _ = _read_image(result.stdout)
    assert manifest[0]["RepoTags"] == ["other/name:v2"]
    if reference_cmd is not None:
        expected = fixture_store.run(reference_cmd, "basic", [flag, "other/name:v2"])
        assert expected.stdout == result.stdout, describe_difference(expected.stdout, result.stdout)


def test_output_flag_writes_the_same_bytes_as_stdout(
    tmp_path: Path, fixture_store: FixtureStore, tool_cmd: list[str]
) -> None:
    if storegen.tool_is_reference(tool_cmd):
        pytest.skip("the reference has no -o option")
    out = tmp_path / "image.tar"
    to_stdout = fixture_store.run(tool_cmd, "hardlinks")
    to_file = fixture_store.run(tool_cmd, "hardlinks", ["-o", str(out)])
    assert to_file.returncode == 0, to_file.stderr
    assert to_file.stdout == b""
    assert out.read_bytes() == to_stdout.stdout


def test_created_and_mtime_now_are_the_current_time(
    fixture_store: FixtureStore, tool_cmd: list[str]
) -> None:
    built = fixture_store.get("basic")
    conf = json.loads(built.conf.read_text())
    conf.update(created="now", mtime="now")
    (built.root / "conf-now.json").write_text(json.dumps(conf))
    before = datetime.now(UTC)
    result = storegen.run_tool(tool_cmd, "conf-now.json", cwd=built.root)
    after = datetime.now(UTC)
    assert result.returncode == 0, result.stderr
    manifest, config, blobs = _read_image(result.stdout)
    created = datetime.fromisoformat(config["created"])
    assert created.tzinfo is not None
    assert before.timestamp() - 1 <= created.timestamp() <= after.timestamp() + 1
    assert all(h["created"] == config["created"] for h in config["history"])
    layer = blobs[manifest[0]["Layers"][0]]
    mtimes = {m.mtime for m in _members(layer)}
    assert len(mtimes) == 1
    assert int(before.timestamp()) - 1 <= mtimes.pop() <= after.timestamp() + 1


def test_history_names_store_paths_as_given_in_conf(
    fixture_store: FixtureStore, tool_cmd: list[str]
) -> None:
    result = fixture_store.run(tool_cmd, "basic")
    _, config, _ = _read_image(result.stdout)
    conf = json.loads(fixture_store.get("basic").conf.read_text())
    comments = [h["comment"] for h in config["history"]]
    expected = [f"store paths: {paths}" for paths in conf["store_layers"]]
    assert comments == [*expected, f"store paths: {[storegen.CUSTOMISATION_DIR]}"]


def test_describe_difference_names_the_inner_member() -> None:
    def image(body: bytes) -> bytes:
        layer = io.BytesIO()
        with tarfile.open(fileobj=layer, mode="w|") as tar:
            info = tarfile.TarInfo("/nix/store/x/file")
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))
        outer = io.BytesIO()
        with tarfile.open(fileobj=outer, mode="w|") as tar:
            data = layer.getvalue()
            info = tarfile.TarInfo("fixed/layer.tar")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        return outer.getvalue()

    message = describe_difference(image(b"hello"), image(b"hellO"))
    assert "first difference at byte 1028" in message
    assert "'/nix/store/x/file' at +4" in message


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root")
def test_customisation_layer_is_owned_by_root(fixture_store: FixtureStore) -> None:
    # Its owner goes into the outer member header: goldens assume 0:0.
    st = (fixture_store.get("basic").root / storegen.CUSTOMISATION_DIR / "layer.tar").stat()
    assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (0, 0, 0o444)


def test_shipped_example_builds_from_repo_root(
    reference_cmd: list[str] | None, tool_cmd: list[str]
) -> None:
    conf = Path("examples/hello/conf.json")
    result = storegen.run_tool(tool_cmd, conf, cwd=storegen.REPO_ROOT)
    assert result.returncode == 0, result.stderr
    manifest, _, _ = _read_image(result.stdout)
    assert manifest[0]["RepoTags"] == ["hello:latest"]
    assert len(manifest[0]["Layers"]) == 3
    if reference_cmd is not None:
        expected = storegen.run_tool(reference_cmd, conf, cwd=storegen.REPO_ROOT)
        assert expected.stdout == result.stdout, describe_difference(expected.stdout, result.stdout)


def test_absolute_store_paths_match_reference(
    tmp_path: Path, require_reference: list[str], tool_cmd: list[str]
) -> None:
    # Real nixpkgs confs name /nix/store/... absolutely; the member names then carry the
    # whole absolute path (so this one cannot have a machine-independent golden).
    built = storegen.build_fixture("links", tmp_path, require_reference)
    conf = json.loads(built.conf.read_text())
    root = str(built.root.resolve())
    conf["store_dir"] = f"{root}/{conf['store_dir']}"
    conf["store_layers"] = [[f"{root}/{p}" for p in layer] for layer in conf["store_layers"]]
    conf["customisation_layer"] = f"{root}/{conf['customisation_layer']}"
    (built.root / "conf-abs.json").write_text(json.dumps(conf))
    expected = storegen.run_tool(require_reference, built.root / "conf-abs.json", cwd=tmp_path)
    actual = storegen.run_tool(tool_cmd, built.root / "conf-abs.json", cwd=tmp_path)
    assert expected.returncode == 0, expected.stderr
    assert actual.returncode == 0, actual.stderr
    assert expected.stdout == actual.stdout, describe_difference(expected.stdout, actual.stdout)
