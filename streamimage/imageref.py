"""Image references (``[domain[:port]/]path[:tag]``): the repo_tag an image is named by.

PURE: no I/O, no anyio; strings in, a string or a ValueError out.
Rule: the grammar is distribution/reference's (regexp.go), which docker load, podman load
and skopeo parse ``RepoTags`` with; a value they would refuse is refused here, with the
reason, before any byte is written. A name without a tag gets ``:latest``, as docker's
own commands read it: docker load and podman load refuse a RepoTags entry without a tag.
"""

from __future__ import annotations

import re

DEFAULT_TAG = "latest"
NAME_MAX = 255  # characters of the name, domain included (reference.go NameTotalLengthMax)
TAG_MAX = 128  # characters of a tag

# regexp.go, piece by piece; re.ASCII: Go's \w is [0-9A-Za-z_]
_ALPHANUMERIC = r"[a-z0-9]+"
_SEPARATOR = r"(?:[._]|__|[-]+)"
_PATH_COMPONENT = rf"{_ALPHANUMERIC}(?:{_SEPARATOR}{_ALPHANUMERIC})*"
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_HOST = rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[a-fA-F0-9:]+\])"
_DOMAIN_AND_PORT = rf"{_HOST}(?::[0-9]+)?"
_NAME = rf"(?:{_DOMAIN_AND_PORT}/)?{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*"
_TAG = rf"[\w][\w.-]{{0,{TAG_MAX - 1}}}"

NAME_RE = re.compile(_NAME, re.ASCII)
TAG_RE = re.compile(_TAG, re.ASCII)
IDENTIFIER_RE = re.compile(r"[a-f0-9]{64}")  # an image id: never a name (normalize.go)

GRAMMAR = (
    "[domain[:port]/]path[:tag], path components of lowercase letters and digits joined "
    "by '.', '_', '__' or dashes"
)


def split_repo_tag(value: str) -> tuple[str, str | None]:
    """The name and the tag of ``value``: the tag follows the last ``:`` that comes after
    the last ``/`` (``host:5000/name`` has none)."""
    name, colon, tag = value.rpartition(":")
    if not colon or "/" in tag:
        return value, None
    return name, tag


def normal_repo_tag(value: str) -> str:
    """``value`` checked against the reference grammar, as ``name:tag`` (``name`` alone
    becomes ``name:latest``).

    Raises:
        ValueError: not a valid ``name[:tag]``; the message says what is wrong.
    """
    if not value:
        raise ValueError("empty: give name:tag")
    if "@" in value:
        raise ValueError("a digest (@...) names content, not a tag: give name:tag")
    name, tag = split_repo_tag(value)
    if tag is not None:
        if not tag:
            raise ValueError("the tag after ':' is empty")
        if len(tag) > TAG_MAX:
            raise ValueError(f"the tag has {len(tag)} characters, more than {TAG_MAX}")
        if not TAG_RE.fullmatch(tag):
            raise ValueError(
                f"tag {tag!r}: letters, digits, '_', '.' and '-', not starting with '.' or '-'"
            )
    if not name:
        raise ValueError("no name before the ':'")
    if len(name) > NAME_MAX:
        raise ValueError(f"the name has {len(name)} characters, more than {NAME_MAX}")
    if IDENTIFIER_RE.fullmatch(name):
        raise ValueError("64 hexadecimal digits are an image id, not a name")
    if not NAME_RE.fullmatch(name):
        if NAME_RE.fullmatch(name.lower()):
            raise ValueError(f"repository name {name!r} must be lowercase")
        raise ValueError(f"name {name!r} is not {GRAMMAR}")
    return f"{name}:{tag if tag is not None else DEFAULT_TAG}"
