"""Where earlier pushes left each blob (remote/seen.py): sources by registry, most recent
first, never the repository pushed to; a declined mount forgets its source; a database that
can't be used is a SeenUnavailable (a warning), never an error."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from streamimage.remote.seen import DATABASE, SOURCES_MAX, SeenBlobs, SeenUnavailable

A, B = "sha256:" + "a" * 64, "sha256:" + "b" * 64


def test_sources_are_the_other_repositories_of_the_same_registry(tmp_path: Path) -> None:
    seen = SeenBlobs.open(str(tmp_path))
    seen.remember("r.io", "team/one", [A, B])
    seen.remember("r.io", "team/two", [A])
    seen.remember("other.io", "team/three", [A])
    assert seen.sources("r.io", A, "team/new") == ["team/two", "team/one"]  # latest first
    assert seen.sources("r.io", A, "team/two") == ["team/one"]
    assert seen.sources("r.io", B, "team/new") == ["team/one"]
    assert seen.sources("elsewhere.io", A, "team/new") == []
    seen.close()
    again = SeenBlobs.open(str(tmp_path))  # kept across runs
    assert again.sources("other.io", A, "x") == ["team/three"]
    again.close()


def test_a_declined_source_is_forgotten(tmp_path: Path) -> None:
    seen = SeenBlobs.open(str(tmp_path))
    seen.remember("r.io", "team/one", [A, B])
    seen.forget("r.io", A, "team/one")
    assert seen.sources("r.io", A, "x") == []
    assert seen.sources("r.io", B, "x") == ["team/one"]
    seen.close()


def test_at_most_a_few_sources_are_offered(tmp_path: Path) -> None:
    seen = SeenBlobs.open(str(tmp_path))
    for number in range(SOURCES_MAX + 2):
        seen.remember("r.io", f"team/r{number}", [A])
    assert len(seen.sources("r.io", A, "x")) == SOURCES_MAX
    seen.close()


def test_a_garbage_database_is_unavailable_not_an_error(tmp_path: Path) -> None:
    (tmp_path / DATABASE).write_bytes(b"not a database" * 100)
    with pytest.raises(SeenUnavailable, match=DATABASE):
        SeenBlobs.open(str(tmp_path))


def test_a_database_of_another_schema_is_unavailable(tmp_path: Path) -> None:
    with sqlite3.connect(tmp_path / DATABASE) as db:
        db.execute("PRAGMA user_version=99")
    db.close()
    with pytest.raises(SeenUnavailable, match="schema version 99"):
        SeenBlobs.open(str(tmp_path))


def test_a_directory_that_cant_be_made_is_unavailable(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(SeenUnavailable, match="cannot open"):
        SeenBlobs.open(str(tmp_path / "file" / "cache"))


def test_a_pushs_mount_sources_are_the_latest_other_repositories(tmp_path: Path) -> None:
    seen = SeenBlobs.open(str(tmp_path))
    for number in range(SOURCES_MAX + 2):
        seen.remember("r.io", f"team/r{number}", [A, B])
    seen.remember("other.io", "team/elsewhere", [A])
    latest = [f"team/r{n}" for n in range(SOURCES_MAX + 1, 0, -1)]
    assert seen.recent_repositories("r.io", "team/new") == latest[:SOURCES_MAX]
    assert seen.recent_repositories("r.io", latest[0]) == latest[1 : SOURCES_MAX + 1]
    seen.close()
