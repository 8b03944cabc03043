"""The harness's consumers and rows: what `compare` runs and how `runner` measures it.

Rule: no timing is asserted here (benchmarks/README.md has the numbers); only what each
mode runs, reads and reports.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest

from benchmarks import compare
from benchmarks.runner import CONSUMER_ARGV, consumer_overhead, run_once

needs_openssl = pytest.mark.skipif(shutil.which("openssl") is None, reason="no openssl")


@needs_openssl
def test_process_consumer_counts_and_hashes_every_byte(tmp_path: Path) -> None:
    data = bytes(range(256)) * 12_000 + b"tail"
    source = tmp_path / "data"
    source.write_bytes(data)

    result = run_once("cat", ["cat", str(source)], log=tmp_path / "log", consumer="process")

    assert result.exit_code == 0
    assert result.consumer == "process"
    assert result.out_bytes == len(data)
    assert result.sha256 == hashlib.sha256(data).hexdigest()
    assert result.consumer_cpu_s > 0
    assert "| openssl dgst -sha256" in (tmp_path / "log").read_text()


@needs_openssl
def test_process_consumer_of_no_output_is_the_empty_digest() -> None:
    result = run_once("true", ["true"], consumer="process")

    assert (result.out_bytes, result.exit_code) == (0, 0)
    assert result.sha256 == hashlib.sha256(b"").hexdigest()
    assert consumer_overhead() > 0  # openssl reads its config: subtracted above


@needs_openssl
def test_process_consumer_reports_the_commands_failure(tmp_path: Path) -> None:
    source = tmp_path / "data"
    source.write_bytes(b"y" * 5000)

    result = run_once("fail", ["sh", "-c", f"head -c 100 {source}; exit 3"], consumer="process")

    assert result.exit_code == 3
    assert result.out_bytes == 100
    assert result.sha256 == hashlib.sha256(b"y" * 100).hexdigest()


@needs_openssl
def test_both_consumers_agree_on_bytes_and_digest(tmp_path: Path) -> None:
    source = tmp_path / "data"
    source.write_bytes(b"z" * 2_500_001)
    argv = ["cat", str(source)]

    harness = run_once("h", argv, consumer="harness")
    process = run_once("p", argv, consumer="process")

    assert (harness.out_bytes, harness.sha256) == (process.out_bytes, process.sha256)
    assert harness.consumer_cpu_s == 0


def bench_corpus(tmp_path: Path) -> compare.Corpus:
    store = tmp_path / "store"
    paths = tuple(str(store / f"{'a' * 32}-p{i}") for i in range(3))
    return compare.Corpus(str(tmp_path / "conf.json"), str(store), paths, 10, 100, str(tmp_path))


def test_process_mode_floor_is_tar_into_the_same_consumer(tmp_path: Path) -> None:
    args = compare.parse_args(["--skip-reference"])
    field = {c.name: c for c in compare.contenders(args, bench_corpus(tmp_path), "/tmp/x")}

    assert args.consumer == "process"
    assert field[compare.FLOOR].argv[0] == "tar"
    assert compare.TAR_TO_HARNESS not in field
    assert field[compare.STREAMIMAGE].cache == "cold"


def test_harness_mode_floor_pipes_tar_into_openssl(tmp_path: Path) -> None:
    args = compare.parse_args(["--skip-reference", "--consumer", "harness"])
    field = {c.name: c for c in compare.contenders(args, bench_corpus(tmp_path), "/tmp/x")}

    assert field[compare.FLOOR].argv[:3] == ("bash", "-o", "pipefail")
    assert " ".join(CONSUMER_ARGV) in field[compare.FLOOR].argv[-1]
    assert field[compare.TAR_TO_HARNESS].argv[0] == "tar"
