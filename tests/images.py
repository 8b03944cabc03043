"""Helpers for the format tests: build a fixture in a format, read images back with tarfile.

Rule: these read images with the standard library only (tarfile, gzip, json, hashlib) and
the zstd command for zstd layers, an oracle independent of streamimage's own code.
"""

from __future__ import annotations

import gzip
import io
import json
import subprocess
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests import storegen
from tests.conftest import FixtureStore, require_command

GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


def tar_members(data: bytes) -> dict[str, bytes]:
    """Regular file members by name, in archive order (directories left out)."""
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        members = {}
        for member in tar.getmembers():
            if member.isdir():
                continue
            source = tar.extractfile(member)
            assert source is not None, member.name
            members[member.name] = source.read()
    return members


def tar_names(data: bytes) -> list[str]:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        return tar.getnames()


def uncompressed(blob: bytes) -> bytes:
    """A layer blob decompressed: gzip (the stdlib), zstd (the zstd command), or as is."""
    if blob.startswith(GZIP_MAGIC):
        return gzip.decompress(blob)
    if blob.startswith(ZSTD_MAGIC):
        zstd = require_command("zstd")
        proc = subprocess.run([zstd, "-d", "-c"], input=blob, capture_output=True, check=False)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout
    return blob


def blob_name(digest: str) -> str:
    algorithm, _, hex_ = digest.partition(":")
    return f"blobs/{algorithm}/{hex_}"


@dataclass(frozen=True, slots=True)
class OciImage:
    """An OCI image layout read back: every blob, the index, manifest and config."""

    files: dict[str, bytes]
    index: dict[str, Any]
    manifest: dict[str, Any]
    config: dict[str, Any]

    @classmethod
    def of(cls, files: dict[str, bytes]) -> OciImage:
        index = json.loads(files["index.json"])
        manifest = json.loads(files[blob_name(index["manifests"][0]["digest"])])
        config = json.loads(files[blob_name(manifest["config"]["digest"])])
        return cls(files, index, manifest, config)

    def layer_blobs(self) -> list[bytes]:
        return [self.files[blob_name(layer["digest"])] for layer in self.manifest["layers"]]


def read_dir(root: Path) -> dict[str, bytes]:
    return {
        str(path.relative_to(root)): path.read_bytes() for path in root.rglob("*") if path.is_file()
    }


def build(
    fixture_store: FixtureStore, tool_cmd: list[str], fixture_id: str, args: Sequence[str] = ()
) -> bytes:
    """The tool's stdout for a fixture with extra arguments (cached per arguments)."""
    result = fixture_store.run(tool_cmd, fixture_id, args)
    assert result.returncode == 0, result.stderr
    return result.stdout


def oci_only(archive: bytes) -> bytes:
    """The archive without manifest.json: an OCI image layout archive and nothing else."""
    out = io.BytesIO()
    with (
        tarfile.open(fileobj=io.BytesIO(archive), mode="r:") as source,
        tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as target,
    ):
        for member in source.getmembers():
            if member.name != "manifest.json":
                target.addfile(member, source.extractfile(member) if member.isfile() else None)
    return out.getvalue()


def conf_with_base(fixture_root: Path, from_image: str | None, name: str) -> str:
    """A copy of the fixture's conf whose from_image is ``from_image``; returns its name."""
    conf = json.loads((fixture_root / storegen.CONF_NAME).read_text())
    conf["from_image"] = from_image
    (fixture_root / name).write_text(json.dumps(conf, indent=2))
    return name


def private_fixture(
    fixture_store: FixtureStore, tool_cmd: list[str], fixture_id: str, parent: Path
) -> storegen.BuiltFixture:
    """A fixture of our own under ``parent``: these tests add files (confs, base archives)
    beside its conf, and the shared fixtures' trees must stay as their goldens know them."""
    return storegen.build_fixture(fixture_id, parent, fixture_store.reference or tool_cmd)
