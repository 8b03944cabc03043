"""The benchmark harness's own logic: the corpus generator and the run/measure seam.

Rule: a tiny scale (0.002: ~140 entries, ~2 MB) keeps all of this under a few seconds.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from benchmarks import corpus
from benchmarks.runner import run_once, shell_pipeline

TINY = corpus.CorpusParams(scale=0.002, seed=7)
STORE_NAME = re.compile(r"^[0-9a-df-np-sv-z]{32}-[a-z0-9.+-]+$")
CONF_KEYS = {
    "architecture",
    "config",
    "created",
    "mtime",
    "uid",
    "gid",
    "uname",
    "gname",
    "store_dir",
    "from_image",
    "store_layers",
    "customisation_layer",
    "repo_tag",
}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, corpus.CorpusInfo]:
    """One shared tiny corpus for the tests that only read it."""
    directory = tmp_path_factory.mktemp("tiny")
    return directory, corpus.ensure_corpus(directory, TINY)


def listing(directory: Path) -> list[tuple[str, str, int, int, str]]:
    return list(corpus.iter_listing(directory / "store"))


def test_same_seed_gives_the_same_tree_and_contents(tmp_path: Path) -> None:
    first = corpus.ensure_corpus(tmp_path / "a", TINY)
    second = corpus.ensure_corpus(tmp_path / "b", TINY)

    assert listing(tmp_path / "a") == listing(tmp_path / "b")
    assert first.entries == second.entries
    assert first.file_bytes == second.file_bytes


def test_another_seed_gives_another_tree(tmp_path: Path) -> None:
    corpus.ensure_corpus(tmp_path / "a", TINY)
    corpus.ensure_corpus(tmp_path / "b", corpus.CorpusParams(scale=TINY.scale, seed=8))

    assert listing(tmp_path / "a") != listing(tmp_path / "b")


def test_summary_counts_match_the_tree_on_disk(tiny: tuple[Path, corpus.CorpusInfo]) -> None:
    tmp_path, info = tiny
    entries = listing(tmp_path)
    files = [e for e in entries if e[1] == "file"]
    symlinks = [e for e in entries if e[1] == "symlink"]

    assert info.entries == len(entries)
    assert info.files + info.hardlinks == len(files)
    assert info.symlinks == len(symlinks)
    assert info.file_bytes == sum(e[3] for e in files)
    dangling = [e for e in symlinks if not (tmp_path / "store" / e[0]).exists()]
    assert len(dangling) == info.dangling_symlinks
    assert all(not target.startswith("/") for _, _, _, _, target in symlinks)


def test_corpus_has_the_features_of_a_closure(tmp_path: Path) -> None:
    info = corpus.ensure_corpus(tmp_path, corpus.CorpusParams(scale=0.02, seed=1))
    modes = {mode for _, kind, mode, _, _ in listing(tmp_path) if kind == "file"}

    assert len(info.store_paths) == 5
    assert all(STORE_NAME.match(Path(p).name) for p in info.store_paths)
    assert {0o755, 0o555, 0o444, 0o644} <= modes
    assert info.large_files >= 1
    assert info.dangling_symlinks >= 1
    assert info.symlinks > info.dangling_symlinks
    assert info.hardlinks >= 1
    assert info.empty_files >= 1
    assert info.long_names > info.entries // 2
    assert 0.8 < info.file_bytes / (0.02 * corpus.DEFAULT_BYTES) < 1.2
    assert 0.8 < info.entries / (0.02 * corpus.DEFAULT_ENTRIES) < 1.2


def test_large_files_are_not_sparse_nor_zero(tiny: tuple[Path, corpus.CorpusInfo]) -> None:
    tmp_path, _ = tiny
    store = tmp_path / "store"
    largest = max((p for p in store.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)

    st = largest.stat()
    assert st.st_blocks * 512 >= st.st_size
    assert largest.read_bytes().count(0) < st.st_size // 4


def test_conf_is_json_with_every_key_and_absolute_store_paths(
    tiny: tuple[Path, corpus.CorpusInfo],
) -> None:
    tmp_path, info = tiny
    conf = json.loads((tmp_path / "conf.json").read_text())

    assert set(conf) == CONF_KEYS
    assert conf["store_dir"] == str((tmp_path / "store").resolve())
    layers = conf["store_layers"]
    assert [len(layer) for layer in layers] == [1, 1, 2, 1]
    paths = [path for layer in layers for path in layer]
    assert paths == list(info.store_paths)
    assert all(os.path.isabs(p) and p.startswith(conf["store_dir"] + "/") for p in paths)
    assert all(os.path.isdir(p) for p in paths)
    assert conf["from_image"] is None
    assert conf["customisation_layer"] == str(tmp_path.resolve() / "customisation")


def test_customisation_checksum_matches_a_valid_layer_tar(
    tiny: tuple[Path, corpus.CorpusInfo],
) -> None:
    tmp_path, _ = tiny
    layer = tmp_path / "customisation" / "layer.tar"
    checksum = (tmp_path / "customisation" / "checksum").read_text()

    assert checksum.strip() == hashlib.sha256(layer.read_bytes()).hexdigest()
    with tarfile.open(layer) as tar:
        assert "etc/passwd" in tar.getnames()


def test_existing_corpus_is_reused_and_other_parameters_regenerate(tmp_path: Path) -> None:
    corpus.ensure_corpus(tmp_path, TINY)
    marker = tmp_path / "store" / "marker"
    marker.write_text("left alone")

    corpus.ensure_corpus(tmp_path, TINY)
    assert marker.exists()

    corpus.ensure_corpus(tmp_path, corpus.CorpusParams(scale=TINY.scale, seed=TINY.seed + 1))
    assert not marker.exists()


def test_a_half_written_corpus_is_regenerated(tmp_path: Path) -> None:
    corpus.ensure_corpus(tmp_path, TINY)
    (tmp_path / corpus.STAMP_NAME).unlink()
    (tmp_path / "store" / "marker").write_text("stale")

    corpus.ensure_corpus(tmp_path, TINY)
    assert not (tmp_path / "store" / "marker").exists()
    assert corpus.read_stamp(tmp_path) is not None


def test_small_files_shape_is_flat_sized_files(tmp_path: Path) -> None:
    info = corpus.ensure_corpus(
        tmp_path, corpus.CorpusParams(scale=0.002, seed=1, shape="small-files")
    )
    sizes = [e[3] for e in listing(tmp_path) if e[1] == "file"]

    assert len(sizes) == info.files == round(corpus.SMALL_FILES_COUNT * 0.002)
    assert all(512 <= size <= 1536 for size in sizes)


def test_bad_scale_is_refused() -> None:
    with pytest.raises(ValueError, match="scale"):
        corpus.plan_corpus(corpus.CorpusParams(scale=0))


def test_runner_hashes_and_counts_what_the_child_writes(tmp_path: Path) -> None:
    data = b"x" * 3_000_000
    source = tmp_path / "data"
    source.write_bytes(data)

    result = run_once("cat", ["cat", str(source)], log=tmp_path / "log")

    assert result.exit_code == 0
    assert result.out_bytes == len(data)
    assert result.sha256 == hashlib.sha256(data).hexdigest()
    assert result.maxrss_kib > 0
    assert "=== cat:" in (tmp_path / "log").read_text()


def test_runner_reports_a_failing_pipeline_stage(tmp_path: Path) -> None:
    result = run_once("fail", shell_pipeline(["false"], ["cat"]))

    assert result.exit_code == 1


def reference_script() -> Path:
    default = Path(__file__).resolve().parents[2] / "shared/reference/stream_layered_image.py"
    return Path(os.environ.get("STREAMIMAGE_REFERENCE", default))


def test_reference_accepts_the_generated_conf(
    tiny: tuple[Path, corpus.CorpusInfo], tmp_path: Path
) -> None:
    script = reference_script()
    if not script.exists():
        pytest.skip(f"reference script not found at {script}")
    info = tiny[1]

    result = subprocess.run(
        [sys.executable, str(script), info.conf], capture_output=True, check=True
    )

    image = tmp_path / "image.tar"
    image.write_bytes(result.stdout)
    with tarfile.open(image) as tar:
        manifest = json.load(tar.extractfile("manifest.json"))  # type: ignore[arg-type]
    assert len(manifest[0]["Layers"]) == 5  # four store layers and the customisation
