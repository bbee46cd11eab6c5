"""kernels.tau.tau_tolerance: the threshold accuracy the forward settles for, per output dtype.

Pure float64 math, no kernel: moving tau by the whole tolerance (the worst a final
bracket of that width allows) must move the renormalised output by at most 1/16 of the
output dtype's unit roundoff, relative to max|v|.
"""

import pytest
import torch

from adasplash_compile.kernels.tau import TAU_TOL, tau_tolerance
from adasplash_compile.reference import entmax_probabilities, solve_tau

UNIT_ROUNDOFF = {torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11}


def test_float32_keeps_the_tight_tolerance():
    for alpha in (1.01, 1.5, 2.0):
        assert tau_tolerance(alpha, torch.float32) == TAU_TOL


def test_sixteen_bit_tolerances():
    assert tau_tolerance(1.5, torch.bfloat16) == 2.0**-15
    assert tau_tolerance(1.5, torch.float16) == 2.0**-18
    # Shrinks towards softmax, where p = g^(1/(alpha-1)) amplifies tau errors.
    assert tau_tolerance(1.05, torch.bfloat16) < tau_tolerance(1.1, torch.bfloat16) < 2.0**-15
    assert tau_tolerance(1.0001, torch.bfloat16) == TAU_TOL


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("alpha", [1.05, 1.25, 1.5, 2.0])
def test_output_moves_by_at_most_a_sixteenth_of_the_unit_roundoff(dtype, alpha):
    generator = torch.Generator().manual_seed(0)
    tol = tau_tolerance(alpha, dtype)
    worst = 0.0
    for length in (64, 1024, 4096):
        # From near-uniform rows (wide supports, the worst case) to peaked ones.
        for spread in (0.25, 1.0, 4.0, 16.0):
            z = torch.randn(16, length, generator=generator, dtype=torch.float64) * spread * (alpha - 1.0)
            v = torch.randn(length, 32, generator=generator, dtype=torch.float64)
            tau = solve_tau(z, alpha)
            out = entmax_probabilities(z, tau, alpha) @ v
            for shift in (-tol, tol):
                moved = entmax_probabilities(z, tau + shift, alpha) @ v
                worst = max(worst, ((moved - out).abs().max() / v.abs().max()).item())
    assert worst > 0.0
    assert worst <= UNIT_ROUNDOFF[dtype] / 16, f"output moved by {worst / UNIT_ROUNDOFF[dtype]:.3f} unit roundoffs"
