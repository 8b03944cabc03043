"""Registry credentials where the ecosystem keeps them: containers' auth.json, Docker's
config.json, and the ``docker-credential-NAME`` helpers they name.

IO (reads files, runs helpers). Rule 1: the files, their order and the key matching are
containers/image's (pkg/docker/config/config.go: getAuthFilePaths, findCredentialsInFile);
``credsStore`` is Docker's (cli/config/configfile). Rule 2: no secret reaches a message
or a repr; a malformed file is an error naming the file and key, not skipped silently.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import shutil
import subprocess
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from streamimage.errors import CredentialsError

HELPER_TIMEOUT = 60.0  # seconds for a credential helper's `get`: a keychain may prompt
HELPER_PREFIX = "docker-credential-"
# docker-credential-helpers' ErrCredentialsNotFound text: "no credentials", not a failure
NOT_FOUND = "credentials not found in native keychain"
# A helper's Username that means Secret is an identity (refresh) token (containers/image
# getCredsFromCredHelper, Docker's credentials.tokenUsername)
TOKEN_USERNAME = "<token>"
# Docker Hub answers to several names; auth files and helpers know it by these
DOCKER_HUB = "index.docker.io"
DOCKER_HUB_ALIASES = frozenset({"docker.io", "registry-1.docker.io", DOCKER_HUB})
DOCKER_HUB_SERVER = "https://index.docker.io/v1/"  # the key `docker login` writes


@dataclass(frozen=True, slots=True)
class Credentials:
    """What to present to a registry: a username and password, or an identity token (an
    OAuth2 refresh token, from ``identitytoken`` or a helper's ``<token>`` username).
    ``source`` says where they were found, for messages. The repr shows no secret."""

    username: str = ""
    password: str = field(default="", repr=False)
    identity_token: str = field(default="", repr=False)
    source: str = ""


@dataclass(frozen=True, slots=True)
class AuthFile:
    """One place credentials may be kept; ``legacy``: ``~/.dockercfg``, whose top level is
    the ``auths`` map."""

    path: Path
    legacy: bool = False


def auth_files(environ: Mapping[str, str] = os.environ) -> list[AuthFile]:
    """The files searched, in order (containers/image getAuthFilePaths, on Linux):

    ``$REGISTRY_AUTH_FILE`` alone when set (podman and skopeo pass it as ``--authfile``,
    and a file the user names replaces the defaults); else ``$XDG_RUNTIME_DIR/containers/
    auth.json`` (``/run/containers/UID/auth.json`` without it), ``$XDG_CONFIG_HOME/
    containers/auth.json`` (``~/.config/...``), ``$DOCKER_CONFIG/config.json``
    (``~/.docker/config.json``), ``~/.dockercfg``. A file that doesn't exist is skipped.
    """
    named = environ.get("REGISTRY_AUTH_FILE")
    if named:
        return [AuthFile(Path(named))]
    home = Path(environ.get("HOME") or Path.home())
    runtime_dir = environ.get("XDG_RUNTIME_DIR")
    if runtime_dir:
        runtime = Path(runtime_dir) / "containers" / "auth.json"
    else:
        runtime = Path(f"/run/containers/{os.getuid()}/auth.json")
    config_home = Path(environ.get("XDG_CONFIG_HOME") or home / ".config")
    docker_dir = Path(environ.get("DOCKER_CONFIG") or home / ".docker")
    return [
        AuthFile(runtime),
        AuthFile(config_home / "containers" / "auth.json"),
        AuthFile(docker_dir / "config.json"),
        AuthFile(home / ".dockercfg", legacy=True),
    ]


def credentials_for(
    registry: str, repository: str, *, environ: Mapping[str, str] = os.environ
) -> Credentials | None:
    """The credentials for ``registry`` (``HOST[:PORT]``) and ``repository``, or None.

    The first file (``auth_files``) that has any wins. In each: a ``credHelpers`` entry for
    the registry runs that helper; else ``credsStore`` runs its helper (Docker keeps the
    secrets there and leaves ``auths`` entries empty); else ``auths``: the most specific
    of ``HOST/NS/REPO``, ``HOST/NS``, ``HOST`` (containers' repository-scoped keys), then
    the URL forms ``https://HOST``, ``HOST/v1/`` Docker wrote. A helper that answers
    "credentials not found" gives none, and the search goes on.

    Raises:
        CredentialsError: a file is unreadable or malformed, or a helper is missing, fails
            or answers something that isn't credentials.
    """
    context = f"credentials for {registry}/{repository}"
    for auth_file in auth_files(environ):
        content = _load(auth_file, context)
        if content is None:
            continue
        found = _from_file(content, auth_file, registry, repository, context, environ)
        if found is not None:
            return found
    return None


def _load(auth_file: AuthFile, context: str) -> dict[str, Any] | None:
    try:
        raw = auth_file.path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise CredentialsError(f"{context}: {auth_file.path}: unreadable: {exc.strerror}") from exc
    try:
        content = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        # JSONDecodeError's text names the position only, never the document
        where = f" at line {exc.lineno}" if isinstance(exc, json.JSONDecodeError) else ""
        raise CredentialsError(f"{context}: {auth_file.path}: not JSON{where}") from None
    if not isinstance(content, dict):
        raise CredentialsError(f"{context}: {auth_file.path}: not a JSON object")
    return {"auths": content} if auth_file.legacy else content


def _from_file(
    content: dict[str, Any],
    auth_file: AuthFile,
    registry: str,
    repository: str,
    context: str,
    environ: Mapping[str, str],
) -> Credentials | None:
    path = auth_file.path
    helpers = _mapping(content, "credHelpers", path, context)
    for key in (registry, _normalize_registry(registry)):
        helper = helpers.get(key)
        if helper is not None:
            if not isinstance(helper, str) or not helper:
                raise CredentialsError(f"{context}: {path}: credHelpers[{key!r}] is not a name")
            return _run_helper(helper, registry, f"credHelpers in {path}", context, environ)
    store = content.get("credsStore")
    if store is not None:
        if not isinstance(store, str):
            raise CredentialsError(f"{context}: {path}: credsStore is not a name")
        if store:
            found = _run_helper(store, registry, f"credsStore in {path}", context, environ)
            if found is not None:
                return found
    auths = _mapping(content, "auths", path, context)
    for key in _matching_keys(auths, registry, repository, legacy=auth_file.legacy):
        found = _decode_entry(auths[key], key, path, context)
        if found is not None:
            return found
    return None


def _mapping(content: dict[str, Any], name: str, path: Path, context: str) -> dict[str, Any]:
    value = content.get(name)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise CredentialsError(f"{context}: {path}: {name} is not a JSON object")
    return value


def _matching_keys(
    auths: Mapping[str, Any], registry: str, repository: str, *, legacy: bool
) -> Iterator[str]:
    """The ``auths`` keys for this repository, best first: exact repository-scoped keys from
    the most specific, then any key that names the registry as a URL (containers/image
    findCredentialsInFile; legacy files knew hosts only)."""
    if not legacy:
        name = f"{registry}/{repository}"
        while True:
            if name in auths:
                yield name
            name, slash, _ = name.rpartition("/")
            if not slash:
                break
    elif registry in auths:
        yield registry
    wanted = _normalize_registry(registry)
    yield from (key for key in auths if _normalize_key(key, legacy=legacy) == wanted)


def _normalize_key(key: str, *, legacy: bool) -> str:
    """An auths key as the registry host it names: ``https://HOST/v1/`` -> ``HOST``.

    containers/image cuts the path only after a scheme (a bare ``HOST/NS`` is a namespace
    key); a trailing ``/`` (``HOST/v1/``, as Docker wrote) also marks a URL, since no
    repository name ends in one.
    """
    stripped = key.removeprefix("http://").removeprefix("https://")
    if legacy or stripped != key or stripped.endswith("/"):
        stripped = stripped.partition("/")[0]
    return _normalize_registry(stripped)


def _normalize_registry(registry: str) -> str:
    return DOCKER_HUB if registry in DOCKER_HUB_ALIASES else registry


def _decode_entry(entry: Any, key: str, path: Path, context: str) -> Credentials | None:
    """An ``auths`` entry: ``auth`` is base64 ``user:password``; ``identitytoken`` an OAuth2
    refresh token. An empty entry (``{}``: Docker's mark of a helper) is none."""
    where = f"{context}: {path}: auths[{key!r}]"
    if not isinstance(entry, dict):
        raise CredentialsError(f"{where} is not a JSON object")
    encoded = entry.get("auth") or ""
    identity_token = entry.get("identitytoken") or ""
    if not isinstance(encoded, str) or not isinstance(identity_token, str):
        raise CredentialsError(f"{where}: auth and identitytoken must be strings")
    username = password = ""
    if encoded:
        try:
            decoded = base64.b64decode(encoded, validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            raise CredentialsError(f"{where}.auth is not base64 of UTF-8 text") from None
        username, colon, password = decoded.partition(":")
        if not colon:
            raise CredentialsError(f"{where}.auth is not base64 of USER:PASSWORD")
        password = password.strip("\x00")  # as containers/image decodeDockerAuth
    if not (username or password or identity_token):
        return None
    source = f"{path} ({key})"
    return Credentials(username, password, identity_token, source)


def _run_helper(
    name: str, registry: str, configured: str, context: str, environ: Mapping[str, str]
) -> Credentials | None:
    """``docker-credential-NAME get``, the server on stdin (docker-credential-helpers'
    protocol): JSON ``{"Username", "Secret"}``, or "credentials not found"."""
    program = HELPER_PREFIX + name
    where = f"{context}: {program} ({configured})"
    found = shutil.which(program, path=environ.get("PATH", os.defpath))
    if found is None:
        raise CredentialsError(f"{where}: not found on PATH")
    server = DOCKER_HUB_SERVER if _normalize_registry(registry) == DOCKER_HUB else registry
    try:
        done = subprocess.run(
            [found, "get"],
            input=server.encode(),
            capture_output=True,
            env=dict(environ),
            timeout=HELPER_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise CredentialsError(f"{where}: no answer in {HELPER_TIMEOUT:g} s") from None
    except OSError as exc:
        raise CredentialsError(f"{where}: can't run: {exc.strerror}") from exc
    if done.returncode != 0:
        # the helper's own message (docker-credential-helpers prints it on stdout)
        said = (done.stdout or done.stderr).decode(errors="replace").strip()
        if said == NOT_FOUND:
            return None
        first = said.splitlines()[0][:200] if said else "no message"
        raise CredentialsError(f"{where}: exited {done.returncode}: {first}")
    try:
        answer = json.loads(done.stdout)
        username, secret = answer["Username"], answer["Secret"]
        if not isinstance(username, str) or not isinstance(secret, str):
            raise TypeError
    except (ValueError, KeyError, TypeError):
        # never echo the output: it may hold the secret
        raise CredentialsError(f"{where}: answered no JSON Username and Secret") from None
    source = f"{program} ({configured})"
    if username == TOKEN_USERNAME:
        return Credentials(identity_token=secret, source=source)
    if not (username or secret):
        return None
    return Credentials(username, secret, source=source)
