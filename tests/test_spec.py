"""The conf parser: the reference's quirks accepted, everything else a ConfError naming the key."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from streamimage.errors import ConfError, UsageError
from streamimage.spec import parse_conf

NOW = datetime(2026, 11, 26, 12, 0, 0, 123456, tzinfo=UTC)


def conf(**changes: Any) -> dict[str, Any]:
    document: dict[str, Any] = {
        "architecture": "amd64",
        "config": {"Cmd": ["/bin/sh"]},
        "created": "2024-01-01T00:00:00Z",
        "mtime": "2024-01-01T00:00:00Z",
        "uid": "0",
        "gid": "0",
        "uname": "root",
        "gname": "root",
        "store_dir": "/nix/store",
        "from_image": None,
        "store_layers": [["/nix/store/a-x"], ["/nix/store/b-y", "/nix/store/c-z"]],
        "customisation_layer": "/nix/store/d-customisation",
        "repo_tag": "x:latest",
    }
    document.update(changes)
    return document


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2024-01-01T00:00:00Z", 1704067200),
        ("2024-01-01T02:00:00+02:00", 1704067200),
        ("2024-01-01T00:00:00.999999+00:00", 1704067200),  # truncated, as int()
        ("1969-12-31T23:59:59.5+00:00", 0),  # toward zero, not down
        ("1960-01-01T00:00:00+00:00", -315619200),
        ("3000-01-01T00:00:00+00:00", 32503680000),
    ],
)
def test_mtime_is_whole_seconds_truncated_toward_zero(text: str, expected: int) -> None:
    assert parse_conf(conf(mtime=text), "c.json", now=NOW).mtime == expected


def test_a_time_without_offset_is_local_time_like_the_reference() -> None:
    naive = datetime(2024, 1, 1)
    parsed = parse_conf(conf(mtime="2024-01-01T00:00:00"), "c.json", now=NOW)
    assert parsed.mtime == int(naive.timestamp())


def test_now_is_one_instant_for_created_and_mtime() -> None:
    parsed = parse_conf(conf(created="now", mtime="now"), "c.json", now=NOW)
    assert parsed.created == NOW
    assert parsed.mtime == int(NOW.timestamp())


def test_created_keeps_offset_and_fraction_for_the_config() -> None:
    parsed = parse_conf(conf(created="2024-05-06T07:08:09.5+05:30"), "c.json", now=NOW)
    offset = timezone(timedelta(hours=5, minutes=30))
    assert parsed.created == datetime(2024, 5, 6, 7, 8, 9, 500000, tzinfo=offset)


@pytest.mark.parametrize(("value", "expected"), [("0", 0), (" 1000 ", 1000), (65534, 65534)])
def test_ids_are_numbers_or_numeric_strings(value: object, expected: int) -> None:
    parsed = parse_conf(conf(uid=value, gid=value), "c.json", now=NOW)
    assert (parsed.uid, parsed.gid) == (expected, expected)


@pytest.mark.parametrize("value", ["root", "", "-1", -1, 1.5, True, None, "²"])
def test_an_id_that_is_not_a_number_is_refused(value: object) -> None:
    with pytest.raises(ConfError, match="uid"):
        parse_conf(conf(uid=value), "c.json", now=NOW)


REQUIRED = [
    "architecture",
    "config",
    "created",
    "mtime",
    "uid",
    "gid",
    "uname",
    "gname",
    "store_dir",
    "from_image",
    "store_layers",
    "customisation_layer",
    "repo_tag",
]


@pytest.mark.parametrize("key", REQUIRED)
def test_a_missing_key_is_named(key: str) -> None:
    document = conf()
    del document[key]
    with pytest.raises(ConfError, match=f"c.json: missing key '{key}'"):
        parse_conf(document, "c.json", now=NOW)


def test_repo_tag_from_the_command_line_wins_and_may_stand_in_for_a_missing_one() -> None:
    assert parse_conf(conf(), "c.json", repo_tag="y:1", now=NOW).repo_tag == "y:1"
    document = conf()
    del document["repo_tag"]
    assert parse_conf(document, "c.json", repo_tag="y:1", now=NOW).repo_tag == "y:1"


@pytest.mark.parametrize("value", ["a b:1", "Name:1", "name:", "name:-x", "", "r@sha256:00"])
def test_a_repo_tag_that_is_not_a_reference_is_refused_naming_the_conf_key(value: str) -> None:
    with pytest.raises(ConfError, match=f"^c.json: repo_tag {re.escape(repr(value))}: not a valid"):
        parse_conf(conf(repo_tag=value), "c.json", now=NOW)


@pytest.mark.parametrize("value", ["a b:1", "Name:1", "name:", "name:-x", "r@sha256:00"])
def test_a_repo_tag_from_the_command_line_that_is_not_a_reference_names_t(value: str) -> None:
    with pytest.raises(UsageError, match=f"^-t {re.escape(repr(value))}: not a valid") as caught:
        parse_conf(conf(), "c.json", repo_tag=value, now=NOW)
    assert not isinstance(caught.value, ConfError), "-t is the command line, not the conf"


def test_a_bad_conf_repo_tag_does_not_matter_when_t_replaces_it() -> None:
    # the reference never reads the conf's repo_tag when -t is given
    assert parse_conf(conf(repo_tag="a b"), "c.json", repo_tag="y:1", now=NOW).repo_tag == "y:1"


@pytest.mark.parametrize("given", [None, "hello"])
def test_a_repo_tag_without_a_tag_is_named_latest_with_a_note(given: str | None) -> None:
    parsed = parse_conf(conf(repo_tag="hello"), "c.json", repo_tag=given, now=NOW)
    assert parsed.repo_tag == "hello:latest"
    assert len(parsed.notes) == 1
    assert "'hello' has no tag" in parsed.notes[0]
    assert ("-t" in parsed.notes[0]) == (given is not None)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"created": "yesterday"}, "created 'yesterday' is not an ISO 8601 time"),
        ({"mtime": 0}, "mtime must be a string, not a number"),
        ({"config": []}, "config must be an object, not an array"),
        ({"store_layers": {}}, "store_layers must be an array, not an object"),
        ({"store_layers": [["/nix/store/a"], "/nix/store/b"]}, r"store_layers\[1\]"),
        ({"store_layers": [["/nix/storefoo/a"]]}, "'/nix/storefoo/a' is not under store_dir"),
        ({"store_layers": [["/nix/store/../etc"]]}, "'/nix/store/../etc' is not under"),
        ({"store_layers": [["/nix/store"]]}, "'/nix/store' is not under"),
        ({"from_image": 3}, "from_image must be a path or null"),
        ({"uname": None}, "uname must be a string, not null"),
    ],
)
def test_malformed_values_are_named(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfError, match=message):
        parse_conf(conf(**changes), "c.json", now=NOW)


def test_the_conf_must_be_an_object() -> None:
    with pytest.raises(ConfError, match="must be a JSON object, not an array"):
        parse_conf([], "c.json", now=NOW)


def test_a_path_listed_twice_in_a_layer_is_kept_once_with_a_note() -> None:
    layers = [["/nix/store/a-x", "/nix/store/b-y", "/nix/store/a-x/"], ["/nix/store/a-x"]]
    parsed = parse_conf(conf(store_layers=layers), "c.json", now=NOW)
    assert parsed.store_layers == (("/nix/store/a-x", "/nix/store/b-y"), ("/nix/store/a-x",))
    assert len(parsed.notes) == 1
    assert "store_layers[0]" in parsed.notes[0]
    assert "'/nix/store/a-x/'" in parsed.notes[0]


def test_a_store_path_inside_another_of_the_same_layer_is_refused() -> None:
    layers = [["/nix/store/a-x", "/nix/store/a-x/lib"]]
    with pytest.raises(ConfError, match="'/nix/store/a-x/lib' overlaps '/nix/store/a-x'"):
        parse_conf(conf(store_layers=layers), "c.json", now=NOW)


def test_relative_store_paths_under_a_relative_store_dir_are_accepted() -> None:
    parsed = parse_conf(
        conf(store_dir="examples/store", store_layers=[["examples/store/a-x"]]), "c", now=NOW
    )
    assert parsed.store_layers == (("examples/store/a-x",),)


def test_os_and_unknown_keys_are_ignored() -> None:
    parsed = parse_conf(conf(os="windows", extra=1), "c.json", now=NOW)
    assert parsed.architecture == "amd64"
