"""``--replica-cmd`` and ``--replica-env``: templates, environment, and the wrapper script
that makes a replica one process group (pure parts; real processes are in
tests/test_custom_replica_process.py)."""

from __future__ import annotations

import argparse
import shlex

import pytest

from lbproxy.argtypes import env_pair, replica_template
from lbproxy.backends.command import parse_env_pair, replica_env, substitute
from lbproxy.cli import build_parser, config_from_args

pytestmark = pytest.mark.unit


def test_placeholders_are_substituted_and_names_quoted() -> None:
    text = substitute(
        "serve --port {port} --name {name} --id {ring_id} ${HOME} {a,b} {other}",
        port=4000,
        name="Server 1",
        ring_id=7,
    )
    assert text == "serve --port 4000 --name 'Server 1' --id 7 ${HOME} {a,b} {other}"
    assert shlex.split(text)[4] == "Server 1"
    assert substitute("{name}", port=1, name="S5", ring_id=1) == "S5"


def test_environment_carries_port_name_ring_id_and_extras() -> None:
    env = replica_env(port=4000, name="Server 1", ring_id=3, extra=["A=1", "B=x=y", "C="])
    assert env == {
        "A": "1",
        "B": "x=y",
        "C": "",
        "PORT": "4000",
        "SERVER_ID": "Server 1",
        "LBPROXY_RING_ID": "3",
    }


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("A", "'A' is not KEY=VALUE"),
        ("1A=2", "'1A' is not a valid environment variable name"),
        ("PORT=1", "PORT is set by lbproxy"),
        ("SERVER_ID=x", "SERVER_ID is set by lbproxy"),
    ],
)
def test_bad_env_pairs_are_refused(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_env_pair(text)
    with pytest.raises(argparse.ArgumentTypeError):
        env_pair(text)


@pytest.mark.parametrize("text", ["", "   ", "'unclosed", 'a "b'])
def test_bad_templates_are_refused(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        replica_template(text)


def test_cli_maps_the_replica_flags() -> None:
    args = build_parser().parse_args(
        [
            "serve",
            "--replica-cmd",
            "python3 -m http.server {port}",
            "--replica-env",
            "A=1",
            "--replica-env",
            "B=2",
            "--replica-port",
            "8000",
        ]
    )
    config = config_from_args(args)
    assert config.replica_cmd == "python3 -m http.server {port}"
    assert config.replica_env == ("A=1", "B=2")
    assert config.docker.replica_port == 8000
    default = config_from_args(build_parser().parse_args(["serve"]))
    assert (default.replica_cmd, default.replica_env) == (None, ())


def test_replica_env_variable_holds_several(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LBPROXY_REPLICA_ENV", 'A=1 B="two words"')
    config = config_from_args(build_parser().parse_args(["serve"]))
    assert config.replica_env == ("A=1", "B=two words")
    # A flag beats the variable.
    config = config_from_args(build_parser().parse_args(["serve", "--replica-env", "C=3"]))
    assert config.replica_env == ("C=3",)


def test_container_command_is_split_without_a_shell() -> None:
    from lbproxy.backends.command import container_command

    assert container_command(None, port=8000, name="S1", ring_id=1) == []
    assert container_command(
        "python -m http.server {port} --name {name}", port=8000, name="web 1", ring_id=2
    ) == ["python", "-m", "http.server", "8000", "--name", "web 1"]
    assert container_command("sh -c 'echo $PORT'", port=1, name="a", ring_id=1) == [
        "sh",
        "-c",
        "echo $PORT",
    ]
