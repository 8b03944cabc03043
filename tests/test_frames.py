"""Kept frames: a warm run sends each layer's headers and small files from the spool an
earlier run kept, instead of reading them from the store again; damaged or stale frames
never give a wrong image.

Oracle: the image of the same store with --no-cache (test_cache.oracle). The stale-store
cases (a file changed in place, replaced, a store path recreated, entries added or removed)
run in test_cache.py, whose warm runs go through kept frames too.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from streamimage.engine import frames
from streamimage.engine.frames import FrameStore
from streamimage.engine.framing import SpoolRange
from streamimage.engine.scheduler import THREAD_MAX_ENTRIES
from streamimage.engine.spool import Segment, sent_chunks
from tests import storegen
from tests.failures import Store, chunk_bytes, tool_env
from tests.test_cache import CACHE_ON, aged_store, image, oracle, run

KEPT = "kept frames"


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Store:
    """A store for the tests that don't change it (each has a cache of its own)."""
    return aged_store(tmp_path_factory.mktemp("shared"))


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return aged_store(tmp_path / "store")


def timeline(stderr: bytes) -> list[str]:
    """-v's line of each store layer."""
    return [line for line in stderr.decode().splitlines() if line.startswith("  layer ")]


def kept_files(cache: Path) -> list[Path]:
    """The spool files kept in ``cache``."""
    return sorted(p for p in (cache / frames.FRAMES_DIR).iterdir() if not p.name.endswith(".json"))


def recipes(cache: Path) -> list[Path]:
    """The recipes kept in ``cache``, one per layer."""
    return sorted((cache / frames.FRAMES_DIR).glob("*.json"))


@pytest.mark.parametrize("args", [[], ["--format", "oci"]], ids=["docker", "oci"])
def test_a_warm_run_sends_the_kept_frames_and_gives_the_same_bytes(
    shared: Store, tmp_path: Path, args: list[str]
) -> None:
    cache = tmp_path / "cache"
    cold = run(shared, cache, *args)
    assert cold.returncode == 0, cold.stderr
    assert KEPT not in cold.stderr.decode()
    assert len(recipes(cache)) == len(shared.layers)  # every layer's, small ones too
    warm = run(shared, cache, *args)
    assert warm.returncode == 0, warm.stderr
    lines = timeline(warm.stderr)
    assert len(lines) == len(shared.layers)
    assert all(KEPT in line for line in lines)
    assert cold.stdout == warm.stdout == oracle(shared, *args)


def _small_file_opens_runner(log: Path) -> list[str]:
    """streamimage with every worker a thread, under an audit hook that logs each store
    file opened by a bare name (as the walk opens a file in its directory's fd)."""
    code = (
        "import os, sys\n"
        f"log = open({str(log)!r}, 'a')\n"
        "def hook(event, args):\n"
        "    if event == 'open' and isinstance(args[0], str) and args[0].startswith('f0'):\n"
        "        log.write(args[0] + '\\n'); log.flush()\n"
        "sys.addaudithook(hook)\n"
        "from streamimage.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    return [sys.executable, "-c", code]


def test_a_warm_run_reads_no_small_file_of_a_kept_layer(shared: Store, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    logs = [tmp_path / "cold.log", tmp_path / "warm.log"]
    outputs = []
    for log in logs:
        log.touch()
        result = _run_logged(shared, cache, log)
        assert result.returncode == 0, result.stderr
        outputs.append(result.stdout)
    # add_entries' files (f00000, ...) are all small: read cold, not warm
    assert len(logs[0].read_text().splitlines()) >= THREAD_MAX_ENTRIES
    assert logs[1].read_text() == ""
    assert outputs[0] == outputs[1] == oracle(shared)


def _run_logged(store: Store, cache: Path, log: Path) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [
            *_small_file_opens_runner(log),
            storegen.CONF_NAME,
            "-v",
            "--hash-in",
            "thread",
            "--cache-dir",
            str(cache),
        ],
        cwd=store.root,
        env=tool_env(CACHE_ON),
        capture_output=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize("mtime", ["moved", "restored"])
def test_a_kept_spool_written_to_is_a_miss(store: Store, tmp_path: Path, mtime: str) -> None:
    # The same size, other bytes, even with the mtime put back: the ctime moved, and a kept
    # file is held to its identity as a store file is (its bytes are sent, never read).
    cache = tmp_path / "cache"
    expected = oracle(store)
    image(store, cache)
    for spool in kept_files(cache):
        before = spool.stat()
        with spool.open("r+b") as file:
            file.seek(before.st_size // 2)
            file.write(b"\xff" * min(64, before.st_size - before.st_size // 2))
        if mtime == "restored":
            os.utime(spool, ns=(before.st_atime_ns, before.st_mtime_ns))
    damaged = run(store, cache)  # hashed again, and its frames kept again
    assert damaged.returncode == 0, damaged.stderr
    assert damaged.stdout == expected
    assert_frames_unused(timeline(damaged.stderr))
    again = run(store, cache)
    assert KEPT in timeline(again.stderr)[0]  # kept anew
    assert again.stdout == expected


def assert_frames_unused(lines: list[str]) -> None:
    """No layer's frames were sent: the large first layer was hashed again (for its
    frames to be kept anew), the small ones were hits framed again."""
    assert "cache miss (no kept frames), stored" in lines[0], lines
    assert all("cache hit" in line and KEPT not in line for line in lines[1:]), lines


@pytest.mark.parametrize("damage", ["truncated", "removed", "recipe-garbage", "recipe-edited"])
def test_kept_frames_that_dont_fit_are_a_miss_not_a_failure(
    store: Store, tmp_path: Path, damage: str
) -> None:
    cache = tmp_path / "cache"
    expected = oracle(store)
    image(store, cache)
    for spool in kept_files(cache):
        if damage == "truncated":
            os.truncate(spool, spool.stat().st_size - 1)
        elif damage == "removed":
            spool.unlink()
    for recipe in recipes(cache):
        if damage == "recipe-garbage":
            recipe.write_bytes(os.urandom(recipe.stat().st_size))
        elif damage == "recipe-edited":  # a segment's offset moved, the checksum left as it was
            document = json.loads(recipe.read_text())
            first = next(row for row in document["segments"] if len(row) == 4)
            first[1] += 512
            recipe.write_text(json.dumps(document))
    warm = run(store, cache)
    assert warm.returncode == 0, warm.stderr
    assert warm.stdout == expected
    assert_frames_unused(timeline(warm.stderr))


def test_frames_of_another_fingerprint_are_not_used(store: Store, tmp_path: Path) -> None:
    # Frames whose files are intact but whose recipe names the fingerprint the layer had
    # before a change (checksum made anew): the digest entry is of the layer as it is now,
    # so they are not sent.
    cache = tmp_path / "cache"
    image(store, cache)
    old = {p.name: json.loads(p.read_text()) for p in recipes(cache)}
    (store.root / store.layers[0][0] / "many" / "d000" / "f00000").write_bytes(b"changed\n")
    time.sleep(2.1)  # old enough to be stored
    changed = image(store, cache)[0]
    (stale,) = [p for p in recipes(cache) if json.loads(p.read_text()) != old[p.name]]
    document = json.loads(stale.read_text())
    del document["checksum"]
    document["fingerprint"] = old[stale.name]["fingerprint"]
    document["diff_id"] = old[stale.name]["diff_id"]
    document["checksum"] = frames._checksum(document)
    stale.write_text(json.dumps(document))
    warm = run(store, cache)
    assert warm.returncode == 0, warm.stderr
    lines = timeline(warm.stderr)
    assert "cache miss (no kept frames), stored" in lines[0]
    assert all(KEPT in line for line in lines[1:])
    assert warm.stdout == changed == oracle(store)


def _segments(data: bytes) -> tuple[Segment, ...]:
    half = len(data) // 2
    return (Segment(1, 0, half), Segment(2, half, len(data) - half))


def test_kept_frames_are_sent_from_the_files_load_opened(tmp_path: Path) -> None:
    data = os.urandom(4096)
    path = tmp_path / "spool"
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    try:
        kept = FrameStore(str(tmp_path / "frames"))
        kept.save("k" * 64, "fp", "sha256:" + "0" * 64, [fd], _segments(data))
    finally:
        os.close(fd)
    loaded = kept.load("k" * 64, "fp", "sha256:" + "0" * 64)
    assert loaded is not None
    try:
        pieces = list(sent_chunks(loaded.fds, loaded.segments, "layer 1"))
        assert all(isinstance(piece, SpoolRange) for piece, _ in pieces)
        assert [entries for _, entries in pieces] == [1, 2]
        (name,) = kept_files(tmp_path)  # FrameStore's directory is tmp_path / FRAMES_DIR
        os.unlink(name)  # pruned by another run: the open file is still sent whole
        assert chunk_bytes(piece for piece, _ in pieces) == data
    finally:
        loaded.close()


def test_a_spool_file_without_a_name_is_copied(tmp_path: Path) -> None:
    # An unlinked spool (no O_TMPFILE, or another file system) can't be linked: copied.
    data = os.urandom(10_000)
    path = tmp_path / "spool"
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    path.unlink()
    try:
        kept = FrameStore(str(tmp_path / "frames"))
        segments = _segments(data)
        kept.save("k" * 64, "fp", "sha256:" + "0" * 64, [fd], segments)
    finally:
        os.close(fd)
    loaded = kept.load("k" * 64, "fp", "sha256:" + "0" * 64)
    assert loaded is not None
    try:
        chunks = sent_chunks(loaded.fds, loaded.segments, "l")
        assert chunk_bytes(piece for piece, _ in chunks) == data
    finally:
        loaded.close()
    assert kept.load("k" * 64, "other", "sha256:" + "0" * 64) is None


def test_prune_keeps_the_recently_used_within_the_bound(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    kept = FrameStore(str(tmp_path / "frames"))
    data = os.urandom(1000)
    source = tmp_path / "spool"
    source.write_bytes(data)
    fd = os.open(source, os.O_RDONLY)
    try:
        for n, key in enumerate(("a", "b", "c", "d")):
            kept.save(key * 64, "fp", "sha256:" + "0" * 64, [fd], _segments(data))
            recipe = tmp_path / "frames" / f"{key * 64}.json"
            os.utime(recipe, (1000 + n, time.time() - 100 + n))  # a, then b, c, d used
    finally:
        os.close(fd)
    old = tmp_path / "frames" / f"{'a' * 64}.json"
    os.utime(old, (0, time.time() - frames.KEEP_SECONDS - 10))  # a: unused for too long
    orphan = tmp_path / "frames" / ("e" * 64 + ".0123456789abcdef.0")
    orphan.write_bytes(b"left by a writer that died")
    os.utime(orphan, (0, time.time() - frames.ORPHAN_SECONDS - 10))
    monkeypatch.setattr(frames, "MAX_BYTES", 2 * len(data))  # room for two spools
    kept.prune()
    left = sorted(p.name[:1] for p in (tmp_path / "frames").iterdir())
    assert left == ["c", "c", "d", "d"]  # the two most recently used, recipe and spool


def test_no_frames_are_kept_without_the_cache(shared: Store, tmp_path: Path) -> None:
    result = subprocess.run(
        [*storegen.tool_cmd(), storegen.CONF_NAME, "--no-cache"],
        cwd=shared.root,
        env=tool_env({**CACHE_ON, "STREAMIMAGE_CACHE_DIR": str(tmp_path / "cache")}),
        capture_output=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert not (tmp_path / "cache").exists()


@pytest.mark.parametrize("args", [["--spool-max", "0"], ["--compress", "gzip"]])
def test_runs_that_keep_no_frames_still_hit(shared: Store, tmp_path: Path, args: list[str]) -> None:
    # Without a spool, or with a compressed one (the whole blob), no frames are kept: a
    # large layer's entry is a hit without them, not a miss for want of frames.
    cache = tmp_path / "cache"
    image(shared, cache, *args)
    warm, said = image(shared, cache, *args)
    assert said == ["hit"] * len(shared.layers)
    assert warm == oracle(shared, *args)
    assert not (cache / frames.FRAMES_DIR).exists()


def test_a_run_prunes_once_at_its_first_save(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A prune reads every recipe; a run keeps the frames of each of its (up to 100) layers.
    kept = FrameStore(str(tmp_path / "frames"))
    calls: list[int] = []
    monkeypatch.setattr(kept, "prune", lambda: calls.append(1))
    data = os.urandom(1000)
    source = tmp_path / "spool"
    source.write_bytes(data)
    fd = os.open(source, os.O_RDONLY)
    try:
        for key in ("a", "b", "c"):
            kept.save(key * 64, "fp", "sha256:" + "0" * 64, [fd], _segments(data))
    finally:
        os.close(fd)
    assert calls == [1]
    assert len(list((tmp_path / "frames").glob("*.json"))) == 3


def test_a_spool_file_made_with_o_tmpfile_is_linked_not_copied(tmp_path: Path) -> None:
    # A run's spool (O_TMPFILE where the file system has it) becomes the kept file itself:
    # no copy of its bytes (310 MB on the nixpkgs shape).
    fd = os.open(tmp_path, os.O_TMPFILE | os.O_RDWR, 0o600)
    data = os.urandom(10_000)
    os.write(fd, data)
    try:
        kept = FrameStore(str(tmp_path / "frames"))
        kept.save("k" * 64, "fp", "sha256:" + "0" * 64, [fd], _segments(data))
        (name,) = kept_files(tmp_path)
        assert os.stat(name).st_ino == os.fstat(fd).st_ino
    finally:
        os.close(fd)
    loaded = kept.load("k" * 64, "fp", "sha256:" + "0" * 64)
    assert loaded is not None
    try:
        assert (
            chunk_bytes(piece for piece, _ in sent_chunks(loaded.fds, loaded.segments, "l")) == data
        )
    finally:
        loaded.close()
