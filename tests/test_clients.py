"""Real clients read streamimage's output: skopeo, umoci and podman (Debian packages).

skopeo re-hashes every layer against its diff_id while copying docker-archive -> OCI;
umoci then unpacks that layout, and the rootfs must hold the fixture's own bytes and link
targets. podman loads the archive into throwaway vfs storage. Every test uses fresh
storage (stores that already hold a layer skip re-checking it). Rule: with CI=true a
missing client fails the test instead of skipping it.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

import pytest

from tests import storegen
from tests.conftest import FixtureStore, require_command

pytestmark = pytest.mark.clients

TIMEOUT = 120  # seconds per client command


def _run(cmd: Sequence[str]) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT, check=False)
    assert proc.returncode == 0, f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stderr}"
    return proc


def _image(fixture_store: FixtureStore, tool_cmd: list[str], fixture_id: str, dest: Path) -> Path:
    # skopeo needs a real file, not stdin.
    result = fixture_store.run(tool_cmd, fixture_id)
    assert result.returncode == 0, result.stderr
    image = dest / f"{fixture_id}.tar"
    image.write_bytes(result.stdout)
    return image


def _unpack(image: Path, work: Path) -> Path:
    skopeo = require_command("skopeo")
    umoci = require_command("umoci")
    layout = work / "oci"
    _run([skopeo, "--insecure-policy", "copy", f"docker-archive:{image}", f"oci:{layout}:test"])
    bundle = work / "bundle"
    _run([umoci, "unpack", "--rootless", "--image", f"{layout}:test", str(bundle)])
    return bundle / "rootfs"


def _assert_same_entry(source: Path, unpacked: Path) -> None:
    if source.is_symlink():
        assert unpacked.is_symlink(), unpacked
        assert os.readlink(unpacked) == os.readlink(source)
    else:
        assert unpacked.read_bytes() == source.read_bytes()
        assert unpacked.stat().st_mode & 0o777 == source.stat().st_mode & 0o777


@pytest.mark.parametrize(
    ("fixture_id", "entries"),
    [
        (
            "links",
            [
                "links/target-file",
                "links/rel",
                "links/abs",
                "links/dangling",
                "links/target-300",
                "links/non-ascii",
                "links/dir-link",
                "links-alias",
                "single-file.txt",
                "single-script",
            ],
        ),
        (
            "hardlinks",
            ["hl-one/orig", "hl-one/sub/link-in-same-path", "hl-three/link-in-other-layer"],
        ),
        ("from-image", ["tiny/bin/tiny", "tiny/bin/t"]),
    ],
)
def test_skopeo_and_umoci_unpack_the_fixture_contents(
    tmp_path: Path,
    fixture_store: FixtureStore,
    tool_cmd: list[str],
    fixture_id: str,
    entries: list[str],
) -> None:
    image = _image(fixture_store, tool_cmd, fixture_id, tmp_path)
    rootfs = _unpack(image, tmp_path)
    source = fixture_store.get(fixture_id).root
    for entry in entries:
        name, _, rest = entry.partition("/")
        rel = Path(storegen.store_path(name)) / rest if rest else Path(storegen.store_path(name))
        _assert_same_entry(source / rel, rootfs / rel)
    conf = (rootfs / "etc" / "streamimage-test.conf").read_bytes()
    assert conf == b"greeting=hello\n"
    if fixture_id == "from-image":
        base_sh = rootfs / storegen.store_path("base-tools") / "bin" / "sh"
        assert base_sh.read_bytes() == b"#!/bin/false\n"


@pytest.mark.parametrize("fixture_id", ["basic", "from-image-gz"])
def test_podman_loads_the_image_into_fresh_storage(
    tmp_path: Path, fixture_store: FixtureStore, tool_cmd: list[str], fixture_id: str
) -> None:
    podman = require_command("podman")
    image = _image(fixture_store, tool_cmd, fixture_id, tmp_path)
    # podman refuses a runroot longer than 50 characters: pytest's tmp_path is too long.
    with tempfile.TemporaryDirectory(prefix="si-podman-") as runroot:
        storage = [podman, "--root", str(tmp_path / "root"), "--runroot", runroot]
        storage += ["--storage-driver", "vfs"]
        _run([*storage, "load", "-i", str(image)])
        listed = _run([*storage, "images", "--format", "{{.Repository}}:{{.Tag}}"]).stdout
    assert f"localhost/streamimage-test/{fixture_id}:latest" in listed.split()


def test_skopeo_accepts_the_shipped_example(tmp_path: Path, tool_cmd: list[str]) -> None:
    result = storegen.run_tool(tool_cmd, "examples/hello/conf.json", cwd=storegen.REPO_ROOT)
    assert result.returncode == 0, result.stderr
    image = tmp_path / "hello.tar"
    image.write_bytes(result.stdout)
    rootfs = _unpack(image, tmp_path)
    assert (rootfs / "etc" / "hello.conf").read_text() == "greeting='Hello from streamimage!'\n"
    script = "examples/hello/store/q9bkzp7lb6hpalflsvy6bjjss6ijkh8s-hello-2.12/bin/hello"
    assert (rootfs / script).read_bytes() == (storegen.REPO_ROOT / script).read_bytes()
