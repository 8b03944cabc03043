# Generates a deterministic synthetic Nix-like store to benchmark image streaming on.
# Rule: everything on disk follows from (scale, seed, shape) through one random.Random(seed);
# a stamp file written last records those parameters, so an existing corpus is reused and a
# half-written one is regenerated.
#
#   python -m benchmarks.corpus DIR [--scale S] [--seed N] [--shape default|small-files|nixpkgs]
from __future__ import annotations

import argparse
import hashlib
import io
import json
import math
import os
import posixpath
import random
import shutil
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from benchmarks import closure

CORPUS_VERSION = 1  # bump when the generator's output changes for the same parameters
STAMP_NAME = ".corpus-stamp.json"
NIX_BASE32 = "0123456789abcdfghijklmnpqrsvwxyz"  # Nix's base32 alphabet (no e, o, u, t)
NIX_STORE_PREFIX = "/nix/store/"  # for the "name over 100 chars" statistic only

KIB = 1024
MIB = 1024 * KIB
GIB = 1024 * MIB

DEFAULT_ENTRIES = 60_000  # entries in the default corpus at scale 1
DEFAULT_BYTES = 1 * GIB  # file bytes in the default corpus at scale 1
SMALL_FILES_COUNT = 200_000  # regular files in the small-files corpus at scale 1
LARGE_FILE_MIN = 10 * MIB
LARGE_FILE_MAX = 100 * MIB
BLOCK_SIZE = 1 * MIB  # the seeded block large files repeat
WRITE_CHUNK = 8 * MIB  # one write() for large files
TEXT_POOL_SIZE = 1 * MIB  # small files are slices of this seeded text
MAX_DIR_DEPTH = 9  # below a package root

NIXPKGS_ENV_ENTRIES = 50_000  # entries of the nixpkgs shape's dominant store path, scale 1
# Entries of the other store paths of the nixpkgs shape at scale 1, by kind (small ones
# draw theirs log-uniformly between the two bounds).
NIXPKGS_ENTRIES: dict[closure.Kind, int] = {"big": 400, "medium": 250, "app": 12}
NIXPKGS_SMALL_ENTRIES = (3, 120)

Shape = Literal["default", "small-files", "nixpkgs"]
Kind = Literal["dir", "file", "symlink", "hardlink"]
SHAPES: tuple[Shape, ...] = ("default", "small-files", "nixpkgs")


@dataclass(frozen=True, slots=True)
class CorpusParams:
    scale: float = 1.0
    seed: int = 1
    shape: Shape = "default"


@dataclass(frozen=True, slots=True)
class Entry:
    """One planned store entry; `path` is relative to the store dir."""

    path: str
    kind: Kind
    mode: int = 0o755
    size: int = 0
    target: str = ""  # symlink target, or the hardlink's existing name (store-relative)
    content: int = 0  # offset into the text pool for small files, file index for large ones
    large: bool = False


@dataclass(frozen=True, slots=True)
class CorpusInfo:
    """What a generated corpus holds; also the stamp file's payload."""

    directory: str
    conf: str
    store_dir: str
    store_paths: tuple[str, ...]
    store_layers: tuple[tuple[str, ...], ...]
    entries: int  # every member under the store paths, the store paths included
    file_bytes: int  # regular-file bytes, hardlinks counted once per name
    files: int
    dirs: int
    symlinks: int
    dangling_symlinks: int
    hardlinks: int
    empty_files: int
    executables: int
    large_files: int
    long_names: int  # names over 100 chars once placed under /nix/store/
    # The store layer a rebuild of the app changes (an index into store_layers): the one
    # holding the app's store path. Stamps older than this field have the app last.
    app_layer: int = -1


@dataclass(frozen=True, slots=True)
class Plan:
    store_names: tuple[str, ...]
    entries: tuple[Entry, ...]
    text_pool: bytes
    block: bytes
    # store-relative names by layer; None: the default layering of `_layers`
    layers: tuple[tuple[str, ...], ...] | None = None
    app: str = ""  # the app's store-relative name, when the plan says which it is


# --- seeded content -------------------------------------------------------------------


def _split_words(text: str) -> tuple[str, ...]:
    return tuple(text.split())


_WORDS = _split_words(
    "abc array async attr base buffer cache codec common compat config context core data "
    "decoder default dict encoder errors event field format frame future handler helpers "
    "http index internal io iter json lazy loader locale mapping matrix meta model module "
    "network numeric object options parser path pickle platform plugin policy pool "
    "process protocol queue random reader registry request resource response schema "
    "selector series shared signal socket sparse stream string struct sync table tensor "
    "test text thread token transform typing unicode utils validate vector version view "
    "warnings writer"
)

_PACKAGES = _split_words(
    "numpy_bench scipy_bench pandas_bench requests_bench urllib3_bench certifi_bench "
    "setuptools_bench pip_bench attrs_bench typing_extensions_bench jinja2_bench "
    "markupsafe_bench pydantic_bench pydantic_core_bench torch_bench sympy_bench "
    "networkx_bench pillow_bench cryptography_bench botocore_bench"
)

_LARGE_NAMES: tuple[tuple[int, str], ...] = (
    (0, "lib/libc.so.6"),
    (0, "lib/locale/locale-archive"),
    (1, "lib/libcrypto.so.3"),
    (2, "lib/libpython3.11.so.1.0"),
    (3, "lib/python3.11/site-packages/torch_bench/lib/libtorch_cpu.so"),
    (
        3,
        "lib/python3.11/site-packages/numpy_bench/core/_multiarray_umath.cpython-311-x86_64-linux-gnu.so",
    ),
    (3, "lib/python3.11/site-packages/scipy_bench/linalg/_flapack.cpython-311-x86_64-linux-gnu.so"),
    (
        3,
        "lib/python3.11/site-packages/pandas_bench/_libs/hashtable.cpython-311-x86_64-linux-gnu.so",
    ),
    (3, "lib/python3.11/site-packages/cryptography_bench/hazmat/bindings/_rust.abi3.so"),
    (
        3,
        "lib/python3.11/site-packages/pydantic_core_bench/_pydantic_core.cpython-311-x86_64-linux-gnu.so",
    ),
    (4, "lib/bench-app/data/model.bin"),
    (0, "lib/libm.so.6"),
    (1, "lib/libssl.so.3"),
    (3, "lib/python3.11/site-packages/torch_bench/lib/libtorch_cuda_stub.so"),
)

_DEFAULT_STORE_NAMES = (
    "glibc-2.39-52",
    "openssl-3.0.14",
    "python3-3.11.9",
    "python3-3.11.9-env",
    "bench-app-1.0",
)
_ENTRY_SHARE = (0.04, 0.02, 0.38, 0.52, 0.04)  # of the default corpus's entries
_PACKAGE_ROOTS = (
    "share/locale",
    "etc/ssl",
    "lib/python3.11",
    "lib/python3.11/site-packages",
    "share/bench-app",
)


def _text_pool(rng: random.Random) -> bytes:
    """Python-source-like text: compresses like real source (about 4:1 with gzip)."""
    out = io.StringIO()
    size = 0
    while size < TEXT_POOL_SIZE:
        indent = "    " * rng.randrange(3)
        words = rng.choices(_WORDS, k=rng.randrange(2, 9))
        match rng.randrange(4):
            case 0:
                line = f"{indent}def {'_'.join(words[:2])}({', '.join(words[2:])}):\n"
            case 1:
                line = f"{indent}{words[0]} = {words[-1]}.{'_'.join(words[1:3])}()\n"
            case 2:
                line = f"{indent}# {' '.join(words)}\n"
            case _:
                line = f"{indent}return {' + '.join(words)}\n"
        out.write(line)
        size += len(line)
    return out.getvalue().encode()[:TEXT_POOL_SIZE]


def _large_block(rng: random.Random, text_pool: bytes) -> bytes:
    """1 MiB mixing random bytes, low-entropy bytes and text in 4 KiB runs.

    Nothing in it is zero-filled, so no file built from it is sparse, and it compresses
    roughly like a shared library (a random block alone would not compress at all).
    """
    low_entropy = bytes.maketrans(
        bytes(range(256)), b"\x00\x01\x02\x03HIJKLMN\x0f\x10\x8b\xc3\xe8" * 16
    )
    run = 4 * KIB
    parts: list[bytes] = []
    for _ in range(BLOCK_SIZE // run):
        pick = rng.random()
        if pick < 0.45:
            parts.append(rng.randbytes(run))
        elif pick < 0.9:
            parts.append(rng.randbytes(run).translate(low_entropy))
        else:
            start = rng.randrange(len(text_pool) - run)
            parts.append(text_pool[start : start + run])
    return b"".join(parts)


def _store_hash(rng: random.Random) -> str:
    return "".join(rng.choice(NIX_BASE32) for _ in range(32))


def _small_size(rng: random.Random) -> int:
    pick = rng.random()
    if pick < 0.03:
        return 0
    if pick < 0.85:
        return rng.randint(1, 4 * KIB)
    if pick < 0.985:
        return rng.randint(4 * KIB + 1, 32 * KIB)
    return rng.randint(32 * KIB + 1, 256 * KIB)


# --- planning -----------------------------------------------------------------------------


class _TreePlanner:
    """Plans one store path's tree: nested package dirs, files, links, empty dirs."""

    def __init__(self, rng: random.Random, store_name: str, pool_size: int) -> None:
        self.rng = rng
        self.store_name = store_name
        self.pool_size = pool_size
        self.entries: list[Entry] = [Entry(store_name, "dir")]
        self.dirs: set[str] = {store_name}
        self.names: dict[str, set[str]] = {store_name: set()}
        self.files: list[str] = []

    def add_dir(self, path: str) -> str:
        """Creates `path` (store-relative) and any missing parents; returns it."""
        parent, name = posixpath.split(path)
        if path in self.dirs:
            return path
        self.add_dir(parent)
        self.names[parent].add(name)
        self.dirs.add(path)
        self.names[path] = set()
        self.entries.append(Entry(path, "dir", 0o755))
        return path

    def unique(self, parent: str, name: str) -> str:
        taken = self.names[parent]
        stem, dot, ext = name.partition(".")
        candidate, n = name, 1
        while candidate in taken:
            candidate = f"{stem}_{n}{dot}{ext}"
            n += 1
        taken.add(candidate)
        return posixpath.join(parent, candidate)

    def add_file(self, parent: str, name: str, size: int, mode: int) -> str:
        path = self.unique(parent, name)
        offset = self.rng.randrange(self.pool_size - size) if size else 0
        self.entries.append(Entry(path, "file", mode, size, content=offset))
        self.files.append(path)
        return path

    def add_symlink(self, parent: str, name: str, target: str) -> None:
        self.entries.append(Entry(self.unique(parent, name), "symlink", 0o777, target=target))

    def plan_package_tree(self, root: str, budget: int, max_small: int) -> None:
        """Adds entries under `root` until `budget` entries exist in this store path."""
        rng = self.rng
        self.add_dir(posixpath.join(self.store_name, "bin"))
        self.add_file(posixpath.join(self.store_name, "bin"), "main", 2 * KIB, 0o555)
        base = self.add_dir(posixpath.join(self.store_name, root))
        recent = [base]
        while len(self.entries) < budget:
            pick = rng.random()
            parent = rng.choice(recent[-12:])
            depth = parent.count("/") - base.count("/")
            if pick < 0.09 and depth < MAX_DIR_DEPTH:
                words = rng.choices(_WORDS, k=rng.randrange(1, 3))
                name = rng.choice(_PACKAGES) if depth == 0 else "_".join(words)
                if rng.random() < 0.2:
                    name = "__pycache__"
                recent.append(self.add_dir(self.unique(parent, name)))
                if len(recent) > 64:
                    recent = [base, *recent[-40:]]
            elif pick < 0.095:
                # A leaf dir nothing is ever put in (tests/data/empty and friends).
                self.entries.append(
                    Entry(self.unique(parent, "empty_" + rng.choice(_WORDS)), "dir")
                )
            elif pick < 0.125:
                self._plan_symlink(parent)
            elif pick < 0.128 and self.files:
                source = rng.choice(self.files)
                self.entries.append(
                    Entry(
                        self.unique(parent, posixpath.basename(source)), "hardlink", target=source
                    )
                )
            else:
                size = min(_small_size(rng), max_small)
                self.add_file(parent, self._file_name(parent), size, self._file_mode())

    def _file_name(self, parent: str) -> str:
        words = "_".join(self.rng.choices(_WORDS, k=self.rng.randrange(1, 4)))
        if parent.endswith("__pycache__"):
            return f"{words}.cpython-311.pyc"
        if self.rng.random() < 0.04:
            return "__init__.py"
        return words + self.rng.choice((".py", ".py", ".py", ".pyi", ".txt", ".json", ".h", ".so"))

    def _file_mode(self) -> int:
        pick = self.rng.random()
        if pick < 0.02:
            return 0o755
        if pick < 0.04:
            return 0o555
        return 0o444 if pick < 0.5 else 0o644

    def _plan_symlink(self, parent: str) -> None:
        rng = self.rng
        if rng.random() < 0.2 or not self.files:
            target = posixpath.join("..", "missing-" + rng.choice(_WORDS), rng.choice(_WORDS))
            self.add_symlink(parent, rng.choice(_WORDS) + ".dangling", target)
            return
        target_path = rng.choice(self.files)
        if rng.random() < 0.2:
            target_path = posixpath.dirname(target_path)  # a link to a directory
        rel = posixpath.relpath(target_path, parent)
        self.add_symlink(parent, "link_" + posixpath.basename(target_path), rel)


def _plan_default(
    rng: random.Random, scale: float, text_pool: bytes
) -> tuple[list[str], list[Entry]]:
    total_entries = max(len(_DEFAULT_STORE_NAMES) * 8, round(DEFAULT_ENTRIES * scale))
    total_bytes = max(1 * MIB, round(DEFAULT_BYTES * scale))
    store_names = [f"{_store_hash(rng)}-{name}" for name in _DEFAULT_STORE_NAMES]
    planners = [_TreePlanner(rng, name, len(text_pool)) for name in store_names]
    # Small files never take more than a third of the bytes: at tiny scales the large
    # files would otherwise vanish.
    max_small = max(1, min(256 * KIB, total_bytes // 3 // max(1, total_entries // 40)))
    for planner, share, root in zip(planners, _ENTRY_SHARE, _PACKAGE_ROOTS, strict=True):
        planner.plan_package_tree(root, max(8, round(total_entries * share)), max_small)

    # The app links into the interpreter's store path, relatively, as wrappers do.
    app, python = planners[4], planners[2]
    app.add_symlink(
        posixpath.join(app.store_name, "bin"),
        "python3",
        posixpath.join("..", "..", python.store_name, "bin", "main"),
    )
    app.add_file(posixpath.join(app.store_name, "bin"), "bench-app", 0, 0o755)

    entries = [e for planner in planners for e in planner.entries]
    small_bytes = sum(e.size for e in entries if e.kind == "file")
    size_of = {e.path: e.size for e in entries if e.kind == "file"}
    small_bytes += sum(size_of[e.target] for e in entries if e.kind == "hardlink")
    budget = max(0, total_bytes - small_bytes)
    index = 0
    while budget > 0:
        owner, rel = _LARGE_NAMES[index % len(_LARGE_NAMES)]
        round_no = index // len(_LARGE_NAMES)
        if round_no:
            rel = f"{rel}.{round_no}"
        size = min(budget, rng.randint(LARGE_FILE_MIN, LARGE_FILE_MAX))
        planner = planners[owner]
        parent = planner.add_dir(posixpath.join(planner.store_name, posixpath.dirname(rel)))
        path = planner.unique(parent, posixpath.basename(rel))
        mode = 0o444 if rel.endswith(".bin") or "locale" in rel else 0o555
        planner.entries.append(Entry(path, "file", mode, size, content=index, large=True))
        budget -= size
        index += 1
    return store_names, [e for planner in planners for e in planner.entries]


def _plan_small_files(rng: random.Random, scale: float) -> tuple[list[str], list[Entry]]:
    files_total = max(len(_DEFAULT_STORE_NAMES), round(SMALL_FILES_COUNT * scale))
    per_dir = 100
    store_names = [f"{_store_hash(rng)}-{name}" for name in _DEFAULT_STORE_NAMES]
    entries: list[Entry] = []
    for number, store_name in enumerate(store_names):
        count = files_total // len(store_names) + (number < files_total % len(store_names))
        entries.append(Entry(store_name, "dir"))
        entries.append(Entry(f"{store_name}/share", "dir"))
        for i in range(count):
            directory = f"{store_name}/share/d{i // per_dir:05d}"
            if i % per_dir == 0:
                entries.append(Entry(directory, "dir"))
            size = rng.randint(512, 1536)
            offset = rng.randrange(TEXT_POOL_SIZE - size)
            name = f"{directory}/{rng.choice(_WORDS)}_{i:06d}.py"
            entries.append(Entry(name, "file", 0o444, size, content=offset))
    return store_names, entries


def _fit(entries: list[Entry], limit: int) -> None:
    """Shrinks the small files of `entries` in place until they hold at most `limit` bytes
    (at tiny scales they would otherwise crowd out a path's large files)."""
    total = sum(e.size for e in entries if e.kind == "file")
    if total <= limit:
        return
    for i, e in enumerate(entries):
        if e.kind == "file":
            entries[i] = Entry(e.path, e.kind, e.mode, e.size * limit // total, content=e.content)


def _add_large_files(
    planner: _TreePlanner, rng: random.Random, parent: str, count: int, budget: int, first: int
) -> int:
    """`count` library-like files sharing `budget` bytes in `parent`; returns the next index."""
    weights = [rng.uniform(0.5, 1.5) for _ in range(count)]
    sizes = [int(budget * w / sum(weights)) for w in weights]
    sizes[0] += budget - sum(sizes)
    stem = planner.store_name.split("-", 2)[1]
    for index, size in enumerate(sizes, start=first):
        path = planner.unique(planner.add_dir(parent), f"lib{stem}.so.{index - first}")
        planner.entries.append(Entry(path, "file", 0o555, size, content=index, large=True))
    return first + count


def _plan_lib_path(
    planner: _TreePlanner, rng: random.Random, budget: int, entries: int, large: int, first: int
) -> int:
    """A package of a few library-like files (at least one) and small files around them
    (headers, docs, pkg-config): `entries` entries, `budget` bytes. Returns the next index."""
    store = planner.store_name
    parents = [
        planner.add_dir(posixpath.join(store, sub))
        for sub in ("lib", "share/doc", "include", "lib/pkgconfig", "bin")[: max(1, entries // 12)]
    ]
    small = max(0, entries - len(planner.entries) - max(1, large))
    start = len(planner.entries)
    for _ in range(small):
        parent = rng.choice(parents)
        size = min(_small_size(rng), 64 * KIB)
        planner.add_file(parent, planner._file_name(parent), size, planner._file_mode())
    tail = planner.entries[start:]
    _fit(tail, budget // 3)
    planner.entries[start:] = tail
    rest = budget - sum(e.size for e in tail)
    return _add_large_files(planner, rng, posixpath.join(store, "lib"), max(1, large), rest, first)


def _plan_nixpkgs(
    rng: random.Random, scale: float, text_pool: bytes
) -> tuple[list[str], list[Entry], closure.Closure]:
    total_bytes = max(1 * MIB, round(DEFAULT_BYTES * scale))
    graph = closure.plan_closure(rng)  # the same names, references and layers at any scale
    low, high = NIXPKGS_SMALL_ENTRIES
    at_scale_1 = [
        NIXPKGS_ENTRIES.get(p.kind) or round(math.exp(rng.uniform(math.log(low), math.log(high))))
        for p in graph.paths
    ]
    env_share = 1.0 - sum(p.share for p in graph.paths)
    entries: list[Entry] = []
    large_index = 0
    for path, count in zip(graph.paths, at_scale_1, strict=True):
        budget = round(total_bytes * (env_share if path.kind == "env" else path.share))
        planner = _TreePlanner(rng, path.name, len(text_pool))
        match path.kind:
            case "file":
                # writeScript / writeText outputs: the store path is the file
                size = rng.randint(200, 3 * KIB)
                offset = rng.randrange(len(text_pool) - size)
                mode = 0o555 if path.name.endswith("entrypoint") else 0o444
                entries.append(Entry(path.name, "file", mode, size, content=offset))
                continue
            case "symlink":
                # a store path that is a symlink to another (relative: the store is moved)
                entries.append(Entry(path.name, "symlink", 0o777, target=path.references[0]))
                continue
            case "env":
                env_entries = max(8, round(NIXPKGS_ENV_ENTRIES * scale))
                max_small = max(1, min(256 * KIB, budget // 3 // max(1, env_entries // 40)))
                planner.plan_package_tree("lib/python3.11/site-packages", env_entries, max_small)
                small = planner.entries[1:]
                _fit(small, budget * 2 // 3)
                planner.entries[1:] = small
                rest = budget - sum(e.size for e in small if e.kind == "file")
                rest -= sum(_size_of(small, e.target) for e in small if e.kind == "hardlink")
                where = posixpath.join(path.name, "lib/python3.11/site-packages/_native")
                large_index = _add_large_files(
                    planner, rng, where, path.large, max(0, rest), large_index
                )
            case _:
                large_index = _plan_lib_path(
                    planner, rng, budget, max(1, round(count * scale)), path.large, large_index
                )
        entries += planner.entries
    return [p.name for p in graph.paths], entries, graph


def _size_of(entries: list[Entry], path: str) -> int:
    return next(e.size for e in entries if e.path == path)


def plan_corpus(params: CorpusParams) -> Plan:
    """Plans the whole corpus from `params` alone; raises ValueError on bad parameters."""
    if not params.scale > 0:
        raise ValueError(f"scale must be positive, got {params.scale}")
    rng = random.Random(params.seed)
    text_pool = _text_pool(rng)
    block = _large_block(rng, text_pool)
    match params.shape:
        case "default":
            names, entries = _plan_default(rng, params.scale, text_pool)
        case "small-files":
            names, entries = _plan_small_files(rng, params.scale)
        case "nixpkgs":
            names, entries, graph = _plan_nixpkgs(rng, params.scale, text_pool)
            return Plan(tuple(names), tuple(entries), text_pool, block, graph.layers, graph.app)
        case _:
            raise ValueError(f"unknown shape {params.shape!r}, expected one of {SHAPES}")
    return Plan(tuple(names), tuple(entries), text_pool, block)


# --- writing ---------------------------------------------------------------------------------


def _large_prefix(entry: Entry) -> bytes:
    # A per-file header of varying length, so no two large files share content or alignment.
    head = f"\x7fELF bench {entry.path} #{entry.content}\n".encode()
    return head + bytes(range(1, 256))[: (entry.content * 37) % 255]


def _write_large(fd: int, entry: Entry, block: bytes) -> None:
    chunk = memoryview(block * (WRITE_CHUNK // len(block)))
    prefix = _large_prefix(entry)[: entry.size]
    os.write(fd, prefix)
    remaining = entry.size - len(prefix)
    while remaining > 0:
        n = min(remaining, len(chunk))
        written = os.write(fd, chunk[:n])
        remaining -= written


def _write_small(fd: int, entry: Entry, text_pool: bytes) -> None:
    data = memoryview(text_pool)[entry.content : entry.content + entry.size]
    while data:
        data = data[os.write(fd, data) :]


def _materialize(plan: Plan, store_dir: Path) -> None:
    for entry in plan.entries:
        target = store_dir / entry.path
        match entry.kind:
            case "dir":
                target.mkdir()
                target.chmod(entry.mode)
            case "file":
                fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                try:
                    if entry.large:
                        _write_large(fd, entry, plan.block)
                    else:
                        _write_small(fd, entry, plan.text_pool)
                    os.fchmod(fd, entry.mode)
                finally:
                    os.close(fd)
            case "symlink":
                os.symlink(entry.target, target)
            case "hardlink":
                pass
    for entry in plan.entries:
        if entry.kind == "hardlink":
            os.link(store_dir / entry.target, store_dir / entry.path)


def customisation_tar() -> bytes:
    """A small valid tar like nixpkgs' customisation layer (etc/passwd, a tmp dir)."""
    buffer = io.BytesIO()
    members: tuple[tuple[str, bytes | None, int], ...] = (
        ("etc", None, 0o755),
        ("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n", 0o644),
        ("etc/group", b"root:x:0:\n", 0o644),
        ("tmp", None, 0o1777),
    )
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data, mode in members:
            info = tarfile.TarInfo(name)
            info.mode = mode
            info.mtime = 1
            if data is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def write_customisation(directory: Path) -> Path:
    """Writes `directory`/customisation/{layer.tar,checksum}; returns that dir."""
    layer_dir = directory / "customisation"
    layer_dir.mkdir(parents=True, exist_ok=True)
    data = customisation_tar()
    (layer_dir / "layer.tar").write_bytes(data)
    # nixpkgs writes `sha256sum layer.tar | cut -d' ' -f1`: hex and a newline.
    (layer_dir / "checksum").write_text(hashlib.sha256(data).hexdigest() + "\n")
    return layer_dir


def write_conf(
    directory: Path, store_dir: Path, store_layers: list[list[str]], customisation: Path
) -> Path:
    """Writes `directory`/conf.json in the shape both tools read; returns its path."""
    conf = {
        "architecture": "amd64",
        "config": {"Env": ["PATH=/bin"]},
        "created": "2024-01-01T00:00:00Z",
        "mtime": "2024-01-01T00:00:00Z",
        "uid": "0",
        "gid": "0",
        "uname": "root",
        "gname": "root",
        "store_dir": str(store_dir),
        "from_image": None,
        "store_layers": store_layers,
        "customisation_layer": str(customisation),
        "repo_tag": "bench:latest",
    }
    path = directory / "conf.json"
    path.write_text(json.dumps(conf, indent=2) + "\n")
    return path


def _summarize(plan: Plan, directory: Path, store_dir: Path, conf: Path) -> CorpusInfo:
    by_path = {e.path: e for e in plan.entries}
    files = [e for e in plan.entries if e.kind == "file"]
    hardlinks = [e for e in plan.entries if e.kind == "hardlink"]
    symlinks = [e for e in plan.entries if e.kind == "symlink"]
    dangling = sum(
        1
        for e in symlinks
        if posixpath.normpath(posixpath.join(posixpath.dirname(e.path), e.target)) not in by_path
    )
    paths = tuple(str(store_dir / name) for name in plan.store_names)
    layers = plan_layers(plan, store_dir)
    app = str(store_dir / plan.app) if plan.app else paths[-1]
    return CorpusInfo(
        directory=str(directory),
        conf=str(conf),
        store_dir=str(store_dir),
        store_paths=paths,
        store_layers=layers,
        entries=len(plan.entries),
        file_bytes=sum(e.size for e in files) + sum(by_path[e.target].size for e in hardlinks),
        files=len(files),
        dirs=sum(1 for e in plan.entries if e.kind == "dir"),
        symlinks=len(symlinks),
        dangling_symlinks=dangling,
        hardlinks=len(hardlinks),
        empty_files=sum(1 for e in files if e.size == 0),
        executables=sum(1 for e in files if e.mode & 0o111),
        large_files=sum(1 for e in files if e.large),
        long_names=sum(1 for e in plan.entries if len(NIX_STORE_PREFIX + e.path) > 100),
        app_layer=next(i for i, layer in enumerate(layers) if app in layer),
    )


def plan_layers(plan: Plan, store_dir: Path) -> tuple[tuple[str, ...], ...]:
    """The conf's store_layers for `plan`: absolute paths under `store_dir`."""
    if plan.layers is None:
        return _layers(tuple(str(store_dir / name) for name in plan.store_names))
    return tuple(tuple(str(store_dir / name) for name in layer) for layer in plan.layers)


def _layers(paths: tuple[str, ...]) -> tuple[tuple[str, ...], ...]:
    # The brief's layering: [[p1], [p2], [p3, p4], [p5]] (python and its env share a layer).
    if len(paths) != 5:
        return tuple((p,) for p in paths)
    return ((paths[0],), (paths[1],), (paths[2], paths[3]), (paths[4],))


def read_stamp(directory: Path) -> tuple[CorpusParams, CorpusInfo] | None:
    """The parameters and summary of the corpus in `directory`, or None if there is none."""
    try:
        stamp = json.loads((directory / STAMP_NAME).read_text())
        if stamp.get("version") != CORPUS_VERSION:
            return None
        info = dict(stamp["info"])
        info["store_paths"] = tuple(info["store_paths"])
        info["store_layers"] = tuple(tuple(layer) for layer in info["store_layers"])
        return CorpusParams(**stamp["params"]), CorpusInfo(**info)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _remove_tree(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path)


def ensure_corpus(directory: Path, params: CorpusParams, *, log: bool = False) -> CorpusInfo:
    """Generates the corpus for `params` in `directory` unless its stamp says it is there.

    Only `store/`, `customisation/`, `conf.json` and the stamp inside `directory` are ever
    removed. Raises ValueError on bad parameters and OSError on filesystem errors.
    """
    directory = directory.resolve()
    existing = read_stamp(directory)
    if existing is not None and existing[0] == params:
        if log:
            sys.stderr.write(f"corpus: {directory} already holds {params}, reusing it\n")
        return existing[1]
    started = time.perf_counter()
    plan = plan_corpus(params)
    directory.mkdir(parents=True, exist_ok=True)
    for name in (STAMP_NAME, "conf.json", "store", "customisation"):
        _remove_tree(directory / name)
    store_dir = directory / "store"
    store_dir.mkdir()
    _materialize(plan, store_dir)
    customisation = write_customisation(directory)
    conf = write_conf(
        directory, store_dir, [list(layer) for layer in plan_layers(plan, store_dir)], customisation
    )
    info = _summarize(plan, directory, store_dir, conf)
    stamp = {"version": CORPUS_VERSION, "params": asdict(params), "info": asdict(info)}
    (directory / STAMP_NAME).write_text(json.dumps(stamp, indent=2) + "\n")
    if log:
        elapsed = time.perf_counter() - started
        sys.stderr.write(
            f"corpus: generated {directory} in {elapsed:.1f} s: {info.entries} entries, "
            f"{info.file_bytes / 1e6:.1f} MB\n"
        )
    return info


def ensure_corpus_in_subprocess(directory: Path, params: CorpusParams) -> CorpusInfo:
    """`ensure_corpus` in a child process, keeping the caller's peak RSS low.

    Harnesses measure children's ru_maxrss, and Linux carries the parent's high-water RSS
    into every child it spawns: planning a corpus in-process would raise that floor.
    Raises OSError or subprocess.CalledProcessError when generation fails.
    """
    existing = read_stamp(directory.resolve())
    if existing is not None and existing[0] == params:
        return existing[1]
    argv = [sys.executable, "-m", "benchmarks.corpus", str(directory)]
    argv += ["--scale", repr(params.scale), "--seed", str(params.seed), "--shape", params.shape]
    root = Path(__file__).resolve().parent.parent
    subprocess.run(argv, check=True, cwd=root, stdout=subprocess.DEVNULL)
    stamp = read_stamp(directory.resolve())
    if stamp is None:
        raise OSError(f"{directory}: no corpus stamp after generating it")
    return stamp[1]


def iter_listing(store_dir: Path) -> Iterator[tuple[str, str, int, int, str]]:
    """(relative path, kind, mode, size, symlink target or content sha256), sorted by path."""
    for root, dirnames, filenames in os.walk(store_dir):
        dirnames.sort()
        for name in sorted([*dirnames, *filenames]):
            path = Path(root, name)
            rel = path.relative_to(store_dir).as_posix()
            st = path.lstat()
            if path.is_symlink():
                yield rel, "symlink", 0o777, 0, os.readlink(path)
            elif path.is_dir():
                yield rel, "dir", st.st_mode & 0o7777, 0, ""
            else:
                digest = hashlib.sha256(path.read_bytes()).hexdigest()
                yield rel, "file", st.st_mode & 0o7777, st.st_size, digest


def default_corpus_dir(params: CorpusParams) -> Path:
    """Where the harnesses put a corpus when not told: under /tmp, one dir per parameters."""
    return (
        Path("/tmp/streamimage-bench") / f"{params.shape}-scale-{params.scale:g}-seed-{params.seed}"
    )


def add_corpus_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--scale", type=float, default=1.0, help="multiplies bytes and entries")
    parser.add_argument("--seed", type=int, default=1, help="random.Random seed (default 1)")
    parser.add_argument("--shape", choices=SHAPES, default="default")


def params_from(args: argparse.Namespace) -> CorpusParams:
    shape: Shape = args.shape
    return CorpusParams(scale=args.scale, seed=args.seed, shape=shape)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.corpus", description=__doc__)
    parser.add_argument("directory", type=Path, help="writes DIR/store, DIR/conf.json, ...")
    add_corpus_arguments(parser)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    info = ensure_corpus(args.directory, params_from(args), log=True)
    json.dump(
        asdict(info) | {"seconds": round(time.perf_counter() - started, 2)}, sys.stdout, indent=2
    )
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
