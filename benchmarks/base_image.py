# Times streamimage over a gzip-compressed from_image of N layers, in each format: the cost
# of copying a base image's layers (issue 14, bug 5: OCI output over a gzip base re-read
# the gzip stream from its start for every layer). Rule: the base is built here with the
# standard library (tarfile, gzip), of SIZE_MB in N equal layers of pseudo-random bytes
# (seeded: the same base every run), over an empty store; the output goes to /dev/null.
#
#   python -m benchmarks.base_image [--layers 50 200] [--size-mb 40] [--runs 3] [--tree DIR]
#
# --tree: time the streamimage of another checkout (its directory goes first on PYTHONPATH),
# for a before/after.
from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import os
import random
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

FORMATS = ("docker", "oci", "oci-dir")
REPO_ROOT = Path(__file__).resolve().parent.parent


def layer_tar(rng: random.Random, size: int) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("data")
        info.size = size
        # half random, half zeros: gzip has something to do, in both directions
        tar.addfile(info, io.BytesIO(rng.randbytes(size // 2) + bytes(size - size // 2)))
    return buffer.getvalue()


def write_base(path: Path, layers: int, size: int) -> None:
    """A gzip-compressed docker-archive of ``layers`` layers of ``size`` bytes in all."""
    rng = random.Random(layers)
    blobs = [layer_tar(rng, size // layers) for _ in range(layers)]
    diff_ids = [f"sha256:{hashlib.sha256(blob).hexdigest()}" for blob in blobs]
    config = json.dumps({"config": {}, "rootfs": {"type": "layers", "diff_ids": diff_ids}})
    names = [f"{i:04d}/layer.tar" for i in range(layers)]
    manifest = json.dumps([{"Config": "config.json", "RepoTags": [], "Layers": names}])
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in [("config.json", config.encode()), *zip(names, blobs, strict=True)]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        info = tarfile.TarInfo("manifest.json")
        info.size = len(manifest)
        tar.addfile(info, io.BytesIO(manifest.encode()))
    path.write_bytes(gzip.compress(buffer.getvalue(), compresslevel=1, mtime=0))


def write_conf(root: Path, base: Path) -> Path:
    customisation = root / "customisation"
    customisation.mkdir()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT):
        pass
    (customisation / "layer.tar").write_bytes(buffer.getvalue())
    checksum = hashlib.sha256(buffer.getvalue()).hexdigest()
    (customisation / "checksum").write_text(checksum)
    conf = {
        "architecture": "amd64",
        "config": {},
        "created": "1970-01-01T00:00:01Z",
        "mtime": "1970-01-01T00:00:01Z",
        "uid": 0,
        "gid": 0,
        "uname": "root",
        "gname": "root",
        "store_dir": str(root),
        "store_layers": [],
        "customisation_layer": str(customisation),
        "from_image": str(base),
        "repo_tag": "bench:1",
    }
    path = root / "conf.json"
    path.write_text(json.dumps(conf))
    return path


def time_run(conf: Path, fmt: str, out: Path, tree: str) -> float:
    args = ["-o", str(out / "dir")] if fmt == "oci-dir" else []
    command = [sys.executable, "-m", "streamimage", str(conf), "--format", fmt, "-q", *args]
    start = time.perf_counter()
    stdout = subprocess.DEVNULL if fmt != "oci-dir" else None
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (tree, env.get("PYTHONPATH")) if p)
    # run in the case's directory: `python -m` puts the working directory first on sys.path
    subprocess.run(command, stdout=stdout, env=env, cwd=out, check=True)
    elapsed = time.perf_counter() - start
    subprocess.run(["rm", "-rf", str(out / "dir")], check=True)
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--layers", type=int, nargs="+", default=[50, 200])
    parser.add_argument("--size-mb", type=int, default=40)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--tree", default=str(REPO_ROOT), help="the checkout to time")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="streamimage-base-bench-") as directory:
        root = Path(directory)
        for layers in args.layers:
            case = root / f"n{layers}"
            case.mkdir()
            base = case / "base.tar.gz"
            write_base(base, layers, args.size_mb * 1024 * 1024)
            conf = write_conf(case, base)
            for fmt in FORMATS:
                times = sorted(time_run(conf, fmt, case, args.tree) for _ in range(args.runs))
                median = times[len(times) // 2]
                sys.stdout.write(
                    f"{layers:5d} layers  {fmt:8s} median {median:6.2f} s  min {times[0]:6.2f} s\n"
                )


if __name__ == "__main__":
    main()
