"""AdaSplash-2 attention forward: exact alpha-entmax threshold, block-sparse output.

Glossary
  Z, H       batch (program axis 2) and query head (axis 1); KV head = H // GROUP,
             GROUP = Hq // Hkv (grouped-query attention)
  M, N       query length, key length
  HEAD_DIM   head dim D (constexpr: a multiple of 8 known at compile time keeps the
             D mask constant over 8-element vectors, so tile loads vectorise and
             pipeline); BLOCK_D = next power of two >= D (at least 16, tl.dot's
             minimum), padded by masked loads, never in memory
  s, z       s = scale * q.k;  z = (alpha-1) * s, -inf where masked (kernels/masking.py)
  m, n       row max of z; number of keys the row sees (from the mask, analytically)
  ALPHA      entmax alpha in (1, 2]; INV = 1/(alpha-1); ALPHA_MODE see kernels/tau.py
  TAU        per-row threshold, p = [z - TAU]_+^INV renormalised to sum to one
  tile_max   max z over each TILE_M x TILE_N (64 x 64) tile's visible entries,
             -inf for a tile with none; one extra row and column of tiles, always
             -inf (adasplash_compile.options.tile_grid)
  BLOCK_M, BLOCK_N   query rows per program, keys per step; both equal the tile
             (64), so one step reads exactly one tile_max entry
  NBINS, MAX_SWEEPS  edges per threshold sweep; sweeps at most (the first is the
             histogram over the initial bracket)
  EDGE_UNROLL  unroll factor of the per-tile loop over edges (kernels/tau.py)

Two kernels per call, one program per (Z, H, BLOCK_M rows):

1. ``_adasplash_fwd_rowmax``: the only dense Q.K^T sweep. Writes tile_max for every
   tile, padding included (its grid has one extra row block, which only writes
   -inf), and the row max m (parked in the tau buffer, which kernel 2 overwrites).
2. ``_adasplash_fwd_tau_out``: threshold sweeps, then the output pass, all block-sparse:
   - sweep k visits only tiles whose tile_max exceeds min over the block's still
     active rows of (m + lo): a tile below every row's lower bracket end adds
     nothing to the tail statistics (kernels/tau.py), so it is skipped without
     recomputing Q.K^T. The first sweep (the histogram) already skips tiles more
     than 1 below every row max (tau >= m - 1); at most MAX_SWEEPS sweeps, and the
     loop ends as soon as every row of the block has converged (simulated on
     Gaussian scores, N <= 16k: 2 to 3 sweeps per block with NBINS = 8).
   - output: p = [z - TAU]_+^INV, acc += p.V, l += sum p, out = acc / l (0 where
     l = 0). A tile is all zero iff tile_max <= min over the block's rows of TAU,
     so exactly the tiles holding a nonzero of P are visited.
   Before each sweep and the output pass, ``list_active_tiles`` compacts the
   indices of the tiles to visit into int32 scratch (vector loads of tile_max plus
   a prefix sum), so the tile loops carry no per-tile branch or dependent scalar
   load, and their K/V loads can be software-pipelined.

Compiled for sm_90 (bf16/fp16, default configs, D in {40, 64, 128, 256}), the
output kernel uses 163-242 registers without spills with EDGE_UNROLL = 1;
unrolling the edge loop reaches 255 and spills. fp32 uses tl.dot on FMA units
("ieee", as tf32 misses the 1e-4 bar) and spills at every D: correct, not fast.

Launch contract (torch.compile / CUDA graphs): the launcher only allocates with
torch.empty*/full and launches kernels through ``wrap`` (``torch.library.wrap_triton``
when traced); no .item(), no host sync, no branching on tensor values.
"""

from typing import Optional

import torch
import triton
import triton.language as tl

from adasplash_compile.kernels.masking import valid_lengths, visible_key_end, visible_tile
from adasplash_compile.kernels.tau import (
    TAU_TOL,
    alpha_mode,
    entmax_power,
    tau_accumulate,
    tau_init,
    tau_update,
)
from adasplash_compile.options import TILE_M, TILE_N, tile_grid

# --------------------------------------------------------------------------- configs
# One default per (head dim, dtype); ``forward_configs`` lists the candidates an
# autotuner may try later and ``prune_forward_configs`` holds the static limits
# (also stated as tl.static_assert in the kernels).

# tile_max entries read per vector load when listing a sweep's active tiles.
_TILE_SCAN = 128

# Shared memory per SM usable by one program on H100 (227 KiB opt-in).
_SMEM_BYTES = 227 * 1024


def _block_d(head_dim) -> int:
    """Next power of two >= head_dim, at least 16 (tl.dot); comparisons only, so a
    symbolic head_dim yields a concrete constexpr."""
    block = 16
    while block < head_dim:
        block *= 2
    return block


def _smem_estimate(config: dict, head_dim: int, dtype: torch.dtype) -> int:
    """Bytes of the output pass's pipelined K and V tiles plus the Q tile."""
    size = dtype.itemsize
    block_d = _block_d(head_dim)
    kv = 2 * config["BLOCK_N"] * block_d * size * max(1, config["num_stages"])
    return kv + config["BLOCK_M"] * block_d * size


def prune_forward_configs(configs: list, head_dim: int, dtype: torch.dtype) -> list:
    """Configs the kernels accept: tile-aligned blocks, power-of-two NBINS, fitting smem."""
    kept = []
    for config in configs:
        if config["BLOCK_M"] != TILE_M or config["BLOCK_N"] != TILE_N:
            continue  # one program step must cover exactly one tile_max entry
        nbins = config["NBINS"]
        if nbins < 2 or nbins & (nbins - 1):
            continue  # tl.arange needs a power of two; two edges bracket the root
        if config["MAX_SWEEPS"] < 1 or config["EDGE_UNROLL"] < 1:
            continue
        if _smem_estimate(config, head_dim, dtype) > _SMEM_BYTES:
            continue
        kept.append(config)
    return kept


def forward_configs(head_dim: int, dtype: torch.dtype) -> list:
    """Candidate configs, default first (``prune_forward_configs`` applied)."""
    block_d = _block_d(head_dim)
    # fp32 runs tl.dot on FMA units ("ieee"): 8 warps spill far less (ptxas, sm_90).
    warps = 4 if block_d <= 128 and dtype != torch.float32 else 8
    candidates = []
    for stages in (3, 2, 1) if block_d <= 64 else (2, 1):
        for nbins, sweeps in ((8, 4), (4, 5), (16, 3)):
            for num_warps in (warps, 2 * warps if warps == 4 else 4):
                for unroll in (1, nbins):
                    candidates.append(
                        dict(BLOCK_M=TILE_M, BLOCK_N=TILE_N, NBINS=nbins, MAX_SWEEPS=sweeps, EDGE_UNROLL=unroll,
                             num_warps=num_warps, num_stages=stages)
                    )
    return prune_forward_configs(candidates, head_dim, dtype)


def default_forward_config(head_dim: int, dtype: torch.dtype) -> dict:
    configs = forward_configs(head_dim, dtype)
    if not configs:
        raise NotImplementedError(f"no forward config fits head_dim={head_dim}, dtype={dtype}")
    return configs[0]


def _needs_int64(*tensors: torch.Tensor) -> bool:
    """True when an offset inside one (batch, head) slice of a (B, H, L, D) tensor may pass int32.

    Batch and head offsets are always widened to int64 in the kernels, so only the
    extent over the last two dims ((L-1)*stride_l + (D-1)*stride_d) matters; past
    2^31 - 1, USE_INT64 widens the row offsets too.
    """
    for t in tensors:
        extent = sum((size - 1) * abs(stride) for size, stride in zip(t.shape[2:], t.stride()[2:]) if size > 0)
        if extent >= 2**31 - 1:
            return True
    return False


# --------------------------------------------------------------------------- kernels


@triton.jit
def load_q_tile(q_ptr, offs_m, offs_d, M, stride_qm, stride_qd, HEAD_DIM: tl.constexpr):
    ptrs = q_ptr + offs_m[:, None] * stride_qm + offs_d[None, :] * stride_qd
    return tl.load(ptrs, mask=(offs_m[:, None] < M) & (offs_d[None, :] < HEAD_DIM), other=0.0)


@triton.jit
def score_tile(q, k_ptr, start_n, offs_m, offs_n_base, offs_d, M, N, valid_q, valid_k, qk_scale,
               stride_kn, stride_kd, HEAD_DIM: tl.constexpr, IS_CAUSAL: tl.constexpr, DOT_PRECISION: tl.constexpr,
               USE_INT64: tl.constexpr):
    """z = (alpha-1)*scale*q.k^T for one key tile, -inf where not visible."""
    offs_n = start_n + offs_n_base
    if USE_INT64:
        rows_n = offs_n.to(tl.int64)
    else:
        rows_n = offs_n
    k_ptrs = k_ptr + rows_n[None, :] * stride_kn + offs_d[:, None] * stride_kd
    kt = tl.load(k_ptrs, mask=(offs_n[None, :] < N) & (offs_d[:, None] < HEAD_DIM), other=0.0)
    s = tl.dot(q, kt, input_precision=DOT_PRECISION)
    visible = visible_tile(offs_m, offs_n, M, N, valid_q, valid_k, IS_CAUSAL)
    return tl.where(visible, s * qk_scale, float("-inf"))


@triton.jit
def _adasplash_fwd_rowmax(
    q_ptr, k_ptr, m_ptr, tile_max_ptr, seqlens_ptr,
    stride_qz, stride_qh, stride_qm, stride_qd,
    stride_kz, stride_kh, stride_kn, stride_kd,
    stride_mz, stride_mh, stride_mm,
    stride_tz, stride_th, stride_tm, stride_tn,
    M, N, GROUP, qk_scale, n_tile_cols,
    HEAD_DIM: tl.constexpr, HAS_SEQLENS: tl.constexpr, IS_CAUSAL: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    DOT_PRECISION: tl.constexpr, USE_INT64: tl.constexpr,
):
    """Dense sweep: row max m of z (into m_ptr) and all n_tile_cols tile_max of the row block."""
    # Inductor passes Python floats to user kernels as fp64; keep the math in fp32.
    qk_scale = tl.cast(qk_scale, tl.float32)
    tl.static_assert(BLOCK_M == 64, "BLOCK_M must equal TILE_M: one program row block = one tile row")
    tl.static_assert(BLOCK_N == 64, "BLOCK_N must equal TILE_N: one key step = one tile_max entry")
    start_m = tl.program_id(0) * BLOCK_M
    off_h = tl.program_id(1).to(tl.int64)
    off_z = tl.program_id(2).to(tl.int64)
    off_kh = off_h // GROUP

    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    if USE_INT64:
        rows_m = offs_m.to(tl.int64)
    else:
        rows_m = offs_m
    q = load_q_tile(q_ptr + off_z * stride_qz + off_h * stride_qh, rows_m, offs_d, M, stride_qm, stride_qd, HEAD_DIM)
    k_base = k_ptr + off_z * stride_kz + off_kh * stride_kh
    tile_ptr = tile_max_ptr + off_z * stride_tz + off_h * stride_th + tl.program_id(0) * stride_tm

    valid_q, valid_k = valid_lengths(seqlens_ptr, off_z, M, N, HAS_SEQLENS)
    key_end = visible_key_end(start_m + BLOCK_M, M, N, valid_k, IS_CAUSAL)
    key_end = tl.where(start_m < valid_q, key_end, 0)

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    for start_n in range(0, key_end, BLOCK_N):
        z = score_tile(q, k_base, start_n, offs_m, offs_n, offs_d, M, N, valid_q, valid_k, qk_scale,
                       stride_kn, stride_kd, HEAD_DIM, IS_CAUSAL, DOT_PRECISION, USE_INT64)
        row_max = tl.max(z, 1)
        tl.store(tile_ptr + (start_n // BLOCK_N) * stride_tn, tl.max(row_max, 0))
        m_i = tl.maximum(m_i, row_max)
    # Tiles past the last visible key, padding included, hold no visible entry.
    for tile_n in range(tl.cdiv(key_end, BLOCK_N), n_tile_cols):
        tl.store(tile_ptr + tile_n * stride_tn, float("-inf"))
    m_ptrs = m_ptr + off_z * stride_mz + off_h * stride_mh + rows_m * stride_mm
    tl.store(m_ptrs, m_i, mask=offs_m < M)


@triton.jit
def list_active_tiles(tile_ptr, stride_tn, list_ptr, stride_ln, n_tiles, threshold, SCAN: tl.constexpr):
    """List the tiles j < n_tiles with tile_max[j] > threshold; return how many.

    list_ptr[0] receives the threshold (float32 bits) and list_ptr[1 + i] the i-th
    active tile index. Scanning SCAN tile_max entries per vector load and compacting
    with a prefix sum lets the sweep that follows loop over active tiles only: no
    per-tile branch or dependent scalar load, and its loads can be software-pipelined.
    The list is global scratch private to this program; the barriers order it after
    the reads of the previous sweep and before the reads that follow (bar.sync makes
    a CTA's global writes visible to all of its threads).

    The threshold goes through memory on purpose. torch's mutation analysis of Triton
    kernels (``torch.library.wrap_triton``) walks back from every store address
    through all arguments of the calls it depends on, stopping only at loads. The
    slots written here depend on the threshold, which depends on Q.K^T (through
    ``score_tile``, whose arguments include the K pointer); without the round trip
    the analysis would report Q, K and seqlens as written and Inductor would clone
    them before every launch.
    """
    offs = tl.arange(0, SCAN)
    tl.debug_barrier()
    tl.store(list_ptr, threshold.to(tl.int32, bitcast=True))
    tl.debug_barrier()
    threshold = tl.load(list_ptr).to(tl.float32, bitcast=True)
    count = 0
    for start in range(0, n_tiles, SCAN):
        tiles = start + offs
        tile_max = tl.load(tile_ptr + tiles * stride_tn, mask=tiles < n_tiles, other=float("-inf"))
        active = (tile_max > threshold).to(tl.int32)
        slot = count + tl.cumsum(active, 0)  # 1-based: slot 0 holds the threshold
        tl.store(list_ptr + slot * stride_ln, tiles, mask=active > 0)
        count += tl.sum(active, 0)
    tl.debug_barrier()
    return count


@triton.jit
def _adasplash_fwd_tau_out(
    q_ptr, k_ptr, v_ptr, out_ptr, tau_ptr, tile_max_ptr, tile_list_ptr, seqlens_ptr,
    stride_qz, stride_qh, stride_qm, stride_qd,
    stride_kz, stride_kh, stride_kn, stride_kd,
    stride_vz, stride_vh, stride_vn, stride_vd,
    stride_oz, stride_oh, stride_om, stride_od,
    stride_tauz, stride_tauh, stride_taum,
    stride_tz, stride_th, stride_tm, stride_tn,
    stride_lz, stride_lh, stride_lm, stride_ln,
    M, N, GROUP, qk_scale, alpha, inv,
    HEAD_DIM: tl.constexpr, HAS_SEQLENS: tl.constexpr, IS_CAUSAL: tl.constexpr, ALPHA_MODE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    NBINS: tl.constexpr, MAX_SWEEPS: tl.constexpr, EDGE_UNROLL: tl.constexpr, TAU_TOL: tl.constexpr,
    SCAN: tl.constexpr,
    DOT_PRECISION: tl.constexpr, USE_INT64: tl.constexpr,
):
    """Threshold sweeps and the output pass for one row block; reads m from tau_ptr.

    tile_list_ptr: int32 scratch shaped like tile_max (strides stride_l*): per program
    a row holding a threshold and the active tile indices, rewritten before every
    sweep (``list_active_tiles``).
    """
    # Inductor passes Python floats to user kernels as fp64; keep the math in fp32.
    qk_scale = tl.cast(qk_scale, tl.float32)
    alpha = tl.cast(alpha, tl.float32)
    inv = tl.cast(inv, tl.float32)
    tl.static_assert(BLOCK_M == 64, "BLOCK_M must equal TILE_M: one program row block = one tile row")
    tl.static_assert(BLOCK_N == 64, "BLOCK_N must equal TILE_N: one key step = one tile_max entry")
    tl.static_assert((NBINS >= 2) and ((NBINS & (NBINS - 1)) == 0), "NBINS must be a power of two >= 2")
    tl.static_assert(MAX_SWEEPS >= 1, "MAX_SWEEPS must be >= 1")
    start_m = tl.program_id(0) * BLOCK_M
    off_h = tl.program_id(1).to(tl.int64)
    off_z = tl.program_id(2).to(tl.int64)
    off_kh = off_h // GROUP

    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    if USE_INT64:
        rows_m = offs_m.to(tl.int64)
    else:
        rows_m = offs_m
    q = load_q_tile(q_ptr + off_z * stride_qz + off_h * stride_qh, rows_m, offs_d, M, stride_qm, stride_qd, HEAD_DIM)
    k_base = k_ptr + off_z * stride_kz + off_kh * stride_kh
    v_base = v_ptr + off_z * stride_vz + off_kh * stride_vh
    tile_ptr = tile_max_ptr + off_z * stride_tz + off_h * stride_th + tl.program_id(0) * stride_tm
    list_ptr = tile_list_ptr + off_z * stride_lz + off_h * stride_lh + tl.program_id(0) * stride_lm
    tau_ptrs = tau_ptr + off_z * stride_tauz + off_h * stride_tauh + rows_m * stride_taum

    valid_q, valid_k = valid_lengths(seqlens_ptr, off_z, M, N, HAS_SEQLENS)
    key_end = visible_key_end(start_m + BLOCK_M, M, N, valid_k, IS_CAUSAL)
    key_end = tl.where(start_m < valid_q, key_end, 0)
    n_tiles = tl.cdiv(key_end, BLOCK_N)
    # Keys each row sees: [0, visible_key_end(row + 1)) for rows below valid_q.
    n_i = tl.where(offs_m < valid_q, visible_key_end(offs_m + 1, M, N, valid_k, IS_CAUSAL), 0)

    m_i = tl.load(tau_ptrs, mask=offs_m < M, other=float("-inf"))
    has_keys = m_i > float("-inf")
    # Shift by 0 where the row sees nothing: -inf - (-inf) would be NaN.
    m_shift = tl.where(has_keys, m_i, 0.0)

    # ---- threshold sweeps (kernels/tau.py); tau_i is the shifted threshold tau'
    lo, hi, tau_i, active = tau_init(m_i, n_i, alpha, ALPHA_MODE)
    sweep = 0
    n_active = tl.sum(active.to(tl.int32), 0)
    while (sweep < MAX_SWEEPS) & (n_active > 0):
        stat_f = tl.zeros([BLOCK_M, NBINS], tl.float32)
        stat_g = tl.zeros([BLOCK_M, NBINS], tl.float32)
        stat_c = tl.zeros([BLOCK_M, NBINS], tl.int32)
        # A tile whose max is <= every active row's lower bracket end adds nothing.
        skip_below = tl.min(tl.where(active, m_shift + lo, float("inf")), 0)
        n_listed = list_active_tiles(tile_ptr, stride_tn, list_ptr, stride_ln, n_tiles, skip_below, SCAN)
        for i in range(0, n_listed):
            start_n = tl.load(list_ptr + (i + 1) * stride_ln) * BLOCK_N
            z = score_tile(q, k_base, start_n, offs_m, offs_n, offs_d, M, N, valid_q, valid_k, qk_scale,
                           stride_kn, stride_kd, HEAD_DIM, IS_CAUSAL, DOT_PRECISION, USE_INT64)
            stat_f, stat_g, stat_c = tau_accumulate(z - m_shift[:, None], lo, hi, stat_f, stat_g, stat_c,
                                                    inv, NBINS, ALPHA_MODE, EDGE_UNROLL)
        lo, hi, tau_i, active = tau_update(lo, hi, tau_i, active, stat_f, stat_g, stat_c, inv, NBINS, ALPHA_MODE,
                                           TAU_TOL)
        n_active = tl.sum(active.to(tl.int32), 0)
        sweep += 1

    tau_i = tl.where(has_keys & (n_i > 0), m_shift + tau_i, float("inf"))
    tl.store(tau_ptrs, tau_i, mask=offs_m < M)

    # ---- output pass over the tiles holding a nonzero of P: tile_max > min tau
    n_listed = list_active_tiles(tile_ptr, stride_tn, list_ptr, stride_ln, n_tiles, tl.min(tau_i, 0), SCAN)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    for i in range(0, n_listed):
        start_n = tl.load(list_ptr + (i + 1) * stride_ln) * BLOCK_N
        z = score_tile(q, k_base, start_n, offs_m, offs_n, offs_d, M, N, valid_q, valid_k, qk_scale,
                       stride_kn, stride_kd, HEAD_DIM, IS_CAUSAL, DOT_PRECISION, USE_INT64)
        # +inf thresholds (rows that see nothing) give z - tau = -inf -> p = 0.
        p = entmax_power(tl.maximum(z - tau_i[:, None], 0.0), inv, ALPHA_MODE)
        l_i += tl.sum(p, 1)
        cols = start_n + offs_n
        if USE_INT64:
            rows_n = cols.to(tl.int64)
        else:
            rows_n = cols
        v_ptrs = v_base + rows_n[:, None] * stride_vn + offs_d[None, :] * stride_vd
        v = tl.load(v_ptrs, mask=(cols[:, None] < N) & (offs_d[None, :] < HEAD_DIM), other=0.0)
        acc = tl.dot(p.to(v.dtype), v, acc, input_precision=DOT_PRECISION)
    # Renormalise as entmax_bisect does; rows without keys have l = 0 -> exact zeros.
    out = tl.where(l_i[:, None] > 0.0, acc / tl.where(l_i > 0.0, l_i, 1.0)[:, None], 0.0)
    out_ptrs = (out_ptr + off_z * stride_oz + off_h * stride_oh + rows_m[:, None] * stride_om
                + offs_d[None, :] * stride_od)
    tl.store(out_ptrs, out.to(out_ptr.dtype.element_ty), mask=(offs_m[:, None] < M) & (offs_d[None, :] < HEAD_DIM))


# --------------------------------------------------------------------------- launcher


def _identity(kernel):
    return kernel


def attention_forward(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    alpha: float,
    is_causal: bool,
    scale: float,
    seqlens: Optional[torch.Tensor],
    *,
    wrap=None,
    config: Optional[dict] = None,
):
    """AdaSplash-2 forward; returns (out, tau, tile_max) as reference.attention_forward.

    query (B, Hq, M, D), key/value (B, Hkv, N, D), any strides; out has query's
    dtype (``empty_like(query)``), tau float32 (B, Hq, M), tile_max float32
    (B, Hq, cdiv(M, 64) + 1, cdiv(N, 64) + 1). ``wrap`` wraps every kernel before launch
    (``torch.library.wrap_triton`` under tracing); ``config`` overrides the default
    (``default_forward_config``).
    """
    launch = wrap or _identity
    batch, q_heads, n_queries, head_dim = query.shape
    kv_heads, n_keys = key.shape[1], key.shape[2]
    out = torch.empty_like(query)
    tau = torch.empty((batch, q_heads, n_queries), dtype=torch.float32, device=query.device)
    tile_max = torch.empty((batch, q_heads, *tile_grid(n_queries, n_keys)), dtype=torch.float32, device=query.device)
    if batch == 0 or q_heads == 0 or n_queries == 0:
        return out, tau, tile_max

    cfg = dict(config) if config is not None else default_forward_config(head_dim, query.dtype)
    num_warps, num_stages = cfg.pop("num_warps"), cfg.pop("num_stages")
    # USE_INT64 may be forced (tests run the int64 path on small tensors).
    use_int64 = cfg.pop("USE_INT64", None)
    if use_int64 is None:
        use_int64 = _needs_int64(query, key, value, out)
    block_m, block_n = cfg["BLOCK_M"], cfg["BLOCK_N"]
    has_seqlens = seqlens is not None
    # The kernels read seqlens_ptr + b; a (B,) copy is cheap. tau is a dummy pointer,
    # never read when HAS_SEQLENS is False.
    seqlens_arg = seqlens.contiguous() if has_seqlens else tau
    common = dict(
        HEAD_DIM=head_dim,
        HAS_SEQLENS=has_seqlens,
        IS_CAUSAL=bool(is_causal),
        BLOCK_M=block_m,
        BLOCK_N=block_n,
        BLOCK_D=_block_d(head_dim),
        # tf32 is not accurate enough for the 1e-4 fp32 bar; ignored for fp16/bf16.
        DOT_PRECISION="ieee" if query.dtype == torch.float32 else "tf32",
        USE_INT64=bool(use_int64),
    )
    group = q_heads // kv_heads
    qk_scale = (alpha - 1.0) * scale
    grid = (triton.cdiv(n_queries, block_m), q_heads, batch)
    # One more row block than the data needs: it writes the padding row of tile_max.
    grid_rowmax = (tile_max.shape[2], q_heads, batch)

    launch(_adasplash_fwd_rowmax)[grid_rowmax](
        query, key, tau, tile_max, seqlens_arg,
        *query.stride(), *key.stride(), *tau.stride(), *tile_max.stride(),
        n_queries, n_keys, group, qk_scale, tile_max.shape[3],
        **common, num_warps=num_warps, num_stages=num_stages,
    )
    # Scratch for the per-program lists of active tiles (never read by the caller).
    # tile_max's padded shape (tile_grid): a row holds the threshold and up to
    # cdiv(N, 64) tile indices, and no dimension is ever 1 (see options.py).
    tile_list = torch.empty(tile_max.shape, dtype=torch.int32, device=query.device)
    launch(_adasplash_fwd_tau_out)[grid](
        query, key, value, out, tau, tile_max, tile_list, seqlens_arg,
        *query.stride(), *key.stride(), *value.stride(), *out.stride(), *tau.stride(), *tile_max.stride(),
        *tile_list.stride(),
        n_queries, n_keys, group, qk_scale, alpha, 1.0 / (alpha - 1.0),
        ALPHA_MODE=alpha_mode(alpha), NBINS=cfg["NBINS"], MAX_SWEEPS=cfg["MAX_SWEEPS"],
        EDGE_UNROLL=cfg["EDGE_UNROLL"], TAU_TOL=TAU_TOL,
        SCAN=_TILE_SCAN,
        **common, num_warps=num_warps, num_stages=num_stages,
    )
    return out, tau, tile_max
