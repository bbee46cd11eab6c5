"""The low first sweep of dense row blocks (kernels/low_bracket.py).

The rule and the reopening run in a small test kernel against the same arithmetic in
torch. The forward on dense scores runs under the interpreter with the rule made to take
row blocks of 512 keys for 2048, where TAU often lies above the low bracket, so that the
reopening carries the result, and with the rule switched off, against the float64 oracle
and each other. The fold after one low sweep, at 2048 keys and more, runs in the GPU
tests on Gaussian scores (tests/kernels/test_forward.py) and in benchmarks/compare_builds.py.
"""

import pytest
import torch
import triton
import triton.language as tl

from adasplash_compile.kernels import forward as forward_module
from adasplash_compile.kernels.forward import attention_forward, default_forward_config
from adasplash_compile.kernels.low_bracket import LOW_BRACKET, MIN_KEYS, low_top, reopen_above, starts_low
from adasplash_compile.kernels.tau import tau_tolerance
from tests.conftest import BOTH_BACKENDS, DEVICE
from tests.kernels.test_forward import check_forward, make_qkv

ROWS = 16


@triton.jit
def _low_bracket(lo_ptr, hi_ptr, local_lo_ptr, keys_ptr, active_ptr, swept_lo_ptr, low_ptr, top_ptr, out_ptr,
                 ROWS: tl.constexpr):
    rows = tl.arange(0, ROWS)
    lo = tl.load(lo_ptr + rows)
    hi = tl.load(hi_ptr + rows)
    active = tl.load(active_ptr + rows) != 0
    low = starts_low(lo, hi, tl.load(local_lo_ptr + rows), tl.load(keys_ptr + rows), active)
    top = low_top(lo, hi, active, low)
    tl.store(low_ptr, low.to(tl.int32))
    tl.store(top_ptr + rows, top)
    # A sweep over [lo, top] leaves swept_lo; rows at top end there with hi = top, inactive.
    swept_lo = tl.load(swept_lo_ptr + rows)
    at_top = swept_lo >= top
    lo2, hi2, tau2, active2, reopened = reopen_above(swept_lo, tl.where(at_top, top, swept_lo + 1e-3),
                                                     tl.where(at_top, top, swept_lo), active & ~at_top, top, hi)
    tl.store(out_ptr + rows, lo2)
    tl.store(out_ptr + ROWS + rows, hi2)
    tl.store(out_ptr + 2 * ROWS + rows, tau2)
    tl.store(out_ptr + 3 * ROWS + rows, active2.to(tl.float32))
    tl.store(out_ptr + 4 * ROWS, reopened.to(tl.float32))


def _run(lo, hi, local_lo, active, swept_lo, backend, keys=None):
    device = DEVICE if backend == "gpu" else "cpu"
    keys = torch.full((ROWS,), MIN_KEYS.value, dtype=torch.int32) if keys is None else keys
    low = torch.zeros(1, dtype=torch.int32, device=device)
    top = torch.empty(ROWS, device=device)
    out = torch.empty(4 * ROWS + 1, device=device)
    _low_bracket[(1,)](lo.to(device), hi.to(device), local_lo.to(device), keys.to(device), active.int().to(device),
                       swept_lo.to(device), low, top, out, ROWS=ROWS)
    out = out.cpu()
    return bool(low.item()), top.cpu(), out[:ROWS], out[ROWS:2 * ROWS], out[2 * ROWS:3 * ROWS], \
        out[3 * ROWS:4 * ROWS].bool(), int(out[4 * ROWS].item())


@BOTH_BACKENDS
@pytest.mark.parametrize("lifted_rows", [14, 13])
def test_a_block_starts_low_when_seven_eighths_of_its_active_rows_were_lifted(backend, lifted_rows):
    hi = torch.full((ROWS,), -0.01)
    local_lo = torch.full((ROWS,), -0.5)
    lo = local_lo.clone()
    lo[:lifted_rows] = -0.3  # lifted by 0.2 / 0.49 of [local floor, hi]
    active = torch.ones(ROWS, dtype=torch.bool)
    low, top, *_ = _run(lo, hi, local_lo, active, lo, backend)
    assert low == (lifted_rows * 8 >= 7 * ROWS)
    expected = lo + LOW_BRACKET.value * (hi - lo) if low else hi
    torch.testing.assert_close(top, expected)


@BOTH_BACKENDS
def test_inactive_rows_and_small_lifts_do_not_count(backend):
    hi = torch.full((ROWS,), -0.01)
    local_lo = torch.full((ROWS,), -0.5)
    lo = torch.full((ROWS,), -0.3)
    lo[:4] = -0.49  # lifted by 0.01 / 0.49: under LIFT
    active = torch.ones(ROWS, dtype=torch.bool)
    assert not _run(lo, hi, local_lo, active, lo, backend)[0]
    active[:4] = False  # the same block without those rows starts low; their top stays hi
    low, top, *_ = _run(lo, hi, local_lo, active, lo, backend)
    assert low
    assert torch.equal(top[:4], hi[:4]) and (top[4:] < hi[4:]).all()
    keys = torch.full((ROWS,), MIN_KEYS.value, dtype=torch.int32)
    keys[7] -= 1  # one row of the block sees too few keys
    assert not _run(lo, hi, local_lo, active, lo, backend, keys)[0]
    active[7] = False  # unless it is inactive
    assert _run(lo, hi, local_lo, active, lo, backend, keys)[0]
    active[:] = False
    assert not _run(lo, hi, local_lo, active, lo, backend)[0]


@BOTH_BACKENDS
def test_rows_that_end_at_the_low_top_are_reopened_to_the_full_bracket(backend):
    hi = torch.full((ROWS,), -0.01)
    local_lo = torch.full((ROWS,), -0.5)
    lo = torch.full((ROWS,), -0.3)
    active = torch.ones(ROWS, dtype=torch.bool)
    top = lo + LOW_BRACKET.value * (hi - lo)
    swept_lo = lo + 0.5 * (top - lo)
    swept_lo[3] = top[3]
    swept_lo[9] = top[9]
    low, top_out, lo2, hi2, tau2, active2, reopened = _run(lo, hi, local_lo, active, swept_lo, backend)
    assert low and reopened == 2
    torch.testing.assert_close(top_out, top)
    again = torch.zeros(ROWS, dtype=torch.bool)
    again[[3, 9]] = True
    assert torch.equal(lo2[again], top[again]) and torch.equal(hi2[again], hi[again])
    assert torch.equal(tau2[again], hi[again]) and active2[again].all()
    # The others keep what the sweep left them.
    assert torch.equal(lo2[~again], swept_lo[~again]) and active2[~again].all()
    torch.testing.assert_close(hi2[~again], swept_lo[~again] + 1e-3)


@pytest.mark.interpret
def test_dense_blocks_start_low_and_reopen_rows_above_the_low_bracket(monkeypatch):
    q, k, v = make_qkv(1, 2, 2, 1024, 1024, 64, torch.float16, device="cpu")
    scale = 64**-0.5
    decisions, reopened_rows = [], []
    rule, reopen = forward_module.starts_low, forward_module.reopen_above

    def rule_at_four_times_the_keys(lo, hi, local_lo, n_keys, active):
        low = rule.fn(lo, hi, local_lo, n_keys * 4, active)
        decisions.append(bool(low))
        return low

    def recording_reopen(*args):
        result = reopen.fn(*args)
        reopened_rows.append(int(result[-1]))
        return result

    # Under the interpreter the kernel resolves its helpers through the module.
    monkeypatch.setattr(forward_module, "starts_low", rule_at_four_times_the_keys)
    monkeypatch.setattr(forward_module, "reopen_above", recording_reopen)
    # The threshold/output kernel's own path: dense blocks would take candidate lists.
    config = dict(default_forward_config(64, torch.float16), NO_CANDIDATES=True)
    out, tau, tile_max, _ = check_forward(q, k, v, 1.5, True, scale, None, config=config)
    assert sum(decisions) >= 8, f"only {sum(decisions)} of {len(decisions)} dense row blocks started low"
    assert sum(r > 0 for r in reopened_rows) >= 4, reopened_rows

    monkeypatch.setattr(forward_module, "starts_low",
                        lambda lo, hi, local_lo, n_keys, active: rule.fn(lo, hi, lo, n_keys, active))
    plain_out, plain_tau, plain_tile_max, _ = attention_forward(q, k, v, 1.5, True, scale, None, config=config)
    torch.testing.assert_close(tau, plain_tau, atol=tau_tolerance(1.5, torch.float16), rtol=0)
    torch.testing.assert_close(out, plain_out, atol=2.0**-11, rtol=2.0**-10)
    assert torch.equal(torch.isfinite(tile_max), torch.isfinite(plain_tile_max))
