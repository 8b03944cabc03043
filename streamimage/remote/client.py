"""A registry client over the OCI distribution API (distribution-spec's spec.md; GGCR's
``remote``): ask for a blob (HEAD), mount one from another repository, upload one
streamed, put a manifest. It knows no layer and no image.

ASYNC (httpx over anyio); authentication is the caller's ``httpx.Auth``.
Rule 1: a request is retried, with backoff, only when the registry did not accept it: a
connection error, a 5xx or a 429; an upload is retried whole, from a new POST (a session
cut short is abandoned), and nothing is retried after a 2xx.
Rule 2: every failure is one RegistryError naming the registry and the repository (and
the blob, by the caller's ``what``), with the registry's own error code; never a secret.
"""

from __future__ import annotations

import contextlib
import math
import random
import ssl
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import quote, urljoin

import anyio
import httpx

from streamimage.errors import RegistryError, StreamImageError
from streamimage.remote.reference import Reference

T = TypeVar("T")

USER_AGENT = "streamimage"
OCTET_STREAM = "application/octet-stream"
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})  # the registry may answer later
# distribution's error codes for a repository it doesn't know (404 on an upload's POST)
NAME_UNKNOWN = "NAME_UNKNOWN"


@dataclass(frozen=True, slots=True)
class Retry:
    """How often and how patiently a request is tried: ``attempts`` in all, waiting
    ``first_delay`` seconds after the first failure, doubling up to ``max_delay``, each
    wait between half and all of that (jitter: clients failed together retry apart)."""

    attempts: int = 5
    first_delay: float = 0.5  # seconds
    max_delay: float = 8.0  # seconds; also the most a Retry-After is obeyed

    def delay(self, failures: int, retry_after: float | None = None) -> float:
        if retry_after is not None:
            return min(retry_after, self.max_delay)
        ceiling = min(self.first_delay * 2.0 ** (failures - 1), self.max_delay)
        return ceiling * (0.5 + random.random() / 2)


# connect: a registry that doesn't answer; read and write: a registry that stops
# answering in the middle (a blob's PUT returns once the registry has it all)
TIMEOUT = httpx.Timeout(60.0, connect=30.0, pool=None)


class _Again(Exception):
    """A failure worth another attempt: what to say if it was the last one."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After", "")
    try:
        seconds = float(value)
    except ValueError:
        return None  # absent, or an HTTP date: our own backoff then
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


def _untrusted(exc: BaseException) -> str:
    """What OpenSSL said if ``exc`` came of a certificate it could not verify, else ""."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError):
            return str(seen.verify_message or seen)
        seen = seen.__cause__ or seen.__context__
    return ""


def _registry_errors(response: httpx.Response) -> str:
    """The registry's own account: ``CODE: message`` of its errors document (spec.md's
    error codes), else the HTTP status."""
    try:
        document: Any = response.json()
        errors = document["errors"]
        said = "; ".join(f"{e['code']}: {e.get('message', '')}".rstrip(": ") for e in errors)
    except Exception:  # not JSON, or not an errors document: the status says it
        said = ""
    return said or f"{response.status_code} {response.reason_phrase}"


def _error_code(response: httpx.Response) -> str | None:
    try:
        document: Any = response.json()
        code = document["errors"][0]["code"]
    except Exception:  # not an errors document
        return None
    return code if isinstance(code, str) else None


class RegistryClient:
    """One repository of one registry (``reference``), over one connection pool.

    ``auth`` is handed to httpx as is (it answers the registry's challenges); with
    ``tls_verify`` False, HTTPS certificates are not checked and plain HTTP is used when
    the registry doesn't speak TLS, as ``--tls-verify=false`` means to skopeo and podman.
    Use as ``async with``.
    """

    def __init__(
        self,
        reference: Reference,
        *,
        auth: httpx.Auth | None = None,
        tls_verify: bool = True,
        retry: Retry = Retry(),
        timeout: httpx.Timeout = TIMEOUT,
        transport: httpx.AsyncBaseTransport | None = None,  # tests: httpx.MockTransport
    ) -> None:
        self.reference = reference
        self.name = f"{reference.registry}/{reference.repository}"  # for messages
        self._tls_verify = tls_verify
        self._retry = retry
        self._base = f"https://{reference.api_host}"
        self._http = httpx.AsyncClient(
            auth=auth,
            # the system's trust store (OpenSSL's, as skopeo and podman use the system's),
            # not httpx's default of certifi's bundle
            verify=ssl.create_default_context() if tls_verify else False,
            timeout=timeout,
            headers={"User-Agent": USER_AGENT},
            follow_redirects=False,  # a HEAD or PUT is answered by the registry itself
            transport=transport,
        )

    async def __aenter__(self) -> RegistryClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    def _url(self, path: str) -> str:
        return f"{self._base}/v2/{self.reference.repository}/{path}"

    def _absolute(self, location: str) -> str:
        """An upload's Location, which may be relative to the registry (spec.md)."""
        return urljoin(f"{self._base}/", location)

    async def _attempts(self, what: str, attempt: Callable[[], Awaitable[T]]) -> T:
        """``attempt()`` until it answers, at most ``retry.attempts`` times.

        Raises:
            RegistryError: the last attempt failed too, or a failure not worth retrying.
        """
        failures = 0
        while True:
            try:
                return await attempt()
            except _Again as again:
                failures += 1
                if failures >= self._retry.attempts:
                    raise RegistryError(
                        f"{self.name}: {what}: {again} (tried {failures} times)"
                    ) from None
                await anyio.sleep(self._retry.delay(failures, again.retry_after))

    async def _send(self, method: str, url: str, what: str, **kwargs: Any) -> httpx.Response:
        """One request; a connection error or a status worth retrying raises _Again."""
        try:
            response = await self._http.request(method, url, **kwargs)
        except StreamImageError:
            raise  # the body's own failure (a layer changed): never retried
        except httpx.TransportError as exc:
            if _untrusted(exc):  # no use retrying
                raise RegistryError(
                    f"{self.name}: {what}: the registry's TLS certificate is not trusted "
                    f"({_untrusted(exc)}); --tls-verify=false skips the check"
                ) from None
            raise _Again(f"{type(exc).__name__}: {exc}" if str(exc) else repr(exc)) from exc
        if response.status_code in RETRY_STATUSES:
            raise _Again(_registry_errors(response), _retry_after(response))
        return response

    def _refused(self, response: httpx.Response, what: str) -> RegistryError:
        """The one-line error of a response that is an answer, not a transient failure."""
        status, said = response.status_code, _registry_errors(response)
        if status == 401:
            why = "authentication required or refused (401)"
        elif status == 403:
            why = "access denied (403)"
        elif status == 404 and _error_code(response) == NAME_UNKNOWN:
            why = "no such repository (404)"
        else:
            why = f"refused ({status})"
        return RegistryError(f"{self.name}: {what}: {why}: {said}")

    async def ping(self) -> None:
        """``GET /v2/``: the registry speaks the distribution API (a 401 says so too: the
        caller's auth answers challenges). With ``tls_verify`` False, a registry that
        doesn't speak TLS is spoken to in plain HTTP from here on.

        Raises:
            RegistryError: it can't be reached, or isn't a registry.
        """

        async def attempt() -> httpx.Response:
            try:
                return await self._send("GET", f"{self._base}/v2/", "ping")
            except _Again:
                if self._tls_verify or not self._base.startswith("https://"):
                    raise
            self._base = f"http://{self.reference.api_host}"  # insecure: try plain HTTP
            try:
                return await self._send("GET", f"{self._base}/v2/", "ping")
            except _Again:
                self._base = f"https://{self.reference.api_host}"  # both, next time
                raise

        response = await self._attempts("cannot reach the registry", attempt)
        if response.status_code not in (200, 401):
            raise self._refused(response, "not a registry (GET /v2/)")

    async def has_blob(self, digest: str, what: str) -> bool:
        """``HEAD`` the blob: True if the repository has it.

        Raises:
            RegistryError: neither yes nor no.
        """
        url = self._url(f"blobs/{digest}")

        async def attempt() -> bool:
            # some registries answer a blob's HEAD with a redirect to its storage
            response = await self._send("HEAD", url, what, follow_redirects=True)
            if response.status_code == 200:
                return True
            if response.status_code == 404:
                return False
            raise self._refused(response, f"{what}: HEAD")

        return await self._attempts(f"{what}: HEAD", attempt)

    async def mount(self, digest: str, source: str, what: str) -> bool:
        """Mount the blob from repository ``source`` of the same registry: True if
        mounted; False if the registry started an upload instead (it doesn't have the
        blob there, or won't mount): that session is cancelled.

        Raises:
            RegistryError: refused.
        """
        url = self._url(f"blobs/uploads/?mount={quote(digest)}&from={quote(source)}")

        async def attempt() -> bool:
            response = await self._send("POST", url, what)
            if response.status_code == 201:
                return True
            if response.status_code in (401, 403):
                return False  # not allowed to read ``source``: upload it instead
            if response.status_code == 202:
                location = response.headers.get("Location")
                if location:  # best effort: an abandoned session expires anyway
                    with contextlib.suppress(httpx.TransportError):
                        await self._http.delete(self._absolute(location))
                return False
            raise self._refused(response, f"{what}: mount from {source}")

        return await self._attempts(f"{what}: mount from {source}", attempt)

    async def upload(
        self,
        digest: str | Callable[[], str],
        size: int | None,
        body: Callable[[], AsyncGenerator[bytes, None]],
        what: str,
    ) -> None:
        """Upload a blob: ``POST`` a session, one streamed ``PATCH`` of ``body()`` (its
        ``size`` bytes), then ``PUT ?digest=``, which the registry accepts only if the bytes
        hash to ``digest``. A failed attempt starts again from a new POST and a new
        ``body()``. A blob hashed as it is sent: ``size`` None (the PATCH goes in chunked
        encoding, as docker's, containers/image's for a layer it compresses as it pushes,
        and GGCR's stream layers go) and ``digest`` a function, asked once the body is sent.

        Raises:
            RegistryError: refused (a wrong digest: the registry's DIGEST_INVALID), or
                failed every attempt.
            StreamImageError: what ``body()`` raises (ChangedError: a layer changed).
        """

        async def attempt() -> None:
            start = await self._send("POST", self._url("blobs/uploads/"), what)
            if start.status_code != 202 or "Location" not in start.headers:
                raise self._refused(start, f"{what}: starting the upload")
            location = self._absolute(start.headers["Location"])
            stream = body()
            try:
                # one streamed PATCH, its length known when it is: no chunked encoding,
                # which some proxies refuse; memory: one block of the body at a time
                headers = {"Content-Type": OCTET_STREAM}
                if size is not None:
                    headers["Content-Length"] = str(size)
                sent = await self._send("PATCH", location, what, content=stream, headers=headers)
            finally:
                await stream.aclose()
            if sent.status_code != 202 or "Location" not in sent.headers:
                raise self._refused(sent, f"{what}: sending its bytes")
            location = self._absolute(sent.headers["Location"])
            separator = "&" if "?" in location else "?"
            found = digest if isinstance(digest, str) else digest()
            commit = f"{location}{separator}digest={quote(found)}"
            done = await self._send("PUT", commit, what, headers={"Content-Length": "0"})
            if done.status_code != 201:
                raise self._refused(done, f"{what}: completing the upload")

        await self._attempts(f"{what}: upload", attempt)

    async def has_tags(self) -> bool | None:
        """Whether the repository has a tag (``GET tags/list?n=1``): False for one the
        registry doesn't know (404) or that has none, which holds no blob an image was
        pushed with; None if the registry won't say (then it may hold some)."""
        url = self._url("tags/list?n=1")

        async def attempt() -> bool | None:
            response = await self._send("GET", url, "tags")
            if response.status_code == 404:
                return False
            if response.status_code != 200:
                return None
            try:
                document: Any = response.json()
                return bool(document.get("tags"))
            except Exception:  # not the spec's document: don't guess
                return None

        try:
            return await self._attempts("tags", attempt)
        except RegistryError:
            return None

    async def put_manifest(self, media_type: str, data: bytes, reference: str) -> str:
        """``PUT`` the manifest under ``reference`` (a tag or a digest); returns the
        digest the registry says it has (Docker-Content-Digest), or "".

        Raises:
            RegistryError: refused (a blob it names is missing: MANIFEST_BLOB_UNKNOWN).
        """
        url = self._url(f"manifests/{reference}")
        what = f"manifest {reference}"

        async def attempt() -> str:
            headers = {"Content-Type": media_type}
            response = await self._send("PUT", url, what, content=data, headers=headers)
            if response.status_code != 201:
                raise self._refused(response, f"{what}: PUT")
            return str(response.headers.get("Docker-Content-Digest", ""))

        return await self._attempts(f"{what}: PUT", attempt)
