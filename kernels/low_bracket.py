"""A first threshold sweep over the bottom of the bracket, for row blocks with dense scores.

Where a row's largest entries lie in many tiles, as on dense scores, the histogram of
tile maxima (kernels/histogram_floor.py) lifts the row's floor far above the floor of its
two local tiles, and TAU then lies in the lowest 2-22% of the bracket [floor, m - n^-1/2]
(CPU simulation of 12 row blocks each of the benchmark's dense workload at N = 4096 to
32768). The first sweep spreads its edges over the whole bracket, so it narrows that
bracket only to about a tenth; a second sweep follows, and only then does the output
pass finish TAU (kernels/fold_output.py).

A block whose rows see at least MIN_KEYS keys, and where at least LIFTED_EIGHTHS eighths
of the active rows had their floor lifted by more than LIFT of the bracket (measured from
the local floor), is taken to be such a block. Its first sweep takes G at every edge
(``tau_update``'s closed form with the count from the chord of G, CHORD_COUNTS; in a CPU
model it folds as many dense blocks as a counted sweep: ``sweep_model.py`` plans
``low=0.15,g4`` and ``low=0.15,c4``) over the bottom LOW_BRACKET of each row's bracket;
rows whose TAU lies above that find F >= 1 at its top edge, end there
(lo = its top), and are reopened to [top, hi]. When none is reopened the output pass
folds the rest right after this one sweep, a whole threshold sweep fewer; else the
block sweeps on until every row has converged and runs the plain output pass.

Same simulation: the lift picks every dense block and none of the mid and high ones at
N = 4096 to 32768 (their lifted shares are at most 9% and 0%). Over 96 dense blocks at
N = 2048 to 16384, the fold after one sweep held in 51 of 53 blocks whose rows see 2048
keys or more (one reopened, one fold attempt missed), but in 12 of 35 that see 512 to 2047
(the others reopened: a sweep lost, not saved), hence MIN_KEYS. A bottom of 12% reopened
more blocks, 20% or more left the fold out of reach more often.

H100 (bf16, B=1, H=16, D=128, causal; same process against the build before): the dense
forward 10.9% faster at N = 8192 (2.446 -> 2.180 ms) and 13.9% at 32768 (32.08 -> 27.61),
outputs within one bf16 step and tau within bf16's tau_tol of the sweeps'; mid and high
take none of it and stay bitwise the same.
"""

import triton
import triton.language as tl

# Lift of the floor by the histogram, as a share of [local floor, hi], that marks a row.
LIFT: tl.constexpr = tl.constexpr(0.05)
# Marked rows among the active ones, in eighths, that make the block start low.
LIFTED_EIGHTHS: tl.constexpr = tl.constexpr(7)
# Keys every row of the block must see.
MIN_KEYS: tl.constexpr = tl.constexpr(2048)
# Share of the bracket, from its lower end, that the first sweep covers.
LOW_BRACKET: tl.constexpr = tl.constexpr(0.15)


@triton.jit
def lifted_block(lo, hi, local_lo, n_keys, active, min_keys):
    """Whether at least LIFTED_EIGHTHS of the block's active rows had their floor lifted by
    more than LIFT of the bracket, every active row seeing min_keys keys or more: lo, hi the
    rows' bracket (shifted), local_lo the floor of their two local tiles (shifted), before
    the histogram lifted it, n_keys the keys each row sees."""
    lifted = active & ((lo - local_lo) > LIFT * (hi - local_lo))
    n_active = tl.sum(active.to(tl.int32), 0)
    n_lifted = tl.sum(lifted.to(tl.int32), 0)
    fewest_keys = tl.min(tl.where(active, n_keys, min_keys), 0)
    return (n_active > 0) & (fewest_keys >= min_keys) & (8 * n_lifted >= LIFTED_EIGHTHS * n_active)


@triton.jit
def starts_low(lo, hi, local_lo, n_keys, active):
    """Whether the row block starts from a low bracket (``lifted_block`` with MIN_KEYS)."""
    return lifted_block(lo, hi, local_lo, n_keys, active, MIN_KEYS)


@triton.jit
def low_top(lo, hi, active, low):
    """The upper end the first sweep uses: the bottom LOW_BRACKET of [lo, hi] for the active
    rows of a block that starts low (``starts_low``), hi elsewhere."""
    return tl.where(active & low, lo + LOW_BRACKET * (hi - lo), hi)


@triton.jit
def reopen_above(lo, hi, tau, active, top, full_hi):
    """After a sweep over [lo, top]: rows that ended at its top (TAU' >= top, ``tau_update``
    ends them with lo = hi = top) get [top, full_hi] back and stay active, with the
    estimate at full_hi as ``tau_init`` sets it. Returns (lo, hi, tau', active, reopened rows)."""
    reopen = (lo >= top) & (top < full_hi)
    lo = tl.where(reopen, top, lo)
    hi = tl.where(reopen, full_hi, hi)
    tau = tl.where(reopen, full_hi, tau)
    return lo, hi, tau, active | reopen, tl.sum(reopen.to(tl.int32), 0)
