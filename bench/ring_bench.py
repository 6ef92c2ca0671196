"""Measure every ring family: balance, churn, build time, lookup time.

Run from the repository root::

    python bench/ring_bench.py            # the figures in docs/ring.md
    python bench/ring_bench.py --seed 7   # another sample of request ids

Keys are random 6-digit request ids (as in the assignment) from ``random.Random(seed)``;
replicas are named "Server 1", "Server 2", ... with ring ids 1, 2, ... unless stated. Output
is Markdown tables. "ideal" is a uniformly random assignment of the same number of keys.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lbproxy.errors import RingFullError
from lbproxy.ring import FAMILY_NAMES, Ring, make_family

Members = dict[str, int]


def servers(n: int) -> Members:
    return {f"Server {i}": i for i in range(1, n + 1)}


def random_names(n: int, rng: random.Random) -> Members:
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789-"
    return {"".join(rng.choice(alphabet) for _ in range(12)): i for i in range(1, n + 1)}


def request_ids(count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [str(rng.randrange(100_000, 1_000_000)) for _ in range(count)]


def build(family: str, members: Members) -> Ring | None:
    try:
        return make_family(family).build(members)
    except RingFullError:
        return None


def counts(ring: Ring, keys: Sequence[str]) -> list[int]:
    tally = Counter(map(ring.lookup, keys))
    return [tally[name] for name in ring.names]


def ideal_counts(n: int, keys: int, seed: int) -> list[int]:
    rng = random.Random(seed ^ 0x5EED)
    tally = Counter(rng.randrange(n) for _ in range(keys))
    return [tally[i] for i in range(n)]


def max_mean(values: Sequence[float]) -> float:
    return max(values) / (sum(values) / len(values))


def cv(values: Sequence[float]) -> float:
    return statistics.pstdev(values) / (sum(values) / len(values))


def fmt(x: float) -> str:
    return format(x, ".3f")


def keys_mm(ring: Ring | None, keys: Sequence[str]) -> str:
    return "full" if ring is None else fmt(max_mean(counts(ring, keys)))


def shares_mm(ring: Ring | None) -> str:
    return "full" if ring is None else fmt(max_mean(list(ring.shares().values())))


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print()


def best_time(fn: Callable[[], object], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def section_balance(families: Sequence[str], keys: list[str], seed: int) -> None:
    print(f"### Balance: max/mean requests per replica, {len(keys)} random 6-digit ids\n")
    print("`keys` columns count requests; `shares` is the exact key-space fraction from")
    print("`Ring.shares()` (rendezvous reports its expected 1/N there).\n")
    rng = random.Random(seed)
    named = random_names(3, rng)
    header = ["family", "N=3 keys", "N=3 shares", "N=3 random names"]
    header += [f"N={n}" for n in range(2, 7)]
    rows = []
    for family in families:
        ring = build(family, servers(3))
        other = build(family, named)
        row = [family, keys_mm(ring, keys), shares_mm(ring), keys_mm(other, keys)]
        row += [keys_mm(build(family, servers(n)), keys) for n in range(2, 7)]
        rows.append(row)
    row = ["ideal", fmt(max_mean(ideal_counts(3, len(keys), seed))), "1.000", "-"]
    row += [fmt(max_mean(ideal_counts(n, len(keys), seed))) for n in range(2, 7)]
    rows.append(row)
    table(header, rows)


def section_noise(families: Sequence[str], count: int, samples: int) -> None:
    print(f"### Sampling noise at N=3: max/mean over {samples} samples of {count} ids\n")
    print("The same three replicas, a fresh set of random 6-digit ids per sample (seeds")
    print(f"0..{samples - 1}); `<= 1.03` is the fraction of samples meeting the target.\n")
    id_sets = [request_ids(count, seed) for seed in range(samples)]
    header = ["family", "mean", "p95", "worst", "<= 1.03"]
    rows = []

    def row(name: str, values: list[float]) -> list[str]:
        ordered = sorted(values)
        p95 = ordered[min(len(ordered) - 1, round(0.95 * len(ordered)))]
        share = sum(v <= 1.03 for v in values) / len(values)
        return [name, fmt(statistics.mean(values)), fmt(p95), fmt(ordered[-1]), f"{share:.0%}"]

    for family in families:
        ring = build(family, servers(3))
        if ring is not None:
            rows.append(row(family, [max_mean(counts(ring, ids)) for ids in id_sets]))
    rows.append(row("ideal", [max_mean(ideal_counts(3, count, s)) for s in range(samples)]))
    table(header, rows)


def section_spread(families: Sequence[str], keys: list[str], seed: int) -> None:
    print(f"### Spread at large N ({len(keys)} ids): max/mean and std/mean of per-replica counts\n")
    header = ["family"]
    for n in (100, 1000):
        header += [f"N={n} max/mean", f"N={n} std/mean", f"N={n} shares max/mean"]
    rows = []
    for family in families:
        row = [family]
        for n in (100, 1000):
            ring = build(family, servers(n))
            if ring is None:
                row += ["full", "full", "full"]
                continue
            c = counts(ring, keys)
            row += [fmt(max_mean(c)), fmt(cv(c)), fmt(max_mean(list(ring.shares().values())))]
        rows.append(row)
    row = ["ideal"]
    for n in (100, 1000):
        c = ideal_counts(n, len(keys), seed)
        row += [fmt(max_mean(c)), fmt(cv(c)), "1.000"]
    rows.append(row)
    table(header, rows)


def moved(before: Ring, after: Ring, keys: Sequence[str], changed: str) -> tuple[float, float]:
    """(fraction of keys that changed replica, fraction that moved between other replicas)."""
    move = stray = 0
    for key in keys:
        a, b = before.lookup(key), after.lookup(key)
        if a != b:
            move += 1
            if changed not in (a, b):
                stray += 1
    return move / len(keys), stray / len(keys)


def section_churn(families: Sequence[str], keys: list[str]) -> None:
    print(f"### Churn: keys moved when one replica joins or leaves ({len(keys)} ids)\n")
    print("N is the size of the larger ring: add = N-1 -> N (adds `Server N`), remove =")
    print("N -> N-1 (removes `Server 2`). Ideal is 1/N; `stray` = keys that moved between")
    print("two replicas that both stayed. Bound for the default: 1/N + 0.5%.\n")
    header = ["family"]
    for n in (4, 100):
        header += [f"N={n} add", f"N={n} remove", f"N={n} stray add/rm"]
    rows = []
    for family in families:
        row = [family]
        for n in (4, 100):
            big = build(family, servers(n))
            small_add = build(family, servers(n - 1))
            small_rm = build(family, {k: v for k, v in servers(n).items() if k != "Server 2"})
            if big is None or small_add is None or small_rm is None:
                row += ["full", "full", "full"]
                continue
            add, add_stray = moved(small_add, big, keys, f"Server {n}")
            rm, rm_stray = moved(big, small_rm, keys, "Server 2")
            row += [f"{add:.2%}", f"{rm:.2%}", f"{add_stray:.2%} / {rm_stray:.2%}"]
        rows.append(row)
    rows.append(["ideal", "25.00%", "25.00%", "0 / 0", "1.00%", "1.00%", "0 / 0"])
    table(header, rows)


def section_speed(families: Sequence[str], keys: list[str]) -> None:
    print("### Speed: build time (best of 3) and lookup time (ns per lookup, best of 7)\n")
    sizes = (3, 100, 1000)
    header = ["family"] + [f"build N={n}" for n in sizes] + [f"lookup N={n}" for n in sizes]
    rows = []
    for family in families:
        builds, lookups = [], []
        for n in sizes:
            members = servers(n)
            fam = make_family(family)
            try:
                seconds = best_time(lambda fam=fam, m=members: fam.build(m), 3)  # type: ignore[misc]
            except RingFullError:
                builds.append("full")
                lookups.append("full")
                continue
            builds.append(f"{seconds * 1000:.1f} ms")
            ring = fam.build(members)
            sample = keys[:1000] if family == "rendezvous" and n >= 100 else keys
            lookup = ring.lookup

            def run(lookup: Callable[[str], str] = lookup, sample: list[str] = sample) -> None:
                for key in sample:
                    lookup(key)

            lookups.append(f"{best_time(run, 7) / len(sample) * 1e9:.0f} ns")
        rows.append([family, *builds, *lookups])
    table(header, rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=2024, help="random seed (default 2024)")
    parser.add_argument("--keys", type=int, default=10_000, help="request ids (default 10000)")
    parser.add_argument(
        "--churn-keys", type=int, default=100_000, help="ids for the churn table (100000)"
    )
    parser.add_argument("--samples", type=int, default=100, help="noise samples (100)")
    parser.add_argument("--family", action="append", choices=FAMILY_NAMES, help="repeatable")
    args = parser.parse_args()
    families = args.family or list(FAMILY_NAMES)
    keys = request_ids(args.keys, args.seed)
    print(
        f"<!-- python bench/ring_bench.py --seed {args.seed} --keys {args.keys}"
        f" --churn-keys {args.churn_keys}; Python {sys.version.split()[0]} -->\n"
    )
    section_balance(families, keys, args.seed)
    section_noise(families, args.keys, args.samples)
    section_spread(families, keys, args.seed)
    section_churn(families, request_ids(args.churn_keys, args.seed + 1))
    section_speed(families, keys)


if __name__ == "__main__":
    main()
