"""Estimates from directory listings, for the scheduler: how many entries a layer holds,
where to cut its walk in two, how many bytes its files hold.

IO: listdir and scandir (its d_type), an lstat only where a file's size is asked for.
Rule: an estimate, never a fact: what it can't list counts as empty, and the store may
change after it was counted; the walk (walk.py), which the hash pass's witness holds to,
says what the layer is.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import PurePosixPath

from streamimage.engine.walk import Cut


def count_below(path: str) -> dict[str, int]:
    """How many entries each directory at or below ``path`` holds at any depth, from
    directory listings alone (no lstat: scandir's d_type), never following a symlink.
    Files are not counted as keys. A directory that can't be listed counts as empty: the
    walk will say what is wrong with it.
    """
    below: dict[str, int] = {path: 0}
    if os.path.islink(path):  # a store path that is a symlink is archived as one
        return below
    order: list[tuple[str, list[str]]] = []  # directories, parents first, and their subdirs
    pending = [path]
    while pending:
        directory = pending.pop()
        subdirs = []
        count = 0
        try:
            with os.scandir(directory) as listing:
                for item in listing:
                    count += 1
                    if item.is_dir(follow_symlinks=False):
                        subdirs.append(item.path)
        except OSError:
            pass
        below[directory] = count
        order.append((directory, subdirs))
        pending.extend(subdirs)
    for directory, subdirs in reversed(order):  # children before their parents
        below[directory] += sum(below[sub] for sub in subdirs)
    return below


def file_bytes(store_paths: Sequence[str]) -> int:
    """The bytes of the regular files at or below ``store_paths``, never following a
    symlink: an lstat each (scandir's), for layers of few entries (their big files
    dominate how long they take to stream). Anything that can't be read counts 0: the
    walk will say what is wrong with it."""
    total = 0
    pending = [str(PurePosixPath(path)) for path in store_paths]
    while pending:
        path = pending.pop()
        try:
            if os.path.islink(path):
                continue
            if not os.path.isdir(path):
                total += os.lstat(path).st_size
                continue
            with os.scandir(path) as listing:
                for item in listing:
                    if item.is_dir(follow_symlinks=False):
                        pending.append(item.path)
                    elif item.is_file(follow_symlinks=False):
                        total += item.stat(follow_symlinks=False).st_size
        except OSError:
            continue
    return total


def fewer_entries(store_paths: Sequence[str], limit: int) -> bool:
    """Whether ``store_paths`` hold fewer than ``limit`` entries in all, counted from
    directory listings (scandir's d_type, no lstat), never following a symlink, and no
    further than the limit: a large layer costs no more to ask about than a small one.
    What can't be listed counts as empty: the walk will say what is wrong with it."""
    count = 0
    pending = []
    for store_path in store_paths:
        path = str(PurePosixPath(store_path))
        count += 1
        if not os.path.islink(path) and os.path.isdir(path):
            pending.append(path)
    while pending and count < limit:
        directory = pending.pop()
        try:
            with os.scandir(directory) as listing:
                for item in listing:
                    count += 1
                    if item.is_dir(follow_symlinks=False):
                        pending.append(item.path)
        except OSError:
            continue
    return count < limit


def place_of(store_path: str, index: int, below: dict[str, int]) -> Cut:
    """The place of the walk's entry number ``index`` (0: below the store path's first),
    from ``count_below``'s counts.

    Raises:
        IndexError: the store path holds no more than ``index`` entries.
    """
    directory, left = str(PurePosixPath(store_path)), index
    place: list[str] = []
    while True:
        try:
            names = sorted(os.listdir(directory))
        except OSError:
            names = []
        for name in names:
            child = f"{directory}/{name}"
            if left == 0:
                return (*place, name)
            size = 1 + below.get(child, 0)
            if left < size:
                place.append(name)
                directory, left = child, left - 1
                break
            left -= size
        else:
            raise IndexError(f"{store_path}: fewer than {index + 1} entries")


def split_walk(store_paths: Sequence[str], head_share: float) -> tuple[int, int, Cut]:
    """Where to cut the walk of ``store_paths`` so that about ``head_share`` of its entries
    come before the cut: the number of entries in all (counted from listings: an estimate
    if the store changes meanwhile, which the hash pass's witness catches), the index of
    the store path cut, and the place in it (``()``: at its beginning)."""
    paths = [str(PurePosixPath(path)) for path in store_paths]
    belows = [count_below(path) for path in paths]
    counts = [1 + below[path] for path, below in zip(paths, belows, strict=True)]
    total = sum(counts)
    target = round(total * head_share)
    for index, count in enumerate(counts):
        if target < count:
            if target == 0:
                return total, index, ()
            try:
                return total, index, place_of(paths[index], target - 1, belows[index])
            except IndexError:  # the store path changed since it was counted
                return total, index, ()
        target -= count
    return total, len(store_paths), ()
