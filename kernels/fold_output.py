"""Folding the last threshold sweep of a 1.5-entmax row block into its output pass.

For alpha = 1.5, p_j = (z_j - tau)^2 on the support, normalised so that
f(tau) = sum_j [z_j - tau]_+^2 = 1. The output pass runs at the threshold estimate t
left by the sweeps (kernels/tau.py: the closed form, its count taken from the chord of G,
``tau_update``'s CHORD_COUNTS, so on either side of tau) and gathers, over the entries
above t with g_j = z_j - t,

    F = sum g^2,  G = sum g,  C = #{g > 0},  A = sum g^2 v,  B = sum g v.

With d = tau - t <= 0, every entry above t is in the support and contributes
(g - d)^2 = g^2 - 2 d g + d^2, so tau solves F - 2 d G + d^2 C = 1 (smaller root, no
cancellation: d = (F - 1) / (G + sqrt(G^2 - C (F - 1)))) and

    out = (A - 2 d B + d^2 sum v) / (F - 2 d G + d^2 C).

Dropping d^2 sum v, and correspondingly d^2 C, gives out' = (A - 2 d B) / (F - 2 d G),
off by d^2 sum_j (out - v_j) / (1 - d^2 C), at most about 2 d^2 C max|v|. Where t lies
above tau, the entries in (tau, t] are left out: each has p <= d^2 and z - tau <= |d|.
Where it lies below (d > 0), the same step d solves the same quadratic, and the entries
in (t, tau], which should drop out, stay in with weight (g - d)^2 <= d^2 each: at most
d^2 C together, the bound below. The pass therefore costs one more small product per
tile (B) in place of a whole threshold sweep.

The backward's u-weighted mean of V (adasplash_compile.options ``u_value_mean``; u is
p^(1/2) = g - d at tau) comes from the same sums, taken at t: B / G. The exact mean,
(B - d sum v) / (G - d C), mixes B / G with the plain mean of v above t by the weight
|d| C / (G + |d| C); dropping d sum v alone would also skew it where v is constant. A CPU
check (4 row blocks each of the benchmark's mid and dense workloads at N = 8192 and
32768, float64, after the kernels' sweeps) put the backward's DELTA = dO . u_value_mean
within 2.5e-4 (mid) and 6.1e-4 (dense) of mean |dP| of the exact one, below bf16's
rounding of dS (2^-9). That error no longer cancels in dQ = sum_j dS_j K_j: sum_j dS_j is
then U times it, not 0, so dQ moves by that times the rows' u-weighted mean key, whose
relative effect grows with the keys' common mean over their spread.

``fold_tolerance`` bounds d^2 C per row at 2^-(bits + 4) for a 16-bit output (bits
its significand, as in ``tau_tolerance``), so out' is within 1/8 of the output's
unit roundoff times max|v| (plus the entries left out, each with p <= d^2: none in the
simulation below), and FOLD_MAX_STEP bounds |d|, so the backward's tiles (tile_max)
miss only entries within 2^-11 of tau, where p <= 2^-22. A row block whose rows do not
all meet both falls back to more sweeps and a plain output pass.

CPU simulation outside the repository (12 row blocks each of the benchmark's mid
workload, after FOLD_AFTER = 2 sweeps): every block still had active rows (138 of 768 rows at
N = 8192, 258 at 32768); the largest d^2 C was 3.1e-5 and 2.4e-4 (bf16's bound 2^-12 =
2.4e-4), the largest |d| 2.4e-4 and 4.7e-4 (under 2^-12, 7 of the 12 blocks at 32768),
the output's max error against the exact one 4.6e-6 and 3.1e-5, tau's 7e-9 and 2.5e-8.
Expanding at the bracket's lower end instead of the estimate gave d^2 C up to 3.6e-4 and
1.2e-3 and output errors up to 2.1e-4. With the second sweep's count taken from the chord
of G instead of counted (``benchmarks/sweep_model.py --plans u4,g4 u4,c4 --blocks 40``),
every one of 40 mid blocks at N = 8192 and 32768 still folds, the largest |d| 3.1e-4 with
either.

H100 (bf16, B=1, H=16, D=128, causal; same-process A/B against the sweeps-only forward):
the forward falls 12.7% on mid at N = 32768 (22.08 -> 19.27 ms), 8.3% on mid at 8192,
7.2% on high at 32768 and 4.7% on dense at 8192, with outputs within one bf16 step of
the sweeps'. tau_out compiles to 255 registers and 56 bytes of stack with FOLD (triton
3.6); 8 warps or 1 or 3 stages were slower still.
"""

import triton
import triton.language as tl

from adasplash_compile.kernels.tau import alpha_mode, ALPHA_ONE_HALF, significand_bits

# Sweeps before the output pass takes over; after one the estimate is too far off
# (CPU simulation: corrections up to 5.6e-2 on mid at N = 8192).
FOLD_AFTER: tl.constexpr = tl.constexpr(2)
# Largest |tau - t| folded (shifted units): the entries the output pass and tile_max
# then leave out have p <= FOLD_MAX_STEP^2.
FOLD_MAX_STEP: tl.constexpr = tl.constexpr(2.0**-11)


def fold_tolerance(alpha: float, dtype) -> float:
    """The bound on d^2 C per row (module docstring) for outputs of dtype; 0.0 where the
    forward does not fold: alpha other than 1.5, or float32 outputs."""
    if alpha_mode(alpha) != ALPHA_ONE_HALF:
        return 0.0
    bits = significand_bits(dtype)
    if bits >= significand_bits("float32"):
        return 0.0
    return 2.0 ** -(bits + 4)


@triton.jit
def fold_correction(l_i, gap_sum, count, active, fold_tol, MAX_STEP: tl.constexpr):
    """(d, accurate) per row from the output pass's sums at t (``output_pass`` in
    kernels/forward.py, FOLD): l_i = sum h^2 and gap_sum = sum h with h = g / 2, count = C.

    d = tau - t for the rows still active (0 for the others, whose t is final);
    accurate is False where the folded output would miss its bound (module docstring).
    """
    f = 4.0 * l_i
    g = 2.0 * gap_sum
    c = count.to(tl.float32)
    disc = g * g - c * (f - 1.0)
    step = (f - 1.0) / tl.maximum(g + tl.sqrt(tl.maximum(disc, 0.0)), 1e-30)
    step = tl.where(active, step, 0.0)
    accurate = ~active | ((disc >= 0.0) & (step * step * c <= fold_tol) & (tl.abs(step) <= MAX_STEP))
    return step, accurate


@triton.jit
def fold_output(acc, acc_gap, l_i, gap_sum, step):
    """out' = (A - 2 d B) / (F - 2 d G) in the pass's half units (A = 4 acc, B = 2 acc_gap,
    F = 4 l_i, G = 2 gap_sum); 0 for rows without entries above t."""
    norm = l_i - step * gap_sum
    return tl.where(norm[:, None] > 0.0, (acc - step[:, None] * acc_gap) / tl.where(norm > 0.0, norm, 1.0)[:, None],
                    0.0)
