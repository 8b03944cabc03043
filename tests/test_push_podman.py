"""podman reads a pushed image back (issue 12): it pulls the image from a registry of the
test's own into fresh storage, and runs it.

Oracles: the diff_ids podman recorded are the docker-archive's; a container of the image
runs the image's own static busybox, whose sha256 of a file from each layer must be the
digest of the file in the fixture store: the layers' content came through push, pull
and unpack. Rule: podman storage of the test's own (vfs, under a short /tmp dir, libpod's
state there too), no network; the containers and the directory are removed afterwards.
"""

from __future__ import annotations

import hashlib
import json
import struct
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests import storegen
from tests.conftest import FixtureStore, in_ci, require_command
from tests.daemons import Client, RegistryServer, registry
from tests.images import build, private_fixture, tar_members
from tests.test_push import REPO, archive_diff_ids, push, pushed

pytestmark = pytest.mark.clients

# Podman (as root) writes RLIMIT_NOFILE 1048576 into the container's config.json, also with
# `--ulimit host`, and RLIMIT_NPROC 1048576 too once one --ulimit is given; runc sets them.
# Raising a hard limit needs CAP_SYS_RESOURCE, which some machines (this VM) withhold even
# from root: "error setting rlimit type 7: operation not permitted". Lowering is allowed
# everywhere, so both are given, far under any machine's limits (the machine's own values
# fail here: podman runs runc with nproc 32768, under them), and enough for one process.
ULIMITS = ["--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024"]

ELF_MAGIC = b"\x7fELF"
PT_INTERP = 3  # a program header naming the dynamic loader


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RegistryServer]:
    with registry(tmp_path) as running:
        yield running


@contextmanager
def podman_storage() -> Iterator[Client]:
    """podman on fresh storage under a short /tmp dir (podman refuses a runroot longer than
    50 characters: pytest's tmp_path is too long), removed with its containers after."""
    podman = require_command("podman")
    with tempfile.TemporaryDirectory(prefix="si-pp-") as work:
        argv = [podman, "--root", f"{work}/root", "--runroot", f"{work}/run"]
        # libpod's exit files, events and locks: /run/libpod, every podman's, by default
        argv += ["--tmpdir", f"{work}/tmp", "--storage-driver", "vfs"]
        # no systemd needed: cgroups made directly, events written to a file in --tmpdir
        argv += ["--cgroup-manager", "cgroupfs", "--events-backend", "file"]
        client = Client(argv)
        try:
            yield client
        finally:
            client.attempt("rm", "--all", "--force")  # what a failed run left


def is_static(program: Path) -> bool:
    """True when the 64-bit little-endian ELF ``program`` has no PT_INTERP header: it
    needs no dynamic loader (nor a libc) in the image."""
    data = program.read_bytes()
    if data[:4] != ELF_MAGIC or data[4:6] != b"\x02\x01":  # EI_CLASS 64-bit, EI_DATA LE
        return False
    (phoff,) = struct.unpack_from("<Q", data, 0x20)  # e_phoff
    entry_size, count = struct.unpack_from("<HH", data, 0x36)  # e_phentsize, e_phnum
    types = [struct.unpack_from("<I", data, phoff + i * entry_size)[0] for i in range(count)]
    return PT_INTERP not in types


def static_busybox() -> Path:
    """Debian's busybox-static: skip without it, or fail when CI=true (as require_command)."""
    busybox = Path(require_command("busybox")).resolve()
    if not is_static(busybox):
        message = f"{busybox} is dynamically linked (install busybox-static, e.g. via .ci/run)"
        if in_ci():
            pytest.fail(f"CI=true: {message}")
        pytest.skip(message)
    return busybox


def test_podman_pulls_the_pushed_image(server: RegistryServer, fixture_store: FixtureStore) -> None:
    root = fixture_store.get("basic").root
    reference = f"{server.host}/{REPO}:podman"
    pushed(push(root, reference, "--compress", "gzip"))
    with podman_storage() as podman:
        podman("pull", "--tls-verify=false", f"docker://{reference}")
        listed = podman("images", "--format", "{{.Repository}}:{{.Tag}}")
        assert f"{reference}" in listed.stdout.split(), listed.stdout
        layers = podman("image", "inspect", reference, "--format", "{{.RootFS.Layers}}")
    # podman unpacked each layer and recorded its diff_id: the archive's
    archive_layers = archive_diff_ids(build(fixture_store, storegen.tool_cmd(), "basic"))
    assert layers.stdout.strip().strip("[]").split() == archive_layers


def test_podman_runs_the_pushed_image(
    tmp_path: Path, server: RegistryServer, fixture_store: FixtureStore, tool_cmd: list[str]
) -> None:
    """The basic fixture plus a store path holding a static busybox, its last layer; the
    image's entrypoint is that busybox's sha256sum, of a file from every layer. podman
    runs it with lowered rlimits (ULIMITS: raising them is refused on some machines)."""
    busybox = static_busybox()
    fixture = private_fixture(fixture_store, tool_cmd, "basic", tmp_path / "own")
    tools = storegen.store_path("busybox-static-1.35")
    root = fixture.root
    storegen.StoreBuilder(root).file(f"{tools}/bin/busybox", busybox.read_bytes(), 0o555)
    lib, hello, doc = (storegen.store_path(n) for n in ("libgreet-1.0", "hello-2.12", "hello-doc"))
    libgreet = (root / lib / "lib/libgreet.so.1").read_bytes()
    customisation = tar_members(storegen.customisation_layer_bytes())
    expected = {  # what the container names -> the bytes it must read there
        f"/{lib}/lib/libgreet.so.1": libgreet,
        # layer 2's absolute link to layer 1's directory, then a relative one
        f"/{hello}/lib/libgreet.so": libgreet,
        f"/{hello}/bin/hello": (root / hello / "bin/hello").read_bytes(),
        f"/{doc}/share/doc/hello/README": (root / doc / "share/doc/hello/README").read_bytes(),
        f"/{tools}/bin/busybox": busybox.read_bytes(),
        "/etc/motd": customisation["etc/streamimage-test.conf"],  # the customisation layer
    }
    conf = json.loads(fixture.conf.read_text())
    conf["store_layers"].append([tools])
    conf["config"].update(Entrypoint=[f"/{tools}/bin/busybox", "sha256sum"], Cmd=list(expected))
    (root / "busybox.json").write_text(json.dumps(conf, indent=2))
    reference = f"{server.host}/{REPO}:run"
    pushed(push(root, reference, "--compress", "gzip", conf="busybox.json"))
    with podman_storage() as podman:
        run = ["run", "--rm", "--quiet", "--tls-verify=false", "--network", "none", *ULIMITS]
        ran = podman(*run, reference)
    digests = "".join(
        f"{hashlib.sha256(data).hexdigest()}  {name}\n" for name, data in expected.items()
    )
    assert ran.stdout == digests
