"""Autograd wiring: attention_fwd's backward is the attention_bwd op; entmax's is torch math.

attention_bwd has no autograd formula of its own, so double backward through the
attention raises PyTorch's "autograd not registered" error instead of a wrong value.
"""

import torch

from adasplash_compile.reference import entmax_gradient


def attention_setup_context(ctx, inputs, output):
    query, key, value, alpha, is_causal, scale, seqlens = inputs
    _, tau, tile_max, u_value_mean = output
    ctx.save_for_backward(query, key, value, tau, tile_max, u_value_mean, seqlens)
    ctx.alpha, ctx.is_causal, ctx.scale = alpha, is_causal, scale
    ctx.mark_non_differentiable(tau, tile_max, u_value_mean)
    # The backward reads only grad_out. Materialised, the other three would be zero
    # tensors allocated and filled on every backward: u_value_mean's alone is as large as
    # the output in float32 (256 MiB at B=1, H=16, N=32768, D=128).
    ctx.set_materialize_grads(False)


def attention_gradients(ctx, saved, grad_out, attention_bwd):
    """The gradients of attention_fwd's inputs, from ``attention_bwd`` (the op or its
    implementation) applied to ``saved``: ctx.saved_tensors, from ``attention_setup_context``
    (unpacked by the caller, as each unpacking checks every saved tensor's version)."""
    if grad_out is None:
        # Without materialised gradients, an undefined grad_out stands for zeros
        # (gradcheck passes one), and so do the input gradients then.
        return None, None, None, None, None, None, None
    query, key, value, tau, tile_max, u_value_mean, seqlens = saved
    grad_query, grad_key, grad_value = attention_bwd(
        grad_out, query, key, value, tau, tile_max, u_value_mean, ctx.alpha, ctx.is_causal, ctx.scale, seqlens
    )
    return grad_query, grad_key, grad_value, None, None, None, None


def _attention_backward(ctx, grad_out, grad_tau, grad_tile_max, grad_u_value_mean):
    return attention_gradients(ctx, ctx.saved_tensors, grad_out, torch.ops.adasplash.attention_bwd)


def _entmax_setup_context(ctx, inputs, output):
    _, alpha, dim = inputs
    ctx.save_for_backward(output)
    ctx.alpha, ctx.dim = alpha, dim


def _entmax_backward(ctx, grad_y):
    (y,) = ctx.saved_tensors
    compute = torch.float64 if y.dtype == torch.float64 else torch.float32
    grad = entmax_gradient(
        grad_y.movedim(ctx.dim, -1).to(compute), y.movedim(ctx.dim, -1).to(compute), ctx.alpha
    )
    return grad.to(y.dtype).movedim(-1, ctx.dim), None, None


torch.library.register_autograd(
    "adasplash::attention_fwd", _attention_backward, setup_context=attention_setup_context
)
torch.library.register_autograd(
    "adasplash::entmax_fwd", _entmax_backward, setup_context=_entmax_setup_context
)
