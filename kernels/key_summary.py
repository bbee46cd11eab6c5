"""A centre and a radius per 64-key tile: a cheap upper bound on a whole tile of scores.

For key tile J with centre c_J (stored in the keys' dtype) and radius
r_J = max over its visible keys j of |k_j - c_J| (float32), Cauchy-Schwarz gives, for
every query q and every key j of the tile,

    q.k_j = q.c_J + q.(k_j - c_J) <= q.c_J + |q| r_J.

So one (64 x D) x (D x 64) product of a query block with 64 centres bounds 64 whole
tiles of Q.K^T at 1/64 of their cost. The forward's max sweep (kernels/forward.py) uses
the bound to skip key tiles whose every score lies more than 1 below the row's max:
those tiles hold no nonzero of P (tau >= max z - 1) and not the max. Where keys vary
slowly along the sequence (local attention), a tile's keys are close together, the
radius is small and the bound is tight; on i.i.d. keys it skips nothing and costs
little.

The radius is measured from the stored (rounded) centre, so rounding the centre to
bf16/fp16 loosens the bound but never breaks it.
"""

import torch
import triton
import triton.language as tl

from adasplash_compile.kernels.masking import valid_lengths
from adasplash_compile.options import TILE_N


@triton.jit
def _key_tile_summary(
    k_ptr, centre_ptr, radius_ptr, seqlens_ptr,
    stride_kz, stride_kh, stride_kn, stride_kd,
    stride_cz, stride_ch, stride_cn, stride_cd,
    stride_rz, stride_rh, stride_rn,
    M, N,
    HEAD_DIM: tl.constexpr, HAS_SEQLENS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    USE_INT64: tl.constexpr,
):
    """One program per (key tile, kv head, batch): the mean of the tile's visible keys,
    rounded to the centre's dtype, and the largest distance of a visible key from it
    (0 for a tile without visible keys)."""
    tile = tl.program_id(0)
    off_h = tl.program_id(1).to(tl.int64)
    off_z = tl.program_id(2).to(tl.int64)
    _, valid_k = valid_lengths(seqlens_ptr, off_z, M, N, HAS_SEQLENS)
    offs_n = tile * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    if USE_INT64:
        rows = offs_n.to(tl.int64)
    else:
        rows = offs_n
    visible = offs_n < valid_k
    d_ok = offs_d < HEAD_DIM
    k_ptrs = k_ptr + off_z * stride_kz + off_h * stride_kh + rows[:, None] * stride_kn + offs_d[None, :] * stride_kd
    k = tl.load(k_ptrs, mask=visible[:, None] & d_ok[None, :], other=0.0).to(tl.float32)
    count = tl.maximum(tl.sum(visible.to(tl.float32), 0), 1.0)
    centre = (tl.sum(k, 0) / count).to(centre_ptr.dtype.element_ty)
    offset = k - centre.to(tl.float32)[None, :]
    distance = tl.sqrt(tl.sum(tl.where(d_ok[None, :], offset * offset, 0.0), 1))
    radius = tl.max(tl.where(visible, distance, 0.0), 0)
    c_ptrs = centre_ptr + off_z * stride_cz + off_h * stride_ch + tile * stride_cn + offs_d * stride_cd
    tl.store(c_ptrs, centre, mask=d_ok)
    tl.store(radius_ptr + off_z * stride_rz + off_h * stride_rh + tile * stride_rn, radius)


def _identity(kernel):
    return kernel


def key_tile_summary(key: torch.Tensor, n_queries, seqlens_arg, has_seqlens: bool, block_d: int, use_int64: bool,
                     *, wrap=None):
    """(centre (B, Hkv, cdiv(N, 64), D) in key's dtype, radius float32 (B, Hkv, cdiv(N, 64))).

    seqlens_arg: a contiguous (B,) int tensor when has_seqlens, else any dummy pointer.
    """
    launch = wrap or _identity
    batch, kv_heads, n_keys, head_dim = key.shape
    n_tiles = triton.cdiv(n_keys, TILE_N)
    centre = torch.empty((batch, kv_heads, n_tiles, head_dim), dtype=key.dtype, device=key.device)
    radius = torch.empty((batch, kv_heads, n_tiles), dtype=torch.float32, device=key.device)
    if centre.numel() == 0:
        return centre, radius
    launch(_key_tile_summary)[(n_tiles, kv_heads, batch)](
        key, centre, radius, seqlens_arg,
        *key.stride(), *centre.stride(), *radius.stride(),
        n_queries, n_keys,
        HEAD_DIM=head_dim, HAS_SEQLENS=has_seqlens, BLOCK_N=TILE_N, BLOCK_D=block_d, USE_INT64=use_int64,
        num_warps=4,
    )
    return centre, radius
