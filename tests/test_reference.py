"""docker:// references parsed as docker's grammar and skopeo's transport read them:
what is a registry, the default tag, Docker Hub's library/, and every malformed part named."""

from __future__ import annotations

import pytest

from streamimage.errors import ImageReferenceError, UsageError
from streamimage.remote.reference import (
    Reference,
    check_repository,
    is_registry_reference,
    parse_reference,
)

DIGEST = "sha256:" + "ab" * 32


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("docker://127.0.0.1:5000/app", Reference("127.0.0.1:5000", "app", "latest")),
        ("docker://127.0.0.1:5000/a/b:v1.2", Reference("127.0.0.1:5000", "a/b", "v1.2")),
        ("docker://localhost/app:t", Reference("localhost", "app", "t")),
        ("docker://localhost:5000/x/y/z", Reference("localhost:5000", "x/y/z", "latest")),
        ("docker://registry.example/app", Reference("registry.example", "app", "latest")),
        ("docker://[::1]:5000/app", Reference("[::1]:5000", "app", "latest")),
        (f"docker://r.io/app@{DIGEST}", Reference("r.io", "app", None, DIGEST)),
        # no '.', ':' or localhost: a Docker Hub repository, one component under library/
        ("docker://busybox", Reference("docker.io", "library/busybox", "latest")),
        ("docker://user/app:1", Reference("docker.io", "user/app", "1")),
        ("docker://docker.io/busybox", Reference("docker.io", "library/busybox", "latest")),
        ("docker://a__b/c-d.e_f", Reference("docker.io", "a__b/c-d.e_f", "latest")),
        ("docker://r.io/app:" + "t" * 128, Reference("r.io", "app", "t" * 128)),
    ],
)
def test_references_parse_as_docker_names_them(text: str, expected: Reference) -> None:
    assert parse_reference(text) == expected


def test_docker_hub_is_reached_at_its_api_host() -> None:
    assert parse_reference("docker://busybox").api_host == "registry-1.docker.io"
    assert parse_reference("docker://127.0.0.1:5000/a").api_host == "127.0.0.1:5000"


def test_the_manifest_is_put_under_the_tag_or_the_digest() -> None:
    assert parse_reference("docker://r.io/a").manifest_reference == "latest"
    assert parse_reference("docker://r.io/a:v2").manifest_reference == "v2"
    assert parse_reference(f"docker://r.io/a@{DIGEST}").manifest_reference == DIGEST
    assert str(parse_reference("docker://r.io/a:v2")) == "r.io/a:v2"
    assert str(parse_reference(f"docker://r.io/a@{DIGEST}")) == f"r.io/a@{DIGEST}"


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("docker://r.io/App", "invalid repository name 'App'"),
        ("docker://r.io/", "invalid repository name ''"),
        ("docker://r.io/a//b", "invalid repository name 'a//b'"),
        ("docker://r.io/a-", "invalid repository name 'a-'"),
        ("docker://r.io/a:", "invalid tag ''"),
        ("docker://r.io/a:-x", "invalid tag '-x'"),
        ("docker://r.io/a:" + "t" * 129, "invalid tag"),
        ("docker://r.io/a@sha256:12", "invalid digest 'sha256:12'"),
        ("docker://r.io/a@latest", "invalid digest 'latest'"),
        (f"docker://r.io/a:t@{DIGEST}", "a tag and a digest together"),
        ("docker://bad_host.io/a", "invalid registry 'bad_host.io'"),
        ("docker:////a", "empty registry"),
        ("docker://r.io/" + "a" * 260, "longer than 255"),
    ],
)
def test_a_malformed_reference_is_a_usage_error_naming_the_part(text: str, named: str) -> None:
    with pytest.raises(ImageReferenceError) as caught:
        parse_reference(text)
    assert named in str(caught.value)
    assert str(caught.value).startswith(text)
    assert isinstance(caught.value, UsageError)  # exit status 2


def test_only_the_docker_transport_names_a_registry() -> None:
    assert is_registry_reference("docker://r.io/a")
    assert not is_registry_reference("image.tar")
    assert not is_registry_reference("docker-archive:image.tar")


def test_a_mount_source_is_checked_as_a_repository() -> None:
    assert check_repository("base/images", "--mount-from") == "base/images"
    with pytest.raises(ImageReferenceError, match="--mount-from: invalid repository name"):
        check_repository("Base", "--mount-from")
