"""The walk against its oracle: the reference's ``sorted(chain([p], p.rglob("*")))``.

Trees of random names (non-ASCII, not UTF-8, ones that sort around the surrogate escapes),
kinds and depths; the walk must give the same paths in the same order, never following a
symlink, with the names the layer will carry.
"""

from __future__ import annotations

import itertools
import os
import pathlib
import socket
import stat
import subprocess
import tempfile
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamimage.engine.framing import Witness, witness_of
from streamimage.engine.listing import count_below, fewer_entries, place_of, split_walk
from streamimage.engine.walk import Entry, FileIdentity, LayerPart, lstats, walk_store_path
from streamimage.errors import StoreError
from streamimage.tarheader import DIRTYPE, FIFOTYPE, REGTYPE, SYMTYPE

# bytes of a name: any but NUL and "/", so UTF-8, not UTF-8, and the characters that sort
# next to the surrogate escapes (U+D7FF, U+E000, U+FFFD, astral ones)
name_bytes = st.one_of(
    st.binary(min_size=1, max_size=12).filter(lambda b: b"\0" not in b and b"/" not in b),
    st.sampled_from(["a", "B", "_", "~", "é", "日本", "\ud7ff", "\ue000", "\ufffd", "😀"]).map(
        lambda text: text.encode()
    ),
).filter(lambda b: b not in (b".", b".."))

# a tree: name -> None (file) | "link" | "fifo" | subtree
trees = st.recursive(
    st.sampled_from([None, "link", "fifo"]),
    lambda children: st.dictionaries(name_bytes, children, max_size=6),
    max_leaves=25,
)


def build(root: bytes, tree: object) -> None:
    if tree is None:
        with open(root, "wb") as file:
            file.write(root[-3:])
    elif tree == "link":
        os.symlink(b"../target", root)
    elif tree == "fifo":
        os.mkfifo(root)
    else:
        assert isinstance(tree, dict)
        os.mkdir(root)
        for name, child in tree.items():
            build(root + b"/" + name, child)


def reference_order(store_path: str) -> list[str]:
    path = pathlib.Path(store_path)
    files: Iterator[pathlib.Path] = (
        iter([path]) if path.is_symlink() else itertools.chain([path], path.rglob("*"))
    )
    return [str(p) for p in sorted(files)]


@pytest.fixture
def store() -> Iterator[str]:
    directory = tempfile.mkdtemp(prefix="walk-")
    yield directory
    subprocess.run(["rm", "-rf", directory], check=True)  # shutil.rmtree recurses


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tree=st.dictionaries(name_bytes, trees, min_size=1, max_size=8))
def test_walk_order_is_pathlib_order(tree: dict[bytes, object]) -> None:
    with tempfile.TemporaryDirectory(prefix="walk-") as store:
        root = os.path.join(store, "abc-pkg")
        build(os.fsencode(root), tree)
        walked = list(walk_store_path(root))
        expected = reference_order(root)
    assert [entry.path for entry in walked] == expected
    for entry in walked:
        name = "/" + entry.path.lstrip("/") + ("/" if entry.type == DIRTYPE else "")
        assert entry.name == name


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(trees_=st.lists(st.dictionaries(name_bytes, trees, max_size=6), min_size=1, max_size=3))
def test_a_lookups_lstats_are_the_walks_identities_and_fingerprint(
    trees_: list[dict[bytes, object]],
) -> None:
    # The digest cache's lookup fingerprints the store from lstats alone: it must see
    # what a hash pass's walk records, entry for entry, or a hit would never be found
    # (or worse, a changed store could pass for the one hashed)
    with tempfile.TemporaryDirectory(prefix="walk-") as store:
        paths = [os.path.join(store, f"abc-pkg{i}") for i in range(len(trees_))]
        for path, tree in zip(paths, trees_, strict=True):
            build(os.fsencode(path), tree)
        os.symlink("abc-pkg0", os.path.join(store, "abc-link"))  # a store path: one entry
        paths.append(os.path.join(store, "abc-link"))
        entries = [entry for path in paths for entry in walk_store_path(path)]
        stats = [st for path in paths for st in lstats(path)]
        walked = Witness()
        for entry in entries:
            walked.record(entry)
        looked_up = witness_of(paths)
        counts = [(limit, fewer_entries(paths, limit)) for limit in range(1, len(entries) + 3)]
    assert [FileIdentity.of(st) for st in stats] == [entry.identity for entry in entries]
    assert looked_up.digest() == walked.digest()
    assert looked_up.newest_ctime_ns == walked.newest_ctime_ns
    assert counts == [(limit, len(entries) < limit) for limit, _ in counts]


def test_a_lookups_walk_refuses_a_missing_path_by_name(store: str) -> None:
    with pytest.raises(StoreError, match="abc-gone: does not exist"):
        list(lstats(os.path.join(store, "abc-gone")))


def test_kinds_sizes_modes_and_link_targets_are_read_from_lstat(store: str) -> None:
    root = os.path.join(store, "abc-pkg")
    os.makedirs(os.path.join(root, "dir"))
    with open(os.path.join(root, "file"), "wb") as file:
        file.write(b"x" * 513)
    os.chmod(os.path.join(root, "file"), 0o4755)
    os.symlink("dir", os.path.join(root, "link-to-dir"))
    os.mkfifo(os.path.join(root, "fifo"))
    entries = {os.path.basename(e.path): e for e in walk_store_path(root)}
    assert entries["file"].type == REGTYPE
    assert (entries["file"].size, entries["file"].mode) == (513, 0o4755)
    assert entries["link-to-dir"].type == SYMTYPE
    assert entries["link-to-dir"].linkname == "dir"
    assert entries["fifo"].type == FIFOTYPE
    assert entries["dir"].name.endswith("/dir/")
    # a symlink to a directory is one member: nothing below it is walked
    assert not any("link-to-dir/" in path for path in entries)


def test_a_store_path_that_is_a_symlink_or_a_file_is_one_entry(store: str) -> None:
    os.symlink("elsewhere", os.path.join(store, "abc-link"))
    with open(os.path.join(store, "abc-file"), "wb"):
        pass
    assert [e.type for e in walk_store_path(os.path.join(store, "abc-link"))] == [SYMTYPE]
    assert [e.type for e in walk_store_path(os.path.join(store, "abc-file"))] == [REGTYPE]


def test_relative_store_paths_get_absolute_member_names(
    store: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    os.makedirs(os.path.join(store, "nix/store/abc-pkg/bin"))
    monkeypatch.chdir(store)
    names = [e.name for e in walk_store_path("nix/store/abc-pkg/")]
    assert names == ["/nix/store/abc-pkg/", "/nix/store/abc-pkg/bin/"]


def test_a_deep_tree_does_not_meet_the_recursion_limit(store: str) -> None:
    path = os.path.join(store, "abc-deep")
    os.mkdir(path)
    fd = os.open(path, os.O_RDONLY)
    try:
        for _ in range(1200):  # deeper than sys.getrecursionlimit(); relative: PATH_MAX
            os.mkdir("d", dir_fd=fd)
            child = os.open("d", os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd = child
    finally:
        os.close(fd)
    assert sum(1 for _ in walk_store_path(path)) == 1201


def test_a_socket_is_refused_by_name(store: str) -> None:
    root = os.path.join(store, "abc-pkg")
    os.mkdir(root)
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(os.path.join(root, "control.sock"))
        with pytest.raises(StoreError, match=r"abc-pkg/control\.sock: is a socket"):
            list(walk_store_path(root))


def test_a_missing_store_path_is_refused_by_name(store: str) -> None:
    with pytest.raises(StoreError, match="abc-gone: does not exist"):
        list(walk_store_path(os.path.join(store, "abc-gone")))


def test_directory_descriptors_are_closed_when_the_walk_stops_early(store: str) -> None:
    root = os.path.join(store, "abc-pkg")
    os.makedirs(os.path.join(root, "a/b/c/d"))
    before = len(os.listdir("/proc/self/fd"))
    walk = walk_store_path(root)
    for entry in walk:
        if stat.S_ISDIR(entry.identity[4]) and entry.path.endswith("/d"):
            break
    assert len(os.listdir("/proc/self/fd")) > before
    walk.close()
    assert len(os.listdir("/proc/self/fd")) == before


def relative_names(store_path: str, entry_path: str) -> tuple[str, ...]:
    """An entry's place in the walk of ``store_path``: its names below the store path."""
    rest = entry_path[len(store_path) :].strip("/")
    return tuple(rest.split("/")) if rest else ()


def paths_of(entries: Iterator[Entry]) -> list[str]:
    return [entry.path for entry in entries]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tree=st.dictionaries(name_bytes, trees, min_size=1, max_size=8))
def test_a_walk_cut_at_each_entry_is_the_walk_in_two(tree: dict[bytes, object]) -> None:
    with tempfile.TemporaryDirectory(prefix="walk-") as store:
        root = os.path.join(store, "abc-pkg")
        build(os.fsencode(root), tree)
        whole = paths_of(walk_store_path(root))
        below = count_below(root)
        assert below[root] == len(whole) - 1
        for index in range(1, len(whole)):
            place = place_of(root, index - 1, below)
            assert place == relative_names(root, whole[index])
            head = paths_of(walk_store_path(root, stop=place))
            tail = paths_of(walk_store_path(root, start=place))
            assert (head, tail) == (whole[:index], whole[index:])
        with pytest.raises(IndexError):
            place_of(root, len(whole) - 1, below)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    tree=st.dictionaries(name_bytes, trees, min_size=1, max_size=8),
    cut=st.lists(name_bytes, min_size=1, max_size=4),
    picks=st.lists(st.integers(min_value=0), max_size=4),
)
def test_a_walk_cut_anywhere_splits_it_in_walk_order(
    tree: dict[bytes, object], cut: list[bytes], picks: list[int]
) -> None:
    # Places that may or may not exist: names drawn at random, or taken from the tree
    # (``picks`` choose a path down it), so that cuts land on, beside and below entries.
    node: object = tree
    place: list[str] = []
    for pick in picks:
        if not isinstance(node, dict) or not node:
            break
        name = sorted(node)[pick % len(node)]
        place.append(os.fsdecode(name))
        node = node[name]
    place += [os.fsdecode(name) for name in cut[: max(0, 4 - len(place))]]
    with tempfile.TemporaryDirectory(prefix="walk-") as store:
        root = os.path.join(store, "abc-pkg")
        build(os.fsencode(root), tree)
        whole = paths_of(walk_store_path(root))
        head = paths_of(walk_store_path(root, stop=tuple(place)))
        tail = paths_of(walk_store_path(root, start=tuple(place)))
    assert head + tail == whole
    assert all(relative_names(root, path) < tuple(place) for path in head)
    assert all(relative_names(root, path) >= tuple(place) for path in tail)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    trees_=st.lists(st.dictionaries(name_bytes, trees, max_size=5), min_size=1, max_size=4),
    share=st.floats(min_value=0, max_value=1),
)
def test_a_layer_split_where_its_entries_are_is_the_layer_in_two(
    trees_: list[dict[bytes, object]], share: float
) -> None:
    with tempfile.TemporaryDirectory(prefix="walk-") as store:
        paths = [os.path.join(store, f"abc-pkg{i}") for i in range(len(trees_))]
        for path, tree in zip(paths, trees_, strict=True):
            build(os.fsencode(path), tree)
        whole = [e.path for path in paths for e in walk_store_path(path)]
        total, index, place = split_walk(paths, share)
        assert total == len(whole)
        head, tail = (
            LayerPart.halves(paths, index, place)
            if index < len(paths)
            else (
                LayerPart(tuple(paths)),
                LayerPart(()),
            )
        )
        head_paths, tail_paths = paths_of(head.entries()), paths_of(tail.entries())
    assert head_paths + tail_paths == whole
    assert len(head_paths) == round(total * share)


def test_a_symlink_store_path_counts_as_one_entry(store: str) -> None:
    target = os.path.join(store, "abc-target")
    os.mkdir(target)
    for name in "abc":
        os.mkdir(os.path.join(target, name))
    link = os.path.join(store, "abc-link")
    os.symlink(target, link)
    assert count_below(link) == {link: 0}
    assert count_below(target)[target] == 3
    assert split_walk([link, target], 0.5) == (5, 1, ("a",))


def test_a_deep_tree_is_counted_and_cut_without_recursion(store: str) -> None:
    path = os.path.join(store, "abc-deep")
    deepest = path
    os.mkdir(path)
    for _ in range(1200):  # deeper than the recursion limit (os.makedirs recurses)
        deepest += "/d"
        os.mkdir(deepest)
    below = count_below(path)
    place = place_of(path, 999, below)
    assert place == ("d",) * 1000
    assert sum(1 for _ in walk_store_path(path, start=place)) == 201
