"""Real clients read --format oci / oci-dir and --compress gzip output: skopeo, umoci, podman.

skopeo copies each form (oci-archive:, docker-archive: of the same dual tar, oci:DIR) into
a fresh OCI layout, re-hashing every layer against its digest and diff_id; umoci unpacks
that layout and the rootfs must hold the fixture's bytes (and the base image's, when there
is one: a docker-archive base, and an OCI base that skopeo itself wrote with gzip layers).
podman loads into throwaway vfs storage. Rule: with CI=true a missing client fails.
"""

from __future__ import annotations

import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

import pytest

from tests import storegen
from tests.conftest import FixtureStore, require_command
from tests.images import conf_with_base, private_fixture

pytestmark = pytest.mark.clients

TIMEOUT = 120  # seconds per client command
TINY = f"{storegen.store_path('tiny')}/bin/tiny"
BASE_SH = f"{storegen.store_path('base-tools')}/bin/sh"
CUSTOM = "etc/streamimage-test.conf"


def _run(cmd: Sequence[str]) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT, check=False)
    assert proc.returncode == 0, f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stderr}"
    return proc


def _skopeo_oci_base(root: Path) -> str:
    """The fixture's docker-archive base, as an OCI archive skopeo writes (gzip layers)."""
    skopeo = require_command("skopeo")
    target = root / "base-skopeo-oci.tar"
    if not target.exists():
        source = f"docker-archive:{root / 'base.tar'}"
        _run([skopeo, "--insecure-policy", "copy", "-q", source, f"oci-archive:{target}:base"])
    return conf_with_base(root, target.name, "conf-skopeo-oci-base.json")


@pytest.fixture(scope="module")
def from_image(
    tmp_path_factory: pytest.TempPathFactory, fixture_store: FixtureStore, tool_cmd: list[str]
) -> storegen.BuiltFixture:
    return private_fixture(fixture_store, tool_cmd, "from-image", tmp_path_factory.mktemp("f"))


def _build(
    built: storegen.BuiltFixture, tool_cmd: list[str], base: str, args: list[str], out: Path
) -> Path:
    """Build the from-image fixture (base: none, docker or oci) to ``out``."""
    conf = storegen.CONF_NAME
    if base == "oci":
        conf = _skopeo_oci_base(built.root)
    elif base == "none":
        conf = conf_with_base(built.root, None, "conf-no-base.json")
    result = storegen.run_tool(tool_cmd, conf, cwd=built.root, args=[*args, "-o", str(out)])
    assert result.returncode == 0, result.stderr
    return built.root


def _unpack_and_check(layout: str, root: Path, work: Path, base: str) -> None:
    umoci = require_command("umoci")
    bundle = work / "bundle"
    _run([umoci, "unpack", "--rootless", "--image", layout, str(bundle)])
    rootfs = bundle / "rootfs"
    assert (rootfs / TINY).read_bytes() == (root / TINY).read_bytes()
    assert (rootfs / CUSTOM).read_bytes() == b"greeting=hello\n"
    if base != "none":
        assert (rootfs / BASE_SH).read_bytes() == b"#!/bin/false\n"


CASES = [
    pytest.param(base, compress, id=f"{base}-base-{compress}")
    for base in ("none", "docker", "oci")
    for compress in ("none", "gzip")
]


@pytest.mark.parametrize(("base", "compress"), CASES)
def test_skopeo_reads_the_oci_tar_as_oci_archive_and_as_docker_archive(
    tmp_path: Path, from_image: storegen.BuiltFixture, tool_cmd: list[str], base: str, compress: str
) -> None:
    skopeo = require_command("skopeo")
    image = tmp_path / "image.tar"
    root = _build(from_image, tool_cmd, base, ["--format", "oci", "--compress", compress], image)
    for transport in ("oci-archive", "docker-archive"):
        layout = tmp_path / f"from-{transport}"
        _run([skopeo, "--insecure-policy", "copy", "-q", f"{transport}:{image}", f"oci:{layout}:t"])
        _unpack_and_check(f"{layout}:t", root, tmp_path / transport, base)


@pytest.mark.parametrize(("base", "compress"), CASES)
def test_skopeo_and_umoci_read_the_oci_dir(
    tmp_path: Path, from_image: storegen.BuiltFixture, tool_cmd: list[str], base: str, compress: str
) -> None:
    skopeo = require_command("skopeo")
    out = tmp_path / "layout"
    args = ["--format", "oci-dir", "--compress", compress]
    root = _build(from_image, tool_cmd, base, args, out)
    _unpack_and_check(f"{out}:latest", root, tmp_path / "direct", base)
    copy = tmp_path / "copy"
    _run([skopeo, "--insecure-policy", "copy", "-q", f"oci:{out}:latest", f"oci:{copy}:t"])
    _unpack_and_check(f"{copy}:t", root, tmp_path / "copied", base)


@pytest.mark.parametrize("base", ["none", "docker", "oci"])
def test_skopeo_reads_the_docker_format_with_gzip_layers(
    tmp_path: Path, from_image: storegen.BuiltFixture, tool_cmd: list[str], base: str
) -> None:
    skopeo = require_command("skopeo")
    image = tmp_path / "image.tar"
    root = _build(from_image, tool_cmd, base, ["--compress", "gzip"], image)
    layout = tmp_path / "oci"
    _run([skopeo, "--insecure-policy", "copy", "-q", f"docker-archive:{image}", f"oci:{layout}:t"])
    _unpack_and_check(f"{layout}:t", root, tmp_path, base)


@pytest.mark.parametrize(
    ("base", "args"),
    [
        ("none", ["--format", "oci"]),
        ("oci", ["--format", "oci", "--compress", "gzip"]),
        ("docker", ["--format", "oci", "--compress", "gzip"]),
        ("docker", ["--compress", "gzip"]),
    ],
)
def test_podman_loads_oci_and_gzip_images_into_fresh_storage(
    tmp_path: Path,
    from_image: storegen.BuiltFixture,
    tool_cmd: list[str],
    base: str,
    args: list[str],
) -> None:
    podman = require_command("podman")
    image = tmp_path / "image.tar"
    _build(from_image, tool_cmd, base, args, image)
    # podman refuses a runroot longer than 50 characters: pytest's tmp_path is too long.
    with tempfile.TemporaryDirectory(prefix="si-podman-") as runroot:
        storage = [podman, "--root", str(tmp_path / "root"), "--runroot", runroot]
        storage += ["--storage-driver", "vfs"]
        _run([*storage, "load", "-i", str(image)])
        listed = _run([*storage, "images", "--format", "{{.Repository}}:{{.Tag}}"]).stdout
    assert "localhost/streamimage-test/from-image:latest" in listed.split()
