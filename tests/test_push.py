"""Pushing to a registry (-o docker://...): Debian's docker-registry, started by the test,
and real clients reading the image back (podman: test_push_podman.py).

Oracles: skopeo copies the pushed image into a docker-archive, checking every blob's
digest; the sha256 of each layer it wrote (uncompressed) must be the diff_id of the same
conf's docker-archive as streamimage writes it (which the differential tests hold to the
reference). What a push sent is counted in the registry's own access log.
Rule: each test has a registry of its own, and fresh client storage.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import sys
import tarfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from tests import storegen
from tests.conftest import FixtureStore, require_command
from tests.daemons import RegistryServer, Request, attempt, free_port, registry
from tests.images import blob_name, build, conf_with_base, private_fixture, uncompressed

pytestmark = pytest.mark.clients

REPO = "push/image"


def push(
    root: Path,
    reference: str,
    *args: str,
    conf: str = storegen.CONF_NAME,
    env: dict[str, str] | None = None,
    runner: Sequence[str] | None = None,
) -> storegen.ToolResult:
    """streamimage CONF -o docker://REFERENCE --tls-verify=false ARGS, in the fixture."""
    cmd = list(runner) if runner is not None else storegen.tool_cmd()
    target = ["-o", f"docker://{reference}", "--tls-verify=false", *args]
    return storegen.run_tool(cmd, conf, cwd=root, args=target, env=env)


def pushed(result: storegen.ToolResult) -> None:
    assert result.returncode == 0, result.stderr


def skopeo_inspect(reference: str) -> dict[str, Any]:
    skopeo = require_command("skopeo")
    proc = attempt([skopeo, "inspect", "--tls-verify=false", f"docker://{reference}"])
    assert proc.returncode == 0, proc.stderr
    document: dict[str, Any] = json.loads(proc.stdout)
    return document


def skopeo_raw_manifest(reference: str) -> dict[str, Any]:
    skopeo = require_command("skopeo")
    proc = attempt([skopeo, "inspect", "--raw", "--tls-verify=false", f"docker://{reference}"])
    assert proc.returncode == 0, proc.stderr
    document: dict[str, Any] = json.loads(proc.stdout)
    return document


def pulled_layer_digests(reference: str, work: Path) -> list[str]:
    """skopeo copies the image into a docker-archive (checking each blob's digest); the
    sha256 of each layer it wrote there, uncompressed, in manifest order."""
    skopeo = require_command("skopeo")
    archive = work / "pulled.tar"
    argv = [skopeo, "--insecure-policy", "copy", "--src-tls-verify=false"]
    proc = attempt([*argv, f"docker://{reference}", f"docker-archive:{archive}"])
    assert proc.returncode == 0, proc.stderr
    with tarfile.open(archive) as tar:
        manifest = json.load(_member(tar, "manifest.json"))
        digests = []
        for name in manifest[0]["Layers"]:
            data = _member(tar, name).read()
            if data.startswith(b"\x1f\x8b"):
                data = gzip.decompress(data)
            digests.append("sha256:" + hashlib.sha256(data).hexdigest())
    return digests


def _member(tar: tarfile.TarFile, name: str) -> io.BufferedReader:
    source = tar.extractfile(name)
    assert source is not None, name
    return source  # type: ignore[return-value]


def archive_diff_ids(archive: bytes) -> list[str]:
    """The diff_ids of a docker-archive streamimage wrote, from its config."""
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        manifest = json.load(_member(tar, "manifest.json"))
        config = json.load(_member(tar, manifest[0]["Config"]))
    diff_ids: list[str] = config["rootfs"]["diff_ids"]
    return diff_ids


def blob_uploads(requests: Sequence[Request]) -> list[Request]:
    """Requests that start, send or complete a blob upload (a mount's POST included)."""
    return [r for r in requests if "/blobs/uploads/" in r.uri]


def manifest_puts(requests: Sequence[Request]) -> list[Request]:
    return [r for r in requests if r.method == "PUT" and "/manifests/" in r.uri]


def tags(server: RegistryServer, repository: str) -> list[str]:
    """The repository's tags, asked of the registry itself (none: [])."""
    try:
        with urllib.request.urlopen(f"{server.url}/v2/{repository}/tags/list") as response:
            found: list[str] = json.load(response).get("tags") or []
            return found
    except urllib.error.HTTPError as exc:
        if exc.code != 404:  # NAME_UNKNOWN: a repository never tagged
            raise
        return []


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RegistryServer]:
    with registry(tmp_path) as running:
        yield running


@pytest.mark.parametrize("image_format", ["docker", "oci"])
@pytest.mark.parametrize("compress", ["none", "gzip"])
@pytest.mark.parametrize("fixture_id", ["basic", "from-image"])
def test_a_pushed_image_reads_back_with_the_archives_layers(
    tmp_path: Path,
    server: RegistryServer,
    fixture_store: FixtureStore,
    tool_cmd: list[str],
    image_format: str,
    compress: str,
    fixture_id: str,
) -> None:
    root = fixture_store.get(fixture_id).root
    reference = f"{server.host}/{REPO}:{image_format}-{compress}"
    result = push(root, reference, "--format", image_format, "--compress", compress)
    pushed(result)
    manifest = skopeo_raw_manifest(reference)
    expected_type = {
        "docker": "application/vnd.docker.distribution.manifest.v2+json",
        "oci": "application/vnd.oci.image.manifest.v1+json",
    }[image_format]
    assert manifest["mediaType"] == expected_type
    gzip_layers = [layer["mediaType"].endswith("gzip") for layer in manifest["layers"]]
    if compress == "gzip":
        # the base image's layers are copied as they are stored (uncompressed here)
        assert gzip_layers[-1]
        assert sum(gzip_layers) >= 2
    else:
        assert not any(gzip_layers)
    # the layers skopeo pulled (each checked against its digest) are the archive's
    archive = build(fixture_store, tool_cmd, fixture_id)
    assert pulled_layer_digests(reference, tmp_path) == archive_diff_ids(archive)
    inspected = skopeo_inspect(reference)
    assert (
        inspected["Digest"]
        == "sha256:"
        + hashlib.sha256(json.dumps(manifest, separators=(",", ":")).encode()).hexdigest()
    )
    assert f"pushed {reference} ({inspected['Digest']})" in result.stderr
    # the manifest once, the last PUT of the push
    puts = [r for r in server.requests() if r.method == "PUT"]
    assert manifest_puts(puts) == [puts[-1]]
    assert puts[-1].uri == f"/v2/{REPO}/manifests/{image_format}-{compress}"


def test_the_manifest_is_put_after_every_blob(
    server: RegistryServer, fixture_store: FixtureStore
) -> None:
    root = fixture_store.get("from-image").root
    pushed(push(root, f"{server.host}/{REPO}:order", "--compress", "gzip"))
    requests = server.requests()
    manifest_at = [i for i, r in enumerate(requests) if r in manifest_puts(requests)]
    assert len(manifest_at) == 1
    after = requests[manifest_at[0] + 1 :]
    assert not [r for r in after if "/blobs/" in r.uri]
    before = requests[: manifest_at[0]]
    completed = [r for r in before if r.method == "PUT" and r.status == 201]
    layers = skopeo_raw_manifest(f"{server.host}/{REPO}:order")["layers"]
    assert len(completed) == len(layers) + 1  # every layer and the config, each once


def test_a_repush_of_an_unchanged_image_uploads_no_blob(
    server: RegistryServer, fixture_store: FixtureStore
) -> None:
    root = fixture_store.get("from-image").root
    reference = f"{server.host}/{REPO}:again"
    pushed(push(root, reference, "--compress", "gzip"))
    first = len(server.requests())
    result = push(root, reference, "--compress", "gzip", "-v")
    pushed(result)
    again = server.requests()[first:]
    assert blob_uploads(again) == []
    heads = [r for r in again if r.method == "HEAD"]
    assert heads
    assert all(r.status == 200 for r in heads)
    assert len(manifest_puts(again)) == 1
    assert "0 mounted, 0 uploaded (0 bytes)" in result.stderr
    assert result.stderr.count(" skipped (present)\n") == len(heads)


HASHED_AS_SENT = "framed once, hashed as sent"


def test_a_new_repository_gets_its_store_layers_hashed_as_they_are_sent(
    tmp_path: Path, server: RegistryServer, fixture_store: FixtureStore, tool_cmd: list[str]
) -> None:
    # A new repository holds none of the image's blobs: no hash pass, no HEAD of a store
    # layer; each is framed once and uploaded as it is hashed (a chunked PATCH), the PUT
    # naming the digest found, which the registry checks
    root = fixture_store.get("basic").root
    reference = f"{server.host}/{REPO}:once"
    result = push(root, reference, "-v", "--no-cache")
    pushed(result)
    store_layers = result.stderr.count("Creating layer") - 1  # not the customisation's
    assert store_layers >= 1
    assert result.stderr.count(HASHED_AS_SENT) == store_layers
    requests = server.requests()
    heads = [r for r in requests if r.method == "HEAD"]
    assert len(heads) == 2  # the customisation layer's and the config's, known ahead
    assert len([r for r in requests if r.method == "PATCH"]) == store_layers + 2
    archive = build(fixture_store, tool_cmd, "basic")
    assert pulled_layer_digests(reference, tmp_path) == archive_diff_ids(archive)


def test_a_repository_with_a_tag_gets_each_layer_asked_for_first(
    server: RegistryServer, fixture_store: FixtureStore
) -> None:
    # it may hold the blobs (here it holds them all): hashed first, HEADed, none sent
    root = fixture_store.get("basic").root
    pushed(push(root, f"{server.host}/{REPO}:first", "--no-cache"))
    first = len(server.requests())
    result = push(root, f"{server.host}/{REPO}:second", "-v", "--no-cache")
    pushed(result)
    assert HASHED_AS_SENT not in result.stderr
    again = server.requests()[first:]
    assert blob_uploads(again) == []
    assert "0 mounted, 0 uploaded (0 bytes)" in result.stderr


def progress_lines(stderr: str) -> list[str]:
    """The progress line's plain records (``--progress always`` off a terminal)."""
    return [line for line in stderr.splitlines() if line.startswith("layer ")]


def test_the_progress_line_counts_only_the_bytes_to_send(
    server: RegistryServer, fixture_store: FixtureStore
) -> None:
    # a blob the registry has leaves the total: a re-push has nothing to send, and says
    # so (not "0 B of 30 KiB" for ever); a first push reaches its total
    root = fixture_store.get("basic").root
    reference = f"{server.host}/{REPO}:progress"
    first = push(root, reference, "--progress", "always", "--no-cache")
    pushed(first)
    *_, last = progress_lines(first.stderr)
    assert "100%" in last
    assert " 0 B/0 B " not in last  # the layers were sent: the total is theirs
    again = push(root, reference, "--progress", "always", "--no-cache")
    pushed(again)
    *_, last = progress_lines(again.stderr)
    assert " 0 B/0 B " in last
    assert "100%" in last


def _store_opens_runner(log: Path) -> list[str]:
    """streamimage under a Python audit hook that logs every store file opened (forked
    hash workers inherit it): what read layer bytes. Small files are opened by name in a
    directory's fd (the event doesn't say which): a bare name of a store file counts."""
    code = (
        "import os, sys\n"
        f"log = open({str(log)!r}, 'a')\n"
        "store = os.path.abspath('nix/store') + os.sep\n"
        "names = {n for _, _, files in os.walk(store) for n in files}\n"
        "def hook(event, args):\n"
        "    if event != 'open' or not isinstance(args[0], (str, bytes)):\n"
        "        return\n"
        "    if isinstance(args[2], int) and args[2] & os.O_DIRECTORY:\n"
        "        return\n"
        "    name = os.fsdecode(args[0])\n"
        "    path = os.path.abspath(name)\n"
        "    if path.startswith(store) or ('/' not in name and name in names):\n"
        "        log.write(name + '\\n'); log.flush()\n"
        "sys.addaudithook(hook)\n"
        "from streamimage.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    return [sys.executable, "-c", code]


def test_a_repush_with_a_warm_cache_reads_no_layer_bytes(
    tmp_path: Path, server: RegistryServer, fixture_store: FixtureStore, tool_cmd: list[str]
) -> None:
    fixture = private_fixture(fixture_store, tool_cmd, "basic", tmp_path / "own")
    time.sleep(2.1)  # the cache doesn't store a layer whose store changed in the last 2 s
    cached = {"STREAMIMAGE_NO_CACHE": "", "STREAMIMAGE_CACHE_DIR": str(tmp_path / "cache")}
    reference = f"{server.host}/{REPO}:warm"
    cold_log, warm_log = tmp_path / "cold.log", tmp_path / "warm.log"
    cold = push(fixture.root, reference, "-v", env=cached, runner=_store_opens_runner(cold_log))
    pushed(cold)
    assert "stored" in cold.stderr
    assert cold_log.read_text().splitlines()  # the hook sees the store's files being read
    first = len(server.requests())
    warm = push(fixture.root, reference, "-v", env=cached, runner=_store_opens_runner(warm_log))
    pushed(warm)
    assert "digest cache: 2 hit" in warm.stderr
    assert warm_log.read_text() == ""  # no store file opened: no layer byte read
    assert blob_uploads(server.requests()[first:]) == []


def test_a_push_to_a_second_repository_mounts_the_blobs(
    server: RegistryServer, fixture_store: FixtureStore
) -> None:
    root = fixture_store.get("from-image").root
    pushed(push(root, f"{server.host}/{REPO}:one"))
    first = len(server.requests())
    result = push(root, f"{server.host}/push/other:two", "--mount-from", REPO, "-v")
    pushed(result)
    second = server.requests()[first:]
    mounts = [r for r in second if r.method == "POST" and "mount=" in r.uri]
    layers = skopeo_raw_manifest(f"{server.host}/push/other:two")["layers"]
    blobs = len({layer["digest"] for layer in layers}) + 1  # a layer repeated; the config
    assert len(mounts) == blobs
    assert all(r.status == 201 for r in mounts)
    assert [r for r in second if r.method == "PATCH"] == []
    assert f"{blobs} mounted, 0 uploaded" in result.stderr


def test_a_mount_source_without_the_blob_falls_back_to_an_upload(
    server: RegistryServer, fixture_store: FixtureStore
) -> None:
    root = fixture_store.get("basic").root
    reference = f"{server.host}/push/fresh:one"
    pushed(push(root, reference, "--mount-from", "push/nothing-here"))
    requests = server.requests()
    mounts = [r for r in requests if r.method == "POST" and "mount=" in r.uri]
    assert mounts
    assert all(r.status == 202 for r in mounts)
    assert len([r for r in requests if r.method == "PATCH"]) == len(mounts)
    assert tags(server, "push/fresh") == ["one"]


def test_a_layer_that_changes_before_its_upload_leaves_no_tag(
    tmp_path: Path, server: RegistryServer, fixture_store: FixtureStore, tool_cmd: list[str]
) -> None:
    """The customisation layer's checksum names other bytes: the push fails on it and the
    manifest is never put."""
    fixture = private_fixture(fixture_store, tool_cmd, "basic", tmp_path / "own")
    checksum = fixture.root / storegen.CUSTOMISATION_DIR / "checksum"
    checksum.write_text("0" * 64)
    result = push(fixture.root, f"{server.host}/{REPO}:broken")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("streamimage: error: ")
    assert "Traceback" not in result.stderr
    assert manifest_puts(server.requests()) == []
    assert tags(server, REPO) == []


def test_push_by_digest_needs_the_images_own_digest(
    server: RegistryServer, fixture_store: FixtureStore
) -> None:
    root = fixture_store.get("basic").root
    wrong = "sha256:" + "0" * 64
    result = push(root, f"{server.host}/{REPO}@{wrong}")
    assert result.returncode == 1
    assert "not the digest asked for" in result.stderr.strip().splitlines()[-1]
    pushed(push(root, f"{server.host}/{REPO}:t"))
    digest = skopeo_inspect(f"{server.host}/{REPO}:t")["Digest"]
    first = len(server.requests())
    pushed(push(root, f"{server.host}/{REPO}@{digest}"))
    assert [r.uri for r in manifest_puts(server.requests()[first:])] == [
        f"/v2/{REPO}/manifests/{digest}"
    ]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-o", "docker://127.0.0.1:1/Bad"], "invalid repository name 'Bad'"),
        (["-o", "docker://127.0.0.1:1/a", "--format", "oci-dir"], "not oci-dir"),
        (["-o", "docker://127.0.0.1:1/a", "--compress", "zstd"], "needs --format oci"),
        (["-o", "x.tar", "--mount-from", "a"], "--mount-from needs -o docker://"),
        (["-o", "docker://127.0.0.1:1/a", "--mount-from", "A"], "invalid repository name"),
    ],
)
def test_a_bad_push_command_line_is_a_usage_error(
    fixture_store: FixtureStore, args: list[str], message: str
) -> None:
    root = fixture_store.get("basic").root
    result = storegen.run_tool(storegen.tool_cmd(), storegen.CONF_NAME, cwd=root, args=args)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("streamimage: error: "), result.stderr
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_tls_verify_false_is_spelled_as_skopeo_spells_it(fixture_store: FixtureStore) -> None:
    root = fixture_store.get("basic").root
    args = ["-o", "docker://127.0.0.1:1/a", "--tls-verify=maybe"]
    result = storegen.run_tool(storegen.tool_cmd(), storegen.CONF_NAME, cwd=root, args=args)
    assert result.returncode == 2
    assert "expected true or false" in result.stderr


def test_a_registry_that_is_not_there_is_one_line_naming_it(
    fixture_store: FixtureStore,
) -> None:
    root = fixture_store.get("basic").root
    reference = f"127.0.0.1:{free_port()}/{REPO}:t"
    result = push(root, reference)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith(f"streamimage: error: 127.0.0.1:{reference.split(':')[1]}")
    assert "cannot reach the registry" in lines[-1]
    assert "Traceback" not in result.stderr


def test_a_plain_http_registry_needs_tls_verify_false(
    server: RegistryServer, fixture_store: FixtureStore
) -> None:
    root = fixture_store.get("basic").root
    args = ["-o", f"docker://{server.host}/{REPO}:t"]
    result = storegen.run_tool(storegen.tool_cmd(), storegen.CONF_NAME, cwd=root, args=args)
    assert result.returncode == 1
    assert "cannot reach the registry" in result.stderr
    assert server.requests() == []  # nothing was sent in plain HTTP


def _tls(directory: Path) -> tuple[Path, Path, Path]:
    """A CA of the test's own (trustme) and a certificate for 127.0.0.1 it signed:
    (the registry's certificate chain, its key, the CA's certificate)."""
    import trustme

    ca = trustme.CA()
    issued = ca.issue_cert("127.0.0.1")
    chain, key, ca_file = directory / "chain.pem", directory / "key.pem", directory / "ca.pem"
    for pem in issued.cert_chain_pems:
        pem.write_to_path(str(chain), append=True)
    issued.private_key_pem.write_to_path(str(key))
    ca.cert_pem.write_to_path(str(ca_file))
    return chain, key, ca_file


def test_https_is_verified_against_the_system_trust_store(
    tmp_path: Path, fixture_store: FixtureStore
) -> None:
    chain, key, ca_file = _tls(tmp_path)
    root = fixture_store.get("basic").root
    with registry(tmp_path, tls=(chain, key)) as server:
        reference = f"docker://{server.host}/{REPO}:tls"
        args = ["-o", reference]
        cmd, conf = storegen.tool_cmd(), storegen.CONF_NAME
        # the CA trusted (OpenSSL reads SSL_CERT_FILE as the system's store): pushed
        trusted = storegen.run_tool(
            cmd, conf, cwd=root, args=args, env={"SSL_CERT_FILE": str(ca_file)}
        )
        pushed(trusted)
        # not trusted: one line, at once (a certificate is not worth retrying)
        untrusted = storegen.run_tool(cmd, conf, cwd=root, args=args)
        assert untrusted.returncode == 1
        line = _last_line(untrusted.stderr)
        assert "TLS certificate is not trusted" in line
        assert "--tls-verify=false" in line
        # --tls-verify=false: HTTPS without the check
        pushed(storegen.run_tool(cmd, conf, cwd=root, args=[*args, "--tls-verify=false"]))
    # the untrusted run gave up at its first handshake: the registry logs two failed
    # handshakes in all, that one and the readiness probe's (a TCP connect, then EOF)
    assert server.log_path.read_text().count("TLS handshake error") == 2


def _last_line(stderr: str) -> str:
    assert "Traceback" not in stderr
    lines = stderr.strip().splitlines()
    assert lines[-1].startswith("streamimage: error: "), stderr
    return lines[-1]


def test_a_push_mounts_from_where_an_earlier_push_left_the_blobs(
    tmp_path: Path, server: RegistryServer, fixture_store: FixtureStore
) -> None:
    root = fixture_store.get("from-image").root
    cached = {"STREAMIMAGE_NO_CACHE": "", "STREAMIMAGE_CACHE_DIR": str(tmp_path / "cache")}
    pushed(push(root, f"{server.host}/team/first:t", env=cached))
    first = len(server.requests())
    result = push(root, f"{server.host}/team/second:t", "-v", env=cached)
    pushed(result)
    second = server.requests()[first:]
    mounts = [r for r in second if r.method == "POST" and "mount=" in r.uri]
    assert mounts
    assert all(r.status == 201 and "from=team/first" in r.uri for r in mounts)
    assert [r for r in second if r.method == "PATCH"] == []
    assert " mounted from team/first" in result.stderr
    # without the cache, nothing says where the blobs are: uploaded
    result = push(root, f"{server.host}/team/third:t")
    pushed(result)
    assert "0 mounted" in result.stderr


def test_a_push_prints_the_references_lines_in_order(
    server: RegistryServer, fixture_store: FixtureStore, tool_cmd: list[str]
) -> None:
    """Layers are pushed several at once, but their lines come as a file's do."""
    root = fixture_store.get("from-image").root
    result = push(root, f"{server.host}/{REPO}:lines")
    pushed(result)
    to_file = fixture_store.run(tool_cmd, "from-image")
    assert to_file.returncode == 0, to_file.stderr

    def reference_lines(stderr: str) -> list[str]:
        return [line for line in stderr.splitlines() if not line.startswith("streamimage: ")]

    assert reference_lines(result.stderr) == reference_lines(to_file.stderr)


def test_zstd_layers_push_with_an_oci_manifest(
    tmp_path: Path, server: RegistryServer, fixture_store: FixtureStore, tool_cmd: list[str]
) -> None:
    skopeo = require_command("skopeo")
    root = fixture_store.get("basic").root
    reference = f"{server.host}/{REPO}:zstd"
    pushed(push(root, reference, "--format", "oci", "--compress", "zstd"))
    manifest = skopeo_raw_manifest(reference)
    assert {layer["mediaType"] for layer in manifest["layers"]} == {
        "application/vnd.oci.image.layer.v1.tar+zstd"
    }
    # skopeo copies it into a layout, checking every blob; the layers, decompressed, are
    # the archive's
    layout = tmp_path / "layout"
    argv = [skopeo, "--insecure-policy", "copy", "--src-tls-verify=false"]
    proc = attempt([*argv, f"docker://{reference}", f"oci:{layout}:t"])
    assert proc.returncode == 0, proc.stderr
    blobs = [(layout / blob_name(layer["digest"])).read_bytes() for layer in manifest["layers"]]
    diff_ids = ["sha256:" + hashlib.sha256(uncompressed(blob)).hexdigest() for blob in blobs]
    assert diff_ids == archive_diff_ids(build(fixture_store, tool_cmd, "basic"))


def _big_base(path: Path, layers: int, size: int) -> None:
    """A docker-archive base image of ``layers`` layers of ``size`` random bytes each."""
    blobs = []
    for number in range(layers):
        layer = io.BytesIO()
        with tarfile.open(fileobj=layer, mode="w") as tar:
            data = os.urandom(size)
            info = tarfile.TarInfo(f"base/big{number}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        blobs.append(layer.getvalue())
    diff_ids = ["sha256:" + hashlib.sha256(blob).hexdigest() for blob in blobs]
    config = json.dumps({"rootfs": {"type": "layers", "diff_ids": diff_ids}}).encode()
    names = [f"{d[7:]}/layer.tar" for d in diff_ids]
    manifest = [{"Config": "config.json", "RepoTags": ["base:1"], "Layers": names}]
    with tarfile.open(path, "w") as tar:
        for name, data in [
            *zip(names, blobs, strict=True),
            ("config.json", config),
            ("manifest.json", json.dumps(manifest).encode()),
        ]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_a_base_images_layers_are_read_whole_while_others_upload(
    tmp_path: Path, server: RegistryServer, fixture_store: FixtureStore, tool_cmd: list[str]
) -> None:
    """Base layers are members of one archive: pushed at once with other layers, each
    must still be read whole (a shared file read from two threads mixes them)."""
    fixture = private_fixture(fixture_store, tool_cmd, "basic", tmp_path / "own")
    _big_base(fixture.root / "big-base.tar", layers=3, size=4 * 2**20)
    conf = conf_with_base(fixture.root, "big-base.tar", "big-conf.json")
    reference = f"{server.host}/{REPO}:big-base"
    pushed(push(fixture.root, reference, conf=conf, env={"STREAMIMAGE_NO_CACHE": "1"}))
    to_file = storegen.run_tool(tool_cmd, conf, cwd=fixture.root)
    assert to_file.returncode == 0, to_file.stderr
    assert pulled_layer_digests(reference, tmp_path) == archive_diff_ids(to_file.stdout)
