"""The command line: arguments, the conf file, stdout or ``-o FILE``, signals, exit statuses.

Rule 1: stdout carries the image and nothing else; every message goes to stderr.
Rule 2: every failure ends as one line ``streamimage: error: ...`` and a non-zero status
(2 for usage and conf errors, 1 for failures while running, 128+N for signal N); the
traceback only with ``--debug``.  ExceptionGroups from task groups are unwrapped here.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import traceback
from collections.abc import Sequence
from typing import Any

import anyio
import anyio.abc
import anyio.to_thread
import platformdirs

from streamimage import __version__
from streamimage.destinations.dockerarchive import write_docker_archive
from streamimage.destinations.ociarchive import write_oci_archive
from streamimage.destinations.ocidir import write_oci_dir
from streamimage.destinations.output import check_output_file, open_output
from streamimage.destinations.registry import Pushed, RegistryTarget, push
from streamimage.engine.pipeline import STDOUT, FdSink, watch_reader
from streamimage.engine.walk import check_under
from streamimage.engine.workers import FORK, STOP_SIGNALS, cpu_workers
from streamimage.errors import ConfError, StreamImageError, UsageError
from streamimage.image import Build, Image
from streamimage.layers.base import open_base_image
from streamimage.layers.customisation import open_customisation
from streamimage.options import (
    FORMAT_DOCKER,
    FORMAT_OCI,
    FORMAT_OCI_DIR,
    FORMATS,
    ZSTD,
    Options,
    parse_compression,
    parse_size,
)
from streamimage.remote.reference import (
    check_repository,
    is_registry_reference,
    parse_reference,
)
from streamimage.report import Reporter
from streamimage.spec import Conf, parse_conf

CONF_MAX = 64 * 2**20  # bytes: nixpkgs' confs are kilobytes (a conf of 10,000 paths: ~1 MB)
CACHE_DIR_ENV = "STREAMIMAGE_CACHE_DIR"
NO_CACHE_ENV = "STREAMIMAGE_NO_CACHE"


class Interrupted(StreamImageError):
    """A signal asked us to stop."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.exit_status = 128 + signum


def _boolean(text: str) -> bool:
    """``true`` or ``false``, as podman and skopeo spell ``--tls-verify=false``."""
    if text.lower() in ("true", "1", "yes"):
        return True
    if text.lower() in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, not {text!r}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="streamimage",
        description="Stream a docker-archive image of Nix store paths to stdout; "
        "a drop-in for nixpkgs' stream_layered_image.py.",
    )
    parser.add_argument("conf", help="JSON conf, as nixpkgs' streamLayeredImage writes it")
    parser.add_argument(
        "--repo_tag", "-t", "--repo-tag", help="override the conf's repo_tag (name:tag)"
    )
    parser.add_argument(
        "-o",
        "--output",
        metavar="FILE",
        help="write the image to FILE instead of stdout (the directory, for oci-dir); "
        "docker://HOST[:PORT]/REPO[:TAG|@DIGEST]: push it to that registry",
    )
    parser.add_argument(
        "--tls-verify",
        type=_boolean,
        nargs="?",
        const=True,
        default=True,
        metavar="true|false",
        help="pushing: check the registry's HTTPS certificate (default); false also "
        "allows plain HTTP",
    )
    parser.add_argument(
        "--mount-from",
        metavar="REPO",
        help="pushing: a repository of the same registry that may hold some of the blobs "
        "already; they are mounted from it instead of uploaded",
    )
    parser.add_argument(
        "--format",
        choices=FORMATS,
        default=FORMAT_DOCKER,
        help="docker: the reference's docker-archive (default); oci: one tar that is an OCI "
        "image layout and a docker-archive, as Docker 25+ saves; oci-dir: an OCI image "
        "layout directory (needs -o DIR)",
    )
    parser.add_argument(
        "--compress",
        default="none",
        metavar="none|gzip[:LEVEL]|zstd[:LEVEL]",
        help="store the layers built here compressed, deterministically: gzip (LEVEL 0-3, "
        "ISA-L's levels, default 1) or zstd (LEVEL 1-19, default 3); base layers are copied "
        "as they are (default: none)",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="print errors only")
    parser.add_argument(
        "--progress",
        choices=["auto", "always", "never"],
        default="auto",
        help="a live progress line on stderr: auto shows it when stderr is a terminal",
    )
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="also print each layer's timeline"
    )
    parser.add_argument(
        "--jobs",
        "-j",
        type=int,
        default=cpu_workers(),
        metavar="N",
        help="hash up to N layers at once (default: the CPUs this process may use)",
    )
    parser.add_argument(
        "--hash-in",
        choices=["process", "thread"],
        default="process" if FORK is not None else "thread",
        help="run hash passes in worker processes (default where fork is safe) or threads "
        "of this one (default elsewhere, e.g. macOS)",
    )
    parser.add_argument(
        "--spool-dir",
        metavar="DIR",
        help="where hash passes keep what they framed for the stream pass, in unlinked "
        "files (default: $TMPDIR or /tmp)",
    )
    parser.add_argument(
        "--spool-max",
        default="2G",
        metavar="SIZE",
        help="spool at most SIZE bytes at once (K, M, G suffixes), and at most half the "
        "free space; 0: never spool, frame each layer twice (default: 2G)",
    )
    parser.add_argument(
        "--cache-dir",
        metavar="DIR",
        default=os.environ.get(CACHE_DIR_ENV) or None,
        help="where the digest cache keeps each layer's digests, so that a run over "
        f"unchanged store paths needs no hash pass (default: ${CACHE_DIR_ENV}, else "
        "the user's cache directory, e.g. ~/.cache/streamimage)",
    )
    parser.add_argument(
        "--no-cache",
        action="store_true",
        default=bool(os.environ.get(NO_CACHE_ENV)),
        help=f"neither read nor write the digest cache (also: ${NO_CACHE_ENV} set non-empty)",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    parser.add_argument("--version", action="version", version=f"streamimage {__version__}")
    return parser


def default_cache_dir() -> str:
    """The user's cache directory for streamimage: $XDG_CACHE_HOME/streamimage on Linux."""
    return platformdirs.user_cache_dir("streamimage", appauthor=False)


def load_conf(path: str, repo_tag: str | None) -> Conf:
    """Read and check the conf file.

    Raises:
        ConfError: missing, unreadable, not JSON, or not a valid conf.
    """
    try:
        with open(path, "rb") as file:
            data = file.read(CONF_MAX + 1)  # a bound: the conf may be /dev/zero
    except FileNotFoundError:
        raise ConfError(f"{path}: conf file does not exist") from None
    except OSError as exc:
        raise ConfError(f"{path}: cannot read conf: {exc.strerror or exc}") from None
    if len(data) > CONF_MAX:
        raise ConfError(f"{path}: larger than {CONF_MAX // 2**20} MiB: not a conf")
    try:
        document: Any = json.loads(data)
    except RecursionError:
        raise ConfError(f"{path}: not valid JSON: nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, a 5000-digit number
        raise ConfError(f"{path}: not valid JSON: {exc}") from None
    return parse_conf(document, path, repo_tag=repo_tag or None)


async def _watch_signals() -> None:
    with anyio.open_signal_receiver(*STOP_SIGNALS) as signals:
        async for signum in signals:
            raise Interrupted(signum)


async def run(
    conf: Conf,
    output: str | None,
    reporter: Reporter,
    options: Options,
    opened: list[FdSink] | None = None,
    target: RegistryTarget | None = None,
) -> None:
    """Build the image of ``conf`` into ``output`` (stdout when None), or push it to
    ``target``; the sink opened is appended to ``opened``."""
    for note in conf.notes:
        reporter.note(note)
    base = None
    if conf.from_image is not None:
        base = await anyio.to_thread.run_sync(open_base_image, conf.from_image)
    try:
        paths = [path for layer in conf.store_layers for path in layer]
        await anyio.to_thread.run_sync(check_under, paths, conf.store_dir)
        customisation = await anyio.to_thread.run_sync(open_customisation, conf.customisation_layer)
        image = Image(Build(conf, options, base, customisation, reporter))
        pushed: Pushed | None = None
        async with anyio.create_task_group() as tg:
            tg.start_soon(_watch_signals)
            if target is not None:
                tg.start_soon(reporter.show_progress, [])
                pushed = await push(image, target)
                written = pushed.uploaded
            elif options.format == FORMAT_OCI_DIR:
                tg.start_soon(reporter.show_progress, opened if opened is not None else [])
                assert output is not None  # main checks
                written = await write_oci_dir(image, output)
            else:
                tg.start_soon(reporter.show_progress, opened if opened is not None else [])
                write = write_oci_archive if options.format == FORMAT_OCI else write_docker_archive
                with open_output(output, opened) as sink:
                    async with anyio.create_task_group() as writing:
                        writing.start_soon(watch_reader, sink)
                        await write(image, sink)
                        writing.cancel_scope.cancel()
                written = sink.written
            tg.cancel_scope.cancel()
        reporter.done(len(image.layers), written, image.timelines)
        if pushed is not None:
            reporter.pushed(pushed)
    finally:
        if base is not None:
            base.close()


def _leaf(error: BaseException) -> BaseException:
    """The error to report from a (nested) ExceptionGroup: ours first, then any."""
    while isinstance(error, BaseExceptionGroup):
        ours = [e for e in error.exceptions if _contains_ours(e)]
        error = (ours or list(error.exceptions))[0]
    return error


def _contains_ours(error: BaseException) -> bool:
    if isinstance(error, BaseExceptionGroup):
        return any(_contains_ours(e) for e in error.exceptions)
    return isinstance(error, StreamImageError)


def main(argv: Sequence[str] | None = None) -> int:
    """The ``streamimage`` command; returns the exit status."""
    args = build_parser().parse_args(argv)
    opened: list[FdSink] = []
    status = _build(args, opened)
    if any(sink.busy for sink in opened):
        # A write abandoned on cancellation is still blocked on a reader that doesn't
        # read; the interpreter would join its (non-daemon) thread at exit for ever.
        sys.stderr.flush()
        os._exit(status)
    return status


def _registry_target(args: argparse.Namespace) -> RegistryTarget | None:
    """``-o docker://...``'s target, or None for a file or stdout.

    Raises:
        UsageError: a malformed reference or repository; an option that needs a push.
    """
    if args.output is None or not is_registry_reference(args.output):
        if args.mount_from is not None:
            raise UsageError("--mount-from needs -o docker://...: it names a registry's repository")
        return None
    if args.format == FORMAT_OCI_DIR:
        raise UsageError(
            f"-o {args.output}: a registry takes --format docker (a Docker v2 schema 2 "
            "manifest) or oci (an OCI manifest), not oci-dir"
        )
    reference = parse_reference(args.output)
    mount_from = args.mount_from
    if mount_from is not None:
        check_repository(mount_from, f"--mount-from {mount_from}")
    return RegistryTarget(reference, args.tls_verify, mount_from)


def _build(args: argparse.Namespace, opened: list[FdSink]) -> int:
    live = args.progress == "always" or (args.progress == "auto" and sys.stderr.isatty())
    reporter = Reporter(sys.stderr, quiet=args.quiet, verbose=args.verbose, live=live)
    try:
        try:
            conf = load_conf(args.conf, args.repo_tag)
            target = _registry_target(args)
            if args.format == FORMAT_OCI_DIR and args.output is None:
                raise UsageError("--format oci-dir writes a directory: name it with -o DIR")
            if args.output is not None and args.format != FORMAT_OCI_DIR and target is None:
                check_output_file(args.output)
            if args.output is None and os.isatty(STDOUT):
                raise UsageError(
                    "refusing to write an image to a terminal: redirect stdout or use -o FILE"
                )
            if args.jobs < 1:
                raise UsageError(f"--jobs must be at least 1, not {args.jobs}")
            if args.hash_in == "process" and FORK is None:
                raise UsageError(
                    "--hash-in process: worker processes need fork, which this system lacks "
                    "or makes unsafe (macOS): use --hash-in thread"
                )
            compression = parse_compression(args.compress)
            if compression.codec == ZSTD and args.format == FORMAT_DOCKER:
                raise UsageError(
                    f"--compress {args.compress} needs --format oci or oci-dir: a docker-archive "
                    "has no media type for zstd layers (docker load before Docker 23 fails on "
                    "them, skopeo refuses them)"
                )
            if args.spool_dir is not None and not os.path.isdir(args.spool_dir):
                raise UsageError(f"--spool-dir {args.spool_dir}: not a directory")
            options = Options(
                hash_workers=args.jobs,
                hash_in_processes=args.hash_in == "process",
                format=args.format,
                compression=compression,
                spool_dir=args.spool_dir,
                spool_max=parse_size(args.spool_max, "--spool-max"),
                cache_dir=None if args.no_cache else (args.cache_dir or default_cache_dir()),
            )
            anyio.run(run, conf, args.output, reporter, options, opened, target)
        except BaseExceptionGroup as group:
            raise _leaf(group) from None
    except StreamImageError as exc:
        if args.debug:
            traceback.print_exception(exc)
        sys.stderr.write(f"streamimage: error: {exc}\n")
        return exc.exit_status
    except KeyboardInterrupt:
        sys.stderr.write("streamimage: error: stopped by SIGINT\n")
        return 128 + signal.SIGINT
    except Exception as exc:
        if args.debug:
            traceback.print_exception(exc)
        sys.stderr.write(f"streamimage: error: internal error: {type(exc).__name__}: {exc}\n")
        return 1
    return 0
