"""The registry client's protocol and its errors, against a registry played by
httpx.MockTransport: what it retries (connection errors, 5xx, 429) and what never (a
2xx, a refusal), an upload restarted whole from a new POST, and the one line each refusal
becomes (registry, repository, blob, the registry's own code; never a credential)."""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, Callable

import httpx
import pytest

from streamimage.errors import ChangedError, RegistryError
from streamimage.remote.client import RegistryClient, Retry
from streamimage.remote.reference import parse_reference

DIGEST = "sha256:" + "ab" * 32
FAST = Retry(attempts=3, first_delay=0.001, max_delay=0.001)
Handler = Callable[[httpx.Request], httpx.Response]


def errors(status: int, code: str, message: str = "") -> httpx.Response:
    body = {"errors": [{"code": code, "message": message}]}
    return httpx.Response(status, content=json.dumps(body).encode())


def client(handler: Handler) -> RegistryClient:
    reference = parse_reference("docker://r.test:5000/team/app:v1")
    return RegistryClient(reference, retry=FAST, transport=httpx.MockTransport(handler))


def body_of(data: bytes) -> Callable[[], AsyncGenerator[bytes, None]]:
    async def body() -> AsyncGenerator[bytes, None]:
        yield data

    return body


class Recorder:
    """A registry that answers uploads; ``fail`` maps 'METHOD n' (the n-th such request,
    from 1) to the response to give instead."""

    def __init__(self, fail: dict[str, httpx.Response | Exception] | None = None) -> None:
        self.fail = fail or {}
        self.seen: list[str] = []
        self.bodies: list[bytes] = []
        self.lengths: list[str | None] = []
        self.encodings: list[str | None] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.seen.append(request.method)
        key = f"{request.method} {self.seen.count(request.method)}"
        if key in self.fail:
            failure = self.fail[key]
            if isinstance(failure, Exception):
                raise failure
            return failure
        if request.method == "POST":
            return httpx.Response(202, headers={"Location": "/v2/team/app/blobs/uploads/u1"})
        if request.method == "PATCH":
            self.bodies.append(request.read())
            self.lengths.append(request.headers.get("Content-Length"))
            self.encodings.append(request.headers.get("Transfer-Encoding"))
            return httpx.Response(202, headers={"Location": "/v2/team/app/blobs/uploads/u1?s=2"})
        if request.method == "PUT":
            assert request.url.params["digest"] == DIGEST
            assert request.url.params["s"] == "2"  # the PATCH's Location, kept
            return httpx.Response(201)
        return httpx.Response(404)


async def test_an_upload_is_post_patch_put_with_the_bytes_once() -> None:
    registry = Recorder()
    async with client(registry) as c:
        await c.upload(DIGEST, 5, body_of(b"hello"), "layer 1")
    assert registry.seen == ["POST", "PATCH", "PUT"]
    assert registry.bodies == [b"hello"]


async def test_a_blob_hashed_as_sent_goes_chunked_and_is_put_with_the_digest_found() -> None:
    # a streamed layer: its size unknown until sent (no Content-Length: chunked
    # encoding), its digest asked for once the body is sent, for each attempt anew
    registry = Recorder({"PATCH 1": httpx.Response(503)})
    attempts: list[str] = []

    def found() -> str:
        attempts.append(DIGEST)
        return DIGEST

    async with client(registry) as c:
        await c.upload(found, None, body_of(b"hello"), "layer 1")
    assert registry.seen == ["POST", "PATCH", "POST", "PATCH", "PUT"]
    assert registry.bodies == [b"hello"]  # the second attempt's, sent whole
    assert registry.lengths == [None]
    assert registry.encodings == ["chunked"]
    assert attempts == [DIGEST]  # after the body that was accepted, not before


async def test_a_blob_of_known_size_is_sent_with_its_length() -> None:
    registry = Recorder()
    async with client(registry) as c:
        await c.upload(DIGEST, 5, body_of(b"hello"), "layer 1")
    assert (registry.lengths, registry.encodings) == (["5"], [None])


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        (httpx.Response(200, json={"name": "team/app", "tags": ["v1"]}), True),
        (httpx.Response(200, json={"name": "team/app", "tags": []}), False),
        (httpx.Response(200, json={"name": "team/app", "tags": None}), False),
        (errors(404, "NAME_UNKNOWN", "repository name not known to registry"), False),
        (errors(403, "DENIED"), None),
        (httpx.Response(200, content=b"not json"), None),
        (httpx.Response(503), None),  # every attempt
    ],
)
async def test_a_repository_with_no_tag_is_new_and_one_the_registry_wont_list_may_not_be(
    answer: httpx.Response, expected: bool | None
) -> None:
    asked: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        asked.append(f"{request.method} {request.url.path}?{request.url.query.decode()}")
        return answer

    async with client(handler) as c:
        assert await c.has_tags() is expected
    assert asked[0] == "GET /v2/team/app/tags/list?n=1"


@pytest.mark.parametrize(
    "failure",
    [
        httpx.Response(503),
        httpx.Response(429, headers={"Retry-After": "0"}),
        httpx.ConnectError("connection refused"),
        httpx.ReadError("connection reset"),
    ],
)
async def test_a_failed_patch_restarts_the_upload_from_a_new_post(
    failure: httpx.Response | Exception,
) -> None:
    registry = Recorder({"PATCH 1": failure})
    async with client(registry) as c:
        await c.upload(DIGEST, 5, body_of(b"hello"), "layer 1")
    assert registry.seen == ["POST", "PATCH", "POST", "PATCH", "PUT"]


async def test_a_refusal_is_not_retried_and_names_registry_repository_blob_and_code() -> None:
    registry = Recorder({"PUT 1": errors(400, "DIGEST_INVALID", "provided digest did not match")})
    async with client(registry) as c:
        with pytest.raises(RegistryError) as caught:
            await c.upload(DIGEST, 5, body_of(b"hello"), f"layer 2 {DIGEST}")
    assert registry.seen == ["POST", "PATCH", "PUT"]
    message = str(caught.value)
    assert message.startswith(f"r.test:5000/team/app: layer 2 {DIGEST}: completing the upload")
    assert "DIGEST_INVALID: provided digest did not match" in message


@pytest.mark.parametrize(
    ("response", "said"),
    [
        (errors(401, "UNAUTHORIZED", "authentication required"), "authentication required"),
        (errors(403, "DENIED", "requested access to the resource is denied"), "denied (403)"),
        (errors(404, "NAME_UNKNOWN", "repository name not known"), "no such repository"),
    ],
)
async def test_auth_and_repository_refusals_are_one_line(
    response: httpx.Response, said: str
) -> None:
    registry = Recorder({"POST 1": response})
    async with client(registry) as c:
        with pytest.raises(RegistryError) as caught:
            await c.upload(DIGEST, 5, body_of(b"hello"), "layer 1")
    assert registry.seen == ["POST"]
    assert str(caught.value).startswith("r.test:5000/team/app: layer 1: starting the upload")
    assert said in str(caught.value)
    assert "\n" not in str(caught.value)


async def test_a_registry_failing_every_attempt_ends_with_the_count() -> None:
    registry = Recorder({f"POST {n}": httpx.Response(500) for n in range(1, 10)})
    async with client(registry) as c:
        with pytest.raises(RegistryError, match=r"500 Internal Server Error \(tried 3 times\)"):
            await c.upload(DIGEST, 5, body_of(b"hello"), "layer 1")
    assert registry.seen == ["POST"] * 3


async def test_a_body_that_fails_is_not_retried() -> None:
    async def body() -> AsyncGenerator[bytes, None]:
        yield b"he"
        raise ChangedError("nix/store/x: changed")

    registry = Recorder()
    async with client(registry) as c:
        with pytest.raises(ChangedError):
            await c.upload(DIGEST, 5, body, "layer 1")
    assert registry.seen.count("POST") == 1


async def test_head_says_present_or_missing_and_a_manifest_is_put_once() -> None:
    seen: list[tuple[str, str]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append((request.method, request.url.path))
        if request.method == "HEAD":
            return httpx.Response(200 if request.url.path.endswith(DIGEST) else 404)
        assert request.headers["Content-Type"] == "application/x-test"
        return httpx.Response(201, headers={"Docker-Content-Digest": "sha256:m"})

    async with client(handler) as c:
        assert await c.has_blob(DIGEST, "layer 1")
        assert not await c.has_blob("sha256:" + "cd" * 32, "layer 2")
        assert await c.put_manifest("application/x-test", b"{}", "v1") == "sha256:m"
    assert seen[-1] == ("PUT", "/v2/team/app/manifests/v1")


async def test_a_mount_the_registry_declines_cancels_its_session() -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(f"{request.method} {request.url.path}")
        if request.method == "POST":
            assert request.url.params["mount"] == DIGEST
            assert request.url.params["from"] == "team/base"
            return httpx.Response(202, headers={"Location": "/v2/team/app/blobs/uploads/u9"})
        return httpx.Response(204)

    async with client(handler) as c:
        assert not await c.mount(DIGEST, "team/base", "layer 1")
    assert seen == ["POST /v2/team/app/blobs/uploads/", "DELETE /v2/team/app/blobs/uploads/u9"]


@pytest.mark.parametrize("status", [401, 403])
async def test_a_mount_source_we_may_not_read_means_an_upload(status: int) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return errors(status, "DENIED", "requested access to the resource is denied")

    async with client(handler) as c:
        assert not await c.mount(DIGEST, "team/secret", "layer 1")
