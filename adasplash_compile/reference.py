"""Pure-PyTorch AdaSplash-2 attention and alpha-entmax: the CPU kernel and the test oracle.

Symbols: B batch, Hq query heads, Hkv key/value heads, M = Nq query length,
N = Nk key length, D head dim, z = (alpha-1)*s with s = scale*q.k, tau the
threshold with sum_j [z_j - tau]_+^(1/(alpha-1)) = 1 (Peters et al. 2019, eq. 6).

tau is solved exactly in float64: bisection narrows the bracket
[max z - 1, max z - n^(1-alpha)] to 2^-12 of its width, then Newton steps from its
left end, where f(tau) = sum [z - tau]_+^(1/(alpha-1)) - 1 >= 0. f is convex and
decreasing, so those steps never pass the root (the safeguard) and converge
quadratically. Query rows are processed in chunks so memory stays
O(chunk * N) per head, never O(M * N).

Conventions shared with the Triton kernels (they are part of the op contract):
- a row that sees no key has tau = +inf and outputs zeros;
- p is renormalised to sum to one, as ``entmax.entmax_bisect`` does;
- ``tile_max`` and ``u_value_mean`` are described in ``adasplash_compile.options``.
"""

import torch

from adasplash_compile.options import TILE_M, TILE_N, tile_grid

# Elements of one (chunk x N) score block per batch*head, float64: 2**21 * 8 B = 16 MiB.
_CHUNK_ELEMENTS = 1 << 21
_BISECTION_STEPS = 12
_MAX_NEWTON_STEPS = 50


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _tau_objective(z, tau, alpha, with_slope=True):
    """f(tau) = sum [z - tau]_+^(1/(alpha-1)) - 1 and f'(tau) over the last dim."""
    gap = (z - tau).clamp_min(0)
    inv = 1.0 / (alpha - 1.0)
    f = gap.pow(inv).sum(-1, keepdim=True) - 1.0
    if not with_slope:
        return f, None
    # gap ** ((2-alpha)/(alpha-1)) is 0**0 = 1 off the support when alpha = 2.
    slope = -inv * torch.where(gap > 0, gap.pow((2.0 - alpha) * inv), 0).sum(-1, keepdim=True)
    return f, slope


def solve_tau(z: torch.Tensor, alpha: float) -> torch.Tensor:
    """Exact entmax threshold of z along the last dim, in float64 (keepdim shape).

    Rows whose entries are all -inf get tau = +inf.
    """
    z = z.to(torch.float64)
    zmax = z.amax(-1, keepdim=True)
    empty = zmax == float("-inf")
    zmax = torch.where(empty, 0.0, zmax)
    count = (z > float("-inf")).sum(-1, keepdim=True).clamp_min(1).to(torch.float64)
    # max p <= 1 gives tau >= max z - 1; max p >= 1/n gives tau <= max z - n^(1-alpha).
    lo = zmax - 1.0
    hi = zmax - count.pow(1.0 - alpha)
    for _ in range(_BISECTION_STEPS):
        mid = 0.5 * (lo + hi)
        f, _ = _tau_objective(z, mid, alpha, with_slope=False)
        lo = torch.where(f >= 0, mid, lo)
        hi = torch.where(f >= 0, hi, mid)
    # f is convex and decreasing, so Newton from a point with f >= 0 never passes the
    # root: tau rises monotonically, quadratically once the bracket is this narrow.
    tau = lo
    for _ in range(_MAX_NEWTON_STEPS):
        f, slope = _tau_objective(z, tau, alpha)
        step = torch.where((f > 0) & (slope < 0), -f / slope, 0.0)
        tau = tau + step
        if bool((step <= 1e-15 * (1.0 + tau.abs())).all()):
            break
    return torch.where(empty, float("inf"), tau)


def entmax_probabilities(z: torch.Tensor, tau: torch.Tensor, alpha: float) -> torch.Tensor:
    """p = [z - tau]_+^(1/(alpha-1)) renormalised to sum to one; zero rows stay zero."""
    gap = (z.to(tau.dtype) - tau).clamp_min(0)
    p = gap.pow(1.0 / (alpha - 1.0))
    total = p.sum(-1, keepdim=True)
    return torch.where(total > 0, p / total.clamp_min(torch.finfo(p.dtype).tiny), 0)


def jacobian_weights(p, alpha):
    """(u, sum of u over the last dim): u = p^(2-alpha) on the support (p > 0), 0 off it."""
    u = torch.where(p > 0, p.pow(2.0 - alpha), 0)
    return u, u.sum(-1, keepdim=True)


def entmax_gradient(grad_p, p, alpha):
    """dX = u * (dP - delta), u = p^(2-alpha), delta = sum(u dP) / sum(u)."""
    u, total = jacobian_weights(p, alpha)
    delta = torch.where(total > 0, (u * grad_p).sum(-1, keepdim=True) / total.clamp_min(torch.finfo(u.dtype).tiny), 0)
    return u * (grad_p - delta)


def entmax_forward(x: torch.Tensor, alpha: float, dim: int) -> torch.Tensor:
    xt = x.movedim(dim, -1)
    z = (alpha - 1.0) * xt.to(torch.float64)
    p = entmax_probabilities(z, solve_tau(z, alpha), alpha)
    return p.to(x.dtype).movedim(-1, dim).contiguous()


def _row_chunk(batch_heads: int, n_keys: int, n_queries: int) -> int:
    rows = _CHUNK_ELEMENTS // max(1, batch_heads * n_keys)
    rows = max(TILE_M, rows // TILE_M * TILE_M)
    return min(rows, max(TILE_M, -(-n_queries // TILE_M) * TILE_M))


def visible(rows: torch.Tensor, n_queries: int, n_keys: int, is_causal: bool, seqlens):
    """Bool mask (B or 1, 1, len(rows), N): which keys each query row may attend to."""
    cols = torch.arange(n_keys, device=rows.device)
    mask = torch.ones(1, 1, rows.numel(), n_keys, dtype=torch.bool, device=rows.device)
    if is_causal:
        # Bottom-right alignment, as FlashAttention-2: row i sees j <= i + N - M.
        mask = mask & (cols[None, :] <= rows[:, None] + (n_keys - n_queries))[None, None]
    if seqlens is not None:
        lengths = seqlens.to(torch.int64).clamp_min(0)[:, None, None, None]
        mask = mask & (cols[None, None, None, :] < lengths)
        if n_queries == n_keys:
            mask = mask & (rows[None, None, :, None] < lengths)
    return mask


def _expand_kv(t: torch.Tensor, q_heads: int) -> torch.Tensor:
    group = q_heads // t.shape[1]
    return t if group == 1 else t.repeat_interleave(group, dim=1)


def _scores(q_chunk, key_expanded, rows, n_queries, is_causal, scale, alpha, seqlens):
    s = torch.matmul(q_chunk, key_expanded.transpose(-1, -2)) * scale
    mask = visible(rows, n_queries, key_expanded.shape[2], is_causal, seqlens)
    return torch.where(mask, (alpha - 1.0) * s, float("-inf"))


def _tile_maxima(z: torch.Tensor) -> torch.Tensor:
    b, h, m, n = z.shape
    pad_m, pad_n = -m % TILE_M, -n % TILE_N
    z = torch.nn.functional.pad(z, (0, pad_n, 0, pad_m), value=float("-inf"))
    z = z.view(b, h, (m + pad_m) // TILE_M, TILE_M, (n + pad_n) // TILE_N, TILE_N)
    return z.amax(dim=(3, 5))


def attention_forward(query, key, value, alpha, is_causal, scale, seqlens):
    """Returns (out, tau, tile_max, u_value_mean); see the module docstring for their meaning."""
    batch, q_heads, n_queries, _ = query.shape
    n_keys = key.shape[2]
    compute = _compute_dtype(query.dtype)
    k = _expand_kv(key, q_heads).to(compute)
    v = _expand_kv(value, q_heads).to(compute)
    out = torch.empty_like(query)
    tau = query.new_empty((batch, q_heads, n_queries), dtype=torch.float32)
    tile_max = query.new_full(
        (batch, q_heads, *tile_grid(n_queries, n_keys)), float("-inf"), dtype=torch.float32
    )
    u_value_mean = query.new_zeros((batch, q_heads, n_queries, query.shape[3]), dtype=torch.float32)
    chunk = _row_chunk(batch * q_heads, n_keys, n_queries)
    for start in range(0, n_queries, chunk):
        rows = torch.arange(start, min(start + chunk, n_queries), device=query.device)
        z = _scores(query[:, :, rows].to(compute), k, rows, n_queries, is_causal, scale, alpha, seqlens)
        tau_chunk = solve_tau(z, alpha)
        p = entmax_probabilities(z, tau_chunk, alpha).to(compute)
        out[:, :, rows] = torch.matmul(p, v).to(query.dtype)
        tau[:, :, rows] = tau_chunk.squeeze(-1).to(torch.float32)
        if alpha == 1.5:
            u_value_mean[:, :, rows] = _u_weighted_mean(p, v, alpha).to(torch.float32)
        chunk_tiles = _tile_maxima(torch.where(z > tau_chunk, z, float("-inf"))).to(torch.float32)
        tile_max[:, :, start // TILE_M :][:, :, : chunk_tiles.shape[2], : chunk_tiles.shape[3]] = chunk_tiles
    return out, tau, tile_max, u_value_mean


def _u_weighted_mean(p, v, alpha):
    """sum_j u_j v_j / sum_j u_j per row (``jacobian_weights``), zeros where a row has no support."""
    u, total = jacobian_weights(p, alpha)
    return torch.matmul(u, v) / torch.where(total > 0, total, 1)


def attention_backward(grad_out, query, key, value, tau, alpha, is_causal, scale, seqlens):
    """Returns (grad_query, grad_key, grad_value), recomputing P from tau."""
    batch, q_heads, n_queries, head_dim = query.shape
    kv_heads, n_keys = key.shape[1], key.shape[2]
    compute = _compute_dtype(query.dtype)
    k = _expand_kv(key, q_heads).to(compute)
    v = _expand_kv(value, q_heads).to(compute)
    grad_q = torch.empty_like(query)
    grad_k = torch.zeros(batch, q_heads, n_keys, head_dim, dtype=compute, device=query.device)
    grad_v = torch.zeros_like(grad_k)
    chunk = _row_chunk(batch * q_heads, n_keys, n_queries)
    for start in range(0, n_queries, chunk):
        rows = torch.arange(start, min(start + chunk, n_queries), device=query.device)
        q_chunk = query[:, :, rows].to(compute)
        do_chunk = grad_out[:, :, rows].to(compute)
        z = _scores(q_chunk, k, rows, n_queries, is_causal, scale, alpha, seqlens)
        p = entmax_probabilities(z, tau[:, :, rows, None].to(torch.float64), alpha).to(compute)
        grad_s = entmax_gradient(torch.matmul(do_chunk, v.transpose(-1, -2)), p, alpha)
        grad_q[:, :, rows] = (scale * torch.matmul(grad_s, k)).to(query.dtype)
        grad_k += scale * torch.matmul(grad_s.transpose(-1, -2), q_chunk)
        grad_v += torch.matmul(p.transpose(-1, -2), do_chunk)
    group = q_heads // kv_heads
    # Outputs keep the layout of their inputs, as the fake function promises.
    grad_key = torch.empty_like(key).copy_(grad_k.view(batch, kv_heads, group, n_keys, head_dim).sum(2))
    grad_value = torch.empty_like(value).copy_(grad_v.view(batch, kv_heads, group, n_keys, head_dim).sum(2))
    return grad_q, grad_key, grad_value
