# Watches streamimage's memory while it streams an image into a discarding pipe.
# Rule: memory must not grow with file size or corpus size. A 5 GB sparse file (no disk used)
# shows the first; --scale-check (corpus scale 1 vs 4) shows the second. Every 50 ms the
# tool's process tree is sampled from /proc, next to the bytes streamed so far: PSS summed
# over the tree (smaps_rollup: a page shared by n processes counts 1/n in each, so the sum
# is what the tree holds; the goal is held to it), RSS summed over the tree (counts every
# page a forked worker shares with its parent once per process: shown, never the goal),
# and the peak RSS of each process (VmHWM, exact between samples).
#
#   python -m benchmarks.memory [--size-gb 5] [--with-reference --reference PATH]
#   python -m benchmarks.memory --scale-check [--scales 1 4] [--shape default|nixpkgs|...]
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from benchmarks import corpus
from benchmarks.runner import COLD, Progress, RunResult, log_tail, median, run_once

REPO_ROOT = Path(__file__).resolve().parent.parent
GIB = 1024**3
MIB = 1024**2
GOAL_KIB = 150 * 1000  # the flat-memory goal: 150 MB of the tree's PSS
FLAT_TOLERANCE_KIB = 16 * 1024  # growth allowed past the first GiB, or from scale 1 to 4


@dataclass(frozen=True, slots=True)
class Sample:
    t_s: float
    out_bytes: int
    pss_kib: int  # Pss (smaps_rollup) summed over the process tree
    rss_kib: int  # VmRSS summed over the process tree (shared pages counted in each)
    processes: int


@dataclass(frozen=True, slots=True)
class TreeSample:
    """One look at a process tree: its PSS and RSS sums, and each process's VmHWM."""

    pss_kib: int
    rss_kib: int
    hwm_kib: dict[int, int]  # pid -> VmHWM (KiB), of the processes alive now


@dataclass(frozen=True, slots=True)
class MemoryRun:
    tool: str
    label: str
    run: RunResult
    samples: int
    peak_pss_kib: int  # the largest sampled tree PSS: what the goal is held to
    peak_pss_by_1gib_kib: int  # the largest sampled before 1 GiB had been streamed
    growth_after_1gib_kib: int  # of the PSS
    flat: bool
    peak_rss_sum_kib: int  # the largest sampled tree RSS (shared pages counted per process)
    peak_root_rss_kib: int  # the tool's own VmHWM
    peak_worker_rss_kib: int  # the largest VmHWM of its workers (0: none seen)
    most_processes: int  # the most processes sampled at once
    trace: tuple[Sample, ...]


@dataclass(frozen=True, slots=True)
class ScaleCheck:
    runs: tuple[MemoryRun, ...]
    peak_pss_kib: tuple[int, ...]  # the median PSS peak of each scale, in --scales order
    growth_kib: int  # PSS peak at the largest scale minus PSS peak at the smallest
    rss_sum_growth_kib: int  # the same of the summed RSS, for comparison
    within_goal: bool  # every PSS peak <= GOAL_KIB
    flat: bool


def _tree(pid: int) -> list[int]:
    """`pid` and its descendants, through /proc/PID/task/TID/children."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        try:
            for task in os.listdir(f"/proc/{current}/task"):
                with open(f"/proc/{current}/task/{task}/children") as f:
                    todo.extend(int(child) for child in f.read().split())
        except OSError:
            continue
    return found


def _kib_fields(path: str, names: tuple[str, ...]) -> dict[str, int]:
    """The `name: N kB` lines of a /proc file; {} if the process is gone."""
    found = {}
    try:
        with open(path) as f:
            for line in f:
                name, _, value = line.partition(":")
                if name in names:
                    found[name] = int(value.split()[0])
    except (OSError, ValueError, IndexError):
        return {}
    return found


def sample_tree(pid: int) -> TreeSample:
    """PSS and RSS of `pid` and its descendants, summed, and each one's VmHWM. A process
    that ends between the reads counts 0 (a zombie has no VmRSS line)."""
    pss = rss = 0
    hwm = {}
    for member in _tree(pid):
        status = _kib_fields(f"/proc/{member}/status", ("VmRSS", "VmHWM"))
        if "VmRSS" not in status:
            continue
        rollup = _kib_fields(f"/proc/{member}/smaps_rollup", ("Pss",))
        rss += status["VmRSS"]
        pss += rollup.get("Pss", status["VmRSS"])  # no smaps_rollup (Linux < 4.14): RSS
        hwm[member] = status.get("VmHWM", status["VmRSS"])
    return TreeSample(pss, rss, hwm)


class Sampler:
    """Polls the tree's memory every `interval_s` in a thread, until stopped."""

    def __init__(self, progress: Progress, interval_s: float) -> None:
        self.progress = progress
        self.interval_s = interval_s
        self.samples: list[Sample] = []
        self.hwm_kib: dict[int, int] = {}  # pid -> the largest VmHWM seen
        self.root = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._started = 0.0

    def start(self, pid: int) -> None:
        self.root = pid
        self._started = time.perf_counter()
        self._thread = threading.Thread(target=self._poll, args=(pid,), daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _poll(self, pid: int) -> None:
        while not self._stop.is_set():
            tree = sample_tree(pid)
            if tree.rss_kib:
                t = time.perf_counter() - self._started
                out = self.progress.out_bytes
                self.samples.append(Sample(t, out, tree.pss_kib, tree.rss_kib, len(tree.hwm_kib)))
                for member, hwm in tree.hwm_kib.items():
                    self.hwm_kib[member] = max(hwm, self.hwm_kib.get(member, 0))
            self._stop.wait(self.interval_s)


def measure(tool: str, label: str, argv: list[str], log: Path, interval_s: float) -> MemoryRun:
    """Runs `argv` into a discarding pipe while sampling its RSS; raises OSError."""
    progress = Progress()
    sampler = Sampler(progress, interval_s)
    try:
        run = run_once(
            label,
            argv,
            log=log,
            cwd=REPO_ROOT,
            hash_output=False,
            progress=progress,
            on_start=sampler.start,
        )
    finally:
        sampler.stop()
    samples = sampler.samples
    peak = max((s.pss_kib for s in samples), default=0)
    early = max((s.pss_kib for s in samples if s.out_bytes <= GIB), default=0)
    workers = [hwm for member, hwm in sampler.hwm_kib.items() if member != sampler.root]
    return MemoryRun(
        tool=tool,
        label=label,
        run=run,
        samples=len(samples),
        peak_pss_kib=peak,
        peak_pss_by_1gib_kib=early,
        growth_after_1gib_kib=peak - early,
        flat=peak - early <= FLAT_TOLERANCE_KIB,
        peak_rss_sum_kib=max((s.rss_kib for s in samples), default=0),
        peak_root_rss_kib=sampler.hwm_kib.get(sampler.root, 0),
        peak_worker_rss_kib=max(workers, default=0),
        most_processes=max((s.processes for s in samples), default=0),
        trace=tuple(samples),
    )


def build_sparse_store(directory: Path, size_gb: float) -> Path:
    """A store with one sparse `size_gb` GB file and a few small files; returns conf.json."""
    directory = directory.resolve()
    store = directory / "store"
    blob_path = store / "0123456789abcdfghijklmnpqrsvwxyz-sparse-blob"
    tools_path = store / "zyxwvsrqpnmlkjihgfdcba9876543210-small-tool"
    huge = blob_path / "data" / "huge.img"
    size = int(size_gb * 1e9)
    (blob_path / "data").mkdir(parents=True, exist_ok=True)
    (tools_path / "bin").mkdir(parents=True, exist_ok=True)
    if not huge.exists() or huge.stat().st_size != size:
        with open(huge, "wb") as f:
            os.truncate(f.fileno(), size)  # a hole: no disk blocks, reads as zeros
    for i in range(8):
        (blob_path / "data" / f"small-{i}.txt").write_text(f"small file {i}\n" * (i + 1))
    tool = tools_path / "bin" / "tool"
    tool.write_text("#!/bin/sh\necho tool\n")
    tool.chmod(0o755)
    customisation = corpus.write_customisation(directory)
    return corpus.write_conf(directory, store, [[str(blob_path)], [str(tools_path)]], customisation)


def _tool_argv(args: argparse.Namespace, conf: Path) -> list[str]:
    # Cold, as a first build is: with its digest cache a rerun would skip the hash passes
    # (and their workers), and the result would depend on what ran before.
    return [*COLD, *shlex.split(args.tool_cmd), str(conf)]


def _reference_argv(args: argparse.Namespace, conf: Path) -> list[str]:
    return [sys.executable, str(Path(args.reference).resolve()), str(conf)]


def _mib(kib: int) -> str:
    return f"{kib / 1024:6.1f}"


def _line(m: MemoryRun) -> str:
    status = "ok" if m.run.exit_code == 0 else f"EXIT {m.run.exit_code}"
    return (
        f"{m.tool:<12} {m.label:<22} {m.run.wall_s:7.1f} s {m.run.out_bytes / 1e9:6.2f} GB"
        f"  PSS peak {_mib(m.peak_pss_kib)} MiB (by 1 GiB {_mib(m.peak_pss_by_1gib_kib)})"
        f"  RSS sum peak {_mib(m.peak_rss_sum_kib)}  RSS of tool {_mib(m.peak_root_rss_kib)}"
        f" worker {_mib(m.peak_worker_rss_kib)}  procs {m.most_processes}"
        f"  flat {'yes' if m.flat else 'NO'}  {m.samples} samples  {status}"
    )


def sparse_check(args: argparse.Namespace, log: Path) -> list[MemoryRun]:
    directory = args.dir or Path("/tmp/streamimage-bench") / f"memory-sparse-{args.size_gb:g}gb"
    conf = build_sparse_store(directory, args.size_gb)
    label = f"sparse {args.size_gb:g} GB"
    runs = [measure("streamimage", label, _tool_argv(args, conf), log, args.interval)]
    if args.with_reference:
        runs.append(measure("reference", label, _reference_argv(args, conf), log, args.interval))
    return runs


def scale_check(args: argparse.Namespace, log: Path) -> ScaleCheck:
    """Each scale `args.runs` times, in rounds (every scale once a round), so that a busy
    spell of a shared machine doesn't land on one scale only; growth is of the medians."""
    confs = []
    for scale in args.scales:
        params = corpus.CorpusParams(scale=scale, seed=args.seed, shape=args.shape)
        info = corpus.ensure_corpus_in_subprocess(corpus.default_corpus_dir(params), params)
        confs.append((f"{args.shape} scale {scale:g}", Path(info.conf)))
    runs = []
    for _ in range(args.runs):
        for label, conf in confs:
            runs.append(measure("streamimage", label, _tool_argv(args, conf), log, args.interval))
            if args.with_reference:
                argv = _reference_argv(args, conf)
                runs.append(measure("reference", label, argv, log, args.interval))
    mine = [[m for m in runs if m.tool == "streamimage" and m.label == label] for label, _ in confs]
    pss = [int(median([m.peak_pss_kib for m in of_scale])) for of_scale in mine]
    rss_sum = [int(median([m.peak_rss_sum_kib for m in of_scale])) for of_scale in mine]
    return ScaleCheck(
        runs=tuple(runs),
        peak_pss_kib=tuple(pss),
        growth_kib=pss[-1] - pss[0],
        rss_sum_growth_kib=rss_sum[-1] - rss_sum[0],
        within_goal=all(m.peak_pss_kib <= GOAL_KIB for of_scale in mine for m in of_scale),
        flat=pss[-1] - pss[0] <= FLAT_TOLERANCE_KIB,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.memory")
    parser.add_argument("--size-gb", type=float, default=5.0, help="sparse file size (GB)")
    parser.add_argument("--dir", type=Path, help="where the sparse store goes")
    parser.add_argument("--scale-check", action="store_true", help="peak RSS at corpus scales")
    parser.add_argument("--scales", type=float, nargs="+", default=[1.0, 4.0])
    parser.add_argument("--runs", type=int, default=1, help="runs of each scale (medians)")
    parser.add_argument(
        "--shape", choices=corpus.SHAPES, default="default", help="corpus of --scale-check"
    )
    parser.add_argument("--seed", type=int, default=1, help="corpus seed of --scale-check")
    parser.add_argument("--with-reference", action="store_true")
    parser.add_argument(
        "--reference",
        default=os.environ.get("STREAMIMAGE_REFERENCE"),
        help="path to stream_layered_image.py (default: env STREAMIMAGE_REFERENCE)",
    )
    parser.add_argument(
        "--tool-cmd",
        default=os.environ.get("STREAMIMAGE_CMD", f"{shlex.quote(sys.executable)} -m streamimage"),
        help="command for streamimage, the conf path is appended, run from the repo root"
        " (default: env STREAMIMAGE_CMD, else this Python's -m streamimage)",
    )
    parser.add_argument("--interval", type=float, default=0.05, help="seconds between samples")
    parser.add_argument("--json", type=Path, help="also write the results (with traces) here")
    parser.add_argument("--log", type=Path, default=Path("/tmp/streamimage-bench/memory.log"))
    args = parser.parse_args(argv)
    if args.with_reference and not args.reference:
        parser.error("--with-reference needs --reference PATH")
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    args.log.parent.mkdir(parents=True, exist_ok=True)
    sys.stderr.write(f"memory: tools' stderr goes to {args.log}\n")

    result: ScaleCheck | list[MemoryRun]
    if args.scale_check:
        check = scale_check(args, args.log)
        runs, result = list(check.runs), check
    else:
        runs = sparse_check(args, args.log)
        result = runs
    sys.stdout.writelines(_line(m) + "\n" for m in runs)
    if isinstance(result, ScaleCheck):
        medians = ", ".join(
            f"scale {scale:g} {_mib(kib).strip()}"
            for scale, kib in zip(args.scales, result.peak_pss_kib, strict=True)
        )
        sys.stdout.write(
            f"PSS peaks (median of {args.runs}): {medians} MiB\n"
            f"scale check: PSS growth {result.growth_kib / 1024:.1f} MiB"
            f" (flat: {'yes' if result.flat else 'NO'}, tolerance {FLAT_TOLERANCE_KIB // 1024}"
            f" MiB); every PSS peak <= {GOAL_KIB // 1000} MB:"
            f" {'yes' if result.within_goal else 'NO'}; summed RSS grew"
            f" {result.rss_sum_growth_kib / 1024:.1f} MiB\n"
        )
    if any(m.run.exit_code for m in runs):
        sys.stderr.write(f"a tool failed; the end of {args.log}:\n{log_tail(args.log)}\n")
        return 1
    if args.json is not None:
        payload = asdict(result) if isinstance(result, ScaleCheck) else [asdict(m) for m in runs]
        args.json.write_text(json.dumps(payload, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
