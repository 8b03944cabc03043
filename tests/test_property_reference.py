"""Property: hypothesis-generated store trees give the reference's bytes, exactly.

Names (ASCII, non-ASCII, not UTF-8, long), kinds (file, directory, symlink, FIFO, hardlink),
modes and sizes around the block boundaries, spread over one to three layers; the reference
and streamimage run on the same conf and their outputs must be equal byte for byte.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests import storegen

name_bytes = st.one_of(
    st.binary(min_size=1, max_size=10).filter(lambda b: b"\0" not in b and b"/" not in b),
    st.sampled_from(["a", "Z", "_", "é", "日本", "\ue000", "😀", "n" * 99, "x" * 120]).map(
        str.encode
    ),
).filter(lambda b: b not in (b".", b".."))
modes = st.sampled_from([0o644, 0o755, 0o444, 0o4755, 0o2755, 0o1777, 0o000, 0o600])
sizes = st.sampled_from([0, 1, 511, 512, 513, 10240, 70000])


@st.composite
def nodes(draw: st.DrawFn, depth: int = 0) -> tuple[Any, ...]:
    kinds = ["file", "file", "symlink", "fifo", "hardlink"] + (["dir"] if depth < 3 else [])
    kind = draw(st.sampled_from(kinds))
    if kind == "dir":
        children = draw(st.dictionaries(name_bytes, nodes(depth + 1), max_size=4))
        return ("dir", draw(modes | st.just(0o755)), children)
    if kind == "symlink":
        return ("symlink", draw(st.sampled_from([b"a", b"../x", b"/nix/store/y", b"\xff" * 3])))
    return (kind, draw(modes), draw(sizes))


def build(path: bytes, node: tuple[Any, ...], files: list[bytes]) -> None:
    kind = node[0]
    if kind == "dir":
        children: dict[bytes, tuple[Any, ...]] = node[2]
        os.mkdir(path)
        for name, child in children.items():
            build(path + b"/" + name, child, files)
        os.chmod(path, node[1] | 0o700)  # keep it walkable
    elif kind == "symlink":
        os.symlink(node[1], path)
    elif kind == "fifo":
        os.mkfifo(path)
        os.chmod(path, node[1])
    elif kind == "hardlink" and files:
        os.link(files[-1], path)
    else:
        mode: int = node[1]
        size: int = node[2]
        with open(path, "wb") as file:
            file.write((path[-7:] * (size // 7 + 1))[:size])
        os.chmod(path, mode)
        files.append(path)


@pytest.mark.slow
@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    layers=st.lists(
        st.dictionaries(name_bytes, nodes(), min_size=1, max_size=3), min_size=1, max_size=3
    ),
    hash_in=st.sampled_from(["thread", "process"]),
)
def test_random_trees_give_the_reference_bytes(
    layers: list[dict[bytes, tuple[Any, ...]]], hash_in: str
) -> None:
    reference = storegen.reference_cmd()
    if reference is None:
        pytest.skip(f"reference absent: {storegen.reference_path()}")
    with tempfile.TemporaryDirectory(prefix="prop-") as directory:
        root = Path(directory)
        store = root / "nix" / "store"
        store.mkdir(parents=True)
        files: list[bytes] = []
        store_layers = []
        for number, tree in enumerate(layers):
            paths = []
            for index, node in enumerate(tree.values()):
                store_path = f"nix/store/{number}{index}aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-p"
                build(os.fsencode(root / store_path), node, files)
                paths.append(store_path)
            store_layers.append(paths)
        storegen.write_customisation_layer(root / "customisation")
        conf = storegen.base_conf("prop", store_layers)
        conf.update(store_dir="nix/store", customisation_layer="customisation")
        (root / "conf.json").write_text(json.dumps(conf))

        expected = storegen.run_tool(reference, "conf.json", cwd=root)
        tool = storegen.tool_cmd()
        args = [] if storegen.tool_is_reference(tool) else ["--hash-in", hash_in]
        actual = storegen.run_tool(tool, "conf.json", cwd=root, args=args)
    assert expected.returncode == 0, expected.stderr
    assert actual.returncode == 0, actual.stderr
    assert actual.stdout == expected.stdout
