"""benchmarks/sweep_model.py: its bracket update keeps tau inside, against the reference's tau."""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import sweep_model  # noqa: E402
import tile_model  # noqa: E402

from adasplash_compile.reference import solve_tau  # noqa: E402


def _rows(spread, n_keys=700, rows=48, seed=0):
    generator = torch.Generator().manual_seed(seed)
    z = spread * torch.randn(rows, n_keys, generator=generator, dtype=torch.float64)
    return z - z.amax(1, keepdim=True)


@pytest.mark.parametrize("spread", [0.05, 0.5, 3.0])
@pytest.mark.parametrize("plan", ["u4,c4", "c2", "u8,c8,c4", "u4,g4", "g2,g8"])
def test_every_sweep_keeps_tau_inside_the_bracket(spread, plan):
    y = _rows(spread)
    tau = solve_tau(y, 1.5)[:, 0]
    lo = torch.full_like(tau, -1.0)
    hi = torch.full_like(tau, -y.shape[1] ** -0.5)
    width = hi - lo
    _, sweeps = sweep_model.parse_plan(plan)
    for edges, kind in sweeps:
        points = lo[:, None] + (hi - lo)[:, None] * torch.arange(edges, dtype=y.dtype) / (edges - 1)
        lo, hi, estimate, _ = sweep_model.update_bracket(lo, hi, *sweep_model.edge_statistics(y, points), kind)
        assert bool((lo <= tau + 1e-12).all()) and bool((tau <= hi + 1e-12).all())
        assert bool((lo <= estimate).all()) and bool((estimate <= hi).all())
    assert bool((hi - lo < width).all())


def test_counted_sweep_is_exact_where_no_entry_lies_inside_the_sub_bracket():
    # Five entries at 0 and the rest far below: tau = -1/sqrt(5). With edges at -1, -0.55
    # and -0.1, tau lies in [-0.55, -0.1] and no entry does, so the closed form is exact.
    y = torch.full((1, 64), -5.0, dtype=torch.float64)
    y[0, :5] = 0.0
    points = torch.tensor([[-1.0, -0.55, -0.1]], dtype=torch.float64)
    lo, hi, estimate, done = sweep_model.update_bracket(
        torch.tensor([-1.0], dtype=torch.float64), torch.tensor([-0.1], dtype=torch.float64),
        *sweep_model.edge_statistics(y, points), "c")
    assert bool(done[0])
    assert float(estimate[0]) == pytest.approx(-5 ** -0.5, abs=1e-14)
    # From the chord of G the count is the same there, so the estimate too, but no row ends.
    _, _, estimate, done = sweep_model.update_bracket(
        torch.tensor([-1.0], dtype=torch.float64), torch.tensor([-0.1], dtype=torch.float64),
        *sweep_model.edge_statistics(y, points), "g")
    assert not bool(done[0])
    assert float(estimate[0]) == pytest.approx(-5 ** -0.5, abs=1e-14)


def test_the_forward_plan_folds_mid_blocks_where_one_sweep_of_four_edges_does_not():
    outcomes = sweep_model.plan_outcomes("mid", 2048, ["u4,g4", "u4,c4", "c4", "u4,u4"], blocks=4)
    for plan in ("u4,g4", "u4,c4"):
        folds, blocks, misses, reopened, fitting = outcomes[plan]
        assert (folds, blocks, misses, reopened, fitting) == (4, 4, 0, 0, 4)
    # Without counts or the chord, the second sweep leaves rows past the fold's bound.
    for plan in ("c4", "u4,u4"):
        assert outcomes[plan][0] < 4 and outcomes[plan][2] > 0


def test_band_counts_the_entries_inside_the_last_bracket_of_unconverged_rows():
    # Row 0: ten entries spread over [-0.45, 0], not converged by one 2-edge sweep without
    # counts; row 1: one entry at 0, so tau = -1, the bracket's lower end, and the sweep
    # ends it. The band is row 0's entries inside its new bracket.
    y = torch.full((2, 64), -3.0, dtype=torch.float64)
    y[0, :10] = torch.linspace(-0.45, 0.0, 10, dtype=torch.float64)
    y[1, 0] = 0.0
    tau = solve_tau(y, 1.5)[:, 0]
    lo = torch.tensor([-1.0, -1.0], dtype=torch.float64)
    hi = torch.tensor([-0.05, -0.05], dtype=torch.float64)
    _, sweeps = sweep_model.parse_plan("u2")
    folds, misses, reopened, band = sweep_model.run_plan(y, tau, lo, hi, None, sweeps)
    points = lo[:, None] + (hi - lo)[:, None] * torch.arange(2, dtype=y.dtype)
    new_lo, new_hi, _, done = sweep_model.update_bracket(lo, hi, *sweep_model.edge_statistics(y, points), "u")
    expected = ((y[0] > new_lo[0]) & (y[0] <= new_hi[0])).sum().item()
    assert not bool(done[0]) and expected > 0
    assert band == expected


@pytest.mark.parametrize("plan", ["", "low=0.2", "x4", "c1", "c4,,u4"])
def test_rejects_a_plan_it_cannot_run(plan):
    with pytest.raises(ValueError, match="plan: expected"):
        sweep_model.parse_plan(plan)


def test_the_histogram_lifts_the_local_floor_and_both_stay_below_tau():
    query, key, scale = tile_model.head_inputs("dense", 1024)
    for block in (8, 15):
        y, tau, lifted, _ = sweep_model.block_rows(query, key, block, scale)
        _, _, local, _ = sweep_model.block_rows(query, key, block, scale, "local")
        assert (local <= lifted).all() and (lifted <= tau + 1e-12).all()
        # Dense scores spread a row's largest entries over its tiles: the bins lift it.
        assert (lifted > local + 1e-3).float().mean() > 0.5
