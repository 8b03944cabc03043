"""Pushing through faults: a registry answering 500s then recovering, one that always
does, a slow one, one that goes away mid-upload (for good, or killed and restarted on its
storage), and SIGINT mid-push. A FaultProxy (tests/registry_proxy.py) stands in front of
the test's own docker-registry.

Rule: whatever happens, the run ends with the image pushed whole, or with one line
``streamimage: error: ...`` and no tag pointing at a partial image.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

import pytest

from tests import storegen
from tests.conftest import FixtureStore
from tests.daemons import free_port, registry, short_root
from tests.images import private_fixture
from tests.registry_proxy import FaultProxy, fault_proxy
from tests.test_push import (
    archive_diff_ids,
    manifest_puts,
    pulled_layer_digests,
    push,
    pushed,
    skopeo_inspect,
    tags,
)

pytestmark = pytest.mark.clients

REPO = "faults/image"
BIG_FILE = 16 * 2**20  # bytes: an upload that lasts while the proxy forwards slowly
WAIT = 120  # seconds: the most a test waits for the push


def _one_error_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert "Traceback" not in stderr
    assert lines[-1].startswith("streamimage: error: "), stderr
    return lines[-1]


def _big_fixture(fixture_store: FixtureStore, tool_cmd: list[str], parent: Path) -> Path:
    """The basic fixture with a large file of random bytes in its first store path."""
    fixture = private_fixture(fixture_store, tool_cmd, "basic", parent)
    first = storegen.store_path("hello-2.12")
    (fixture.root / first / "big").write_bytes(random.randbytes(BIG_FILE))
    return fixture.root


def _start_push(root: Path, reference: str, *args: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "TZ": storegen.DEFAULT_TZ}
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(storegen.REPO_ROOT), env.get("PYTHONPATH", "")) if p
    )
    argv = [*storegen.tool_cmd(), storegen.CONF_NAME, "-o", f"docker://{reference}"]
    argv += ["--tls-verify=false", *args]
    return subprocess.Popen(
        argv, cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )


def _wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        assert time.monotonic() < deadline, f"never: {what}"
        time.sleep(0.05)


def test_a_registry_answering_500s_then_recovering_gets_the_image(
    tmp_path: Path, fixture_store: FixtureStore
) -> None:
    root = fixture_store.get("basic").root
    with registry(tmp_path) as server, fault_proxy(server.host) as proxy:
        proxy.fail_connections = 3
        reference = f"{proxy.host}/{REPO}:t"
        pushed(push(root, reference, "--compress", "gzip"))
        assert proxy.failed == 3
        assert tags(server, REPO) == ["t"]
        assert pulled_layer_digests(f"{server.host}/{REPO}:t", tmp_path)


def test_a_registry_that_keeps_failing_ends_in_one_line_and_no_tag(
    tmp_path: Path, fixture_store: FixtureStore
) -> None:
    root = fixture_store.get("basic").root
    with registry(tmp_path) as server, fault_proxy(server.host) as proxy:
        proxy.fail_connections = 1000
        result = push(root, f"{proxy.host}/{REPO}:t")
        assert result.returncode == 1
        line = _one_error_line(result.stderr)
        assert proxy.host in line
        assert "500" in line or "UNKNOWN" in line
        assert "tried 5 times" in line
        assert tags(server, REPO) == []


def test_a_slow_registry_gets_the_image(tmp_path: Path, fixture_store: FixtureStore) -> None:
    root = fixture_store.get("from-image").root
    with registry(tmp_path) as server, fault_proxy(server.host) as proxy:
        proxy.delay = 0.05  # per read, each way: every request takes a while
        pushed(push(root, f"{proxy.host}/{REPO}:slow"))
        assert skopeo_inspect(f"{server.host}/{REPO}:slow")["Digest"]
        assert len(proxy.requests("PATCH")) >= 3


def test_a_registry_gone_mid_upload_ends_in_one_line_and_no_tag(
    tmp_path: Path, fixture_store: FixtureStore, tool_cmd: list[str]
) -> None:
    root = _big_fixture(fixture_store, tool_cmd, tmp_path / "own")
    with registry(tmp_path) as server, fault_proxy(server.host) as proxy:
        proxy.cut_on = b"PATCH "
        result = push(root, f"{proxy.host}/{REPO}:t")
        assert result.returncode == 1
        line = _one_error_line(result.stderr)
        assert f"{proxy.host}/{REPO}: layer " in line
        assert proxy.cut.is_set()
        assert manifest_puts(server.requests()) == []
        assert tags(server, REPO) == []


def test_a_registry_killed_mid_upload_and_restarted_gets_the_whole_image(
    tmp_path: Path, fixture_store: FixtureStore, tool_cmd: list[str]
) -> None:
    root = _big_fixture(fixture_store, tool_cmd, tmp_path / "own")
    storage = short_root("registry-kill")
    port = free_port()
    try:
        with ExitStack() as first:
            server = first.enter_context(registry(tmp_path, root=storage, port=port))
            proxy = FaultProxy(server.host)
            proxy.delay = 0.02
            push_process = _start_push(root, f"{proxy.host}/{REPO}:t")
            _wait_for(lambda: bool(proxy.requests("PATCH")), "an upload started")
        # the registry is gone (terminated) mid-upload; it comes back on its storage
        with registry(tmp_path, root=storage, port=port) as again:
            proxy.delay = 0.0
            _, stderr = push_process.communicate(timeout=WAIT)
            proxy.close()
            assert push_process.returncode == 0, stderr.decode()
            assert tags(again, REPO) == ["t"]
            pulled = pulled_layer_digests(f"{again.host}/{REPO}:t", tmp_path)
        # each blob's PATCH, the config's, and at least one upload tried again
        assert len(proxy.requests("PATCH")) >= len(set(pulled)) + 2
        archive = storegen.run_tool(tool_cmd, storegen.CONF_NAME, cwd=root)
        assert archive.returncode == 0, archive.stderr
        assert pulled == archive_diff_ids(archive.stdout)
    finally:
        shutil.rmtree(storage, ignore_errors=True)


def test_sigint_mid_push_leaves_no_tag(
    tmp_path: Path, fixture_store: FixtureStore, tool_cmd: list[str]
) -> None:
    root = _big_fixture(fixture_store, tool_cmd, tmp_path / "own")
    with registry(tmp_path) as server, fault_proxy(server.host) as proxy:
        proxy.delay = 0.02
        push_process = _start_push(root, f"{proxy.host}/{REPO}:t")
        _wait_for(lambda: bool(proxy.requests("PATCH")), "an upload started")
        push_process.send_signal(signal.SIGINT)
        _, stderr = push_process.communicate(timeout=WAIT)
        assert push_process.returncode == 128 + signal.SIGINT, stderr.decode()
        assert _one_error_line(stderr.decode()) == "streamimage: error: stopped by SIGINT"
        assert manifest_puts(server.requests()) == []
        assert tags(server, REPO) == []
