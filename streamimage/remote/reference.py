"""Image references in skopeo's ``docker://`` transport syntax: HOST[:PORT]/REPO[:TAG|@DIGEST].

PURE: no I/O, no networking; a string in, a frozen record out.
Rule: docker's reference grammar (distribution/reference): the first component is a
registry only if it has a ``.`` or a ``:`` or is ``localhost``; otherwise the registry is
Docker Hub and a one-component repository is under ``library/``. No tag and no digest:
``latest``. A tag and a digest together are refused, as skopeo's docker transport does.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from streamimage.errors import ImageReferenceError

TRANSPORT = "docker://"
DOCKER_HUB = "docker.io"  # how references name Docker Hub
DOCKER_HUB_API = "registry-1.docker.io"  # where its distribution API answers
DEFAULT_TAG = "latest"
NAME_MAX = 255  # characters of registry/repository (distribution/reference)

# distribution/reference's regexp.go, piece by piece
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_HOST = rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[0-9A-Fa-f:.]+\])"
_REGISTRY = re.compile(rf"{_HOST}(?::[0-9]+)?")
_PATH_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
_TAG = re.compile(r"[\w][\w.-]{0,127}", re.ASCII)
_DIGEST = re.compile(r"[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[0-9a-fA-F]{32,}")


@dataclass(frozen=True, slots=True)
class Reference:
    """Where an image goes: ``registry`` (HOST[:PORT] as written; ``docker.io`` for Docker
    Hub), ``repository`` (its path there), and a ``tag`` or a ``digest``."""

    registry: str
    repository: str
    tag: str | None = DEFAULT_TAG
    digest: str | None = None

    @property
    def api_host(self) -> str:
        """HOST[:PORT] where the registry's API answers."""
        return DOCKER_HUB_API if self.registry == DOCKER_HUB else self.registry

    @property
    def manifest_reference(self) -> str:
        """The last part of the manifest's URL: the tag, or the digest."""
        return self.digest or self.tag or DEFAULT_TAG

    def __str__(self) -> str:
        suffix = f"@{self.digest}" if self.digest else f":{self.tag}"
        return f"{self.registry}/{self.repository}{suffix}"


def is_registry_reference(text: str) -> bool:
    """True: ``text`` names a registry destination (``docker://...``), not a file."""
    return text.startswith(TRANSPORT)


def check_repository(name: str, what: str) -> str:
    """``name`` if it is a repository path (lower-case components joined by ``/``).

    Raises:
        ImageReferenceError: it is not.
    """
    if not name or not all(_PATH_COMPONENT.fullmatch(c) for c in name.split("/")):
        raise ImageReferenceError(
            f"{what}: invalid repository name {name!r}: lower-case letters, digits and "
            "separators (. _ __ -) in components joined by /"
        )
    return name


def parse_reference(text: str) -> Reference:
    """``docker://HOST[:PORT]/REPO[:TAG|@DIGEST]`` (the ``docker://`` is optional).

    Raises:
        ImageReferenceError: not a valid reference; the message names it and the part.
    """
    rest = text.removeprefix(TRANSPORT)
    if rest.startswith("//"):  # as skopeo: docker://// is no reference
        raise ImageReferenceError(f"{text}: invalid image reference: empty registry")
    name, at, digest = rest.partition("@")
    if at and not _DIGEST.fullmatch(digest):
        raise ImageReferenceError(f"{text}: invalid digest {digest!r}: expected ALGORITHM:HEX")
    tag: str | None = None
    last_slash = name.rfind("/")
    colon = name.rfind(":")
    if colon > last_slash:  # a ':' after the last '/' starts the tag (else it's a port)
        name, tag = name[:colon], name[colon + 1 :]
        if not _TAG.fullmatch(tag):
            raise ImageReferenceError(
                f"{text}: invalid tag {tag!r}: up to 128 letters, digits, _ . -, "
                "not starting with . or -"
            )
    if tag is not None and at:
        raise ImageReferenceError(
            f"{text}: a tag and a digest together: push to NAME:TAG or NAME@DIGEST"
        )
    first, slash, remainder = name.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost"):
        if not _REGISTRY.fullmatch(first):
            raise ImageReferenceError(f"{text}: invalid registry {first!r}")
        registry, repository = first, remainder
    else:
        registry, repository = DOCKER_HUB, name
    if registry == DOCKER_HUB and "/" not in repository:
        repository = f"library/{repository}"
    check_repository(repository, text)
    if len(registry) + 1 + len(repository) > NAME_MAX:
        raise ImageReferenceError(f"{text}: name longer than {NAME_MAX} characters")
    if at:
        return Reference(registry, repository, tag=None, digest=digest)
    return Reference(registry, repository, tag=tag or DEFAULT_TAG)
