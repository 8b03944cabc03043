"""RegistryAuth and credentials_for against a real docker-registry (tests/daemons.py):
htpasswd over TLS with trustme's certificates, and ``token`` auth with the token server
of tests/tokenserver.py. Each test does what a push does (GET /v2/, POST an upload, PUT a
blob with ?digest=, HEAD it) through an httpx.AsyncClient.
"""

from __future__ import annotations

import base64
import hashlib
import json
import ssl
import stat
import sys
from collections.abc import Iterator
from pathlib import Path

import bcrypt
import httpx
import pytest
import trustme

from streamimage.errors import AuthError
from streamimage.remote.authn import Credentials, credentials_for
from streamimage.remote.transport import RegistryAuth
from tests.daemons import RegistryServer, registry
from tests.tokenserver import TokenServer, token_server

pytestmark = pytest.mark.clients

REPOSITORY = "team/app"
USER = "alice"
PASSWORD = "correct-horse-s3cr3t"
WRONG = "wrong-horse-s3cr3t"
PROBE_OK = [200, 202, 201, 200]  # push_probe's GET /v2/, POST, PUT, HEAD
BCRYPT_ROUNDS = 4  # the least bcrypt allows: the registry checks each request's password


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def trusting(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


def tls_files(ca: trustme.CA, directory: Path) -> tuple[Path, Path]:
    leaf = ca.issue_cert("127.0.0.1", "localhost")
    cert, key = directory / "registry.crt", directory / "registry.key"
    leaf.private_key_pem.write_to_path(str(key))
    with cert.open("wb") as out:
        for pem in leaf.cert_chain_pems:
            out.write(pem.bytes())
    return cert, key


@pytest.fixture
def htpasswd_registry(ca: trustme.CA, tmp_path: Path) -> Iterator[RegistryServer]:
    """docker-registry over TLS that knows alice by a bcrypt htpasswd line."""
    hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(BCRYPT_ROUNDS)).decode()
    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_text(f"{USER}:{hashed}\n")
    auth = {"htpasswd": {"realm": "streamimage-test", "path": str(htpasswd)}}
    with registry(tmp_path, auth=auth, tls=tls_files(ca, tmp_path)) as server:
        yield server


async def push_probe(
    server: RegistryServer, ca: trustme.CA, auth: httpx.Auth, repository: str = REPOSITORY
) -> str:
    """What a push asks of a registry, for one small blob; its digest."""
    data = f"probe of {repository}".encode()
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    async with httpx.AsyncClient(base_url=server.url, verify=trusting(ca), auth=auth) as client:
        assert (await client.get("/v2/")).status_code == 200
        started = await client.post(f"/v2/{repository}/blobs/uploads/")
        assert started.status_code == 202, started.text
        # a client's params= replace the Location's own query (its upload _state)
        location = httpx.URL(started.headers["Location"]).copy_merge_params({"digest": digest})
        put = await client.put(
            location,
            content=data,
            headers={"Content-Type": "application/octet-stream"},
        )
        assert put.status_code == 201, put.text
        head = await client.head(f"/v2/{repository}/blobs/{digest}")
        assert head.status_code == 200
        assert head.headers["Docker-Content-Digest"] == digest
    return digest


def statuses(server: RegistryServer) -> list[int]:
    return [request.status for request in server.requests()]


def assert_clean(error: pytest.ExceptionInfo[AuthError], server: RegistryServer) -> str:
    message = str(error.value)
    assert "\n" not in message
    assert f"{server.host}/{REPOSITORY}" in message
    for secret in (PASSWORD, WRONG):
        assert secret not in message
    return message


async def test_htpasswd_good_credentials_one_401(
    htpasswd_registry: RegistryServer, ca: trustme.CA
) -> None:
    auth = RegistryAuth(htpasswd_registry.host, REPOSITORY, Credentials(USER, PASSWORD))
    await push_probe(htpasswd_registry, ca, auth)
    # GET /v2/ once without, then with credentials, sent up front from then on
    assert statuses(htpasswd_registry) == [401, *PROBE_OK]


async def test_htpasswd_wrong_or_no_credentials(
    htpasswd_registry: RegistryServer, ca: trustme.CA
) -> None:
    wrong = RegistryAuth(htpasswd_registry.host, REPOSITORY, Credentials(USER, WRONG, source="x"))
    with pytest.raises(AuthError) as error:
        await push_probe(htpasswd_registry, ca, wrong)
    assert "credentials refused (HTTP 401 for GET /v2/)" in assert_clean(error, htpasswd_registry)
    with pytest.raises(AuthError) as error:
        await push_probe(
            htpasswd_registry, ca, RegistryAuth(htpasswd_registry.host, REPOSITORY, None)
        )
    assert "none were found" in assert_clean(error, htpasswd_registry)
    # nothing was stored: the registry answered only 401s
    assert set(statuses(htpasswd_registry)) == {401}


async def test_htpasswd_with_credentials_from_an_auth_file(
    htpasswd_registry: RegistryServer, ca: trustme.CA, tmp_path: Path
) -> None:
    auth_file = tmp_path / "auth.json"
    entry = {"auth": base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()}
    auth_file.write_text(json.dumps({"auths": {f"{htpasswd_registry.host}/team": entry}}))
    environ = {"REGISTRY_AUTH_FILE": str(auth_file), "HOME": str(tmp_path)}
    found = credentials_for(htpasswd_registry.host, REPOSITORY, environ=environ)
    assert found is not None
    await push_probe(htpasswd_registry, ca, RegistryAuth(htpasswd_registry.host, REPOSITORY, found))
    # the namespace key is not the registry's: another namespace has no credentials
    assert credentials_for(htpasswd_registry.host, "other/app", environ=environ) is None


def write_helper(bin_dir: Path, name: str, server: str, username: str, secret: str) -> Path:
    """``docker-credential-NAME`` answering ``get`` for ``server``; it logs each query."""
    bin_dir.mkdir(exist_ok=True)
    log = bin_dir / f"{name}.log"
    script = bin_dir / f"docker-credential-{name}"
    answer = json.dumps({"ServerURL": server, "Username": username, "Secret": secret})
    script.write_text(
        f"#!{sys.executable}\n"
        "import sys\n"
        "asked = sys.stdin.read()\n"
        f"open({str(log)!r}, 'a').write(asked + '\\n')\n"
        f"if asked != {server!r}:\n"
        "    print('credentials not found in native keychain')\n"
        "    sys.exit(1)\n"
        f"print({answer!r})\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return log


async def test_htpasswd_with_credentials_from_a_helper(
    htpasswd_registry: RegistryServer, ca: trustme.CA, tmp_path: Path
) -> None:
    host = htpasswd_registry.host
    log = write_helper(tmp_path / "bin", "streamtest", host, USER, PASSWORD)
    docker = tmp_path / "docker"
    docker.mkdir()
    (docker / "config.json").write_text(json.dumps({"credHelpers": {host: "streamtest"}}))
    environ = {
        "HOME": str(tmp_path),
        "XDG_RUNTIME_DIR": str(tmp_path),
        "DOCKER_CONFIG": str(docker),
        "PATH": str(tmp_path / "bin"),
    }
    found = credentials_for(host, REPOSITORY, environ=environ)
    assert found is not None
    assert "docker-credential-streamtest" in found.source
    await push_probe(htpasswd_registry, ca, RegistryAuth(host, REPOSITORY, found))
    assert log.read_text().splitlines() == [host]


@pytest.fixture
def tokens(ca: trustme.CA, tmp_path: Path) -> Iterator[TokenServer]:
    with token_server(ca, tmp_path, {USER: PASSWORD}, refresh_tokens={"refresh-1": USER}) as served:
        yield served


@pytest.fixture
def token_registry(tokens: TokenServer, ca: trustme.CA, tmp_path: Path) -> Iterator[RegistryServer]:
    with registry(tmp_path, auth=tokens.registry_auth(), tls=tls_files(ca, tmp_path)) as server:
        yield server


async def test_bearer_token_scopes_and_reuse(
    token_registry: RegistryServer, tokens: TokenServer, ca: trustme.CA
) -> None:
    host = token_registry.host
    # the mount source exists: alice pushed a blob there first
    base_auth = RegistryAuth(host, "base/one", Credentials(USER, PASSWORD))
    mounted = await push_probe(token_registry, ca, base_auth, repository="base/one")
    assert [(r.user, r.scopes, r.status) for r in tokens.requests] == [
        (USER, ("repository:base/one:pull,push",), 200)
    ]
    tokens.requests.clear()

    auth = RegistryAuth(host, REPOSITORY, Credentials(USER, PASSWORD), mount_from=["base/one"])
    await push_probe(token_registry, ca, auth)
    await push_probe(token_registry, ca, auth)  # a second client, the same RegistryAuth
    [asked] = tokens.requests  # one token for both pushes: cached, not asked per request
    assert asked.method == "GET"
    assert asked.user == USER
    assert asked.scopes == ("repository:team/app:pull,push", "repository:base/one:pull")
    # one 401 for each RegistryAuth's first request; the second probe met none
    assert [r.status for r in token_registry.requests()] == [401] + PROBE_OK + [401] + PROBE_OK * 2

    # the token already holds pull on the source: mounted (201) with no 401, no new token
    assert await mount(token_registry, ca, auth, REPOSITORY, mounted, "base/one") == 201
    assert len(tokens.requests) == 1
    assert token_registry.requests()[-1].status == 201
    # without the hint the registry's challenge names the source's scope: one more round
    plain = RegistryAuth(host, "team/plain", Credentials(USER, PASSWORD))
    assert await mount(token_registry, ca, plain, "team/plain", mounted, "base/one") == 201
    assert [r.status for r in token_registry.requests()[-2:]] == [401, 201]
    assert tokens.requests[-1].scopes == (
        "repository:team/plain:pull,push",
        "repository:base/one:pull",
    )


async def mount(
    server: RegistryServer,
    ca: trustme.CA,
    auth: httpx.Auth,
    repository: str,
    digest: str,
    source: str,
) -> int:
    """The status of a cross-repository mount: 201 mounted, 202 an upload started instead."""
    async with httpx.AsyncClient(base_url=server.url, verify=trusting(ca), auth=auth) as client:
        response = await client.post(
            f"/v2/{repository}/blobs/uploads/", params={"mount": digest, "from": source}
        )
        return response.status_code


async def test_bearer_wrong_credentials_and_anonymous(
    token_registry: RegistryServer, tokens: TokenServer, ca: trustme.CA
) -> None:
    host = token_registry.host
    with pytest.raises(AuthError) as error:
        await push_probe(
            token_registry, ca, RegistryAuth(host, REPOSITORY, Credentials(USER, WRONG))
        )
    assert "token server https://127.0.0.1:" in assert_clean(error, token_registry)
    # anonymous: the token server grants nothing, the registry refuses that token
    with pytest.raises(AuthError) as error:
        await push_probe(token_registry, ca, RegistryAuth(host, REPOSITORY, None))
    refused = "anonymous access refused (HTTP 401 for POST /v2/team/app/blobs/uploads/)"
    assert refused in assert_clean(error, token_registry)
    # GET /v2/ takes any valid token; the upload's 401 is answered once with a new one
    assert [(r.user, r.status) for r in tokens.requests] == [(USER, 401), (None, 200), (None, 200)]


async def test_bearer_identity_token_refresh(
    token_registry: RegistryServer, tokens: TokenServer, ca: trustme.CA
) -> None:
    credentials = Credentials(identity_token="refresh-1")
    await push_probe(token_registry, ca, RegistryAuth(token_registry.host, REPOSITORY, credentials))
    assert [(r.method, r.user, r.scopes) for r in tokens.requests] == [
        ("POST", USER, ("repository:team/app:pull,push",))
    ]
