# The closure of an auto-layered nixpkgs image, as a graph: which store paths, what each
# references, and the layers streamLayeredImage makes of them. Pure: no IO, names only.
# Rule: the order and the layering are nixpkgs' own, not a guess. `streamLayeredImage`
# (pkgs/build-support/docker/default.nix) orders the closure with the popularity contest of
# `referencesByPopularity` (pkgs/build-support/references-by-popularity/closure-graph.py; in
# newer nixpkgs the same algorithm as the `popularity_contest` step of flattenReferencesGraph,
# whose default pipeline is `[["popularity_contest"], ["limit_layers", maxLayers - 1]]`):
# most-referenced paths first (glibc and friends), ties by name, the image's own contents
# last. With `maxLayers = 100` and one layer kept for the customisation layer, the first 98
# paths get a layer each and all the rest share the 99th store layer.
from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

MAX_LAYERS = 100  # streamLayeredImage's default maxLayers, the customisation layer included
NIX_STORE = "/nix/store/"  # package_name() sorts full paths, as nixpkgs does

Kind = Literal["env", "big", "medium", "small", "app", "file", "symlink"]


@dataclass(frozen=True, slots=True)
class StorePath:
    """One store path of the synthetic closure.

    `share` is its part of the corpus's file bytes (the env's is what the others leave);
    `large` how many large (shared-library-like) files it holds.
    """

    name: str  # "<hash>-<name>", store-relative
    kind: Kind
    share: float
    large: int
    references: tuple[str, ...]


# (name, share of the bytes, large files): a handful of 30-150 MB paths at scale 1
_BIG = (
    ("llvm-17.0.6-lib", 0.135, 3),
    ("python3-3.11.9", 0.075, 4),
    ("openblas-0.3.27", 0.05, 2),
    ("icu4c-74.2", 0.035, 3),
    ("glibc-2.39-52", 0.03, 4),
    ("gcc-13.2.0-lib", 0.03, 3),
)
# 5-30 MB at scale 1
_MEDIUM = (
    ("arrow-cpp-16.0.0", 0.027, 2),
    ("python3.11-scipy-1.13.0", 0.026, 2),
    ("python3.11-pyarrow-16.0.0", 0.024, 2),
    ("python3.11-numpy-1.26.4", 0.022, 2),
    ("python3.11-pandas-2.2.2", 0.02, 2),
    ("python3.11-cryptography-42.0.5", 0.009, 1),
    ("protobuf-25.3", 0.009, 1),
    ("gfortran-13.2.0-lib", 0.008, 1),
    ("python3.11-pydantic-core-2.18.2", 0.0075, 1),
    ("openssl-3.0.14", 0.0065, 1),
    ("libxml2-2.12.7", 0.0065, 1),
    ("sqlite-3.45.3", 0.0055, 1),
    ("ncurses-6.4", 0.0055, 1),
    ("krb5-1.21.2-lib", 0.005, 1),
)


def _names(text: str) -> tuple[str, ...]:
    return tuple(text.split())


# Under 5 MB at scale 1: libraries everything links to, then Python packages.
_SMALL_LIBS = _names(
    "zlib-1.3.1 xz-5.4.6 bzip2-1.0.8 libffi-3.4.6 readline-8.2p10 expat-2.6.2 "
    "libxcrypt-4.4.36 gdbm-1.23 mpdecimal-4.0.0 tzdata-2024a mailcap-2.1.53 bash-5.2p26 "
    "coreutils-9.5 acl-2.3.2 attr-2.5.2 gmp-6.3.0 util-linux-minimal-2.39.4-lib "
    "keyutils-1.6.3-lib libidn2-2.3.7 libunistring-1.2 libxslt-1.1.39 libyaml-0.2.5 "
    "zstd-1.5.6 lz4-1.9.4 libjpeg-turbo-3.0.2 libpng-apng-1.6.43 libtiff-4.6.0 "
    "libwebp-1.4.0 freetype-2.13.2 fontconfig-2.15.0-lib pcre2-10.43 libsodium-1.0.19 "
    "curl-8.7.1 nghttp2-1.61.0-lib brotli-1.1.0-lib c-ares-1.27.0 libssh2-1.11.0 "
    "libpsl-0.21.5 snappy-1.1.10 re2-2023-11-01 abseil-cpp-20240116.2 thrift-0.20.0 "
    "utf8proc-2.9.0 double-conversion-3.3.0 glog-0.7.0 gflags-2.2.2 libevent-2.1.12 "
    "lapack-3-openblas blas-3-openblas"
)
_SMALL_PYTHON = _names(
    "requests-2.31.0 urllib3-2.2.1 certifi-2024.02.02 idna-3.7 charset-normalizer-3.3.2 "
    "attrs-23.2.0 typing-extensions-4.11.0 jinja2-3.1.4 markupsafe-2.1.5 pydantic-2.7.1 "
    "annotated-types-0.6.0 six-1.16.0 python-dateutil-2.9.0 pytz-2024.1 tzdata-2024.1 "
    "cffi-1.16.0 pycparser-2.22 packaging-24.0 pyyaml-6.0.1 click-8.1.7 itsdangerous-2.2.0 "
    "werkzeug-3.0.3 flask-3.0.3 blinker-1.8.2 gunicorn-22.0.0"
)
_APP = "bench-app-1.0"
_ENV = "python3.11-bench-app-env-1.0"
# Store paths of a single file (writeScript, writeText outputs) and one that is a symlink.
_FILES = (
    "bench-app-entrypoint",
    "bench-app-config.json",
    "etc-os-release",
    "python-sitecustomize.py",
)
_SYMLINK = "bench-app-current"
# The image's `contents`: what the customisation layer links to (the roots of the graph).
_CONTENTS = (
    _APP,
    "bench-app-entrypoint",
    "bench-app-config.json",
    "etc-os-release",
    _SYMLINK,
    "fake-nss-1.0",
    "nss-cacert-3.98",
    "bin-sh",
    "usr-bin-env",
)
_CONTENT_DIRS = ("fake-nss-1.0", "nss-cacert-3.98", "bin-sh", "usr-bin-env")


@dataclass(frozen=True, slots=True)
class Closure:
    paths: tuple[StorePath, ...]  # in layer order
    layers: tuple[tuple[str, ...], ...]  # store-relative names, as auto-layering emits them
    app: str  # the application's store path, the one a rebuild of the app changes


def _hashed(rng: random.Random, name: str) -> str:
    alphabet = "0123456789abcdfghijklmnpqrsvwxyz"  # Nix's base32
    return "".join(rng.choice(alphabet) for _ in range(32)) + "-" + name


def _small_share(rng: random.Random) -> float:
    # Log-uniform between 8 KiB and 4.5 MiB of a 1 GiB corpus: a long tail of small paths.
    low, high = 8 * 1024 / 2**30, 4.5 * 2**20 / 2**30
    return math.exp(rng.uniform(math.log(low), math.log(high)))


def plan_closure(rng: random.Random) -> Closure:
    """The store paths, their references, their order and layers; from `rng` alone."""
    specs: list[tuple[str, Kind, float, int]] = []  # deps first: a path refers to earlier ones
    specs.append(("glibc-2.39-52", "big", 0.03, 4))
    specs.append(("gcc-13.2.0-lib", "big", 0.03, 3))
    specs += [(n, "small", _small_share(rng), 1) for n in _SMALL_LIBS]
    specs += [(n, "medium", s, k) for n, s, k in _MEDIUM if not n.startswith("python3.11-")]
    specs += [(n, "big", s, k) for n, s, k in _BIG if n not in ("glibc-2.39-52", "gcc-13.2.0-lib")]
    specs += [("python-sitecustomize.py", "file", 0.0, 0)]
    specs += [(f"python3.11-{n}", "small", _small_share(rng), 0) for n in _SMALL_PYTHON]
    specs += [(n, "medium", s, k) for n, s, k in _MEDIUM if n.startswith("python3.11-")]
    specs += [(_ENV, "env", 0.0, 5), (_APP, "app", 0.0001, 0)]
    specs += [(n, "file", 0.0, 0) for n in _FILES if n != "python-sitecustomize.py"]
    specs += [(n, "small", _small_share(rng), 0) for n in _CONTENT_DIRS]
    specs.append((_SYMLINK, "symlink", 0.0, 0))
    jitter = [rng.uniform(0.9, 1.1) for _ in specs]
    full = {name: _hashed(rng, name) for name, _, _, _ in specs}
    refs = _references(rng, [name for name, _, _, _ in specs])
    paths = {
        name: StorePath(
            full[name], kind, share * j, large, tuple(full[r] for r in refs.get(name, ()))
        )
        for (name, kind, share, large), j in zip(specs, jitter, strict=True)
    }
    graph = {p.name: p.references for p in paths.values()}
    # What nixpkgs feeds the contest: a root (the `closure` file) referring to the image's
    # base JSON and its customisation layer, which links to the contents. Both are dropped
    # from the layers afterwards (default.nix: `unnecessaryDrvs`).
    graph["closure"] = ("base-json", "customisation-layer")
    graph["base-json"] = ()
    graph["customisation-layer"] = tuple(full[name] for name in _CONTENTS)
    order = [n for n in popularity_order(graph) if n in {p.name for p in paths.values()}]
    by_full = {p.name: p for p in paths.values()}
    return Closure(
        paths=tuple(by_full[n] for n in order),
        layers=auto_layers(order),
        app=full[_APP],
    )


def _references(rng: random.Random, names: list[str]) -> dict[str, tuple[str, ...]]:
    """Who refers to whom, by short name; every path but the contents is referred to."""
    refs: dict[str, list[str]] = {name: [] for name in names}
    libs = [n for n in names if not n.startswith(("python3.11-", "python3-", "bench-"))]
    libs = [n for n in libs if n not in _FILES and n not in _CONTENTS]
    pythons = [n for n in names if n.startswith("python3.11-") and n != _ENV]
    for index, name in enumerate(names):
        earlier = names[:index]
        if name in _FILES or name == _SYMLINK or name in ("tzdata-2024a", "mailcap-2.1.53"):
            continue
        if name.startswith("python3.11-") and name != _ENV:
            pool = [n for n in earlier if n in libs or n in pythons]
            refs[name] = ["glibc-2.39-52", "python3-3.11.9", *rng.sample(pool, min(3, len(pool)))]
        elif name in libs or name == "python3-3.11.9":
            pool = [n for n in earlier if n in libs]
            count = 8 if name == "python3-3.11.9" else rng.randrange(0, 4)
            refs[name] = list(
                dict.fromkeys([*earlier[:1], *rng.sample(pool, min(count, len(pool)))])
            )
        elif name == _ENV:
            refs[name] = ["python3-3.11.9", "python-sitecustomize.py", *pythons]
        elif name == _APP:
            refs[name] = ["glibc-2.39-52", "bash-5.2p26", "python3-3.11.9", _ENV]
        elif name in _CONTENT_DIRS:
            refs[name] = ["bash-5.2p26"] if name == "bin-sh" else []
            refs[name] += ["coreutils-9.5"] if name == "usr-bin-env" else []
    refs["bench-app-entrypoint"] = ["bash-5.2p26", _APP]
    refs[_SYMLINK] = [_APP]
    referred = {r for targets in refs.values() for r in targets}
    for name in names:
        if name not in referred and name not in _CONTENTS:
            refs["python3-3.11.9" if name in libs else _ENV].append(name)
    return {name: tuple(dict.fromkeys(targets)) for name, targets in refs.items()}


def popularity(graph: Mapping[str, Sequence[str]]) -> dict[str, int]:
    """nixpkgs' popularity of each path of `graph` (path -> the paths it refers to).

    Every path down from a root counts: a path gains one for each way of reaching it,
    plus, for each path above it on that way, the popularity it has there (the worked
    example in closure-graph.py: A-B-C-D-F, C-E-F, B-E, A-G gives F 9, E 5, A 1).
    """
    referred = {r for name, targets in graph.items() for r in targets if r != name}
    contests: dict[str, dict[str, int]] = {}

    def contest(children: Sequence[str]) -> dict[str, int]:
        scores: dict[str, int] = {}
        for child in children:
            scores[child] = scores.get(child, 0) + 1
            if child not in contests:
                contests[child] = contest([r for r in graph.get(child, ()) if r != child])
            for below, score in contests[child].items():
                scores[below] = scores.get(below, 0) + score + 1
        return scores

    return contest([name for name in graph if name not in referred])


def package_name(name: str) -> str:
    """nixpkgs' tie-break key: the name after the hash, then the hash."""
    first, *rest = (NIX_STORE + name).split("-")
    return "-".join([*rest, first])


def order_by_popularity(scores: Mapping[str, int]) -> list[str]:
    """Most popular first; equally popular paths by package_name, as nixpkgs emits them."""
    return sorted(scores, key=lambda name: (-scores[name], package_name(name)))


def popularity_order(graph: Mapping[str, Sequence[str]]) -> list[str]:
    """The paths of `graph` in the order referencesByPopularity lists them."""
    return order_by_popularity(popularity(graph))


def auto_layers(
    order: Sequence[str], max_layers: int = MAX_LAYERS, used_layers: int = 1
) -> tuple[tuple[str, ...], ...]:
    """streamLayeredImage's store layers: `used_layers` are taken (the customisation layer,
    a base image's layers); of the rest, all but one hold a path each, the last the rest."""
    available = max_layers - used_layers
    singles = tuple((name,) for name in order[: available - 1])
    rest = tuple(order[available - 1 :])
    return (*singles, rest) if rest else singles
