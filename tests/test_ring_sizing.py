"""The default Maglev table is sized to the pool the flags declare (``table_size_for``).

Every change of membership costs the build worker O(table) work, and on a busy 2-core
machine that work shows in the requests' p99 (docs/performance.md, "The table's size"), so
a pool of 3 gets the 65,537 entries of the Maglev paper and of Envoy, not the 4,194,287 a
pool of 1,000 needs for its largest share to stay within 5% of the mean.
"""

from __future__ import annotations

import logging

import pytest

from lbproxy.cli import build_parser, config_from_args
from lbproxy.config import ring_family
from lbproxy.control.pool import Pool
from lbproxy.ring import make_family
from lbproxy.ring.maglev import (
    DEFAULT_TABLE_SIZE,
    ENTRIES_PER_REPLICA,
    TABLE_SIZES,
    is_prime,
    table_size_for,
)

pytestmark = pytest.mark.unit


def _slots(*flags: str) -> int:
    config = config_from_args(build_parser().parse_args(["serve", *flags]))
    slots: int = ring_family(config).slots  # type: ignore[attr-defined]
    return slots


def test_every_size_is_a_prime_the_cube_map_permutes() -> None:
    # k -> k^3 mod M permutes 0..M-1 exactly when 3 does not divide M - 1 (maglev.py's G)
    assert list(TABLE_SIZES) == sorted(TABLE_SIZES)
    assert TABLE_SIZES[-1] == DEFAULT_TABLE_SIZE
    for m in TABLE_SIZES:
        assert is_prime(m) and (m - 1) % 3 != 0, m


def test_a_pool_gets_the_smallest_table_with_enough_entries_a_replica() -> None:
    assert table_size_for(3) == 65_537
    assert table_size_for(16) == 65_537
    assert table_size_for(17) == 131_063
    assert table_size_for(100) == 524_261
    assert table_size_for(1000) == DEFAULT_TABLE_SIZE
    assert table_size_for(100_000) == DEFAULT_TABLE_SIZE  # the largest; balance degrades
    for n in range(1, 1024):  # 1,024 x 4,096 is 2^22, just above the largest prime below it
        m = table_size_for(n)
        assert m >= ENTRIES_PER_REPLICA * n
        smaller = [s for s in TABLE_SIZES if s < m]
        assert not smaller or smaller[-1] < ENTRIES_PER_REPLICA * n


def test_serve_sizes_the_table_from_replicas_or_the_autoscalers_maximum() -> None:
    assert _slots() == 65_537  # --replicas 3
    assert _slots("--replicas", "200") == 1_048_571
    assert _slots("--replicas", "2", "--autoscale", "1:40") == 262_139
    assert _slots("--replicas", "200", "--slots", "65537") == 65_537  # --slots wins
    # a family without a table is not given one
    assert make_family("hashring", pool_size=1000).name == "hashring"


@pytest.mark.parametrize("n", [16, 32])
def test_largest_share_within_five_percent_at_the_largest_pool_of_a_size(n: int) -> None:
    ring = make_family("maglev", pool_size=n).build({f"replica-{i}": i for i in range(n)})
    shares = list(ring.shares().values())
    assert max(shares) * n <= 1.05


def test_a_pool_that_outgrows_its_table_says_so_once(caplog: pytest.LogCaptureFixture) -> None:
    """The table is never resized (nearly every key would move): past ~4,096 entries a
    replica the operator is told, once, what to declare at the next start."""
    pool = Pool(make_family("maglev", pool_size=3))  # 65,537 entries
    with caplog.at_level(logging.WARNING, logger="lbproxy.control.pool"):
        for i in range(16):
            pool.add(f"replica-{i}")
        assert not caplog.records  # 16 x 4,096 fits
        for i in range(16, 40):
            pool.add(f"replica-{i}")
    [record] = caplog.records
    assert "17 replicas for a 65537-entry Maglev table" in record.getMessage()
    assert "--slots 131063" in record.getMessage()
    big = Pool(make_family("maglev", slots=DEFAULT_TABLE_SIZE))  # nothing larger to suggest
    caplog.clear()
    for i in range(2000):
        big.add(f"replica-{i}")
    assert not caplog.records
