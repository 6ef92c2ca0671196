"""Secure by default: no unprotected /add and /rm on a listener other hosts can reach.

Traefik's anchor: its API is off the public entry point unless ``api.insecure`` says so.
Here a balancer whose public listener is not on loopback refuses to start unless an admin
token is set (LBPROXY_ADMIN_TOKEN, or --admin-token-file: a Docker secret), the admin
endpoints are on their own listener (--admin-port), or --insecure-admin is given.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from lbproxy.cli import build_parser, config_from_args
from lbproxy.config import Config, admin_exposure

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "localhost"])
def test_loopback_listeners_need_nothing(host: str) -> None:
    assert admin_exposure(Config(host=host)) is None


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "", "10.1.2.3", "lb.example"])
def test_other_listeners_need_protection(host: str) -> None:
    problem = admin_exposure(Config(host=host))
    assert problem is not None and "--insecure-admin" in problem and "--admin-port" in problem
    assert admin_exposure(Config(host=host, admin_token="t")) is None
    assert admin_exposure(Config(host=host, admin_port=5001)) is None
    assert admin_exposure(Config(host=host, insecure_admin=True)) is None


def test_token_comes_from_a_secret_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = tmp_path / "lbproxy_admin_token"
    secret.write_text("s3cret\n")
    args = build_parser().parse_args(["serve", "--admin-token-file", str(secret)])
    assert config_from_args(args).admin_token == "s3cret"
    # the variable beats the file, as a flag beats its variable
    monkeypatch.setenv("LBPROXY_ADMIN_TOKEN", "from-env")
    args = build_parser().parse_args(["serve", "--admin-token-file", str(secret)])
    assert config_from_args(args).admin_token == "from-env"


@pytest.mark.parametrize("content", [None, ""])
def test_a_missing_or_empty_secret_is_an_error(tmp_path: Path, content: str | None) -> None:
    secret = tmp_path / "token"
    if content is not None:
        secret.write_text(content)
    args = build_parser().parse_args(["serve", "--admin-token-file", str(secret)])
    with pytest.raises(ValueError, match="admin token file"):
        config_from_args(args)
