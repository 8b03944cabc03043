"""The conf: JSON as nixpkgs' streamLayeredImage writes it -> one frozen, checked record.

PURE: no I/O; the caller reads the file and passes the decoded JSON.
Rule: every key the reference reads is accepted with the reference's quirks (ids as
numeric strings, ISO 8601 times or "now", ``os`` ignored), and anything else that would
make the reference crash or write a broken image is a ConfError naming the key.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import PurePosixPath
from typing import Any

from streamimage.errors import ConfError, UsageError
from streamimage.imageref import normal_repo_tag

NOW = "now"


@dataclass(frozen=True, slots=True)
class Conf:
    """One image to build, as the conf describes it."""

    architecture: str
    config: dict[str, Any] | None
    created: datetime
    mtime: int
    uid: int
    gid: int
    uname: str
    gname: str
    store_dir: str
    from_image: str | None
    store_layers: tuple[tuple[str, ...], ...]
    customisation_layer: str
    repo_tag: str
    notes: tuple[str, ...] = ()  # what was changed in the conf, for the user to see


def _get(conf: dict[str, Any], key: str, where: str) -> Any:
    try:
        return conf[key]
    except KeyError:
        raise ConfError(f"{where}: missing key {key!r}") from None


def _string(conf: dict[str, Any], key: str, where: str) -> str:
    value = _get(conf, key, where)
    if not isinstance(value, str):
        raise ConfError(f"{where}: {key} must be a string, not {_kind(value)}")
    return value


def _kind(value: object) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}
    names |= {int: "a number", float: "a number", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def parse_time(value: object, key: str, where: str, now: datetime) -> datetime:
    """An ISO 8601 time (with or without offset or fractions) or "now", as the reference."""
    if not isinstance(value, str):
        raise ConfError(f"{where}: {key} must be a string, not {_kind(value)}")
    if value == NOW:
        return now
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        raise ConfError(f"{where}: {key} {value!r} is not an ISO 8601 time or 'now'") from None


ID_DIGITS = 40  # of a numeric string id: tar's PAX records take any size, ints don't


def _id(conf: dict[str, Any], key: str, where: str) -> int:
    value = _get(conf, key, where)
    # nixpkgs passes ids through `--arg`, so they arrive as numeric strings
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str) and value.strip().isascii() and value.strip().isdigit():
        if len(value.strip()) > ID_DIGITS:
            raise ConfError(f"{where}: {key} has {len(value.strip())} digits: too large")
        number = int(value)
    else:
        raise ConfError(f"{where}: {key} must be a non-negative number, not {value!r}")
    if number < 0:
        raise ConfError(f"{where}: {key} must be a non-negative number, not {value!r}")
    return number


def _under(path: str, store_dir: str) -> bool:
    inner, outer = PurePosixPath(path), PurePosixPath(store_dir)
    return inner != outer and inner.is_relative_to(outer) and ".." not in inner.parts


def _distinct(layer: list[str], where: str, notes: list[str]) -> tuple[str, ...]:
    """The layer's paths with repeats dropped (the reference writes them twice, and docker
    and podman refuse a layer with duplicate members); a path inside another is an error."""
    kept: dict[PurePosixPath, str] = {}
    for path in layer:
        normal = PurePosixPath(path)
        if normal in kept:
            notes.append(f"{where}: {path!r} is listed twice; archived once")
            continue
        for other in kept:
            if normal.is_relative_to(other) or other.is_relative_to(normal):
                raise ConfError(f"{where}: store path {path!r} overlaps {kept[other]!r}")
        kept[normal] = path
    return tuple(kept.values())


def _repo_tag(conf: dict[str, Any], where: str, given: str | None, notes: list[str]) -> str:
    """The image's name:tag: ``-t``'s (``given``) or else the conf's, checked."""
    # The reference writes either into RepoTags as it is, where docker load and podman
    # load refuse what isn't a reference (`a b:1`, `Name:1`) after the whole stream.
    origin = f"-t {given!r}" if given is not None else f"{where}: repo_tag {conf.get('repo_tag')!r}"
    value = given if given is not None else _string(conf, "repo_tag", where)
    try:
        normal = normal_repo_tag(value)
    except ValueError as exc:
        error = UsageError if given is not None else ConfError
        raise error(f"{origin}: not a valid image reference: {exc}") from None
    if normal != value:
        notes.append(f"{origin} has no tag: named {normal!r}, as docker reads it")
    return normal


def parse_conf(
    conf: object, where: str, repo_tag: str | None = None, now: datetime | None = None
) -> Conf:
    """Check the decoded conf JSON and return it as a Conf.

    ``where`` names the conf in messages; ``repo_tag`` (``-t``) wins over the conf's;
    ``now`` is what "now" means (one instant for created and mtime, as the reference).

    Raises:
        ConfError: a key is missing, of the wrong type, or its value is malformed.
        UsageError: ``repo_tag`` is not a valid image reference.
    """
    if not isinstance(conf, dict):
        raise ConfError(f"{where}: the conf must be a JSON object, not {_kind(conf)}")
    now = now or datetime.now(tz=UTC)

    config = _get(conf, "config", where)
    if config is not None and not isinstance(config, dict):
        raise ConfError(f"{where}: config must be an object, not {_kind(config)}")

    created = parse_time(_get(conf, "created", where), "created", where, now)
    mtime_at = parse_time(_get(conf, "mtime", where), "mtime", where, now)
    try:
        # int() truncates toward zero, as the reference; a naive time is local time
        mtime = int(mtime_at.timestamp())
    except (OverflowError, OSError, ValueError) as exc:
        raise ConfError(f"{where}: mtime {mtime_at.isoformat()} is out of range: {exc}") from None

    store_dir = _string(conf, "store_dir", where)
    layers_value = _get(conf, "store_layers", where)
    if not isinstance(layers_value, list):
        raise ConfError(f"{where}: store_layers must be an array, not {_kind(layers_value)}")
    store_layers: list[tuple[str, ...]] = []
    notes: list[str] = []
    for index, layer in enumerate(layers_value):
        if not isinstance(layer, list) or not all(isinstance(p, str) for p in layer):
            raise ConfError(f"{where}: store_layers[{index}] must be an array of strings")
        for path in layer:
            if not _under(path, store_dir):
                raise ConfError(
                    f"{where}: store path {path!r} is not under store_dir {store_dir!r}"
                )
        kept = _distinct(layer, f"{where}: store_layers[{index}]", notes)
        store_layers.append(kept)

    from_image = _get(conf, "from_image", where)
    if from_image is not None and not isinstance(from_image, str):
        raise ConfError(f"{where}: from_image must be a path or null, not {_kind(from_image)}")
    if from_image == "":
        raise ConfError(f"{where}: from_image must be a path or null, not an empty string")

    repo_tag = _repo_tag(conf, where, repo_tag, notes)

    return Conf(
        architecture=_string(conf, "architecture", where),
        config=config,
        created=created,
        mtime=mtime,
        uid=_id(conf, "uid", where),
        gid=_id(conf, "gid", where),
        uname=_string(conf, "uname", where),
        gname=_string(conf, "gname", where),
        store_dir=store_dir,
        from_image=from_image,
        store_layers=tuple(store_layers),
        customisation_layer=_string(conf, "customisation_layer", where),
        repo_tag=repo_tag,
        notes=tuple(notes),
    )
