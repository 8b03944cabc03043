"""A push end to end with credentials: the command line finds them where containers/image
and Docker keep them and answers the registry's challenges (htpasswd's Basic, the token
server's Bearer), against a docker-registry of the test's own over TLS; a refusal is one
line, no secret, and no tag."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from tests.conftest import FixtureStore
from tests.daemons import RegistryServer, Request
from tests.test_push import blob_uploads, manifest_puts, push
from tests.test_registry_auth import (
    PASSWORD,
    USER,
    WRONG,
    ca,
    htpasswd_registry,
    token_registry,
    tokens,
)
from tests.tokenserver import TokenServer

pytestmark = pytest.mark.clients

__all__ = ["ca", "htpasswd_registry", "token_registry", "tokens"]  # fixtures used here


def auth_file(directory: Path, host: str, user: str, password: str) -> dict[str, str]:
    """An environment whose REGISTRY_AUTH_FILE holds ``user:password`` for ``host``."""
    path = directory / "auth.json"
    entry = {"auth": base64.b64encode(f"{user}:{password}".encode()).decode()}
    path.write_text(json.dumps({"auths": {host: entry}}))
    return {"REGISTRY_AUTH_FILE": str(path), "HOME": str(directory)}


def patches(server: RegistryServer) -> list[Request]:
    """The requests that sent a blob's bytes."""
    return [r for r in server.requests() if r.method == "PATCH"]


def test_a_push_to_a_registry_behind_htpasswd_uses_the_auth_file(
    htpasswd_registry: RegistryServer, fixture_store: FixtureStore, tmp_path: Path
) -> None:
    root = fixture_store.get("basic").root
    host = htpasswd_registry.host
    good = push(root, f"{host}/team/app:1", env=auth_file(tmp_path, host, USER, PASSWORD))
    assert good.returncode == 0, good.stderr
    puts = manifest_puts(htpasswd_registry.requests())
    assert [r.status for r in puts] == [201]
    # wrong credentials: one line naming the registry, exit 1, no secret, no new tag
    (tmp_path / "wrong").mkdir()
    bad = push(root, f"{host}/team/app:2", env=auth_file(tmp_path / "wrong", host, USER, WRONG))
    assert bad.returncode == 1
    lines = bad.stderr.strip().splitlines()
    assert lines[-1].startswith("streamimage: error: ")
    assert host in lines[-1]
    assert WRONG not in bad.stderr
    assert base64.b64encode(f"{USER}:{WRONG}".encode()).decode() not in bad.stderr
    assert "Traceback" not in bad.stderr
    assert [r.status for r in manifest_puts(htpasswd_registry.requests())] == [201]


def test_a_push_with_bearer_tokens_mounts_from_another_repository(
    token_registry: RegistryServer,
    tokens: TokenServer,
    fixture_store: FixtureStore,
    tmp_path: Path,
) -> None:
    root = fixture_store.get("basic").root
    host = token_registry.host
    env = auth_file(tmp_path, host, USER, PASSWORD)
    first = push(root, f"{host}/base/one:1", env=env)
    assert first.returncode == 0, first.stderr
    uploads = len(patches(token_registry))
    assert uploads > 0
    second = push(root, f"{host}/team/app:1", "--mount-from", "base/one", "--no-cache", env=env)
    assert second.returncode == 0, second.stderr
    # every blob mounted: no upload more; the token asked for covers the mount's source
    assert len(patches(token_registry)) == uploads
    mounts = [r for r in blob_uploads(token_registry.requests()) if "mount=" in r.uri]
    assert mounts
    assert all(r.status == 201 for r in mounts)
    assert any("repository:base/one:pull" in r.scopes for r in tokens.requests)
    assert all(r.user == USER for r in tokens.requests)
