"""Fixture Nix-like stores and confs covering every corner in FORMATS.md, plus golden recording.

Rule 1: a fixture is a pure function of its id. Names, contents, modes, link targets and
hardlink groups are fixed; file mtimes are not (every conf overrides mtime).
Rule 2: every path in a conf is RELATIVE (`nix/store/<hash>-name`, `customisation`,
`base.tar`) and both tools run with cwd = the fixture's root. The reference keeps relative
paths as given (`gettarinfo` strips a leading "/" and it adds one back), so members are
named `/nix/store/...` and the output bytes do not depend on where the fixture was built.
Building under absolute tmp paths would put the tmp dir into every member name and into
the config's history comments. `python -m tests.storegen --record-golden` writes
tests/golden.json by running the REFERENCE (never streamimage) on every fixture.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import os
import shlex
import shutil
import stat
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
GOLDEN_PATH = Path(__file__).resolve().parent / "golden.json"
DEFAULT_REFERENCE = REPO_ROOT.parent / "shared" / "reference" / "stream_layered_image.py"
CONF_NAME = "conf.json"
STORE_DIR = "nix/store"
CUSTOMISATION_DIR = "customisation"
# Naive ISO times are read in local time by the reference (`datetime.timestamp()`), so
# every run pins TZ; the POSIX form needs no tzdata.
DEFAULT_TZ = "UTC0"
NIX_BASE32 = "0123456789abcdfghijklmnpqrsvwxyz"
MTIME = "2024-01-01T00:00:00Z"
CREATED = "2023-06-15T12:30:45Z"

Conf = dict[str, Any]


def reference_path() -> Path:
    """The reference script: env STREAMIMAGE_REFERENCE, else ../shared/reference/."""
    return Path(os.environ.get("STREAMIMAGE_REFERENCE", str(DEFAULT_REFERENCE)))


def reference_cmd() -> list[str] | None:
    """The command running the reference, or None when the script is absent."""
    path = reference_path()
    return [sys.executable, str(path)] if path.is_file() else None


def tool_cmd() -> list[str]:
    """The tool under test: env STREAMIMAGE_CMD (shell words), else `python -m streamimage`."""
    override = os.environ.get("STREAMIMAGE_CMD")
    if override:
        return shlex.split(override)
    return [sys.executable, "-m", "streamimage"]


def tool_is_reference(cmd: Sequence[str]) -> bool:
    """True when the tool under test is in fact the reference script (no `-o` there)."""
    return any(word.endswith("stream_layered_image.py") for word in cmd)


@dataclass(frozen=True, slots=True)
class ToolResult:
    stdout: bytes
    stderr: str
    returncode: int


def run_tool(
    cmd: Sequence[str],
    conf: str | Path,
    *,
    cwd: Path,
    args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    timeout: float = 300,
) -> ToolResult:
    """Run `cmd CONF ARGS` in `cwd` with TZ pinned; return stdout bytes, stderr, status."""
    full_env = dict(os.environ)
    full_env["TZ"] = DEFAULT_TZ
    # `python -m streamimage` must import from a fixture cwd even without an install.
    full_env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO_ROOT), full_env.get("PYTHONPATH", "")) if p
    )
    full_env.update(env or {})
    proc = subprocess.run(
        [*cmd, str(conf), *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        timeout=timeout,
        check=False,
    )
    return ToolResult(proc.stdout, proc.stderr.decode("utf-8", "replace"), proc.returncode)


def store_name(name: str) -> str:
    """`<32-char nix base32 hash>-name`, the hash derived from the name (deterministic)."""
    digest = hashlib.sha256(name.encode()).digest()
    return "".join(NIX_BASE32[b % 32] for b in digest[:32]) + "-" + name


def store_path(name: str) -> str:
    """A relative store path as it appears in confs: `nix/store/<hash>-name`."""
    return f"{STORE_DIR}/{store_name(name)}"


def content(seed: str, size: int) -> bytes:
    """`size` deterministic pseudo-random bytes."""
    return hashlib.shake_256(seed.encode()).digest(size) if size else b""


class StoreBuilder:
    """Creates entries under a fixture root; every mode is set explicitly (no umask)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._root_b = os.fsencode(root)

    def _abs(self, rel: str | bytes) -> bytes:
        rel_b = os.fsencode(rel)
        assert not rel_b.startswith(b"/"), rel
        return os.path.join(self._root_b, rel_b)

    def _makedirs(self, path: bytes) -> None:
        # Component by component, so no directory gets its mode from the umask.
        if os.path.isdir(path):
            return
        self._makedirs(os.path.dirname(path))
        os.mkdir(path)
        os.chmod(path, 0o755)

    def dir(self, rel: str | bytes, mode: int = 0o755) -> None:
        path = self._abs(rel)
        self._makedirs(path)
        os.chmod(path, mode)

    def _parent(self, rel: str | bytes) -> None:
        self._makedirs(os.path.dirname(self._abs(rel)))

    def file(self, rel: str | bytes, data: bytes | str = b"", mode: int = 0o644) -> None:
        self._parent(rel)
        path = self._abs(rel)
        with open(path, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
        os.chmod(path, mode)

    def symlink(self, rel: str | bytes, target: str | bytes) -> None:
        self._parent(rel)
        os.symlink(os.fsencode(target), self._abs(rel))

    def hardlink(self, rel: str | bytes, existing: str | bytes) -> None:
        self._parent(rel)
        os.link(self._abs(existing), self._abs(rel), follow_symlinks=False)

    def fifo(self, rel: str | bytes, mode: int = 0o644) -> None:
        self._parent(rel)
        os.mkfifo(self._abs(rel))
        os.chmod(self._abs(rel), mode)


def customisation_layer_bytes() -> bytes:
    """A small valid tar (USTAR, fixed headers) for the customisation layer."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, kind, body in (
            ("etc", tarfile.DIRTYPE, b""),
            ("etc/streamimage-test.conf", tarfile.REGTYPE, b"greeting=hello\n"),
            ("etc/motd", tarfile.SYMTYPE, b""),
        ):
            info = tarfile.TarInfo(name)
            info.type = kind
            info.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
            info.mtime = 1700000000
            info.uname = info.gname = "root"
            if kind == tarfile.SYMTYPE:
                info.linkname = "streamimage-test.conf"
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body) if body else None)
    return buf.getvalue()


def write_customisation_layer(directory: Path) -> None:
    """`directory/{layer.tar, checksum}`; layer.tar 0444 and owned 0:0 (the reference puts
    its on-disk mode, ids and looked-up names into the outer member)."""
    directory.mkdir(parents=True, exist_ok=True)
    data = customisation_layer_bytes()
    layer = directory / "layer.tar"
    layer.write_bytes(data)
    (directory / "checksum").write_text(hashlib.sha256(data).hexdigest() + "\n")
    os.chmod(layer, 0o444)
    if os.geteuid() == 0:
        os.chown(layer, 0, 0)


def base_conf(fixture_id: str, store_layers: list[list[str]], **overrides: Any) -> Conf:
    conf: Conf = {
        "architecture": "amd64",
        "config": {"Cmd": ["/bin/sh"], "Env": ["PATH=/bin", "LANG=C.UTF-8"]},
        "created": CREATED,
        "mtime": MTIME,
        "uid": 0,
        "gid": 0,
        "uname": "root",
        "gname": "root",
        "store_dir": STORE_DIR,
        "from_image": None,
        "repo_tag": f"streamimage-test/{fixture_id}:latest",
        "customisation_layer": CUSTOMISATION_DIR,
        "store_layers": store_layers,
    }
    conf.update(overrides)
    return conf


# --- store builders -------------------------------------------------------------------


def make_basic_store(b: StoreBuilder) -> list[list[str]]:
    """Two layers: a small program with a lib, docs and links."""
    hello, lib, doc = store_path("hello-2.12"), store_path("libgreet-1.0"), store_path("hello-doc")
    b.file(f"{hello}/bin/hello", "#!/bin/sh\necho 'Hello, world!'\n", 0o555)
    b.symlink(f"{hello}/bin/hi", "hello")
    b.symlink(f"{hello}/lib", f"/{lib}/lib")
    b.file(f"{lib}/lib/libgreet.so.1", content("libgreet", 3000), 0o555)
    b.symlink(f"{lib}/lib/libgreet.so", "libgreet.so.1")
    b.file(f"{doc}/share/doc/hello/README", "Hello is a program.\n")
    b.dir(f"{doc}/share/man", 0o755)
    return [[lib], [hello, doc]]


def make_names_store(b: StoreBuilder) -> list[list[str]]:
    """pathlib order: component-wise, by code point; non-UTF-8 bytes sort as surrogates
    (U+DC80..U+DCFF), i.e. after CJK but before U+FF01 and emoji (unlike byte order)."""
    names = store_path("names")
    texts: list[str | bytes] = [
        "a-b", "a.b", "a0", "B", "_", "~", ".hidden", "Z", "é", "e\u0301", "日本語",
        "\U0001f600", "\uff01", "name with space", "tab\tname", "new\nline", "back\\slash",
        b"\xff\xfe", b"\xff", b"a\xff", b"\xc3", b"\xed\xb3\xbf",
    ]  # fmt: skip
    for i, name in enumerate(texts):
        b.file(os.path.join(os.fsencode(names), os.fsencode(name)), f"entry {i}\n")
    # "a" is a directory: "a/b" sorts before "a-b" component-wise but after it as a string.
    b.file(f"{names}/a/b", "a/b\n")
    b.file(f"{names}/a/b.d/c", "a/b.d/c\n")
    b.file(os.path.join(os.fsencode(names), b"\xfe-dir", b"inner\xff"), "inner\n")
    b.file(f"{names}/日本/ファイル", "日本語\n")
    b.file(f"{names}/\U0001f600-dir/x", "emoji dir\n")
    cafe = store_path("café")
    b.file(f"{cafe}/share/menu", "café\n")
    return [[names, cafe]]


def make_links_store(b: StoreBuilder) -> list[list[str]]:
    links = store_path("links")
    b.file(f"{links}/target-file", "target\n")
    b.file(f"{links}/sub/data", "data\n")
    b.symlink(f"{links}/rel", "target-file")
    b.symlink(f"{links}/sub/rel-up", "../target-file")
    b.symlink(f"{links}/abs", f"/{links}/target-file")
    b.symlink(f"{links}/dangling", "does-not-exist")
    b.symlink(f"{links}/dangling-abs", "/nonexistent/path")
    b.symlink(f"{links}/target-99", "t" * 99)
    b.symlink(f"{links}/target-100", "t" * 100)
    b.symlink(f"{links}/target-101", "t" * 101)
    b.symlink(f"{links}/target-300", "/".join(["segment-" + str(i) for i in range(30)]))
    b.symlink(f"{links}/non-ascii", "日本/ファイル-é")
    b.symlink(os.path.join(os.fsencode(links), b"non-utf8"), b"\xff\xfe-target")
    # A link to a directory is one member; pathlib's rglob does not descend into it.
    b.symlink(f"{links}/dir-link", "sub")
    b.symlink(f"{links}/self-loop", "self-loop")
    alias = store_path("links-alias")
    b.symlink(alias, store_name("links"))
    abs_alias = store_path("links-abs-alias")
    b.symlink(abs_alias, f"/{links}")
    single = store_path("single-file.txt")
    b.file(single, "a store path that is one file\n", 0o444)
    single_exe = store_path("single-script")
    b.file(single_exe, "#!/bin/sh\nexit 0\n", 0o555)
    return [[links, alias, abs_alias], [single, single_exe]]


def make_hardlinks_store(b: StoreBuilder) -> list[list[str]]:
    """Hardlinks inside one layer become full regular files; the same inode in two layers
    is a full file in each."""
    one, two, three = store_path("hl-one"), store_path("hl-two"), store_path("hl-three")
    b.file(f"{one}/orig", content("hl-orig", 1500))
    b.hardlink(f"{one}/sub/link-in-same-path", f"{one}/orig")
    b.hardlink(f"{two}/link-in-other-path", f"{one}/orig")
    b.hardlink(f"{three}/link-in-other-layer", f"{one}/orig")
    b.file(f"{one}/aa-first-by-name", content("hl-second", 700), 0o755)
    b.hardlink(f"{one}/zz-last-by-name", f"{one}/aa-first-by-name")
    b.file(f"{one}/empty", b"")
    b.hardlink(f"{one}/empty-link", f"{one}/empty")
    b.symlink(f"{one}/sym", "orig")
    b.hardlink(f"{one}/sym-hardlinked", f"{one}/sym")
    return [[one, two], [three]]


def make_modes_store(b: StoreBuilder) -> list[list[str]]:
    modes = store_path("modes")
    b.file(f"{modes}/setuid", "suid\n", 0o4755)
    b.file(f"{modes}/setgid", "sgid\n", 0o2755)
    b.file(f"{modes}/all-special", "all\n", 0o7777)
    b.file(f"{modes}/no-perms", "unreadable to others\n", 0o000)
    b.file(f"{modes}/read-only", "ro\n", 0o444)
    b.file(f"{modes}/private", "private\n", 0o600)
    b.file(f"{modes}/empty-file", b"", 0o644)
    b.dir(f"{modes}/sticky", 0o1777)
    b.file(f"{modes}/sticky/inside", "x\n")
    b.dir(f"{modes}/setgid-dir", 0o2755)
    b.dir(f"{modes}/empty-dir", 0o755)
    b.dir(f"{modes}/private-empty-dir", 0o700)
    b.dir(f"{modes}/ro-dir", 0o755)
    b.file(f"{modes}/ro-dir/f", "f\n", 0o444)
    b.fifo(f"{modes}/fifo", 0o644)
    b.fifo(f"{modes}/ro-dir/private-fifo", 0o600)
    # Set last: writing into it above needed the write bit (not an issue as root).
    os.chmod(b._abs(f"{modes}/ro-dir"), 0o555)
    return [[modes]]


def make_deep_wide_store(b: StoreBuilder) -> list[list[str]]:
    deep, wide = store_path("deep"), store_path("wide")
    b.file(f"{deep}/" + "/".join(f"d{i:02}" for i in range(40)) + "/leaf", "deep\n")
    for i in range(2000):
        b.file(f"{wide}/f{i:04}", f"{i}\n")
    return [[deep], [wide]]


def make_long_names_store(b: StoreBuilder) -> list[list[str]]:
    """Component names of 99/100/101/255 bytes, and whole member names (`/` + path, plus
    `/` for directories) of exactly 99, 100 and 101 characters."""
    long = store_path("long")
    for n in (99, 100, 101, 255):
        b.file(f"{long}/{'n' * n}", f"{n}\n")
        b.dir(f"{long}/dirs/{'d' * n}")
    b.file(f"{long}/" + "é" * 127 + "x", "255 bytes, 128 characters\n")
    b.file(f"{long}/" + "é" * 50, "100 bytes, 50 characters\n")
    member_prefix = f"/{long}/"
    for total in (99, 100, 101):
        b.file(f"{long}/" + "f" * (total - len(member_prefix)), f"file total {total}\n")
        # "g/" + name + "/": a directory member's trailing slash counts.
        b.dir(f"{long}/g/" + "g" * (total - len(member_prefix) - 3))
        b.symlink(f"{long}/s/" + "s" * (total - len(member_prefix) - 2), "x" * total)
    return [[long]]


SIZES = (0, 1, 511, 512, 513, 10240, 10241, 1024 * 1024 + 1)


def make_sizes_store(b: StoreBuilder) -> list[list[str]]:
    sizes = store_path("sizes")
    for n in SIZES:
        b.file(f"{sizes}/size-{n}", content(f"size-{n}", n))
    small = store_path("sizes-small")
    b.file(f"{small}/size-511", content("small-511", 511))
    return [[sizes], [small]]


def make_many_paths_store(b: StoreBuilder) -> list[list[str]]:
    """30 store paths in one layer, listed in an order that is not sorted: the reference
    keeps conf order and sorts only inside each path."""
    paths = []
    for i in range(30):
        p = store_path(f"pkg-{i:02}")
        b.file(f"{p}/bin/pkg-{i:02}", f"#!/bin/sh\necho {i}\n", 0o555)
        b.file(f"{p}/share/doc/README", f"package {i}\n")
        paths.append(p)
    order = [paths[(i * 7) % 30] for i in range(30)]
    extra = store_path("extra")
    b.file(f"{extra}/x", "x\n")
    # The same path again in a later layer (allowed: only duplicates within a layer break).
    return [order, [extra, paths[0]]]


def make_tiny_store(b: StoreBuilder) -> list[list[str]]:
    tiny = store_path("tiny")
    b.file(f"{tiny}/bin/tiny", "#!/bin/sh\necho tiny\n", 0o555)
    b.symlink(f"{tiny}/bin/t", "tiny")
    return [[tiny]]


def make_trailing_slash_store(b: StoreBuilder) -> list[list[str]]:
    """`nix/store/x/` in the conf: pathlib drops the slash in member names, the history
    comment keeps the string as given."""
    return [[p + "/" for p in layer] for layer in make_tiny_store(b)]


BASE_ENV = ["PATH=/base/bin", "A=1"]


def make_base_image(b: StoreBuilder, base_cmd: Sequence[str] | None, gz: bool) -> str:
    """A docker-archive built by running `base_cmd` (the reference when present) on a small
    store in `base/`; returns the conf's relative from_image path."""
    if base_cmd is None:
        raise RuntimeError("a from_image fixture needs a command to build its base image")
    base = b.root / "base"
    inner = StoreBuilder(base)
    tools = store_path("base-tools")
    inner.file(f"{tools}/bin/sh", "#!/bin/false\n", 0o555)
    inner.file(f"{tools}/etc/base-release", "base 1.0\n")
    write_customisation_layer(base / CUSTOMISATION_DIR)
    conf = base_conf(
        "base",
        [[tools]],
        config={"Env": BASE_ENV, "Cmd": ["/base/bin/sh"], "WorkingDir": "/"},
        created="2020-01-01T00:00:00Z",
        mtime="2020-01-01T00:00:00Z",
    )
    (base / CONF_NAME).write_text(json.dumps(conf, indent=2))
    result = run_tool(base_cmd, CONF_NAME, cwd=base)
    if result.returncode != 0:
        raise RuntimeError(f"building the base image failed: {result.stderr}")
    (b.root / "base.tar").write_bytes(result.stdout)
    if not gz:
        return "base.tar"
    (b.root / "base.tar.gz").write_bytes(gzip.compress(result.stdout, mtime=0))
    return "base.tar.gz"


# --- the fixture table ----------------------------------------------------------------

Build = Callable[[StoreBuilder, Sequence[str] | None], Conf]


@dataclass(frozen=True, slots=True)
class Fixture:
    id: str
    build: Build
    env: Mapping[str, str] = field(default_factory=dict)
    needs_base: bool = False


def _simple(
    store: Callable[[StoreBuilder], list[list[str]]], **overrides: Any
) -> Callable[[str], Build]:
    def for_id(fixture_id: str) -> Build:
        def build(b: StoreBuilder, base_cmd: Sequence[str] | None) -> Conf:
            return base_conf(fixture_id, store(b), **overrides)

        return build

    return for_id


def _from_image(gz: bool, config: Conf) -> Callable[[str], Build]:
    def for_id(fixture_id: str) -> Build:
        def build(b: StoreBuilder, base_cmd: Sequence[str] | None) -> Conf:
            layers = make_tiny_store(b)
            from_image = make_base_image(b, base_cmd, gz)
            return base_conf(fixture_id, layers, from_image=from_image, config=config)

        return build

    return for_id


def _empty_layers(layers: list[list[str]]) -> Callable[[str], Build]:
    def for_id(fixture_id: str) -> Build:
        def build(b: StoreBuilder, base_cmd: Sequence[str] | None) -> Conf:
            tiny = make_tiny_store(b)
            return base_conf(fixture_id, [*tiny, *layers] if layers else [])

        return build

    return for_id


_RICH_CONFIG: Conf = {
    "Cmd": ["/bin/hello", "--greeting", "héllo"],
    "Entrypoint": ["/bin/sh", "-c"],
    "Env": ["PATH=/bin", "GREETING=grüß dich"],
    "ExposedPorts": {"8080/tcp": {}},
    "Labels": {"org.example.name": "日本", "empty": ""},
    "User": "1000:1000",
    "Volumes": {"/data": {}},
    "WorkingDir": "/srv",
}

_SPECS: list[tuple[str, Callable[[str], Build], Mapping[str, str], bool]] = [
    ("basic", _simple(make_basic_store), {}, False),
    ("names-order", _simple(make_names_store), {}, False),
    ("links", _simple(make_links_store), {}, False),
    ("hardlinks", _simple(make_hardlinks_store), {}, False),
    ("modes-fifos-empty", _simple(make_modes_store), {}, False),
    ("deep-wide", _simple(make_deep_wide_store), {}, False),
    ("long-names", _simple(make_long_names_store), {}, False),
    ("sizes", _simple(make_sizes_store), {}, False),
    ("many-paths", _simple(make_many_paths_store), {}, False),
    ("store-path-trailing-slash", _simple(make_trailing_slash_store), {}, False),
    ("no-store-layers", _empty_layers([]), {}, False),
    ("empty-layer-list", _empty_layers([[]]), {}, False),
    ("ids-as-strings", _simple(make_tiny_store, uid="0", gid="1000"), {}, False),
    ("ids-as-numbers", _simple(make_tiny_store, uid=1000, gid=100), {}, False),
    # 8**7 - 1 is the largest id the 7-digit octal field holds; 8**7 needs a PAX record.
    ("ids-octal-edge", _simple(make_tiny_store, uid=2**21 - 1, gid=2**21), {}, False),
    ("ids-huge", _simple(make_tiny_store, uid=4000000000, gid="4000000001"), {}, False),
    (
        "names-long-and-non-ascii",
        _simple(make_tiny_store, uname="u" * 33, gname="grüppe-日本", uid=7, gid=8),
        {},
        False,
    ),
    ("names-32-chars-and-empty", _simple(make_tiny_store, uname="u" * 32, gname=""), {}, False),
    ("mtime-1960-negative", _simple(make_tiny_store, mtime="1960-03-01T00:00:00Z"), {}, False),
    # -315619199.25 s: int() truncates towards zero (-315619199), floor would not.
    (
        "mtime-negative-fractional",
        _simple(make_tiny_store, mtime="1960-01-01T00:00:00.750000+00:00"),
        {},
        False,
    ),
    (
        "mtime-fractional",
        _simple(make_tiny_store, mtime="2024-01-01T00:00:00.999999Z"),
        {},
        False,
    ),
    # 32503680000 > 8**11: mtime no longer fits the 11-digit octal field.
    ("mtime-year-3000", _simple(make_tiny_store, mtime="3000-01-01T00:00:00Z"), {}, False),
    ("mtime-offset", _simple(make_tiny_store, mtime="2024-01-01T00:00:00+02:00"), {}, False),
    ("mtime-z", _simple(make_tiny_store, mtime="2024-01-01T00:00:00Z"), {}, False),
    # Naive: read in local time; the fixture pins an odd TZ (UTC+05:30) to expose it.
    (
        "mtime-naive-local-time",
        _simple(make_tiny_store, mtime="2024-01-01T00:00:00", created="2024-01-01T00:00:00"),
        {"TZ": "IST-5:30"},
        False,
    ),
    (
        "created-fractional-offset",
        _simple(make_tiny_store, created="2001-02-03T04:05:06.789+09:30", mtime=MTIME),
        {},
        False,
    ),
    (
        "config-rich-arch-os",
        _simple(make_tiny_store, config=_RICH_CONFIG, architecture="arm64", os="windows"),
        {},
        False,
    ),
    ("config-empty", _simple(make_tiny_store, config={}), {}, False),
    ("from-image", _from_image(False, {"Env": ["A=2", "B=3"], "Cmd": ["/bin/tiny"]}), {}, True),
    ("from-image-gz", _from_image(True, {"Env": ["A=2", "B=3"]}), {}, True),
    ("from-image-no-env", _from_image(False, {"Cmd": ["/bin/tiny"]}), {}, True),
]

FIXTURES: dict[str, Fixture] = {
    fid: Fixture(fid, make(fid), env, needs_base) for fid, make, env, needs_base in _SPECS
}
FIXTURE_IDS = list(FIXTURES)


@dataclass(frozen=True, slots=True)
class BuiltFixture:
    id: str
    root: Path
    env: Mapping[str, str]

    @property
    def conf(self) -> Path:
        return self.root / CONF_NAME


def build_fixture(fixture_id: str, parent: Path, base_cmd: Sequence[str] | None) -> BuiltFixture:
    """Build fixture `fixture_id` under `parent/<id>` (replacing it); `base_cmd` builds
    the from_image base archive (needed only by from-image fixtures)."""
    fixture = FIXTURES[fixture_id]
    root = parent / fixture_id
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    builder = StoreBuilder(root)
    builder.dir("nix", 0o755)
    builder.dir(STORE_DIR, 0o755)
    write_customisation_layer(root / CUSTOMISATION_DIR)
    conf = fixture.build(builder, base_cmd)
    (root / CONF_NAME).write_text(json.dumps(conf, indent=2, ensure_ascii=False) + "\n")
    return BuiltFixture(fixture_id, root, dict(fixture.env))


# Derived outputs: checked by the output goldens, not part of the input tree's digest.
_DERIVED = {b"base.tar", b"base.tar.gz"}


def tree_digest(root: Path) -> str:
    """sha256 over everything the tools can observe in a fixture tree: names (bytes),
    types, modes, sizes, contents, link targets, hardlink groups, customisation owner."""
    h = hashlib.sha256()
    first_name_of_inode: dict[tuple[int, int], bytes] = {}
    root_b = os.fsencode(root)
    for dirpath, dirnames, filenames in os.walk(root_b):
        dirnames.sort()
        if dirpath == root_b:
            dirnames[:] = [d for d in dirnames if d not in _DERIVED]
        for name in sorted([*dirnames, *filenames]):
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, root_b)
            if rel in _DERIVED:
                continue
            st = os.lstat(path)
            fields = [rel, b"%o" % st.st_mode]
            if stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode):
                key = (st.st_dev, st.st_ino)
                fields.append(first_name_of_inode.setdefault(key, rel))
            if stat.S_ISREG(st.st_mode):
                with open(path, "rb") as f:
                    fields.append(hashlib.sha256(f.read()).hexdigest().encode())
                if rel.endswith(b"layer.tar"):
                    fields.append(b"%d:%d" % (st.st_uid, st.st_gid))
            elif stat.S_ISLNK(st.st_mode):
                fields.append(os.readlink(path))
            h.update(b"\0".join(fields) + b"\n")
    return h.hexdigest()


def load_golden() -> dict[str, dict[str, str]]:
    data: dict[str, dict[str, str]] = json.loads(GOLDEN_PATH.read_text())["fixtures"]
    return data


def record_golden(reference: Path) -> dict[str, dict[str, str]]:
    """Run the reference on every fixture, built twice in two different directories;
    refuse to record unless tree and output agree across the two builds."""
    cmd = [sys.executable, str(reference)]
    fixtures: dict[str, dict[str, str]] = {}
    with tempfile.TemporaryDirectory() as one, tempfile.TemporaryDirectory() as two:
        for fid in FIXTURE_IDS:
            results = []
            for parent in (Path(one) / "a", Path(two) / "deeper" / "b"):
                built = build_fixture(fid, parent, cmd)
                out = run_tool(cmd, CONF_NAME, cwd=built.root, env=built.env)
                if out.returncode != 0:
                    raise RuntimeError(f"{fid}: reference failed:\n{out.stderr}")
                results.append((tree_digest(built.root), hashlib.sha256(out.stdout).hexdigest()))
                shutil.rmtree(built.root)
            if results[0] != results[1]:
                raise RuntimeError(f"{fid}: not deterministic across directories: {results}")
            fixtures[fid] = {"tree": results[0][0], "output": results[0][1]}
    return fixtures


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.storegen", description=__doc__)
    parser.add_argument("--record-golden", action="store_true", help="rewrite tests/golden.json")
    parser.add_argument("--reference", type=Path, default=reference_path())
    parser.add_argument("--build", metavar="DIR", type=Path, help="build every fixture in DIR")
    args = parser.parse_args(argv)
    if args.record_golden:
        fixtures = record_golden(args.reference)
        doc = {
            "comment": "sha256 of each fixture tree and of the reference's output on it; "
            "recorded by `python -m tests.storegen --record-golden` with CPython "
            f"{sys.version_info.major}.{sys.version_info.minor}",
            "fixtures": fixtures,
        }
        GOLDEN_PATH.write_text(json.dumps(doc, indent=2) + "\n")
        sys.stderr.write(f"recorded {len(fixtures)} fixtures in {GOLDEN_PATH}\n")
    elif args.build:
        for fid in FIXTURE_IDS:
            built = build_fixture(fid, args.build, [sys.executable, str(args.reference)])
            sys.stderr.write(f"{built.conf}\n")
    else:
        parser.print_usage(sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
