"""Shared fixtures: the reference script, the tool under test, built fixture stores.

The tool under test is `python -m streamimage` unless env STREAMIMAGE_CMD says otherwise
(e.g. the reference itself, to check the tests). The reference is env
STREAMIMAGE_REFERENCE, default <repo>/../shared/reference/stream_layered_image.py.
Rule: with env CI=true a missing real client (skopeo, umoci, podman) fails, never skips.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import pytest

from tests import storegen

# The digest cache stays off unless a test asks for it (test_cache.py): a hit would skip
# the hash passes other tests are about. Tool processes inherit this.
os.environ["STREAMIMAGE_NO_CACHE"] = "1"


@pytest.fixture
def anyio_backend() -> str:
    """asyncio only: the product runs on asyncio (anyio.run's default), and an old trio
    that happens to be installed can't run abandon_on_cancel."""
    return "asyncio"


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def require_command(name: str) -> str:
    """The path of command `name`; skip without it, or fail when CI=true."""
    found = shutil.which(name)
    if found is None:
        message = f"{name} is not installed (install it, e.g. via .ci/run)"
        if in_ci():
            pytest.fail(f"CI=true: {message}")
        pytest.skip(message)
    return found


class FixtureStore:
    """Builds fixture stores once per session and caches each tool's output on them."""

    def __init__(self, parent: Path, reference: list[str] | None, tool: list[str]) -> None:
        self.parent = parent
        self.reference = reference
        self.tool = tool
        self._built: dict[str, storegen.BuiltFixture] = {}
        self._outputs: dict[tuple[str, tuple[str, ...]], storegen.ToolResult] = {}

    def get(self, fixture_id: str) -> storegen.BuiltFixture:
        if fixture_id not in self._built:
            # A from_image base is built by the reference when present, else by the tool
            # under test (then a wrong base shows up as a golden mismatch).
            base_cmd = self.reference or self.tool
            self._built[fixture_id] = storegen.build_fixture(fixture_id, self.parent, base_cmd)
        return self._built[fixture_id]

    def run(
        self, cmd: Sequence[str], fixture_id: str, args: Sequence[str] = ()
    ) -> storegen.ToolResult:
        key = (fixture_id, (*cmd, "--", *args))
        if key not in self._outputs:
            built = self.get(fixture_id)
            self._outputs[key] = storegen.run_tool(
                cmd, storegen.CONF_NAME, cwd=built.root, args=args, env=built.env
            )
        return self._outputs[key]


@pytest.fixture(scope="session")
def reference_cmd() -> list[str] | None:
    """The command running the reference, or None when it is absent."""
    return storegen.reference_cmd()


@pytest.fixture(scope="session")
def require_reference(reference_cmd: list[str] | None) -> list[str]:
    if reference_cmd is None:
        pytest.skip(f"reference not found at {storegen.reference_path()} (STREAMIMAGE_REFERENCE)")
    return reference_cmd


@pytest.fixture(scope="session")
def tool_cmd() -> list[str]:
    return storegen.tool_cmd()


@pytest.fixture(scope="session")
def fixture_store(
    tmp_path_factory: pytest.TempPathFactory,
    reference_cmd: list[str] | None,
    tool_cmd: list[str],
) -> FixtureStore:
    return FixtureStore(tmp_path_factory.mktemp("fixtures"), reference_cmd, tool_cmd)


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
