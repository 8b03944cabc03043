# Times pushing an image to a registry on loopback (Debian's docker-registry, started here
# with storage of its own): streamimage's direct push (cold, re-push, re-push with a warm
# digest cache) against writing an archive and pushing it with skopeo, the way there
# before issue 12 (`reference > file; skopeo copy docker-archive:file docker://...`, and
# the same with streamimage's file), streamimage writing the file alone (issue 12's goal:
# a cold push no slower than that plus 10 %), and curl sending the image's blobs as they
# are (the registry's own ingest: no pusher can beat it).
# Rule: rounds alternate the contenders, the order rotating each round; a cold row pushes
# to a repository of its own each run (the registry HEADs per repository), a re-push row
# to one pushed before the round (untimed). Every push is checked: the tag is there after.
# The registry's storage and every file a row writes are in one work directory, so the
# file rows and the registry write to the same kind of storage: tmpfs (/dev/shm) when it
# has room, else $TMPDIR (--work-dir to choose). Each row also reports the CPU the
# registry spent on it (/proc/PID/stat): what the push costs on the registry's side.
#
#   python -m benchmarks.push [--reference PATH] [--corpus DIR | --scale S] [--runs N]
#       [--si-args="--compress gzip"] [--rows "cold|warm|-skopeo"] [--work-dir DIR]
#       [--baseline-cmd "env PYTHONPATH=/tmp/before python3 -P -m streamimage"] [--json FILE]
from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

from benchmarks import corpus
from benchmarks.compare import compile_package
from benchmarks.runner import median

REPO_ROOT = Path(__file__).resolve().parent.parent
START_BOUND = 30  # seconds for the registry to answer
SHM = Path("/dev/shm")
SHM_ROOM = 3  # times the corpus's bytes free on tmpfs to work there (archive + registry)
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

# The registry's ingest, without a pusher: curl sends each blob of the image as a file,
# as a push does (POST, one PATCH of the whole blob streamed with its length, PUT
# ?digest=), one blob at a time or up to 3 at once (UPLOADS_AT_ONCE). Arguments: HOST
# REPOSITORY AT_ONCE BLOB_DIR (files named by their sha256).
CURL_PUSH = r"""
set -eu
host=$1 repo=$2 at_once=$3 dir=$4
one() {
  digest=$(basename "$1")
  loc=$(curl -sf -D - -o /dev/null -X POST "http://$host/v2/$repo/blobs/uploads/" \
        | tr -d '\r' | awk 'tolower($1) == "location:" {print $2}')
  case $loc in http*) ;; *) loc="http://$host$loc" ;; esac
  loc=$(curl -sf -D - -o /dev/null -X PATCH -H 'Content-Type: application/octet-stream' \
        -T "$1" "$loc" | tr -d '\r' | awk 'tolower($1) == "location:" {print $2}')
  case $loc in http*) ;; *) loc="http://$host$loc" ;; esac
  case $loc in *\?*) sep='&' ;; *) sep='?' ;; esac
  curl -sf -o /dev/null -X PUT -H 'Content-Length: 0' "$loc${sep}digest=sha256:$digest"
}
export -f one
export host repo
ls -S "$dir"/* | xargs -P "$at_once" -I{} bash -c 'one {}'
"""


@dataclass(slots=True)
class Row:
    name: str
    command: Callable[[str], list[str]]  # the repository to push to -> a shell command
    cold: bool  # a repository of its own each run; else one pushed before (untimed)
    env: dict[str, str] = field(default_factory=dict)
    tagged: bool = True  # the command tags the image (checked after each run)
    seconds: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    registry_cpu: list[float] = field(default_factory=list)


@dataclass(slots=True)
class Registry:
    host: str  # HOST:PORT
    pid: int

    def cpu(self) -> float:
        """User and system seconds the registry has used so far."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime


@contextmanager
def docker_registry(work: Path) -> Iterator[Registry]:
    """A docker-registry on 127.0.0.1 with storage under ``work``."""
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
        yield Registry(f"127.0.0.1:{port}", server.pid)
    finally:
        server.terminate()
        server.wait(30)


def tagged(host: str, repository: str) -> bool:
    try:
        with urllib.request.urlopen(f"http://{host}/v2/{repository}/tags/list") as answer:
            return "t" in (json.load(answer).get("tags") or [])
    except OSError:
        return False


def run(row: Row, command: list[str], registry: Registry) -> None:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    registry_before = registry.cpu()
    started = time.perf_counter()
    done = subprocess.run(command, env={**os.environ, **row.env}, capture_output=True, check=False)
    row.seconds.append(time.perf_counter() - started)
    row.registry_cpu.append(registry.cpu() - registry_before)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    row.cpu.append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
    if done.returncode != 0:
        raise SystemExit(f"{row.name}: exited {done.returncode}: {done.stderr[-2000:]!r}")


def image_blobs(tool: list[str], work: Path) -> Path:
    """The blobs of the image ``tool`` writes (a docker-archive's layers and config, an OCI
    archive's blobs), written once, untimed, as files named by their sha256: the curl rows
    send them."""
    blobs = work / "blobs"
    blobs.mkdir()
    archive = work / "blobs.tar"
    with archive.open("wb") as out:
        no_cache = {**os.environ, "STREAMIMAGE_NO_CACHE": "1"}
        subprocess.run(tool, stdout=out, stderr=subprocess.DEVNULL, check=True, env=no_cache)
    with tarfile.open(archive) as tar:
        members = [m for m in tar if m.isfile()]
        oci = [m for m in members if m.name.startswith("blobs/sha256/")]
        docker = [
            m
            for m in members
            if m.name.endswith("/layer.tar") or (m.name.endswith(".json") and len(m.name) == 69)
        ]
        for member in oci or docker:
            source = tar.extractfile(member)
            assert source is not None
            sha = hashlib.sha256()
            part = blobs / "part"
            with source, part.open("wb") as target:
                while piece := source.read(1 << 20):
                    sha.update(piece)
                    target.write(piece)
            part.rename(blobs / sha.hexdigest())
    archive.unlink()
    return blobs


def rows(args: argparse.Namespace, conf: str, host: str, work: Path) -> list[Row]:
    def si_of(tool_cmd: str) -> list[str]:
        return [*shlex.split(tool_cmd), conf, *shlex.split(args.si_args)]

    si = si_of(args.tool_cmd)
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

    def pushes(tool: list[str], prefix: str, cache_dir: str) -> list[Row]:
        push = [*tool, "--tls-verify=false", "-o"]

        def to(repository: str) -> list[str]:
            return [*push, f"docker://{host}/{repository}:t"]

        warm = {**cache, "STREAMIMAGE_CACHE_DIR": cache_dir}
        to_file = ["sh", "-c", shlex.join(tool) + " > " + shlex.quote(archive)]
        return [
            Row(f"{prefix} > file", lambda r: to_file, cold=True, env=no_cache, tagged=False),
            Row(f"{prefix} push, cold", to, cold=True, env=no_cache),
            Row(f"{prefix} re-push", to, cold=False, env=no_cache),
            Row(f"{prefix} re-push, warm cache", to, cold=False, env=warm),
        ]

    found = pushes(si, "si", cache["STREAMIMAGE_CACHE_DIR"])
    if args.baseline_cmd:
        found += pushes(si_of(args.baseline_cmd), "base", str(work / "base-cache"))
    found += [
        Row("si > file; skopeo copy", via_file(si), cold=True, env=no_cache),
        Row("si > file; skopeo re-push", via_file(si), cold=False, env=no_cache),
    ]
    if args.reference:
        reference = [sys.executable, args.reference, conf]
        found.append(Row("reference > file; skopeo copy", via_file(reference), cold=True))
    script = work / "curl-push.sh"
    script.write_text(CURL_PUSH)

    def curl(at_once: int) -> Callable[[str], list[str]]:
        def command(repository: str) -> list[str]:
            return ["bash", str(script), host, repository, str(at_once), str(work / "blobs")]

        return command

    for at_once in (1, 3):
        found.append(Row(f"curl: blobs, {at_once} at once", curl(at_once), cold=True, tagged=False))
    if args.rows:
        words = [w.strip() for w in args.rows.split("|") if w.strip()]
        wanted = [w for w in words if not w.startswith("-")] or [""]
        unwanted = [w[1:] for w in words if w.startswith("-")]
        found = [
            row
            for row in found
            if any(w in row.name for w in wanted) and not any(w in row.name for w in unwanted)
        ]
    return found


def work_parent(choice: str | None, corpus_bytes: int) -> Path | None:
    """Where the work directory goes: ``choice``, else tmpfs if it has room, else $TMPDIR."""
    if choice is not None:
        return Path(choice)
    room = SHM.is_dir() and os.access(SHM, os.W_OK)
    if room and shutil.disk_usage(SHM).free >= SHM_ROOM * corpus_bytes:
        return SHM
    return None


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
    parser.add_argument(
        "--baseline-cmd",
        help="another streamimage (an A/B): its file, push and re-push rows too, as 'base'",
    )
    parser.add_argument(
        "--rows",
        help="only the rows whose names contain one of these words ('|' between them), "
        "but none of those given with a '-' (e.g. 'push, cold|curl|-skopeo')",
    )
    parser.add_argument(
        "--work-dir",
        help="where the registry's storage and the files go (default: /dev/shm if it has "
        f"{SHM_ROOM}x the corpus free, else $TMPDIR)",
    )
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")
    args = parser.parse_args(argv)
    # stopped (timeout, kill): the registry and the work directory still go
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    params = corpus.params_from(args)
    directory = args.corpus or corpus.default_corpus_dir(params)
    info = corpus.ensure_corpus_in_subprocess(directory, params)
    os.chdir(REPO_ROOT)
    compile_package()
    parent = work_parent(args.work_dir, info.file_bytes)
    with tempfile.TemporaryDirectory(prefix="si-push-bench-", dir=parent) as temporary:
        work = Path(temporary)
        with docker_registry(work) as registry:
            host = registry.host
            table = rows(args, info.conf, host, work)
            if any(row.name.startswith("curl") for row in table):
                si = [*shlex.split(args.tool_cmd), info.conf, *shlex.split(args.si_args)]
                image_blobs(si, work)
            for round_ in range(args.runs):
                shift = round_ % len(table)
                for number, row in enumerate(table[shift:] + table[:shift]):
                    slug = row.name.replace(" ", "").replace(",", "-").replace(";", "-")
                    slug = "".join(c for c in slug.lower() if c.isalnum() or c == "-")
                    repository = f"bench/{slug}-{round_}-{number}" if row.cold else f"bench/{slug}"
                    if not row.cold and not tagged(host, repository):
                        first = Row(row.name, row.command, True, row.env)
                        run(first, row.command(repository), registry)  # untimed: the first push
                    run(row, row.command(repository), registry)
                    if row.tagged and not tagged(host, repository):
                        raise SystemExit(f"{row.name}: {repository}:t is not there after the push")
    header = f"{'contender':34} {'median s':>9} {'min s':>8} {'cpu s':>7} {'registry cpu s':>15}"
    lines = [header] + [
        f"{row.name:34} {median(row.seconds):9.3f} {min(row.seconds):8.3f} "
        f"{median(row.cpu):7.2f} {median(row.registry_cpu):15.2f}"
        for row in table
    ]
    where = "tmpfs" if parent == SHM else str(parent or tempfile.gettempdir())
    sys.stdout.write(
        f"corpus {info.directory}: {info.entries:,} entries, {info.file_bytes:,} bytes; "
        f"{args.runs} rounds; si args {args.si_args!r}; registry storage and files on "
        f"{where}\n" + "\n".join(lines) + "\n"
    )
    if args.json is not None:
        results = [{k: v for k, v in asdict(r).items() if k != "command"} for r in table]
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
