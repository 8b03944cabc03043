"""A token server for docker-registry's ``token`` auth (distribution docs/spec/auth/
token.md, jwt.md, oauth.md), run by a test on 127.0.0.1 in a thread, over TLS.

It checks Basic credentials (or an OAuth2 refresh token), grants every scope asked for to
a known user and nothing to anyone else, and logs each request (``requests``) so tests
can count tokens and read the scopes asked for. Tokens are ES256 JWTs whose header
carries the signing certificate (``x5c``): distribution 2.8 verifies that chain against
its ``rootcertbundle`` (registry/auth/token: VerifySigningKey), so the registry needs only
the CA's certificate.
"""

from __future__ import annotations

import base64
import json
import ssl
import threading
import time
import urllib.parse
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

ISSUER = "streamimage-test-issuer"
SERVICE = "streamimage-test-registry"
TOKEN_LIFETIME = 300  # seconds
P256_BYTES = 32  # each of r and s in an ES256 signature (RFC 7518 section 3.4)


@dataclass(frozen=True)
class TokenRequest:
    """One request the token server answered: who asked (None: anonymous; ``<refresh>``:
    by refresh token), for what, and what it answered."""

    method: str
    user: str | None
    scopes: tuple[str, ...]
    status: int


@dataclass
class TokenServer:
    url: str  # the realm
    ca_bundle: Path  # the registry's rootcertbundle
    requests: list[TokenRequest] = field(default_factory=list)

    def registry_auth(self) -> dict[str, Any]:
        """The ``auth`` section of a docker-registry config that trusts this server."""
        return {
            "token": {
                "realm": self.url,
                "service": SERVICE,
                "issuer": ISSUER,
                "rootcertbundle": str(self.ca_bundle),
            }
        }


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _access(scopes: tuple[str, ...]) -> list[dict[str, Any]]:
    """token.md's ``access`` claim: one entry per resource, its actions."""
    entries = []
    for scope in scopes:
        for word in scope.split():
            kind, _, rest = word.partition(":")
            name, _, actions = rest.rpartition(":")
            entries.append({"type": kind, "name": name, "actions": actions.split(",")})
    return entries


def _sign(signer: trustme.LeafCert, claims: Mapping[str, Any]) -> str:
    certificate = x509.load_pem_x509_certificate(signer.cert_chain_pems[0].bytes())
    key = serialization.load_pem_private_key(signer.private_key_pem.bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    der = certificate.public_bytes(serialization.Encoding.DER)
    header = {"typ": "JWT", "alg": "ES256", "x5c": [base64.b64encode(der).decode()]}
    signed = f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
    r, s = decode_dss_signature(key.sign(signed.encode(), ec.ECDSA(hashes.SHA256())))
    raw = r.to_bytes(P256_BYTES, "big") + s.to_bytes(P256_BYTES, "big")  # JWS wants r || s
    return f"{signed}.{_b64url(raw)}"


@contextmanager
def token_server(
    ca: trustme.CA,
    directory: Path,
    users: Mapping[str, str],
    *,
    refresh_tokens: Mapping[str, str] | None = None,
) -> Iterator[TokenServer]:
    """Serve tokens at ``https://127.0.0.1:PORT/token`` until the block ends.

    ``users`` maps username to password; ``refresh_tokens`` maps a refresh token to the
    user it stands for (the OAuth2 POST). Anonymous requests get a token with no access.
    """
    signer = ca.issue_cert("token-signer.streamimage.test")
    ca_bundle = directory / "token-ca.pem"
    ca.cert_pem.write_to_path(str(ca_bundle))
    refresh_users = dict(refresh_tokens or {})
    log: list[TokenRequest] = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass  # the test reads ``requests`` instead

        def _answer(self, user: str | None, scopes: tuple[str, ...], status: int) -> None:
            log.append(TokenRequest(self.command, user, scopes, status))
            if status != 200:
                body = json.dumps({"details": "refused"}).encode()
            else:
                now = int(time.time())
                claims = {
                    "iss": ISSUER,
                    "sub": user or "",
                    "aud": SERVICE,
                    "exp": now + TOKEN_LIFETIME,
                    "nbf": now - 10,
                    "iat": now,
                    "jti": f"{now}-{len(log)}",
                    "access": _access(scopes) if user else [],
                }
                token = _sign(signer, claims)
                body = json.dumps({"token": token, "expires_in": TOKEN_LIFETIME}).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
            scopes = tuple(query.get("scope", []))
            header = self.headers.get("Authorization", "")
            if not header:
                self._answer(None, scopes, 200)
                return
            scheme, _, encoded = header.partition(" ")
            user, _, password = base64.b64decode(encoded).decode().partition(":")
            good = scheme == "Basic" and users.get(user) == password
            self._answer(user, scopes, 200 if good else 401)

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            form = urllib.parse.parse_qs(self.rfile.read(length).decode())
            scopes = tuple(form.get("scope", [""])[0].split())
            refresh = form.get("refresh_token", [""])[0]
            user = refresh_users.get(refresh)
            good = form.get("grant_type") == ["refresh_token"] and user is not None
            self._answer(user if good else "<refresh>", scopes, 200 if good else 401)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, name="token-server", daemon=True)
    thread.start()
    try:
        port = server.server_address[1]
        yield TokenServer(f"https://127.0.0.1:{port}/token", ca_bundle, log)
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
