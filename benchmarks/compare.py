# Times the reference script and streamimage side by side on one corpus, plus GNU tar as
# the floor. Rule: runs alternate (reference, streamimage, baseline, floors, ...) round by
# round, the order rotating each round, so drift and position hit every contender alike,
# and every contender's stdout goes through the same consumer (runner.run_once: by default
# `openssl dgst -sha256` in a process of its own, the floor's tar included); outputs must be
# byte-identical unless --si-args changes them (a --baseline-cmd gets the same --si-args,
# so it must match streamimage either way).
#
#   python -m benchmarks.compare --reference PATH [--corpus DIR | --scale S] [--runs N]
#       [--shape default|small-files|nixpkgs] [--consumer process|harness] [--warm]
#       [--json FILE] [--tool-cmd "python3 -m streamimage"] [--si-args="--compress gzip"]
#       [--baseline-cmd "env PYTHONPATH=/tmp/before python3 -P -m streamimage"]
#       [--skip-reference] [--replay]
from __future__ import annotations

import argparse
import compileall
import contextlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

from benchmarks import corpus
from benchmarks.runner import (
    COLD,
    CONSUMER_ARGV,
    CONSUMERS,
    RunResult,
    log_tail,
    median,
    run_once,
    shell_pipeline,
)
from streamimage.cli import load_conf
from streamimage.engine.cache import DATABASE, RACY_SECONDS, DigestCache, KeyContext
from streamimage.options import parse_compression

REPO_ROOT = Path(__file__).resolve().parent.parent
REFERENCE = "reference"
STREAMIMAGE = "streamimage"
BASELINE = "baseline"
FLOOR = "floor: tar|openssl"
TAR_TO_HARNESS = "tar -> harness"
REPLAY = "bound: image replay"
# The finished image sent again by the least a Python process can do: one sendfile loop
# from the page cache into the same pipe and consumer. No producer of the image beats it
# on this machine (it does none of the work); a tool's time over it is the tool's own cost,
# its time over the floor's is the consumer's limit.
REPLAY_SCRIPT = (
    "import os, sys\n"
    "fd = os.open(sys.argv[1], os.O_RDONLY)\n"
    "size, offset = os.fstat(fd).st_size, 0\n"
    "while offset < size:\n"
    "    offset += os.sendfile(1, fd, offset, size - offset)\n"
)


@dataclass(frozen=True, slots=True)
class Contender:
    name: str
    argv: tuple[str, ...]
    # "tool" (reference, streamimage, --baseline-cmd's "baseline"), "floor", or "baseline"
    # (reference piped into a compressor)
    role: str
    before: Callable[[], None] | None = None  # untimed, before each run
    # the digest cache of a streamimage row: "cold" (off), "warm" (every layer a hit),
    # "1 changed" (the app's layer a miss); "" for the others
    cache: str = ""
    hot: tuple[str, ...] = ()  # what it reads besides the corpus: kept in the page cache


@dataclass(frozen=True, slots=True)
class Corpus:
    conf: str
    store_dir: str
    store_paths: tuple[str, ...]
    entries: int
    file_bytes: int
    directory: str
    app_layer: int = -1  # the store layer an app rebuild changes (the "1 changed" row)


@dataclass(frozen=True, slots=True)
class Summary:
    name: str
    argv: tuple[str, ...]
    cache: str
    runs: tuple[RunResult, ...]
    failures: int
    median_s: float
    min_s: float
    max_s: float
    median_cpu_s: float
    median_consumer_cpu_s: float  # of the "process" consumer; 0 with --consumer harness
    stream_bytes: int  # bytes of the image/archive stream (for the floor: tar's output)
    mb_per_s: float  # stream_bytes / median_s, MB = 1e6 bytes
    files_per_s: float  # corpus entries / median_s
    peak_rss_kib: int  # the largest ru_maxrss over the runs
    rss_floor_kib: int  # the harness's own peak at spawn: peak_rss_kib can't go below it
    sha256s: tuple[str, ...]  # distinct output hashes over the runs


@dataclass(frozen=True, slots=True)
class Report:
    corpus: Corpus
    runs: int
    consumer: str  # "process" or "harness"
    pipe_size: int
    si_args: tuple[str, ...]
    summaries: tuple[Summary, ...]
    # reference vs streamimage; None when --si-args makes them differ by design, or
    # with --skip-reference
    identical: bool | None
    reference_deterministic: bool | None  # None with --skip-reference
    speedup: float | None  # reference median / streamimage median; None: --skip-reference
    si_over_floor: float  # streamimage median / floor median
    baseline_identical: bool | None  # baseline vs streamimage; None without --baseline-cmd
    baseline_ratio: float | None  # baseline median / streamimage median; None: no baseline


def load_corpus(args: argparse.Namespace) -> Corpus:
    """Finds or generates the corpus the options name; raises ValueError/OSError."""
    params = corpus.CorpusParams(
        scale=1.0 if args.scale is None else args.scale, seed=args.seed, shape=args.shape
    )
    directory: Path = args.corpus or corpus.default_corpus_dir(params)
    stamp = corpus.read_stamp(directory.resolve())
    if stamp is not None and args.scale is None and args.corpus is not None:
        info = stamp[1]
    elif args.corpus is not None and args.scale is None and (directory / "conf.json").exists():
        return _hand_made_corpus(directory / "conf.json")
    else:
        info = corpus.ensure_corpus_in_subprocess(directory, params)
    return Corpus(
        conf=info.conf,
        store_dir=info.store_dir,
        store_paths=info.store_paths,
        entries=info.entries,
        file_bytes=info.file_bytes,
        directory=info.directory,
        app_layer=info.app_layer,
    )


def _hand_made_corpus(conf_path: Path) -> Corpus:
    # A conf not written by benchmarks.corpus: count its entries by walking it.
    conf = json.loads(conf_path.read_text())
    paths = tuple(path for layer in conf["store_layers"] for path in layer)
    entries = file_bytes = 0
    for path in paths:
        entries += 1
        if os.path.islink(path) or not os.path.isdir(path):
            file_bytes += os.lstat(path).st_size if not os.path.islink(path) else 0
            continue
        for root, dirs, files in os.walk(path):
            entries += len(dirs) + len(files)
            file_bytes += sum(
                os.lstat(os.path.join(root, f)).st_size
                for f in files
                if not os.path.islink(os.path.join(root, f))
            )
    return Corpus(
        conf=str(conf_path.resolve()),
        store_dir=conf["store_dir"],
        store_paths=paths,
        entries=entries,
        file_bytes=file_bytes,
        directory=str(conf_path.resolve().parent),
    )


WARM = "streamimage warm"
ONE_CHANGED = "si warm, 1 changed"


def baseline_argv(args: argparse.Namespace, bench: Corpus, pycache: str) -> tuple[str, ...]:
    """--baseline-cmd with the conf and --si-args, its Python bytecode cached in `pycache`
    (PYTHONPYCACHEPREFIX: nothing is written into the baseline's own tree), cold."""
    cmd = shlex.split(args.baseline_cmd)
    return (*COLD, f"PYTHONPYCACHEPREFIX={pycache}", *cmd, bench.conf, *args.si_args)


def warm_contenders(args: argparse.Namespace, bench: Corpus, log: Path) -> list[Contender]:
    """streamimage with a digest cache of its own, filled by an untimed run: every layer a
    hit; and with the app's layer's entry dropped before each run, as when the app's store
    path changed between two builds (only that layer is hashed)."""
    settle(bench)
    found = []
    for name in (WARM, ONE_CHANGED):
        cache = tempfile.mkdtemp(prefix="compare-cache.")
        argv = (
            "env",
            "STREAMIMAGE_NO_CACHE=",
            *shlex.split(args.tool_cmd),
            bench.conf,
            "--cache-dir",
            cache,
            *args.si_args,
        )
        filled = run_once(f"{name} (fill)", argv, log=log, cwd=REPO_ROOT)
        if filled.exit_code != 0:
            raise RuntimeError(f"filling the digest cache failed: {log_tail(log)}")
        before = None if name == WARM else partial(forget_app_layer, bench, args, cache)
        kind = "warm" if name == WARM else "1 changed"
        found.append(Contender(name, argv, "tool", before, kind, hot=(cache,)))
    return found


def replay_contender(args: argparse.Namespace, bench: Corpus, log: Path, scratch: str) -> Contender:
    """The REPLAY row: streamimage's image, written once (untimed, cache off) into
    ``scratch`` (beside the corpus: the same file system, so the same page cache), sent
    from there with sendfile by REPLAY_SCRIPT."""
    image = os.path.join(scratch, "image.tar")
    argv = cold_tool_argv(args, bench)
    with open(image, "wb") as out, open(log, "ab") as err:
        err.write(f"=== replay (image): {shlex.join(argv)}\n".encode())
        err.flush()
        done = subprocess.run(argv, stdout=out, stderr=err, cwd=REPO_ROOT, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"writing the image to replay failed: {log_tail(log)}")
    return Contender(REPLAY, (sys.executable, "-c", REPLAY_SCRIPT, image), "floor", hot=(image,))


def keep_hot(paths: Sequence[str]) -> None:
    """Read every file under ``paths`` (untimed), so that each timed run finds the corpus,
    a digest cache's frames and the replay's image in the page cache. DAMON's pageout
    (benchmarks/README.md) counts a page read in a burst every few seconds as idle: runs
    5-10 s apart left rounds reading part of the corpus from disk (a floor of 3.5 s
    median against 1.5 s). Into `cat`, not /dev/null: GNU tar then skips the data."""
    subprocess.run(
        ["sh", "-c", 'tar -cf - -- "$@" | cat >/dev/null', "keep-hot", *paths],
        stderr=subprocess.DEVNULL,
        check=False,
    )


def settle(bench: Corpus) -> None:
    """Waits until the corpus is older than the cache's RACY_SECONDS: streamimage does not
    store the digests of a store changed that recently, so a fill run right after the
    corpus was generated would leave the warm rows cold."""
    stamp = Path(bench.directory) / corpus.STAMP_NAME
    if stamp.exists():
        time.sleep(max(0.0, stamp.stat().st_mtime + RACY_SECONDS - time.time()))


def forget_app_layer(bench: Corpus, args: argparse.Namespace, cache: str) -> None:
    """Drops the cache entry of the layer holding the app (the last store layer of the
    default corpus, its own layer near the end of the nixpkgs one)."""
    conf = load_conf(bench.conf, None)
    at = args.si_args.index("--compress") if "--compress" in args.si_args else -1
    compression = parse_compression(args.si_args[at + 1] if at >= 0 else "none")
    context = KeyContext(conf.uid, conf.gid, conf.uname, conf.gname, conf.mtime, compression)
    db = DigestCache(os.path.join(cache, DATABASE))
    try:
        db.drop(context.key(conf.store_layers[bench.app_layer]))
    finally:
        db.close()


def cold_tool_argv(args: argparse.Namespace, bench: Corpus) -> tuple[str, ...]:
    """streamimage as --tool-cmd runs it on the conf, with --si-args and its cache off."""
    return (*COLD, *shlex.split(args.tool_cmd), bench.conf, *args.si_args)


def contenders(args: argparse.Namespace, bench: Corpus, pycache: str) -> list[Contender]:
    tool = cold_tool_argv(args, bench)
    names = [os.path.relpath(path, bench.store_dir) for path in bench.store_paths]
    tar = ("tar", "-C", bench.store_dir, "-cf", "-", "--", *names)
    found = [Contender(STREAMIMAGE, tool, "tool", cache="cold")]
    if args.baseline_cmd is not None:
        found.append(Contender(BASELINE, baseline_argv(args, bench, pycache), "tool", cache="cold"))
    if args.consumer == "process":
        # the consumer process is the floor's openssl, as it is every contender's
        found.append(Contender(FLOOR, tar, "floor"))
    else:
        found += [
            Contender(FLOOR, tuple(shell_pipeline(tar, CONSUMER_ARGV)), "floor"),
            Contender(TAR_TO_HARNESS, tar, "floor"),
        ]
    if args.skip_reference:
        return found
    reference = (sys.executable, str(Path(args.reference).resolve()), bench.conf)
    found.insert(0, Contender(REFERENCE, reference, "tool"))
    # the whole archive compressed after the fact, as nixpkgs' `compressor` option does
    compressors: list[tuple[str, ...]] = []
    if any("zstd" in arg for arg in args.si_args):
        compressors += [("zstd", "-3", "-T1"), ("zstd", "-3", "-T0")]
    elif args.si_args:
        compressors += [("gzip", "-6"), ("pigz", "-6")]
    for compressor in compressors:
        if shutil.which(compressor[0]):
            argv = tuple(shell_pipeline(reference, compressor))
            found.append(Contender(f"reference|{' '.join(compressor)}", argv, "baseline"))
    return found


def summarize(
    contender: Contender, runs: list[RunResult], bench: Corpus, tar_bytes: int
) -> Summary:
    ok = [run for run in runs if run.exit_code == 0]
    med = median([run.wall_s for run in ok])
    # The floor's bash pipeline writes openssl's line to the harness, not tar's archive.
    piped = contender.name == FLOOR and any(run.consumer == "harness" for run in ok)
    stream = tar_bytes if piped else (ok[0].out_bytes if ok else 0)
    return Summary(
        name=contender.name,
        argv=contender.argv,
        cache=contender.cache,
        runs=tuple(runs),
        failures=len(runs) - len(ok),
        median_s=med,
        min_s=min((run.wall_s for run in ok), default=float("nan")),
        max_s=max((run.wall_s for run in ok), default=float("nan")),
        median_cpu_s=median([run.cpu_s for run in ok]),
        median_consumer_cpu_s=median([run.consumer_cpu_s for run in ok]),
        stream_bytes=stream,
        mb_per_s=stream / med / 1e6 if ok else float("nan"),
        files_per_s=bench.entries / med if ok else float("nan"),
        peak_rss_kib=max((run.maxrss_kib for run in runs), default=0),
        rss_floor_kib=max((run.harness_rss_kib for run in runs), default=0),
        sha256s=tuple(dict.fromkeys(run.sha256 for run in ok)),
    )


def identical_outputs(*summaries: Summary) -> bool:
    """All runs of all of them succeeded and gave one and the same sha256."""
    hashes = {digest for s in summaries for digest in s.sha256s}
    return not any(s.failures for s in summaries) and len(hashes) == 1


def run_all(
    args: argparse.Namespace, bench: Corpus, log: Path, pycache: str, scratch: str | None = None
) -> Report:
    field = contenders(args, bench, pycache)
    named = {c.name: c for c in field}
    names = [os.path.relpath(path, bench.store_dir) for path in bench.store_paths]
    tar = ("tar", "-C", bench.store_dir, "-cf", "-", "--", *names)
    # Warm the page cache. Not into /dev/null: GNU tar then skips reading file data.
    warm = run_once("warm-up", tar, log=log, pipe_size=args.pipe_size)
    if warm.exit_code != 0:
        raise RuntimeError(f"warm-up tar failed ({warm.exit_code}): {log_tail(log)}")
    if args.warm:
        field += warm_contenders(args, bench, log)
    if scratch is not None:
        field.append(replay_contender(args, bench, log, scratch))
    if BASELINE in named:
        # One untimed run writes the baseline's bytecode to its cache, as compile_package
        # does for streamimage: otherwise every timed run would compile its modules again
        # (PYTHONDONTWRITEBYTECODE=1 here), ~0.1-0.2 s each.
        primed = run_once(
            "baseline warm-up (bytecode)",
            ("env", "PYTHONDONTWRITEBYTECODE=", *named[BASELINE].argv),
            log=log,
            cwd=REPO_ROOT,
            pipe_size=args.pipe_size,
        )
        if primed.exit_code != 0:
            raise RuntimeError(f"baseline warm-up failed ({primed.exit_code}): {log_tail(log)}")
    results: dict[str, list[RunResult]] = {c.name: [] for c in field}
    hot = [bench.store_dir, *(path for c in field for path in c.hot)]
    for round_no in range(1, args.runs + 1):
        # The order rotates round by round: a contender is not always the one that runs
        # right after the floor's tar (seen here: the first tool of a round ran ~10 %
        # slower whichever version it was, in an A/B of two copies of the same code).
        shift = (round_no - 1) % len(field)
        for contender in (*field[shift:], *field[:shift]):
            if contender.before is not None:
                contender.before()
            keep_hot(hot)
            result = run_once(
                f"{contender.name} #{round_no}",
                contender.argv,
                log=log,
                cwd=REPO_ROOT,
                pipe_size=args.pipe_size,
                consumer=args.consumer,
            )
            results[contender.name].append(result)
            sys.stderr.write(
                f"round {round_no}/{args.runs} {contender.name:<20} {result.wall_s:8.3f} s"
                f"  exit {result.exit_code}  {result.out_bytes / 1e6:10.1f} MB\n"
            )
            if result.exit_code != 0:
                sys.stderr.write(f"  see {log}:\n{log_tail(log)}\n")
    summaries = tuple(summarize(c, results[c.name], bench, warm.out_bytes) for c in field)
    by_name = {s.name: s for s in summaries}
    si = by_name[STREAMIMAGE]
    ref, base = by_name.get(REFERENCE), by_name.get(BASELINE)
    identical = None
    if ref is not None and not args.si_args:
        identical = identical_outputs(ref, si)
    return Report(
        corpus=bench,
        runs=args.runs,
        consumer=args.consumer,
        pipe_size=args.pipe_size,
        si_args=tuple(args.si_args),
        summaries=summaries,
        identical=identical,
        reference_deterministic=None if ref is None else identical_outputs(ref),
        speedup=None if ref is None else ref.median_s / si.median_s,
        si_over_floor=si.median_s / by_name[FLOOR].median_s,
        baseline_identical=None if base is None else identical_outputs(base, si),
        baseline_ratio=None if base is None else base.median_s / si.median_s,
    )


def render(report: Report) -> str:
    bench = report.corpus
    si = next(s for s in report.summaries if s.name == STREAMIMAGE)
    lines = [
        f"corpus   {bench.directory}: {bench.entries:,} entries, {bench.file_bytes / 1e6:,.1f} MB"
        f" of file data, {len(bench.store_paths)} store paths",
        f"runs     {report.runs} per contender, alternating; consumer: {_consumer(report)},"
        f" pipe {report.pipe_size} B; median times",
        "",
        f"{'contender':<20} {'cache':<9} {'median s':>9} {'min s':>8} {'cpu s':>8}"
        f" {'cons s':>7} {'MB/s':>8} {'files/s':>9} {'peak RSS':>9} {'stream MB':>10}"
        f" {'x si':>6} {'fail':>4}",
    ]
    lines.extend(
        f"{s.name:<20} {s.cache or '-':<9} {s.median_s:9.3f} {s.min_s:8.3f} {s.median_cpu_s:8.2f}"
        f" {s.median_consumer_cpu_s:7.2f} {s.mb_per_s:8.1f} {s.files_per_s:9,.0f}"
        f" {s.peak_rss_kib / 1024:6.1f} MiB {s.stream_bytes / 1e6:10.1f}"
        f" {s.median_s / si.median_s:6.2f} {s.failures:4}"
        for s in report.summaries
    )
    lines.append(
        "median s: spawn to reap of the whole pipeline; cpu s: the contender's process tree;"
        " cons s: the consumer process (0: the harness consumed)"
    )
    lines.append("")
    by_name = {s.name: s for s in report.summaries}
    ref, base = by_name.get(REFERENCE), by_name.get(BASELINE)
    if ref is None:
        lines.append("identical: not checked (--skip-reference)")
    elif report.identical is None:
        lines.append(f"identical: not checked (--si-args {shlex.join(report.si_args)})")
    else:
        verdict = "yes" if report.identical else "NO"
        lines.append(f"identical: {verdict}  reference {_hashes(ref)}  streamimage {_hashes(si)}")
    if base is not None:
        verdict = "yes" if report.baseline_identical else "NO"
        lines.append(
            f"baseline identical: {verdict}  baseline {_hashes(base)}  streamimage {_hashes(si)}"
        )
        lines.append(f"baseline: {shlex.join(base.argv)}")
    floor_mib = max(s.rss_floor_kib for s in report.summaries) / 1024
    lines.append(
        f"peak RSS: ru_maxrss of the child tree; {floor_mib:.1f} MiB is the harness's own and"
        " a floor under it (Linux carries it through fork+exec)"
    )
    lines.append(f"speedup (reference / streamimage): {_ratio(report.speedup)}")
    if report.baseline_ratio is not None:
        lines.append(
            f"baseline / streamimage: {_ratio(report.baseline_ratio)}"
            " (> 1: streamimage faster than the baseline)"
        )
    lines.append(f"streamimage / floor (tar|openssl): {report.si_over_floor:.2f}x")
    by_name = {s.name: s for s in report.summaries}
    cold, floor, ref = by_name[STREAMIMAGE], by_name[FLOOR], by_name.get(REFERENCE)
    replay = by_name.get(REPLAY)
    if replay is not None:
        same = "yes" if replay.sha256s == cold.sha256s else "NO"
        over = ", ".join(
            f"{row.name} / it {row.median_s / replay.median_s:.2f}x"
            for row in (cold, by_name.get(WARM))
            if row is not None
        )
        lines.append(
            f"image replay (what no producer beats here): it / floor "
            f"{replay.median_s / floor.median_s:.2f}x, {over}; same bytes as streamimage: {same}"
        )
    for name in (WARM, ONE_CHANGED):
        row = by_name.get(name)
        if row is None:
            continue
        same = "yes" if row.sha256s == cold.sha256s else "NO"
        versus = "" if ref is None else f"reference / it {ref.median_s / row.median_s:.2f}x, "
        lines.append(
            f"{name}: {versus}it / floor {row.median_s / floor.median_s:.2f}x, "
            f"identical to the cold run: {same}"
        )
    return "\n".join(lines) + "\n"


def _consumer(report: Report) -> str:
    if report.consumer == "process":
        return f"`{shlex.join(CONSUMER_ARGV)}` in a process of its own (digests it printed)"
    return "sha256 in the harness"


def _hashes(summary: Summary) -> str:
    return ",".join(h[:16] for h in summary.sha256s) or "-"


def _ratio(ratio: float | None) -> str:
    return "n/a" if ratio is None else f"{ratio:.2f}x"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.compare")
    parser.add_argument(
        "--reference",
        default=os.environ.get("STREAMIMAGE_REFERENCE"),
        help="path to stream_layered_image.py (default: env STREAMIMAGE_REFERENCE)",
    )
    parser.add_argument(
        "--skip-reference",
        action="store_true",
        help="leave out the reference (and its gzip/pigz rows): a quick A/B with --baseline-cmd",
    )
    parser.add_argument(
        "--warm",
        action="store_true",
        help="also time streamimage with a filled digest cache (every layer a hit) and with "
        "the app's layer's entry dropped before each run (that layer hashed); the other "
        "streamimage rows run with the cache off",
    )
    parser.add_argument(
        "--replay",
        action="store_true",
        help="also time the finished image sent again with sendfile from the page cache (a"
        " bound: the consumer's limit with a producer that does nothing; written once beside"
        " the corpus, removed at the end)",
    )
    parser.add_argument("--corpus", type=Path, help="corpus dir (generated there if missing)")
    parser.add_argument("--scale", type=float, help="corpus scale (default 1)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--shape", choices=corpus.SHAPES, default="default")
    parser.add_argument(
        "--consumer",
        choices=CONSUMERS,
        default="process",
        help="who reads every contender's stdout: `openssl dgst -sha256` in a process of its"
        " own, as `docker load` hashes the image (default; the floor is tar into it), or a"
        " sha256 in the harness (the floor is then a `tar | openssl` pipeline)",
    )
    parser.add_argument("--runs", type=int, default=5, help="rounds (default 5)")
    parser.add_argument("--json", type=Path, help="also write the report as JSON here")
    parser.add_argument(
        "--tool-cmd",
        default=os.environ.get("STREAMIMAGE_CMD", f"{shlex.quote(sys.executable)} -m streamimage"),
        help="command for streamimage, the conf path is appended, run from the repo root"
        " (default: env STREAMIMAGE_CMD, else this Python's -m streamimage)",
    )
    parser.add_argument(
        "--si-args",
        "--extra-args",
        dest="si_args",
        type=shlex.split,
        default=[],
        help='extra arguments for streamimage (and --baseline-cmd), e.g. --si-args="--compress'
        ' gzip"; adds reference|gzip and reference|pigz baselines (reference|zstd -3 with'
        " -T1 and -T0 for zstd) and skips the identity check against the reference",
    )
    parser.add_argument(
        "--baseline-cmd",
        help='a second streamimage to A/B against, e.g. "env PYTHONPATH=/tmp/before python3 -P'
        ' -m streamimage": run like --tool-cmd (conf path, then --si-args), alternating;'
        " its output must be identical to streamimage's",
    )
    parser.add_argument("--pipe-size", type=int, default=1024 * 1024, help="0: kernel default")
    parser.add_argument("--log", type=Path, help="tools' stderr (default CORPUS/logs/compare.log)")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    if args.consumer == "process" and shutil.which(CONSUMER_ARGV[0]) is None:
        parser.error(f"--consumer process needs {CONSUMER_ARGV[0]} on PATH (or --consumer harness)")
    if args.reference is None and not args.skip_reference:
        parser.error(
            "--reference (or env STREAMIMAGE_REFERENCE) is required without --skip-reference"
        )
    return args


def compile_package() -> None:
    """Write the bytecode of the streamimage package being measured, as `pip install`
    does for an installed one. These machines set PYTHONDONTWRITEBYTECODE=1, so a working
    tree otherwise compiles every module on every run (~0.2 s here): the harness would
    time the compiler, not the tool. The reference, a single script run as __main__, is
    compiled on every run whatever one does."""
    package = Path(__file__).resolve().parent.parent / "streamimage"
    compileall.compile_dir(package, quiet=1)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    compile_package()
    bench = load_corpus(args)
    log: Path = args.log or Path(bench.directory) / "logs" / "compare.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    sys.stderr.write(f"compare: tools' stderr goes to {log}\n")
    with contextlib.ExitStack() as stack:
        pycache = stack.enter_context(tempfile.TemporaryDirectory(prefix="compare-pycache."))
        scratch = None
        if args.replay:
            scratch = stack.enter_context(
                tempfile.TemporaryDirectory(prefix="compare-replay.", dir=bench.directory)
            )
        report = run_all(args, bench, log, pycache, scratch)
    sys.stdout.write(render(report))
    if args.json is not None:
        args.json.write_text(json.dumps(asdict(report), indent=2) + "\n")
    if any(s.failures for s in report.summaries):
        return 1
    return 2 if False in (report.identical, report.baseline_identical) else 0


if __name__ == "__main__":
    sys.exit(main())
