"""Fixed histogram bins for gateway latency (ms) and time to validate (s), and percentiles read from them.

The dashboards keep latency and time-to-validate as counts per bin in their rollup tables, so a percentile
over millions of rows sums a few thousand rollup rows instead of sorting the raw values. The bins are
geometric: 40 per decade, edges 10^(i/40) rounded to three significant digits (1, 1.06, 1.12, ... 100000),
so each bin is about 6% wide. A value v falls in bin i when EDGES[i-1] < v <= EDGES[i]; bin 0 holds
everything up to 1 and the last bin everything above 100000. Latency is binned in milliseconds
(1 ms to 100 s), time to validate in seconds (1 s to about 28 hours).

A percentile is nearest-rank (the value at rank ceil(p * n)), reported as the upper edge of the bin that
holds that rank: never below the exact value, and at most one bin width (about 6%) above it. Above the last
edge the upper bound is the largest value seen, which the rollups keep beside the counts.
"""
from __future__ import annotations

from bisect import bisect_left
from typing import Sequence

PER_DECADE = 40
DECADES = 5


def _edge(i: int) -> float:
    return float(f"{10 ** (i / PER_DECADE):.3g}")


EDGES: tuple[float, ...] = tuple(_edge(i) for i in range(PER_DECADE * DECADES + 1))
# The same edges in whole microseconds, for time to validate, which is compared exactly in µs.
EDGES_US: tuple[int, ...] = tuple(round(e * 1_000_000) for e in EDGES)
BINS = len(EDGES) + 1  # bin 0 (<= 1), one per edge interval, and the overflow bin (> 100000)
OVERFLOW = BINS - 1


def bin_of(value: float) -> int:
    """The bin holding value: i with EDGES[i-1] < value <= EDGES[i]."""
    return bisect_left(EDGES, value)


def bin_of_micros(micros: int) -> int:
    """The bin holding a duration given in whole microseconds (time to validate), compared exactly."""
    return bisect_left(EDGES_US, micros)


def upper_edge(index: int, largest: float | None) -> float | None:
    """What a percentile falling in bin index is reported as."""
    return EDGES[index] if index < OVERFLOW else largest


def percentile(counts: Sequence[int], p: int, largest: float | None = None) -> float | None:
    """Nearest-rank percentile p of the values counted per bin, as the upper edge of its bin."""
    n = sum(counts)
    if n == 0:
        return None
    rank = (n * p + 99) // 100
    seen = 0
    for index, count in enumerate(counts):
        seen += count
        if seen >= rank:
            return upper_edge(index, largest)
    raise AssertionError("unreachable: the ranks add up to n")
