"""The image's JSON documents, digests and descriptors (streamimage.imagejson), byte for byte.

Oracles: hand-written expected bytes, documents built here with ``json.dumps`` the way the
reference script builds its config (indent=4, its key order, repr'd path lists), hashlib for
digests, literal OCI media types from the image-spec, and a regex for what a sha256 digest is.
"""

from __future__ import annotations

import copy
import gzip
import io
import json
import re
import tarfile
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streamimage.imagejson import (
    Descriptor,
    Digest,
    LayerRecord,
    docker_manifest,
    image_config,
    image_ref_annotations,
    layer_media_type,
    merge_env,
    oci_index,
    oci_manifest,
)
from tests.conftest import sha256_hex

# The image-spec's own strings (media-types.md, annotations.md), written out here rather than
# imported, so that a typo in the module's constants fails these tests.
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
REF_NAME = "org.opencontainers.image.ref.name"
IMAGE_NAME = "io.containerd.image.name"

HEX_A = "a" * 64
HEX_B = "0123456789abcdef" * 4
SHA256_DIGEST = re.compile(r"(sha256:)?[0-9a-f]{64}")
CREATED = datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)


def layer(hex_: str, paths: Sequence[str], member: str = "layer.tar") -> LayerRecord:
    return LayerRecord(diff_id=Digest(hex_), member=member, comment_paths=paths)


# --- Digest ------------------------------------------------------------------------------


@given(st.binary())
def test_digest_of_data_is_its_sha256(data: bytes) -> None:
    digest = Digest.of(data)
    assert digest.hex == sha256_hex(data)
    assert str(digest) == f"sha256:{sha256_hex(data)}"


def test_digest_prints_in_the_oci_descriptor_form() -> None:
    assert str(Digest(HEX_B)) == "sha256:0123456789abcdef" + "0123456789abcdef" * 3


@pytest.mark.parametrize("text", [f"sha256:{HEX_B}", HEX_B], ids=["prefixed", "bare"])
def test_digest_parse_accepts_a_sha256_with_or_without_its_prefix(text: str) -> None:
    assert Digest.parse(text) == Digest(HEX_B, "sha256")


@pytest.mark.parametrize(
    "text",
    [
        pytest.param(f"sha256:{HEX_B.upper()}", id="uppercase-hex"),
        pytest.param(HEX_B.upper(), id="bare-uppercase-hex"),
        pytest.param(f"sha256:{HEX_A[:63]}", id="63-digits"),
        pytest.param(f"sha256:{HEX_A}a", id="65-digits"),
        pytest.param(HEX_A[:63], id="bare-63-digits"),
        pytest.param(f"sha512:{'a' * 128}", id="sha512"),
        pytest.param(f"sha384:{HEX_A}", id="other-algorithm-64-digits"),
        pytest.param(f"md5:{'a' * 32}", id="md5"),
        pytest.param(f"SHA256:{HEX_A}", id="uppercase-algorithm"),
        pytest.param(f"sha256:sha256:{HEX_A}", id="prefix-twice"),
        pytest.param(f"sha256:{'g' * 64}", id="not-hex"),
        pytest.param(f"{HEX_A}\n", id="trailing-newline"),
        pytest.param(f" {HEX_A}", id="leading-space"),
        pytest.param("", id="empty"),
        pytest.param("sha256:", id="prefix-only"),
    ],
)
def test_digest_parse_refuses_anything_but_a_lowercase_sha256(text: str) -> None:
    with pytest.raises(ValueError, match="not a sha256 digest") as caught:
        Digest.parse(text)
    assert repr(text) in str(caught.value)


@given(
    st.one_of(
        st.text(),
        st.builds(
            lambda prefix, raw, upper: prefix + (raw.hex().upper() if upper else raw.hex()),
            st.sampled_from(["", "sha256:", "sha512:", "SHA256:"]),
            st.binary(min_size=31, max_size=33),
            st.booleans(),
        ),
    )
)
def test_digest_parse_accepts_exactly_the_sha256_forms(text: str) -> None:
    if SHA256_DIGEST.fullmatch(text):
        assert str(Digest.parse(text)) == "sha256:" + text.removeprefix("sha256:")
    else:
        with pytest.raises(ValueError, match="not a sha256 digest"):
            Digest.parse(text)


@given(st.binary())
def test_a_printed_digest_parses_back_to_itself(data: bytes) -> None:
    digest = Digest.of(data)
    assert Digest.parse(str(digest)) == digest


# --- merge_env ---------------------------------------------------------------------------


def test_merge_env_puts_base_entries_first_and_a_later_name_wins_in_the_first_place() -> None:
    merged = merge_env(
        {"Env": ["PATH=/base/bin", "A=1", "B=2"]},
        {"Env": ["A=override", "C=3", "PATH=/conf/bin"], "Cmd": ["/bin/hello"]},
    )
    assert merged == {
        "Env": ["PATH=/conf/bin", "A=override", "B=2", "C=3"],
        "Cmd": ["/bin/hello"],
    }


def test_merge_env_resolves_duplicates_within_one_side_too() -> None:
    assert merge_env({"Env": ["A=1", "A=2"]}, {"Env": ["B=1", "B=2", "A=3"]}) == {
        "Env": ["A=3", "B=2"]
    }


def test_merge_env_splits_at_the_first_equals_sign() -> None:
    assert merge_env({"Env": ["OPTS=a=b"]}, {"Env": ["OPTS=c=d", "OPTS2=e"]}) == {
        "Env": ["OPTS=c=d", "OPTS2=e"]
    }


def test_merge_env_takes_only_env_from_the_base_config() -> None:
    merged = merge_env({"Env": ["A=1"], "Cmd": ["/base"], "User": "base"}, {"Cmd": ["/conf"]})
    assert merged == {"Cmd": ["/conf"], "Env": ["A=1"]}


def test_merge_env_gives_the_base_env_to_a_conf_without_config() -> None:
    assert merge_env({"Env": ["A=1"]}, None) == {"Env": ["A=1"]}


@pytest.mark.parametrize(
    "base",
    [{"Cmd": ["/base"]}, {}, {"Env": []}, {"Env": None}, None],
    ids=["no-env-key", "empty", "empty-env", "null-env", "no-base-config"],
)
def test_merge_env_without_env_on_either_side_returns_the_conf_config_unchanged(
    base: dict[str, Any] | None,
) -> None:
    config = {"Cmd": ["/bin/hello"], "WorkingDir": "/", "Labels": {"b": "1", "a": "2"}}
    merged = merge_env(base, copy.deepcopy(config))
    assert merged == config
    assert list(merged) == list(config)  # key order kept: it is the config's byte order


def test_merge_env_of_no_config_on_either_side_is_none() -> None:
    assert merge_env(None, None) is None


def test_merge_env_keeps_a_null_conf_config_when_the_base_has_no_env() -> None:
    assert merge_env({"Cmd": ["/base"]}, None) is None


def test_merge_env_changes_neither_argument() -> None:
    base = {"Env": ["A=1", "B=2"], "Cmd": ["/base"]}
    config = {"Env": ["A=2"], "Cmd": ["/conf"]}
    base_before, config_before = copy.deepcopy(base), copy.deepcopy(config)
    merge_env(base, config)
    assert (base, config) == (base_before, config_before)


ENV_NAMES = st.sampled_from(["A", "B", "PATH", "LANG", "HOME", "X_1"])
ENV_ENTRIES = st.lists(
    st.builds(lambda name, value: f"{name}={value}", ENV_NAMES, st.text(max_size=5)), max_size=8
)


def expected_env(entries: list[str]) -> list[str]:
    """Names in order of first appearance, each with its last entry (stated independently)."""
    names: list[str] = []
    for entry in entries:
        name = entry.partition("=")[0]
        if name not in names:
            names.append(name)
    return [next(e for e in reversed(entries) if e.partition("=")[0] == n) for n in names]


@given(ENV_ENTRIES, ENV_ENTRIES)
def test_merge_env_never_duplicates_a_name_and_the_last_entry_wins(
    base_env: list[str], conf_env: list[str]
) -> None:
    merged = merge_env({"Env": base_env}, {"Env": conf_env, "Cmd": ["/x"]})
    assert merged["Cmd"] == ["/x"]
    env = merged.get("Env", [])
    names = [entry.partition("=")[0] for entry in env]
    assert len(names) == len(set(names))
    assert env == expected_env(base_env + conf_env)


# --- image_config and docker_manifest ----------------------------------------------------

CONFIG_LITERAL = "\n".join(
    [
        "{",
        '    "created": "2024-01-02T03:04:05+00:00",',
        '    "architecture": "arm64",',
        '    "os": "linux",',
        '    "config": {',
        '        "Env": [',
        '            "A=1"',
        "        ],",
        '        "Cmd": [',
        '            "/bin/hello"',
        "        ]",
        "    },",
        '    "rootfs": {',
        '        "diff_ids": [',
        f'            "sha256:{HEX_A}",',
        f'            "sha256:{HEX_B}"',
        "        ],",
        '        "type": "layers"',
        "    },",
        '    "history": [',
        "        {",
        '            "created": "2024-01-02T03:04:05+00:00",',
        '            "comment": "store paths: [\'/nix/store/abc-hello\']"',
        "        },",
        "        {",
        '            "created": "2024-01-02T03:04:05+00:00",',
        '            "comment": "store paths: [\'/nix/store/x-a\', \\"/nix/store/y-it\'s\\"]"',
        "        }",
        "    ]",
        "}",
    ]
).encode()


def test_image_config_is_the_references_indented_document() -> None:
    produced = image_config(
        created=CREATED,
        architecture="arm64",
        config={"Env": ["A=1"], "Cmd": ["/bin/hello"]},
        layers=[
            layer(HEX_A, ["/nix/store/abc-hello"]),
            layer(HEX_B, ["/nix/store/x-a", "/nix/store/y-it's"]),
        ],
    )
    assert produced == CONFIG_LITERAL


def test_image_config_with_no_layers_and_null_config() -> None:
    produced = image_config(created=CREATED, architecture="amd64", config=None, layers=[])
    assert produced == (
        b'{\n    "created": "2024-01-02T03:04:05+00:00",\n    "architecture": "amd64",\n'
        b'    "os": "linux",\n    "config": null,\n    "rootfs": {\n        "diff_ids": [],\n'
        b'        "type": "layers"\n    },\n    "history": []\n}'
    )


def test_image_config_history_lists_paths_given_as_a_tuple_in_list_form() -> None:
    produced = image_config(
        created=CREATED, architecture="amd64", config=None, layers=[layer(HEX_A, ("/p",))]
    )
    assert json.loads(produced)["history"][0]["comment"] == "store paths: ['/p']"


@pytest.mark.parametrize(
    ("created", "stamp"),
    [
        (datetime(2024, 1, 2, 3, 4, 5), "2024-01-02T03:04:05"),
        (datetime(2024, 1, 2, 3, 4, 5, 6), "2024-01-02T03:04:05.000006"),
        (
            datetime(2024, 1, 2, 3, 4, 5, tzinfo=timezone(timedelta(hours=-5, minutes=-30))),
            "2024-01-02T03:04:05-05:30",
        ),
        (datetime(1970, 1, 1, tzinfo=UTC), "1970-01-01T00:00:00+00:00"),
    ],
    ids=["naive", "microseconds", "offset", "epoch"],
)
def test_image_config_created_is_isoformat_in_both_places(created: datetime, stamp: str) -> None:
    document = json.loads(
        image_config(created=created, architecture="amd64", config={}, layers=[layer(HEX_A, [])])
    )
    assert document["created"] == stamp
    assert document["history"] == [{"created": stamp, "comment": "store paths: []"}]


def reference_config_document(
    created: datetime, architecture: str, config: Any, layers: Sequence[tuple[str, list[str]]]
) -> bytes:
    """The config as the reference script words it (FORMATS.md), built independently."""
    stamp = created.isoformat()
    document = {
        "created": stamp,
        "architecture": architecture,
        "os": "linux",
        "config": config,
        "rootfs": {"diff_ids": ["sha256:" + hex_ for hex_, _ in layers], "type": "layers"},
        "history": [
            {
                "created": stamp,
                "comment": "store paths: [" + ", ".join(repr(p) for p in paths) + "]",
            }
            for _, paths in layers
        ],
    }
    return json.dumps(document, indent=4).encode("utf-8")


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=8,
)
HEXES = st.binary(min_size=32, max_size=32).map(bytes.hex)
PATHS = st.lists(st.text(max_size=12), max_size=3)


@given(
    created=st.datetimes(timezones=st.none() | st.timezones()),
    architecture=st.text(max_size=10),
    config=st.none() | st.dictionaries(st.text(max_size=6), JSON_VALUES, max_size=4),
    layers=st.lists(st.tuples(HEXES, PATHS), max_size=4),
)
def test_image_config_matches_the_references_document(
    created: datetime,
    architecture: str,
    config: dict[str, Any] | None,
    layers: list[tuple[str, list[str]]],
) -> None:
    produced = image_config(
        created=created,
        architecture=architecture,
        config=config,
        layers=[layer(hex_, paths) for hex_, paths in layers],
    )
    assert produced == reference_config_document(created, architecture, config, layers)


def test_docker_manifest_is_the_references_indented_list() -> None:
    produced = docker_manifest(f"{HEX_A}.json", "hello:1.0", [f"{HEX_B}/layer.tar", "b/l.tar"])
    assert (
        produced
        == "\n".join(
            [
                "[",
                "    {",
                f'        "Config": "{HEX_A}.json",',
                '        "RepoTags": [',
                '            "hello:1.0"',
                "        ],",
                '        "Layers": [',
                f'            "{HEX_B}/layer.tar",',
                '            "b/l.tar"',
                "        ]",
                "    }",
                "]",
            ]
        ).encode()
    )


@given(config=st.text(), repo_tag=st.text(), layers=st.lists(st.text(), max_size=4))
def test_docker_manifest_matches_the_references_document(
    config: str, repo_tag: str, layers: list[str]
) -> None:
    expected = [{"Config": config, "RepoTags": [repo_tag], "Layers": layers}]
    assert docker_manifest(config, repo_tag, layers) == json.dumps(expected, indent=4).encode()


# --- OCI documents -----------------------------------------------------------------------


@given(st.binary())
def test_descriptor_of_data_names_its_sha256_and_size(data: bytes) -> None:
    described = Descriptor.of(OCI_CONFIG, data)
    assert described == Descriptor(OCI_CONFIG, Digest(sha256_hex(data)), len(data))


def test_descriptor_json_has_annotations_only_when_it_has_some() -> None:
    bare = Descriptor(OCI_LAYER, Digest(HEX_A), 7)
    assert bare.to_json() == {"mediaType": OCI_LAYER, "digest": f"sha256:{HEX_A}", "size": 7}
    annotated = Descriptor(OCI_MANIFEST, Digest(HEX_A), 7, ((IMAGE_NAME, "x:1"), (REF_NAME, "1")))
    assert annotated.to_json() == {
        "mediaType": OCI_MANIFEST,
        "digest": f"sha256:{HEX_A}",
        "size": 7,
        "annotations": {IMAGE_NAME: "x:1", REF_NAME: "1"},
    }


def test_oci_manifest_is_compact_json_of_the_spec_shape() -> None:
    config = Descriptor(OCI_CONFIG, Digest(HEX_A), 123)
    layers = [
        Descriptor(OCI_LAYER, Digest(HEX_B), 10240),
        Descriptor(OCI_LAYER_GZIP, Digest(HEX_A), 45),
    ]
    produced = oci_manifest(config, layers)
    assert produced == (
        b'{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",'
        b'"config":{"mediaType":"application/vnd.oci.image.config.v1+json",'
        b'"digest":"sha256:' + HEX_A.encode() + b'","size":123},'
        b'"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar",'
        b'"digest":"sha256:' + HEX_B.encode() + b'","size":10240},'
        b'{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip",'
        b'"digest":"sha256:' + HEX_A.encode() + b'","size":45}]}'
    )


def test_oci_manifest_without_layers_has_an_empty_layers_list() -> None:
    document = json.loads(oci_manifest(Descriptor(OCI_CONFIG, Digest(HEX_A), 2), []))
    assert document == {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": f"sha256:{HEX_A}", "size": 2},
        "layers": [],
    }


def test_oci_index_is_compact_json_naming_the_manifest_and_its_tag() -> None:
    manifest = Descriptor(OCI_MANIFEST, Digest(HEX_B), 321, image_ref_annotations("hello:1.0"))
    produced = oci_index([manifest])
    assert produced == (
        b'{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json",'
        b'"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json",'
        b'"digest":"sha256:' + HEX_B.encode() + b'","size":321,'
        b'"annotations":{"io.containerd.image.name":"hello:1.0",'
        b'"org.opencontainers.image.ref.name":"1.0"}}]}'
    )


DESCRIPTORS = st.builds(
    Descriptor,
    st.sampled_from([OCI_LAYER, OCI_LAYER_GZIP, OCI_LAYER_ZSTD, OCI_MANIFEST]),
    st.builds(Digest, HEXES),
    st.integers(min_value=0, max_value=2**63 - 1),
    st.lists(
        st.tuples(st.text(max_size=8), st.text(max_size=8)), max_size=2, unique_by=lambda a: a[0]
    ).map(tuple),
)


def descriptor_document(descriptor: Descriptor) -> dict[str, Any]:
    document: dict[str, Any] = {
        "mediaType": descriptor.media_type,
        "digest": "sha256:" + descriptor.digest.hex,
        "size": descriptor.size,
    }
    if descriptor.annotations:
        document["annotations"] = dict(descriptor.annotations)
    return document


@given(DESCRIPTORS, st.lists(DESCRIPTORS, max_size=4))
def test_oci_manifest_is_go_style_compact_json_of_its_descriptors(
    config: Descriptor, layers: list[Descriptor]
) -> None:
    produced = oci_manifest(config, layers)
    expected = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": descriptor_document(config),
        "layers": [descriptor_document(layer) for layer in layers],
    }
    assert produced == json.dumps(expected, separators=(",", ":")).encode()


@given(st.lists(DESCRIPTORS, max_size=4))
def test_oci_index_is_go_style_compact_json_of_its_manifests(manifests: list[Descriptor]) -> None:
    expected = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [descriptor_document(manifest) for manifest in manifests],
    }
    assert oci_index(manifests) == json.dumps(expected, separators=(",", ":")).encode()


@pytest.mark.parametrize(
    ("repo_tag", "full", "tag"),
    [
        ("name:tag", "name:tag", "tag"),
        ("name", "name:latest", "latest"),
        ("host:5000/name", "host:5000/name:latest", "latest"),
        ("host:5000/name:tag", "host:5000/name:tag", "tag"),
        ("library/name:1.2.3", "library/name:1.2.3", "1.2.3"),
        ("host:5000/org/name", "host:5000/org/name:latest", "latest"),
    ],
)
def test_image_ref_annotations_name_the_image_and_its_tag(
    repo_tag: str, full: str, tag: str
) -> None:
    # in the order Go's json.Marshal writes a map (sorted keys), as docker save does
    assert image_ref_annotations(repo_tag) == ((IMAGE_NAME, full), (REF_NAME, tag))


# --- layer_media_type --------------------------------------------------------------------


def small_tar() -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("hello")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"hi"))
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("head", "media_type"),
    [
        pytest.param(gzip.compress(small_tar(), mtime=0)[:8], OCI_LAYER_GZIP, id="gzip"),
        pytest.param(b"\x1f\x8b", OCI_LAYER_GZIP, id="gzip-magic-alone"),
        # zstd frame magic 0xFD2FB528, little-endian (RFC 8878 3.1.1)
        pytest.param(b"\x28\xb5\x2f\xfd\x04\x58\x00\x00", OCI_LAYER_ZSTD, id="zstd"),
        pytest.param(small_tar()[:8], OCI_LAYER, id="tar"),
        pytest.param(b"", OCI_LAYER, id="empty"),
        pytest.param(b"\x1f", OCI_LAYER, id="half-gzip-magic"),
        pytest.param(b"\x28\xb5\x2f", OCI_LAYER, id="short-zstd-magic"),
        pytest.param(b"\x8b\x1f", OCI_LAYER, id="gzip-magic-swapped"),
    ],
)
def test_layer_media_type_follows_the_magic_number(head: bytes, media_type: str) -> None:
    assert layer_media_type(head) == media_type
