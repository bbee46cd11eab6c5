"""Dense row blocks' output from candidate lists, in place of threshold sweeps and an
output pass over every tile.

A row block with dense scores has few entries above its rows' floors: the CPU model
(benchmarks/sweep_model.py rows, the benchmark's dense workload) puts a row's support at
24 entries at the median and 62 at most, the entries above the max sweep's floor at
27-31 and 73 at most, at N = 8192 and 32768. So:

1. ``_adasplash_fwd_candidates`` runs Q.K^T over the listed tiles of a block that takes
   lists (``takes_lists``: the lift that marks kernels/low_bracket.py's low blocks, and
   LIST_MIN_KEYS keys a row) once, and appends every entry above its row's floor, as
   (key index, z bits), to the row's list of MAX_CANDIDATES slots. It marks the block
   handled when every row's list fits.
2. ``_adasplash_fwd_candidate_output`` solves each row's threshold exactly on its list
   (every entry above the floor, so every entry of the support), then gathers the V rows
   of its support: out, u_value_mean, tau and tile_max as the threshold/output kernel
   writes them.
3. The threshold/output kernel skips handled blocks; the others (any block that takes
   no lists, or whose lists overflow) take its sweeps and output pass as before.

Steps 1 and 2 run once per slice of the (batch, head) pairs, the slices sharing one
slice's lists (``list_slices``): whole, the lists took half the forward's memory at
32768 queries.

An entry's slot is its row's count before the tile plus the kept entries left of it in
the tile (``_ranks_in_row``): the lists hold the same entries in the same order on every
run, so the sums over them, and the outputs, are bitwise reproducible. Slots claimed by
atomics would follow the order the atomics land in.

In the MMA layout of a score tile, Triton moves a masked scatter store through shared
memory into a blocked layout first (30-42 barriers and 1350-1476 instructions per tile,
sm_90 SASS, triton 3.6). On CUDA the appends therefore go through PTX in the MMA layout,
a paired store predicated on the entry (702 instructions per tile with the ranks). The
interpreter takes tl.store instead. The PTX is marked pure for torch's mutation
analysis, which would take an impure inline_asm to write every argument of the kernel; a
plain tl.store to each buffer the PTX writes, masked off at run time, keeps those buffers
among the kernel's reported writes.
"""

import triton
import triton.language as tl

from adasplash_compile.kernels.forward import (
    LIST_HEAD,
    block_keys,
    group_min,
    list_active_tiles,
    load_q_tile,
    query_rows,
    score_tile,
    start_bracket,
)
from adasplash_compile.kernels.low_bracket import lifted_block
from adasplash_compile.kernels.masking import heaviest_first, valid_lengths, visible_key_end
from adasplash_compile.kernels.products import INTERPRETED
from adasplash_compile.kernels.tau import ALPHA_ONE_HALF

# The lists' threshold solve is alpha = 1.5's (``solve_listed_threshold``).
ALPHA_MODE: tl.constexpr = tl.constexpr(ALPHA_ONE_HALF)
# Slots per row: a dense row has at most 73 entries above its floor in the model above;
# at 64 slots 25-29% of the dense benchmark's blocks overflowed on the H100 (N = 8192,
# 32768), and a block with a row past this takes the threshold/output kernel instead.
MAX_CANDIDATES: tl.constexpr = tl.constexpr(128)
# Newton steps at most in the solve on a row's list (``solve_listed_threshold``).
SOLVE_STEPS: tl.constexpr = tl.constexpr(32)
# Rows and warps of an output program (``_adasplash_fwd_candidate_output``).
OUTPUT_ROWS = 16
OUTPUT_WARPS = 4
# Keys every row of a listed block must see: at low_bracket.py's 2048, 72-75% of the
# dense benchmark's blocks took lists at N = 8192; at 512, 94% (H100), the lists of the
# shorter rows fitting as well.
LIST_MIN_KEYS: tl.constexpr = tl.constexpr(512)
# Bytes of candidate lists a launch pair should take (``list_slices``: 16 (batch, head)
# pairs of 16384 queries), and the most launch pairs of one forward.
LIST_SLICE_BYTES = 256 * 2**20
LIST_SLICES = 8
_MAX_GRID_Y = 65535


@triton.jit
def _popcount(x, PTX: tl.constexpr):
    """Set bits of each int32 of x."""
    if PTX:
        return tl.inline_asm_elementwise("popc.b32 $0, $1;", "=r,r", [x], dtype=tl.int32, is_pure=True, pack=1)
    else:
        bits = x.to(tl.uint32, bitcast=True)
        bits = bits - ((bits >> 1) & 0x55555555)
        bits = (bits & 0x33333333) + ((bits >> 2) & 0x33333333)
        bits = (bits + (bits >> 4)) & 0x0F0F0F0F
        return ((bits * 0x01010101) >> 24).to(tl.int32)


@triton.jit
def _ranks_in_row(kept, offs_n, PTX: tl.constexpr):
    """Per entry of a (rows, BLOCK_N <= 64) tile, the number of kept entries left of it in
    its row, and per row the number kept: the row's kept columns as two 32-bit words (a sum
    of distinct powers of two, reduced where the tile lies, with no atomics and no layout
    conversion), then popcounts under each entry's column."""
    tl.static_assert(offs_n.shape[0] <= 64, "a row of the tile must fit two 32-bit words")
    in_low = offs_n < 32
    col_bit = tl.full(offs_n.shape, 1, tl.uint32) << (offs_n % 32).to(tl.uint32)
    below = (col_bit - 1).to(tl.int32, bitcast=True)[None, :]
    col_bit = col_bit.to(tl.int32, bitcast=True)[None, :]
    low_word = tl.sum(tl.where(kept & in_low[None, :], col_bit, 0), 1)
    high_word = tl.sum(tl.where(kept & ~in_low[None, :], col_bit, 0), 1)
    n_low = _popcount(low_word, PTX)
    rank = tl.where(in_low[None, :], _popcount(low_word[:, None] & below, PTX),
                    n_low[:, None] + _popcount(high_word[:, None] & below, PTX))
    return rank, n_low + _popcount(high_word, PTX)


@triton.jit
def _put_pairs(ptr, first, second, keep, PTX: tl.constexpr):
    """Store (first, second) int32 at ptr where keep != 0; returns int32 zeros to use."""
    if PTX:
        return tl.inline_asm_elementwise(
            "{ .reg .pred p; setp.ne.b32 p, $4, 0; @p st.global.v2.b32 [$1], {$2, $3}; mov.u32 $0, 0; }",
            "=r,l,r,r,r", [ptr, first, second, keep], dtype=tl.int32, is_pure=True, pack=1)
    else:
        tl.store(ptr, first, mask=keep != 0)
        tl.store(ptr + 1, second, mask=keep != 0)
        return tl.zeros(keep.shape, tl.int32)


@triton.jit
def takes_lists(lo, hi, local_lo, n_keys, active):
    """Whether a row block takes candidate lists: its scores are dense (the lift that marks
    kernels/low_bracket.py's low blocks) and every row sees LIST_MIN_KEYS keys."""
    return lifted_block(lo, hi, local_lo, n_keys, active, LIST_MIN_KEYS)


@triton.jit
def block_bracket(m_ptr, floor_ptr, local_floor_ptr, row_offset, offs_m, M, n_i, alpha):
    """The rows' (m, m_shift, lo, hi, tau', active) as the threshold/output kernel starts
    from them (``start_bracket``), and whether the block takes lists (``takes_lists``)."""
    m_i, m_shift, lo, hi, tau_i, active = start_bracket(m_ptr, floor_ptr, row_offset, offs_m, M, n_i, alpha,
                                                        ALPHA_MODE)
    local_floor = tl.load(local_floor_ptr + row_offset, mask=offs_m < M, other=float("-inf"))
    listed = takes_lists(lo, hi, local_floor - m_shift, n_i, active)
    return m_i, m_shift, lo, hi, tau_i, active, listed


@triton.jit
def solve_listed_threshold(z, lo, tau, active, tau_tol):
    """tau' of each active row at alpha = 1.5 from its listed entries z (ROWS, slots;
    shifted as lo and tau', -inf in unused slots), which hold every entry above lo: the root
    of f(t) = sum (z - t)_+^2 - 1. Rows not active keep tau.

    f is convex and falls on [lo, tau'], so Newton steps from lo stay at or below tau' and
    never leave the list's range; as sum (z - tau')_+ >= 1 there, tau' - t <= f(t) / 2, and
    the steps stop within tau_tol. The last step solves the quadratic of the support found
    and keeps its root where no entry of that support falls below it: tau' exactly, once the
    support is the row's. Each step reduces along rows only; the edge sweeps of
    kernels/tau.py took 51 barriers a sweep on (ROWS, edges) statistics here (sm_90,
    triton 3.6).
    """
    t = tl.where(active, lo, tau)
    todo = active
    step = 0
    while (step < SOLVE_STEPS) & (tl.max(todo.to(tl.int32), 0) > 0):
        gap = tl.maximum(z - t[:, None], 0.0)
        f = tl.sum(gap * gap, 1) - 1.0
        todo = todo & (f > 2.0 * tau_tol)
        t = tl.where(todo, t + f / (2.0 * tl.maximum(tl.sum(gap, 1), 1.0)), t)
        step += 1
    gap = tl.maximum(z - t[:, None], 0.0)
    in_support = gap > 0.0
    count = tl.sum(in_support.to(tl.float32), 1)
    gap_sum = tl.sum(gap, 1)
    excess = tl.sum(gap * gap, 1) - 1.0
    disc = gap_sum * gap_sum - count * excess
    # The smaller root d of count d^2 - 2 gap_sum d + excess, in the form without cancellation.
    d = excess / (gap_sum + tl.sqrt(tl.maximum(disc, 0.0)))
    smallest = tl.min(tl.where(in_support, gap, float("inf")), 1)
    exact = active & (disc >= 0.0) & (d >= 0.0) & (d <= smallest)
    return tl.where(exact, t + d, t)


@triton.jit
def slice_pair(first_pair, n_heads):
    """This program's (batch, head) pair within its launch's slice (the grid's second
    dimension), and its batch and query head (int64)."""
    list_pair = tl.program_id(1).to(tl.int64)
    pair = list_pair + first_pair
    return list_pair, pair // n_heads, pair % n_heads


@triton.jit(do_not_specialize=["first_pair"])
def _adasplash_fwd_candidates(
    q_ptr, k_ptr, m_ptr, floor_ptr, local_floor_ptr, bound_ptr, rel_bound_ptr, tile_list_ptr, seqlens_ptr,
    candidate_ptr, count_ptr, handled_ptr,
    stride_qz, stride_qh, stride_qm, stride_qd,
    stride_kz, stride_kh, stride_kn, stride_kd,
    stride_tauz, stride_tauh, stride_taum,
    stride_bz, stride_bh, stride_bm, stride_bn,
    stride_lz, stride_lh, stride_lm, stride_ln,
    stride_cp, stride_cm,
    stride_hz, stride_hh, stride_hm,
    M, N, GROUP, n_heads, first_pair, qk_scale, alpha,
    HEAD_DIM: tl.constexpr, HAS_SEQLENS: tl.constexpr, IS_CAUSAL: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, SCAN: tl.constexpr,
    DOT_PRECISION: tl.constexpr, USE_INT64: tl.constexpr, PTX: tl.constexpr,
):
    """Candidate lists of one row block that takes them (module docstring); handled_ptr
    gets 1 where every row's list fits, else 0 (and for blocks that take none).

    m_ptr, floor_ptr, local_floor_ptr and count_ptr share their shape and strides
    (stride_tau*), as do bound_ptr and rel_bound_ptr (stride_b*, the max sweep's);
    tile_list_ptr is the max sweep's list scratch. The launch covers the (batch, head)
    pairs first_pair to first_pair + the grid's second dimension, of n_heads heads a
    batch (``list_slices``); candidate_ptr: int32 (its pairs, M, 2 * MAX_CANDIDATES), per
    row (key index, z bits) pairs, contiguous in the last dimension; count_ptr receives
    each row's number of entries above its floor (past MAX_CANDIDATES where the list
    overflowed). handled_ptr: int32 (B, H, row blocks).
    """
    qk_scale = tl.cast(qk_scale, tl.float32)
    alpha = tl.cast(alpha, tl.float32)
    row_block = heaviest_first(tl.program_id(0), tl.num_programs(0), IS_CAUSAL)
    start_m = row_block * BLOCK_M
    list_pair, off_z, off_h = slice_pair(first_pair, n_heads)
    off_kh = off_h // GROUP
    offs_m, rows_m = query_rows(start_m, BLOCK_M, USE_INT64)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    valid_q, valid_k, n_tiles, n_i, first_masked = block_keys(seqlens_ptr, off_z, start_m, offs_m, M, N, HAS_SEQLENS,
                                                              IS_CAUSAL, BLOCK_M, BLOCK_N)
    row_offset = off_z * stride_tauz + off_h * stride_tauh + rows_m * stride_taum
    m_i, m_shift, lo, hi, tau_i, active, listed = block_bracket(m_ptr, floor_ptr, local_floor_ptr, row_offset,
                                                                 offs_m, M, n_i, alpha)
    handled = tl.zeros([], tl.int32)
    if listed:
        # Entries above the floor for the rows still to solve, above their final threshold
        # for the others; nothing for rows that see no key.
        sees_keys = (m_i > float("-inf")) & (n_i > 0)
        threshold = tl.where(active, m_shift + lo, tl.where(sees_keys, m_shift + tau_i, float("inf")))
        q = load_q_tile(q_ptr + off_z * stride_qz + off_h * stride_qh, rows_m, offs_d, M, stride_qm, stride_qd,
                        HEAD_DIM)
        k_base = k_ptr + off_z * stride_kz + off_kh * stride_kh
        bound_offset = off_z * stride_bz + off_h * stride_bh + row_block * stride_bm
        list_ptr = tile_list_ptr + off_z * stride_lz + off_h * stride_lh + row_block * stride_lm
        n_listed, n_unmasked = list_active_tiles(bound_ptr + bound_offset, rel_bound_ptr + bound_offset, stride_bn,
                                                 list_ptr, stride_ln, n_tiles, first_masked, group_min(threshold),
                                                 group_min(threshold - m_shift), SCAN)
        row_list = candidate_ptr + list_pair * stride_cp + rows_m * stride_cm
        count = tl.zeros([BLOCK_M], tl.int32)
        written = tl.zeros([BLOCK_M], tl.int32)
        next_tile = tl.load(list_ptr + LIST_HEAD * stride_ln, mask=n_listed > 0, other=0)
        for i in range(0, n_listed):
            tile_n = next_tile
            next_tile = tl.load(list_ptr + (i + 1 + LIST_HEAD) * stride_ln, mask=i + 1 < n_listed, other=0)
            start_n = tile_n * BLOCK_N
            z = score_tile(q, k_base, start_n, offs_m, offs_n, offs_d, M, N, valid_q, valid_k, qk_scale,
                           stride_kn, stride_kd, i >= n_unmasked, HEAD_DIM, IS_CAUSAL, DOT_PRECISION, USE_INT64,
                           False)
            kept = z > threshold[:, None]
            # Slots in list order, then column order: the same lists on every run.
            rank, n_kept = _ranks_in_row(kept, offs_n, PTX)
            slot = count[:, None] + rank
            keep = (kept & (slot < MAX_CANDIDATES)).to(tl.int32)
            put = _put_pairs(row_list[:, None] + 2 * slot, start_n + offs_n[None, :] + 0 * slot,
                             z.to(tl.int32, bitcast=True), keep, PTX)
            written = tl.maximum(written, tl.max(put, 1))
            count += n_kept
        tl.store(count_ptr + row_offset, count, mask=offs_m < M)
        fits = tl.max(count + written, 0) <= MAX_CANDIDATES
        handled = fits.to(tl.int32)
        # Never stored (count <= N): reports the list as written to torch's mutation
        # analysis, which does not see the PTX stores.
        tl.store(row_list, count, mask=count > N)
    tl.store(handled_ptr + off_z * stride_hz + off_h * stride_hh + row_block * stride_hm, handled)


@triton.jit(do_not_specialize=["first_pair"])
def _adasplash_fwd_candidate_output(
    v_ptr, out_ptr, u_value_mean_ptr, m_ptr, floor_ptr, local_floor_ptr, tau_ptr, tile_max_ptr, seqlens_ptr,
    candidate_ptr, count_ptr, handled_ptr,
    stride_vz, stride_vh, stride_vn, stride_vd,
    stride_oz, stride_oh, stride_om, stride_od,
    stride_uz, stride_uh, stride_um, stride_ud,
    stride_tauz, stride_tauh, stride_taum,
    stride_tz, stride_th, stride_tm, stride_tn,
    stride_cp, stride_cm,
    stride_hz, stride_hh, stride_hm,
    M, N, GROUP, n_heads, first_pair, alpha, tau_tol,
    HEAD_DIM: tl.constexpr, HAS_SEQLENS: tl.constexpr, IS_CAUSAL: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, USE_INT64: tl.constexpr,
    ROWS: tl.constexpr,
):
    """out, u_value_mean, tau and tile_max of a handled row block from its candidate lists
    (``_adasplash_fwd_candidates``; arguments as there and as in the threshold/output
    kernel), ROWS rows per program; rows of other blocks return at once. tile_max must hold
    -inf on entry.

    Its gather adds one V row per row and slot, OUTPUT_ROWS rows a program (at 64, 251
    registers); each slot's key and gap z - tau come from the list, in the accumulators'
    layout (93 instructions a slot, sm_90, triton 3.6).
    """
    alpha = tl.cast(alpha, tl.float32)
    tau_tol = tl.cast(tau_tol, tl.float32)
    tl.static_assert(BLOCK_M % ROWS == 0, "ROWS must divide BLOCK_M")
    start_m = heaviest_first(tl.program_id(0), tl.num_programs(0), IS_CAUSAL) * ROWS
    row_block = start_m // BLOCK_M
    list_pair, off_z, off_h = slice_pair(first_pair, n_heads)
    handled = tl.load(handled_ptr + off_z * stride_hz + off_h * stride_hh + row_block * stride_hm)
    if handled != 0:
        off_kh = off_h // GROUP
        offs_m, rows_m = query_rows(start_m, ROWS, USE_INT64)
        offs_d = tl.arange(0, BLOCK_D)
        offs_c = tl.arange(0, MAX_CANDIDATES)
        valid_q, valid_k = valid_lengths(seqlens_ptr, off_z, M, N, HAS_SEQLENS)
        n_i = tl.where(offs_m < valid_q, visible_key_end(offs_m + 1, M, N, valid_k, IS_CAUSAL), 0)
        row_offset = off_z * stride_tauz + off_h * stride_tauh + rows_m * stride_taum
        m_i, m_shift, lo, hi, tau_i, active, _ = block_bracket(m_ptr, floor_ptr, local_floor_ptr, row_offset,
                                                                  offs_m, M, n_i, alpha)
        sees_keys = (m_i > float("-inf")) & (n_i > 0)
        count = tl.minimum(tl.load(count_ptr + row_offset, mask=offs_m < M, other=0), MAX_CANDIDATES)
        row_list = candidate_ptr + list_pair * stride_cp + rows_m * stride_cm
        listed = offs_c[None, :] < count[:, None]
        keys = tl.load(row_list[:, None] + 2 * offs_c[None, :], mask=listed, other=0)
        z = tl.load(row_list[:, None] + 2 * offs_c[None, :] + 1, mask=listed, other=0).to(tl.float32, bitcast=True)
        z = tl.where(listed, z, float("-inf"))
        # Every entry above the floor is listed, so f(t) over the list is the row's f(t)
        # for every t >= lo.
        tau_i = solve_listed_threshold(z - m_shift[:, None], lo, tau_i, active, tau_tol)
        tau = tl.where(sees_keys, m_shift + tau_i, float("inf"))
        # tile_max over the support, one masked atomic per listed entry.
        tile_max_row = tile_max_ptr + off_z * stride_tz + off_h * stride_th + row_block * stride_tm
        in_support = z > tau[:, None]
        tl.atomic_max(tile_max_row + (keys // BLOCK_N) * stride_tn, z, mask=in_support, sem="relaxed")
        gap_all = tl.maximum(z - tau[:, None], 0.0)
        l_i = tl.sum(gap_all * gap_all, 1)
        u_sum = tl.sum(gap_all, 1)
        # The gather reads each entry's gap z - tau back from the list: computed from the
        # solve's row vectors inside the loop, it went through a layout conversion in
        # shared memory per slot (six barriers).
        tl.store(row_list[:, None] + 2 * offs_c[None, :] + 1, gap_all.to(tl.int32, bitcast=True), mask=listed)
        tl.debug_barrier()
        count_col = count[:, None]
        list_col = row_list[:, None]
        acc = tl.zeros([ROWS, BLOCK_D], tl.float32)
        acc_u = tl.zeros([ROWS, BLOCK_D], tl.float32)
        v_base = v_ptr + off_z * stride_vz + off_kh * stride_vh
        for slot in range(0, tl.max(count, 0)):
            live = slot < count_col
            key = tl.load(list_col + 2 * slot, mask=live, other=0)
            gap = tl.load(list_col + 2 * slot + 1, mask=live, other=0).to(tl.float32, bitcast=True)
            if USE_INT64:
                key_row = key.to(tl.int64)
            else:
                key_row = key
            v = tl.load(v_base + key_row * stride_vn + offs_d[None, :] * stride_vd,
                        mask=(gap > 0.0) & (offs_d[None, :] < HEAD_DIM), other=0.0).to(tl.float32)
            acc_u += gap * v
            acc += (gap * gap) * v
        out = tl.where(l_i[:, None] > 0.0, acc / tl.where(l_i > 0.0, l_i, 1.0)[:, None], 0.0)
        u_mean = tl.where(u_sum[:, None] > 0.0, acc_u / tl.where(u_sum > 0.0, u_sum, 1.0)[:, None], 0.0)
        tl.store(tau_ptr + row_offset, tau, mask=offs_m < M)
        tile_mask = (offs_m[:, None] < M) & (offs_d[None, :] < HEAD_DIM)
        tl.store(out_ptr + off_z * stride_oz + off_h * stride_oh + rows_m[:, None] * stride_om
                 + offs_d[None, :] * stride_od, out.to(out_ptr.dtype.element_ty), mask=tile_mask)
        tl.store(u_value_mean_ptr + off_z * stride_uz + off_h * stride_uh + rows_m[:, None] * stride_um
                 + offs_d[None, :] * stride_ud, u_mean, mask=tile_mask)


def _runs_ptx(tensor) -> bool:
    """Whether kernels launched on tensor's device compile to PTX: CUDA, not ROCm, not the
    interpreter."""
    import torch

    return tensor.is_cuda and torch.version.hip is None and not INTERPRETED.value


def list_slices(batch, heads, n_queries) -> list:
    """(first pair, pairs) of each pair of candidate launches, over the batch * heads
    (batch, head) pairs in batch-major order.

    The lists take 2 * MAX_CANDIDATES int32 (1 KiB) a query row: 512 MiB for 16 heads of
    32768 queries, four times a bf16 query at D = 128 and, taken whole, half the forward's
    peak there. The launches therefore take the pairs in even slices, as many as it takes
    for a slice's lists to fit LIST_SLICE_BYTES but at most LIST_SLICES (and one per pair),
    and share one slice's lists; a slice holds at most 65535 pairs, a CUDA grid's second
    dimension. Under symbolic shapes (dynamic lengths) one launch covers every pair, as a
    plan from symbolic sizes would guard on them.

    Fewer, larger slices keep the launches' tails short: a causal row block's candidate
    pass grows with its row, and a slice of S bytes holds about S / 50 MiB times the
    longest block's work per program resident on an H200 (three per SM). At 64 MiB
    slices the dense forward took 9-10% longer, at 256 MiB 2.4% (two slices at 16 heads
    of 32768 queries; benchmarks/results/h200-2026-11-28-list-slices.md).
    """
    pairs = batch * heads
    if not all(isinstance(size, int) for size in (batch, heads, n_queries)):
        return [(0, pairs)]
    if pairs == 0:
        return []
    list_bytes = pairs * max(n_queries, 1) * 2 * MAX_CANDIDATES.value * 4
    slices = max(1, min(LIST_SLICES, pairs, -(-list_bytes // LIST_SLICE_BYTES)), -(-pairs // _MAX_GRID_Y))
    per_slice = -(-pairs // slices)
    return [(first, min(per_slice, pairs - first)) for first in range(0, pairs, per_slice)]


def launch_candidates(query, key, value, out, u_value_mean, row_max, floor, local_floor, tau, bound, rel_bound,
                      tile_max, tile_list, seqlens_arg, has_seqlens, grid, group, qk_scale, alpha, launch, common,
                      ptx=None):
    """Launch both candidate kernels for the threshold/output kernel's grid and arguments,
    a pair per slice of ``list_slices``; returns the int32 (B, H, row blocks) handled flags
    it must skip. ptx: the appends' form, by default PTX where the kernels compile to it.
    alpha must be 1.5 (``solve_listed_threshold``)."""
    import torch

    if alpha != 1.5:
        raise ValueError(f"launch_candidates: alpha must be 1.5 (the lists' threshold solve), got {alpha}")
    if ptx is None:
        ptx = _runs_ptx(query)

    batch, q_heads, n_queries, _ = query.shape
    n_keys = key.shape[2]
    slices = list_slices(batch, q_heads, n_queries)
    slice_pairs = max(pairs for _, pairs in slices)
    candidates = torch.empty((slice_pairs, n_queries, 2 * MAX_CANDIDATES.value), dtype=torch.int32,
                             device=query.device)
    counts = torch.empty((batch, q_heads, n_queries), dtype=torch.int32, device=query.device)
    handled = torch.empty((batch, q_heads, grid[0]), dtype=torch.int32, device=query.device)
    from adasplash_compile.kernels.forward import _TILE_SCAN, _needs_int64
    from adasplash_compile.kernels.tau import tau_tolerance

    # A list row (2 * MAX_CANDIDATES int32) is wider than a query row at D < 256, so the
    # lists may need 64-bit row offsets where the inputs do not.
    shared = dict(HEAD_DIM=common["HEAD_DIM"], HAS_SEQLENS=has_seqlens, IS_CAUSAL=common["IS_CAUSAL"],
                  BLOCK_M=common["BLOCK_M"], BLOCK_N=common["BLOCK_N"], BLOCK_D=common["BLOCK_D"],
                  USE_INT64=common["USE_INT64"] or _needs_int64(candidates))
    tau_tol = tau_tolerance(alpha, query.dtype)
    for first_pair, pairs in slices:
        launch(_adasplash_fwd_candidates)[(grid[0], pairs, 1)](
            query, key, row_max, floor, local_floor, bound, rel_bound, tile_list, seqlens_arg, candidates, counts,
            handled,
            *query.stride(), *key.stride(), *row_max.stride(), *bound.stride()[:4], *tile_list.stride(),
            *candidates.stride()[:2], *handled.stride(),
            n_queries, n_keys, group, q_heads, first_pair, qk_scale, alpha,
            SCAN=_TILE_SCAN, DOT_PRECISION=common["DOT_PRECISION"], PTX=bool(ptx), **shared,
            num_warps=4, num_stages=2,
        )
        launch(_adasplash_fwd_candidate_output)[(triton.cdiv(n_queries, OUTPUT_ROWS), pairs, 1)](
            value, out, u_value_mean, row_max, floor, local_floor, tau, tile_max, seqlens_arg, candidates, counts,
            handled,
            *value.stride(), *out.stride(), *u_value_mean.stride(), *tau.stride(), *tile_max.stride(),
            *candidates.stride()[:2], *handled.stride(),
            n_queries, n_keys, group, q_heads, first_pair, alpha, tau_tol,
            ROWS=OUTPUT_ROWS, **shared, num_warps=OUTPUT_WARPS, num_stages=2,
        )
    return handled
