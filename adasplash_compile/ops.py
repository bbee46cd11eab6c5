"""torch.library registration of the adasplash ops and their device implementations.

Ops (namespace ``adasplash``):
- ``attention_fwd(query, key, value, alpha, is_causal, scale, seqlens)
  -> (out, tau, tile_max, u_value_mean)``
- ``attention_bwd(grad_out, query, key, value, tau, tile_max, u_value_mean, alpha, is_causal, scale,
  seqlens) -> (grad_query, grad_key, grad_value)``
- ``entmax_fwd(x, alpha, dim) -> y``

``tau`` is float32 (B, Hq, Nq) in units of z = (alpha-1)*scale*q.k (+inf for rows that
see no key); ``tile_max`` and ``u_value_mean`` are described in ``adasplash_compile.options``
(the CPU reference recomputes the backward's DELTA instead of reading u_value_mean, as it
recomputes P instead of reading tile_max). CUDA tensors
run the Triton kernels; CPU tensors run the pure-PyTorch reference, or the Triton
kernels under the interpreter when ``ADASPLASH_COMPILE_BACKEND=triton``. float64
always runs the reference (it is the gold dtype; the kernels do not take it).
Triton is imported lazily, so importing this module needs no GPU driver.
"""

from typing import Optional

import torch
from torch import Tensor

from adasplash_compile import reference
from adasplash_compile.options import cpu_uses_triton
from adasplash_compile.validation import (
    check_attention_inputs,
    check_entmax_inputs,
    check_forward_state,
    check_no_negative_seqlens,
)


def uses_triton(tensor: Tensor) -> bool:
    if tensor.dtype == torch.float64:
        return False
    return tensor.device.type == "cuda" or (tensor.device.type == "cpu" and cpu_uses_triton())


def run_attention_forward(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    alpha: float,
    is_causal: bool,
    scale: float,
    seqlens: Optional[Tensor],
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """attention_fwd's implementation, also called by the eager path (eager.py)."""
    check_attention_inputs(query, key, value, alpha, is_causal, seqlens)
    check_no_negative_seqlens(seqlens)
    if uses_triton(query):
        from adasplash_compile.kernels.forward import attention_forward

        return attention_forward(query, key, value, alpha, is_causal, scale, seqlens)
    return reference.attention_forward(query, key, value, alpha, is_causal, scale, seqlens)


def run_attention_backward(
    grad_out: Tensor,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    tau: Tensor,
    tile_max: Tensor,
    u_value_mean: Tensor,
    alpha: float,
    is_causal: bool,
    scale: float,
    seqlens: Optional[Tensor],
) -> tuple[Tensor, Tensor, Tensor]:
    """attention_bwd's implementation, also called by the eager path (eager.py)."""
    check_attention_inputs(query, key, value, alpha, is_causal, seqlens)
    check_forward_state(query, key, grad_out, tau, tile_max, u_value_mean)
    if uses_triton(query):
        from adasplash_compile.kernels.backward import attention_backward

        return attention_backward(
            grad_out, query, key, value, tau, tile_max, u_value_mean, alpha, is_causal, scale, seqlens
        )
    return reference.attention_backward(
        grad_out, query, key, value, tau, alpha, is_causal, scale, seqlens
    )


attention_fwd = torch.library.custom_op("adasplash::attention_fwd", run_attention_forward, mutates_args=())
attention_bwd = torch.library.custom_op("adasplash::attention_bwd", run_attention_backward, mutates_args=())


@torch.library.custom_op("adasplash::entmax_fwd", mutates_args=())
def entmax_fwd(x: Tensor, alpha: float, dim: int) -> Tensor:
    check_entmax_inputs(x, alpha, dim)
    if uses_triton(x):
        from adasplash_compile.kernels.entmax import entmax_forward

        return entmax_forward(x, alpha, dim)
    return reference.entmax_forward(x, alpha, dim)
