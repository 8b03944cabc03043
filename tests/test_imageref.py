"""Image references: distribution/reference's grammar, its own test cases as the oracle,
and properties over generated names and arbitrary text."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streamimage.imageref import NAME_MAX, TAG_MAX, normal_repo_tag, split_repo_tag

DIGEST = "sha256:" + "f" * 64

# From distribution/reference's reference_test.go (TestReferenceParse): tagged or not,
# accepted by Parse; a name alone gets docker's default tag.
ACCEPTED = [
    ("test_com", "test_com:latest"),
    ("test.com:tag", "test.com:tag"),
    ("test.com:5000", "test.com:5000"),  # a tag that looks like a port
    ("test.com/repo:tag", "test.com/repo:tag"),
    ("test:5000/repo", "test:5000/repo:latest"),
    ("test:5000/repo:tag", "test:5000/repo:tag"),
    ("lowercase:Uppercase", "lowercase:Uppercase"),
    ("a/" * 127 + "a:tag-puts-this-over-max", "a/" * 127 + "a:tag-puts-this-over-max"),
    ("sub-dom1.foo.com/bar/baz/quux:some-long-tag", "sub-dom1.foo.com/bar/baz/quux:some-long-tag"),
    ("b.gcr.io/test.example.com/my-app:test.example.com", None),
    ("xn--n3h.com/myimage:xn--n3h.com", None),
    ("foo_bar.com:8080", None),
    ("foo/foo_bar.com:8080", None),
    ("192.168.1.1", "192.168.1.1:latest"),
    ("192.168.1.1:5000/repo:5050", None),
    ("[2001:db8::1]/repo", "[2001:db8::1]/repo:latest"),
    ("[2001:db8::1]:5000/repo:tag", None),
    ("[::1]:5000/repo", "[::1]:5000/repo:latest"),
    ("Uppercase/lowercase:tag", None),  # "Uppercase" is a domain, as Parse reads it
    ("a__b/c---d:_", None),
    ("x:" + "t" * TAG_MAX, None),
    ("streamimage-test/basic:latest", None),
]


@pytest.mark.parametrize(("value", "expected"), ACCEPTED)
def test_references_the_grammar_accepts_are_kept(value: str, expected: str | None) -> None:
    assert normal_repo_tag(value) == (expected or value)


# (value, what the message says)
REFUSED = [
    ("", "empty"),
    (":justtag", "no name"),
    ("a b:1", "'a b' is not"),
    ("Uppercase:tag", "must be lowercase"),
    ("test:5000/Uppercase/lowercase:tag", "must be lowercase"),
    ("name:", "tag after ':' is empty"),
    ("name:.hidden", "tag '.hidden'"),
    ("name:-dash", "tag '-dash'"),
    ("name:a+b", "tag 'a+b'"),
    ("name:é", "tag 'é'"),  # Go's \w is ASCII
    ("x:" + "t" * (TAG_MAX + 1), f"more than {TAG_MAX}"),
    ("a/" * 128 + "a:tag", f"more than {NAME_MAX}"),
    ("aa/asdf$$^/aa", "is not"),
    ("repo@" + DIGEST, "digest"),
    ("repo:tag@" + DIGEST, "digest"),
    ("[2001:db8::1]", "tag '1]'"),
    ("[2001:db8::1]:5000", "is not"),
    ("[fe80::1%eth0]:5000/repo", "is not"),
    ("a" * 64 + ":1", "image id"),
    ("name/", "is not"),
    ("/name:1", "is not"),
    ("a//b:1", "is not"),
    ("a-:1", "is not"),
    ("a..b:1", "is not"),
    ("a___b:1", "is not"),
    ("name:tag\n", "tag 'tag\\n'"),
    ("name\n:tag", "is not"),
]


@pytest.mark.parametrize(("value", "reason"), REFUSED)
def test_values_that_are_not_references_are_refused_saying_why(value: str, reason: str) -> None:
    with pytest.raises(ValueError, match=re.escape(reason)):
        normal_repo_tag(value)


def test_the_tag_follows_the_last_colon_after_the_last_slash() -> None:
    assert split_repo_tag("host:5000/org/name") == ("host:5000/org/name", None)
    assert split_repo_tag("host:5000/name:v1") == ("host:5000/name", "v1")
    assert split_repo_tag("name:") == ("name", "")


alphanumeric = st.text("abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=6)
separator = st.sampled_from([".", "_", "__", "-", "--", "---"])


@st.composite
def path_components(draw: st.DrawFn) -> str:
    parts = [draw(alphanumeric)]
    for _ in range(draw(st.integers(0, 3))):
        parts += [draw(separator), draw(alphanumeric)]
    return "".join(parts)


domains = st.one_of(
    st.just(""),
    st.builds(
        lambda host, port: f"{host}{port}/",
        st.from_regex(r"[a-zA-Z0-9]{1,5}(\.[a-z]{1,3}){0,2}", fullmatch=True),
        st.sampled_from(["", ":5000", ":1"]),
    ),
)
names = st.builds(
    lambda domain, parts: domain + "/".join(parts),
    domains,
    st.lists(path_components(), min_size=1, max_size=4),
)
tags = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,20}", fullmatch=True)


@given(name=names, tag=tags)
def test_every_name_and_tag_of_the_grammar_is_accepted_unchanged(name: str, tag: str) -> None:
    assert normal_repo_tag(f"{name}:{tag}") == f"{name}:{tag}"


@given(name=names)
def test_a_name_without_a_tag_gets_latest(name: str) -> None:
    assert normal_repo_tag(name) == f"{name}:latest"


@given(
    name=names,
    tag=tags,
    bad=st.characters(blacklist_characters="abcdefghijklmnopqrstuvwxyz0123456789._-:/[]@"),
)
def test_a_character_outside_the_grammar_anywhere_is_refused(name: str, tag: str, bad: str) -> None:
    value = f"{name}:{tag}"
    for at in (0, len(name) // 2, len(name), len(value)):
        spoilt = value[:at] + bad + value[at:]
        if bad.isupper() and bad.isascii():
            continue  # an uppercase letter may make a domain or a tag: both legal
        with pytest.raises(ValueError, match=r"\S"):
            normal_repo_tag(spoilt)


@given(value=st.text(max_size=400))
def test_any_text_is_accepted_as_name_tag_or_refused_with_a_value_error(value: str) -> None:
    try:
        normal = normal_repo_tag(value)
    except ValueError as exc:
        reason = str(exc)
        assert reason, "a refusal says why"
        return
    assert split_repo_tag(normal)[1] is not None
    assert normal in (value, f"{value}:latest")
    assert normal_repo_tag(normal) == normal, "the normal form is a fixed point"
