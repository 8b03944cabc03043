"""Real daemons for the client tests: a dockerd or a containerd of the test's own, started
on a private socket and data root, stopped and removed afterwards.

Rule: each test gets fresh storage (a daemon that holds a layer already skips checking
it); a daemon that can't start here skips the test with its log, and with CI=true a
missing command fails (tests/conftest.py's require_command).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import require_command

START_BOUND = 30  # seconds for a daemon to answer
TIMEOUT = 120  # seconds per client command


def attempt(
    argv: Sequence[str], env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """A client command, whatever its exit status."""
    return subprocess.run(
        list(argv), capture_output=True, text=True, timeout=TIMEOUT, check=False, env=env
    )


class Client:
    """A daemon's command-line client: ``client(*args)`` must succeed, ``attempt`` may not."""

    def __init__(self, argv: Sequence[str], env: dict[str, str] | None = None) -> None:
        self.argv = list(argv)
        self.env = env

    def attempt(self, *args: str) -> subprocess.CompletedProcess[str]:
        return attempt([*self.argv, *args], self.env)

    def __call__(self, *args: str) -> subprocess.CompletedProcess[str]:
        proc = self.attempt(*args)
        command = " ".join([*self.argv, *args])
        assert proc.returncode == 0, f"{command} exited {proc.returncode}:\n{proc.stderr}"
        return proc


def short_root(name: str) -> Path:
    """A directory of the test's own under /tmp: unix socket paths hold 108 bytes at most."""
    root = Path(os.environ.get("TMPDIR", "/tmp")) / f"si-{name}-{os.getpid()}-{time.time_ns()}"
    root.mkdir()
    return root


@contextmanager
def running(
    name: str,
    argv: Sequence[str],
    root: Path,
    log_path: Path,
    ready: Callable[[], bool],
    *,
    remove_root: bool = True,
) -> Iterator[None]:
    """Run daemon ``argv`` until the block ends; skip the test if it never gets ``ready``.
    The log is appended to (a daemon restarted keeps one log); ``root`` is removed after."""
    with log_path.open("ab") as log:
        daemon = subprocess.Popen(list(argv), stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + START_BOUND
            while daemon.poll() is not None or not ready():
                if daemon.poll() is not None or time.monotonic() > deadline:
                    tail = log_path.read_text(errors="replace")[-2000:]
                    pytest.skip(f"{name} did not start here:\n{tail}")
                time.sleep(0.1)
            yield
        finally:
            daemon.terminate()
            try:
                daemon.wait(30)
            except subprocess.TimeoutExpired:
                daemon.kill()
                daemon.wait()
            if remove_root:
                shutil.rmtree(root, ignore_errors=True)


@contextmanager
def dockerd(log_dir: Path) -> Iterator[Client]:
    """A Docker daemon of its own (vfs storage, no networking) and its client."""
    command = require_command("dockerd")
    require_command("docker")
    root = short_root("dockerd")
    socket = root / "docker.sock"
    argv = [command, "--data-root", str(root / "data"), "--exec-root", str(root / "exec")]
    argv += ["--pidfile", str(root / "docker.pid"), "-H", f"unix://{socket}"]
    argv += ["--storage-driver", "vfs", "--iptables=false", "--ip6tables=false", "--bridge=none"]
    client = Client(["docker"], {**os.environ, "DOCKER_HOST": f"unix://{socket}"})
    ready = lambda: client.attempt("version").returncode == 0  # noqa: E731
    with running("dockerd", argv, root, log_dir / "dockerd.log", ready):
        yield client


# Plugins that need kernel features or a CRI setup; the native snapshotter needs neither.
CONTAINERD_DISABLED = [
    "io.containerd.grpc.v1.cri",
    "io.containerd.snapshotter.v1.aufs",
    "io.containerd.snapshotter.v1.btrfs",
    "io.containerd.snapshotter.v1.devmapper",
    "io.containerd.snapshotter.v1.overlayfs",
    "io.containerd.snapshotter.v1.zfs",
]


@contextmanager
def containerd(log_dir: Path) -> Iterator[Client]:
    """A containerd of its own (native snapshotter) and ctr on it, in namespace ``test``."""
    command = require_command("containerd")
    ctr = require_command("ctr")
    root = short_root("ctrd")
    socket = root / "c.sock"
    config = root / "config.toml"
    config.write_text(
        "version = 2\n"
        f'root = "{root / "root"}"\n'
        f'state = "{root / "state"}"\n'
        f"disabled_plugins = {json.dumps(CONTAINERD_DISABLED)}\n"
        f'[grpc]\n  address = "{socket}"\n'
        # else it makes /opt/containerd
        f'[plugins."io.containerd.internal.v1.opt"]\n  path = "{root / "opt"}"\n'
    )
    client = Client([ctr, "--address", str(socket), "-n", "test"])
    # ctr waits 10 s for a socket that isn't there yet unless told otherwise
    probe = [*client.argv, "--connect-timeout", "1s", "version"]
    ready = lambda: attempt(probe).returncode == 0  # noqa: E731
    with running("containerd", [command, "--config", str(config)], root, log_dir / "c.log", ready):
        yield client


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


# The access log line distribution writes for each request (gorilla's combined format).
ACCESS_LINE = re.compile(
    r'^\S+ - \S+ \[[^]]+\] "(?P<method>[A-Z]+) (?P<uri>\S+) [^"]*" (?P<status>\d+) '
)


@dataclass(frozen=True)
class Request:
    method: str
    uri: str
    status: int


@dataclass(frozen=True)
class RegistryServer:
    """A running ``docker-registry``: ``host`` is HOST:PORT, as image references name it."""

    host: str
    root: Path
    log_path: Path
    scheme: str

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}"

    def requests(self) -> list[Request]:
        """Every request the registry has answered so far, in order (its access log)."""
        found = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            match = ACCESS_LINE.match(line)
            if match:
                found.append(Request(match["method"], match["uri"], int(match["status"])))
        return found


@contextmanager
def registry(
    log_dir: Path,
    *,
    auth: Mapping[str, Any] | None = None,
    tls: tuple[Path, Path] | None = None,
    port: int | None = None,
    root: Path | None = None,
) -> Iterator[RegistryServer]:
    """Debian's ``docker-registry`` (distribution 2.x) on 127.0.0.1, storage of its own.

    ``auth`` is the config's ``auth`` section (``{"htpasswd": {...}}`` or ``{"token":
    {...}}``); ``tls`` a (certificate, key) pair in PEM files: HTTPS instead of HTTP.
    ``port`` and ``root`` let a test restart a registry where it was (same storage and
    log); a ``root`` given is the caller's to remove.
    """
    command = require_command("docker-registry")
    owned = root is None
    root = root or short_root("registry")
    port = port or free_port()
    http: dict[str, Any] = {"addr": f"127.0.0.1:{port}"}
    if tls is not None:
        http["tls"] = {"certificate": str(tls[0]), "key": str(tls[1])}
    config: dict[str, Any] = {
        "version": 0.1,
        "log": {"level": "info"},
        "storage": {
            "filesystem": {"rootdirectory": str(root / "data")},
            "delete": {"enabled": True},
        },
        "http": http,
    }
    if auth is not None:
        config["auth"] = dict(auth)
    config_path = root / "config.yml"
    config_path.write_text(json.dumps(config))  # JSON is YAML
    scheme = "https" if tls is not None else "http"
    server = RegistryServer(f"127.0.0.1:{port}", root, log_dir / f"registry-{port}.log", scheme)

    def ready() -> bool:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return True
        except OSError:
            return False

    argv = [command, "serve", str(config_path)]
    with running("docker-registry", argv, root, server.log_path, ready, remove_root=owned):
        yield server
