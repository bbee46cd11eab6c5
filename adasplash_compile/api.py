"""Public functions: AdaSplash-2 attention and standalone alpha-entmax."""

from typing import Optional

import torch
from torch import Tensor

from adasplash_compile import eager
from adasplash_compile.validation import (
    check_attention_inputs,
    check_entmax_inputs,
    check_scale,
)


def adasplash(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    *,
    alpha: float = 1.5,
    is_causal: bool = False,
    scale: Optional[float] = None,
    seqlens: Optional[Tensor] = None,
) -> Tensor:
    r"""AdaSplash-2 attention: ``entmax_alpha(scale * query @ key^T) @ value``.

    Each query row i gets ``p_ij = [(alpha-1) s_ij - tau_i]_+^(1/(alpha-1))`` with the
    threshold ``tau_i`` chosen so the row sums to one. Most ``p_ij`` are exactly zero;
    on CUDA the kernels skip every 64x64 tile of zeros, forward and backward.

    Shape legend: B batch, Hq query heads, Hkv key/value heads, Nq query length,
    Nk key length, D head dim.

    Args:
        query: ``(B, Hq, Nq, D)``. Any strides: a transposed ``(B, Nq, Hq, D)`` view works
            without ``.contiguous()``.
        key: ``(B, Hkv, Nk, D)``; ``Hq % Hkv == 0`` gives GQA/MQA, query head h using
            key/value head ``h // (Hq // Hkv)``.
        value: ``(B, Hkv, Nk, D)``.
        alpha: entmax order in (1, 2]. 1.5 is the default, 2 is sparsemax, and alpha -> 1
            approaches softmax.
        is_causal: mask future keys. With ``Nq != Nk`` the mask is aligned bottom-right,
            as in FlashAttention-2: query i sees keys ``j <= i + Nk - Nq``.
        scale: score scale; ``1 / sqrt(D)`` when None.
        seqlens: optional int32/int64 ``(B,)`` valid lengths (right padding). Keys at index
            ``>= seqlens[b]`` are masked; when ``Nq == Nk``, query rows ``>= seqlens[b]``
            output zeros and receive zero gradients. Negative values raise on CPU; on CUDA,
            where checking would cost a device sync, they are clamped to 0.

    Returns:
        ``(B, Hq, Nq, D)`` in the query's dtype. A row that sees no key outputs zeros.

    D must be a multiple of 8 up to 256. dtypes: float32, float16, bfloat16 (and float64
    on the CPU reference).
    """
    alpha = check_attention_inputs(query, key, value, alpha, is_causal, seqlens)
    scale = check_scale(scale, query.shape[-1])
    # The op and the eager path run the same implementation; the latter skips the
    # dispatcher's Python layers where nothing observes the op (adasplash_compile/eager.py).
    if eager.plain_call_allowed(query, key, value, seqlens):
        outputs = eager.attention(query, key, value, alpha, is_causal, scale, seqlens)
    else:
        outputs = torch.ops.adasplash.attention_fwd(query, key, value, alpha, is_causal, scale, seqlens)
    return outputs[0]


def entmax(x: Tensor, alpha: float = 1.5, dim: int = -1) -> Tensor:
    r"""Differentiable alpha-entmax along ``dim``: ``[(alpha-1) x - tau]_+^(1/(alpha-1))``.

    Rows sum to one, as ``entmax.entmax_bisect(x, alpha, dim)``; alpha in (1, 2], with
    alpha=2 sparsemax. A row of all ``-inf`` gives zeros. Output has x's dtype and shape.
    """
    alpha = check_entmax_inputs(x, alpha, dim)
    return torch.ops.adasplash.entmax_fwd(x, alpha, dim)
