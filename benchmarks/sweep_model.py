"""How many threshold sweeps a row block needs before its output pass can fold: a CPU model.

The forward (kernels/forward.py) brackets each row's 1.5-entmax threshold tau between
the max sweep's floor and m - n^-1/2, narrows the bracket with threshold sweeps
(kernels/tau.py ``tau_update``: NBINS edges, with or without counts), and lets the output
pass finish tau once the estimate t is close enough (kernels/fold_output.py: d = tau - t
with d^2 C <= 2^-12 and |d| <= 2^-11 for bf16 outputs, C the entries above t). This model
replays that on float64 scores of a benchmark workload (workloads.py, one head, causal),
row blocks of 64 queries drawn as in tile_model.py, for a *plan*: the sweeps run before
the fold is tried, written ``u4`` (4 edges, no counts), ``c8`` (8 edges, counts) or ``g4``
(4 edges, G at every edge and the count taken from its chord, as the forward's sweep
before the fold: kernels/tau.py ``tau_update``, CHORD_COUNTS), comma-separated,
optionally led by ``low=0.15`` (the first sweep covers only the bottom 15% of the
bracket, as kernels/low_bracket.py does for dense blocks; a row whose tau lies above it
counts as reopened, and its block does not fold).

Per plan it prints the row blocks whose output pass can finish after the plan's sweeps
(every row converged or within the fold's bound), the rows that miss the bound, and the
blocks whose unconverged rows hold at most ``--list-slots`` entries each inside their last
bracket: those that could finish from per-row lists of the bracket's entries, as
kernels/candidates.py finishes dense blocks from the entries above their floors, the
entries above the bracket summed in the pass. The
floor is the histogram floor of kernels/histogram_floor.py over the tile maxima above
each row's local floor (tile_model.py ``local_floor``); the kernels' own floors are lower
bracket ends and a little lower. Cost per entry and edge (sm_90, triton 3.6 SASS of the
counted sweep): about 3 instructions without counts, 5.5 with, so ``u4,c4`` issues about
34 per entry and ``c16`` about 88; ``u4,g4`` about 24. Over 40 row blocks of mid at
N = 8192 and 32768, ``u4,g4`` folds every block, as ``u4,c4`` does (the largest |d| 3.1e-4
both, against the fold's 2^-11), where ``u4,g3`` folds 34 and 24 of the 40 and ``u3,g4`` 10
and 3 of 16.

    python benchmarks/sweep_model.py --workloads mid --n 8192 32768 --plans u4,g4 u4,c4 c8 c16
    python benchmarks/sweep_model.py --workloads dense --n 8192 --plans low=0.15,c4 low=0.15,c2
    python benchmarks/sweep_model.py --workloads mid --n 32768 --plans u4,c4 --blocks 12 --floor local
"""

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import tile_model  # noqa: E402
import workloads as wl  # noqa: E402

from adasplash_compile.options import TILE_M, TILE_N  # noqa: E402
from adasplash_compile.reference import solve_tau  # noqa: E402

# kernels/histogram_floor.py
HIST_BINS = 8
HIST_WIDTH = 0.25
# kernels/fold_output.py for bf16 outputs, and bf16's stopping width (kernels/tau.py)
FOLD_TOL = 2.0**-12
FOLD_MAX_STEP = 2.0**-11
TAU_TOL = 2.0 ** -15 * min(1.0, 8.0 * (tile_model.ALPHA - 1.0))


def histogram_floor(tile_row_max, floor, m):
    """Rows' floors raised by the Jensen bound of their binned tile maxima above the floor
    (kernels/histogram_floor.py), by bisection in float64. tile_row_max: (rows, tiles)."""
    height = tile_row_max - floor[:, None]
    above = height > 0
    bins = torch.clamp(torch.floor(height / HIST_WIDTH), max=HIST_BINS - 1)
    hit = above[:, :, None] & (bins[:, :, None] == torch.arange(HIST_BINS, dtype=height.dtype))
    count = hit.sum(1).to(height.dtype)
    total = torch.where(hit, height[:, :, None], 0.0).sum(1)
    mean = torch.where(count > 0, total / count.clamp_min(1.0), 0.0)
    lo = torch.zeros_like(floor)
    hi = m - floor
    for _ in range(40):
        mid = 0.5 * (lo + hi)
        f = (count * (mean - mid[:, None]).clamp_min(0.0) ** 2).sum(1)
        lo = torch.where(f > 1.0, mid, lo)
        hi = torch.where(f > 1.0, hi, mid)
    return floor + lo


def edge_statistics(y, edges):
    """F = sum g^2, G = sum g, C = #(g > 0) with g = [y - e]_+ per row and edge.
    y: (rows, keys) shifted scores, -inf where masked; edges: (rows, edges)."""
    gap = (y[:, None, :] - edges[:, :, None]).clamp_min(0.0)
    return (gap * gap).sum(2), gap.sum(2), (gap > 0).sum(2).to(y.dtype)


def _smaller_root(a, fa, ga, count):
    disc = ga * ga - count * fa
    return a + fa / (ga + disc.clamp_min(0.0).sqrt()).clamp_min(1e-30), disc >= 0


def update_bracket(lo, hi, stat_f, stat_g, stat_c, kind):
    """kernels/tau.py ``tau_update`` for alpha = 1.5 on float64 rows: (lo, hi, estimate, done).
    kind: the sweep's statistics, "u" (no counts), "c" (counts) or "g" (the count from the
    chord of G, CHORD_COUNTS)."""
    edges = stat_f.shape[1]
    cols = torch.arange(edges)
    j_lo = torch.where(stat_f >= 1.0, cols, 0).amax(1)
    at_top = j_lo == edges - 1
    j_hi = (j_lo + 1).clamp(max=edges - 1)

    def pick(stat, j):
        return stat.gather(1, j[:, None])[:, 0]

    fa, fb = pick(stat_f, j_lo) - 1.0, pick(stat_f, j_hi) - 1.0
    ga, gb, ca, cb = pick(stat_g, j_lo), pick(stat_g, j_hi), pick(stat_c, j_lo), pick(stat_c, j_hi)
    a = lo + (hi - lo) * j_lo / (edges - 1)
    b = torch.where(at_top, hi, lo + (hi - lo) * j_hi / (edges - 1))
    newton = a + fa / (2.0 * ga).clamp_min(1e-30)
    secant = a + (b - a) * (fa / (fa - fb).clamp_min(1e-30))
    new_lo = torch.minimum(torch.maximum(newton, a), b)
    new_hi = torch.minimum(secant, b)
    if kind in ("c", "g"):
        # A lower bound on C_b, the count above b: C_b, or floor(G_b^2 / F_b) without counts.
        count_floor = cb if kind == "c" else torch.where(
            fb > -1.0, (gb * gb / (fb + 1.0).clamp_min(1e-30)).floor(), 0.0)
        quadratic, quadratic_real = _smaller_root(a, fa, ga, count_floor)
        new_lo = torch.where(quadratic_real, torch.minimum(torch.maximum(new_lo, quadratic), b), new_lo)
    if kind == "c":
        closed, closed_real = _smaller_root(a, fa, ga, ca)
        new_hi = torch.where(closed_real, torch.minimum(new_hi, closed), new_hi)
        exact = ca == cb
    elif kind == "g":
        chord, chord_real = _smaller_root(a, fa, ga, (ga - gb) / (b - a).clamp_min(1e-30))
        closed, exact = torch.where(chord_real, chord, newton), torch.zeros_like(at_top)
    else:
        closed, exact = newton, torch.zeros_like(at_top)
    new_hi = torch.maximum(new_hi, new_lo)
    estimate = torch.minimum(torch.maximum(closed, new_lo), new_hi)
    if kind == "c":
        estimate = torch.where(exact, torch.minimum(torch.maximum(closed, a), b), estimate)
    estimate = torch.where(at_top, hi, estimate)
    done = at_top | exact | (fa <= 0.0) | (new_hi - new_lo <= TAU_TOL)
    return new_lo, new_hi, estimate, done


def parse_plan(text: str):
    """'low=0.15,u4,g4' -> (0.15, [(4, "u"), (4, "g")]); low is None when absent."""
    low, sweeps = None, []
    for part in text.split(","):
        if part.startswith("low="):
            low = float(part[4:])
        elif part[:1] in ("u", "c", "g") and part[1:].isdigit() and int(part[1:]) >= 2:
            sweeps.append((int(part[1:]), part[0]))
        else:
            raise ValueError(f"plan: expected low=F, uK, cK or gK (K >= 2 edges), got {part!r} in {text!r}")
    if not sweeps:
        raise ValueError(f"plan: expected at least one sweep, got {text!r}")
    return low, sweeps


FLOORS = ("histogram", "local")


def block_rows(query, key, block, scale, floor_kind="histogram"):
    """(shifted scores y, shifted tau, shifted floor, hi) of one row block's rows; the floor
    of the two local tiles, raised by the histogram unless floor_kind is "local"."""
    n_tiles = block + 1
    z = tile_model.block_scores(query, key, block, scale)
    m = z.amax(1)
    y = z - m[:, None]
    tau = solve_tau(y, tile_model.ALPHA)[:, 0]
    tile_row_max = y.view(TILE_M, n_tiles, TILE_N).amax(2)
    floor = tile_model.local_floor(y, block)
    if floor_kind == "histogram":
        floor = histogram_floor(tile_row_max, floor, torch.zeros_like(m))
    n_keys = (torch.arange(TILE_M) + block * TILE_M + 1).to(y.dtype)
    return y, tau, floor.clamp_min(-1.0), -n_keys.rsqrt()


def run_plan(y, tau, lo, hi, low, sweeps):
    """(block folds, rows that miss the fold's bound, rows reopened, most entries inside an
    unconverged row's last bracket) for one block's rows."""
    active = torch.ones_like(lo, dtype=torch.bool)
    estimate = hi.clone()
    reopened = torch.zeros_like(active)
    top = hi if low is None else lo + low * (hi - lo)
    full_hi, hi = hi, top
    for index, (edges, kind) in enumerate(sweeps):
        points = lo[:, None] + (hi - lo)[:, None] * torch.arange(edges, dtype=y.dtype) / (edges - 1)
        new_lo, new_hi, new_estimate, done = update_bracket(lo, hi, *edge_statistics(y, points), kind)
        if index == 0:
            # kernels/low_bracket.py reopen_above: tau lies above the low bracket.
            reopened = active & (new_lo >= top) & (top < full_hi)
        lo = torch.where(active, new_lo, lo)
        hi = torch.where(active, new_hi, hi)
        estimate = torch.where(active, new_estimate, estimate)
        active = active & ~done
    step = tau - estimate
    count = (y > estimate[:, None]).sum(1).to(y.dtype)
    misses = active & ~((step * step * count <= FOLD_TOL) & (step.abs() <= FOLD_MAX_STEP))
    folds = not bool(reopened.any()) and not bool(misses.any())
    inside = ((y > lo[:, None]) & (y <= hi[:, None])).sum(1)
    band = int(torch.where(active, inside, 0).max())
    return folds, int(misses.sum()), int(reopened.sum()), band


def plan_outcomes(workload: str, n: int, plans, blocks: int, seed: int = 0, list_slots: int = 128,
                  floor_kind: str = "histogram") -> dict:
    """{plan text: (blocks folding, blocks, rows missing the bound, rows reopened, blocks
    whose unconverged rows each hold at most list_slots entries inside their last bracket)}."""
    parsed = {plan: parse_plan(plan) for plan in plans}
    query, key, scale = tile_model.head_inputs(workload, n)
    outcomes = {plan: [0, 0, 0, 0, 0] for plan in plans}
    for block in tile_model.sample_blocks(n, blocks, seed):
        y, tau, floor, hi = block_rows(query, key, block, scale, floor_kind)
        for plan, (low, sweeps) in parsed.items():
            folds, misses, reopened, band = run_plan(y, tau, floor, hi, low, sweeps)
            total = outcomes[plan]
            total[0] += int(folds)
            total[1] += 1
            total[2] += misses
            total[3] += reopened
            total[4] += int(band <= list_slots)
    return {plan: tuple(total) for plan, total in outcomes.items()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workloads", nargs="+", choices=wl.WORKLOADS, default=["mid"])
    parser.add_argument("--n", type=int, nargs="+", default=[8192, 32768])
    parser.add_argument("--plans", nargs="+", default=["u4,g4", "u4,c4", "c8", "c16"])
    parser.add_argument("--blocks", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--list-slots", type=int, default=128)
    parser.add_argument("--floor", choices=FLOORS, default="histogram",
                        help="local: the floor of the two local tiles alone, without the histogram's lift")
    args = parser.parse_args(argv)
    print("| workload | N | plan | blocks folding | rows missing the bound | rows reopened "
          f"| blocks whose brackets fit {args.list_slots} slots |")
    print("|---|---|---|---|---|---|---|")
    for workload in args.workloads:
        for n in args.n:
            outcomes = plan_outcomes(workload, n, args.plans, args.blocks, args.seed, args.list_slots, args.floor)
            for plan, (folds, total, misses, reopened, fitting) in outcomes.items():
                print(f"| {workload} | {n} | `{plan}` | {folds}/{total} | {misses} | {reopened} | {fitting}/{total} |",
                      flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
