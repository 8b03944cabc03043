"""The registry fixture itself: it serves the distribution API, logs each request, and a
registry restarted on its storage still holds what was pushed (the push tests rely on all
three)."""

from __future__ import annotations

import hashlib
import shutil
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.daemons import registry, short_root

pytestmark = pytest.mark.clients


def _put_blob(base: str, repository: str, data: bytes) -> str:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    start = urllib.request.Request(f"{base}/v2/{repository}/blobs/uploads/", method="POST")
    with urllib.request.urlopen(start) as response:
        location = response.headers["Location"]
    if location.startswith("/"):
        location = base + location
    separator = "&" if "?" in location else "?"
    put = urllib.request.Request(
        f"{location}{separator}digest={digest}",
        data=data,
        method="PUT",
        headers={"Content-Type": "application/octet-stream"},
    )
    with urllib.request.urlopen(put) as response:
        assert response.status == 201
    return digest


def _has_blob(base: str, repository: str, digest: str) -> bool:
    head = urllib.request.Request(f"{base}/v2/{repository}/blobs/{digest}", method="HEAD")
    try:
        with urllib.request.urlopen(head) as response:
            return bool(response.status == 200)
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return False
        raise


def test_registry_logs_requests_and_keeps_storage_across_restart(tmp_path: Path) -> None:
    root = short_root("registry-keep")
    try:
        with registry(tmp_path, root=root) as server:
            digest = _put_blob(server.url, "library/probe", b"hello registry")
            assert _has_blob(server.url, "library/probe", digest)
            port = server.host.rsplit(":", 1)[1]
            methods = [(r.method, r.status) for r in server.requests()]
            assert ("POST", 202) in methods
            assert ("PUT", 201) in methods
            assert methods[-1] == ("HEAD", 200)
        with registry(tmp_path, root=root, port=int(port)) as again:
            assert _has_blob(again.url, "library/probe", digest)
            assert not _has_blob(again.url, "library/other", digest)
    finally:
        shutil.rmtree(root, ignore_errors=True)
