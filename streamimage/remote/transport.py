"""Registry authentication as an httpx auth flow: anonymous, Basic, and Bearer tokens from
the challenge's realm (distribution docs/spec/auth/token.md and oauth.md).

Networking only through the requests the flow yields, so one flow serves ``httpx.Client``
and ``httpx.AsyncClient``. Rule 1: one token per registry and repository, asked for every
scope the push needs up front (push and pull on the repository, pull on each mount source),
reused until it expires, so a push pays one 401 round trip, not one per request (GGCR
pkg/v1/remote/transport/bearer.go). Rule 2: a refusal is an AuthError naming the registry
and repository; no secret or token reaches a message.
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncGenerator, Generator, Sequence
from dataclasses import dataclass
from time import monotonic

import httpx

from streamimage.errors import AuthError
from streamimage.remote.authn import Credentials
from streamimage.remote.challenge import (
    Challenge,
    merge_scopes,
    parse_challenges,
    repository_scope,
)

# The token spec: "expires_in ... If omitted, defaults to 60 seconds".
DEFAULT_TOKEN_LIFETIME = 60.0  # seconds
# A token this close to its end is fetched anew before a request, not after its 401: a
# streamed upload body can't always be sent twice.
TOKEN_MARGIN = 10.0  # seconds
OAUTH_CLIENT_ID = "streamimage"  # oauth.md: client_id is required, any name will do
DETAIL_CHARS = 200  # of a registry's own error message, in ours
# Marks the flow's own requests to a token realm: their bodies are read before the flow
# sees them (httpx hands a flow unread responses).
TOKEN_REQUEST = "streamimage.token_request"


@dataclass(frozen=True, slots=True)
class _Token:
    value: str
    renew_at: float  # monotonic(): fetched anew before a request after this


class RegistryAuth(httpx.Auth):
    """Authenticates the requests of one push to ``registry`` (``HOST[:PORT]``).

    ``credentials`` None is anonymous; ``mount_from`` names the repositories a blob may be
    mounted from (their pull scope joins the token). On a 401 the ``WWW-Authenticate``
    challenge decides: ``Basic`` resends with the credentials; ``Bearer`` fetches a token
    from its realm (GET with Basic credentials, or anonymous; with an identity token an
    OAuth2 ``refresh_token`` POST) and resends with it; later requests carry the cached
    Basic header or token from the start.

    Raises (from the client's send):
        AuthError: a 403; a 401 that fresh credentials don't cure; Basic asked without
            credentials; a token server refusing or answering no token; a challenge of
            another scheme or without a realm.
    """

    def __init__(
        self,
        registry: str,
        repository: str,
        credentials: Credentials | None,
        *,
        mount_from: Sequence[str] = (),
    ) -> None:
        self.registry = registry
        self.repository = repository
        self._credentials = credentials
        self._scopes = merge_scopes(
            [
                repository_scope(repository, ("pull", "push")),
                *(repository_scope(source, ("pull",)) for source in mount_from),
            ]
        )
        self._basic: str | None = None  # the Authorization header, once Basic was asked
        self._bearer: Challenge | None = None  # the last Bearer challenge: realm, service
        self._token: _Token | None = None

    def __repr__(self) -> str:
        return f"RegistryAuth({self.registry!r}, {self.repository!r}, {self._credentials!r})"

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        if self._bearer is not None and not self._token_fresh():
            yield from self._fetch_token(self._bearer)
        self._authorize(request)
        # what this request carried, not what the cache holds by the time its answer comes
        # (other requests of the push run their flows meanwhile)
        sent_basic = self._basic is not None and request.headers.get("Authorization") == self._basic
        response = yield request
        fetched_for: tuple[str, ...] | None = None  # the scopes of a token got for this request
        while True:
            if response.status_code == 403:
                raise AuthError(self._refusal("access denied", response))
            if response.status_code != 401:
                return
            challenges = parse_challenges(response.headers.get_list("www-authenticate"))
            chosen = _choose(challenges)
            if chosen is None:
                schemes = ", ".join(c.scheme for c in challenges) or "none"
                raise AuthError(self._refusal(f"no usable challenge ({schemes})", response))
            if chosen.scheme == "basic":
                if sent_basic:
                    raise AuthError(self._refusal("credentials refused", response))
                self._basic = self._basic_header()
                sent_basic = True
            else:
                self._scopes = merge_scopes([*self._scopes, chosen.params.get("scope", "")])
                if fetched_for == self._scopes:
                    reason = "token refused" if self._credentials else "anonymous access refused"
                    raise AuthError(self._refusal(reason, response))
                self._bearer = chosen
                yield from self._fetch_token(chosen)
                fetched_for = self._scopes
            self._authorize(request)
            response = yield request

    def sync_auth_flow(
        self, request: httpx.Request
    ) -> Generator[httpx.Request, httpx.Response, None]:
        flow = self.auth_flow(request)
        request = next(flow)
        while True:
            response = yield request
            if _wants_body(response):
                response.read()
            try:
                request = flow.send(response)
            except StopIteration:
                return

    async def async_auth_flow(
        self, request: httpx.Request
    ) -> AsyncGenerator[httpx.Request, httpx.Response]:
        flow = self.auth_flow(request)
        request = next(flow)
        while True:
            response = yield request
            if _wants_body(response):
                await response.aread()
            try:
                request = flow.send(response)
            except StopIteration:
                return

    def _authorize(self, request: httpx.Request) -> None:
        if self._token is not None:
            request.headers["Authorization"] = f"Bearer {self._token.value}"
        elif self._basic is not None:
            request.headers["Authorization"] = self._basic

    def _token_fresh(self) -> bool:
        return self._token is not None and monotonic() < self._token.renew_at

    def _basic_header(self) -> str:
        credentials = self._credentials
        if credentials is None or not (credentials.username or credentials.password):
            raise AuthError(
                f"{self.registry}/{self.repository}: the registry asks for a username and "
                "password (Basic auth) and none were found (see README: Registry credentials)"
            )
        pair = f"{credentials.username}:{credentials.password}".encode()
        return "Basic " + base64.b64encode(pair).decode()

    def _fetch_token(self, challenge: Challenge) -> Generator[httpx.Request, httpx.Response, None]:
        """Ask the challenge's realm for a token with every scope we need and cache it."""
        realm = challenge.params.get("realm")
        if not realm:
            raise AuthError(f"{self.registry}/{self.repository}: Bearer challenge without realm")
        service = challenge.params.get("service")
        credentials = self._credentials
        if credentials is not None and credentials.identity_token:
            response = yield self._oauth_request(realm, service, credentials.identity_token)
            # oauth.md is optional for token servers: GGCR falls back to GET on a 404
            if response.status_code in (404, 405):
                response = yield self._get_token_request(realm, service)
        else:
            response = yield self._get_token_request(realm, service)
        self._token = self._read_token(realm, response)

    def _get_token_request(self, realm: str, service: str | None) -> httpx.Request:
        # token.md: one scope parameter per scope
        params = httpx.QueryParams([("scope", scope) for scope in self._scopes])
        if service:
            params = params.add("service", service)
        headers = {}
        credentials = self._credentials
        if credentials is not None and credentials.identity_token:
            # only after a token server without OAuth2: the identity token as the password
            pair = f"{credentials.username or '<token>'}:{credentials.identity_token}"
            headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
        elif credentials is not None and (credentials.username or credentials.password):
            headers["Authorization"] = self._basic_header()
        url = httpx.URL(realm).copy_merge_params(params)
        return httpx.Request("GET", url, headers=headers, extensions={TOKEN_REQUEST: True})

    def _oauth_request(self, realm: str, service: str | None, refresh: str) -> httpx.Request:
        form = {
            "grant_type": "refresh_token",
            "refresh_token": refresh,
            "client_id": OAUTH_CLIENT_ID,
            "scope": " ".join(self._scopes),  # oauth.md: space-separated
        }
        if service:
            form["service"] = service
        return httpx.Request("POST", realm, data=form, extensions={TOKEN_REQUEST: True})

    def _read_token(self, realm: str, response: httpx.Response) -> _Token:
        where = f"{self.registry}/{self.repository}: token server {_without_query(realm)}"
        if response.status_code in (401, 403):
            who = "credentials" if self._credentials else "anonymous access"
            source = f" from {self._credentials.source}" if self._credentials else ""
            raise AuthError(f"{where}: {who}{source} refused (HTTP {response.status_code})")
        if response.status_code != 200:
            raise AuthError(f"{where}: HTTP {response.status_code}")
        try:
            answer = json.loads(response.content)
            # some servers set access_token (the OAuth2 name) instead of token (GGCR #54)
            value = answer.get("token") or answer.get("access_token")
            lifetime = float(answer.get("expires_in") or DEFAULT_TOKEN_LIFETIME)
        except (ValueError, AttributeError, TypeError):
            raise AuthError(f"{where}: answered no JSON token") from None
        if not isinstance(value, str) or not value:
            raise AuthError(f"{where}: answered no token")
        # renewed TOKEN_MARGIN before its end, or half way through a shorter life
        renew_after = max(lifetime - TOKEN_MARGIN, lifetime / 2)
        return _Token(value, monotonic() + renew_after)

    def _refusal(self, what: str, response: httpx.Response) -> str:
        request = response.request
        line = f"{self.registry}/{self.repository}: {what} (HTTP {response.status_code} for "
        line += f"{request.method} {request.url.path})"
        said = _registry_message(response)
        if said:
            line += f": {said}"
        if self._credentials is not None and self._credentials.source:
            line += f"; credentials from {self._credentials.source}"
        return line


def _choose(challenges: Sequence[Challenge]) -> Challenge | None:
    """Bearer over Basic when a registry offers both; nothing else is spoken."""
    by_scheme = {c.scheme: c for c in reversed(challenges)}
    return by_scheme.get("bearer") or by_scheme.get("basic")


def _wants_body(response: httpx.Response) -> bool:
    return bool(response.request.extensions.get(TOKEN_REQUEST)) or response.status_code in (
        401,
        403,
    )


def _registry_message(response: httpx.Response) -> str:
    """The first ``errors[].message`` of a distribution error body, if there is one."""
    try:
        errors = json.loads(response.content)["errors"]
        message = errors[0]["message"]
    except (ValueError, KeyError, IndexError, TypeError, httpx.ResponseNotRead):
        return ""
    return str(message)[:DETAIL_CHARS] if message else ""


def _without_query(url: str) -> str:
    return str(httpx.URL(url).copy_with(query=None))
