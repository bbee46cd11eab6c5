"""The CPU reference against the independent float64 oracle, and entmax invariants."""

import pytest
import torch
from entmax import entmax_bisect, sparsemax

from adasplash_compile import reference
from adasplash_compile.options import TILE_M, TILE_N
from tests.oracle import dense_mask, entmax_attention, relative_error, u_value_mean

CASES = [
    # (B, Hq, Hkv, M, N, D, is_causal, seqlens)
    (2, 4, 2, 37, 130, 16, False, None),
    (2, 4, 2, 130, 37, 16, True, None),
    (1, 3, 1, 129, 129, 8, True, [100]),
    (2, 2, 2, 70, 70, 24, False, [0, 500]),
    (1, 2, 1, 1, 1, 8, True, None),
]


def _inputs(b, hq, hkv, m, n, d, dtype=torch.float32):
    return (
        torch.randn(b, hq, m, d, dtype=dtype),
        torch.randn(b, hkv, n, d, dtype=dtype),
        torch.randn(b, hkv, n, d, dtype=dtype),
    )


@pytest.mark.parametrize("alpha", [1.25, 1.5, 2.0])
@pytest.mark.parametrize("case", CASES)
def test_forward_matches_entmax_bisect(alpha, case):
    b, hq, hkv, m, n, d, causal, lengths = case
    seqlens = None if lengths is None else torch.tensor(lengths)
    q, k, v = _inputs(b, hq, hkv, m, n, d)
    out, tau, _, u_mean = reference.attention_forward(q, k, v, alpha, causal, 0.5, seqlens)
    expected, _ = entmax_attention(q, k, v, alpha, causal, 0.5, seqlens)
    assert (out.double() - expected).abs().max().item() <= 1e-5
    if alpha == 1.5:
        assert (u_mean.double() - u_value_mean(q, k, v, alpha, causal, 0.5, seqlens)).abs().max().item() <= 1e-5
    else:
        assert (u_mean == 0).all()
    empty = ~dense_mask(b, m, n, causal, seqlens).any(-1).expand(b, hq, m)
    assert torch.isinf(tau[empty]).all() and torch.isfinite(tau[~empty]).all()
    assert (out[empty.unsqueeze(-1).expand_as(out)] == 0).all()
    assert (u_mean[empty.unsqueeze(-1).expand_as(u_mean)] == 0).all()


@pytest.mark.parametrize("alpha", [1.25, 1.5, 2.0])
@pytest.mark.parametrize("case", CASES[:4])
def test_backward_matches_entmax_bisect_autograd(alpha, case):
    b, hq, hkv, m, n, d, causal, lengths = case
    seqlens = None if lengths is None else torch.tensor(lengths)
    q, k, v = _inputs(b, hq, hkv, m, n, d)
    grad_out = torch.randn(b, hq, m, d)
    tau = reference.attention_forward(q, k, v, alpha, causal, 0.5, seqlens)[1]
    grads = reference.attention_backward(grad_out, q, k, v, tau, alpha, causal, 0.5, seqlens)
    expected, leaves = entmax_attention(
        q.requires_grad_(), k.requires_grad_(), v.requires_grad_(), alpha, causal, 0.5, seqlens
    )
    expected.backward(grad_out.double())
    for actual, leaf in zip(grads, leaves):
        assert relative_error(actual, leaf.grad) <= 1e-5


def test_tile_max_is_max_of_support_scores_per_tile():
    q, k, v = _inputs(1, 2, 2, 150, 200, 16)
    # Each row attends mostly to its diagonal key (bottom-right causal alignment: row i
    # sees keys <= i + 50), so tile (1, 0) is visible but holds no nonzero of P.
    k[:, :, :64] *= 0.01  # rows 64.. score ~0 on keys 0..63, far below their diagonal
    q = 0.1 * q + 8.0 * k[:, :, 50:]
    alpha, scale = 1.5, 0.25
    _, tau, tile_max, _ = reference.attention_forward(q, k, v, alpha, True, scale, torch.tensor([180]))
    z = (alpha - 1) * scale * q.double() @ k.double().transpose(-1, -2)
    z = z.masked_fill(~dense_mask(1, 150, 200, True, torch.tensor([180])), float("-inf"))
    support = z > tau.double()[..., None]
    assert tile_max.shape == (1, 2, 4, 5)  # one padding row and column of -inf
    assert torch.isneginf(tile_max[:, :, 3]).all() and torch.isneginf(tile_max[:, :, :, 4]).all()
    visible_empty = 0
    for i in range(3):
        for j in range(4):
            rows, cols = slice(i * TILE_M, (i + 1) * TILE_M), slice(j * TILE_N, (j + 1) * TILE_N)
            block = z[:, :, rows, cols].masked_fill(~support[:, :, rows, cols], float("-inf"))
            torch.testing.assert_close(tile_max[:, :, i, j].double(), block.amax((-1, -2)), atol=1e-5, rtol=1e-5)
            visible = (z[:, :, rows, cols] > float("-inf")).flatten(2).any(-1)
            visible_empty += int((visible & torch.isneginf(tile_max[:, :, i, j])).sum())
    assert torch.isneginf(tile_max[:, :, 0, 3]).all()  # rows 0..63 see keys <= 113 only
    # Visible tiles without a nonzero of P read -inf, not their max z.
    assert visible_empty > 0


def test_rows_are_processed_in_chunks(monkeypatch):
    """Memory stays O(chunk * N): force a 64-row chunk and get the same numbers."""
    q, k, v = _inputs(1, 2, 1, 200, 90, 16)
    whole = reference.attention_forward(q, k, v, 1.5, True, 0.3, None)
    monkeypatch.setattr(reference, "_CHUNK_ELEMENTS", 1)
    assert reference._row_chunk(2, 90, 200) == TILE_M
    chunked = reference.attention_forward(q, k, v, 1.5, True, 0.3, None)
    for a, b in zip(whole, chunked):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("alpha", [1.01, 1.1, 1.5, 1.9, 2.0])
def test_entmax_forward_matches_bisect(alpha):
    x = 3 * torch.randn(6, 5, 33, dtype=torch.float64)
    y = reference.entmax_forward(x, alpha, dim=1)
    torch.testing.assert_close(y, entmax_bisect(x, alpha, dim=1, n_iter=100), rtol=0, atol=1e-10)
    torch.testing.assert_close(y.sum(1), torch.ones(6, 33, dtype=torch.float64))


def test_alpha_two_is_sparsemax_and_support_is_sparse():
    x = torch.randn(8, 50, dtype=torch.float64)
    y = reference.entmax_forward(x, 2.0, dim=-1)
    torch.testing.assert_close(y, sparsemax(x, dim=-1), rtol=0, atol=1e-12)
    assert (y == 0).sum() > 0


def test_alpha_near_one_approaches_softmax():
    x = torch.randn(4, 20, dtype=torch.float64)
    gap = [
        (reference.entmax_forward(x, a, dim=-1) - torch.softmax(x, -1)).abs().max().item()
        for a in (1.2, 1.05, 1.01)
    ]
    assert gap[0] > gap[1] > gap[2] and gap[2] < 1e-2


def test_zeros_match_reference_support():
    x = torch.randn(16, 40, dtype=torch.float64)
    y = reference.entmax_forward(x, 1.5, dim=-1)
    expected = entmax_bisect(x, 1.5, n_iter=100)
    assert torch.equal(y > 1e-12, expected > 1e-12)


def test_solve_tau_of_empty_row_is_inf():
    z = torch.full((2, 5), float("-inf"), dtype=torch.float64)
    z[1, 2] = 0.3
    tau = reference.solve_tau(z, 1.5)
    assert torch.isposinf(tau[0]).all()
    torch.testing.assert_close(tau[1], torch.tensor([0.3 - 1.0], dtype=torch.float64))
