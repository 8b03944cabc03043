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

from benchmarks import closure, corpus
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


# --- the nixpkgs shape ---------------------------------------------------------------------

NIXPKGS_TINY = corpus.CorpusParams(scale=0.01, seed=3, shape="nixpkgs")


@pytest.fixture(scope="module")
def nixpkgs_tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, corpus.CorpusInfo]:
    directory = tmp_path_factory.mktemp("nixpkgs")
    return directory, corpus.ensure_corpus(directory, NIXPKGS_TINY)


def bytes_by_store_path(store: Path) -> dict[str, int]:
    sizes: dict[str, int] = {}
    for rel, kind, _, size, _ in corpus.iter_listing(store):
        top = rel.split("/")[0]
        sizes[top] = sizes.get(top, 0) + (size if kind == "file" else 0)
    return sizes


def test_popularity_matches_nixpkgs_worked_example() -> None:
    # closure-graph.py's own example: A-B-C-D-F, C-E-F, B-E, A-G.
    graph = {"A": ["B", "G"], "B": ["C", "E"], "C": ["D", "E"], "D": ["F"], "E": ["F"]}

    assert closure.popularity(graph) == {"A": 1, "B": 2, "C": 3, "D": 4, "E": 5, "F": 9, "G": 2}
    assert closure.popularity_order(graph) == ["F", "E", "D", "C", "B", "G", "A"]


def test_equally_popular_paths_are_ordered_by_name_after_the_hash() -> None:
    # closure-graph.py's TestOrderByPopularity, with hashes that sort against the names
    scores = {"9-foo": 1, "1-bar": 1, "8-baz": 2, "0-tux": 2}

    assert closure.order_by_popularity(scores) == ["8-baz", "0-tux", "1-bar", "9-foo"]


@pytest.mark.parametrize(
    ("paths", "expected"),
    [(0, []), (98, [1] * 98), (99, [1] * 99), (100, [*[1] * 98, 2]), (105, [*[1] * 98, 7])],
)
def test_auto_layers_keep_one_layer_for_the_customisation(paths: int, expected: list[int]) -> None:
    # default.nix: check maxLayers-1, maxLayers, maxLayers+1 (of the 99 left) and 0
    order = [f"p{i:03d}" for i in range(paths)]

    layers = closure.auto_layers(order)

    assert [len(layer) for layer in layers] == expected
    assert [p for layer in layers for p in layer] == order


def test_nixpkgs_conf_is_auto_layered(nixpkgs_tiny: tuple[Path, corpus.CorpusInfo]) -> None:
    directory, info = nixpkgs_tiny
    layers = json.loads((directory / "conf.json").read_text())["store_layers"]
    paths = [p for layer in layers for p in layer]

    assert len(layers) == closure.MAX_LAYERS - 1
    assert all(len(layer) == 1 for layer in layers[:-1])
    assert len(layers[-1]) >= 2
    assert sorted(paths) == sorted(str(p) for p in (directory / "store").iterdir())
    assert 95 <= len(paths) <= 110
    assert Path(layers[0][0]).name.endswith("-glibc-2.39-52")
    app = layers[info.app_layer]
    assert len(app) == 1
    assert Path(app[0]).name.endswith("-bench-app-1.0")


def test_nixpkgs_one_path_holds_about_40_percent(
    nixpkgs_tiny: tuple[Path, corpus.CorpusInfo],
) -> None:
    directory, info = nixpkgs_tiny
    sizes = bytes_by_store_path(directory / "store")
    largest = max(sizes, key=lambda name: sizes[name])
    entries = [rel for rel, *_ in corpus.iter_listing(directory / "store")]
    in_largest = sum(1 for rel in entries if rel.split("/")[0] == largest)

    assert sum(sizes.values()) == info.file_bytes
    assert 0.35 < sizes[largest] / info.file_bytes < 0.5
    assert in_largest > len(entries) // 2
    assert 0.95 < info.file_bytes / (NIXPKGS_TINY.scale * corpus.DEFAULT_BYTES) < 1.05


def test_nixpkgs_has_single_file_and_symlink_store_paths(
    nixpkgs_tiny: tuple[Path, corpus.CorpusInfo],
) -> None:
    _, info = nixpkgs_tiny
    paths = [Path(p) for p in info.store_paths]
    links = [p for p in paths if p.is_symlink()]

    assert sum(1 for p in paths if p.is_file() and not p.is_symlink()) >= 3
    assert links
    assert all(p.resolve().parent == p.parent and p.resolve().is_dir() for p in links)


def test_nixpkgs_shape_at_scale_1_has_a_long_tail_of_sizes() -> None:
    # Planned only (nothing written): the documented scale-1 shape.
    plan = corpus.plan_corpus(corpus.CorpusParams(scale=1, seed=1, shape="nixpkgs"))
    sizes = dict.fromkeys(plan.store_names, 0)
    size_of = {e.path: e.size for e in plan.entries if e.kind == "file"}
    for e in plan.entries:
        if e.kind in ("file", "hardlink"):
            sizes[e.path.split("/")[0]] += size_of[e.target if e.kind == "hardlink" else e.path]
    mib = 2**20
    total = sum(sizes.values())

    assert abs(total - corpus.DEFAULT_BYTES) < 0.01 * corpus.DEFAULT_BYTES
    assert 0.35 < max(sizes.values()) / total < 0.5
    assert 3 <= sum(1 for s in sizes.values() if 30 * mib <= s <= 150 * mib) <= 8
    assert sum(1 for s in sizes.values() if s < 5 * mib) >= 24
    assert 50_000 < len(plan.entries) < 70_000


def test_nixpkgs_is_deterministic_and_its_layers_do_not_depend_on_scale(
    tmp_path: Path,
) -> None:
    smaller = corpus.plan_corpus(corpus.CorpusParams(scale=0.002, seed=3, shape="nixpkgs"))
    first = corpus.ensure_corpus(tmp_path / "a", NIXPKGS_TINY)
    second = corpus.ensure_corpus(tmp_path / "b", NIXPKGS_TINY)

    assert smaller.layers == corpus.plan_corpus(NIXPKGS_TINY).layers
    assert listing(tmp_path / "a") == listing(tmp_path / "b")
    names = [[Path(p).name for p in layer] for layer in first.store_layers]
    assert names == [[Path(p).name for p in layer] for layer in second.store_layers]
    assert (first.entries, first.file_bytes) == (second.entries, second.file_bytes)


def test_reference_and_streamimage_agree_on_the_nixpkgs_shape(
    nixpkgs_tiny: tuple[Path, corpus.CorpusInfo], tmp_path: Path
) -> None:
    script = reference_script()
    if not script.exists():
        pytest.skip(f"reference script not found at {script}")
    conf = nixpkgs_tiny[1].conf

    reference = subprocess.run([sys.executable, str(script), conf], capture_output=True, check=True)
    ours = subprocess.run(
        [sys.executable, "-m", "streamimage", conf],
        capture_output=True,
        check=True,
        env={**os.environ, "STREAMIMAGE_NO_CACHE": "1"},
    )

    image = tmp_path / "image.tar"
    image.write_bytes(reference.stdout)
    with tarfile.open(image) as tar:
        manifest = json.load(tar.extractfile("manifest.json"))  # type: ignore[arg-type]
    assert len(manifest[0]["Layers"]) == closure.MAX_LAYERS
    assert hashlib.sha256(ours.stdout).hexdigest() == hashlib.sha256(reference.stdout).hexdigest()
