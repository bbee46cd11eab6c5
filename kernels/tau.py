"""Exact alpha-entmax threshold: @triton.jit helpers shared by forward.py and entmax.py.

Glossary
  z        (alpha-1) * score, float32; masked entries are -inf
  m        row max of z;  y = z - m <= 0 are the *shifted* scores. All bracket
           arithmetic happens in shifted coordinates, where the bracket lies in
           [-1, 0] and float32 keeps ~1e-7 absolute precision whatever |m| is.
  n        number of visible (finite) entries of the row
  ALPHA    entmax alpha in (1, 2];  INV = 1 / (alpha - 1) is the exponent of p
  f(t)     sum_j [y_j - t]_+^INV - 1: convex and decreasing in t. Its root tau'
           is the shifted threshold, tau = m + tau' (Peters et al. 2019, eq. 6).
  lo, hi   bracket on tau', f(lo) >= 0 >= f(hi). It starts at [-1, -n^(1-alpha)]:
           max p <= 1 gives tau' >= -1 and max p >= 1/n gives tau' <= -n^(1-alpha).
  NBINS    evaluation points ("edges") per sweep: e_j = lo + (hi-lo) * j/(NBINS-1),
           j = 0 .. NBINS-1, both bracket ends included.
  F, G, C  (ROWS, NBINS) tail statistics of each edge over the entries y > e_j,
           g = y - e_j:  F = sum g^INV = f(e_j) + 1,  G = sum g^(INV-1) so that
           f'(e_j) = -INV * G,  C = count (int32). alpha = 2: F = sum g, G = C;
           alpha = 1.5: F = sum g^2, G = sum g. Sweeps accumulate them unscaled
           (sums of h = g / 2, ``half_tail_gap``); ``tau_update`` scales them.
  ALPHA_MODE  constexpr: ALPHA_GENERAL (exp2/log2 powers), ALPHA_ONE_HALF (1.5:
           squares, closed-form root), ALPHA_SPARSEMAX (2: identity, closed form).

One *sweep* streams every (non-skipped) entry of the row once and calls
``tau_accumulate`` (or ``tau_accumulate_lanes``) per tile, on shifted scores y or on raw
scores z with the row max as ``base`` (edges at base + e_j); ``tau_update`` then shrinks
the bracket:

1. Pick the sub-interval [a, b] = [e_j, e_{j+1}] with F_j >= 1 > F_{j+1}.
2. Tighten it with bounds that hold for every convex decreasing f:
   Newton from a (the tangent lies below f) is a lower bound, and the secant
   through a and b (the chord lies above f) is an upper bound.
3. alpha in {1.5, 2}: on [a, b] with no entry strictly inside (C_a == C_b),
   f is exactly the polynomial given by a's statistics, so its root is exact:
   alpha = 2: t = (F-1) / C;  alpha = 1.5: smaller root of
   C t^2 - 2 G t + (F-1) = 0, t = (F-1) / (G + sqrt(G^2 - C (F-1))) (no
   cancellation). The alpha = 1.5 root is also an upper bound whenever real
   (the polynomial dominates f to the right of a), alpha = 2's equals Newton.
   For alpha = 1.5, f'' = 2 * (count above t) >= 2 C_b on [a, b], so the root of
   C_b t^2 - 2 G t + (F-1) is a lower bound, tighter than Newton's (C_b = 0); the
   two quadratics pinch tau' to within tau_tol long before the count is exact (CPU
   simulation of 12 row blocks each of the benchmark's mid, dense and high workloads
   at N = 8192 and 32768, bf16's tau_tol: none needs a fourth sweep, where 0 to 10
   of the 12 did with Newton).
   A sweep that took no counts (COUNTS False, alpha = 1.5: the attention forward's
   first) skips this step.
4. A row is done when it is exact, or when hi - lo <= tau_tol (any alpha; the
   only stopping rule for general alpha). The attention forward takes tau_tol from
   ``tau_tolerance``: tight for float32 outputs, looser for 16-bit ones.

The estimate after the last sweep is the closed form (alpha in {1.5, 2}) or
the Newton lower bound (general alpha), clamped into the final bracket. With
NBINS = 8, simulated on Gaussian scores for alpha in [1.01, 2] and rows of up
to 16k entries, every row converges within 4 sweeps (mean 2 to 3).
"""

import triton
import triton.language as tl

# ALPHA_MODE values; ``alpha_mode`` picks one from a Python float.
ALPHA_GENERAL = 0
ALPHA_ONE_HALF = 1
ALPHA_SPARSEMAX = 2

# Bracket width (shifted coordinates, |tau'| <= 1) at which a row stops refining
# for float32 outputs: 2^-20 ~ 1e-6, about 16 float32 ulps of tau', far below the
# 1e-4 output tolerance even for alpha -> 1 where p = g^INV amplifies errors. It is
# also the tightest width float32 bracket arithmetic can certify.
TAU_TOL = 2.0**-20

# Partial sums per row that ``tau_accumulate_lanes`` keeps for each statistic and edge: one
# per thread of a quad in the MMA layout of a score tile (``lane_sums``).
STAT_LANES: tl.constexpr = tl.constexpr(4)

# Keeps guarded divisions finite in tau_update; never a real slope.
TINY: tl.constexpr = tl.constexpr(1e-30)

# Significand bits (implicit bit included) of the output dtypes, by name so that this
# module needs no torch: bf16 8, fp16 11, fp32 24.
_SIGNIFICAND_BITS = {"bfloat16": 8, "float16": 11, "float32": 24}


def significand_bits(dtype) -> int:
    """Significand bits of an output dtype (a torch dtype or its name); KeyError for others."""
    return _SIGNIFICAND_BITS[str(dtype).rsplit(".", 1)[-1]]


def tau_tolerance(alpha: float, dtype) -> float:
    """Bracket width at which the attention forward stops refining tau, for outputs of dtype.

    The final estimate lies in the final bracket, as does tau, so it is off by at most
    the width. Moving tau by 2^-(bits + 7) moves the renormalised output by at most
    1/16 of the output dtype's unit roundoff 2^-bits times max|v| (bf16 2^-8, fp16
    2^-11) for alpha in [1.125, 2], on rows of 64 to 8192 Gaussian scores at any
    spread (measured worst: 1/32, sparsemax with its widest supports). Towards alpha -> 1,
    p = g^INV amplifies tau errors by INV, so the width shrinks with alpha - 1 there.
    tests/kernels/test_tau_tolerance.py checks the bound. Never below TAU_TOL, so float32
    outputs keep it. A bf16 output thus needs about one refinement sweep fewer per
    row block, without a visible change.
    """
    bits = significand_bits(dtype)
    return max(TAU_TOL, 2.0 ** -(bits + 7) * min(1.0, 8.0 * (alpha - 1.0)))


def alpha_mode(alpha: float) -> int:
    """The ALPHA_MODE constexpr for a Python float alpha."""
    if alpha == 2.0:
        return ALPHA_SPARSEMAX
    if alpha == 1.5:
        return ALPHA_ONE_HALF
    return ALPHA_GENERAL


@triton.jit
def entmax_power(g, inv, ALPHA_MODE: tl.constexpr):
    """g^INV for g >= 0 (0 stays 0): the unnormalised entmax probability."""
    if ALPHA_MODE == 2:
        return g
    elif ALPHA_MODE == 1:
        return g * g
    else:
        # log2 of a safe 1.0 where g == 0 keeps the interpreter free of log(0).
        positive = g > 0.0
        return tl.where(positive, tl.exp2(inv * tl.log2(tl.where(positive, g, 1.0))), 0.0)


@triton.jit
def tau_edge(lo, hi, j, NBINS: tl.constexpr):
    """Edge j of the sweep over [lo, hi] (j a constexpr int or a float32 tensor)."""
    return lo + (hi - lo) * (j / (NBINS - 1))


@triton.jit
def tau_init(m, n, alpha, ALPHA_MODE: tl.constexpr):
    """(lo, hi, tau', active) for rows with max m and n visible entries.

    Rows that see nothing (m = -inf or n = 0) are inactive with tau' = 0; the
    caller maps them to tau = +inf. n = 1 (or a degenerate bracket) needs no
    sweep: tau' = hi.
    """
    nf = tl.maximum(n, 1).to(tl.float32)
    if ALPHA_MODE == 2:
        hi = -1.0 / nf
    elif ALPHA_MODE == 1:
        hi = -1.0 / tl.sqrt(nf)
    else:
        hi = -tl.exp2((1.0 - alpha) * tl.log2(nf))
    visible = (m > float("-inf")) & (n > 0)
    lo = tl.where(visible, -1.0, 0.0)
    hi = tl.where(visible, hi, 0.0)
    active = visible & (lo < hi)
    return lo, hi, hi, active


@triton.jit
def half_tail_gap(z, scale, e):
    """h = [scale * z - e]_+ / 2 per entry (z (ROWS, COLS), scale a scalar, e (ROWS,)), for
    scale * z - e <= 2: ``clamped_half_gap`` with one threshold per row."""
    return clamped_half_gap(z, scale, e[:, None])


@triton.jit
def clamped_half_gap(z, scale, e):
    """h = [scale * z - e]_+ / 2 per entry, e broadcast against z (a row or a column of
    thresholds), for scale * z - e <= 2.

    Scores lie at or below their row's max and edges at or above max - 1, so
    scale * z - e <= 1 up to rounding; the factor 1/2 leaves room for that, and being a
    power of two it changes no rounding. Written as a multiply-add clamped to [0, 1],
    it compiles to one FFMA.SAT per entry (sm_90, triton 3.6: ptxas folds the clamp),
    which issues on the FMA pipe, where a scale, a subtract and a max cost three
    instructions, the max on the ALU pipe, which bound the sweeps before this form
    (ncu, mid at N = 32768: ALU 67% busy then, 31% now).
    """
    # + 0.0 turns -0.0 into +0.0 (e = +0.0), so that h is never -0.0 (``positive_count``).
    return tl.minimum(tl.maximum(z * (0.5 * scale) + (-0.5 * e + 0.0), 0.0), 1.0)


@triton.jit
def lane_sums(x):
    """Partial row sums of x (ROWS, COLS) as (ROWS, STAT_LANES): column c adds into slot
    (c // 2) % STAT_LANES (all into slot 0 where COLS is not a multiple of 2 * STAT_LANES).
    Their total over the slots is the row sum, in another order of additions.

    In the MMA layout of a score tile (sm_90, 64 x 64, four warps), a thread holds two
    adjacent columns of every group of eight and the four threads of a quad the four
    pairs, so slot s is the s-th thread of the quad and the whole sum stays inside the
    thread. A row sum per tile, as ``tl.sum`` gives, takes two shuffles and two adds per
    row more; summed over the slots once per sweep or pass, they are paid once.
    The pair is split off first (``tl.split``), then each half summed over its groups:
    written as one reshape of the pairs and groups with a permute instead, triton 3.6
    moved each tile of the sweep without counts into another layout first (shuffles or
    shared memory: 1086 instructions per tile and thread, SASS).
    """
    rows: tl.constexpr = x.shape[0]
    cols: tl.constexpr = x.shape[1]
    if cols % (2 * STAT_LANES) == 0:
        even, odd = tl.split(tl.reshape(x, [rows, cols // 2, 2]))
        groups: tl.constexpr = cols // (2 * STAT_LANES)
        return (tl.sum(tl.reshape(even, [rows, groups, STAT_LANES]), 1)
                + tl.sum(tl.reshape(odd, [rows, groups, STAT_LANES]), 1))
    else:
        return tl.where(tl.arange(0, STAT_LANES)[None, :] == 0, tl.sum(x, 1)[:, None], 0)


@triton.jit
def positive_count(h, LANES: tl.constexpr):
    """Per-row count of h > 0 for h >= 0 (ROWS, COLS), never -0.0 (``half_tail_gap``), as
    (ROWS,), or with LANES as ``lane_sums`` partials (ROWS, STAT_LANES): min(bits, 1) is 1
    exactly where h > 0, one integer min and add per entry, where a sum of (h > 0) cast to
    int32 compiled to bit packing, about five instructions, and an unsigned min to compares
    and selects (sm_90, triton 3.6)."""
    return _row_sums(tl.minimum(h.to(tl.int32, bitcast=True), 1), LANES)


@triton.jit
def _row_sums(x, LANES: tl.constexpr):
    """Row sums of x (ROWS, COLS): (ROWS,), or with LANES ``lane_sums`` partials."""
    if LANES:
        return lane_sums(x)
    else:
        return tl.sum(x, 1)


@triton.jit
def _edge_statistics(h, inv, ALPHA_MODE: tl.constexpr, SLOPE: tl.constexpr, COUNTS: tl.constexpr,
                     LANES: tl.constexpr):
    """Per-row (count, F, G) of one edge from h = [y - e]_+ / 2 (ROWS, COLS), ``half_tail_gap``,
    unscaled (``tau_update`` scales F and G): (ROWS,) each, or with LANES ``lane_sums``
    partials (ROWS, STAT_LANES).

    SLOPE False skips G and COUNTS False the count (zeros instead, unused), except where
    alpha = 2 needs the count as G.
    """
    if LANES:
        zeros_f = tl.zeros([h.shape[0], STAT_LANES], tl.float32)
    else:
        zeros_f = tl.zeros([h.shape[0]], tl.float32)
    zeros_c = zeros_f.to(tl.int32)
    if ALPHA_MODE == 2:
        count = positive_count(h, LANES)
        f_j = _row_sums(h, LANES)
        g_j = count.to(tl.float32)
    elif ALPHA_MODE == 1:
        if COUNTS:
            count = positive_count(h, LANES)
        else:
            count = zeros_c
        f_j = _row_sums(h * h, LANES)
        if SLOPE:
            g_j = _row_sums(h, LANES)
        else:
            g_j = zeros_f
    else:
        # q = g^(INV-1) so that g^INV = q * g: one exp2/log2 pair per entry.
        g = h + h
        positive = g > 0.0
        q = tl.where(positive, tl.exp2((inv - 1.0) * tl.log2(tl.where(positive, g, 1.0))), 0.0)
        count = zeros_c  # unused: no closed form
        f_j = _row_sums(q * g, LANES)
        if SLOPE:
            g_j = _row_sums(q, LANES)
        else:
            g_j = zeros_f
    return count, f_j, g_j


@triton.jit
def tau_accumulate(z, scale, base, lo, hi, stat_f, stat_g, stat_c, inv, NBINS: tl.constexpr, ALPHA_MODE: tl.constexpr,
                   EDGE_UNROLL: tl.constexpr, COUNTS: tl.constexpr, TOP_SLOPE: tl.constexpr):
    """Add one tile's tail statistics at every edge of [lo, hi].

    z: (ROWS, COLS) scores, -inf where masked, in units of 1/scale (scale a scalar: the
    sweeps take Q.K^T unscaled and fold the scale into ``half_tail_gap``'s multiply-add);
    base: (ROWS,) or scalar, the rows' shift (their max, or 0 for scores already
    shifted): edge j sits at base + e_j, the very value ``tau_update`` recomputes.
    Adding the shift to the edges rather than subtracting it from every entry saves
    one instruction per entry. lo, hi: (ROWS,).
    stat_f, stat_g: (ROWS, NBINS) float32, unscaled (``_edge_statistics``); stat_c: (ROWS,
    NBINS) int32. ``tau_accumulate_lanes`` does the same with the edge loop unrolled and
    the row sums left in lanes until the sweep ends.
    Per entry and edge this costs one saturating FMA (``half_tail_gap``) and 2 to 4
    adds (plus exp2/log2 for general alpha); the (ROWS, NBINS) updates are per row.
    TOP_SLOPE False skips G at the top edge, which ``tau_update`` never reads (a row
    whose root lies at or above it ends at hi): one add per entry fewer, but the top
    edge then leaves the edge loop, which costs registers (the max sweep's floor keeps
    TOP_SLOPE: peeled, it needed 132 registers, past the 128 that let four programs
    share an SM). COUNTS False skips every count for alpha = 1.5, see ``tau_update``.
    EDGE_UNROLL is the unroll factor of the edge loop: unrolled (NBINS), the
    edges' (ROWS, COLS) temporaries interleave and can exceed 255 registers
    (sm_90, 64 x 64 tiles, 4 warps); rolled (1), nothing spills.
    """
    cols = tl.arange(0, NBINS)[None, :]
    width = hi - lo
    LOOP_EDGES: tl.constexpr = NBINS - 1 + TOP_SLOPE
    # A factor above the trip count would leave the edges in a rolled remainder loop.
    UNROLL: tl.constexpr = EDGE_UNROLL if EDGE_UNROLL < LOOP_EDGES else LOOP_EDGES
    for j in tl.range(0, LOOP_EDGES, loop_unroll_factor=UNROLL):
        # tau_edge(lo, hi, j, NBINS) inlined (a nested jit call is slow under the
        # interpreter, and this runs per tile and edge); same arithmetic, so
        # tau_update recomputes the very same edges.
        e = base + (lo + width * (j / (NBINS - 1)))
        count, f_j, g_j = _edge_statistics(half_tail_gap(z, scale, e), inv, ALPHA_MODE, True, COUNTS, False)
        hit = cols == j
        stat_f += tl.where(hit, f_j[:, None], 0.0)
        stat_g += tl.where(hit, g_j[:, None], 0.0)
        stat_c += tl.where(hit, count[:, None], 0)
    if not TOP_SLOPE:
        top = base + (lo + width)  # tau_edge(lo, hi, NBINS - 1, NBINS), as tau_update computes it
        count, f_j, _ = _edge_statistics(half_tail_gap(z, scale, top), inv, ALPHA_MODE, False, COUNTS, False)
        hit = cols == NBINS - 1
        stat_f += tl.where(hit, f_j[:, None], 0.0)
        stat_c += tl.where(hit, count[:, None], 0)
    return stat_f, stat_g, stat_c


@triton.jit
def lane_statistics(ROWS: tl.constexpr, NBINS: tl.constexpr):
    """Zero statistics for ``tau_accumulate_lanes``: (F, G, C), each a tuple of NBINS
    (ROWS, STAT_LANES) partial sums, one per edge (float32, float32, int32)."""
    zero = tl.zeros([ROWS, STAT_LANES], tl.float32)
    return (zero,) * NBINS, (zero,) * NBINS, (zero.to(tl.int32),) * NBINS


@triton.jit
def _add_at(sums, j: tl.constexpr, value):
    """The tuple sums with value added to its entry j."""
    return sums[:j] + (sums[j] + value,) + sums[j + 1:]


@triton.jit
def tau_accumulate_lanes(z, scale, base, lo, hi, stats, inv, NBINS: tl.constexpr, ALPHA_MODE: tl.constexpr,
                         COUNTS: tl.constexpr, TOP_SLOPE: tl.constexpr):
    """``tau_accumulate`` with every edge unrolled and each row's sums kept as
    ``lane_sums`` partials, one tensor per edge (``lane_statistics``); ``lane_totals``
    adds them up for ``tau_update`` when the sweep ends.

    Per tile and thread (sm_90, triton 3.6 SASS, 64 x 64 tiles, four warps, four edges,
    the attention forward's loop bodies) this drops the shuffles and adds that a row sum
    per tile and statistic takes, and the selects that placed each edge's sums in a
    (ROWS, NBINS) tensor whose edges lay across the quad's threads: 685 -> 581
    instructions for a sweep without counts, 945 -> 788 with counts. The sums are separate
    tensors: one (ROWS, STAT_LANES, NBINS) tensor, tried with an earlier form of
    ``lane_sums``, got a layout from triton 3.6 that sent every score tile through shared
    memory.
    """
    stat_f, stat_g, stat_c = stats
    width = hi - lo
    for j in tl.static_range(NBINS):
        # The same edge as tau_accumulate's and tau_update's (float32 division).
        e = base + (lo + width * (tl.full([], j, tl.float32) / (NBINS - 1)))
        # The top edge's G only where TOP_SLOPE (tau_accumulate).
        count, f_j, g_j = _edge_statistics(half_tail_gap(z, scale, e), inv, ALPHA_MODE, TOP_SLOPE or (j < NBINS - 1),
                                           COUNTS, True)
        stat_f = _add_at(stat_f, j, f_j)
        if TOP_SLOPE or (j < NBINS - 1):
            stat_g = _add_at(stat_g, j, g_j)
        if COUNTS or (ALPHA_MODE == 2):
            stat_c = _add_at(stat_c, j, count)
    return stat_f, stat_g, stat_c


@triton.jit
def lane_totals(stats, NBINS: tl.constexpr):
    """(stat_f, stat_g, stat_c) as ``tau_update`` takes them, (ROWS, NBINS), from
    ``tau_accumulate_lanes``'s statistics."""
    stat_f, stat_g, stat_c = stats
    rows: tl.constexpr = stat_f[0].shape[0]
    cols = tl.arange(0, NBINS)[None, :]
    total_f = tl.zeros([rows, NBINS], tl.float32)
    total_g = tl.zeros([rows, NBINS], tl.float32)
    total_c = tl.zeros([rows, NBINS], tl.int32)
    for j in tl.static_range(NBINS):
        total_f = tl.where(cols == j, tl.sum(stat_f[j], 1)[:, None], total_f)
        total_g = tl.where(cols == j, tl.sum(stat_g[j], 1)[:, None], total_g)
        total_c = tl.where(cols == j, tl.sum(stat_c[j], 1)[:, None], total_c)
    return total_f, total_g, total_c


@triton.jit
def sweep_statistics(ROWS: tl.constexpr, NBINS: tl.constexpr, LANES: tl.constexpr):
    """Zero statistics for one sweep: ``lane_statistics`` with LANES, else the (ROWS, NBINS)
    tensors ``tau_accumulate`` adds to."""
    if LANES:
        return lane_statistics(ROWS, NBINS)
    else:
        return (tl.zeros([ROWS, NBINS], tl.float32), tl.zeros([ROWS, NBINS], tl.float32),
                tl.zeros([ROWS, NBINS], tl.int32))


@triton.jit
def sweep_accumulate(z, scale, base, lo, hi, stats, inv, NBINS: tl.constexpr, ALPHA_MODE: tl.constexpr,
                     EDGE_UNROLL: tl.constexpr, COUNTS: tl.constexpr, TOP_SLOPE: tl.constexpr, LANES: tl.constexpr):
    """One tile into a sweep's statistics (``sweep_statistics``): ``tau_accumulate_lanes``
    with LANES (every edge unrolled; EDGE_UNROLL unused), else ``tau_accumulate``."""
    if LANES:
        return tau_accumulate_lanes(z, scale, base, lo, hi, stats, inv, NBINS, ALPHA_MODE, COUNTS, TOP_SLOPE)
    else:
        stat_f, stat_g, stat_c = stats
        return tau_accumulate(z, scale, base, lo, hi, stat_f, stat_g, stat_c, inv, NBINS, ALPHA_MODE, EDGE_UNROLL,
                              COUNTS, TOP_SLOPE)


@triton.jit
def sweep_totals(stats, NBINS: tl.constexpr, LANES: tl.constexpr):
    """A sweep's statistics as ``tau_update`` takes them: (stat_f, stat_g, stat_c), (ROWS, NBINS)."""
    if LANES:
        return lane_totals(stats, NBINS)
    else:
        return stats


@triton.jit
def _smaller_quadratic_root(a, fa, ga, count):
    """a + s for the smaller root s of count s^2 - 2 ga s + fa = 0, in the form without
    cancellation, and whether the root is real (clamped to the double root otherwise)."""
    disc = ga * ga - count.to(tl.float32) * fa
    return a + fa / tl.maximum(ga + tl.sqrt(tl.maximum(disc, 0.0)), TINY), disc >= 0.0


@triton.jit
def tau_update(lo, hi, tau, active, stat_f, stat_g, stat_c, base, inv, NBINS: tl.constexpr,
               ALPHA_MODE: tl.constexpr, tau_tol, COUNTS: tl.constexpr, CHORD_COUNTS: tl.constexpr):
    """Shrink the bracket from one sweep's statistics (unscaled, as ``tau_accumulate`` or
    ``lane_totals`` give them); returns (lo, hi, tau', active).

    Only active rows change; rows that finish here drop out of ``active``; tau_tol is
    the stopping width (a float32 scalar or constexpr, see ``tau_tolerance``). base is
    ``tau_accumulate``'s: the statistics were taken at base + e_j, so the edges used here
    are (base + e_j) - base, which differ from e_j by the rounding of the sum (exactly
    e_j for base = 0). COUNTS False (alpha = 1.5: a sweep that took no counts) drops the
    closed form and the exactness test, leaving Newton and the secant; on the first
    sweep, where the bracket still holds many entries, they are rarely decisive (a CPU
    simulation of 16 row blocks each of the benchmark's mid, N = 16384, and dense,
    N = 8192, workloads: no block needed another sweep).

    CHORD_COUNTS (alpha = 1.5, COUNTS False, statistics with G at every edge, the top one
    included): the sweep before the attention forward's fold (kernels/fold_output.py),
    which needs an accurate estimate more than a certified bracket. The count on [a, b]
    is taken from the chord of G, C' = (G_a - G_b) / (b - a): G falls with slope -C, so
    C' lies between C_b and C_a and equals both when no entry lies inside (a, b), where
    the closed form with C' is then exact, as with counts. It is the estimate only. The
    lower end takes the quadratic bound with floor(G_b^2 / F_b) <= C_b (Cauchy-Schwarz, and
    C_b is an integer) in place of C_b, and the upper end stays the secant's. No row ends
    as exact, so the fold finishes the rows left. Counts cost two instructions per entry
    and edge (``positive_count``), G at the top edge one more per entry: per tile and
    thread the sweep's loop went from 766 to 607 instructions (sm_90, triton 3.6 SASS), and
    the forward got 2.2% faster on mid at N = 32768, 5.5% at 8192, 2.7% on high at 32768,
    dense within 0.2% (H200, same process; benchmarks/results/h200-2026-11-28-chord.md).
    In a CPU model (benchmarks/sweep_model.py, plan ``u4,g4``: 40 row blocks each of the
    benchmark's mid workload at N = 8192 and 32768, 16 each of high and dense) every block
    folds after a plain sweep and a chord one, as after a plain and a counted one (the
    largest |tau - t| 3.1e-4 both, under the fold's 2^-11); with three edges in the chord
    sweep 16 of the 40 mid blocks at 32768 miss the fold, with three in the plain one 13 of
    16.
    """
    # F and G of g = 2h are those of h times powers of two, exact.
    if ALPHA_MODE == 2:
        stat_f = 2.0 * stat_f
    elif ALPHA_MODE == 1:
        stat_f = 4.0 * stat_f
        stat_g = 2.0 * stat_g
    cols = tl.arange(0, NBINS)[None, :]
    # f is decreasing, so edges with F >= 1 form a prefix; f(lo) >= 0 in exact
    # arithmetic, and rounding that says otherwise leaves j_lo = 0 and fa <= 0.
    j_lo = tl.max(tl.where(stat_f >= 1.0, cols, 0), 1)
    at_top = j_lo == NBINS - 1  # f(hi) >= 0: tau' = hi (all entries tied, or rounding)
    j_hi = tl.minimum(j_lo + 1, NBINS - 1)
    pick_lo = cols == j_lo[:, None]
    pick_hi = cols == j_hi[:, None]
    fa = tl.sum(tl.where(pick_lo, stat_f, 0.0), 1) - 1.0
    fb = tl.sum(tl.where(pick_hi, stat_f, 0.0), 1) - 1.0
    ga = tl.sum(tl.where(pick_lo, stat_g, 0.0), 1)
    gb = tl.sum(tl.where(pick_hi, stat_g, 0.0), 1)
    ca = tl.sum(tl.where(pick_lo, stat_c, 0), 1)
    cb = tl.sum(tl.where(pick_hi, stat_c, 0), 1)
    a = (base + tau_edge(lo, hi, j_lo.to(tl.float32), NBINS)) - base
    b = tl.where(at_top, hi, (base + tau_edge(lo, hi, j_hi.to(tl.float32), NBINS)) - base)

    # Newton from a: tangent below the convex f, so a lower bound on tau'.
    if ALPHA_MODE == 2:
        slope = ga
    elif ALPHA_MODE == 1:
        slope = 2.0 * ga
    else:
        slope = inv * ga
    newton = a + fa / tl.maximum(slope, TINY)
    # Secant through (a, fa) and (b, fb): chord above f, so an upper bound.
    secant = a + (b - a) * (fa / tl.maximum(fa - fb, TINY))
    new_lo = tl.minimum(tl.maximum(newton, a), b)
    new_hi = tl.minimum(secant, b)
    if (ALPHA_MODE == 1) and (COUNTS or CHORD_COUNTS):
        # A lower bound on C_b, the count of entries above b: C_b itself, or floor(G_b^2 / F_b).
        if COUNTS:
            count_floor = cb
        else:
            count_floor = tl.where(fb > -1.0, tl.floor(gb * gb / tl.maximum(fb + 1.0, TINY)), 0.0)
        # f'' = 2 * count above t >= 2 * C_b on [a, b], so f >= fa - 2 ga s + C_b s^2 there:
        # that quadratic's smaller root is a lower bound on tau', tighter than Newton's.
        quadratic, quadratic_real = _smaller_quadratic_root(a, fa, ga, count_floor)
        new_lo = tl.where(quadratic_real, tl.minimum(tl.maximum(new_lo, quadratic), b), new_lo)
    if (ALPHA_MODE == 1) and COUNTS:
        closed, closed_real = _smaller_quadratic_root(a, fa, ga, ca)
        new_hi = tl.where(closed_real, tl.minimum(new_hi, closed), new_hi)
        exact = ca == cb
    elif (ALPHA_MODE == 1) and CHORD_COUNTS:
        chord, chord_real = _smaller_quadratic_root(a, fa, ga, (ga - gb) / tl.maximum(b - a, TINY))
        closed = tl.where(chord_real, chord, newton)
        exact = at_top
    elif ALPHA_MODE == 2:
        closed = newton
        exact = ca == cb
    else:
        closed = newton
        exact = at_top
    new_hi = tl.maximum(new_hi, new_lo)
    estimate = tl.minimum(tl.maximum(closed, new_lo), new_hi)
    if (ALPHA_MODE == 2) or ((ALPHA_MODE == 1) and COUNTS):
        # The closed form is exact on [a, b] even where bounds rounded past it.
        estimate = tl.where(exact, tl.minimum(tl.maximum(closed, a), b), estimate)
    estimate = tl.where(at_top, hi, estimate)
    done = at_top | exact | (fa <= 0.0) | (new_hi - new_lo <= tau_tol)

    lo = tl.where(active, new_lo, lo)
    hi = tl.where(active, new_hi, hi)
    tau = tl.where(active, estimate, tau)
    active = active & (done == 0)
    return lo, hi, tau, active
