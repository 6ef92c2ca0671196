"""``--pool`` is checked at startup against what the Docker socket proxy can safely match.

The pool name prefixes every container and service the balancer changes (``<pool>_<name>``)
and its ring-id configs (``<pool>-ring-<id>``), and socket-proxy/haproxy.cfg pastes
``LBPROXY_POOL`` into the regular expressions that decide which names the balancer may
start, stop, update or remove. A name with a regex metacharacter ('.', '*', '|', ...) would
widen those patterns to other objects; one with '_' would let pool ``a`` reach pool
``a_b``'s containers; one the proxy refuses (a space, a quote) would make every creation
fail with a bare 403. So the balancer refuses such a name before it starts, with a sentence.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lbproxy.cli import build_parser, config_from_args
from lbproxy.config import Config, ConfigError, DockerConfig

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parent.parent
HAPROXY_CFG = ROOT / "socket-proxy" / "haproxy.cfg"

BAD = ["", ".*", "a.b", "a_b", "my pool", "-lead", "a|b", 'a"b', "a$", "é", "x" * 33]
GOOD = ["lbproxy", "socket-proxy-test", "pool1", "A-1", "lbpswarm", "x" * 32]


def _pool_patterns(pool: str) -> list[re.Pattern[str]]:
    """The proxy's name patterns (paths, query and bodies) with ``pool`` pasted in, as
    HAProxy expands the variable, in Python's spelling (``\\"`` is a quote in HAProxy's
    double quotes; ``[[:space:]]`` is PCRE's ``\\s``)."""
    patterns = []
    for line in HAPROXY_CFG.read_text().splitlines():
        if "${LBPROXY_POOL}" not in line or line.lstrip().startswith("#"):
            continue
        # acl NAME FETCH -m reg "^...${LBPROXY_POOL}..."$  (a '$' outside the quotes)
        quoted = re.search(r'-m reg "(.*)"(\$?)\s*$', line)
        assert quoted, line
        text = quoted.group(1).replace('\\"', '"').replace("[[:space:]]", r"\s")
        text = text.replace("${LBPROXY_POOL}", pool) + quoted.group(2)
        patterns.append(re.compile(text))
    assert len(patterns) >= 7, "haproxy.cfg's pool patterns moved?"
    return patterns


def _reaches(patterns: list[re.Pattern[str]], subject: str) -> bool:
    return any(p.search(subject) for p in patterns)


@pytest.mark.parametrize("pool", BAD)
def test_a_pool_name_the_proxy_cannot_hold_is_refused_at_startup(
    pool: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(["serve", f"--pool={pool}"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "--pool" in err and "letters, digits and '-'" in err


@pytest.mark.parametrize("pool", BAD)
def test_a_pool_name_in_a_config_built_in_code_is_refused_too(pool: str) -> None:
    with pytest.raises(ConfigError, match=r"--pool .*letters, digits and '-'"):
        Config(docker=DockerConfig(pool=pool)).validate()


def test_the_variable_is_checked_like_the_flag(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("LBPROXY_POOL", "prod.*")
    with pytest.raises(SystemExit):
        build_parser()
    assert "LBPROXY_POOL='prod.*'" in capsys.readouterr().err


@pytest.mark.parametrize("pool", GOOD)
def test_pool_names_the_proxy_matches_exactly_are_accepted(pool: str) -> None:
    config = config_from_args(build_parser().parse_args(["serve", "--pool", pool]))
    assert config.docker.pool == pool
    config.validate()


def test_a_widening_name_would_really_reach_another_pools_objects() -> None:
    """Why the rule: pasted into the proxy's patterns, these names match foreign objects."""
    assert _reaches(_pool_patterns(".*"), "/containers/victim_db/stop")
    assert _reaches(_pool_patterns(".*"), '{"Name": "victim_db", "Labels": {}}')
    assert _reaches(_pool_patterns("a"), "/containers/a_b_c1/stop")
    assert _reaches(_pool_patterns("a"), '{"Name": "a_b_c1", "Labels": {}}')
    assert _reaches(_pool_patterns("a.b"), "/services/axb_c1")


_pool = st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9-]{0,31}\Z")
_host = st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9_.-]{0,20}\Z")


@given(_pool, _pool, _host)
def test_an_accepted_pool_never_reaches_another_accepted_pools_names(
    mine: str, theirs: str, host: str
) -> None:
    """Any two names the balancer accepts: one's proxy patterns match none of the other's
    container, service or ring-config paths (the first '_' or '-ring-' ends the pool)."""
    Config(docker=DockerConfig(pool=mine)).validate()
    Config(docker=DockerConfig(pool=theirs)).validate()
    if mine == theirs:
        return
    subjects = [
        f"/containers/{theirs}_{host}/stop",
        f"/containers/{theirs}_{host}",
        f"/services/{theirs}_{host}",
        f"/services/{theirs}_{host}/update",
        f"/configs/{theirs}-ring-7",
        f'{{"Name": "{theirs}_{host}", "Labels": {{}}}}',  # a service creation's body
        f'{{"Name": "{theirs}-ring-7", "Labels": {{}}}}',  # a ring claim's
    ]
    patterns = _pool_patterns(mine)
    for subject in subjects:
        assert not _reaches(patterns, subject), subject
    # (and the patterns do match the pool's own names: the property is not vacuous)
    assert _reaches(patterns, f'{{"Name": "{mine}_{host}", "Labels": {{}}}}')
    assert _reaches(patterns, f"/containers/{mine}_{host}/stop")
