"""Fake (meta) implementations: output metadata only, the same input errors as eager.

They never read data and never force a symbolic size to be concrete: tile counts
come from ``options.tile_grid`` and stay symbolic under dynamic shapes.
"""

import torch

from adasplash_compile.options import tile_grid
from adasplash_compile.validation import check_attention_inputs, check_entmax_inputs, check_forward_state


@torch.library.register_fake("adasplash::attention_fwd")
def attention_fwd_fake(query, key, value, alpha, is_causal, scale, seqlens):
    check_attention_inputs(query, key, value, alpha, is_causal, seqlens)
    batch, q_heads, n_queries, _ = query.shape
    n_keys = key.shape[2]
    out = torch.empty_like(query)
    tau = query.new_empty((batch, q_heads, n_queries), dtype=torch.float32)
    tile_max = query.new_empty((batch, q_heads, *tile_grid(n_queries, n_keys)), dtype=torch.float32)
    u_value_mean = query.new_empty(query.shape, dtype=torch.float32)
    return out, tau, tile_max, u_value_mean


@torch.library.register_fake("adasplash::attention_bwd")
def attention_bwd_fake(grad_out, query, key, value, tau, tile_max, u_value_mean, alpha, is_causal, scale, seqlens):
    check_attention_inputs(query, key, value, alpha, is_causal, seqlens)
    check_forward_state(query, key, grad_out, tau, tile_max, u_value_mean)
    return torch.empty_like(query), torch.empty_like(key), torch.empty_like(value)


@torch.library.register_fake("adasplash::entmax_fwd")
def entmax_fwd_fake(x, alpha, dim):
    check_entmax_inputs(x, alpha, dim)
    return torch.empty_like(x)
