"""Credentials as containers/image and Docker keep them: each file kind and its place in
the order, the key forms, repository-scoped keys, credential helpers (real executables on
a PATH of the test's own), and malformed files: one error naming the file, never a secret.
"""

from __future__ import annotations

import base64
import json
import os
import stat
import sys
from pathlib import Path
from typing import Any

import pytest

from streamimage.errors import CredentialsError
from streamimage.remote.authn import Credentials, auth_files, credentials_for

REGISTRY = "registry.example:5000"
REPOSITORY = "team/app"
SECRET = "s3cr3t-pa55"  # every error and repr below is checked for it


def auth(username: str, password: str) -> dict[str, str]:
    return {"auth": base64.b64encode(f"{username}:{password}".encode()).decode()}


def write_json(path: Path, content: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(content))
    return path


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """An environment whose every auth file lives under tmp_path, none there yet."""
    home = tmp_path / "home"
    (tmp_path / "run").mkdir()
    home.mkdir()
    return {
        "HOME": str(home),
        "XDG_RUNTIME_DIR": str(tmp_path / "run"),
        "PATH": str(tmp_path / "bin"),
    }


def runtime_file(env: dict[str, str]) -> Path:
    return Path(env["XDG_RUNTIME_DIR"]) / "containers" / "auth.json"


def config_file(env: dict[str, str]) -> Path:
    return Path(env["HOME"]) / ".config" / "containers" / "auth.json"


def docker_file(env: dict[str, str]) -> Path:
    return Path(env["HOME"]) / ".docker" / "config.json"


def helper(env: dict[str, str], name: str, answers: dict[str, Any], exit_status: int = 0) -> Path:
    """An executable ``docker-credential-NAME`` on env's PATH: ``get`` answers ``answers[
    server]`` as JSON (a str as is, with ``exit_status``), else "credentials not found";
    each server it was asked for is appended to its log."""
    bin_dir = Path(env["PATH"])
    bin_dir.mkdir(exist_ok=True)
    log = bin_dir / f"{name}.log"
    script = bin_dir / f"docker-credential-{name}"
    script.write_text(
        f"#!{sys.executable}\n"
        "import json, sys\n"
        f"answers = json.loads({json.dumps(json.dumps(answers))})\n"
        "assert sys.argv[1:] == ['get'], sys.argv\n"
        "server = sys.stdin.read()\n"
        f"with open({str(log)!r}, 'a') as log:\n"
        "    log.write(server + '\\n')\n"
        "if server not in answers:\n"
        "    print('credentials not found in native keychain')\n"
        "    sys.exit(1)\n"
        "answer = answers[server]\n"
        "print(answer if isinstance(answer, str) else json.dumps(answer))\n"
        f"sys.exit({exit_status})\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return log


def must(registry: str, repository: str, env: dict[str, str]) -> Credentials:
    found = credentials_for(registry, repository, environ=env)
    assert found is not None, (registry, repository)
    return found


def asked(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


def test_no_files_no_credentials(env: dict[str, str]) -> None:
    assert credentials_for(REGISTRY, REPOSITORY, environ=env) is None


@pytest.mark.parametrize("where", [runtime_file, config_file, docker_file])
def test_each_default_file_is_read(env: dict[str, str], where: Any) -> None:
    path = write_json(where(env), {"auths": {REGISTRY: auth("alice", SECRET)}})
    found = credentials_for(REGISTRY, REPOSITORY, environ=env)
    assert found is not None
    assert (found.username, found.password) == ("alice", SECRET)
    assert str(path) in found.source
    assert credentials_for("other.example", REPOSITORY, environ=env) is None


def test_docker_config_env_and_legacy_dockercfg(env: dict[str, str], tmp_path: Path) -> None:
    legacy = Path(env["HOME"]) / ".dockercfg"
    write_json(legacy, {f"https://{REGISTRY}/v1/": auth("old", "legacy-pw")})
    found = credentials_for(REGISTRY, REPOSITORY, environ=env)
    assert found is not None
    assert found.password == "legacy-pw"
    elsewhere = tmp_path / "docker-elsewhere"
    write_json(elsewhere / "config.json", {"auths": {REGISTRY: auth("dc", "docker-config-pw")}})
    write_json(docker_file(env), {"auths": {REGISTRY: auth("home", "home-pw")}})
    found = credentials_for(REGISTRY, REPOSITORY, environ={**env, "DOCKER_CONFIG": str(elsewhere)})
    assert found is not None
    assert found.password == "docker-config-pw"


def test_order_runtime_then_config_then_docker(env: dict[str, str]) -> None:
    write_json(docker_file(env), {"auths": {REGISTRY: auth("d", "docker-pw")}})
    assert must(REGISTRY, REPOSITORY, env).password == "docker-pw"
    write_json(config_file(env), {"auths": {REGISTRY: auth("c", "config-pw")}})
    assert must(REGISTRY, REPOSITORY, env).password == "config-pw"
    write_json(runtime_file(env), {"auths": {REGISTRY: auth("r", "runtime-pw")}})
    assert must(REGISTRY, REPOSITORY, env).password == "runtime-pw"
    # a file without this registry passes the search on
    write_json(runtime_file(env), {"auths": {"elsewhere.example": auth("r", "x")}})
    assert must(REGISTRY, REPOSITORY, env).password == "config-pw"


def test_registry_auth_file_replaces_the_defaults(env: dict[str, str], tmp_path: Path) -> None:
    write_json(runtime_file(env), {"auths": {REGISTRY: auth("r", "runtime-pw")}})
    named = write_json(tmp_path / "named.json", {"auths": {REGISTRY: auth("n", "named-pw")}})
    environ = {**env, "REGISTRY_AUTH_FILE": str(named)}
    assert must(REGISTRY, REPOSITORY, environ).password == "named-pw"
    # containers/image reads only the file the user names (getAuthFilePaths)
    write_json(named, {"auths": {}})
    assert credentials_for(REGISTRY, REPOSITORY, environ=environ) is None
    assert [f.path for f in auth_files(environ)] == [named]


def test_unset_xdg_runtime_dir_means_run_containers_uid(env: dict[str, str]) -> None:
    del env["XDG_RUNTIME_DIR"]
    first = auth_files(env)[0].path
    assert first == Path(f"/run/containers/{os.getuid()}/auth.json")


@pytest.mark.parametrize(
    "key",
    [REGISTRY, f"https://{REGISTRY}", f"http://{REGISTRY}/v1/", f"{REGISTRY}/v1/", f"{REGISTRY}/"],
)
def test_key_forms_name_the_registry(env: dict[str, str], key: str) -> None:
    write_json(docker_file(env), {"auths": {key: auth("alice", SECRET)}})
    found = credentials_for(REGISTRY, REPOSITORY, environ=env)
    assert found is not None
    assert found.password == SECRET
    assert credentials_for("registry.example:5001", REPOSITORY, environ=env) is None


def test_docker_hub_names(env: dict[str, str]) -> None:
    write_json(docker_file(env), {"auths": {"https://index.docker.io/v1/": auth("hub", "hub-pw")}})
    for name in ("docker.io", "index.docker.io", "registry-1.docker.io"):
        assert must(name, "library/x", env).password == "hub-pw"


def test_repository_scoped_keys_most_specific_wins(env: dict[str, str]) -> None:
    write_json(
        runtime_file(env),
        {
            "auths": {
                REGISTRY: auth("host", "host-pw"),
                f"{REGISTRY}/team": auth("ns", "ns-pw"),
                f"{REGISTRY}/team/app": auth("repo", "repo-pw"),
                f"{REGISTRY}/team/app/sub": auth("deeper", "deeper-pw"),
            }
        },
    )

    def password(repository: str) -> str:
        found = credentials_for(REGISTRY, repository, environ=env)
        assert found is not None
        return found.password

    assert password("team/app") == "repo-pw"
    assert password("team/other") == "ns-pw"
    assert password("team/application") == "ns-pw"  # a key is a path prefix, not a string one
    assert password("elsewhere/app") == "host-pw"
    assert password("team/app/sub/x") == "deeper-pw"


def test_identity_token_entry(env: dict[str, str]) -> None:
    entry = {**auth("alice", ""), "identitytoken": "refresh-" + SECRET}
    write_json(docker_file(env), {"auths": {REGISTRY: entry}})
    found = credentials_for(REGISTRY, REPOSITORY, environ=env)
    assert found == Credentials("alice", "", "refresh-" + SECRET, found.source if found else "")
    write_json(docker_file(env), {"auths": {REGISTRY: {"identitytoken": "only-" + SECRET}}})
    found = credentials_for(REGISTRY, REPOSITORY, environ=env)
    assert found is not None
    assert found.identity_token == "only-" + SECRET


def test_empty_entry_is_no_credentials(env: dict[str, str]) -> None:
    # Docker writes {} for a registry whose secret a helper keeps
    write_json(runtime_file(env), {"auths": {REGISTRY: {}}})
    write_json(docker_file(env), {"auths": {REGISTRY: auth("d", "docker-pw")}})
    assert must(REGISTRY, REPOSITORY, env).password == "docker-pw"


def test_cred_helpers_run_the_registrys_helper(env: dict[str, str]) -> None:
    log = helper(env, "test", {REGISTRY: {"Username": "helped", "Secret": SECRET}})
    other = helper(env, "other", {})
    write_json(
        docker_file(env),
        {
            "credHelpers": {REGISTRY: "test", "elsewhere.example": "other"},
            "auths": {REGISTRY: auth("file", "file-pw")},  # the helper wins
        },
    )
    found = credentials_for(REGISTRY, REPOSITORY, environ=env)
    assert found is not None
    assert (found.username, found.password) == ("helped", SECRET)
    assert "docker-credential-test" in found.source
    assert asked(log) == [REGISTRY]  # the server on stdin, the registry not the repository
    assert asked(other) == []


def test_helper_token_username_means_identity_token(env: dict[str, str]) -> None:
    helper(env, "test", {REGISTRY: {"Username": "<token>", "Secret": "refresh-" + SECRET}})
    write_json(docker_file(env), {"credHelpers": {REGISTRY: "test"}})
    found = credentials_for(REGISTRY, REPOSITORY, environ=env)
    assert found is not None
    assert (found.username, found.password, found.identity_token) == ("", "", "refresh-" + SECRET)


def test_creds_store_serves_every_registry_before_auths(env: dict[str, str]) -> None:
    log = helper(env, "store", {REGISTRY: {"Username": "stored", "Secret": SECRET}})
    write_json(
        docker_file(env),
        {
            "credsStore": "store",
            "auths": {REGISTRY: {}, "plain.example": auth("plain", "plain-pw")},
        },
    )
    found = credentials_for(REGISTRY, REPOSITORY, environ=env)
    assert found is not None
    assert found.password == SECRET
    # the store has nothing for this one: "not found", then the file's own entry
    found = credentials_for("plain.example", REPOSITORY, environ=env)
    assert found is not None
    assert found.password == "plain-pw"
    assert asked(log) == [REGISTRY, "plain.example"]


def test_helper_not_found_moves_on_to_the_next_file(env: dict[str, str]) -> None:
    log = helper(env, "test", {})
    write_json(runtime_file(env), {"credHelpers": {REGISTRY: "test"}})
    assert credentials_for(REGISTRY, REPOSITORY, environ=env) is None
    write_json(docker_file(env), {"auths": {REGISTRY: auth("d", "docker-pw")}})
    assert must(REGISTRY, REPOSITORY, env).password == "docker-pw"
    assert asked(log) == [REGISTRY, REGISTRY]


def assert_clean_error(error: pytest.ExceptionInfo[CredentialsError], *names: str) -> str:
    message = str(error.value)
    assert error.value.exit_status == 1  # a failure while running, as cli.py maps it
    assert "\n" not in message
    assert SECRET not in message
    assert base64.b64encode(f"alice:{SECRET}".encode()).decode() not in message
    for name in names:
        assert name in message, (name, message)
    return message


@pytest.mark.parametrize(
    ("content", "says"),
    [
        ('{"auths": {', "not JSON"),
        ("[]", "not a JSON object"),
        ('{"auths": []}', "auths is not a JSON object"),
        ('{"credHelpers": "x"}', "credHelpers is not a JSON object"),
        ('{"credsStore": 3}', "credsStore is not a name"),
        (json.dumps({"auths": {REGISTRY: "x"}}), "is not a JSON object"),
        (json.dumps({"auths": {REGISTRY: {"auth": SECRET + "!"}}}), "not base64"),
        (
            json.dumps({"auths": {REGISTRY: {"auth": base64.b64encode(SECRET.encode()).decode()}}}),
            "USER:PASSWORD",
        ),
        (b"\xff\xfe" + SECRET.encode(), "not JSON"),
    ],
)
def test_malformed_file_is_one_clean_error(
    env: dict[str, str], content: str | bytes, says: str
) -> None:
    path = runtime_file(env)
    path.parent.mkdir(parents=True)
    if isinstance(content, str):
        path.write_text(content)
    else:
        path.write_bytes(content)
    with pytest.raises(CredentialsError) as error:
        credentials_for(REGISTRY, REPOSITORY, environ=env)
    assert_clean_error(error, str(path), says, f"{REGISTRY}/{REPOSITORY}")


def test_unreadable_file_is_one_clean_error(env: dict[str, str]) -> None:
    path = write_json(runtime_file(env), {"auths": {REGISTRY: auth("alice", SECRET)}})
    path.unlink()
    path.mkdir()  # EISDIR: unreadable even for root, who ignores mode bits
    with pytest.raises(CredentialsError) as error:
        credentials_for(REGISTRY, REPOSITORY, environ=env)
    assert_clean_error(error, str(path), "unreadable")


def test_helper_missing_failing_or_garbled(env: dict[str, str]) -> None:
    path = write_json(docker_file(env), {"credHelpers": {REGISTRY: "absent"}})
    with pytest.raises(CredentialsError) as error:
        credentials_for(REGISTRY, REPOSITORY, environ=env)
    assert_clean_error(error, "docker-credential-absent", "not found on PATH", str(path))

    helper(env, "broken", {REGISTRY: "keychain locked"}, exit_status=3)
    write_json(docker_file(env), {"credHelpers": {REGISTRY: "broken"}})
    with pytest.raises(CredentialsError) as error:
        credentials_for(REGISTRY, REPOSITORY, environ=env)
    assert_clean_error(error, "docker-credential-broken", "exited 3", "keychain locked")

    # exit 0 but no credentials JSON: its output may be the secret, so it isn't shown
    helper(env, "garbled", {REGISTRY: f"Username={SECRET}"})
    write_json(docker_file(env), {"credHelpers": {REGISTRY: "garbled"}})
    with pytest.raises(CredentialsError) as error:
        credentials_for(REGISTRY, REPOSITORY, environ=env)
    assert_clean_error(error, "docker-credential-garbled", "no JSON Username and Secret")


def test_repr_shows_no_secret() -> None:
    credentials = Credentials("alice", SECRET, "token-" + SECRET, source="/x/auth.json")
    for text in (repr(credentials), str(credentials), f"{credentials}", f"{[credentials]}"):
        assert SECRET not in text
        assert "alice" in text
