"""-o PATH: a regular file (or nothing) is replaced by rename, only when the image is whole;
a symlink is followed; a device, FIFO or socket is written through, never replaced; a
path that can't name an image file is a usage error.

Oracle: the image the same run writes to stdout, and the file system's own view of the
node afterwards (its type, device numbers, link target).
"""

from __future__ import annotations

import contextlib
import os
import socket
import stat
import subprocess
import threading
from pathlib import Path

import pytest

from tests.failures import Store, assert_run_failed, make_store, run


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Store:
    built = make_store(tmp_path_factory.mktemp("out"))
    built.write_conf()
    return built


@pytest.fixture(scope="module")
def expected(store: Store) -> bytes:
    result = run(store)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_a_fifo_is_written_through_not_replaced(
    store: Store, expected: bytes, tmp_path: Path
) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    received = bytearray()

    def read() -> None:
        with fifo.open("rb") as reader:
            while data := reader.read(65536):
                received.extend(data)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        result = run(store, "-o", str(fifo))
    finally:
        # whatever the tool did, the reader must see an end (a writer that comes and goes)
        with contextlib.suppress(OSError):
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        reader.join(30)
    assert result.returncode == 0, result.stderr
    assert bytes(received) == expected
    assert stat.S_ISFIFO(fifo.stat().st_mode)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fifo"]  # no .part beside it


@pytest.mark.skipif(os.geteuid() != 0, reason="making a device node needs root")
def test_a_device_is_written_through_not_replaced(store: Store, tmp_path: Path) -> None:
    null = tmp_path / "null"  # a /dev/null of the test's own
    os.mknod(null, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    result = run(store, "-o", str(null))
    assert result.returncode == 0, result.stderr
    st = null.stat()
    assert stat.S_ISCHR(st.st_mode)
    assert st.st_rdev == os.makedev(1, 3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["null"]


def test_a_socket_is_a_clean_error(store: Store, tmp_path: Path) -> None:
    path = tmp_path / "sock"
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(path))
        assert_run_failed(run(store, "-o", str(path)), 1, str(path), "cannot open for writing")
        assert stat.S_ISSOCK(path.stat().st_mode)


@pytest.mark.parametrize("dangling", [False, True], ids=["to-a-file", "dangling"])
def test_a_symlink_is_followed(
    store: Store, expected: bytes, tmp_path: Path, dangling: bool
) -> None:
    target = tmp_path / "real.tar"
    if not dangling:
        target.write_bytes(b"an older image")
    link = tmp_path / "link.tar"
    link.symlink_to(target.name)
    result = run(store, "-o", str(link))
    assert result.returncode == 0, result.stderr
    assert link.is_symlink()
    assert os.readlink(link) == target.name
    assert target.read_bytes() == expected
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.tar", "real.tar"]


def test_a_regular_file_is_replaced_whole(store: Store, expected: bytes, tmp_path: Path) -> None:
    out = tmp_path / "image.tar"
    out.write_bytes(b"old")
    result = run(store, "-o", str(out))
    assert result.returncode == 0, result.stderr
    assert out.read_bytes() == expected


@pytest.mark.parametrize(
    ("output", "culprit"),
    [
        ("", "-o '': not a file name"),
        ("{tmp}", "is a directory"),
        ("{tmp}/new.tar/", "is a directory"),
    ],
    ids=["empty", "a-directory", "trailing-slash"],
)
def test_paths_that_cant_name_an_image_file_are_usage_errors(
    store: Store, tmp_path: Path, output: str, culprit: str
) -> None:
    result = run(store, "-o", output.format(tmp=tmp_path))
    assert_run_failed(result, 2, culprit)
    assert list(tmp_path.iterdir()) == []


def test_sizes_take_ascii_digits_only(store: Store) -> None:
    assert_run_failed(run(store, "--spool-max", "\u0663"), 2, "--spool-max", "expected a size")


def test_a_fifo_can_be_the_output_of_the_oci_format_too(store: Store, tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    reader = subprocess.Popen(["cat", str(fifo)], stdout=subprocess.PIPE)
    try:
        result = run(store, "--format", "oci", "-o", str(fifo))
        data = reader.communicate(timeout=30)[0] if result.returncode == 0 else b""
    finally:
        reader.kill()  # a reader left waiting (the fifo replaced) must not outlive the test
        reader.wait()
        assert reader.stdout is not None
        reader.stdout.close()
    assert result.returncode == 0, result.stderr
    assert stat.S_ISFIFO(fifo.stat().st_mode)
    assert data == run(store, "--format", "oci").stdout
