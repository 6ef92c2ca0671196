"""The assignment's ring variants, bit-exact: SPEC's pair and the 2024 text's pair, each with
quadratic (SPEC) or linear probing, against slots computed by hand.

Arithmetic (M = 512, K = 9, ring ids 1..4 placed in ascending order, each replica's virtual
nodes in j order; a virtual node probes from Phi(i, j) past slots already taken):

seed (SPEC): Phi(i, j) = i + j + 2j^2 + 25; j-part 25 28 35 46 61 80 103 130 161
    Server 1: 26 29 36 47 62 81 104 131 162
    Server 2: 27 30 37 48 63 82 105 132 163
    Server 3: 28 31 38 49 64 83 106 133 164
    Server 4, j=0 wants 29 (Server 1) -> +1 = 30 (Server 2)
        quadratic: +4 = 33 free                 -> 33; j=1 wants 32, free -> 32
        linear:    +2 = 31 (Server 3), +3 = 32 -> 32; j=1 wants 32 (own j=0), 33 -> 33
    j=2..8: 39 50 65 84 107 134 165, all free.

seed-2024: Phi(i, j) = i^2 + j^2 + 2j + 25; j-part j^2 + 2j = 0 3 8 15 24 35 48 63 80
    Server 1 (i^2 + 25 = 26): 26 29 34 41 50 61 74 89 106
    Server 2 (29): j=0 wants 29 (Server 1) -> 30;   32 37 44 53 64 77 92 109
    Server 3 (34): j=0 wants 34 (Server 1) -> 35;   j=1 wants 37 (Server 2) -> 38;
                   42 49 58 69 82 97 114
    Server 4 (41), quadratic (+1, +4, +9, +16):
        j=0: 41 (S1), 42 (S3), 45 free                         -> 45
        j=1: 44 (S2), 45 (own j=0), 48 free                    -> 48
        j=2: 49 (S3), 50 (S1), 53 (S2), 58 (S3), 65 free       -> 65
        j=3: 56 free; j=4: 65 (own j=2), 66 free -> 66; j=5: 76; j=6: 89 (S1) -> 90;
        j=7: 104; j=8: 121
    Server 4, linear (+1, +2, +3, ...):
        j=0: 41 (S1), 42 (S3), 43 free -> 43;  j=1: 44 (S2), 45 free -> 45
        j=2: 49 (S3), 50 (S1), 51 free -> 51;  j=3: 56;  j=4: 65 free -> 65;  j=5: 76;
        j=6: 89 (S1) -> 90;  j=7: 104;  j=8: 121

seed-2024's H(i) = i^2 + 2i + 17 (mod 512):
    4 -> 41, 5 -> 52, 6 -> 65, 123456 (= 241*512 + 64) -> 64^2 + 128 + 17 = 4241 -> 145.
"""

from __future__ import annotations

import pytest

from lbproxy.cli import build_parser, config_from_args
from lbproxy.errors import RingFullError
from lbproxy.ring import FAMILY_NAMES, make_family
from lbproxy.ring.seed import SeedFamily, SeedRing, y2024_h

pytestmark = pytest.mark.unit

S1234 = {f"Server {i}": i for i in range(1, 5)}
SPEC_123 = {
    "Server 1": (26, 29, 36, 47, 62, 81, 104, 131, 162),
    "Server 2": (27, 30, 37, 48, 63, 82, 105, 132, 163),
    "Server 3": (28, 31, 38, 49, 64, 83, 106, 133, 164),
}
Y2024_123 = {
    "Server 1": (26, 29, 34, 41, 50, 61, 74, 89, 106),
    "Server 2": (30, 32, 37, 44, 53, 64, 77, 92, 109),
    "Server 3": (35, 38, 42, 49, 58, 69, 82, 97, 114),
}
EXPECTED = {
    ("seed", "quadratic"): {**SPEC_123, "Server 4": (33, 32, 39, 50, 65, 84, 107, 134, 165)},
    ("seed", "linear"): {**SPEC_123, "Server 4": (32, 33, 39, 50, 65, 84, 107, 134, 165)},
    ("seed-2024", "quadratic"): {
        **Y2024_123,
        "Server 4": (45, 48, 65, 56, 66, 76, 90, 104, 121),
    },
    ("seed-2024", "linear"): {
        **Y2024_123,
        "Server 4": (43, 45, 51, 56, 65, 76, 90, 104, 121),
    },
}


def ring(family: str, probe: str, members: dict[str, int] = S1234) -> SeedRing:
    built = make_family(family, probe=probe).build(members)
    assert isinstance(built, SeedRing)
    return built


@pytest.mark.parametrize(("family", "probe"), sorted(EXPECTED))
def test_placements_match_the_hand_computed_slots(family: str, probe: str) -> None:
    assert ring(family, probe).placements == EXPECTED[(family, probe)]


def test_seed_2024_is_a_listed_family_and_quadratic_is_the_default() -> None:
    assert "seed-2024" in FAMILY_NAMES
    family = make_family("seed-2024")
    assert isinstance(family, SeedFamily)
    assert (family.slots, family.vnodes, family.probe) == (512, 9, "quadratic")


@pytest.mark.parametrize(
    ("request_id", "slot", "owner"),
    [
        ("4", 41, "Server 1"),  # a virtual node sits on slot 41 itself (Server 1, j=3)
        ("5", 52, "Server 2"),  # next clockwise: 53 (Server 2, j=4)
        ("6", 65, "Server 4"),  # 65: Server 4 (j=2 quadratic, j=4 linear)
        ("123456", 145, "Server 1"),  # past the last virtual node (121): wraps to 26
    ],
)
@pytest.mark.parametrize("probe", ["quadratic", "linear"])
def test_seed_2024_requests_land_on_hand_computed_slots(
    request_id: str, slot: int, owner: str, probe: str
) -> None:
    built = ring("seed-2024", probe)
    assert built.slot_of(request_id) == slot
    assert built.lookup(request_id) == owner


def test_seed_2024_request_hash_reaches_only_87_slots() -> None:
    # H(i) = (i + 1)^2 + 16: the 87 squares mod 512, shifted by 16.
    assert y2024_h(3) == 9 + 6 + 17
    assert len({y2024_h(i) % 512 for i in range(512)}) == 87


@pytest.mark.parametrize(
    ("family", "probe", "first_failing"),
    [
        # Linear probing reaches every slot: it fails only when 512 slots cannot hold
        # another 9 virtual nodes (56 * 9 = 504; 57 * 9 = 513).
        ("seed", "linear", 57),
        ("seed-2024", "linear", 57),
        ("seed", "quadratic", 57),
        # Quadratic probing reaches 87 offsets; seed-2024's clustered Phi runs out sooner.
        ("seed-2024", "quadratic", 40),
    ],
)
def test_capacity_per_variant(family: str, probe: str, first_failing: int) -> None:
    fam = make_family(family, probe=probe)
    fam.build({f"S{i}": i for i in range(1, first_failing)})
    with pytest.raises(RingFullError, match=f"{probe} probing"):
        fam.build({f"S{i}": i for i in range(1, first_failing + 1)})


def test_bad_probe_is_refused() -> None:
    with pytest.raises(ValueError, match="probe must be 'quadratic' or 'linear'"):
        make_family("seed", probe="cubic")


def test_cli_selects_family_and_probe() -> None:
    args = build_parser().parse_args(["serve", "--hash", "seed-2024", "--probe", "linear"])
    config = config_from_args(args)
    assert (config.hash, config.probe) == ("seed-2024", "linear")
    assert config_from_args(build_parser().parse_args(["serve"])).probe == "quadratic"
