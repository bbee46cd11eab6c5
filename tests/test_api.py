"""Public API behaviour on the CPU path: shapes, masking, GQA, strides, dtypes."""

import pytest
import torch
from entmax import entmax_bisect

import adasplash_compile
from adasplash_compile import adasplash, entmax
from tests.oracle import entmax_attention, relative_error


def test_version_is_exported():
    assert adasplash_compile.__version__ == "0.1.0"


@pytest.mark.parametrize("dtype, atol", [(torch.float32, 1e-5), (torch.float64, 1e-12)])
def test_output_matches_oracle_with_default_scale(dtype, atol):
    q, k, v = (torch.randn(2, 4, 45, 32, dtype=dtype) for _ in range(3))
    out = adasplash(q, k, v)
    expected, _ = entmax_attention(q, k, v)
    assert out.dtype == dtype and out.shape == q.shape
    assert (out.double() - expected).abs().max().item() <= atol


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_keeps_dtype_and_accuracy(dtype):
    q, k, v = (torch.randn(1, 2, 40, 16, dtype=dtype) for _ in range(3))
    out = adasplash(q, k, v, is_causal=True)
    expected, _ = entmax_attention(q, k, v, is_causal=True)
    assert out.dtype == dtype
    assert (out.double() - expected).abs().max().item() <= {torch.float16: 2e-2, torch.bfloat16: 4e-2}[dtype]


def test_transposed_views_work_without_contiguous():
    q, k, v = (torch.randn(2, 33, 4, 16).transpose(1, 2) for _ in range(3))
    assert not q.is_contiguous()
    out = adasplash(q, k, v, is_causal=True, alpha=1.25)
    expected, _ = entmax_attention(q, k, v, alpha=1.25, is_causal=True)
    assert (out.double() - expected).abs().max().item() <= 1e-5
    assert out.stride() == q.stride()  # the output keeps the query's layout


def test_gqa_matches_explicitly_repeated_heads():
    q = torch.randn(1, 6, 20, 8)
    k, v = torch.randn(1, 2, 20, 8), torch.randn(1, 2, 20, 8)
    out = adasplash(q, k, v)
    repeated = adasplash(q, k.repeat_interleave(3, 1), v.repeat_interleave(3, 1))
    torch.testing.assert_close(out, repeated, rtol=0, atol=1e-6)


def test_causal_is_bottom_right_aligned_and_empty_rows_are_zero():
    q, k, v = torch.randn(1, 1, 10, 8), torch.randn(1, 1, 4, 8), torch.randn(1, 1, 4, 8)
    out = adasplash(q, k, v, is_causal=True)
    # Row i sees keys j <= i + 4 - 10: rows 0..5 see nothing.
    assert (out[0, 0, :6] == 0).all() and not torch.isnan(out).any()
    # The last row sees every key, so it equals non-causal attention for that row.
    torch.testing.assert_close(out[0, 0, -1], adasplash(q, k, v)[0, 0, -1])


def test_seqlens_masks_padding_and_zeroes_its_gradients():
    q, k, v = (torch.randn(2, 2, 12, 8, requires_grad=True) for _ in range(3))
    seqlens = torch.tensor([7, 12], dtype=torch.int32)
    out = adasplash(q, k, v, seqlens=seqlens)
    assert (out[0, :, 7:] == 0).all()
    # Padded keys are invisible: changing them does not change the valid rows.
    k2 = k.detach().clone()
    k2[0, :, 7:] = 100.0
    torch.testing.assert_close(adasplash(q, k2, v, seqlens=seqlens)[0, :, :7], out[0, :, :7])
    out.sum().backward()
    assert (q.grad[0, :, 7:] == 0).all() and (k.grad[0, :, 7:] == 0).all() and (v.grad[0, :, 7:] == 0).all()
    assert q.grad[0, :, :7].abs().sum() > 0


def test_backward_matches_oracle():
    q = torch.randn(1, 4, 30, 16, requires_grad=True)
    k, v = (torch.randn(1, 2, 50, 16, requires_grad=True) for _ in range(2))
    out = adasplash(q, k, v, is_causal=True, alpha=1.75)
    grad = torch.randn_like(out)
    out.backward(grad)
    expected, leaves = entmax_attention(q, k, v, alpha=1.75, is_causal=True)
    expected.backward(grad.double())
    for t, leaf in zip((q, k, v), leaves):
        assert relative_error(t.grad, leaf.grad) <= 1e-5


def test_gradcheck_in_float64():
    q, k, v = (torch.randn(1, 2, 9, 8, dtype=torch.float64, requires_grad=True) for _ in range(3))
    assert torch.autograd.gradcheck(lambda q, k, v: adasplash(q, k, v, is_causal=True), (q, k, v))


def test_most_probabilities_are_exactly_zero():
    x = 4 * torch.randn(8, 200)
    p = entmax(x)
    assert (p == 0).float().mean() > 0.5
    torch.testing.assert_close(p.sum(-1), torch.ones(8))


@pytest.mark.parametrize("alpha", [1.25, 1.5, 2.0])
@pytest.mark.parametrize("dim", [0, 1, -1])
def test_entmax_matches_bisect_forward_and_backward(alpha, dim):
    x = torch.randn(5, 7, 9, dtype=torch.float64, requires_grad=True)
    y = entmax(x, alpha=alpha, dim=dim)
    x_ref = x.detach().clone().requires_grad_()
    y_ref = entmax_bisect(x_ref, alpha, dim=dim, n_iter=100)
    torch.testing.assert_close(y, y_ref, rtol=0, atol=1e-12)
    grad = torch.randn_like(y)
    y.backward(grad)
    y_ref.backward(grad)
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=0, atol=1e-10)


def test_entmax_of_all_masked_row_is_zero():
    x = torch.full((2, 4), float("-inf"))
    x[1, 0] = 0.0
    y = entmax(x)
    assert (y[0] == 0).all() and torch.equal(y[1], torch.tensor([1.0, 0, 0, 0]))
