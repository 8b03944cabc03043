"""RegistryAuth's flow against registries simulated in-process (httpx.MockTransport, no
sockets): the challenge parser, Basic, Bearer with its scopes and a reused token, OAuth2
refresh for identity tokens, and every refusal as one AuthError naming the registry and
repository with no secret in it. tests/test_registry_auth.py does the same against a real
docker-registry.
"""

from __future__ import annotations

import base64
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field

import anyio
import httpx
import pytest

from streamimage.errors import AuthError
from streamimage.remote import transport
from streamimage.remote.authn import Credentials
from streamimage.remote.challenge import Challenge, merge_scopes, parse_challenges
from streamimage.remote.transport import RegistryAuth

REGISTRY = "reg.test"
REPOSITORY = "team/app"
REALM = "https://auth.test/token"
SECRET = "s3cr3t-pa55"
ALICE = Credentials("alice", SECRET, source="/run/auth.json (reg.test)")


# -- the challenge parser ---------------------------------------------------------------


def test_parse_bearer_and_basic() -> None:
    found = parse_challenges(
        [
            'Bearer realm="https://auth.test/token",service="reg.test",'
            'scope="repository:team/app:pull,push"',
            'Basic realm="Registry Realm"',
        ]
    )
    assert found == [
        Challenge(
            "bearer",
            {
                "realm": "https://auth.test/token",
                "service": "reg.test",
                "scope": "repository:team/app:pull,push",
            },
        ),
        Challenge("basic", {"realm": "Registry Realm"}),
    ]


def test_parse_several_in_one_value_escapes_tokens_and_case() -> None:
    found = parse_challenges(
        [r'NEGOTIATE abc/def==, BEARER Realm="a\"b" , error=invalid_token, Basic realm=x']
    )
    assert found == [
        Challenge("negotiate", {}),
        Challenge("bearer", {"realm": 'a"b', "error": "invalid_token"}),
        Challenge("basic", {"realm": "x"}),
    ]


@pytest.mark.parametrize("value", ["", "   ", ",,", '"quoted"', "=x"])
def test_parse_unreadable_gives_nothing(value: str) -> None:
    assert parse_challenges([value]) == []


def test_merge_scopes_merges_actions_keeps_order() -> None:
    merged = merge_scopes(
        ["repository:a:pull", "repository:b:pull repository:a:push", "", "repository:a:pull"]
    )
    assert merged == ("repository:a:pull,push", "repository:b:pull")
    assert merge_scopes(["registry:catalog:*", "garbage"]) == ("registry:catalog:*",)


# -- a simulated registry and token server ------------------------------------------------


@dataclass
class Fake:
    """A registry at https://reg.test whose ``check`` says what an Authorization header
    gets (None: allowed, else the 401's challenge), and a token server at REALM."""

    check: Callable[[httpx.Request], str | None]
    token_answer: Callable[[httpx.Request], httpx.Response] | None = None
    seen: list[httpx.Request] = field(default_factory=list)

    def handle(self, request: httpx.Request) -> httpx.Response:
        # a copy: the flow resends (and so changes) the same request object
        seen = httpx.Request(request.method, request.url, headers=request.headers.copy())
        seen._content = request.content
        self.seen.append(seen)
        if request.url.host == "auth.test":
            assert self.token_answer is not None
            return self.token_answer(request)
        if request.url.path.endswith("/forbidden"):
            body = {"errors": [{"code": "DENIED", "message": "requested access is denied"}]}
            return httpx.Response(403, json=body)
        challenge = self.check(request)
        if challenge is None:
            return httpx.Response(200, json={"ok": request.url.path})
        body = {"errors": [{"code": "UNAUTHORIZED", "message": "authentication required"}]}
        return httpx.Response(401, headers={"WWW-Authenticate": challenge}, json=body)

    def client(self, auth: httpx.Auth) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            transport=httpx.MockTransport(self.handle), auth=auth, base_url="https://reg.test"
        )

    def token_requests(self) -> list[httpx.Request]:
        return [r for r in self.seen if r.url.host == "auth.test"]

    def registry_requests(self) -> list[httpx.Request]:
        return [r for r in self.seen if r.url.host == REGISTRY]


def basic_of(username: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()


def basic_registry(username: str, password: str) -> Fake:
    good = basic_of(username, password)
    return Fake(lambda r: None if r.headers.get("authorization") == good else 'Basic realm="R"')


def assert_clean(error: pytest.ExceptionInfo[AuthError], *names: str) -> str:
    message = str(error.value)
    assert error.value.exit_status == 1  # a failure while running, as cli.py maps it
    assert "\n" not in message
    assert f"{REGISTRY}/{REPOSITORY}" in message
    assert SECRET not in message
    assert base64.b64encode(f"alice:{SECRET}".encode()).decode() not in message
    for name in names:
        assert name in message, (name, message)
    return message


async def test_basic_answers_the_challenge_then_sends_it_up_front() -> None:
    fake = basic_registry("alice", SECRET)
    async with fake.client(RegistryAuth(REGISTRY, REPOSITORY, ALICE)) as client:
        for path in ("/v2/", "/v2/team/app/blobs/uploads/", "/v2/team/app/blobs/sha256:00"):
            response = await client.get(path)
            assert response.status_code == 200
    statuses = [r.headers.get("authorization") for r in fake.seen]
    assert statuses == [None] + [basic_of("alice", SECRET)] * 3  # one 401, then none


async def test_concurrent_first_requests_both_answer_the_challenge() -> None:
    """Two requests in flight before the first 401: the second's flow must judge by what
    its request carried (nothing), not by the Basic header the first flow cached since."""
    fake = basic_registry("alice", SECRET)
    both_in = anyio.Event()
    arrived: list[str | None] = []

    async def handle(request: httpx.Request) -> httpx.Response:
        arrived.append(request.headers.get("authorization"))
        if arrived.count(None) == 2:
            both_in.set()
        await both_in.wait()  # neither 401 goes out before both requests are in
        return fake.handle(request)

    auth = RegistryAuth(REGISTRY, REPOSITORY, ALICE)
    mock = httpx.MockTransport(handle)
    async with httpx.AsyncClient(transport=mock, auth=auth, base_url="https://reg.test") as client:
        results: list[int] = []

        async def head(path: str) -> None:
            results.append((await client.head(path)).status_code)

        with anyio.fail_after(10):
            async with anyio.create_task_group() as group:
                group.start_soon(head, "/v2/team/app/blobs/sha256:01")
                group.start_soon(head, "/v2/team/app/blobs/sha256:02")
    assert results == [200, 200]
    assert arrived == [None, None, basic_of("alice", SECRET), basic_of("alice", SECRET)]


async def test_basic_without_credentials() -> None:
    fake = basic_registry("alice", SECRET)
    async with fake.client(RegistryAuth(REGISTRY, REPOSITORY, None)) as client:
        with pytest.raises(AuthError) as error:
            await client.get("/v2/")
    assert_clean(error, "none were found")


async def test_basic_wrong_password() -> None:
    fake = basic_registry("alice", "another-password")
    async with fake.client(RegistryAuth(REGISTRY, REPOSITORY, ALICE)) as client:
        with pytest.raises(AuthError) as error:
            await client.get("/v2/")
    assert_clean(error, "credentials refused", "HTTP 401", "authentication required", ALICE.source)
    assert len(fake.seen) == 2  # asked once more with the credentials, not forever


def bearer_registry(
    *, grant: Callable[[httpx.Request], str | None] = lambda r: None, lifetime: int = 300
) -> Fake:
    """Tokens ``tok-N``; the registry takes the last one issued. ``grant`` may refuse a
    token request by returning the status's reason."""
    issued: list[str] = []

    def token_answer(request: httpx.Request) -> httpx.Response:
        refused = grant(request)
        if refused is not None:
            return httpx.Response(401, json={"details": refused})
        issued.append(f"tok-{len(issued) + 1}")
        return httpx.Response(200, json={"token": issued[-1], "expires_in": lifetime})

    def check(request: httpx.Request) -> str | None:
        if issued and request.headers.get("authorization") == f"Bearer {issued[-1]}":
            return None
        scope = f"repository:{REPOSITORY}:pull,push"
        path = request.url.path
        suffix = "" if path == "/v2/" else f',scope="{scope}"'
        return f'Bearer realm="{REALM}",service="{REGISTRY}"{suffix}'

    return Fake(check, token_answer)


def token_params(request: httpx.Request) -> tuple[list[str], list[str]]:
    params = urllib.parse.parse_qs(request.url.query.decode())
    return params.get("service", []), params.get("scope", [])


async def test_bearer_fetches_one_token_with_every_scope_and_reuses_it() -> None:
    fake = bearer_registry(grant=lambda r: None if r.headers.get("authorization") else "anon")
    auth = RegistryAuth(REGISTRY, REPOSITORY, ALICE, mount_from=["base/one", "base/two"])
    async with fake.client(auth) as client:
        assert (await client.get("/v2/")).status_code == 200
        for _ in range(5):
            assert (await client.head("/v2/team/app/blobs/sha256:00")).status_code == 200
        assert (await client.post("/v2/team/app/blobs/uploads/", content=b"x")).status_code == 200
    [token_request] = fake.token_requests()
    assert token_request.method == "GET"
    assert token_request.headers["authorization"] == basic_of("alice", SECRET)
    services, scopes = token_params(token_request)
    assert services == [REGISTRY]
    assert scopes == [
        "repository:team/app:pull,push",
        "repository:base/one:pull",
        "repository:base/two:pull",
    ]
    assert [r.headers.get("authorization") for r in fake.registry_requests()] == [None] + [
        "Bearer tok-1"
    ] * 7


async def test_bearer_adds_the_challenges_own_scope() -> None:
    fake = bearer_registry()
    extra = "repository:other/repo:pull"
    fake.check = lambda r: (
        None
        if r.headers.get("authorization") == "Bearer tok-1"
        else f'Bearer realm="{REALM}",service="{REGISTRY}",scope="{extra}"'
    )
    async with fake.client(RegistryAuth(REGISTRY, REPOSITORY, None)) as client:
        assert (await client.get("/v2/other/repo/manifests/x")).status_code == 200
    [token_request] = fake.token_requests()
    assert "authorization" not in token_request.headers  # anonymous
    assert token_params(token_request)[1] == ["repository:team/app:pull,push", extra]


async def test_bearer_token_server_refuses_credentials() -> None:
    fake = bearer_registry(grant=lambda r: "wrong password")
    async with fake.client(RegistryAuth(REGISTRY, REPOSITORY, ALICE)) as client:
        with pytest.raises(AuthError) as error:
            await client.get("/v2/")
    assert_clean(error, "token server https://auth.test/token", "refused", ALICE.source)


async def test_bearer_401_after_a_fresh_token() -> None:
    fake = bearer_registry()
    fake.check = lambda r: f'Bearer realm="{REALM}",service="{REGISTRY}"'  # takes no token
    async with fake.client(RegistryAuth(REGISTRY, REPOSITORY, ALICE)) as client:
        with pytest.raises(AuthError) as error:
            await client.put("/v2/team/app/manifests/latest", content=b"{}")
    assert_clean(error, "token refused", "PUT /v2/team/app/manifests/latest")
    assert len(fake.token_requests()) == 1
    with pytest.raises(AuthError) as error:
        async with fake.client(RegistryAuth(REGISTRY, REPOSITORY, None)) as client:
            await client.get("/v2/")
    assert_clean(error, "anonymous access refused")


async def test_403_is_denied() -> None:
    fake = bearer_registry()
    async with fake.client(RegistryAuth(REGISTRY, REPOSITORY, ALICE)) as client:
        with pytest.raises(AuthError) as error:
            await client.get("/v2/team/app/forbidden")
    assert_clean(error, "access denied", "HTTP 403", "requested access is denied")


async def test_unusable_challenges() -> None:
    fake = Fake(lambda r: 'Negotiate realm="x"')
    async with fake.client(RegistryAuth(REGISTRY, REPOSITORY, ALICE)) as client:
        with pytest.raises(AuthError) as error:
            await client.get("/v2/")
    assert_clean(error, "no usable challenge (negotiate)")
    fake = Fake(lambda r: 'Bearer service="x"')
    async with fake.client(RegistryAuth(REGISTRY, REPOSITORY, ALICE)) as client:
        with pytest.raises(AuthError) as error:
            await client.get("/v2/")
    assert_clean(error, "without realm")


async def test_access_token_and_garbled_token_answers() -> None:
    fake = bearer_registry()
    fake.token_answer = lambda r: httpx.Response(200, json={"access_token": "tok-a"})
    fake.check = lambda r: (
        None if r.headers.get("authorization") == "Bearer tok-a" else f'Bearer realm="{REALM}"'
    )
    async with fake.client(RegistryAuth(REGISTRY, REPOSITORY, None)) as client:
        assert (await client.get("/v2/")).status_code == 200
    for answer in (httpx.Response(200, text="<html>"), httpx.Response(200, json={"x": 1})):
        fake.token_answer = lambda r, answer=answer: answer
        async with fake.client(RegistryAuth(REGISTRY, REPOSITORY, None)) as client:
            with pytest.raises(AuthError) as error:
                await client.get("/v2/")
        assert_clean(error, "answered no")


async def test_identity_token_uses_oauth2_refresh() -> None:
    refresh = "refresh-" + SECRET
    fake = bearer_registry()
    issue = fake.token_answer
    assert issue is not None
    posts: list[dict[str, list[str]]] = []

    def oauth(request: httpx.Request) -> httpx.Response:
        posts.append(urllib.parse.parse_qs(request.content.decode()))
        return issue(request)

    fake.token_answer = oauth
    credentials = Credentials(identity_token=refresh, source="docker-credential-x")
    auth = RegistryAuth(REGISTRY, REPOSITORY, credentials, mount_from=["base/one"])
    async with fake.client(auth) as client:
        assert (await client.get("/v2/")).status_code == 200
    [form] = posts
    assert form["grant_type"] == ["refresh_token"]
    assert form["refresh_token"] == [refresh]
    assert form["service"] == [REGISTRY]
    assert form["scope"] == ["repository:team/app:pull,push repository:base/one:pull"]
    assert form["client_id"]
    assert [r.method for r in fake.token_requests()] == ["POST"]


async def test_identity_token_falls_back_to_get_where_oauth2_is_missing() -> None:
    fake = bearer_registry()
    issue = fake.token_answer
    assert issue is not None
    fake.token_answer = lambda r: httpx.Response(404) if r.method == "POST" else issue(r)
    credentials = Credentials("bob", identity_token="refresh-" + SECRET)
    async with fake.client(RegistryAuth(REGISTRY, REPOSITORY, credentials)) as client:
        assert (await client.get("/v2/")).status_code == 200
    assert [r.method for r in fake.token_requests()] == ["POST", "GET"]
    assert fake.token_requests()[1].headers["authorization"] == basic_of("bob", "refresh-" + SECRET)


async def test_expiring_token_is_renewed_before_the_request(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = [1000.0]
    monkeypatch.setattr(transport, "monotonic", lambda: now[0])
    fake = bearer_registry(lifetime=60)
    async with fake.client(RegistryAuth(REGISTRY, REPOSITORY, ALICE)) as client:
        assert (await client.get("/v2/")).status_code == 200
        now[0] += 40  # within the token's life: reused
        assert (await client.head("/v2/team/app/blobs/sha256:00")).status_code == 200
        now[0] += 15  # 55 s: inside the renewal margin, renewed before sending
        assert (await client.patch("/v2/team/app/blobs/uploads/u", content=b"x")).status_code == 200
    assert len(fake.token_requests()) == 2
    registry = fake.registry_requests()
    assert [r.headers.get("authorization") for r in registry] == [
        None,
        "Bearer tok-1",
        "Bearer tok-1",
        "Bearer tok-2",
    ]


def test_sync_client_works_too() -> None:
    fake = bearer_registry()
    transport_ = httpx.MockTransport(fake.handle)
    auth = RegistryAuth(REGISTRY, REPOSITORY, ALICE)
    with httpx.Client(transport=transport_, auth=auth, base_url="https://reg.test") as client:
        assert client.get("/v2/").status_code == 200
        assert client.get("/v2/team/app/tags/list").json() == {"ok": "/v2/team/app/tags/list"}
    assert len(fake.token_requests()) == 1


def test_repr_shows_no_secret() -> None:
    auth = RegistryAuth(REGISTRY, REPOSITORY, Credentials("alice", SECRET, "tok" + SECRET))
    assert SECRET not in repr(auth)
    assert "alice" in repr(auth)
    assert REGISTRY in repr(auth)
