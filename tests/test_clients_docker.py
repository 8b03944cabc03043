"""A real Docker daemon loads every format: docker-archive and the Docker 25+ dual tar,
uncompressed and gzip, with and without a from_image base.

Each test starts its own dockerd (own data root, exec root and socket under tmp_path, vfs
storage, no networking), so no layer is already in the store and skips its check: `docker
load` untars every layer and refuses one whose digest is not its diff_id. The loaded
image's RootFS layers must be the image's diff_ids, in order. Rule: with CI=true a missing
dockerd fails; a daemon that can't start here skips, with its log.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import storegen
from tests.conftest import FixtureStore
from tests.daemons import Client, dockerd
from tests.images import conf_with_base, private_fixture, tar_members

pytestmark = pytest.mark.clients


@pytest.fixture
def docker(tmp_path: Path) -> Iterator[Client]:
    with dockerd(tmp_path) as client:
        yield client


@pytest.fixture(scope="module")
def from_image(
    tmp_path_factory: pytest.TempPathFactory, fixture_store: FixtureStore, tool_cmd: list[str]
) -> storegen.BuiltFixture:
    return private_fixture(fixture_store, tool_cmd, "from-image", tmp_path_factory.mktemp("d"))


def diff_ids(image: Path) -> list[str]:
    members = tar_members(image.read_bytes())
    manifest = json.loads(members["manifest.json"])
    config = json.loads(members[manifest[0]["Config"]])
    ids: list[str] = config["rootfs"]["diff_ids"]
    return ids


@pytest.mark.parametrize("base", ["none", "docker"])
@pytest.mark.parametrize(
    "args",
    [["--format", "docker"], ["--format", "oci"], ["--format", "oci", "--compress", "gzip"]],
    ids=["docker", "oci", "oci-gzip"],
)
def test_docker_loads_the_image(
    docker: Client,
    from_image: storegen.BuiltFixture,
    tool_cmd: list[str],
    tmp_path: Path,
    base: str,
    args: list[str],
) -> None:
    conf = storegen.CONF_NAME if base == "docker" else "conf-no-base.json"
    if base == "none":
        conf_with_base(from_image.root, None, conf)
    image = tmp_path / "image.tar"
    tag = f"streamimage-test:{args[1]}-{base}"
    built = storegen.run_tool(
        tool_cmd, conf, cwd=from_image.root, args=[*args, "-t", tag, "-o", str(image)]
    )
    assert built.returncode == 0, built.stderr
    loaded = docker("load", "-i", str(image))
    assert f"Loaded image: {tag}" in loaded.stdout
    layers = docker("image", "inspect", tag, "--format", "{{json .RootFS.Layers}}")
    expected = diff_ids(image)
    assert json.loads(layers.stdout) == expected


def test_docker_refuses_a_layer_that_is_not_its_diff_id(
    docker: Client, from_image: storegen.BuiltFixture, tool_cmd: list[str], tmp_path: Path
) -> None:
    # What makes the test above worth something: docker load checks every layer.
    conf = conf_with_base(from_image.root, None, "conf-no-base.json")
    image = tmp_path / "image.tar"
    built = storegen.run_tool(tool_cmd, conf, cwd=from_image.root, args=["-o", str(image)])
    assert built.returncode == 0, built.stderr
    data = bytearray(image.read_bytes())
    at = data.index(b"greeting=hello")  # the customisation layer's file content
    data[at] ^= 0x20
    image.write_bytes(data)
    proc = docker.attempt("load", "-i", str(image))
    assert proc.returncode != 0
    assert "invalid diffID for layer" in proc.stderr, proc.stderr
