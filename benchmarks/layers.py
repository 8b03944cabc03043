# What one more layer costs: the same files (count and bytes) split over N store paths of
# a layer each, N = 1, 10, 100, streamed by streamimage (digest cache off) and the
# reference. Rule: only N changes between the confs, so (wall(N=100) - wall(N=1)) / 99 is
# the cost of a layer (issue 10: "per-layer overhead under 5 ms"); runs alternate tool and
# N round by round, through the same consumer as benchmarks.compare, and medians are taken.
#
#   python -m benchmarks.layers --reference PATH [--counts 1 10 100] [--files 200]
#       [--bytes 2000000] [--rounds 7] [--consumer process|harness] [--json FILE]
from __future__ import annotations

import argparse
import json
import os
import random
import shlex
import shutil
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from benchmarks import corpus
from benchmarks.compare import compile_package
from benchmarks.runner import (
    COLD,
    CONSUMER_ARGV,
    CONSUMERS,
    Consumer,
    RunResult,
    log_tail,
    median,
    run_once,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
STAMP = "layers-stamp.json"
GOAL_MS = 5.0  # issue 10: per-layer overhead under 5 ms


@dataclass(frozen=True, slots=True)
class LayerSet:
    layers: int
    conf: str
    files: int
    file_bytes: int


@dataclass(frozen=True, slots=True)
class ToolResult:
    tool: str
    medians_s: dict[int, float]  # N -> median wall seconds
    cpu_medians_s: dict[int, float]
    per_layer_ms: float  # (median at the largest N - median at the smallest) / (difference)
    per_layer_ms_by_count: dict[int, float]  # the same against N = smallest, for each N
    failures: int
    sha256s: dict[int, tuple[str, ...]]


def build_layer_set(directory: Path, layers: int, files: int, total_bytes: int) -> LayerSet:
    """Writes `files` files of `total_bytes` together, spread over `layers` store paths of a
    layer each, and their conf (reused when its stamp matches). Raises OSError."""
    params = {"layers": layers, "files": files, "bytes": total_bytes, "version": 1}
    stamp = directory / STAMP
    conf = directory / "conf.json"
    if stamp.exists() and json.loads(stamp.read_text()) == params and conf.exists():
        return LayerSet(layers, str(conf.resolve()), files, total_bytes)
    if directory.exists():
        shutil.rmtree(directory)
    store = directory / "store"
    store.mkdir(parents=True)
    names = random.Random(f"layers-{layers}")
    contents = random.Random(f"layers-{files}-{total_bytes}")  # the same files for every N
    sizes = [total_bytes // files + (i < total_bytes % files) for i in range(files)]
    paths = []
    for number in range(layers):
        hashed = "".join(names.choice(corpus.NIX_BASE32) for _ in range(32))
        path = store / f"{hashed}-layer-{number:03d}"
        (path / "share").mkdir(parents=True)
        paths.append(path)
    for index, size in enumerate(sizes):
        target = paths[index * layers // files] / "share" / f"file-{index:05d}.txt"
        target.write_bytes(contents.randbytes(size))
        target.chmod(0o444)
    customisation = corpus.write_customisation(directory)
    written = corpus.write_conf(directory, store, [[str(p)] for p in paths], customisation)
    stamp.write_text(json.dumps(params) + "\n")
    return LayerSet(layers, str(written.resolve()), files, total_bytes)


def measure(
    sets: list[LayerSet], tools: dict[str, list[str]], args: argparse.Namespace, log: Path
) -> list[ToolResult]:
    """Runs every tool on every set, `args.rounds` times, order rotating each round."""
    runs: dict[tuple[str, int], list[RunResult]] = {}
    order = [(tool, s) for tool in tools for s in sets]
    consumer: Consumer = args.consumer
    for round_no in range(1, args.rounds + 1):
        shift = (round_no - 1) % len(order)
        for tool, layer_set in (*order[shift:], *order[:shift]):
            result = run_once(
                f"{tool} N={layer_set.layers} #{round_no}",
                [*tools[tool], layer_set.conf],
                log=log,
                cwd=REPO_ROOT,
                consumer=consumer,
            )
            runs.setdefault((tool, layer_set.layers), []).append(result)
            sys.stderr.write(
                f"round {round_no}/{args.rounds} {tool:<12} N={layer_set.layers:<4}"
                f" {result.wall_s:8.3f} s  exit {result.exit_code}\n"
            )
    results = []
    counts = [s.layers for s in sets]
    low = min(counts)
    for tool in tools:
        ok = {n: [r for r in runs[(tool, n)] if r.exit_code == 0] for n in counts}
        medians = {n: median([r.wall_s for r in ok[n]]) for n in counts}
        by_count = {n: (medians[n] - medians[low]) / (n - low) * 1000 for n in counts if n != low}
        results.append(
            ToolResult(
                tool=tool,
                medians_s=medians,
                cpu_medians_s={n: median([r.cpu_s for r in ok[n]]) for n in counts},
                per_layer_ms=by_count.get(max(counts), float("nan")),
                per_layer_ms_by_count=by_count,
                failures=sum(len(runs[(tool, n)]) - len(ok[n]) for n in counts),
                sha256s={n: tuple(dict.fromkeys(r.sha256 for r in ok[n])) for n in counts},
            )
        )
    return results


def render(results: list[ToolResult], sets: list[LayerSet], args: argparse.Namespace) -> str:
    counts = [s.layers for s in sets]
    low, high = min(counts), max(counts)
    lines = [
        f"{sets[0].files} files, {sets[0].file_bytes:,} bytes in every conf; store layers"
        f" {', '.join(map(str, counts))}; {args.rounds} rounds, consumer {args.consumer};"
        " median wall seconds",
        "",
        f"{'tool':<12}"
        + "".join(f" {f'N={n} s':>9}" for n in counts)
        + "".join(f" {f'ms/layer {n}v{low}':>15}" for n in counts if n != low)
        + f" {'fail':>4}",
    ]
    lines.extend(
        f"{r.tool:<12}"
        + "".join(f" {r.medians_s[n]:9.3f}" for n in counts)
        + "".join(f" {r.per_layer_ms_by_count[n]:15.2f}" for n in counts if n != low)
        + f" {r.failures:4}"
        for r in results
    )
    lines.append("")
    lines.append(
        f"per-layer overhead = (median wall at N={high} - at N={low}) / {high - low};"
        f" goal (issue 10): under {GOAL_MS:g} ms"
    )
    by_tool = {r.tool: r for r in results}
    if "reference" in by_tool and "streamimage" in by_tool:
        same = all(
            len(by_tool["streamimage"].sha256s[n]) == 1
            and by_tool["streamimage"].sha256s[n] == by_tool["reference"].sha256s[n]
            for n in counts
        )
        lines.append(f"identical to the reference at every N: {'yes' if same else 'NO'}")
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.layers")
    parser.add_argument(
        "--reference",
        default=os.environ.get("STREAMIMAGE_REFERENCE"),
        help="path to stream_layered_image.py (default: env STREAMIMAGE_REFERENCE)",
    )
    parser.add_argument("--skip-reference", action="store_true")
    parser.add_argument(
        "--tool-cmd",
        default=os.environ.get("STREAMIMAGE_CMD", f"{shlex.quote(sys.executable)} -m streamimage"),
        help="command for streamimage; the conf path is appended (run with the cache off)",
    )
    parser.add_argument("--counts", type=int, nargs="+", default=[1, 10, 100])
    parser.add_argument("--files", type=int, default=200, help="files in every conf")
    parser.add_argument("--bytes", type=int, default=2_000_000, help="their bytes together")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--consumer", choices=CONSUMERS, default="process")
    parser.add_argument("--dir", type=Path, default=Path("/tmp/streamimage-bench"))
    parser.add_argument("--json", type=Path)
    parser.add_argument("--log", type=Path)
    args = parser.parse_args(argv)
    if len(set(args.counts)) < 2 or min(args.counts) < 1:
        parser.error("--counts needs at least two different layer counts, each >= 1")
    if args.files < max(args.counts):
        parser.error("--files must be at least the largest count: every layer holds a file")
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    if args.consumer == "process" and shutil.which(CONSUMER_ARGV[0]) is None:
        parser.error(f"--consumer process needs {CONSUMER_ARGV[0]} on PATH (or --consumer harness)")
    if args.reference is None and not args.skip_reference:
        parser.error("--reference (or env STREAMIMAGE_REFERENCE) is required")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    compile_package()
    base = args.dir / f"layers-f{args.files}-b{args.bytes}"
    sets = [build_layer_set(base / f"n-{n}", n, args.files, args.bytes) for n in args.counts]
    tools = {"streamimage": [*COLD, *shlex.split(args.tool_cmd)]}
    if not args.skip_reference:
        tools["reference"] = [sys.executable, str(Path(args.reference).resolve())]
    log: Path = args.log or base / "layers.log"
    sys.stderr.write(f"layers: tools' stderr goes to {log}\n")
    results = measure(sets, tools, args, log)
    sys.stdout.write(render(results, sets, args))
    if args.json is not None:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=2) + "\n")
    if any(r.failures for r in results):
        sys.stderr.write(f"a run failed; the end of {log}:\n{log_tail(log)}\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
