# Times pushing an image to a registry on loopback (Debian's docker-registry, started here
# with storage of its own): streamimage's direct push (cold, re-push, re-push with a warm
# digest cache) against writing an archive and pushing it with skopeo, the way there
# before issue 12 (`reference > file; skopeo copy docker-archive:file docker://...`, and
# the same with streamimage's file), and streamimage writing the file alone (issue 12's
# goal: a cold push no slower than that plus 10 %).
# Rule: rounds alternate the contenders, the order rotating each round; a cold row pushes
# to a repository of its own each run (the registry HEADs per repository), a re-push row
# to one pushed before the round (untimed). Every push is checked: the tag is there after.
#
#   python -m benchmarks.push [--reference PATH] [--corpus DIR | --scale S] [--runs N]
#       [--si-args="--compress gzip"] [--json FILE]
from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

from benchmarks import corpus
from benchmarks.runner import median

REPO_ROOT = Path(__file__).resolve().parent.parent
START_BOUND = 30  # seconds for the registry to answer


@dataclass(slots=True)
class Row:
    name: str
    command: Callable[[str], list[str]]  # the repository to push to -> a shell command
    cold: bool  # a repository of its own each run; else one pushed before (untimed)
    env: dict[str, str] = field(default_factory=dict)
    seconds: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)


@contextmanager
def docker_registry(work: Path) -> Iterator[str]:
    """A docker-registry on 127.0.0.1 with storage under ``work``; yields HOST:PORT."""
    command = shutil.which("docker-registry")
    if command is None:
        raise SystemExit("docker-registry is not installed (apt-get install docker-registry)")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = {
        "version": 0.1,
        "log": {"level": "error", "accesslog": {"disabled": True}},
        "storage": {"filesystem": {"rootdirectory": str(work / "data")}},
        "http": {"addr": f"127.0.0.1:{port}"},
    }
    (work / "config.yml").write_text(json.dumps(config))
    with (work / "registry.log").open("ab") as log:
        server = subprocess.Popen(
            [command, "serve", str(work / "config.yml")], stdout=log, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + START_BOUND
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/", timeout=1):
                    break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(
                        f"docker-registry did not start: see {work}/registry.log"
                    ) from None
                time.sleep(0.1)
        yield f"127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait(30)


def tagged(host: str, repository: str) -> bool:
    try:
        with urllib.request.urlopen(f"http://{host}/v2/{repository}/tags/list") as answer:
            return "t" in (json.load(answer).get("tags") or [])
    except OSError:
        return False


def run(row: Row, command: list[str]) -> None:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(command, env={**os.environ, **row.env}, capture_output=True, check=False)
    row.seconds.append(time.perf_counter() - started)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    row.cpu.append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
    if done.returncode != 0:
        raise SystemExit(f"{row.name}: exited {done.returncode}: {done.stderr[-2000:]!r}")


def rows(args: argparse.Namespace, conf: str, host: str, work: Path) -> list[Row]:
    si = [*shlex.split(args.tool_cmd), conf, *shlex.split(args.si_args)]
    push = [*si, "--tls-verify=false", "-o"]
    skopeo = ["skopeo", "--insecure-policy", "copy", "--dest-tls-verify=false"]
    archive = str(work / "image.tar")
    cache = {"STREAMIMAGE_NO_CACHE": "", "STREAMIMAGE_CACHE_DIR": str(work / "cache")}
    no_cache = {"STREAMIMAGE_NO_CACHE": "1"}

    def via_file(tool: list[str]) -> Callable[[str], list[str]]:
        def command(repository: str) -> list[str]:
            to_file = shlex.join(tool) + " > " + shlex.quote(archive)
            copy = shlex.join(
                [*skopeo, f"docker-archive:{archive}", f"docker://{host}/{repository}:t"]
            )
            return ["sh", "-c", f"{to_file} && {copy}"]

        return command

    found = [
        Row(
            "si > file",
            lambda r: ["sh", "-c", shlex.join(si) + " > " + shlex.quote(archive)],
            cold=True,
            env=no_cache,
        ),
        Row("si push, cold", lambda r: [*push, f"docker://{host}/{r}:t"], cold=True, env=no_cache),
        Row("si > file; skopeo copy", via_file(si), cold=True, env=no_cache),
        Row("si re-push", lambda r: [*push, f"docker://{host}/{r}:t"], cold=False, env=no_cache),
        Row(
            "si re-push, warm cache",
            lambda r: [*push, f"docker://{host}/{r}:t"],
            cold=False,
            env=cache,
        ),
        Row("si > file; skopeo re-push", via_file(si), cold=False, env=no_cache),
    ]
    if args.reference:
        reference = [sys.executable, args.reference, conf]
        found.append(Row("reference > file; skopeo copy", via_file(reference), cold=True))
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.push")
    parser.add_argument("--reference", default=os.environ.get("STREAMIMAGE_REFERENCE"))
    parser.add_argument("--corpus", type=Path, help="corpus dir (generated there if missing)")
    corpus.add_corpus_arguments(parser)
    parser.add_argument("--runs", type=int, default=3, help="rounds (default 3)")
    parser.add_argument("--si-args", default="", help="more streamimage arguments")
    parser.add_argument(
        "--tool-cmd", default=f"{shlex.quote(sys.executable)} -m streamimage", help="streamimage"
    )
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")
    args = parser.parse_args(argv)
    params = corpus.params_from(args)
    directory = args.corpus or corpus.default_corpus_dir(params)
    info = corpus.ensure_corpus_in_subprocess(directory, params)
    os.chdir(REPO_ROOT)
    with tempfile.TemporaryDirectory(prefix="si-push-bench-") as temporary:
        work = Path(temporary)
        with docker_registry(work) as host:
            table = rows(args, info.conf, host, work)
            for round_ in range(args.runs):
                shift = round_ % len(table)
                for number, row in enumerate(table[shift:] + table[:shift]):
                    slug = row.name.replace(" ", "").replace(",", "-").replace(";", "-")
                    slug = "".join(c for c in slug.lower() if c.isalnum() or c == "-")
                    repository = f"bench/{slug}-{round_}-{number}" if row.cold else f"bench/{slug}"
                    if not row.cold and not tagged(host, repository):
                        warm = Row(row.name, row.command, True, row.env)
                        run(warm, row.command(repository))  # untimed: the first push
                    run(row, row.command(repository))
                    if not row.name.endswith("> file") and not tagged(host, repository):
                        raise SystemExit(f"{row.name}: {repository}:t is not there after the push")
    header = f"{'contender':34} {'median s':>9} {'min s':>8} {'cpu s':>7}"
    lines = [header] + [
        f"{row.name:34} {median(row.seconds):9.3f} {min(row.seconds):8.3f} {median(row.cpu):7.2f}"
        for row in table
    ]
    sys.stdout.write(
        f"corpus {info.directory}: {info.entries:,} entries, {info.file_bytes:,} bytes; "
        f"{args.runs} rounds; si args {args.si_args!r}\n" + "\n".join(lines) + "\n"
    )
    if args.json is not None:
        results = [{k: v for k, v in asdict(r).items() if k != "command"} for r in table]
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
