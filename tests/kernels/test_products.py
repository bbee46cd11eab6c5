"""kernels/products.py: tile_dot against float64 matrix products of the same operands.

Under the interpreter, a plain tl.dot of bfloat16 operands is off by orders of magnitude
(triton 3.9), so the bfloat16 cases fail there without the twin; float16 and float32
check that the twin leaves the other dtypes alone, on both backends.
"""

import pytest
import torch
import triton
import triton.language as tl

from adasplash_compile.kernels.products import tile_dot
from tests.conftest import BOTH_BACKENDS, DEVICE

pytestmark = BOTH_BACKENDS


@triton.jit
def _products(a_ptr, b_ptr, acc_ptr, out_ptr, out_acc_ptr, M: tl.constexpr, N: tl.constexpr, K: tl.constexpr,
              INPUT_PRECISION: tl.constexpr):
    rows, cols, inner = tl.arange(0, M), tl.arange(0, N), tl.arange(0, K)
    a = tl.load(a_ptr + rows[:, None] * K + inner[None, :])
    b = tl.load(b_ptr + inner[:, None] * N + cols[None, :])
    acc = tl.load(acc_ptr + rows[:, None] * N + cols[None, :])
    tl.store(out_ptr + rows[:, None] * N + cols[None, :], tile_dot(a, b, None, INPUT_PRECISION))
    tl.store(out_acc_ptr + rows[:, None] * N + cols[None, :], tile_dot(a, b, acc, INPUT_PRECISION))


@pytest.mark.parametrize("dtype, precision", [(torch.bfloat16, "tf32"), (torch.float16, "tf32"),
                                              (torch.float32, "ieee")], ids=["bf16", "fp16", "fp32"])
def test_tile_dot_matches_float64_products(backend, dtype, precision):
    torch.manual_seed(0)
    m, n, k = 32, 16, 64
    a = torch.randn(m, k, device=DEVICE).to(dtype)
    b = torch.randn(k, n, device=DEVICE).to(dtype)
    acc = torch.randn(m, n, device=DEVICE)
    out, out_acc = (torch.empty(m, n, device=DEVICE) for _ in range(2))
    _products[(1,)](a, b, acc, out, out_acc, M=m, N=n, K=k, INPUT_PRECISION=precision)
    exact = a.double() @ b.double()
    # The products of 16-bit operands are exact in float32; only the float32 sums round
    # (64 terms: at most about 4e-6 of the sum of magnitudes).
    bound = 1e-4 * (a.double().abs() @ b.double().abs() + acc.double().abs())
    assert ((out.double() - exact).abs() <= bound).all()
    assert ((out_acc.double() - (exact + acc.double())).abs() <= bound).all()
