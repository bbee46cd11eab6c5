"""Threshold helpers (kernels/tau.py), sweep by sweep, against float64 math.

A small test kernel runs tau_init, then MAX_SWEEPS rounds of tau_accumulate (or
tau_accumulate_lanes, as the attention forward's sweeps) and tau_update over rows streamed
in chunks (on the GPU, of one key tile each), recording (lo, hi, tau', active) after every
sweep. The checks are the invariants the attention and entmax kernels rely on:
the bracket always holds the root (f(lo) >= 0 >= f(hi) up to rounding), it shrinks,
rows leave ``active`` only when their estimate is final, and the final tau matches
reference.solve_tau.
"""

import pytest
import torch
import triton
import triton.language as tl

from adasplash_compile import reference
from adasplash_compile.kernels.tau import (
    STAT_LANES,
    TAU_TOL,
    alpha_mode,
    half_tail_gap,
    lane_sums,
    sweep_accumulate,
    sweep_statistics,
    sweep_totals,
    tau_init,
    tau_update,
)
from tests.conftest import BOTH_BACKENDS, DEVICE

pytestmark = BOTH_BACKENDS


@triton.jit
def _tau_trace(z_ptr, trace_ptr, R, L, alpha, inv, ROWS: tl.constexpr, BLOCK_L: tl.constexpr,
               ALPHA_MODE: tl.constexpr, NBINS: tl.constexpr, MAX_SWEEPS: tl.constexpr, TAU_TOL: tl.constexpr,
               BASE: tl.constexpr, FIRST_COUNTS: tl.constexpr, TOP_SLOPE: tl.constexpr, LANES: tl.constexpr,
               SECOND_CHORD: tl.constexpr):
    """trace[s, k, r] for sweep s (0 = after tau_init), k in (lo, hi, tau', active), row r
    of the R rows, ROWS rows per program.

    Each sweep streams its rows in chunks of BLOCK_L columns, as the attention forward
    streams tiles: held whole, 64 rows of 2048 took ptxas minutes to compile (sm_90,
    triton 3.6), and a chunk loop over 8 or more rows per program stops triton 3.6's
    TritonGPUOptimizeThreadLocality pass (offline builds), so the GPU runs 2 rows per program.
    BASE: the sweeps take raw z and the row max as base (as the attention forward does),
    else pre-shifted scores and base 0. FIRST_COUNTS: whether sweep 1 takes counts.
    LANES: tau_accumulate_lanes and lane_totals instead of tau_accumulate (kernels/tau.py
    ``sweep_accumulate``). SECOND_CHORD: sweep 2 takes G at every edge and no counts, and
    estimates the count from the chord of G (``tau_update``'s CHORD_COUNTS), as the attention
    forward's sweep before its fold does."""
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    cols = tl.arange(0, BLOCK_L)
    m = tl.full([ROWS], float("-inf"), tl.float32)
    n = tl.zeros([ROWS], tl.int32)
    for start in range(0, L, BLOCK_L):
        z = tl.load(z_ptr + rows[:, None] * L + start + cols[None, :], mask=start + cols[None, :] < L,
                    other=float("-inf"))
        m = tl.maximum(m, tl.max(z, 1))
        n += tl.sum((z > float("-inf")).to(tl.int32), 1)
    m_shift = tl.where(m > float("-inf"), m, 0.0)
    if BASE:
        base = m_shift
    else:
        base = tl.zeros_like(m_shift)
    lo, hi, tau, active = tau_init(m, n, alpha, ALPHA_MODE)
    tl.store(trace_ptr + 0 * R + rows, lo)
    tl.store(trace_ptr + 1 * R + rows, hi)
    tl.store(trace_ptr + 2 * R + rows, tau)
    tl.store(trace_ptr + 3 * R + rows, active.to(tl.float32))
    for sweep in tl.static_range(1, MAX_SWEEPS + 1):
        # sweep is a constexpr (static_range), so the statistics' flags are one per sweep.
        chord = SECOND_CHORD and sweep == 2
        counts = (FIRST_COUNTS or sweep > 1) and not chord
        stats = sweep_statistics(ROWS, NBINS, LANES)
        for start in range(0, L, BLOCK_L):
            z = tl.load(z_ptr + rows[:, None] * L + start + cols[None, :], mask=start + cols[None, :] < L,
                        other=float("-inf"))
            if BASE:
                y = z
            else:
                y = z - m_shift[:, None]
            stats = sweep_accumulate(y, 1.0, base, lo, hi, stats, inv, NBINS, ALPHA_MODE, 1, counts, TOP_SLOPE or chord,
                                     LANES)
        stat_f, stat_g, stat_c = sweep_totals(stats, NBINS, LANES)
        lo, hi, tau, active = tau_update(lo, hi, tau, active, stat_f, stat_g, stat_c, base, inv, NBINS, ALPHA_MODE,
                                         TAU_TOL, counts, chord)
        out = trace_ptr + sweep * 4 * R
        tl.store(out + 0 * R + rows, lo)
        tl.store(out + 1 * R + rows, hi)
        tl.store(out + 2 * R + rows, tau)
        tl.store(out + 3 * R + rows, active.to(tl.float32))


@triton.jit
def _half_gap(z_ptr, e_ptr, h_ptr, scale, ROWS: tl.constexpr, COLS: tl.constexpr):
    offs = tl.arange(0, ROWS)[:, None] * COLS + tl.arange(0, COLS)[None, :]
    h = half_tail_gap(tl.load(z_ptr + offs), scale, tl.load(e_ptr + tl.arange(0, ROWS)))
    tl.store(h_ptr + offs, h)


def test_half_tail_gap_is_half_the_clamped_gap_and_never_negative_zero(backend):
    # Compiled, the clamp folds into the multiply-add (FFMA.SAT); the interpreter runs numpy.
    z = torch.tensor([[-0.0, 0.0, 1e-30, -1e-30, 2.5, -2.5, float("-inf"), 3.0]] * 4)
    e = torch.tensor([0.0, -0.0, 1.25, -1.5])
    scale = 1.5
    h = torch.empty_like(z, device=DEVICE)
    _half_gap[(1,)](z.to(DEVICE), e.to(DEVICE), h, scale, ROWS=4, COLS=8)
    h = h.cpu()
    expected = ((z.double() * scale - e.double()[:, None]) / 2).clamp(0.0, 1.0)
    assert torch.allclose(h.double(), expected, rtol=2e-7, atol=0.0)
    assert not torch.signbit(h).any(), "h = -0.0 would break the count's bit trick"
    assert (h > 0).sum().item() == (expected > 0).sum().item()


@triton.jit
def _lane_sums(x_ptr, out_ptr, ROWS: tl.constexpr, COLS: tl.constexpr):
    x = tl.load(x_ptr + tl.arange(0, ROWS)[:, None] * COLS + tl.arange(0, COLS)[None, :])
    tl.store(out_ptr + tl.arange(0, ROWS)[:, None] * STAT_LANES + tl.arange(0, STAT_LANES)[None, :], lane_sums(x))


@pytest.mark.parametrize("cols", [64, 16, 4])
def test_lane_sums_put_each_column_pair_in_its_slot(cols, backend):
    # Small integers: every order of additions gives the exact sums.
    x = torch.randint(-8, 9, (16, cols)).float()
    out = torch.empty(16, STAT_LANES.value, device=DEVICE)
    _lane_sums[(1,)](x.to(DEVICE), out, ROWS=16, COLS=cols)
    lanes = STAT_LANES.value
    slot = (torch.arange(cols) // 2) % lanes if cols % (2 * lanes) == 0 else torch.zeros(cols, dtype=torch.long)
    expected = torch.zeros(16, lanes).index_add_(1, slot, x)
    assert torch.equal(out.cpu(), expected)


# (BASE, FIRST_COUNTS, TOP_SLOPE, LANES, SECOND_CHORD): the entmax kernel's sweeps, the
# attention forward's, and the attention forward's before its fold.
ENTMAX_SWEEPS = (False, True, True, False, False)
ATTENTION_SWEEPS = (True, False, False, True, False)
FOLDING_SWEEPS = (True, False, False, True, True)


# On the GPU: columns per chunk of the trace kernel (one key tile of the attention forward)
# and rows per program; the tests' row counts are multiples of it.
TRACE_CHUNK = 64
TRACE_ROWS = 2


def trace_tau(z, alpha, nbins=8, sweeps=5, variant=ENTMAX_SWEEPS):
    rows, length = z.shape
    trace = torch.empty(sweeps + 1, 4, rows, device=z.device)
    base, first_counts, top_slope, lanes, second_chord = variant
    if z.is_cuda:
        rows_per_program, chunk = TRACE_ROWS, min(TRACE_CHUNK, triton.next_power_of_2(length))
    else:
        # The interpreter's cost is per program and per op: all rows, whole, in one program.
        rows_per_program, chunk = rows, triton.next_power_of_2(length)
    _tau_trace[(rows // rows_per_program,)](z.contiguous(), trace, rows, length, alpha, 1.0 / (alpha - 1.0),
                                            ROWS=rows_per_program, BLOCK_L=chunk, ALPHA_MODE=alpha_mode(alpha),
                                            NBINS=nbins, MAX_SWEEPS=sweeps, TAU_TOL=TAU_TOL, BASE=base,
                                            FIRST_COUNTS=first_counts, TOP_SLOPE=top_slope, LANES=lanes,
                                            SECOND_CHORD=second_chord)
    lo, hi, tau, active = trace.unbind(1)
    return lo, hi, tau, active > 0


def objective(y, t, alpha):
    """f(t) = sum [y - t]_+^(1/(alpha-1)) - 1 in float64, per row, t (rows,)."""
    gap = (y.double() - t.double()[:, None]).clamp_min(0)
    return gap.pow(1.0 / (alpha - 1.0)).sum(-1) - 1.0


def rows_of(kind, length):
    torch.manual_seed(0)
    if kind == "gauss":
        return torch.randn(16, length)
    if kind == "wide":
        return torch.randn(16, length) * 6
    if kind == "ties":
        return torch.randint(0, 4, (16, length)).float() * 0.25
    if kind == "offset":
        # Far from 0: the attention sweeps add the row max to the edges, which rounds them.
        return torch.randn(16, length) + 12.0
    return torch.randn(16, length) * 0.02  # "flat": everything inside the first bracket


@pytest.mark.parametrize("variant", [ENTMAX_SWEEPS, ATTENTION_SWEEPS, FOLDING_SWEEPS],
                         ids=["entmax", "attention", "folding"])
@pytest.mark.parametrize("kind", ["gauss", "wide", "ties", "flat", "offset"])
@pytest.mark.parametrize("alpha", [1.05, 1.25, 1.5, 1.75, 2.0])
def test_bracket_invariants_and_convergence(alpha, kind, variant, backend):
    scores = rows_of(kind, 200).to(DEVICE)
    z = (alpha - 1.0) * scores
    lo, hi, tau, active = trace_tau(z, alpha, variant=variant)
    y = (z - z.amax(-1, keepdim=True)).cpu()
    lo, hi, tau, active = lo.cpu(), hi.cpu(), tau.cpu(), active.cpu()
    # Every sweep keeps the root inside [lo, hi] (f(lo) >= 0 >= f(hi), up to float32
    # rounding of the edges) and never widens the bracket.
    slack = 1e-4
    for sweep in range(lo.shape[0]):
        assert (objective(y, lo[sweep], alpha) >= -slack).all(), f"f(lo) < 0 after sweep {sweep}"
        assert (objective(y, hi[sweep], alpha) <= slack).all(), f"f(hi) > 0 after sweep {sweep}"
        assert (lo[sweep] <= hi[sweep]).all()
        if sweep:
            assert (hi[sweep] - lo[sweep] <= hi[sweep - 1] - lo[sweep - 1] + 1e-7).all()
            # A row that left `active` keeps its estimate.
            done = ~active[sweep - 1]
            assert torch.equal(tau[sweep][done], tau[sweep - 1][done])
    assert not active[-1].any(), "every row converges within 5 sweeps"
    expected = reference.solve_tau(z.cpu().double(), alpha)[:, 0] - z.cpu().double().amax(-1)
    assert (tau[-1].double() - expected).abs().max().item() <= 2e-6


def root_bin(y, lo, hi, rows, nbins):
    """float64 statistics of a sweep of nbins edges over [lo, hi] (shifted rows y), on each
    row's bin [a, b] where f changes sign: (rows among ``rows`` whose bin float32 rounding
    cannot pick differently, a, f(a), G_a, G_b, F_b = f(b) + 1, C_b)."""
    edges = lo[:, None] + (hi - lo)[:, None] * torch.arange(nbins) / (nbins - 1)
    gap = (y[:, None, :] - edges[:, :, None]).clamp_min(0)
    f = (gap * gap).sum(-1) - 1.0
    j = (f >= 0).sum(-1) - 1
    rows = rows & (f.abs() > 1e-4).all(-1) & (j >= 0) & (j < nbins - 1)
    j = j.clamp(0, nbins - 2)
    pick = lambda t, k: t.gather(1, (j + k)[:, None])[:, 0]
    g, c = gap.sum(-1), (gap > 0).sum(-1).double()
    return rows, pick(edges, 0), pick(f, 0), pick(g, 0), pick(g, 1), pick(f, 1) + 1.0, pick(c, 1)


def quadratic_bound(a, fa, ga, count):
    """a + the smaller root s of count s^2 - 2 ga s + fa = 0 (Newton's step for count 0)."""
    return a + fa / (ga + (ga * ga - count * fa).clamp_min(0).sqrt())


def traced_gaussian_rows(sweeps, variant):
    """64 rows of 2048 Gaussian scores (alpha = 1.5, std 0.5) traced over ``sweeps`` sweeps of
    4 edges: (z, shifted rows y, lo, hi, active), all but z float64 on the CPU."""
    z = (0.5 * torch.randn(64, 2048, generator=torch.Generator().manual_seed(0))).to(DEVICE)
    lo, hi, _, active = trace_tau(z, 1.5, nbins=4, sweeps=sweeps, variant=variant)
    y = (z - z.amax(-1, keepdim=True)).cpu().double()
    return z, y, lo.cpu().double(), hi.cpu().double(), active.cpu()


def test_counted_sweeps_raise_lo_to_the_lower_quadratic_bound(backend):
    # alpha = 1.5: on the bin [a, b] holding the root, f'' >= 2 * C_b, so the root of
    # C_b s^2 - 2 G_a s + f(a) bounds tau' - a from below; recomputed here in float64
    # from each sweep's bracket. Newton alone (C_b = 0) stays below it wherever C_b > 0.
    z, y, lo, hi, active = traced_gaussian_rows(3, ATTENTION_SWEEPS)
    checked = 0
    for sweep in (2, 3):  # sweep 1 takes no counts
        rows, a, fa, ga, _, _, cb = root_bin(y, lo[sweep - 1], hi[sweep - 1], active[sweep - 1], 4)
        quadratic = quadratic_bound(a, fa, ga, cb)
        assert (lo[sweep][rows] >= quadratic[rows] - 1e-6).all()
        checked += int((rows & (quadratic > quadratic_bound(a, fa, ga, 0.0) + 1e-5)).sum())
    assert checked >= 16  # rows where the bound is strictly tighter than Newton's


def test_chord_sweep_raises_lo_to_the_cauchy_schwarz_bound(backend):
    # The folding sweeps' second sweep takes no counts. On its bin [a, b], G_b^2 <= C_b F_b
    # (Cauchy-Schwarz), so floor(G_b^2 / F_b) <= C_b, and the quadratic bound with it stays
    # below tau'; recomputed here in float64 from sweep 1's bracket.
    z, y, lo, hi, active = traced_gaussian_rows(2, FOLDING_SWEEPS)
    rows, a, fa, ga, gb, fb, cb = root_bin(y, lo[1], hi[1], active[1], 4)
    counted_below = (gb * gb / fb).floor()
    assert (counted_below <= cb).all()
    quadratic = quadratic_bound(a, fa, ga, counted_below)
    expected = reference.solve_tau(z.cpu().double(), 1.5)[:, 0] - z.cpu().double().amax(-1)
    assert (lo[2] <= expected + 1e-6).all()
    assert (lo[2][rows] >= quadratic[rows] - 1e-6).all()
    assert int((rows & (quadratic > quadratic_bound(a, fa, ga, 0.0) + 1e-5)).sum()) >= 16  # tighter than Newton's


def test_chord_sweep_estimate_is_exact_when_no_entry_lies_in_the_bin(backend):
    # Few, well-separated scores: after the plain first sweep the estimate is off by 2e-2;
    # the chord of G over the bin holding tau is then the count above it, so the closed
    # form is exact, though the sweep ends no row (the fold finishes them).
    z = torch.tensor([[0.0, -0.31, -0.77, -2.0], [0.0, -0.05, -3.0, -3.5]], device=DEVICE)
    z = torch.cat([z, z - 0.5])
    lo, hi, tau, active = trace_tau(z, 1.5, nbins=4, sweeps=2, variant=FOLDING_SWEEPS)
    expected = reference.solve_tau(z.cpu().double(), 1.5)[:, 0] - z.cpu().double().amax(-1)
    assert (tau[1].cpu().double() - expected).abs().max().item() > 1e-2
    assert (tau[2].cpu().double() - expected).abs().max().item() <= 1e-6
    assert active[2].all()


@pytest.mark.parametrize("alpha", [1.5, 2.0])
def test_closed_form_is_exact_after_the_histogram_when_no_entry_lies_in_the_bin(alpha, backend):
    # Few, well-separated scores: the histogram bin holding tau holds no score, so the
    # closed form (alpha in {1.5, 2}) finishes every row in the first sweep.
    z = torch.tensor([[0.0, -0.31, -0.77, -2.0], [0.0, -0.05, -3.0, -3.5]], device=DEVICE)
    z = torch.cat([z, z - 0.5])
    lo, hi, tau, active = trace_tau(z, alpha, sweeps=2)
    assert not active[1].any()
    expected = reference.solve_tau(z.cpu().double(), alpha)[:, 0] - z.cpu().double().amax(-1)
    assert (tau[1].cpu().double() - expected).abs().max().item() <= 1e-6


def test_rows_without_entries_and_single_entries(backend):
    z = torch.full((4, 8), float("-inf"), device=DEVICE)
    z[1, 3] = 2.0  # one entry: tau' = -1 (p = 1) without any sweep
    z[2] = 0.5  # all tied: tau' = hi = -n^(1-alpha)
    lo, hi, tau, active = trace_tau(z, 1.5, sweeps=1)
    # Rows 0, 1 and 3 need no sweep; the tied row is done after one (f(hi) = 0).
    assert active[0].tolist() == [False, False, True, False]
    assert not active[1].any()
    assert tau[0, 1].item() == -1.0
    assert tau[-1, 2].item() == pytest.approx(-(8 ** -0.5), abs=1e-7)
    assert tau[-1, 0].item() == 0.0 and tau[-1, 3].item() == 0.0  # callers map these to +inf
