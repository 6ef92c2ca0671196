"""Settings declared once on Config: the generated CLI, the variables and Config.validate().

Issue 13: each setting was written four times (dataclass, argparse call, hand mapping,
README). These tests hold the generated parts to the declarations and pin the sentences
a user reads when a setting is wrong.
"""

from __future__ import annotations

import argparse
import dataclasses

import pytest

from lbproxy.cli import build_parser, config_from_args
from lbproxy.config import AutoscaleConfig, Config, ConfigError, HealthConfig
from lbproxy.settings import Setting, get_path, walk

pytestmark = pytest.mark.unit


def _serve_actions() -> dict[str, argparse.Action]:
    parser = build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return {o: a for a in sub.choices["serve"]._actions for o in a.option_strings if o != "--help"}


def _parse(*argv: str) -> Config:
    return config_from_args(build_parser().parse_args(["serve", *argv]))


def test_every_flag_is_declared_on_config_and_the_reverse() -> None:
    declared = {s.flag for _p, _f, s in walk(Config) if s.flag is not None}
    assert set(_serve_actions()) - {"-h"} == declared


def test_no_flag_is_declared_twice() -> None:
    flags = [s.flag for _p, _f, s in walk(Config) if s.flag is not None]
    assert len(flags) == len(set(flags))


def test_every_declared_default_is_within_its_own_bounds() -> None:
    Config().validate()
    for path, f, s in walk(Config):
        assert s.bounds_error(get_path(Config(), path)) is None, path
        assert s.help and not s.help.endswith("."), f"{path}: help is one lower-case clause"
        assert f.default is not dataclasses.MISSING


def test_no_flag_gives_the_declared_defaults() -> None:
    """``lbproxy serve`` with nothing set is ``Config()`` but for the derived settings."""
    derived = {"proxy.rewrite_404", "autoscale.sample_interval", "admin_token"}
    derived.add("proxy.key")  # parsed, so normalised: header:x-request-id
    parsed, default = _parse(), Config()
    for path, _f, _s in walk(Config):
        if path not in derived:
            assert get_path(parsed, path) == get_path(default, path), path
    assert parsed.proxy.rewrite_404 is True  # server_app replicas: SPEC's 400 body


def test_env_names_follow_the_flags() -> None:
    s = Setting("--heartbeat-interval", "x")
    assert s.env == "LBPROXY_HEARTBEAT_INTERVAL"
    assert {s.env for _p, _f, s in walk(Config) if s.flag}.issuperset(
        {"LBPROXY_MAX_BODY", "LBPROXY_DOCKER_MEMORY", "LBPROXY_TARGET_CONCURRENCY"}
    )


def test_a_variable_sets_a_nested_field_and_a_flag_beats_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LBPROXY_HEARTBEAT_INTERVAL", "0.25")
    monkeypatch.setenv("LBPROXY_MAX_BODY", "1024")
    assert _parse().health.interval == 0.25
    assert _parse().proxy.max_body_bytes == 1024
    assert _parse("--heartbeat-interval", "2").health.interval == 2.0


def test_the_autoscale_flag_sets_three_fields_and_derives_the_sampling() -> None:
    a = _parse("--autoscale", "0:6", "--autoscale-tick", "0.01").autoscale
    assert (a.enabled, a.min_replicas, a.max_replicas) == (True, 0, 6)
    assert a.sample_interval == 0.01  # at least one sample a tick
    assert _parse().autoscale.sample_interval == AutoscaleConfig().sample_interval


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--heartbeat-interval", "0"], "--heartbeat-interval: must be positive, got 0"),
        (["--retries", "-1"], "--retries: must not be negative, got -1"),
        (["--max-eject-percent", "101"], "--max-eject-percent: must be from 0 to 100, got 101"),
        (["--replica-port", "70000"], "must be from 1 to 65535, got 70000"),
        (["--fall", "two"], "--fall: 'two' is not a whole number"),
        (["--autoscale-max-scale-up-rate", "1"], "must be greater than 1, got 1"),
        (["--health-method", "POST"], "must be one of GET, HEAD"),
        (["--rewrite-404", "yes"], "expected on or off"),
    ],
)
def test_a_bad_flag_is_a_usage_error_that_says_why(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(["serve", *argv])
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def test_a_bad_variable_names_itself(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("LBPROXY_QUEUE_TIMEOUT", "-3")
    with pytest.raises(SystemExit):
        build_parser()
    assert "LBPROXY_QUEUE_TIMEOUT='-3': must be positive, got -3" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["--slots", "65536"],
            "--hash maglev --slots 65536: the table size (slots) must be prime, got 65536; "
            "the next prime is 65537 (Maglev needs a prime table size",
        ),
        (["--hash", "seed", "--vnodes", "5000"], "--hash seed --vnodes 5000: vnodes must be"),
        (["--tls-key", "key.pem"], "--tls-key needs --tls-cert"),
        (["--admin-port", "5000"], "--admin-port 5000 is also the public --port"),
        (["--autoscale", "1:2000"], "--autoscale MAX must be at most 1024, got 2000"),
        (
            ["--autoscale", "1:4", "--autoscale-panic-window", "30"],
            "the panic window (30s) must not be longer than the stable window (20s)",
        ),
    ],
)
def test_contradictions_are_one_sentence_not_a_traceback(argv: list[str], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        _parse(*argv)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_validate_checks_a_config_built_in_code() -> None:
    """Bounds hold for a Config a test or an embedder builds, not only for flags."""
    with pytest.raises(ConfigError, match="--fall must be positive, got 0"):
        Config(health=HealthConfig(fall=0)).validate()
    with pytest.raises(ConfigError, match="--backend must be one of process, docker, swarm"):
        Config(backend="kubernetes").validate()  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="autoscale bounds"):
        Config(autoscale=AutoscaleConfig(min_replicas=5, max_replicas=2)).validate()


def test_port_zero_still_means_any_free_port() -> None:
    config = _parse("--port", "0", "--admin-port", "0")
    assert (config.port, config.admin_port) == (0, 0)


def test_help_shows_the_variable_and_the_default(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "[env LBPROXY_HEARTBEAT_INTERVAL; default 1]" in out
    assert "[env LBPROXY_HEALTH_STATUS; default 2xx]" in out
    assert "[env LBPROXY_ADMIN_TOKEN; unset]" in out


@pytest.mark.process
@pytest.mark.parametrize(
    ("argv", "sentence"),
    [
        (["--slots", "65536"], "Maglev needs a prime table size"),
        (["--fall", "0"], "argument --fall: must be positive, got 0"),
    ],
)
def test_serve_refuses_bad_settings_with_a_sentence_and_exit_2(
    argv: list[str], sentence: str
) -> None:
    """The issue's example: before, ``--slots 65536`` died in a traceback from the ring."""
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-m", "lbproxy", "serve", "--replicas", "0", *argv],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2, proc.stderr
    assert sentence in proc.stderr
    assert "Traceback" not in proc.stderr


def test_help_shows_a_variable_as_given_and_never_a_secret(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("LBPROXY_AUTOSCALE", "1:3")
    monkeypatch.setenv("LBPROXY_ADMIN_TOKEN", "s3cret")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "[env LBPROXY_AUTOSCALE; default 1:3]" in out
    assert "[env LBPROXY_ADMIN_TOKEN; set]" in out and "s3cret" not in out
