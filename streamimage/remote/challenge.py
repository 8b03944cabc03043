"""``WWW-Authenticate`` challenges (RFC 7235 section 4.1) and the distribution token scopes
(distribution docs/spec/auth/scope.md), as values.

PURE: no IO, no httpx. Rule: a header this can't read yields no challenge rather than an
exception; the caller decides what a 401 without a usable challenge means.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

# RFC 7230 section 3.2.6: tchar, and a quoted-string with its backslash escapes.
_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_QUOTED = r'"((?:[^"\\]|\\.)*)"'
_SEPARATORS = re.compile(r"[\s,]*")
_PARAM = re.compile(rf"({_TOKEN})\s*=\s*(?:{_QUOTED}|({_TOKEN}))\s*(?=,|$)")
_SCHEME = re.compile(rf"({_TOKEN})(?=\s|,|$)")
_TOKEN68 = re.compile(r"[A-Za-z0-9._~+/-]+=*\s*(?=,|$)")
_ESCAPE = re.compile(r"\\(.)")


@dataclass(frozen=True, slots=True)
class Challenge:
    """One challenge: ``scheme`` lower-cased (``basic``, ``bearer``), ``params`` keyed by
    lower-cased name (``realm``, ``service``, ``scope``, ``error``)."""

    scheme: str
    params: Mapping[str, str] = field(default_factory=dict)


def parse_challenges(values: Iterable[str]) -> list[Challenge]:
    """Every challenge in the ``WWW-Authenticate`` header values, in order.

    A value may hold several challenges (``Bearer realm="a", Basic realm="b"``); a part
    that follows no grammar ends that value's parsing.
    """
    found: list[Challenge] = []
    for value in values:
        found.extend(_parse_value(value))
    return found


def _parse_value(value: str) -> list[Challenge]:
    challenges: list[Challenge] = []
    scheme: str | None = None
    params: dict[str, str] = {}
    pos = 0
    while True:
        pos = _SEPARATORS.match(value, pos).end()  # type: ignore[union-attr]  # matches ""
        if pos >= len(value):
            break
        param = _PARAM.match(value, pos)
        if param is not None and scheme is not None:
            quoted, token = param[2], param[3]
            params[param[1].lower()] = _ESCAPE.sub(r"\1", quoted) if quoted is not None else token
            pos = param.end()
            continue
        start = _SCHEME.match(value, pos)
        if start is None:
            break
        if scheme is not None:
            challenges.append(Challenge(scheme, params))
        scheme, params = start[1].lower(), {}
        pos = start.end()
        # token68 (RFC 7235: Negotiate's blob) carries nothing a registry needs: skip it
        blob = _TOKEN68.match(value, _SEPARATORS.match(value, pos).end())  # type: ignore[union-attr]
        if blob is not None and _PARAM.match(value, blob.start()) is None:
            pos = blob.end()
    if scheme is not None:
        challenges.append(Challenge(scheme, params))
    return challenges


def repository_scope(repository: str, actions: Iterable[str]) -> str:
    """``repository:NAME:ACTIONS``, the scope a token needs to act on a repository."""
    return f"repository:{repository}:{','.join(actions)}"


def merge_scopes(scopes: Iterable[str]) -> tuple[str, ...]:
    """Scopes without repeats, in first-seen order, the actions of one resource merged
    (``repository:a:pull`` and ``repository:a:push`` become ``repository:a:pull,push``).

    A challenge's ``scope`` may hold several, space-separated (the token spec's wording);
    each word counts as one scope here, and a word that is not ``TYPE:NAME:ACTIONS`` none.
    """
    actions: dict[str, list[str]] = {}
    for scope in scopes:
        for word in scope.split():
            resource, colon, wanted = word.rpartition(":")
            if not colon:
                continue  # not TYPE:NAME:ACTIONS: nothing a token server would grant
            merged = actions.setdefault(resource, [])
            merged.extend(a for a in wanted.split(",") if a and a not in merged)
    return tuple(f"{resource}:{','.join(acts)}" for resource, acts in actions.items())
