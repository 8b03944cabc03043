"""--format oci-dir into a layout already there: an OCI layout is shared (skopeo adds images
to one), so the image is added, its index.json entry replaces only one of the same tag,
nothing else there is touched, a failure leaves index.json as it was, and two writers at
once both land.

Oracles: index.json and the blobs read back with json and hashlib; skopeo reading each
tag of the shared layout (it checks every blob's digest).
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import require_command
from tests.failures import Store, assert_run_failed, make_store, run

REF_NAME = "org.opencontainers.image.ref.name"


@pytest.fixture
def store(tmp_path: Path) -> Store:
    built = make_store(tmp_path / "store")
    built.write_conf()
    return built


def write(store: Store, layout: Path, tag: str) -> subprocess.CompletedProcess[bytes]:
    return run(store, "--format", "oci-dir", "-o", str(layout), "-t", f"hello:{tag}")


def index(layout: Path) -> list[dict[str, Any]]:
    manifests: list[dict[str, Any]] = json.loads((layout / "index.json").read_text())["manifests"]
    return manifests


def tags(layout: Path) -> list[str]:
    return [entry["annotations"][REF_NAME] for entry in index(layout)]


def blobs_are_whole(layout: Path) -> None:
    for blob in (layout / "blobs" / "sha256").iterdir():
        assert hashlib.sha256(blob.read_bytes()).hexdigest() == blob.name, blob
    for entry in index(layout):
        manifest = json.loads((layout / "blobs" / "sha256" / entry["digest"][7:]).read_text())
        for descriptor in [manifest["config"], *manifest["layers"]]:
            assert (layout / "blobs" / "sha256" / descriptor["digest"][7:]).is_file()


def test_images_of_other_tags_stay_and_the_same_tag_is_replaced(
    store: Store, tmp_path: Path
) -> None:
    layout = tmp_path / "layout"
    for tag in ("one", "two"):
        assert write(store, layout, tag).returncode == 0
    (layout / "README").write_text("the user's own")
    assert tags(layout) == ["one", "two"]
    before = index(layout)
    (store.root / store.layers[0][0] / "new-file").write_text("a change")
    assert write(store, layout, "one").returncode == 0
    assert tags(layout) == ["two", "one"]  # replaced: the new one comes last
    assert index(layout)[0] == before[1]  # "two" as it was
    assert index(layout)[1]["digest"] != before[0]["digest"]
    assert (layout / "README").read_text() == "the user's own"
    blobs_are_whole(layout)
    assert not list(layout.rglob("*.part")), "temporary files left behind"


def test_a_failure_leaves_index_json_as_it_was(store: Store, tmp_path: Path) -> None:
    layout = tmp_path / "layout"
    assert write(store, layout, "one").returncode == 0
    was = (layout / "index.json").read_bytes()
    store.conf["store_layers"].append([f"{store.conf['store_dir']}/missing"])
    store.write_conf()
    assert_run_failed(write(store, layout, "two"), 1, "missing")
    assert (layout / "index.json").read_bytes() == was
    blobs_are_whole(layout)


def test_two_writers_at_once_both_land(store: Store, tmp_path: Path) -> None:
    layout = tmp_path / "layout"
    assert write(store, layout, "first").returncode == 0
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda tag: write(store, layout, tag), ["a", "b"]))
    assert all(result.returncode == 0 for result in results), [r.stderr for r in results]
    assert sorted(tags(layout)) == ["a", "b", "first"]
    blobs_are_whole(layout)


def test_an_empty_directory_becomes_a_layout(store: Store, tmp_path: Path) -> None:
    layout = tmp_path / "empty"
    layout.mkdir()
    assert write(store, layout, "one").returncode == 0
    assert (layout / "oci-layout").is_file()
    assert tags(layout) == ["one"]


@pytest.mark.clients
def test_skopeo_reads_every_tag_of_the_shared_layout(store: Store, tmp_path: Path) -> None:
    skopeo = require_command("skopeo")
    layout = tmp_path / "layout"
    assert write(store, layout, "one").returncode == 0
    copied = subprocess.run(
        [skopeo, "--insecure-policy", "copy", "-q", f"oci:{layout}:one", f"oci:{layout}:other"],
        capture_output=True,
        check=False,
    )
    assert copied.returncode == 0, copied.stderr
    assert write(store, layout, "two").returncode == 0
    assert sorted(tags(layout)) == ["one", "other", "two"]
    for tag in ("one", "other", "two"):
        target = tmp_path / f"copy-{tag}"
        proc = subprocess.run(
            [skopeo, "--insecure-policy", "copy", "-q", f"oci:{layout}:{tag}", f"oci:{target}:x"],
            capture_output=True,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr
