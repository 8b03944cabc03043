# Times the reference script and streamimage side by side on one corpus, plus GNU tar as
# the floor. Rule: runs alternate (reference, streamimage, floors, ...) round by round so
# drift hits every contender alike, and every contender's stdout goes through the same
# consumer (runner.run_once); outputs must be byte-identical unless --si-args changes them.
#
#   python -m benchmarks.compare --reference PATH [--corpus DIR | --scale S] [--runs N]
#       [--json FILE] [--tool-cmd "python3 -m streamimage"] [--si-args="--compress gzip"]
from __future__ import annotations

import argparse
import compileall
import json
import os
import shlex
import shutil
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from benchmarks import corpus
from benchmarks.runner import RunResult, log_tail, median, run_once, shell_pipeline

REPO_ROOT = Path(__file__).resolve().parent.parent
REFERENCE = "reference"
STREAMIMAGE = "streamimage"
FLOOR = "floor: tar|openssl"
TAR_TO_HARNESS = "tar -> harness"


@dataclass(frozen=True, slots=True)
class Contender:
    name: str
    argv: tuple[str, ...]
    role: str  # "tool", "floor" or "baseline" (reference piped into a compressor)


@dataclass(frozen=True, slots=True)
class Corpus:
    conf: str
    store_dir: str
    store_paths: tuple[str, ...]
    entries: int
    file_bytes: int
    directory: str


@dataclass(frozen=True, slots=True)
class Summary:
    name: str
    argv: tuple[str, ...]
    runs: tuple[RunResult, ...]
    failures: int
    median_s: float
    min_s: float
    max_s: float
    median_cpu_s: float
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
    pipe_size: int
    si_args: tuple[str, ...]
    summaries: tuple[Summary, ...]
    identical: bool | None  # None when --si-args makes the outputs differ by design
    reference_deterministic: bool
    speedup: float  # reference median / streamimage median
    si_over_floor: float  # streamimage median / floor median


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


def contenders(args: argparse.Namespace, bench: Corpus) -> list[Contender]:
    reference = (sys.executable, str(Path(args.reference).resolve()), bench.conf)
    tool = (*shlex.split(args.tool_cmd), bench.conf, *args.si_args)
    names = [os.path.relpath(path, bench.store_dir) for path in bench.store_paths]
    tar = ("tar", "-C", bench.store_dir, "-cf", "-", "--", *names)
    found = [
        Contender(REFERENCE, reference, "tool"),
        Contender(STREAMIMAGE, tool, "tool"),
        Contender(FLOOR, tuple(shell_pipeline(tar, ("openssl", "dgst", "-sha256"))), "floor"),
        Contender(TAR_TO_HARNESS, tar, "floor"),
    ]
    if args.si_args:
        gzip = ("gzip", "-6")
        found.append(
            Contender("reference|gzip -6", tuple(shell_pipeline(reference, gzip)), "baseline")
        )
        if shutil.which("pigz"):
            pigz = ("pigz", "-6")
            found.append(
                Contender("reference|pigz -6", tuple(shell_pipeline(reference, pigz)), "baseline")
            )
    return found


def summarize(
    contender: Contender, runs: list[RunResult], bench: Corpus, tar_bytes: int
) -> Summary:
    ok = [run for run in runs if run.exit_code == 0]
    med = median([run.wall_s for run in ok])
    stream = tar_bytes if contender.name == FLOOR else (ok[0].out_bytes if ok else 0)
    return Summary(
        name=contender.name,
        argv=contender.argv,
        runs=tuple(runs),
        failures=len(runs) - len(ok),
        median_s=med,
        min_s=min((run.wall_s for run in ok), default=float("nan")),
        max_s=max((run.wall_s for run in ok), default=float("nan")),
        median_cpu_s=median([run.cpu_s for run in ok]),
        stream_bytes=stream,
        mb_per_s=stream / med / 1e6 if ok else float("nan"),
        files_per_s=bench.entries / med if ok else float("nan"),
        peak_rss_kib=max((run.maxrss_kib for run in runs), default=0),
        rss_floor_kib=max((run.harness_rss_kib for run in runs), default=0),
        sha256s=tuple(dict.fromkeys(run.sha256 for run in ok)),
    )


def run_all(args: argparse.Namespace, bench: Corpus, log: Path) -> Report:
    field = contenders(args, bench)
    # Warm the page cache. Not into /dev/null: GNU tar then skips reading file data.
    warm = run_once("warm-up", field[3].argv, log=log, pipe_size=args.pipe_size)
    if warm.exit_code != 0:
        raise RuntimeError(f"warm-up tar failed ({warm.exit_code}): {log_tail(log)}")
    results: dict[str, list[RunResult]] = {c.name: [] for c in field}
    for round_no in range(1, args.runs + 1):
        for contender in field:
            result = run_once(
                f"{contender.name} #{round_no}",
                contender.argv,
                log=log,
                cwd=REPO_ROOT,
                pipe_size=args.pipe_size,
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
    ref, si = by_name[REFERENCE], by_name[STREAMIMAGE]
    failed = ref.failures or si.failures
    identical: bool | None = None
    if not args.si_args:
        identical = not failed and len({*ref.sha256s, *si.sha256s}) == 1
    return Report(
        corpus=bench,
        runs=args.runs,
        pipe_size=args.pipe_size,
        si_args=tuple(args.si_args),
        summaries=summaries,
        identical=identical,
        reference_deterministic=ref.failures == 0 and len(ref.sha256s) == 1,
        speedup=ref.median_s / si.median_s,
        si_over_floor=si.median_s / by_name[FLOOR].median_s,
    )


def render(report: Report) -> str:
    bench = report.corpus
    si = next(s for s in report.summaries if s.name == STREAMIMAGE)
    lines = [
        f"corpus   {bench.directory}: {bench.entries:,} entries, {bench.file_bytes / 1e6:,.1f} MB"
        f" of file data, {len(bench.store_paths)} store paths",
        f"runs     {report.runs} per contender, alternating; consumer: sha256 in the harness,"
        f" pipe {report.pipe_size} B; median times",
        "",
        f"{'contender':<20} {'median s':>9} {'min s':>8} {'cpu s':>8} {'MB/s':>8} {'files/s':>9}"
        f" {'peak RSS':>9} {'stream MB':>10} {'x si':>6} {'fail':>4}",
    ]
    lines.extend(
        f"{s.name:<20} {s.median_s:9.3f} {s.min_s:8.3f} {s.median_cpu_s:8.2f}"
        f" {s.mb_per_s:8.1f} {s.files_per_s:9,.0f} {s.peak_rss_kib / 1024:6.1f} MiB"
        f" {s.stream_bytes / 1e6:10.1f} {s.median_s / si.median_s:6.2f} {s.failures:4}"
        for s in report.summaries
    )
    lines.append("")
    if report.identical is None:
        lines.append(f"identical: not checked (--si-args {shlex.join(report.si_args)})")
    else:
        ref = next(s for s in report.summaries if s.name == REFERENCE)
        verdict = "yes" if report.identical else "NO"
        lines.append(
            f"identical: {verdict}  reference {','.join(h[:16] for h in ref.sha256s)}"
            f"  streamimage {','.join(h[:16] for h in si.sha256s)}"
        )
    floor_mib = max(s.rss_floor_kib for s in report.summaries) / 1024
    lines.append(
        f"peak RSS: ru_maxrss of the child tree; {floor_mib:.1f} MiB is the harness's own and"
        " a floor under it (Linux carries it through fork+exec)"
    )
    lines.append(f"speedup (reference / streamimage): {report.speedup:.2f}x")
    lines.append(f"streamimage / floor (tar|openssl): {report.si_over_floor:.2f}x")
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.compare")
    parser.add_argument(
        "--reference",
        default=os.environ.get("STREAMIMAGE_REFERENCE"),
        required="STREAMIMAGE_REFERENCE" not in os.environ,
        help="path to stream_layered_image.py (default: env STREAMIMAGE_REFERENCE)",
    )
    parser.add_argument("--corpus", type=Path, help="corpus dir (generated there if missing)")
    parser.add_argument("--scale", type=float, help="corpus scale (default 1)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--shape", choices=corpus.SHAPES, default="default")
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
        help='extra arguments for streamimage only, e.g. --si-args="--compress gzip"; '
        "adds reference|gzip and reference|pigz baselines and skips the identity check",
    )
    parser.add_argument("--pipe-size", type=int, default=1024 * 1024, help="0: kernel default")
    parser.add_argument("--log", type=Path, help="tools' stderr (default CORPUS/logs/compare.log)")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
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
    report = run_all(args, bench, log)
    sys.stdout.write(render(report))
    if args.json is not None:
        args.json.write_text(json.dumps(asdict(report), indent=2) + "\n")
    if any(s.failures for s in report.summaries):
        return 1
    return 2 if report.identical is False else 0


if __name__ == "__main__":
    sys.exit(main())
