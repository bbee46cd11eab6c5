"""AdaSplash-2 attention backward: block-sparse dQ and dK/dV Triton kernels, configs, launcher.

Glossary
  B, Z       batch (``z`` in stride names)
  Hq, Hkv    query heads and key/value heads; GROUP = Hq // Hkv, query head h reads
             key/value head h // GROUP (grouped-query attention)
  M, N       query length (Nq) and key length (Nk)
  D          head dim; BLOCK_D = next power of two >= D, the extra columns masked
  ALPHA      entmax alpha in (1, 2]; alpha = 2 is sparsemax
  s, z       s = scale * q.k, z = (ALPHA - 1) * s; masked pairs have z = -inf
  TAU        per-row threshold from the forward, +inf for a row that sees no key
  gap        [z - TAU]_+; the kernels take h = gap / 2 (``_half_gaps``), and their sums of
             p and u in units of h take power-of-two factors at the end (``_weight_scales``)
  p          gap^(1 / (ALPHA - 1)), the attention weight; used unnormalised because the
             forward's exact TAU makes sum_j p = 1 to rounding
  u          p^(2 - ALPHA) = gap^((2 - ALPHA) / (ALPHA - 1)) on the support, 0 off it
             (1 on the support when ALPHA = 2); u = dp/ds, the entmax Jacobian diagonal
  dP, DELTA  dP = dO V^T; DELTA_i = sum_j u_ij dP_ij / sum_j u_ij (0 when sum_j u_ij = 0),
             for alpha = 1.5 dO_i . u_value_mean_i, the forward's u-weighted mean of V
             per row (adasplash_compile.options)
  dS         u * (dP - DELTA), the gradient with respect to s (Peters et al. 2019, eq. 10);
             dQ = scale dS K, dK = scale dS^T Q, dV = P^T dO
  TILE_M x TILE_N   granularity of ``tile_max`` (adasplash_compile.options); tile (i, j) of
             a head holds only zeros of P iff tile_max[i, j] <= min of TAU over rows of tile i
  *_BLOCK_*  per-kernel block sizes, see ``BackwardConfig``

Why lists of active tiles. At 94% zero tiles a key sweep visits ~1 tile in 16. Testing
tiles one by one inside the dQ and dK/dV loops costs a dependent scalar load per tile,
and at N = 32768 those ~500 latency-bound loads per program outweigh the ~30 tiles of
real work. So two cheap kernels first compact, per stationary block, the indices of
its active tiles (a vector compare plus a prefix sum over ``tile_max``); the dQ and
dK/dV loops then run over active tiles only, one index load each.

Launch order (one stream, no atomics, so every run is bitwise identical):
  1. _adasplash_bwd_row_lists  per (b, h, row group): TAU_MIN of its row tiles, and the
                               active key tiles of the row group (for dQ)
  2. _adasplash_bwd_key_lists  per (b, kv head, key group): the active (query head,
                               row tile) pairs of the key group (for dK/dV)
  3. _adasplash_bwd_dq         per (b, h, row block): one sweep accumulates dQ and
                               learns DELTA (alpha = 1.5: from u_value_mean first),
                               stored to scratch; causal row blocks launch last block
                               first (heaviest_first)
  4. _adasplash_bwd_dkdv       per (b, kv head, key block): loops over the GROUP query
                               heads and their active row tiles, reads DELTA

Streamed tiles (K and V in the dQ kernel, Q and dO in the dK/dV kernel) come through
tensor descriptors where the inputs and the GPU allow it (kernels/tensor_maps.py): one
bulk copy per tile instead of per-thread addresses and masks. The gradients are bitwise
the same, and the backward took 8.5-13% less time (H100, bf16, D = 128: mid at N = 32768
11.06 -> 9.89 ms, dense at 8192 2.53 -> 2.19 ms, same process).

Per entry both kernels take the half gap in one saturating multiply-add and skip the
visibility mask on blocks every row of which sees every key (``_half_gaps``): compiled
without the masked branch, a step's loop body is 270 instructions per thread against 460
before in the dQ kernel and 493 against 756 in the dK/dV kernel (sm_90, triton 3.6,
``benchmarks/offline_sass.py --kernel dq``). The backward took 4.4-6.1% less time (H200,
bf16, D = 128, same process: mid at N = 32768 8.70 -> 8.31 ms, high 2.18 -> 2.07 ms, mid
at 8192 0.857 -> 0.809 ms, dense at 8192 1.93 -> 1.81 ms).
"""

from typing import NamedTuple, Optional

import torch
import triton
import triton.language as tl

from adasplash_compile.kernels.autotuning import autotuned
from adasplash_compile.kernels.masking import (
    first_masked_tile,
    heaviest_first,
    valid_lengths,
    visible_key_end,
    visible_query_start,
    visible_tile,
)
from adasplash_compile.kernels.products import tile_dot
from adasplash_compile.kernels.tau import clamped_half_gap
from adasplash_compile.kernels.tensor_maps import (
    allocate_scratch_before_launch,
    descriptor_tile,
    descriptors_supported,
    head_descriptor,
)
from adasplash_compile.options import TILE_M, TILE_N

# How p and u are evaluated; alpha = 1.5 and 2 avoid the transcendental pair.
ALPHA_GENERAL: tl.constexpr = tl.constexpr(0)  # p = gap^(1/(a-1)) via exp2/log2
ALPHA_ENTMAX15: tl.constexpr = tl.constexpr(1)  # u = gap, p = gap^2
ALPHA_SPARSEMAX: tl.constexpr = tl.constexpr(2)  # u = [gap > 0], p = gap

# input_precision of tl.dot, passed as an int: Inductor's wrapper codegen may take a
# string argument of a user kernel for a buffer name. fp16/bf16 operands ignore it
# (DOT_NATIVE). fp32 operands must not drop to plain tf32 (10-bit mantissa): "ieee" is
# exact fp32 on FMA units (offline sm_90a builds of the 64x64 kernels spill 30-90 KB per
# thread and take minutes in ptxas); "tf32x3" splits each operand into two tf32 parts,
# keeps about fp32 accuracy (error ~2^-21) and runs on tensor cores.
DOT_NATIVE: tl.constexpr = tl.constexpr(0)
DOT_IEEE: tl.constexpr = tl.constexpr(1)
DOT_TF32X3: tl.constexpr = tl.constexpr(2)
_FP32_DOT_MODES = {"ieee": DOT_IEEE.value, "tf32x3": DOT_TF32X3.value}

# Tiles examined per vector step of the list builders; 128 keeps one step to a few
# registers per thread while covering N = 8192 keys.
SCAN_BLOCK = 128


# --------------------------------------------------------------------------------------
# Configs
# --------------------------------------------------------------------------------------


class BackwardConfig(NamedTuple):
    """Block sizes and launch options of the dQ and dK/dV kernels.

    ``dq_block_m`` query rows stay resident per dQ program and the keys stream past in
    steps of ``dq_block_n``; ``dkv_block_n`` keys stay resident per dK/dV program and the
    query rows stream past in steps of ``dkv_block_m``. A resident block is one, two tiles
    or a power-of-two fraction of one (a block of two tiles visits a key tile when either
    of its row tiles needs it); a streamed step is a power-of-two fraction of a tile, so
    skipping stays at tile granularity. Warps and stages are Triton's launch options.
    """

    dq_block_m: int = 64
    dq_block_n: int = 64
    dq_warps: int = 4
    dq_stages: int = 2
    dkv_block_n: int = 64
    dkv_block_m: int = 64
    dkv_warps: int = 4
    dkv_stages: int = 2
    fp32_dot: str = "tf32x3"  # input_precision of fp32 operands, see DOT_TF32X3
    # Streamed tiles through tensor descriptors (kernels/tensor_maps.py): None where the
    # inputs and the GPU allow it; True forces it (tests, under the interpreter).
    tma: Optional[bool] = None


def autotune_launch_options(dtype: torch.dtype) -> list:
    """Warps and stages max-autotune tries for the dQ and dK/dV kernels."""
    stages = (1, 2) if dtype == torch.float32 else (1, 2, 3)
    return [dict(num_warps=warps, num_stages=n) for warps in (4, 8) for n in stages]


def _is_pow2(x: int) -> bool:
    return x > 0 and x & (x - 1) == 0


def check_backward_config(config: BackwardConfig) -> None:
    """Raises ValueError for a config the kernels cannot run (also tl.static_assert there)."""
    for name, resident, tile in (("dq_block_m", config.dq_block_m, TILE_M),
                                 ("dkv_block_n", config.dkv_block_n, TILE_N)):
        if not (_is_pow2(resident) and 16 <= resident <= 2 * tile):
            raise ValueError(f"{name} must be a power of two in [16, {2 * tile}], got {resident}")
    for name, step, tile in (("dq_block_n", config.dq_block_n, TILE_N),
                             ("dkv_block_m", config.dkv_block_m, TILE_M)):
        if not (_is_pow2(step) and 16 <= step <= tile):
            raise ValueError(f"{name} must be a power of two in [16, {tile}], got {step}")
    if config.fp32_dot not in _FP32_DOT_MODES:
        raise ValueError(f"fp32_dot must be one of {sorted(_FP32_DOT_MODES)}, got {config.fp32_dot!r}")
    if config.tma not in (None, True, False):
        raise ValueError(f"tma must be None, True or False, got {config.tma!r}")


def backward_config(head_dim: int, dtype: torch.dtype, device_type: str = "cuda") -> BackwardConfig:
    """Default config per head dim and dtype: the one place to tune or to hang autotuning.

    CPU tensors run under Triton's interpreter, whose cost is per program and per op, not
    per register: there the largest blocks (64 x 64) are fastest.

    bf16 and fp16 at D <= 128: 64 x 64 blocks, 4 warps, 2 stages, the fastest of 12
    configs timed on the H100 (benchmarks/profile_kernels.py --sweep-backward, bf16,
    D = 128, N = 32768: 2.93 ms against 5.81 ms with 8 warps on `high`, 12.96 against
    27.33 ms on `mid`). Above D = 128 (compiled for sm_90a offline, ptxas -v, not timed):
    64 resident rows (dQ) or keys (dK/dV) spill (their fp32 accumulators alone take 128
    registers per thread at 8 warps), so the resident blocks drop to 32.
    fp32 doubles every operand tile and tf32x3 splits each into two parts: the least
    spilling configs are far smaller, and at D > 128 all of them spill.
    """
    if device_type == "cpu":
        return BackwardConfig()
    if dtype == torch.float32:
        if head_dim <= 64:
            return BackwardConfig(16, 64, 4, 1, 16, 64, 4, 1)
        if head_dim <= 128:
            return BackwardConfig(32, 64, 8, 1, 32, 64, 8, 1)
        return BackwardConfig(16, 32, 4, 1, 16, 32, 4, 1)
    if head_dim <= 128:
        return BackwardConfig(64, 64, 4, 2, 64, 64, 4, 2)
    return BackwardConfig(32, 64, 8, 1, 32, 64, 8, 1)


# --------------------------------------------------------------------------------------
# Shared jit helpers
# --------------------------------------------------------------------------------------


@triton.jit
def _entmax_weights(h, u_exp, ALPHA_MODE: tl.constexpr):
    """(p', u') of half gaps h = gap / 2 (``_half_gaps``): p = P_SCALE p' and
    u = U_SCALE u' with the factors of ``_weight_scales``, which the kernels apply to
    their sums at the end (powers of two: no rounding changes, in fp32 or in the 16-bit
    operands of the products).

    A threshold tau = +inf (a row that sees no key) gives h = 0 and hence p = u = 0.
    """
    if ALPHA_MODE == ALPHA_SPARSEMAX:
        u = tl.where(h > 0.0, 1.0, 0.0)
        p = h
    elif ALPHA_MODE == ALPHA_ENTMAX15:
        u = h
        p = h * h
    else:
        # u = gap^u_exp with u_exp = (2-a)/(a-1) > 0, so log2(0) = -inf maps to u = 0;
        # p = gap^(1/(a-1)) = u * gap saves a second exp2.
        gap = h + h
        u = tl.exp2(tl.log2(gap) * u_exp)
        p = u * gap
    return p, u


@triton.jit
def _weight_scales(ALPHA_MODE: tl.constexpr):
    """(P_SCALE, U_SCALE) of ``_entmax_weights``: p = gap^2 = 4 h^2 and u = gap = 2 h for
    alpha = 1.5, p = gap = 2 h for sparsemax, and the weights themselves otherwise."""
    if ALPHA_MODE == ALPHA_ENTMAX15:
        return 4.0, 2.0
    elif ALPHA_MODE == ALPHA_SPARSEMAX:
        return 2.0, 1.0
    else:
        return 1.0, 1.0


@triton.jit
def _half_gaps(s, qk_scale, tau, offs_m, offs_n, n_queries, n_keys, valid_queries, valid_keys, masked,
               IS_CAUSAL: tl.constexpr, KEYS_BY_ROWS: tl.constexpr):
    """h = [qk_scale * s - tau]_+ / 2 of a score product s (``clamped_half_gap``: one
    saturating multiply-add per entry, where the scale, the subtract and the max took
    three), tau broadcast against s, 0 where row offs_m does not see key offs_n
    (``visible_tile``). s is rows x keys, or keys x rows with KEYS_BY_ROWS.

    masked (a scalar) may be False only where every entry of the block is visible
    (``first_masked_tile``): then the per-entry mask, a compare, two ands and a select
    per entry in the causal case, is skipped; under causal attention that is every
    block off the diagonal. The mask comes after the scale, so a masked entry is 0
    whatever the sign of qk_scale.
    """
    h = clamped_half_gap(s, qk_scale, tau)
    if masked:
        visible = visible_tile(offs_m, offs_n, n_queries, n_keys, valid_queries, valid_keys, IS_CAUSAL)
        if KEYS_BY_ROWS:
            visible = tl.trans(visible)
        h = tl.where(visible, h, 0.0)
    return h


# --------------------------------------------------------------------------------------
# Active-tile lists
# --------------------------------------------------------------------------------------


@triton.jit
def _adasplash_bwd_row_lists(
    tau_ptr, tile_max_ptr, tau_min_ptr, kv_count_ptr, kv_index_ptr, seqlens_ptr,
    stride_tz, stride_th, stride_tm,
    stride_xz, stride_xh, stride_xm, stride_xn,
    n_q_heads, n_queries, n_keys, n_row_tiles, n_key_tiles, n_row_groups,
    ROW_TILES: tl.constexpr,
    TILE_M: tl.constexpr,
    TILE_N: tl.constexpr,
    SCAN_BLOCK: tl.constexpr,
    IS_CAUSAL: tl.constexpr,
    HAS_SEQLENS: tl.constexpr,
):
    """Per (row group, b*Hq): TAU_MIN of each row tile, and the active key tiles.

    A row group is the ROW_TILES row tiles that one dQ program covers (or contains it).
    Writes tau_min[bh, tile], kv_count[bh, group] and kv_index[bh, group, :count]
    (ascending key tiles).
    """
    tl.static_assert(ROW_TILES == 1 or ROW_TILES == 2)
    group = tl.program_id(0)
    bh = tl.program_id(1)
    batch = bh // n_q_heads
    head = bh % n_q_heads
    tau_base = tau_ptr + batch.to(tl.int64) * stride_tz + head.to(tl.int64) * stride_th
    tile_max_base = tile_max_ptr + batch.to(tl.int64) * stride_xz + head.to(tl.int64) * stride_xh

    # TAU_MIN over the real rows of each tile; rows past M count as +inf (see nothing).
    tiles_m = group * ROW_TILES + tl.arange(0, ROW_TILES)
    rows = tiles_m[:, None] * TILE_M + tl.arange(0, TILE_M)[None, :]
    tau = tl.load(tau_base + rows.to(tl.int64) * stride_tm, mask=rows < n_queries, other=float("inf"))
    tau_min = tl.min(tau, axis=1)
    tl.store(tau_min_ptr + bh.to(tl.int64) * n_row_tiles + tiles_m, tau_min, mask=tiles_m < n_row_tiles)

    # Key tiles past the causal / padding horizon of the group's last row have
    # tile_max = -inf anyway; bounding the scan just avoids reading them.
    _, valid_keys = valid_lengths(seqlens_ptr, batch, n_queries, n_keys, HAS_SEQLENS)
    row_end = tl.minimum((group + 1) * ROW_TILES * TILE_M, n_queries)
    key_end = visible_key_end(row_end, n_queries, n_keys, valid_keys, IS_CAUSAL)
    scan_end = tl.cdiv(key_end, TILE_N)

    list_id = bh.to(tl.int64) * n_row_groups + group
    index_base = kv_index_ptr + list_id * n_key_tiles
    count = tl.full([], 0, tl.int32)
    for scan_start in range(0, scan_end, SCAN_BLOCK):
        tiles_n = scan_start + tl.arange(0, SCAN_BLOCK)
        tile_ok = (tiles_m[:, None] < n_row_tiles) & (tiles_n[None, :] < scan_end)
        tile_max = tl.load(
            tile_max_base + tiles_m[:, None].to(tl.int64) * stride_xm + tiles_n[None, :] * stride_xn,
            mask=tile_ok, other=float("-inf"),
        )
        # Active iff some row tile of the group may have a nonzero p in it.
        active = tl.max((tile_max > tau_min[:, None]).to(tl.int32), axis=0)
        slot = count + tl.cumsum(active, axis=0) - 1
        tl.store(index_base + slot, tiles_n, mask=active > 0)
        count += tl.sum(active, axis=0)
    tl.store(kv_count_ptr + list_id, count)


@triton.jit
def _adasplash_bwd_key_lists(
    tau_min_ptr, tile_max_ptr, q_count_ptr, q_index_ptr,
    stride_xz, stride_xh, stride_xm, stride_xn,
    n_kv_heads, group_size, n_queries, n_keys, n_row_tiles, n_key_tiles, n_key_groups,
    KEY_TILES: tl.constexpr,
    TILE_M: tl.constexpr,
    TILE_N: tl.constexpr,
    SCAN_BLOCK: tl.constexpr,
    IS_CAUSAL: tl.constexpr,
):
    """Per (key group, b*Hkv): the active (query head g, row tile i) pairs, as g*Mt + i.

    Writes q_count[bkv, group] and q_index[bkv, group, :count], ordered by head, then
    row tile, which fixes the dK/dV accumulation order.
    """
    tl.static_assert(KEY_TILES == 1 or KEY_TILES == 2)
    group = tl.program_id(0)
    bkv = tl.program_id(1)
    batch = bkv // n_kv_heads
    kv_head = bkv % n_kv_heads
    tiles_n = group * KEY_TILES + tl.arange(0, KEY_TILES)
    # Rows above the first that may see this key group (causal) have tile_max = -inf.
    first_row = visible_query_start(group * KEY_TILES * TILE_N, n_queries, n_keys, IS_CAUSAL)
    scan_begin = first_row // TILE_M

    list_id = bkv.to(tl.int64) * n_key_groups + group
    list_len = group_size * n_row_tiles
    index_base = q_index_ptr + list_id * list_len
    count = tl.full([], 0, tl.int32)
    for g in range(0, group_size):
        head = kv_head * group_size + g
        bh = batch.to(tl.int64) * (n_kv_heads * group_size) + head
        tile_max_base = tile_max_ptr + batch.to(tl.int64) * stride_xz + head.to(tl.int64) * stride_xh
        for scan_start in range(scan_begin, n_row_tiles, SCAN_BLOCK):
            tiles_m = scan_start + tl.arange(0, SCAN_BLOCK)
            tau_min = tl.load(tau_min_ptr + bh * n_row_tiles + tiles_m, mask=tiles_m < n_row_tiles,
                              other=float("inf"))
            tile_ok = (tiles_m[:, None] < n_row_tiles) & (tiles_n[None, :] < n_key_tiles)
            tile_max = tl.load(
                tile_max_base + tiles_m[:, None].to(tl.int64) * stride_xm + tiles_n[None, :] * stride_xn,
                mask=tile_ok, other=float("-inf"),
            )
            active = tl.max((tile_max > tau_min[:, None]).to(tl.int32), axis=1)
            slot = count + tl.cumsum(active, axis=0) - 1
            tl.store(index_base + slot, g * n_row_tiles + tiles_m, mask=active > 0)
            count += tl.sum(active, axis=0)
    tl.store(q_count_ptr + list_id, count)


# --------------------------------------------------------------------------------------
# dQ (query-stationary)
# --------------------------------------------------------------------------------------


@triton.jit
def _tile_offsets(offs_rows, stride_row, offs_d, stride_d):
    """Loop-invariant int32 offsets of a (rows, BLOCK_D) tile relative to its first row.

    Block starts are applied to the base pointer in int64 instead, so that a row index
    times its stride never wraps, while the per-element arithmetic stays 32-bit.
    """
    return offs_rows[:, None] * stride_row + offs_d[None, :] * stride_d


@triton.jit
def _load_tile(block_ptr, offsets, rows_ok, d_ok, EVEN_D: tl.constexpr):
    """Tile at block_ptr + offsets; zero in rows past the sequence and columns past D."""
    if EVEN_D:
        mask = rows_ok[:, None]
    else:
        mask = rows_ok[:, None] & d_ok[None, :]
    return tl.load(block_ptr + offsets, mask=mask, other=0.0)


@triton.jit
def _store_tile(block_ptr, offsets, value, rows_ok, d_ok, EVEN_D: tl.constexpr):
    """Stores the fp32 accumulator value, cast to the output's dtype."""
    if EVEN_D:
        mask = rows_ok[:, None]
    else:
        mask = rows_ok[:, None] & d_ok[None, :]
    tl.store(block_ptr + offsets, value.to(block_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _adasplash_bwd_dq_step(
    q, do, tau, k_base, v_base, k_offs, v_offs, start_n, offs_m, offs_n, d_ok,
    stride_kn, stride_vn, n_queries, n_keys, valid_queries, valid_keys, qk_scale, u_exp, masked,
    IS_CAUSAL: tl.constexpr,
    ALPHA_MODE: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    EVEN_D: tl.constexpr,
    TMA: tl.constexpr,
):
    """u', dP and K of the (BLOCK_M x BLOCK_N) block at keys start_n + offs_n (u = U_SCALE u',
    ``_entmax_weights``); k_base and v_base point to the key and value head, or with TMA
    are (``head_descriptor``, head). masked: see ``_half_gaps``."""
    keys = start_n + offs_n
    if TMA:
        k = descriptor_tile(k_base[0], k_base[1], start_n)
        v = descriptor_tile(v_base[0], v_base[1], start_n)
    else:
        keys_ok = keys < n_keys
        k = _load_tile(k_base + start_n.to(tl.int64) * stride_kn, k_offs, keys_ok, d_ok, EVEN_D)
        v = _load_tile(v_base + start_n.to(tl.int64) * stride_vn, v_offs, keys_ok, d_ok, EVEN_D)
    s = tile_dot(q, tl.trans(k), None, DOT_PRECISION)
    # Masked pairs (causal, padding, ragged edge) get h = 0, hence p = u = 0.
    h = _half_gaps(s, qk_scale, tau[:, None], offs_m, keys, n_queries, n_keys, valid_queries, valid_keys, masked,
                   IS_CAUSAL, False)
    _, u = _entmax_weights(h, u_exp, ALPHA_MODE)
    dp = tile_dot(do, tl.trans(v), None, DOT_PRECISION)
    return u, dp, k


@triton.jit
def _adasplash_bwd_dq(
    q_ptr, k_ptr, v_ptr, do_ptr, tau_ptr, u_value_mean_ptr, delta_ptr, dq_ptr, kv_count_ptr, kv_index_ptr,
    seqlens_ptr,
    stride_qz, stride_qh, stride_qm, stride_qd,
    stride_kz, stride_kh, stride_kn, stride_kd,
    stride_vz, stride_vh, stride_vn, stride_vd,
    stride_doz, stride_doh, stride_dom, stride_dod,
    stride_dqz, stride_dqh, stride_dqm, stride_dqd,
    stride_tz, stride_th, stride_tm,
    stride_uz, stride_uh, stride_um, stride_ud,
    n_q_heads, group_size, n_queries, n_keys, head_dim, n_key_tiles, n_row_groups,
    qk_scale, u_exp, scale,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    TILE_N: tl.constexpr,
    LIST_ROWS: tl.constexpr,
    IS_CAUSAL: tl.constexpr,
    HAS_SEQLENS: tl.constexpr,
    ALPHA_MODE: tl.constexpr,
    DOT_MODE: tl.constexpr,
    EVEN_D: tl.constexpr,
    TMA: tl.constexpr,
):
    """Per (row block, b*Hq): dQ and DELTA of the block's rows (DELTA stored), in one sweep
    over the active key tiles; for alpha = 1.5 DELTA comes from the forward's u_value_mean.
    With TMA the K and V tiles come through descriptors (kernels/tensor_maps.py)."""
    # Inductor passes Python floats to user kernels as fp64; keep the math in fp32.
    qk_scale = tl.cast(qk_scale, tl.float32)
    u_exp = tl.cast(u_exp, tl.float32)
    scale = tl.cast(scale, tl.float32)
    tl.static_assert(TILE_N % BLOCK_N == 0)
    tl.static_assert(LIST_ROWS % BLOCK_M == 0)
    DOT_PRECISION: tl.constexpr = "ieee" if DOT_MODE == DOT_IEEE else "tf32x3" if DOT_MODE == DOT_TF32X3 else "tf32"
    start_m = heaviest_first(tl.program_id(0), tl.num_programs(0), IS_CAUSAL) * BLOCK_M
    bh = tl.program_id(1)
    batch = (bh // n_q_heads).to(tl.int64)
    head = (bh % n_q_heads).to(tl.int64)
    kv_head = head // group_size
    if TMA:
        n_kv_heads = n_q_heads // group_size
        k_base = (head_descriptor(k_ptr, batch, stride_kz, n_kv_heads, stride_kh, n_keys, stride_kn, BLOCK_N, BLOCK_D),
                  kv_head.to(tl.int32))
        v_base = (head_descriptor(v_ptr, batch, stride_vz, n_kv_heads, stride_vh, n_keys, stride_vn, BLOCK_N, BLOCK_D),
                  kv_head.to(tl.int32))
    else:
        k_base = k_ptr + batch * stride_kz + kv_head * stride_kh
        v_base = v_ptr + batch * stride_vz + kv_head * stride_vh

    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    rows_ok = offs_m < n_queries
    d_ok = offs_d < head_dim
    q_offs = _tile_offsets(tl.arange(0, BLOCK_M), stride_qm, offs_d, stride_qd)
    do_offs = _tile_offsets(tl.arange(0, BLOCK_M), stride_dom, offs_d, stride_dod)
    k_offs = _tile_offsets(offs_n, stride_kn, offs_d, stride_kd)
    v_offs = _tile_offsets(offs_n, stride_vn, offs_d, stride_vd)
    q = _load_tile(q_ptr + batch * stride_qz + head * stride_qh + start_m.to(tl.int64) * stride_qm, q_offs,
                   rows_ok, d_ok, EVEN_D)
    do = _load_tile(do_ptr + batch * stride_doz + head * stride_doh + start_m.to(tl.int64) * stride_dom, do_offs,
                    rows_ok, d_ok, EVEN_D)
    tau_base = tau_ptr + batch * stride_tz + head * stride_th
    tau = tl.load(tau_base + offs_m.to(tl.int64) * stride_tm, mask=rows_ok, other=float("inf"))
    valid_queries, valid_keys = valid_lengths(seqlens_ptr, batch, n_queries, n_keys, HAS_SEQLENS)
    first_masked = first_masked_tile(start_m, n_queries, n_keys, valid_queries, valid_keys, IS_CAUSAL, BLOCK_M,
                                     BLOCK_N)
    _, U_SCALE = _weight_scales(ALPHA_MODE)

    list_id = bh.to(tl.int64) * n_row_groups + start_m // LIST_ROWS
    count = tl.load(kv_count_ptr + list_id)
    index_base = kv_index_ptr + list_id * n_key_tiles

    # DELTA = sum_j u dP_j / sum_j u. For alpha = 1.5 it is dO . u_value_mean, one row dot
    # product before the sweep (kernels/forward.py ``output_pass``), where learning it
    # during the sweep takes a fourth product per tile and a (BLOCK_M, BLOCK_D)
    # multiply-add. Other alphas learn it: their u jumps (alpha = 2, from 0 to 1) or rises
    # steeply at the support's edge, so an entry that the forward and this kernel round to
    # different sides of tau would move a DELTA taken from the forward by a whole share,
    # and dQ with it, by that share times the keys' common mean (dQ's error 5.8e-2 on the
    # banded 16k sparsemax test, against its 4e-2 bar). Learned here, DELTA keeps
    # sum_j dS_j = 0 over this kernel's own support, which cancels that mean.
    # The learned sum: acc holds sum u (dP - delta_seen) K over the tiles seen so far,
    # where delta_seen is DELTA over those tiles; when a tile moves it, acc is re-centred
    # through u_key = sum u K. The tiles run from the last one backwards (under causal
    # attention, from the diagonal), so that where attention is local delta_seen starts
    # near DELTA and the re-centring stays small next to acc.
    if ALPHA_MODE == ALPHA_ENTMAX15:
        u_mean_offs = _tile_offsets(tl.arange(0, BLOCK_M), stride_um, offs_d, stride_ud)
        u_mean = _load_tile(u_value_mean_ptr + batch * stride_uz + head * stride_uh
                            + start_m.to(tl.int64) * stride_um, u_mean_offs, rows_ok, d_ok, EVEN_D)
        delta = tl.sum(do.to(tl.float32) * u_mean, axis=1)
    else:
        delta = tl.zeros([BLOCK_M], dtype=tl.float32)
    u_sum = tl.zeros([BLOCK_M], dtype=tl.float32)
    u_dp_sum = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    u_key = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    # Index idx + 1 is read at the top of step idx: read at the bottom, next to the
    # copies of the next tile that need it, its latency delayed them on every step.
    next_tile = tl.load(index_base + count - 1, mask=count > 0, other=0)
    for idx in range(0, count):
        tile_n = next_tile
        next_tile = tl.load(index_base + count - 2 - idx, mask=idx + 1 < count, other=0)
        for sub in tl.static_range(TILE_N // BLOCK_N):
            start_n = tile_n * TILE_N + sub * BLOCK_N
            u, dp, k = _adasplash_bwd_dq_step(
                q, do, tau, k_base, v_base, k_offs, v_offs, start_n, offs_m, offs_n, d_ok,
                stride_kn, stride_vn, n_queries, n_keys, valid_queries, valid_keys, qk_scale, u_exp,
                start_n >= first_masked * BLOCK_N, IS_CAUSAL, ALPHA_MODE, DOT_PRECISION, EVEN_D, TMA,
            )
            if ALPHA_MODE != ALPHA_ENTMAX15:
                u_sum += tl.sum(u, axis=1)
                u_dp_sum += tl.sum(u * dp, axis=1)
                # A row with no support so far (or at all) keeps DELTA = 0.
                delta_seen = tl.where(u_sum > 0.0, u_dp_sum / tl.where(u_sum > 0.0, u_sum, 1.0), 0.0)
                acc += (delta - delta_seen)[:, None] * u_key
                delta = delta_seen
            ds = u * (dp - delta[:, None])
            acc = tile_dot(ds.to(k.dtype), k, acc, DOT_PRECISION)
            if ALPHA_MODE != ALPHA_ENTMAX15:
                u_key = tile_dot(u.to(k.dtype), k, u_key, DOT_PRECISION)
    tl.store(delta_ptr + bh.to(tl.int64) * n_queries + offs_m, delta, mask=rows_ok)

    dq_offs = _tile_offsets(tl.arange(0, BLOCK_M), stride_dqm, offs_d, stride_dqd)
    _store_tile(dq_ptr + batch * stride_dqz + head * stride_dqh + start_m.to(tl.int64) * stride_dqm, dq_offs,
                acc * (scale * U_SCALE), rows_ok, d_ok, EVEN_D)


allocate_scratch_before_launch(_adasplash_bwd_dq, "TMA")


# --------------------------------------------------------------------------------------
# dK, dV (key-stationary)
# --------------------------------------------------------------------------------------


@triton.jit
def _adasplash_bwd_dkdv(
    q_ptr, k_ptr, v_ptr, do_ptr, tau_ptr, delta_ptr, dk_ptr, dv_ptr, q_count_ptr, q_index_ptr, seqlens_ptr,
    stride_qz, stride_qh, stride_qm, stride_qd,
    stride_kz, stride_kh, stride_kn, stride_kd,
    stride_vz, stride_vh, stride_vn, stride_vd,
    stride_doz, stride_doh, stride_dom, stride_dod,
    stride_dkz, stride_dkh, stride_dkn, stride_dkd,
    stride_dvz, stride_dvh, stride_dvn, stride_dvd,
    stride_tz, stride_th, stride_tm,
    n_kv_heads, group_size, n_queries, n_keys, head_dim, n_row_tiles, n_key_groups,
    qk_scale, u_exp, scale,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    TILE_M: tl.constexpr,
    LIST_KEYS: tl.constexpr,
    IS_CAUSAL: tl.constexpr,
    HAS_SEQLENS: tl.constexpr,
    ALPHA_MODE: tl.constexpr,
    DOT_MODE: tl.constexpr,
    EVEN_D: tl.constexpr,
    TMA: tl.constexpr,
):
    """Per (key block, b*Hkv): dK and dV summed over the GROUP query heads, no atomics.
    With TMA the Q and dO tiles come through descriptors (kernels/tensor_maps.py).

    Works on transposed blocks (keys x rows) so that P^T and dS^T come straight out of
    the score accumulator as the left operand of the dV and dK products.
    """
    # Inductor passes Python floats to user kernels as fp64; keep the math in fp32.
    qk_scale = tl.cast(qk_scale, tl.float32)
    u_exp = tl.cast(u_exp, tl.float32)
    scale = tl.cast(scale, tl.float32)
    tl.static_assert(TILE_M % BLOCK_M == 0)
    tl.static_assert(LIST_KEYS % BLOCK_N == 0)
    DOT_PRECISION: tl.constexpr = "ieee" if DOT_MODE == DOT_IEEE else "tf32x3" if DOT_MODE == DOT_TF32X3 else "tf32"
    start_n = tl.program_id(0) * BLOCK_N
    bkv = tl.program_id(1)
    batch = (bkv // n_kv_heads).to(tl.int64)
    kv_head = (bkv % n_kv_heads).to(tl.int64)

    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_m_block = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    keys_ok = offs_n < n_keys
    d_ok = offs_d < head_dim
    k_offs = _tile_offsets(tl.arange(0, BLOCK_N), stride_kn, offs_d, stride_kd)
    v_offs = _tile_offsets(tl.arange(0, BLOCK_N), stride_vn, offs_d, stride_vd)
    k = _load_tile(k_ptr + batch * stride_kz + kv_head * stride_kh + start_n.to(tl.int64) * stride_kn, k_offs,
                   keys_ok, d_ok, EVEN_D)
    v = _load_tile(v_ptr + batch * stride_vz + kv_head * stride_vh + start_n.to(tl.int64) * stride_vn, v_offs,
                   keys_ok, d_ok, EVEN_D)
    valid_queries, valid_keys = valid_lengths(seqlens_ptr, batch, n_queries, n_keys, HAS_SEQLENS)
    P_SCALE, U_SCALE = _weight_scales(ALPHA_MODE)

    if TMA:
        n_q_heads = n_kv_heads * group_size
        q_descriptor = head_descriptor(q_ptr, batch, stride_qz, n_q_heads, stride_qh, n_queries, stride_qm, BLOCK_M,
                                       BLOCK_D)
        do_descriptor = head_descriptor(do_ptr, batch, stride_doz, n_q_heads, stride_doh, n_queries, stride_dom,
                                        BLOCK_M, BLOCK_D)
    else:
        q_offs = _tile_offsets(offs_m_block, stride_qm, offs_d, stride_qd)
        do_offs = _tile_offsets(offs_m_block, stride_dom, offs_d, stride_dod)

    list_id = bkv.to(tl.int64) * n_key_groups + start_n // LIST_KEYS
    count = tl.load(q_count_ptr + list_id)
    index_base = q_index_ptr + list_id * (group_size * n_row_tiles)

    dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    # As in the dQ kernel, entry idx + 1 is read at the top of step idx.
    next_entry = tl.load(index_base, mask=count > 0, other=0)
    for idx in range(0, count):
        entry = next_entry
        next_entry = tl.load(index_base + idx + 1, mask=idx + 1 < count, other=0)
        g = entry // n_row_tiles
        tile_m = entry - g * n_row_tiles
        head = kv_head * group_size + g
        tau_base = tau_ptr + batch * stride_tz + head * stride_th
        delta_base = delta_ptr + (batch * (n_kv_heads * group_size) + head) * n_queries
        for sub in tl.static_range(TILE_M // BLOCK_M):
            start_m = tile_m * TILE_M + sub * BLOCK_M
            offs_m = start_m + offs_m_block
            rows_ok = offs_m < n_queries
            if TMA:
                q = descriptor_tile(q_descriptor, head.to(tl.int32), start_m)
                do = descriptor_tile(do_descriptor, head.to(tl.int32), start_m)
            else:
                q_base = q_ptr + batch * stride_qz + head * stride_qh + start_m.to(tl.int64) * stride_qm
                do_base = do_ptr + batch * stride_doz + head * stride_doh + start_m.to(tl.int64) * stride_dom
                q = _load_tile(q_base, q_offs, rows_ok, d_ok, EVEN_D)
                do = _load_tile(do_base, do_offs, rows_ok, d_ok, EVEN_D)
            tau = tl.load(tau_base + offs_m.to(tl.int64) * stride_tm, mask=rows_ok, other=float("inf"))
            delta = tl.load(delta_base + offs_m, mask=rows_ok, other=0.0)

            s_t = tile_dot(k, tl.trans(q), None, DOT_PRECISION)
            masked = start_n >= first_masked_tile(start_m, n_queries, n_keys, valid_queries, valid_keys, IS_CAUSAL,
                                                  BLOCK_M, BLOCK_N) * BLOCK_N
            h_t = _half_gaps(s_t, qk_scale, tau[None, :], offs_m, offs_n, n_queries, n_keys, valid_queries,
                             valid_keys, masked, IS_CAUSAL, True)
            p_t, u_t = _entmax_weights(h_t, u_exp, ALPHA_MODE)
            dv = tile_dot(p_t.to(do.dtype), do, dv, DOT_PRECISION)
            dp_t = tile_dot(v, tl.trans(do), None, DOT_PRECISION)
            ds_t = u_t * (dp_t - delta[None, :])
            dk = tile_dot(ds_t.to(q.dtype), q, dk, DOT_PRECISION)

    dk_offs = _tile_offsets(tl.arange(0, BLOCK_N), stride_dkn, offs_d, stride_dkd)
    dv_offs = _tile_offsets(tl.arange(0, BLOCK_N), stride_dvn, offs_d, stride_dvd)
    _store_tile(dk_ptr + batch * stride_dkz + kv_head * stride_dkh + start_n.to(tl.int64) * stride_dkn, dk_offs,
                dk * (scale * U_SCALE), keys_ok, d_ok, EVEN_D)
    _store_tile(dv_ptr + batch * stride_dvz + kv_head * stride_dvh + start_n.to(tl.int64) * stride_dvn, dv_offs,
                dv * P_SCALE, keys_ok, d_ok, EVEN_D)


allocate_scratch_before_launch(_adasplash_bwd_dkdv, "TMA")


# --------------------------------------------------------------------------------------
# Launcher
# --------------------------------------------------------------------------------------


def _identity(kernel):
    return kernel


def _dot_mode(dtype: torch.dtype, config: BackwardConfig) -> int:
    return _FP32_DOT_MODES[config.fp32_dot] if dtype == torch.float32 else DOT_NATIVE.value


def _alpha_mode(alpha: float) -> int:
    if alpha == 2.0:
        return ALPHA_SPARSEMAX.value
    if alpha == 1.5:
        return ALPHA_ENTMAX15.value
    return ALPHA_GENERAL.value


class TileLists(NamedTuple):
    """Active-tile lists; an entry of a list is read only below its count.

    tau_min  float32 (B, Hq, Mt): min of tau over the real rows of each row tile
    kv_count int32 (B, Hq, row groups); kv_index int32 (B, Hq, row groups, Nt): active
             key tiles of each group of ``list_rows`` query rows, ascending
    q_count  int32 (B, Hkv, key groups); q_index int32 (B, Hkv, key groups, GROUP * Mt):
             active (query head g, row tile i) of each group of ``list_keys`` keys, as
             g * Mt + i, ascending
    """

    tau_min: torch.Tensor
    kv_count: torch.Tensor
    kv_index: torch.Tensor
    q_count: torch.Tensor
    q_index: torch.Tensor


def active_tile_lists(tau, tile_max, n_kv_heads, n_keys, is_causal, seqlens, *,
                      list_rows=TILE_M, list_keys=TILE_N, wrap=None) -> TileLists:
    """Launches the two list builders; a tile is active iff tile_max > its row tile's tau_min."""
    launch = wrap or _identity
    batch, n_q_heads, n_queries = tau.shape
    group_size = n_q_heads // n_kv_heads
    n_row_tiles = triton.cdiv(n_queries, TILE_M)
    n_key_tiles = triton.cdiv(n_keys, TILE_N)
    n_row_groups = triton.cdiv(n_queries, list_rows)
    n_key_groups = triton.cdiv(n_keys, list_keys)
    device = tau.device
    lists = TileLists(
        tau_min=torch.empty((batch, n_q_heads, n_row_tiles), dtype=torch.float32, device=device),
        kv_count=torch.empty((batch, n_q_heads, n_row_groups), dtype=torch.int32, device=device),
        kv_index=torch.empty((batch, n_q_heads, n_row_groups, n_key_tiles), dtype=torch.int32, device=device),
        q_count=torch.empty((batch, n_kv_heads, n_key_groups), dtype=torch.int32, device=device),
        q_index=torch.empty((batch, n_kv_heads, n_key_groups, group_size * n_row_tiles), dtype=torch.int32,
                            device=device),
    )
    has_seqlens = seqlens is not None
    launch(_adasplash_bwd_row_lists)[(n_row_groups, batch * n_q_heads)](
        tau, tile_max, lists.tau_min, lists.kv_count, lists.kv_index, seqlens if has_seqlens else tau,
        *tau.stride(), *tile_max.stride(),
        n_q_heads, n_queries, n_keys, n_row_tiles, n_key_tiles, n_row_groups,
        ROW_TILES=list_rows // TILE_M, TILE_M=TILE_M, TILE_N=TILE_N, SCAN_BLOCK=SCAN_BLOCK,
        IS_CAUSAL=is_causal, HAS_SEQLENS=has_seqlens,
    )
    launch(_adasplash_bwd_key_lists)[(n_key_groups, batch * n_kv_heads)](
        lists.tau_min, tile_max, lists.q_count, lists.q_index,
        *tile_max.stride(),
        n_kv_heads, group_size, n_queries, n_keys, n_row_tiles, n_key_tiles, n_key_groups,
        KEY_TILES=list_keys // TILE_N, TILE_M=TILE_M, TILE_N=TILE_N, SCAN_BLOCK=SCAN_BLOCK,
        IS_CAUSAL=is_causal,
    )
    return lists


def attention_backward(
    grad_out: torch.Tensor,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    tau: torch.Tensor,
    tile_max: torch.Tensor,
    u_value_mean: torch.Tensor,
    alpha: float,
    is_causal: bool,
    scale: float,
    seqlens: Optional[torch.Tensor],
    *,
    wrap=None,
    config: Optional[BackwardConfig] = None,
    autotune: bool = False,
):
    """(grad_query, grad_key, grad_value) of AdaSplash-2 attention, recomputing P from tau.

    Shapes: query, grad_out (B, Hq, M, D); key, value (B, Hkv, N, D); tau float32
    (B, Hq, M); tile_max float32 (B, Hq, cdiv(M, TILE_M) + 1, cdiv(N, TILE_N) + 1) (the
    padding row and column, see options.tile_grid, are never read); u_value_mean float32
    (B, Hq, M, D) (adasplash_compile.options); seqlens integer (B,) or None. Any strides.
    Outputs have the shapes and dtypes of query, key and value.

    Only allocates with torch.empty and launches kernels (no syncs, no value-dependent
    Python), so it traces under ``wrap=torch.library.wrap_triton`` and CUDA-graph capture.
    ``config`` overrides ``backward_config(D, dtype, device type)``. ``autotune`` keeps the
    config's block sizes and lets the dQ and dK/dV kernels each choose their warps and
    stages among ``autotune_launch_options`` (kernels/autotuning.py).
    """
    launch = wrap or _identity
    batch, n_q_heads, n_queries, _ = query.shape
    n_kv_heads, n_keys = key.shape[1], key.shape[2]
    # BLOCK_D and the config are compile-time choices, so D is pinned (int() of a SymInt).
    head_dim = int(query.shape[3])
    group_size = n_q_heads // n_kv_heads
    config = config or backward_config(head_dim, query.dtype, query.device.type)
    check_backward_config(config)

    n_row_tiles = triton.cdiv(n_queries, TILE_M)
    n_key_tiles = triton.cdiv(n_keys, TILE_N)
    list_rows = max(config.dq_block_m, TILE_M)
    list_keys = max(config.dkv_block_n, TILE_N)
    n_row_groups = triton.cdiv(n_queries, list_rows)
    n_key_groups = triton.cdiv(n_keys, list_keys)

    lists = active_tile_lists(tau, tile_max, n_kv_heads, n_keys, is_causal, seqlens,
                              list_rows=list_rows, list_keys=list_keys, wrap=wrap)
    grad_query = torch.empty_like(query)
    grad_key = torch.empty_like(key)
    grad_value = torch.empty_like(value)
    # DELTA of every row < M is written by the dQ kernel before the dK/dV kernel reads it.
    delta = torch.empty((batch, n_q_heads, n_queries), dtype=torch.float32, device=query.device)

    has_seqlens = seqlens is not None
    # The kernels read seqlens_ptr + b; a (B,) copy is cheap. tau is a dummy pointer,
    # never read when HAS_SEQLENS is False.
    seqlens_arg = seqlens.contiguous() if has_seqlens else tau
    # float() of a float would turn a traced constant into a SymFloat (see validation.py).
    alpha = alpha if isinstance(alpha, float) else float(alpha)
    qk_scale = (alpha - 1.0) * scale  # z = (alpha - 1) * scale * q.k
    u_exp = (2.0 - alpha) / (alpha - 1.0)  # u = gap^u_exp
    alpha_mode = _alpha_mode(alpha)
    block_d = max(16, triton.next_power_of_2(head_dim))  # tl.dot needs K >= 16
    even_d = block_d == head_dim
    dot_mode = _dot_mode(query.dtype, config)
    # The dQ kernel streams K and V, the dK/dV kernel Q and dO: through the copy engine
    # where it can (kernels/tensor_maps.py).
    tma = config.tma
    if tma is None:
        tma = descriptors_supported(query, key, value, grad_out, head_dim=head_dim, block_d=block_d)

    if autotune:
        candidates = autotune_launch_options(query.dtype)
        dq_kernel = autotuned(_adasplash_bwd_dq, candidates, key=("n_queries", "n_keys"))
        dkdv_kernel = autotuned(_adasplash_bwd_dkdv, candidates, key=("n_queries", "n_keys"))
        dq_options, dkdv_options = {}, {}
    else:
        dq_kernel, dkdv_kernel = _adasplash_bwd_dq, _adasplash_bwd_dkdv
        dq_options = dict(num_warps=config.dq_warps, num_stages=config.dq_stages)
        dkdv_options = dict(num_warps=config.dkv_warps, num_stages=config.dkv_stages)

    launch(dq_kernel)[(triton.cdiv(n_queries, config.dq_block_m), batch * n_q_heads)](
        query, key, value, grad_out, tau, u_value_mean, delta, grad_query, lists.kv_count, lists.kv_index,
        seqlens_arg,
        *query.stride(), *key.stride(), *value.stride(), *grad_out.stride(), *grad_query.stride(),
        *tau.stride(), *u_value_mean.stride(),
        n_q_heads, group_size, n_queries, n_keys, head_dim, n_key_tiles, n_row_groups,
        qk_scale, u_exp, scale,
        BLOCK_M=config.dq_block_m, BLOCK_N=config.dq_block_n, BLOCK_D=block_d, TILE_N=TILE_N,
        LIST_ROWS=list_rows, IS_CAUSAL=is_causal, HAS_SEQLENS=has_seqlens, ALPHA_MODE=alpha_mode,
        DOT_MODE=dot_mode, EVEN_D=even_d, TMA=tma, **dq_options,
    )
    launch(dkdv_kernel)[(triton.cdiv(n_keys, config.dkv_block_n), batch * n_kv_heads)](
        query, key, value, grad_out, tau, delta, grad_key, grad_value, lists.q_count, lists.q_index, seqlens_arg,
        *query.stride(), *key.stride(), *value.stride(), *grad_out.stride(), *grad_key.stride(),
        *grad_value.stride(), *tau.stride(),
        n_kv_heads, group_size, n_queries, n_keys, head_dim, n_row_tiles, n_key_groups,
        qk_scale, u_exp, scale,
        BLOCK_M=config.dkv_block_m, BLOCK_N=config.dkv_block_n, BLOCK_D=block_d, TILE_M=TILE_M,
        LIST_KEYS=list_keys, IS_CAUSAL=is_causal, HAS_SEQLENS=has_seqlens, ALPHA_MODE=alpha_mode,
        DOT_MODE=dot_mode, EVEN_D=even_d, TMA=tma, **dkdv_options,
    )
    return grad_query, grad_key, grad_value
