"""Independent dense oracle: entmax.entmax_bisect in float64 over explicit masks.

Shares no code with adasplash_compile: masks, GQA expansion and the threshold
solve are written here again on purpose, so a bug in the library cannot hide in
its own reference.
"""

import torch
from entmax import entmax_bisect


def dense_mask(batch, n_queries, n_keys, is_causal, seqlens):
    """Bool (B, 1, M, N): row i sees key j."""
    i = torch.arange(n_queries)[:, None]
    j = torch.arange(n_keys)[None, :]
    mask = torch.ones(batch, 1, n_queries, n_keys, dtype=torch.bool)
    if is_causal:
        mask &= (j <= i + (n_keys - n_queries))[None, None]
    if seqlens is not None:
        for b, length in enumerate(seqlens.cpu().tolist()):
            length = max(length, 0)
            mask[b, :, :, length:] = False
            if n_queries == n_keys:
                mask[b, :, length:, :] = False
    return mask


def _attention_weights(query, key, value, alpha, is_causal, scale, seqlens):
    """(P, V expanded to the query heads, (q, k, v)): float64 CPU, differentiable in q, k, v."""
    q, k, v = (t.detach().cpu().double().requires_grad_(t.requires_grad) for t in (query, key, value))
    group = q.shape[1] // k.shape[1]
    ke = k.repeat_interleave(group, dim=1)
    ve = v.repeat_interleave(group, dim=1)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    s = scale * q @ ke.transpose(-1, -2)
    mask = dense_mask(q.shape[0], q.shape[2], k.shape[2], is_causal, seqlens)
    # entmax_bisect of an all -inf row is NaN: give such rows finite scores, zero them after.
    empty = ~mask.any(-1, keepdim=True)
    s = s.masked_fill(~mask, float("-inf")).masked_fill(empty, 0.0)
    p = entmax_bisect(s, alpha, n_iter=100).masked_fill(empty, 0.0)
    return p, ve, (q, k, v)


def entmax_attention(query, key, value, alpha=1.5, is_causal=False, scale=None, seqlens=None):
    """float64 CPU output of AdaSplash-2 attention; differentiable in q, k, v."""
    p, ve, leaves = _attention_weights(query, key, value, alpha, is_causal, scale, seqlens)
    return p @ ve, leaves


def u_value_mean(query, key, value, alpha=1.5, is_causal=False, scale=None, seqlens=None):
    """float64 CPU (B, Hq, M, D): V averaged per row with weights p^(2-alpha) over the support
    (zeros for rows without one): the forward output the backward takes DELTA from at alpha = 1.5."""
    p, ve, _ = _attention_weights(query, key, value, alpha, is_causal, scale, seqlens)
    p = p.detach()
    weights = torch.where(p > 0, p ** (2.0 - alpha), torch.zeros_like(p))
    total = weights.sum(-1, keepdim=True)
    return (weights @ ve.detach()) / total.masked_fill(total == 0, 1.0)


def relative_error(actual, expected):
    actual, expected = actual.detach().double().cpu(), expected.detach().double().cpu()
    return ((actual - expected).norm() / expected.norm().clamp_min(1e-30)).item()


def support_tile_max_bounds(query, key, tau, alpha, is_causal, scale, seqlens, tile_m, tile_n, slack,
                            rows_per_chunk=1024):
    """(lower, upper) float64 (B, H, cdiv(M, tile_m), cdiv(N, tile_n)) bounds on tile_max.

    tile_max of a tile is the largest z = (alpha-1)*scale*q.k among its entries with
    z > tau of their row. Entries within ``slack`` of their threshold may fall on
    either side in float32, so ``lower`` counts only z > tau + slack and ``upper``
    every z > tau - slack (-inf where a tile has no such entry). Computed on the
    inputs' device in float64, ``rows_per_chunk`` query rows at a time.
    """
    q, k = query.detach().double(), key.detach().double()
    k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
    tau = tau.detach().double().to(q.device)[..., None]
    b, h, m, n = q.shape[0], q.shape[1], q.shape[2], k.shape[2]
    mask = dense_mask(b, m, n, is_causal, seqlens)
    pad_n = -n % tile_n
    bounds = []
    rows_per_chunk = max(tile_m, rows_per_chunk // tile_m * tile_m)
    for start in range(0, m, rows_per_chunk):
        stop = min(m, start + rows_per_chunk)
        z = (alpha - 1.0) * scale * q[:, :, start:stop] @ k.transpose(-1, -2)
        z = z.masked_fill(~mask[:, :, start:stop].to(q.device), float("-inf"))
        pad_m = -(stop - start) % tile_m
        chunk = []
        for keep in (z > tau[:, :, start:stop] + slack, z > tau[:, :, start:stop] - slack):
            kept = torch.nn.functional.pad(z.masked_fill(~keep, float("-inf")), (0, pad_n, 0, pad_m),
                                           value=float("-inf"))
            chunk.append(kept.view(b, h, -1, tile_m, (n + pad_n) // tile_n, tile_n).amax(dim=(3, 5)))
        bounds.append(chunk)
    return tuple(torch.cat([chunk[i] for chunk in bounds], dim=2).cpu() for i in (0, 1))
