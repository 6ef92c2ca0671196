"""The reference ring (``--hash seed``) against hand-computed slots, and its known skew.

Arithmetic used throughout (M = 512, K = 9):

    Phi(i, j) = i + j + 2*j^2 + 25, so the j-part is
        j:       0   1   2   3   4   5    6    7    8
        j+2j^2+25: 25  28  35  46  61  80  103  130  161
    Server 1 (i=1): 26 29 36 47 62 81 104 131 162
    Server 2 (i=2): 27 30 37 48 63 82 105 132 163
    Server 3 (i=3): 28 31 38 49 64 83 106 133 164      (no collision among 1, 2, 3)

    H(i) = i + 2*i^2 + 17 (mod 512) only depends on i mod 512 (integer polynomial).
"""

from __future__ import annotations

import random
from collections import Counter

import pytest

from lbproxy.errors import RingFullError
from lbproxy.ring import make_family
from lbproxy.ring.seed import SeedFamily, SeedRing, key_to_int, seed_alt_family

pytestmark = pytest.mark.unit

S123 = {"Server 1": 1, "Server 2": 2, "Server 3": 3}


def seed_ring(members: dict[str, int]) -> SeedRing:
    ring = make_family("seed").build(members)
    assert isinstance(ring, SeedRing)
    return ring


def test_three_servers_sit_on_the_hand_computed_slots() -> None:
    ring = seed_ring(S123)
    assert ring.placements == {
        "Server 1": (26, 29, 36, 47, 62, 81, 104, 131, 162),
        "Server 2": (27, 30, 37, 48, 63, 82, 105, 132, 163),
        "Server 3": (28, 31, 38, 49, 64, 83, 106, 133, 164),
    }


def test_a_fourth_server_probes_past_collisions() -> None:
    # Server 4 is placed after 1, 2, 3 (ascending ring id).
    #   j=0: Phi = 4 + 25 = 29, taken by Server 1 -> 29+1 = 30, taken by Server 2
    #        -> 29+4 = 33, free.
    #   j=1: 4 + 28 = 32 free; j=2: 39; j=3: 50; j=4: 65; j=5: 84; j=6: 107; j=7: 134;
    #   j=8: 165 (all free).
    ring = seed_ring({**S123, "Server 4": 4})
    assert ring.placements["Server 4"] == (33, 32, 39, 50, 65, 84, 107, 134, 165)
    # Without Server 2, slot 30 is free, so j=0 stops at 29+1 = 30.
    ring = seed_ring({"Server 1": 1, "Server 4": 4})
    assert ring.placements["Server 4"] == (30, 32, 39, 50, 65, 84, 107, 134, 165)


@pytest.mark.parametrize(
    ("request_id", "slot", "owner"),
    [
        # 123456 = 241*512 + 64: H = 64 + 2*4096 + 17 = 8273 = 16*512 + 81 -> slot 81,
        # Server 1's vnode j=5 sits exactly there (a vnode at the slot serves it).
        ("123456", 81, "Server 1"),
        # 100354 = 196*512 + 2: H = 2 + 8 + 17 = 27 -> Server 2's vnode j=0 at 27.
        ("100354", 27, "Server 2"),
        # 100355 = 196*512 + 3: H = 3 + 18 + 17 = 38 -> Server 3's vnode j=2 at 38.
        ("100355", 38, "Server 3"),
        # 100000 = 195*512 + 160: H = 160 + 51200 + 17 = 51377 = 100*512 + 177 -> slot 177,
        # past the last vnode (164), wraps round to Server 1 at 26.
        ("100000", 177, "Server 1"),
        # 100368 = 196*512 + 16: H = 16 + 512 + 17 = 545 = 512 + 33 -> slot 33; the next
        # vnode clockwise is Server 1's at 36.
        ("100368", 33, "Server 1"),
    ],
)
def test_requests_land_on_hand_computed_replicas(request_id: str, slot: int, owner: str) -> None:
    ring = seed_ring(S123)
    assert ring.slot_of(request_id) == slot
    assert ring.lookup(request_id) == owner


def test_requests_follow_probed_vnodes() -> None:
    four = seed_ring({**S123, "Server 4": 4})
    # slot 33 (id 100368, above) now holds Server 4's probed vnode j=0.
    assert four.lookup("100368") == "Server 4"
    # 100861 = 196*512 + 509, 509 = -3 (mod 512): H = -3 + 18 + 17 = 32 -> Server 4's j=1.
    assert four.slot_of("100861") == 32
    assert four.lookup("100861") == "Server 4"
    # 100699 = 196*512 + 347: H = 347 + 2*120409 + 17 = 241182 = 471*512 + 30 -> slot 30,
    # Server 2's vnode j=1 in {1,2,3}; Server 4's probed j=0 in {1,4}.
    assert seed_ring(S123).lookup("100699") == "Server 2"
    assert seed_ring({"Server 1": 1, "Server 4": 4}).lookup("100699") == "Server 4"


def test_candidates_walk_clockwise() -> None:
    ring = seed_ring(S123)
    # slot 27 (Server 2), then 28 (Server 3), then 29 (Server 1).
    assert list(ring.candidates("100354")) == ["Server 2", "Server 3", "Server 1"]
    # slot 177 wraps to 26 (Server 1), 27 (Server 2), 28 (Server 3).
    assert list(ring.candidates("100000")) == ["Server 1", "Server 2", "Server 3"]


def test_the_known_skew() -> None:
    # Server 1 owns every slot from 165 round to 26 (374 slots), slot 29, and the gaps
    # 32-36, 39-47, 50-62, 65-81, 84-104, 107-131, 134-162 (5+9+13+17+21+25+29 = 119):
    # 374 + 1 + 119 = 494 slots. Servers 2 and 3 own only their 9 vnode slots each.
    ring = seed_ring(S123)
    assert ring.shares() == {"Server 1": 494 / 512, "Server 2": 9 / 512, "Server 3": 9 / 512}
    rng = random.Random(2024)
    ids = [str(rng.randrange(100_000, 1_000_000)) for _ in range(10_000)]
    tally = Counter(map(ring.lookup, ids))
    assert tally["Server 1"] / len(ids) > 0.9
    assert set(tally) == set(S123)


def test_seed_alt_spreads_much_better() -> None:
    rng = random.Random(2024)
    ids = [str(rng.randrange(100_000, 1_000_000)) for _ in range(10_000)]
    for n in range(2, 7):
        ring = seed_alt_family().build({f"Server {i}": i for i in range(1, n + 1)})
        tally = Counter(map(ring.lookup, ids))
        assert max(tally.values()) / (len(ids) / n) < 1.3
        assert max(ring.shares().values()) * n < 1.3


def test_seed_alt_uses_its_own_phi() -> None:
    # Phi'(i, j) = 203*i + 59*j + 25 (mod 512): Server 1 at 228, 287, 346, 405, 464,
    # 523-512 = 11, 70, 129, 188 (no collisions for a lone replica).
    ring = seed_alt_family().build({"Server 1": 1})
    assert isinstance(ring, SeedRing)
    assert ring.placements["Server 1"] == (228, 287, 346, 405, 464, 11, 70, 129, 188)


def test_replacement_with_the_same_id_lands_on_the_same_slots() -> None:
    before = seed_ring({**S123, "Server 4": 4})
    after = seed_ring({"Server 4": 4, "Server 3": 3, "Server 1": 1, "S9-replacement": 2})
    assert after.placements["S9-replacement"] == before.placements["Server 2"]
    assert after.placements["Server 4"] == before.placements["Server 4"]


def test_capacity_raises_instead_of_hanging() -> None:
    family = make_family("seed")
    members: dict[str, int] = {}
    for i in range(1, 57):
        members[f"Server {i}"] = i
        family.build(members)  # 56 replicas (504 of 512 slots) still fit
    members["Server 57"] = 57
    with pytest.raises(RingFullError) as info:
        family.build(members)
    message = info.value.message
    assert "Server 57" in message
    assert "of 512 slots" in message
    assert "--hash" in message


def test_probing_can_fail_before_the_ring_is_full() -> None:
    # M = 8: p^2 mod 8 is 0, 1, 4 only. Phi(i, j) = i + 25 + ... with K = 1: replica i
    # wants slot (i + 25) % 8 = (i + 1) % 8. Ids 1, 5, 9: 2, then 6, then 10 % 8 = 2 taken
    # -> 3 free. Id 13 wants 6 (taken) -> 7. Id 17 wants 2 -> 3 -> 6 all taken: full,
    # with only 4 of 8 slots used.
    family = SeedFamily(slots=8, vnodes=1)
    with pytest.raises(RingFullError, match="4 of 8 slots"):
        family.build({f"r{i}": i for i in (1, 5, 9, 13, 17)})


def test_tiny_rings_fill_up_and_raise() -> None:
    family = SeedFamily(slots=16, vnodes=4)
    members: dict[str, int] = {}
    with pytest.raises(RingFullError):
        for i in range(1, 6):  # 5 * 4 > 16: must fail by the fifth at the latest
            members[f"r{i}"] = i
            family.build(members)


def test_duplicate_ring_ids_are_refused() -> None:
    with pytest.raises(ValueError, match="ring id 2"):
        make_family("seed").build({"a": 2, "b": 2})


def test_key_to_int() -> None:
    assert key_to_int("123456") == 123456
    assert key_to_int("007") == 7
    assert key_to_int("9" * 640) == int("9" * 640)
    # Not ASCII digits, or too long: xxh3_64 of the UTF-8 bytes, never an error.
    for key in (
        "",
        "12a",
        "-5",
        "\uff11\uff12\uff13",
        "9" * 641,
        "3fa85f64-5717-4562-b3fc-2c963f66afa6",
        "\ud800x",
    ):
        value = key_to_int(key)
        assert 0 <= value < 2**64
    assert key_to_int("12a") == key_to_int("12a")


def test_sizes_are_overridable() -> None:
    family = make_family("seed", slots=1024)
    assert isinstance(family, SeedFamily)
    assert (family.slots, family.vnodes) == (1024, 10)
    family = make_family("seed", slots=512, vnodes=4)
    ring = family.build(S123)
    assert isinstance(ring, SeedRing)
    assert ring.placements["Server 1"] == (26, 29, 36, 47)
    with pytest.raises(ValueError):
        make_family("seed", slots=0)
    with pytest.raises(ValueError):
        make_family("seed", vnodes=0)


def test_custom_polynomials() -> None:
    # H(i) = i, Phi(i, j) = 100*i + j: replica 1 at 100, 101; replica 2 at 200, 201.
    family = SeedFamily("custom", slots=512, vnodes=2, h=lambda i: i, phi=lambda i, j: 100 * i + j)
    ring = family.build({"a": 1, "b": 2})
    assert ring.lookup("150") == "b"
    assert ring.lookup("101") == "a"
    assert ring.lookup("300") == "a"  # wraps
