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

from streamimage.engine.walk import walk_store_path
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
