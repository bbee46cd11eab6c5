"""A lower bound on each row's threshold from a histogram of its tile maxima.

The max sweep (kernels/forward.py) computes, per visited 64-key tile and row, the row's
largest z in the tile. Those values are entries of the row, one per tile, so the
threshold of that sub-multiset is at most the row's threshold (the objective
sum_j [z_j - t]_+^INV - 1 of a subset is pointwise smaller). Where the largest entries
of a row lie in different tiles, as on dense scores, that threshold is close to the
row's: a CPU simulation of Gaussian rows (D = 128, 1.5-entmax, rows of 4k to 32k keys)
finds at most 59 entries above it where the support holds up to 56, against 540 to
2200 (median) above the floor of the row's two local tiles.

The sweep cannot keep the values, so it keeps HIST_BINS bins of width HIST_WIDTH above
the floor it already has, each with the count and the sum of its values (the last bin is
open above). Jensen's inequality turns the bins into a bound: x -> [x - t]_+^INV is convex
for alpha <= 2, so sum over a bin of [x - t]_+^INV >= count * [mean - t]_+^INV, and the
root of sum_bins count * [mean - t]_+^INV = 1 lies at or below the sub-multiset's
threshold. Eight bins a quarter wide gave at most 65 entries above the bound in the same
simulation (bins' lower edges instead of means: 97 to 125).

The attention forward's threshold sweeps start from the floor, so on dense scores the
first sweep's bracket holds TAU within its lowest 3-6% and the row blocks finish in two
sweeps instead of three (CPU simulation, 8 row blocks each of the benchmark's dense
workload at N = 8192 and 32768): on the H100 the forward took 19-22% less time there.
The bins live in registers of the max sweep, which with pointer loads stays within 128
(sm_90, triton 3.6), so four programs still share an SM (through descriptors at three
stages it takes 134, and its shared memory allows three); where the mass is local (the
mid and high workloads) the floor of the two local tiles is nearly as tight, and the
bins cost 0.5-3% of the forward, except at mid N = 32768: there, binning only in row
blocks that list 3/4 of their tiles made the forward 14% slower (H200, same process,
benchmarks/results/h200-2026-11-28-descending.md; from the local floor alone 3 of 12
blocks of a CPU simulation miss the fold after two sweeps). Four bins of width 0.5
(half the registers) gave back 0.2-0.5% there but lost the whole dense gain: with the
bins' lower edges instead of their means, or with four bins, the dense row blocks of a
CPU simulation need three sweeps again instead of two.
"""

import triton
import triton.language as tl

from adasplash_compile.kernels.tau import entmax_power

HIST_BINS: tl.constexpr = tl.constexpr(8)
HIST_WIDTH: tl.constexpr = tl.constexpr(0.25)
# Halvings of [floor, m] in the root search; the bound keeps the lower end, so fewer only
# loosen it, here by at most 2^-12 of m - floor <= 1 (floor >= m - 1). Each halving sums
# (rows, HIST_BINS) terms: at 20 the search took 14% of the max sweep's instructions per row
# block at mid N = 32768 (sm_90 SASS, triton 3.6: 343 a halving). At 12, with the max
# sweep's fill of -inf bounds dropped too, the max sweep took 2.3-7.2% less time (dense
# 32768: +0.9%), the forward up to 2.6% (H200,
# benchmarks/results/h200-2026-11-28-descending.md).
HIST_BISECTIONS: tl.constexpr = tl.constexpr(12)
# Absorbs the float32 rounding of the bins' sums (shifted units, sums of up to a few
# thousand values of at most a few units).
HIST_SLACK: tl.constexpr = tl.constexpr(1e-4)


@triton.jit
def histogram_add(count, total, tile_row_max, floor):
    """Add one tile's row maxima (ROWS,) above floor (ROWS,) to the bins.

    count, total: (ROWS, HIST_BINS) float32, per bin the number of values and the sum of
    their heights above floor. Values at or below floor, and rows with floor = -inf or
    no value (-inf - -inf is NaN, every comparison false), add nothing.
    """
    height = tile_row_max - floor
    above = (height > 0.0) & (floor > float("-inf"))
    bin_index = tl.minimum(tl.floor(height * (1.0 / HIST_WIDTH)), HIST_BINS - 1)
    hit = (tl.arange(0, HIST_BINS)[None, :].to(tl.float32) == bin_index[:, None]) & above[:, None]
    count += hit.to(tl.float32)
    total += tl.where(hit, height[:, None], 0.0)
    return count, total


@triton.jit
def histogram_floor(count, total, floor, m, inv, ALPHA_MODE: tl.constexpr):
    """max(floor, the bins' lower bound on the threshold) per row (see the module docstring).

    m: the rows' max z (>= every binned value). Rows with no binned value keep floor.
    """
    mean = tl.where(count > 0.0, total / tl.maximum(count, 1.0), 0.0)
    # Search t (height above floor) in [0, m - floor]; lo moves only where f > 1, so it
    # stays at or below the root, and a row whose bins sum to at most 1 at t = 0 keeps
    # lo = 0 and its floor.
    lo = tl.zeros_like(floor)
    hi = tl.where(floor > float("-inf"), m - floor, 0.0)
    for _ in range(HIST_BISECTIONS):
        mid = 0.5 * (lo + hi)
        f = tl.sum(count * entmax_power(tl.maximum(mean - mid[:, None], 0.0), inv, ALPHA_MODE), 1)
        lo = tl.where(f > 1.0, mid, lo)
        hi = tl.where(f > 1.0, hi, mid)
    bound = floor + lo - HIST_SLACK
    return tl.where(bound > floor, bound, floor)
