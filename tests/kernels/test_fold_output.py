"""The folded output pass's correction (kernels/fold_output.py) against float64 math.

A small test kernel takes the sums an output pass gathers above an estimate t that
sits above each row's exact 1.5-entmax threshold, and returns the step d = tau - t and
the corrected output; float64 gives the exact threshold and output of each row.
"""

import pytest
import torch
import triton
import triton.language as tl

from adasplash_compile import reference
from adasplash_compile.kernels.fold_output import FOLD_MAX_STEP, fold_correction, fold_output
from tests.conftest import BOTH_BACKENDS, DEVICE

pytestmark = BOTH_BACKENDS

ROWS, DIM = 16, 32


@triton.jit
def _fold(sums_ptr, acc_ptr, acc_gap_ptr, active_ptr, step_ptr, accurate_ptr, out_ptr, fold_tol,
          ROWS: tl.constexpr, DIM: tl.constexpr):
    rows = tl.arange(0, ROWS)
    cells = rows[:, None] * DIM + tl.arange(0, DIM)[None, :]
    l_i = tl.load(sums_ptr + rows)
    gap_sum = tl.load(sums_ptr + ROWS + rows)
    count = tl.load(sums_ptr + 2 * ROWS + rows).to(tl.int32)
    active = tl.load(active_ptr + rows) != 0
    step, accurate = fold_correction(l_i, gap_sum, count, active, fold_tol, FOLD_MAX_STEP)
    tl.store(step_ptr + rows, step)
    tl.store(accurate_ptr + rows, accurate.to(tl.int32))
    tl.store(out_ptr + cells, fold_output(tl.load(acc_ptr + cells), tl.load(acc_gap_ptr + cells), l_i, gap_sum, step))


def _rows(offset):
    """z (ROWS, 300) float64, v (300, DIM), exact tau, and t = tau + offset per row, with
    no entry in (tau, t]: the setting the correction is exact for (up to d^2 sum v)."""
    z = torch.randn(ROWS, 300, dtype=torch.float64) * 0.3
    tau = reference.solve_tau(z, 1.5)[:, 0]
    gap = (z - tau[:, None]).abs()
    # Push the entries within 2 * offset of tau away from it, so that none lies in (tau, t].
    z = torch.where(gap < 2 * offset[:, None], z + torch.sign(z - tau[:, None]) * 2 * offset[:, None], z)
    tau = reference.solve_tau(z, 1.5)[:, 0]
    return z, torch.randn(300, DIM, dtype=torch.float64), tau, tau + offset


def _run(z, v, t, active, fold_tol, backend):
    h = ((z - t[:, None]) / 2).clamp_min(0)
    sums = torch.cat([(h * h).sum(1), h.sum(1), (h > 0).sum(1).double()]).float()
    acc, acc_gap = ((h * h) @ v).float(), (h @ v).float()
    step = torch.empty(ROWS)
    accurate = torch.empty(ROWS, dtype=torch.int32)
    out = torch.empty(ROWS, DIM)
    device = DEVICE if backend == "gpu" else "cpu"
    tensors = [x.to(device) for x in (sums, acc, acc_gap, active.int(), step, accurate, out)]
    _fold[(1,)](*tensors, fold_tol, ROWS=ROWS, DIM=DIM)
    return tensors[4].cpu().double(), tensors[5].cpu().bool(), tensors[6].cpu().double()


def test_correction_recovers_tau_and_the_output(backend):
    z, v, tau, t = _rows(torch.full((ROWS,), 0.9 * 2.0**-11, dtype=torch.float64))
    step, accurate, out = _run(z, v, t, torch.ones(ROWS, dtype=torch.bool), 1.0, backend)
    torch.testing.assert_close(t + step, tau, atol=2e-6, rtol=0)
    assert accurate.all()
    p = (z - tau[:, None]).clamp_min(0) ** 2
    exact = (p @ v) / p.sum(1, keepdim=True)
    # The output without the correction is off by far more than what is asserted.
    h = (z - t[:, None]).clamp_min(0) ** 2
    uncorrected = (h @ v) / h.sum(1, keepdim=True)
    assert (uncorrected - exact).abs().max() > 10 * 3e-5
    torch.testing.assert_close(out, exact, atol=3e-5, rtol=0)


def test_inactive_rows_keep_their_estimate(backend):
    z, v, tau, t = _rows(torch.full((ROWS,), 2.0**-13, dtype=torch.float64))
    active = torch.arange(ROWS) % 2 == 0
    step, accurate, out = _run(z, v, t, active, 1.0, backend)
    assert (step[~active] == 0).all() and accurate[~active].all()
    h = (z - t[:, None]).clamp_min(0) ** 2
    torch.testing.assert_close(out[~active], ((h @ v) / h.sum(1, keepdim=True))[~active], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("offset, fold_tol, expect", [(2.0**-13, 1e-12, False), (2.0**-9, 1.0, False),
                                                      (2.0**-13, 1.0, True)])
def test_accuracy_bounds_reject(offset, fold_tol, expect, backend):
    # A tight d^2 C bound, or a step past FOLD_MAX_STEP, sends the rows back to the sweeps.
    z, v, tau, t = _rows(torch.full((ROWS,), offset, dtype=torch.float64))
    _, accurate, _ = _run(z, v, t, torch.ones(ROWS, dtype=torch.bool), fold_tol, backend)
    assert bool(accurate.all()) is expect
