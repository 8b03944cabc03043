"""The digest cache: a warm run skips the hash passes and gives the same bytes, and a stale
or damaged cache never gives a wrong image.

Oracle: the same store built with --no-cache (the hash passes' digests) after each change;
every run's image must be byte for byte that one, or the run must fail cleanly. The store is
made RACY_SECONDS old before the first run: an entry made just after a change isn't stored.
"""

from __future__ import annotations

import os
import re
import shutil
import sqlite3
import subprocess
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from streamimage.engine import cache as cache_module
from streamimage.engine.cache import DATABASE, RACY_SECONDS, KeyContext, LayerCache, open_cache
from streamimage.engine.hashing import hash_layer
from streamimage.engine.scheduler import THREAD_MAX_ENTRIES
from streamimage.engine.timeline import Timeline
from streamimage.imagejson import Digest
from streamimage.options import UNCOMPRESSED
from streamimage.tarheader import HeaderEncoder
from tests import storegen
from tests.failures import Store, add_entries, assert_run_failed, make_store, tool_env

CACHE_ON = {"STREAMIMAGE_NO_CACHE": ""}  # conftest turns it off for every other test


ENCODER = HeaderEncoder(uid=0, gid=0, uname="root", gname="root", mtime=1)
DIGEST = Digest.parse("sha256:" + "0" * 64)


def aged_store(parent: Path) -> Store:
    built = make_store(parent)
    # enough entries in the first layer for its hash pass and its lookup to run in a
    # worker process (the others': in threads)
    add_entries(built.root / built.layers[0][0] / "many", THREAD_MAX_ENTRIES)
    built.write_conf()
    time.sleep(RACY_SECONDS + 0.2)  # old enough to be cached (see the module docstring)
    return built


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Store:
    """A store for the tests that don't change it (each has a cache of its own)."""
    return aged_store(tmp_path_factory.mktemp("shared"))


@pytest.fixture
def store(tmp_path: Path) -> Store:
    """A store of the test's own, to change."""
    return aged_store(tmp_path / "store")


def run(
    store: Store, cache: Path | None, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[bytes]:
    """The tool on the store, with the cache in ``cache`` (None: --no-cache), -v."""
    cache_args = ["--no-cache"] if cache is None else ["--cache-dir", str(cache)]
    return subprocess.run(
        [*storegen.tool_cmd(), storegen.CONF_NAME, "-v", *cache_args, *args],
        cwd=store.root,
        env=tool_env({**CACHE_ON, **(env or {})}),
        capture_output=True,
        timeout=120,
        check=False,
    )


def image(store: Store, cache: Path | None, *args: str) -> tuple[bytes, list[str]]:
    """The image and what -v said of each store layer's cache entry."""
    result = run(store, cache, *args)
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout, said(result.stderr)


def said(stderr: bytes) -> list[str]:
    return re.findall(r", cache (.*)\)$", stderr.decode(), re.MULTILINE)


def oracle(store: Store, *args: str) -> bytes:
    return image(store, None, *args)[0]


FORMATS = [
    pytest.param([], id="docker"),
    pytest.param(["--compress", "gzip"], id="docker-gzip"),
    pytest.param(["--format", "oci", "--compress", "zstd"], id="oci-zstd"),
    pytest.param(["--format", "oci"], id="oci"),
]


@pytest.mark.parametrize("args", FORMATS)
def test_a_warm_run_hashes_nothing_and_gives_the_same_bytes(
    shared: Store, tmp_path: Path, args: list[str]
) -> None:
    cache = tmp_path / "cache"
    cold, first = image(shared, cache, *args)
    assert first == ["miss (new key), stored"] * len(shared.layers)
    warm, second = image(shared, cache, *args)
    assert second == ["hit"] * len(shared.layers)
    assert cold == warm == oracle(shared, *args)


def test_compressions_have_entries_of_their_own(shared: Store, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    image(shared, cache)
    gzip, said_gzip = image(shared, cache, "--compress", "gzip")
    assert said_gzip == ["miss (new key), stored"] * len(shared.layers)
    assert gzip == oracle(shared, "--compress", "gzip")


def test_the_summary_counts_hits_and_misses(store: Store, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    image(store, cache)
    victim = next((store.root / store.layers[0][0]).rglob("*.so*"))
    victim.write_bytes(victim.read_bytes() + b"!")
    result = run(store, cache)
    assert result.returncode == 0
    n = len(store.layers)
    # just changed: hashed, not stored (racily clean)
    assert f"digest cache: {n - 1} hit, 1 missed, 0 stored" in result.stderr.decode()


def test_the_oci_dir_is_the_same_warm(shared: Store, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    layouts = []
    for name in ("cold", "warm"):
        out = tmp_path / name
        result = run(shared, cache, "--format", "oci-dir", "--compress", "gzip", "-o", str(out))
        assert result.returncode == 0, result.stderr
        layouts.append({p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()})
    assert layouts[0] == layouts[1]


# --- a stale entry is a miss ------------------------------------------------------------


def first_file(store: Store) -> Path:
    return next(p for p in sorted((store.root / store.layers[0][0]).rglob("*")) if p.is_file())


def changed_in_place_size_and_mtime_restored(store: Store) -> None:
    victim = first_file(store)
    st = victim.stat()
    data = bytearray(victim.read_bytes())
    data[0] ^= 1
    victim.chmod(0o644)
    victim.write_bytes(bytes(data))
    victim.chmod(st.st_mode & 0o7777)
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns))  # ctime moves: users can't set it


def replaced_by_rename(store: Store) -> None:
    victim = first_file(store)
    st = victim.stat()
    data = bytearray(victim.read_bytes())
    data[-1] ^= 1
    new = victim.with_name(victim.name + ".new")
    new.write_bytes(bytes(data))
    new.chmod(st.st_mode & 0o7777)
    os.utime(new, ns=(st.st_atime_ns, st.st_mtime_ns))
    new.rename(victim)


def store_path_deleted_and_recreated(store: Store) -> None:
    path = store.root / store.layers[0][0]
    copy = path.with_name("copy")
    shutil.copytree(path, copy, symlinks=True)  # the same content, new inodes
    shutil.rmtree(path)
    copy.rename(path)


def entry_added(store: Store) -> None:
    (store.root / store.layers[0][0] / "zz-added").write_text("new")


def entry_removed(store: Store) -> None:
    first_file(store).unlink()


CHANGES = [
    changed_in_place_size_and_mtime_restored,
    replaced_by_rename,
    store_path_deleted_and_recreated,
    entry_added,
    entry_removed,
]


@pytest.mark.parametrize("change", CHANGES, ids=lambda f: f.__name__)
def test_a_store_changed_since_it_was_cached_is_hashed_again(
    store: Store, tmp_path: Path, change: object
) -> None:
    assert callable(change)
    ways = [[], ["--format", "oci", "--compress", "zstd"]]
    before = [image(store, tmp_path / f"cache-{n}", *args)[0] for n, args in enumerate(ways)]
    change(store)
    for n, args in enumerate(ways):
        after, what = image(store, tmp_path / f"cache-{n}", *args)
        # stored or not: the run may begin more than RACY_SECONDS after the change on a
        # loaded machine (the rule itself: test_the_racy_rule_keeps_what_changed_just_before)
        assert what[0] in (
            "miss (fingerprint changed), not stored (the store just changed)",
            "miss (fingerprint changed), stored",
        )
        assert what[1:] == ["hit"] * (len(store.layers) - 1)  # only that layer is hashed
        assert after == oracle(store, *args)
        assert after != before[n] or change is store_path_deleted_and_recreated


def test_a_layer_hashed_right_after_its_store_changed_is_not_cached(tmp_path: Path) -> None:
    built = make_store(tmp_path / "store")  # just made: changed less than RACY_SECONDS ago
    built.write_conf()
    cache = tmp_path / "cache"
    made = time.time()
    _, what = image(built, cache)
    if time.time() - made < RACY_SECONDS:  # else the machine was too slow to tell
        assert what == ["miss (new key), not stored (the store just changed)"] * len(built.layers)
        _, again = image(built, cache)
        assert "hit" not in again


@pytest.mark.parametrize(
    ("age", "stored"), [(0.0, False), (RACY_SECONDS - 0.5, False), (RACY_SECONDS + 0.5, True)]
)
async def test_the_racy_rule_keeps_what_changed_just_before(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, age: float, stored: bool
) -> None:
    # A hash pass that began ``age`` seconds after the store's newest ctime: stored only
    # when the store had been still for RACY_SECONDS (a change in the same second as the
    # pass could be invisible to the fingerprint: git's racy-clean problem).
    built = make_store(tmp_path / "store")
    monkeypatch.chdir(built.root)  # the conf's store paths are relative to it
    paths = built.layers[0]
    found = hash_layer(paths, ENCODER, UNCOMPRESSED, None)
    started = found.witness.newest_ctime_ns / 1e9 + age
    context = KeyContext(0, 0, "root", "root", 1, UNCOMPRESSED)
    cache = LayerCache(open_cache(str(tmp_path / "cache")), context, processes=False)
    try:
        timeline = Timeline()
        await cache.remember(paths, found, timeline, started)
        assert timeline.cache == (
            "miss, stored" if stored else "miss, not stored (the store just changed)"
        )
        hit = await cache.lookup(paths, Timeline())
        assert (hit is not None) == stored
        if hit is not None:
            assert (hit.found.diff_id, hit.found.size) == (found.diff_id, found.size)
    finally:
        cache.close()


# --- the cache is never a reason to fail ------------------------------------------------


def warned(result: subprocess.CompletedProcess[bytes], *words: str) -> None:
    assert result.returncode == 0, result.stderr
    text = result.stderr.decode()
    lines = [line for line in text.splitlines() if line.startswith("streamimage: warning:")]
    assert lines, text
    assert all(word in lines[0] for word in words), lines[0]
    assert "running without the digest cache" in lines[0]


def test_a_database_overwritten_with_garbage_is_a_warning(shared: Store, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    image(shared, cache)
    (cache / DATABASE).write_bytes(os.urandom(8192))
    for name in ("-wal", "-shm"):
        (cache / f"{DATABASE}{name}").unlink(missing_ok=True)
    result = run(shared, cache)
    warned(result, DATABASE)
    assert result.stdout == oracle(shared)


def test_a_database_of_another_version_is_left_alone(shared: Store, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    image(shared, cache)
    with sqlite3.connect(cache / DATABASE) as db:
        db.execute("UPDATE meta SET value = '999' WHERE name = 'schema'")
    result = run(shared, cache)
    warned(result, "schema version 999")
    assert result.stdout == oracle(shared)
    with sqlite3.connect(cache / DATABASE) as db:
        assert db.execute("SELECT value FROM meta").fetchone() == ("999",)


@pytest.mark.parametrize("where", ["a-file", "under-proc"])
def test_a_cache_directory_that_cant_be_made_is_a_warning(
    shared: Store, tmp_path: Path, where: str
) -> None:
    if where == "a-file":
        cache = tmp_path / "file"
        cache.write_text("not a directory")
    else:
        cache = Path("/proc/streamimage-cache")  # not even root can make it
    result = run(shared, cache)
    warned(result, str(cache))
    assert result.stdout == oracle(shared)


def test_a_missing_cache_directory_is_made(shared: Store, tmp_path: Path) -> None:
    cache = tmp_path / "deep" / "er" / "cache"
    image(shared, cache)
    assert (cache / DATABASE).is_file()
    assert image(shared, cache)[1] == ["hit"] * len(shared.layers)


def test_a_locked_database_is_a_warning(shared: Store, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    image(shared, cache)
    holder = sqlite3.connect(cache / DATABASE, isolation_level=None)
    try:
        holder.execute("BEGIN EXCLUSIVE")  # another process in the middle of a write
        result = run(shared, cache)
    finally:
        holder.close()
    warned(result, "locked")
    assert result.stdout == oracle(shared)


def test_the_environment_names_the_cache_and_turns_it_off(shared: Store, tmp_path: Path) -> None:
    cache = tmp_path / "from-env"
    base = [*storegen.tool_cmd(), storegen.CONF_NAME, "-v"]
    env = tool_env({"STREAMIMAGE_NO_CACHE": "", "STREAMIMAGE_CACHE_DIR": str(cache)})
    result = subprocess.run(base, cwd=shared.root, env=env, capture_output=True, check=False)
    assert result.returncode == 0, result.stderr
    assert (cache / DATABASE).is_file()
    env["STREAMIMAGE_NO_CACHE"] = "1"
    result = subprocess.run(base, cwd=shared.root, env=env, capture_output=True, check=False)
    assert said(result.stderr) == []


def test_four_runs_sharing_a_cache_all_give_the_image(shared: Store, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    expected = oracle(shared)

    def one(args: Sequence[str]) -> subprocess.CompletedProcess[bytes]:
        return run(shared, cache, *args)

    for _ in range(2):  # cold (all four write), then warm (all four read)
        with ThreadPoolExecutor(4) as pool:
            results = list(pool.map(one, [["-j", "1"]] * 4))
        for result in results:
            assert result.returncode == 0, result.stderr
            assert result.stdout == expected
    assert said(results[0].stderr) == ["hit"] * len(shared.layers)


def test_a_store_path_gone_still_fails_by_name(store: Store, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    image(store, cache)
    shutil.rmtree(store.root / store.layers[1][0])
    assert_run_failed(run(store, cache), 1, store.layers[1][0], "does not exist")


def test_the_first_store_of_a_run_prunes_old_and_surplus_entries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Not used for KEEP_SECONDS: gone; beyond KEEP_ENTRIES: the least recently used go.
    # Once a run: a prune sorts the whole table, and a run stores one entry per layer.
    monkeypatch.setattr(cache_module, "KEEP_ENTRIES", 5)
    entry = cache_module.CachedDigests("fp", DIGEST, 1, DIGEST, 1)
    db = open_cache(str(tmp_path))
    now = time.time()
    with db._db:
        for n in range(8):  # used 1 to 8 s ago: 0 the most recently
            db._db.execute(
                "INSERT INTO layers VALUES (?, 'fp', ?, 1, ?, 1, ?, 'x')",
                (f"old{n}", str(DIGEST), str(DIGEST), now - 1 - n),
            )
        db._db.execute(  # unused for too long, however few the entries
            "INSERT INTO layers VALUES ('stale', 'fp', ?, 1, ?, 1, ?, 'x')",
            (str(DIGEST), str(DIGEST), now - cache_module.KEEP_SECONDS - 10),
        )
    db.put("new0", entry)
    assert keys_in(db) == {"new0", "old0", "old1", "old2", "old3"}
    db.put("new1", entry)  # the same run: no second prune
    assert keys_in(db) == {"new0", "new1", "old0", "old1", "old2", "old3"}
    db.close()
    again = open_cache(str(tmp_path))  # the next run prunes at its first store
    again.put("new2", entry)
    assert keys_in(again) == {"new0", "new1", "new2", "old0", "old1"}
    again.close()


def keys_in(db: cache_module.DigestCache) -> set[str]:
    return {key for (key,) in db._db.execute("SELECT key FROM layers")}
