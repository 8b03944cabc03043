"""Bad input: each failure is one line naming the culprit, the right exit status (2 for a
bad command line or conf, 1 for failures while running), no traceback, no image.

Each case runs the real command in a subprocess on a small fixture store it breaks.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import socket
import subprocess
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import storegen
from tests.failures import (
    Store,
    assert_run_failed,
    error_lines,
    make_store,
    member_names,
    nobody_command,
    run,
    tool_env,
)

USAGE, FAILURE = 2, 1


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return make_store(tmp_path)


@pytest.fixture
def public_store() -> Iterator[Store]:
    """A store nobody can reach (pytest's tmp dirs are 0700)."""
    parent = Path(tempfile.mkdtemp(prefix="streamimage-nobody-"))
    try:
        os.chmod(parent, 0o755)
        yield make_store(parent)
    finally:
        shutil.rmtree(parent)


def run_as_nobody(store: Store, *args: str) -> subprocess.CompletedProcess[bytes]:
    if os.geteuid() != 0:
        pytest.skip("needs root to switch to nobody (as non-root, run the test as is)")
    return subprocess.run(
        nobody_command([storegen.CONF_NAME, "--hash-in", "thread", *args]),
        cwd=store.root,
        env=tool_env(),
        capture_output=True,
        timeout=60,
        check=False,
    )


# --- the conf ------------------------------------------------------------------------


def test_conf_file_missing_is_a_usage_error(store: Store) -> None:
    assert_run_failed(run(store, conf="no-such.json"), USAGE, "no-such.json", "does not exist")


def test_conf_that_is_a_directory_is_a_usage_error(store: Store) -> None:
    assert_run_failed(run(store, conf="nix"), USAGE, "nix", "cannot read conf")


def test_conf_unreadable_by_the_user_is_a_usage_error(public_store: Store) -> None:
    public_store.write_conf()
    os.chmod(public_store.root / storegen.CONF_NAME, 0o000)
    result = run_as_nobody(public_store)
    assert_run_failed(result, USAGE, storegen.CONF_NAME, "Permission denied")


def test_conf_not_json_is_a_usage_error(store: Store) -> None:
    (store.root / "bad.json").write_text('{"architecture": ')
    assert_run_failed(run(store, conf="bad.json"), USAGE, "bad.json", "not valid JSON")


def test_conf_not_utf8_is_a_usage_error(store: Store) -> None:
    (store.root / "bad.json").write_bytes(b'{"architecture": "\xff"}')
    assert_run_failed(run(store, conf="bad.json"), USAGE, "bad.json", "not valid JSON")


def test_conf_nested_too_deeply_is_a_usage_error(store: Store) -> None:
    (store.root / "deep.json").write_text("[" * 5000 + "]" * 5000)  # Python's JSON recurses
    assert_run_failed(run(store, conf="deep.json"), USAGE, "deep.json", "nested too deeply")


def test_conf_with_a_number_past_python_s_limit_is_a_usage_error(store: Store) -> None:
    (store.root / "big.json").write_text('{"uid": ' + "9" * 5000 + "}")
    assert_run_failed(run(store, conf="big.json"), USAGE, "big.json", "not valid JSON")


def test_conf_that_never_ends_is_a_usage_error(store: Store) -> None:
    assert_run_failed(run(store, conf="/dev/zero"), USAGE, "/dev/zero", "larger than")


def test_conf_id_of_thousands_of_digits_is_a_usage_error(store: Store) -> None:
    store.write_conf(store.with_(uid="9" * 5000))
    assert_run_failed(run(store), USAGE, "uid has 5000 digits")


def test_conf_from_image_empty_is_a_usage_error(store: Store) -> None:
    store.write_conf(store.with_(from_image=""))
    assert_run_failed(run(store), USAGE, "from_image", "empty string")


def test_from_image_that_is_a_device_is_refused_not_read_for_ever(store: Store) -> None:
    store.write_conf(store.with_(from_image="/dev/zero"))
    assert_run_failed(run(store, timeout=20), USAGE, "/dev/zero", "not a regular file")


def test_conf_not_an_object_is_a_usage_error(store: Store) -> None:
    store.write_conf([store.conf])
    assert_run_failed(run(store), USAGE, storegen.CONF_NAME, "must be a JSON object")


@pytest.mark.parametrize("key", ["store_layers", "customisation_layer", "mtime", "uid"])
def test_conf_key_missing_names_the_key(store: Store, key: str) -> None:
    store.write_conf(store.without(key))
    assert_run_failed(run(store), USAGE, storegen.CONF_NAME, f"missing key '{key}'")


@pytest.mark.parametrize(
    ("key", "value", "said"),
    [
        ("store_layers", {"a": 1}, "store_layers must be an array"),
        ("store_layers", [["nix/store/x", 3]], "store_layers[0] must be an array of strings"),
        ("architecture", 64, "architecture must be a string"),
        ("config", [], "config must be an object"),
        ("from_image", 1, "from_image must be a path or null"),
        ("created", 2024, "created must be a string"),
    ],
)
def test_conf_value_of_the_wrong_type_names_the_key(
    store: Store, key: str, value: Any, said: str
) -> None:
    store.write_conf(store.with_(**{key: value}))
    assert_run_failed(run(store), USAGE, storegen.CONF_NAME, said)


@pytest.mark.parametrize("key", ["created", "mtime"])
def test_conf_time_that_does_not_parse_names_the_key(store: Store, key: str) -> None:
    store.write_conf(store.with_(**{key: "yesterday at noon"}))
    line = assert_run_failed(run(store), USAGE, storegen.CONF_NAME, key, "yesterday at noon")
    assert "ISO 8601" in line


@pytest.mark.parametrize(("key", "value"), [("uid", "root"), ("gid", "-1"), ("uid", 1.5)])
def test_conf_id_that_is_not_a_number_names_the_key(store: Store, key: str, value: Any) -> None:
    store.write_conf(store.with_(**{key: value}))
    assert_run_failed(run(store), USAGE, storegen.CONF_NAME, key, "non-negative number")


@pytest.mark.parametrize("value", ["a b:1", "Hello:1", "hello:", "hello:1:2", "hello:a/b"])
def test_repo_tag_that_is_not_an_image_reference_is_a_usage_error(store: Store, value: str) -> None:
    store.write_conf(store.with_(repo_tag=value))
    line = assert_run_failed(run(store), USAGE, storegen.CONF_NAME, f"repo_tag {value!r}")
    assert "not a valid image reference" in line
    store.write_conf()
    line = assert_run_failed(run(store, "-t", value), USAGE, f"-t {value!r}")
    assert storegen.CONF_NAME not in line, "the value came from -t, not the conf"


def test_bad_jobs_option_is_a_usage_error(store: Store) -> None:
    assert_run_failed(run(store, "--jobs", "0"), USAGE, "--jobs")


# --- store paths ---------------------------------------------------------------------


def test_store_path_outside_store_dir_is_a_usage_error(store: Store) -> None:
    store.write_conf(store.with_(store_layers=[["customisation"]]))
    assert_run_failed(run(store), USAGE, "'customisation'", "not under store_dir")


def test_store_path_through_a_symlink_leading_outside_is_a_usage_error(store: Store) -> None:
    # STORE/evil -> /etc, then STORE/evil/hostname: spelled under the store, and not in it
    store_dir = store.root / store.conf["store_dir"]
    (store.root / "outside").mkdir()
    (store.root / "outside" / "secret").write_text("not from the store")
    (store_dir / "evil").symlink_to(store.root / "outside")
    path = f"{store.conf['store_dir']}/evil/secret"
    store.write_conf(store.with_(store_layers=[[path]]))
    assert_run_failed(run(store), USAGE, repr(path), "not under store_dir", "symlink")


def test_store_paths_that_are_symlinks_and_a_store_dir_behind_one_stay_legal(
    store: Store,
) -> None:
    store_dir = store.conf["store_dir"]
    first = store.layers[0][0]
    (store.root / store_dir / "link-to-first").symlink_to(Path(first).name)
    alias = store.root / "alias"  # as /nix -> /data/nix
    alias.symlink_to(store.root / Path(store_dir).parent)
    aliased = f"alias/{Path(store_dir).name}"
    layers = [[f"{aliased}/{Path(p).name}" for p in layer] for layer in store.layers]
    layers.append([f"{aliased}/link-to-first"])  # a store path that is itself a symlink
    store.write_conf(store.with_(store_dir=aliased, store_layers=layers))
    result = run(store)
    assert result.returncode == 0, result.stderr


def test_store_path_missing_names_it(store: Store) -> None:
    missing = storegen.store_path("never-built")
    store.write_conf(store.with_(store_layers=[*store.layers, [missing]]))
    assert_run_failed(run(store), FAILURE, missing, "does not exist")


def test_store_path_unreadable_names_the_directory(public_store: Store) -> None:
    hello = next(p for p in public_store.layers[1] if p.endswith("hello-2.12"))
    public_store.write_conf()
    locked = public_store.root / hello / "bin"
    os.chmod(locked, 0o000)
    try:
        result = run_as_nobody(public_store)
    finally:
        os.chmod(locked, 0o755)
    assert_run_failed(result, FAILURE, f"{hello}/bin", "Permission denied")


def test_socket_in_a_store_path_names_it(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    # The reference dies with an AttributeError on a socket.
    path = f"{store.layers[0][0]}/lib/control.sock"
    monkeypatch.chdir(store.root)  # a relative name: an AF_UNIX path holds 108 bytes at most
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(path)
        store.write_conf()
        assert_run_failed(run(store), FAILURE, path, "is a socket")


def test_same_path_twice_in_a_layer_is_archived_once_with_a_note(store: Store) -> None:
    lib = store.layers[0][0]
    store.write_conf(store.with_(store_layers=[[lib, lib + "/"], *store.layers[1:]]))
    result = run(store)
    stderr = result.stderr.decode()
    assert result.returncode == 0, stderr
    assert "streamimage: note:" in stderr
    assert "listed twice" in stderr
    assert lib in stderr
    with tarfile.open(fileobj=io.BytesIO(result.stdout)) as image:
        manifest = json.load(image.extractfile("manifest.json"))  # type: ignore[arg-type]
        layer_file = image.extractfile(manifest[0]["Layers"][0])
        assert layer_file is not None
        with tarfile.open(fileobj=io.BytesIO(layer_file.read())) as layer:
            names = layer.getnames()
    assert len(names) == len(set(names)), names
    assert any(name.endswith("libgreet.so.1") for name in names)


# --- the customisation layer ---------------------------------------------------------


@pytest.mark.parametrize("name", ["layer.tar", "checksum"])
def test_customisation_file_missing_names_it(store: Store, name: str) -> None:
    (store.root / "customisation" / name).unlink()
    store.write_conf()
    assert_run_failed(run(store), FAILURE, f"customisation/{name}", "missing")


def test_customisation_checksum_malformed_names_it(store: Store) -> None:
    (store.root / "customisation" / "checksum").write_text("sha256:xyz\n")
    store.write_conf()
    assert_run_failed(run(store), FAILURE, "customisation/checksum", "not a sha256")


def test_customisation_checksum_not_matching_fails(store: Store) -> None:
    # The reference writes the wrong checksum into the image and exits 0.
    (store.root / "customisation" / "checksum").write_text("0" * 64 + "\n")
    store.write_conf()
    assert_run_failed(run(store), FAILURE, "customisation/checksum", "does not match")


@pytest.mark.parametrize(
    ("content", "said"),
    [
        (b"", "empty file"),
        (b"this is not a tar archive\n" * 100, "is not a tar archive"),
        (None, "unexpected end of data"),  # a tar cut inside its member
    ],
    ids=["empty", "text", "cut"],
)
def test_customisation_layer_that_is_not_a_tar_is_refused_though_its_checksum_matches(
    store: Store, content: bytes | None, said: str
) -> None:
    layer = store.root / "customisation" / "layer.tar"
    if content is None:
        content = small_tar("etc/motd", b"m" * 3000)[:2000]  # its header, part of its data
    layer.write_bytes(content)
    (store.root / "customisation" / "checksum").write_text(hashlib.sha256(content).hexdigest())
    store.write_conf()
    assert_run_failed(run(store), FAILURE, "customisation/layer.tar", said)


# --- from_image ----------------------------------------------------------------------


def write_tar(path: Path, members: dict[str, bytes]) -> None:
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def base_members(layers: list[str], diff_ids: int, present: list[str]) -> dict[str, bytes]:
    config = {
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": ["sha256:" + "1" * 64] * diff_ids},
    }
    manifest = [{"Config": "config.json", "Layers": layers, "RepoTags": ["base:1"]}]
    members = {
        "config.json": json.dumps(config).encode(),
        "manifest.json": json.dumps(manifest).encode(),
    }
    members |= dict.fromkeys(present, b"")
    return members


@pytest.mark.parametrize(
    ("members", "said"),
    [
        (None, "does not exist"),
        ({"__garbage__": b""}, "is not a tar archive"),
        ({"layer.tar": b""}, "has no manifest.json"),
        (base_members(["a/layer.tar", "b/layer.tar"], 2, ["a/layer.tar"]), "b/layer.tar"),
        (base_members(["a/layer.tar"], 2, ["a/layer.tar"]), "1 layers but config.json has 2"),
    ],
    ids=["missing", "not-a-tar", "no-manifest", "layer-absent", "count-mismatch"],
)
def test_from_image_unusable_names_the_archive(
    store: Store, members: dict[str, bytes] | None, said: str
) -> None:
    base = store.root / "base.tar"
    if members == {"__garbage__": b""}:
        base.write_bytes(b"this is not a tar archive\n" * 100)
    elif members is not None:
        write_tar(base, members)
    store.write_conf(store.with_(from_image="base.tar"))
    assert_run_failed(run(store), USAGE, "base.tar", said)


def base_archive(
    path: Path,
    layers: list[bytes],
    *,
    diff_ids: list[str] | None = None,
    config: dict[str, Any] | None = None,
    names: list[Any] | None = None,
) -> list[str]:
    """A docker-archive of ``layers`` (each a tar) at ``path``; returns their member names."""
    names = names or [f"{i}/layer.tar" for i in range(len(layers))]
    if diff_ids is None:
        diff_ids = [f"sha256:{hashlib.sha256(layer).hexdigest()}" for layer in layers]
    image = {"config": config or {}, "rootfs": {"type": "layers", "diff_ids": diff_ids}}
    manifest = [{"Config": "config.json", "Layers": names, "RepoTags": ["base:1"]}]
    members = {"config.json": json.dumps(image).encode()}
    members |= {
        name: layer for name, layer in zip(names, layers, strict=True) if isinstance(name, str)
    }
    write_tar(path, members | {"manifest.json": json.dumps(manifest).encode()})
    return names


def small_tar(name: str, data: bytes) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


LAYER_A = small_tar("etc/a", b"a" * 3000)
LAYER_B = small_tar("etc/b", b"b" * 5000)


@pytest.mark.parametrize(
    ("case", "said"),
    [
        ("layers-number", "manifest.json's Layers holds 7, not a member name"),
        ("layers-null", "manifest.json's Layers holds null, not a member name"),
        ("env-numbers", "config.json's config.Env is not a list of strings"),
        ("cut-in-a-member", "from_image is cut short or damaged"),
        ("cut-in-a-gzip-member", "from_image is cut short or damaged"),
        ("dot-dot", "member '../escape': an absolute name or one with '..'"),
        ("absolute", "member '/etc/passwd': an absolute name or one with '..'"),
        ("twice", "member '0/layer.tar' is in the archive twice"),
        ("manifest-layer", "layer manifest.json: the name of a member the image archive writes"),
    ],
)
def test_from_image_malformed_is_a_usage_error(store: Store, case: str, said: str) -> None:
    base = store.root / "base.tar"
    if case in ("layers-number", "layers-null"):
        base_archive(
            base, [LAYER_A, b""], names=["0/layer.tar", 7 if case == "layers-number" else None]
        )
    elif case == "env-numbers":
        base_archive(base, [LAYER_A], config={"Env": [1, 2]})
    elif case.startswith("cut"):
        base_archive(base, [LAYER_A, LAYER_B])
        whole = base.read_bytes()
        cut = whole[: whole.index(b"b" * 5000) + 100]  # inside the second layer's member
        base.write_bytes(gzip.compress(cut) if "gzip" in case else cut)
    elif case in ("dot-dot", "absolute", "twice"):
        base_archive(base, [LAYER_A])
        extra = {"dot-dot": "../escape", "absolute": "/etc/passwd", "twice": "0/layer.tar"}[case]
        with tarfile.open(base, "a") as tar:
            info = tarfile.TarInfo(extra)
            info.size = len(LAYER_B)
            tar.addfile(info, io.BytesIO(LAYER_B))
    else:
        base_archive(base, [LAYER_A], names=["manifest.json"])
    store.write_conf(store.with_(from_image="base.tar"))
    assert_run_failed(run(store), USAGE, "base.tar", said)


@pytest.mark.parametrize("fmt", ["docker", "oci", "oci-dir"])
@pytest.mark.parametrize("compressed", [False, True], ids=["plain", "gzip"])
def test_from_image_layer_not_its_diff_id_fails_and_leaves_no_image(
    store: Store, fmt: str, compressed: bool
) -> None:
    base = store.root / "base.tar"
    wrong = f"sha256:{hashlib.sha256(LAYER_A).hexdigest()}"
    base_archive(base, [LAYER_A, LAYER_B], diff_ids=[wrong, wrong])
    if compressed:
        base.write_bytes(gzip.compress(base.read_bytes()))
    store.write_conf(store.with_(from_image="base.tar"))
    out = store.root / "out"
    out.mkdir()
    args = ["--format", fmt, *(["-o", "out/image"] if fmt != "docker" else [])]
    result = run(store, *args)
    line = assert_run_failed(result, USAGE, "base.tar: layer 1/layer.tar:", "not the diff_id")
    assert f"sha256:{hashlib.sha256(LAYER_B).hexdigest()}" in line
    assert list(out.iterdir()) == []  # no image, no temporary
    if fmt == "docker":  # streamed: the first base layer went out, then nothing loadable
        assert member_names(result.stdout)[:1] == ["0/layer.tar"]


def test_from_image_layer_named_as_a_later_layer_is_refused(store: Store) -> None:
    """A base layer named as the reference names a store layer, ``<diff_id>/layer.tar``,
    but holding another tar: two layers in one member."""
    store.write_conf()
    with tarfile.open(fileobj=io.BytesIO(run(store).stdout)) as image:
        manifest = image.extractfile("manifest.json")
        assert manifest is not None
        first = json.load(manifest)[0]["Layers"][0]  # the first store layer's member
    base = store.root / "base.tar"
    base_archive(base, [LAYER_A], names=[first])
    store.write_conf(store.with_(from_image="base.tar"))
    assert_run_failed(run(store), USAGE, first, "a base layer's member name", "another diff_id")


# --- -o FILE -------------------------------------------------------------------------


def test_failed_build_leaves_no_output_file_nor_temporary(store: Store) -> None:
    (store.root / "customisation" / "checksum").write_text("0" * 64 + "\n")
    store.write_conf()
    out = store.root / "out"
    out.mkdir()
    assert_run_failed(run(store, "-o", "out/image.tar"), FAILURE, "does not match")
    assert list(out.iterdir()) == []


def test_failed_build_leaves_an_existing_output_file_untouched(store: Store) -> None:
    missing = storegen.store_path("never-built")
    store.write_conf(store.with_(store_layers=[*store.layers, [missing]]))
    out = store.root / "out"
    out.mkdir()
    (out / "image.tar").write_bytes(b"the previous image")
    assert_run_failed(run(store, "-o", "out/image.tar"), FAILURE, missing)
    assert [p.name for p in out.iterdir()] == ["image.tar"]
    assert (out / "image.tar").read_bytes() == b"the previous image"


def test_output_file_is_the_image_written_on_success(store: Store) -> None:
    store.write_conf()
    piped = run(store)
    assert piped.returncode == 0
    result = run(store, "-o", "image.tar")
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout == b""
    assert (store.root / "image.tar").read_bytes() == piped.stdout
    assert not [p for p in store.root.iterdir() if p.name.endswith(".part")]


def test_debug_shows_the_traceback_as_well(store: Store) -> None:
    result = run(store, "--debug", conf="no-such.json")
    stderr = result.stderr.decode()
    assert result.returncode == USAGE
    assert "Traceback" in stderr
    assert len(error_lines(stderr)) == 1
    assert member_names(result.stdout) == []
