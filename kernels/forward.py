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
  tile_max   the op's record for the backward: per TILE_M x TILE_N (64 x 64) tile,
             the largest z among its entries with z > TAU of their row (the
             nonzeros of P), -inf for a tile with none; one extra row and column
             of tiles, always -inf (adasplash_compile.options.tile_grid)
  floor      per-row lower bound on TAU (scratch, from kernel 1), at least m' - 1
             for the max m' of the rows' two local tiles, raised by the histogram
             of the row's tile maxima (kernels/histogram_floor.py)
  bound, rel_bound  scratch per tile and row group (BOUND_GROUPS groups of 16 rows):
             upper bounds on the tile's z and on its shifted scores z - m in the
             group's rows that reach above their floors, or both -inf for a group
             with no entry above its rows' floors in the tile (see kernel 1)
  BLOCK_M, BLOCK_N   query rows per program, keys per step; both equal the tile
             (64), so one step covers exactly one tile
  NBINS, MAX_SWEEPS  edges per threshold sweep; sweeps at most (the first is the
             histogram over the initial bracket)
  EDGE_UNROLL  unroll factor of the per-tile loop over edges (kernels/tau.py)

Three kernels per call: ``_key_tile_summary`` (kernels/key_summary.py), then two with
one program per (Z, H, BLOCK_M rows):

1. ``_adasplash_fwd_rowmax``, the max sweep, in three steps:
   - the block's diagonal tile (the last visible one when causal) and the tile
     before it, exactly: where attention is local the row max and most of the mass
     sit there. ``threshold_floor`` solves their threshold approximately; the
     threshold of a subset of a row's entries is at most the row's, so
     floor = max(its bracket's lower end, m' - 1) <= TAU;
   - every tile bounded by centres and radii, CENTRE_CHUNK (32) tiles per small
     product;
   - exact scores only for tiles whose bound exceeds some row's floor, from the
     diagonal down; the tiles before ``first_masked_tile`` (kernels/masking.py), which
     every row of the block sees whole, skip the per-entry mask here and in kernel 2.
     Each such tile's row maxima also go into a histogram per row, whose lower bound
     on TAU (kernels/histogram_floor.py) raises the floor at the end: on dense scores,
     where a row's largest entries lie in different tiles, it lands close to TAU, so
     the first sweep starts from a narrow bracket (forward 19-22% faster on the
     benchmark's dense workload at N = 8192 and 32768; on mid and high, whose mass is
     local, the step-1 floor is nearly as tight, and the histogram costs 0.5-3%, though
     at mid N = 32768 the forward without it was 14% slower: kernels/histogram_floor.py).
   It writes the row max m and floor, and per tile and group of 16 rows, over the
   group's rows whose max within the tile exceeds their floor (the others hold
   nothing a later pass uses), ``bound`` = the max of that row max and ``rel_bound`` =
   the max of (row max within the tile - running row max): the running max never
   exceeds the final m, so rel_bound >= max (z - m) over those rows, a bound free of
   the row-to-row spread of m. The running max starts at the two local tiles' and
   takes in the tiles from the diagonal down, where on local attention it meets the
   row's max sooner than upwards: the forward got 8.2% faster on mid at N = 32768, 3.9%
   at 8192 and 1.8% on high at 32768, dense within 0.6% (H200, same process,
   benchmarks/results/h200-2026-11-28-descending.md). A group with nothing above its
   rows' floors in a tile holds no nonzero of P there and not its rows' max: both
   bounds -inf, and no later pass visits a tile where every group has them.
   A group is the rows one warp holds, so each warp reduces its own bounds
   (``store_tile_bounds``), where one bound per tile took a reduction across the
   warps. The groups made the max sweep 3-4% faster, and the sweeps and the output
   pass visit about 4% fewer tiles at mid N = 32768 (CPU simulation); the forward is
   2.5% faster there and 0-1% on mid 8192, high 32768 and dense 8192, outputs bitwise
   equal (H100, ``benchmarks/compare_builds.py``).
2. ``_adasplash_fwd_tau_out``: threshold sweeps, then the output pass, all block-sparse:
   - sweep k visits only tiles where some row group has bound > min over its still
     active rows of (m + lo) and rel_bound > min of lo: a tile whose entries all lie
     at or below every row's lower bracket end adds nothing to the tail statistics
     (kernels/tau.py), so it is skipped without recomputing Q.K^T. The first sweep
     (the histogram) starts from lo = floor - m; at most MAX_SWEEPS sweeps, and the
     loop ends as soon as every row of the block has converged: exactly, or to a
     bracket of width ``tau_tol`` (kernels/tau.py ``tau_tolerance``: 2^-20 for
     float32 outputs, 2^-15 for bf16 at alpha = 1.5, far below their rounding).
     The sweeps take Q.K^T unscaled and add the row max to the edges, so that per
     entry and edge the scale, the shift, the subtract and the max are one clamped
     multiply-add (``half_tail_gap``, FFMA.SAT), and the first takes no counts
     (``tau_update``, COUNTS): per tile and thread, 558 instructions for the first
     sweep and 803 for later ones, against 703 and 949 with a scale per entry and a
     subtract and max per entry and edge (SASS, unmasked path). The max moved off
     the ALU pipe, which had bound the sweeps (724 of its cycles against 492 on the
     FMA pipe per counted tile, at half the issue rate). Each row's sums then stay
     spread over the four threads of its quad until the sweep ends
     (``tau_accumulate_lanes``): the loop body, masked path included, went from 685 to
     581 instructions per tile and thread without counts and from 945 to 788 with
     them, and the forward got 4.5-7.6% faster (mid and dense at N = 8192 and 32768,
     high at 32768; H100, same process; the outputs moved by at most 2e-3 on mid and
     7.8e-3 on dense, tau by at most 1.7e-5, under bf16's tau_tol of 2^-15 = 3e-5).
     The sweep before the fold (FOLD below) takes no counts either, but G at every edge
     and the count from its chord (kernels/tau.py CHORD_COUNTS, SWEEP_CHORD): 607
     instructions per tile and thread where the counted sweep takes 766.
   - output: p = [z - TAU]_+^INV up to a constant factor (``half_tail_gap`` again),
     acc += p.V, l += sum p (lane partial sums, as the sweeps': its loop body from 592
     to 534 instructions folded, 534 to 509 plain), out = acc / l (0 where l = 0), over
     the tiles where some row group has bound > min TAU and rel_bound > min (TAU - m)
     over its rows; each visited tile writes its tile_max, so the backward visits
     exactly the tiles holding a nonzero of P. For alpha = 1.5 a second product per tile,
     sum h.V with h = p^(1/2) up to a factor, gives u_value_mean
     (adasplash_compile.options), from which the backward takes DELTA in place of a
     fourth product per tile in its dQ kernel.
   - fold (alpha = 1.5, 16-bit outputs; kernels/fold_output.py): after FOLD_AFTER (2)
     sweeps, a block whose rows have not all converged runs the output pass at the
     estimate, where that second product is sum h.V, and corrects tau and the output
     from its sums, in place of the sweeps left; where the correction misses its
     accuracy bound, the sweeps resume and the output pass runs again. A block with
     dense scores sweeps the bottom of its bracket first and folds after that one sweep
     (kernels/low_bracket.py).
   Before each sweep and the output pass, ``list_active_tiles`` compacts the
   indices of the tiles to visit into int32 scratch (vector loads of the bounds
   plus a prefix sum), so the tile loops carry no per-tile branch or dependent
   scalar load, and their K/V loads can be software-pipelined.
   The kernel reads only inputs and writes only outputs and scratch, so an
   autotuner may relaunch it. With KV_TMA (aligned 16-bit inputs, a power-of-two head
   dim, compute capability 9.0: kernels/tensor_maps.py) its K and V tiles come through
   tensor descriptors, one bulk copy per tile, bitwise the same values: the forward got
   1-3% faster (H100, same process), and 1-5% more with a third pipeline stage
   (``TMA_STAGES``; 113 KB of shared memory, so two programs still share an SM). The max
   sweep reads its K tiles through descriptors as well, at the same depth, and every list
   loop of both kernels reads its next tile index one step ahead (the max sweep's loop
   says why). Through descriptors alone (two stages) the max sweep had moved by -2.3% to
   +1.7% and the forward by at most 0.5% (H100,
   benchmarks/results/h100-2026-11-28-latency.md); the index read one step ahead alone
   moved the forward by -1.4% to +0.3%; both together, at three stages, the forward by
   -1.9% to +0.6% (mid 8192 -1.7 and -1.9%, high 32768 +0.6 and +0.3%) and the max sweep
   by -4.0% to +1.3%, outputs bitwise equal (H200, same process, two runs;
   benchmarks/results/h200-2026-11-28-read-ahead.md).
Both kernels take a causal launch's row blocks last block first (kernels/masking.py
``heaviest_first``, as does the backward's dQ kernel): the blocks that see the most keys
start first and the short ones fill in at the end. Outputs bitwise the same; forward
0.1-1.3% faster, backward from 2.8% faster to 1.5% slower, about a run's spread (H100,
bf16, D = 128, mid, high and dense at N = 8192 and 32768, same process).

Compiled for sm_90 (bf16, D = 128, default config; triton 3.6 ptxas): the max sweep uses
134 registers and 64 KB of shared memory without spills through descriptors at three
stages (offline build at N = 32768, ``benchmarks/offline_sass.py``; 165 before session 27
dropped a fill loop of -inf bounds), so three programs (12 warps) share an SM; with
pointer loads at two stages it took 128 registers and 49 KB, four programs. The output
kernel uses 255 registers and 113 KB with descriptors and three stages (32 bytes of
stack; 82 KB and 80 bytes with pointer loads and two), two programs. Neither is bound
by a pipe. ncu on the H100 (mid, N = 32768): the output
kernel issues in 55% of cycles, its FMA, ALU and tensor pipes 34%, 31% and 30% busy,
with 2 warps per scheduler of which 0.88 are eligible (waits on fixed latencies and on
barriers lead); the max sweep issued in 41% of cycles, stalled mostly on barriers (the
per-tile bound reduction across warps it had then) and long scoreboards (its K tiles).
With two stages, Triton issues the copy of a loop's next K tile at the end of the body
and waits for it at the top, so only the other programs on the SM hide it; a third stage
overlaps it within the program, yet measured 1-3% slower for the output kernel with
pointer loads (two programs per SM still fit, at 113 KB; with descriptors it is 1-5%
faster, ``TMA_STAGES``) and 12% slower for the max sweep with pointer loads (three
programs instead of four; with descriptors and the index read ahead, see above, three
stages pay). Split into a sweep kernel (137 registers, three programs per SM) and an
output kernel, the forward gained 2% at N = 32768 and lost 2-5% at N = 8192; split again after
the fold (sweeps at 168 registers, three programs per SM; outputs bitwise equal), it was
1.7% slower at mid 32768 and 6% at mid 8192, so it stays one kernel: at two programs per
SM the sweeps are bound by the instructions they issue, not by latency. The folded output
pass is not: counting its entries above the estimate no more (the fold taking the
sweeps' count instead; 531 -> 504 instructions per tile and thread) moved the forward by
-1.7% to +0.7%, +0.7% on mid at 32768 (benchmarks/results/h100-2026-11-28-latency.md).
Triton waits for each score product right after issuing it (``warp_group_dot_wait`` with
no pending group: only a product's accumulator chain may stay in flight across
iterations), so a program's per-entry work never overlaps its next product. Per tile and
thread (SASS, unmasked path, before the lane sums) a sweep issued 558 instructions, 804
with counts, of which 248 FFMA and 96 FADD were the per-entry statistics and 243 the
counts. Skipping the PV products of output-pass tiles that turn out to hold no nonzero
(a branch on their tile_max) made it 4-8% slower: Triton no longer pipelines the V load
whose dot sits in the branch. Where the forward's time goes (mid, N = 32768, H100, each
phase timed by cutting the kernel after it): max sweep 4.5 ms, first sweep 4.0, second
sweep 4.6, folded output pass 6.2, against 12.4 ms for FA2's whole forward. Eight edges
per sweep, unrolled, no longer spill and end every sampled mid, dense and high block in
two sweeps (CPU simulation), yet the forward took 14-19% longer than with four edges in
three (mid, dense and high at N = 8192 and 32768). The first sweep's statistics
gathered in the max sweep instead (four edges with counts, over every tile it computes)
took the max sweep from 4.5 to 11.7 ms at mid 32768, more than the sweep it would
replace. fp32 uses tl.dot on FMA units ("ieee", as tf32 misses the 1e-4 bar) and spills
at every D: correct, not fast.

Launch contract (torch.compile / CUDA graphs): the launcher only allocates with
torch.empty*/full and launches kernels through ``wrap`` (``torch.library.wrap_triton``
when traced); no .item(), no host sync, no branching on tensor values.
"""

import functools
import struct
from typing import Optional

import torch
import triton
import triton.language as tl

from adasplash_compile.kernels.autotuning import autotuned, launch_options
from adasplash_compile.kernels.fold_output import (
    FOLD_AFTER,
    FOLD_MAX_STEP,
    fold_correction,
    fold_output,
    fold_tolerance,
)
from adasplash_compile.kernels.histogram_floor import HIST_BINS, histogram_add, histogram_floor
from adasplash_compile.kernels.key_summary import key_tile_summary
from adasplash_compile.kernels.low_bracket import low_top, reopen_above, starts_low
from adasplash_compile.kernels.products import tile_dot
from adasplash_compile.kernels.tensor_maps import (
    allocate_scratch_before_launch,
    descriptor_tile,
    descriptors_supported,
    head_descriptor,
)
from adasplash_compile.kernels.masking import (
    first_masked_tile,
    heaviest_first,
    valid_lengths,
    visible_key_end,
    visible_tile,
)
from adasplash_compile.kernels.tau import (
    STAT_LANES,
    TAU_TOL,
    alpha_mode,
    entmax_power,
    half_tail_gap,
    lane_sums,
    positive_count,
    sweep_accumulate,
    sweep_statistics,
    sweep_totals,
    tau_accumulate,
    tau_init,
    tau_tolerance,
    tau_update,
)
from adasplash_compile.options import TILE_M, TILE_N, tile_grid

# --------------------------------------------------------------------------- configs
# One default per (head dim, dtype); ``forward_configs`` lists the candidates that
# max-autotune draws from (``autotune_forward_configs``); ``prune_forward_configs``
# holds the static limits (also stated as tl.static_assert in the kernels).

# Tile bounds read per vector load when listing a sweep's active tiles.
_TILE_SCAN = 128

# Key tiles bounded per (64 x D) x (D x CENTRE_CHUNK) product in the max sweep. Four centres
# per tile (16 keys each, 8 tiles per product) list 15-31% fewer exact tiles on the sparse
# workloads (benchmarks/tile_model.py), yet made the max sweep 9-20% slower on high and dense
# and the forward up to 8% slower (H100, same process, outputs bitwise equal;
# benchmarks/results/h100-2026-11-27-delta.md).
_CENTRE_CHUNK = 32

# Row groups per row block with a bound of their own per tile: 16 rows each, the rows one
# warp holds in the MMA layout at four warps (store_tile_bounds). 8 or 16 groups let the
# later passes list 3-5% fewer tiles on mid at N = 32768 (benchmarks/tile_model.py) but
# made the max sweep 4-13% slower and the forward up to 7.5% slower (H100, same process,
# outputs bitwise equal; benchmarks/results/h100-2026-11-27-head.md).
BOUND_GROUPS: tl.constexpr = tl.constexpr(4)
# Leading slots of a program's tile list: the two threshold vectors (list_active_tiles).
LIST_HEAD: tl.constexpr = tl.constexpr(2 * BOUND_GROUPS)

# The max sweep's threshold floor (threshold_floor): sweeps and edges over its two
# tiles, and the margin (shifted units, |tau'| <= 1) subtracted for float32 rounding.
FLOOR_SWEEPS: tl.constexpr = tl.constexpr(2)
FLOOR_NBINS: tl.constexpr = tl.constexpr(4)
# Its edge loop stays rolled: unrolled, the four edges' temporaries set the max sweep's
# register peak (sm_90, triton 3.6 ptxas), though the loop runs on two tiles per block.
FLOOR_EDGE_UNROLL: tl.constexpr = tl.constexpr(1)
FLOOR_SLACK: tl.constexpr = tl.constexpr(1e-5)
FLOOR_TAU_TOL: tl.constexpr = tl.constexpr(TAU_TOL)

# Statistics a threshold sweep takes (``threshold_sweep``): F and G below the top edge
# (the first sweep), with counts at every edge, or with G at every edge and no counts
# (kernels/tau.py ``tau_update``, CHORD_COUNTS: the sweep before the fold).
SWEEP_PLAIN: tl.constexpr = tl.constexpr(0)
SWEEP_COUNTED: tl.constexpr = tl.constexpr(1)
SWEEP_CHORD: tl.constexpr = tl.constexpr(2)

# Configs max-autotune compiles and benchmarks (each costs a compilation on first use).
_AUTOTUNE_CANDIDATES = 8

# Shared memory per SM usable by one program on H100 (227 KiB opt-in).
_SMEM_BYTES = 227 * 1024


def _block_d(head_dim) -> int:
    """Next power of two >= head_dim, at least 16 (tl.dot); comparisons only, so a
    symbolic head_dim yields a concrete constexpr."""
    block = 16
    while block < head_dim:
        block *= 2
    return block


def _smem_estimate(config: dict, head_dim: int, dtype: torch.dtype, stages: int) -> int:
    """Bytes of the output pass's K and V tiles, ``stages`` deep, plus the Q tile."""
    size = dtype.itemsize
    block_d = _block_d(head_dim)
    kv = 2 * config["BLOCK_N"] * block_d * size * max(1, stages)
    return kv + config["BLOCK_M"] * block_d * size


def _descriptor_stages(config: dict) -> int:
    """Pipelining depth of the forward's kernels when they read K (and V) through
    descriptors (``TMA_STAGES``, else the config's num_stages)."""
    return config.get("TMA_STAGES", config["num_stages"])


def prune_forward_configs(configs: list, head_dim: int, dtype: torch.dtype) -> list:
    """Configs the kernels accept: tile-aligned blocks, power-of-two NBINS, fitting smem."""
    kept = []
    for config in configs:
        if config["BLOCK_M"] != TILE_M or config["BLOCK_N"] != TILE_N:
            continue  # one program step must cover exactly one tile
        nbins = config["NBINS"]
        if nbins < 2 or nbins & (nbins - 1):
            continue  # tl.arange needs a power of two; two edges bracket the root
        if config["MAX_SWEEPS"] < 1 or config["EDGE_UNROLL"] < 1:
            continue
        if max(_smem_estimate(config, head_dim, dtype, stages) for stages in
               (config["num_stages"], _descriptor_stages(config))) > _SMEM_BYTES:
            continue
        kept.append(config)
    return kept


def forward_configs(head_dim: int, dtype: torch.dtype) -> list:
    """Candidate configs, default first (``prune_forward_configs`` applied)."""
    block_d = _block_d(head_dim)
    # fp32 runs tl.dot on FMA units ("ieee"): 8 warps spill far less (ptxas, sm_90).
    warps = 4 if block_d <= 128 and dtype != torch.float32 else 8
    candidates = []
    # Measured on the H100 (bf16, D=128, N=8192, benchmarks/profile_kernels.py --sweep):
    # 4 edges, unrolled, 4 warps, 2 stages was the fastest forward on dense and sparse
    # scores alike, 26-28% below 8 edges rolled.
    # TMA_STAGES: the threshold/output kernel's depth when K and V come through tensor
    # descriptors (kernels/tensor_maps.py; 16-bit inputs only), whose copies hold no
    # registers in flight: a third stage made the forward 1-5% faster (H100, bf16, D = 128,
    # same process), where with pointer loads it was 1-3% slower. Above D = 128 a third
    # stage would leave shared memory to one program per SM and little else.
    deeper = dtype != torch.float32 and block_d <= 128
    for stages in (2, 3, 1) if block_d <= 64 else (2, 1):
        for nbins, sweeps in ((4, 5), (8, 4), (16, 3), (2, 8)):
            for num_warps in (warps, 2 * warps if warps == 4 else 4):
                for unroll in (nbins, 1) if nbins <= 4 else (1, nbins):
                    candidates.append(
                        dict(BLOCK_M=TILE_M, BLOCK_N=TILE_N, NBINS=nbins, MAX_SWEEPS=sweeps, EDGE_UNROLL=unroll,
                             num_warps=num_warps, num_stages=stages,
                             TMA_STAGES=max(stages, 3) if deeper else stages)
                    )
    return prune_forward_configs(candidates, head_dim, dtype)


def default_forward_config(head_dim: int, dtype: torch.dtype) -> dict:
    """The first candidate, as a new dict. Listing and pruning the candidates took 26 us
    per eager call on the H100's host, so a concrete head_dim's default is cached."""
    if type(head_dim) is int:
        return dict(_cached_default_forward_config(head_dim, dtype))
    return _first_forward_config(head_dim, dtype)


def _first_forward_config(head_dim, dtype: torch.dtype) -> dict:
    configs = forward_configs(head_dim, dtype)
    if not configs:
        raise NotImplementedError(f"no forward config fits head_dim={head_dim}, dtype={dtype}")
    return configs[0]


_cached_default_forward_config = functools.lru_cache(maxsize=None)(_first_forward_config)


def autotune_forward_configs(head_dim: int, dtype: torch.dtype) -> list:
    """The configs max-autotune benchmarks: the first _AUTOTUNE_CANDIDATES candidates."""
    return forward_configs(head_dim, dtype)[:_AUTOTUNE_CANDIDATES]


def _streaming_launch_options(config: dict, descriptors: bool) -> dict:
    """num_warps and num_stages of a forward kernel that streams K (and V) tiles;
    descriptors: whether it reads them through tensor descriptors (``_descriptor_stages``)."""
    options = launch_options(config)
    if descriptors:
        options["num_stages"] = _descriptor_stages(config)
    return options


def _histogram_config(config: dict, descriptors: bool) -> dict:
    """What a config sets for the threshold/output kernel beyond the shared block sizes;
    descriptors: whether the kernel reads K and V through tensor descriptors."""
    return dict(NBINS=config["NBINS"], MAX_SWEEPS=config["MAX_SWEEPS"], EDGE_UNROLL=config["EDGE_UNROLL"],
                **_streaming_launch_options(config, descriptors))


def _distinct(configs: list) -> list:
    kept = []
    for config in configs:
        if config not in kept:
            kept.append(config)
    return kept


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
def program_row_block(IS_CAUSAL: tl.constexpr, BLOCK_M: tl.constexpr, GROUP):
    """This program's row block (heaviest first under IS_CAUSAL), its first row, its batch
    and query head (int64) and its key/value head."""
    row_block = heaviest_first(tl.program_id(0), tl.num_programs(0), IS_CAUSAL)
    off_h = tl.program_id(1).to(tl.int64)
    off_z = tl.program_id(2).to(tl.int64)
    return row_block, row_block * BLOCK_M, off_z, off_h, off_h // GROUP


@triton.jit
def query_rows(start_m, ROWS: tl.constexpr, USE_INT64: tl.constexpr):
    """The ROWS query rows from start_m, and the same rows as int64 where offsets need 64 bits."""
    offs_m = start_m + tl.arange(0, ROWS)
    if USE_INT64:
        rows_m = offs_m.to(tl.int64)
    else:
        rows_m = offs_m
    return offs_m, rows_m


@triton.jit
def block_keys(seqlens_ptr, off_z, start_m, offs_m, M, N, HAS_SEQLENS: tl.constexpr, IS_CAUSAL: tl.constexpr,
               BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """The keys of the row block from start_m: its batch's valid query and key lengths,
    the key tiles it sees, the keys each row sees ([0, visible_key_end(row + 1)) for rows
    below valid_q, else none) and its first masked tile."""
    valid_q, valid_k = valid_lengths(seqlens_ptr, off_z, M, N, HAS_SEQLENS)
    key_end = visible_key_end(start_m + BLOCK_M, M, N, valid_k, IS_CAUSAL)
    key_end = tl.where(start_m < valid_q, key_end, 0)
    n_tiles = tl.cdiv(key_end, BLOCK_N)
    n_i = tl.where(offs_m < valid_q, visible_key_end(offs_m + 1, M, N, valid_k, IS_CAUSAL), 0)
    first_masked = first_masked_tile(start_m, M, N, valid_q, valid_k, IS_CAUSAL, BLOCK_M, BLOCK_N)
    return valid_q, valid_k, n_tiles, n_i, first_masked


@triton.jit
def start_bracket(m_ptr, floor_ptr, row_offset, offs_m, M, n_i, alpha, ALPHA_MODE: tl.constexpr):
    """The rows' max m (from the max sweep), the shift m_shift (m, or 0 where the row sees
    nothing: -inf - (-inf) would be NaN) and the shifted bracket (lo, hi, tau', active) that
    the threshold sweeps start from: tau_init's, its lower end raised to the max sweep's
    floor <= tau."""
    m_i = tl.load(m_ptr + row_offset, mask=offs_m < M, other=float("-inf"))
    m_shift = tl.where(m_i > float("-inf"), m_i, 0.0)
    lo, hi, tau_i, active = tau_init(m_i, n_i, alpha, ALPHA_MODE)
    floor_i = tl.load(floor_ptr + row_offset, mask=offs_m < M, other=float("-inf"))
    lo = tl.where(active, tl.minimum(tl.maximum(lo, floor_i - m_shift), hi), lo)
    return m_i, m_shift, lo, hi, tau_i, active


@triton.jit
def load_q_tile(q_ptr, offs_m, offs_d, M, stride_qm, stride_qd, HEAD_DIM: tl.constexpr):
    ptrs = q_ptr + offs_m[:, None] * stride_qm + offs_d[None, :] * stride_qd
    return tl.load(ptrs, mask=(offs_m[:, None] < M) & (offs_d[None, :] < HEAD_DIM), other=0.0)


@triton.jit
def load_kv_tile(ref, start_n, offs_n, offs_d, N, stride_n, stride_d, HEAD_DIM: tl.constexpr,
                 USE_INT64: tl.constexpr, KV_TMA: tl.constexpr, TRANSPOSED: tl.constexpr):
    """Rows offs_n = start_n + arange(BLOCK_N) of a key or value head: (BLOCK_N, BLOCK_D),
    or its transpose with TRANSPOSED, zero past N and past HEAD_DIM.

    ref: a pointer to the head, or with KV_TMA the tuple (``head_descriptor``, head).
    """
    if KV_TMA:
        descriptor, head = ref
        tile = descriptor_tile(descriptor, head, start_n)
        if TRANSPOSED:
            tile = tl.trans(tile)
        return tile
    else:
        if USE_INT64:
            rows = offs_n.to(tl.int64)
        else:
            rows = offs_n
        if TRANSPOSED:
            ptrs = ref + rows[None, :] * stride_n + offs_d[:, None] * stride_d
            return tl.load(ptrs, mask=(offs_n[None, :] < N) & (offs_d[:, None] < HEAD_DIM), other=0.0)
        else:
            ptrs = ref + rows[:, None] * stride_n + offs_d[None, :] * stride_d
            return tl.load(ptrs, mask=(offs_n[:, None] < N) & (offs_d[None, :] < HEAD_DIM), other=0.0)


@triton.jit
def score_tile(q, k_ref, start_n, offs_m, offs_n_base, offs_d, M, N, valid_q, valid_k, qk_scale,
               stride_kn, stride_kd, masked, HEAD_DIM: tl.constexpr, IS_CAUSAL: tl.constexpr,
               DOT_PRECISION: tl.constexpr, USE_INT64: tl.constexpr, KV_TMA: tl.constexpr):
    """z = (alpha-1)*scale*q.k^T for one key tile, -inf where not visible.

    k_ref: as ``load_kv_tile`` takes it. masked (a scalar) may be False only for a tile
    before ``first_masked_tile``, which every row sees whole: it then skips the per-entry
    visibility mask, whose compares, ands and select are a large share of the max sweep's
    per-entry work.
    """
    offs_n = start_n + offs_n_base
    kt = load_kv_tile(k_ref, start_n, offs_n, offs_d, N, stride_kn, stride_kd, HEAD_DIM, USE_INT64, KV_TMA, True)
    z = tile_dot(q, kt, None, DOT_PRECISION) * qk_scale
    if masked:
        z = tl.where(visible_tile(offs_m, offs_n, M, N, valid_q, valid_k, IS_CAUSAL), z, float("-inf"))
    return z


@triton.jit
def _pairwise_max(bound_a, rel_a, bound_b, rel_b):
    return tl.maximum(bound_a, bound_b), tl.maximum(rel_a, rel_b)


@triton.jit
def group_min(row_values):
    """Per row group (BOUND_GROUPS groups of consecutive rows), the min of a [BLOCK_M] vector."""
    rows: tl.constexpr = row_values.shape[0]
    return tl.min(tl.reshape(row_values, [BOUND_GROUPS, rows // BOUND_GROUPS]), 1)


@triton.jit
def store_tile_bounds(bound_row, rel_row, tile_n, stride_bn, row_max, m_i, floor_i, tile_cols: tl.constexpr):
    """Store a computed tile's bound and relative bound per row group: the max over the
    group's rows whose max z exceeds their floor of that max z, and of its excess over the
    running row max (-inf twice if there is no such row: then the group's rows hold no
    nonzero of P and not their max in this tile).

    Rows at or below their floor hold nothing the sweeps or the output pass could use, so
    they stay out. The running max never exceeds the final one, so row_max - m_i bounds
    the rows' shifted scores z - m from above.

    A group is one warp's rows at four warps: reshaped as a whole tile (the row values
    broadcast over its columns), the rows keep the MMA layout and the reduction is warp
    shuffles alone. Triton still moves each [BOUND_GROUPS] result to its store layout
    through shared memory: three barriers per tile, where the reduction across the
    block's warps took two (sm_90, triton 3.6 SASS); the max sweep got 3-4% faster all
    the same. Stored from the reduction's own layout through inline PTX instead (two
    barriers fewer per tile), the max sweep got 1.6-3.0% faster and the forward moved by
    at most 0.8% either way (H100, same process, bitwise equal;
    benchmarks/results/h100-2026-11-27-pair.md): not worth the PTX, its interpreter twin
    and an asm marked pure for torch's mutation analysis.
    """
    relevant = row_max > floor_i
    bound_rows = tl.broadcast_to(tl.where(relevant, row_max, float("-inf"))[:, None], [row_max.shape[0], tile_cols])
    rel_rows = tl.broadcast_to(tl.where(relevant, row_max - m_i, float("-inf"))[:, None],
                               [row_max.shape[0], tile_cols])
    per_group: tl.constexpr = row_max.shape[0] * tile_cols // BOUND_GROUPS
    bound, rel = tl.reduce((tl.reshape(bound_rows, [BOUND_GROUPS, per_group]),
                            tl.reshape(rel_rows, [BOUND_GROUPS, per_group])), 1, _pairwise_max)
    offsets = tile_n * stride_bn + tl.arange(0, BOUND_GROUPS)
    tl.store(bound_row + offsets, bound)
    tl.store(rel_row + offsets, rel)


@triton.jit
def local_tile(q, k_base, diagonal, back, offs_m, offs_n, offs_d, M, N, valid_q, valid_k, qk_scale, stride_kn,
               stride_kd, HEAD_DIM: tl.constexpr, IS_CAUSAL: tl.constexpr, DOT_PRECISION: tl.constexpr,
               USE_INT64: tl.constexpr, BLOCK_N: tl.constexpr):
    """z of tile diagonal - back, masked; all -inf where that tile lies before the first."""
    tile_n = diagonal - back
    z = score_tile(q, k_base, tl.maximum(tile_n, 0) * BLOCK_N, offs_m, offs_n, offs_d, M, N, valid_q, valid_k,
                   qk_scale, stride_kn, stride_kd, True, HEAD_DIM, IS_CAUSAL, DOT_PRECISION, USE_INT64, False)
    return tl.where(tile_n >= 0, z, float("-inf"))


@triton.jit
def threshold_floor(q, k_base, diagonal, offs_m, offs_n, offs_d, M, N, valid_q, valid_k, qk_scale, alpha, inv,
                    stride_kn, stride_kd, HEAD_DIM: tl.constexpr, IS_CAUSAL: tl.constexpr,
                    DOT_PRECISION: tl.constexpr, USE_INT64: tl.constexpr, ALPHA_MODE: tl.constexpr,
                    BLOCK_N: tl.constexpr):
    """A lower bound on each row's threshold from its tiles diagonal and diagonal - 1
    (-inf for a row without entries there), and the rows' max over them.

    The threshold of a subset of a row's entries is at most the row's threshold (its
    objective sum_j [z_j - t]_+^INV - 1 is pointwise smaller), and the lower end of a
    bracket on the subset's threshold is at most that: so FLOOR_SWEEPS sweeps over the
    two tiles bound tau from below whatever else the row holds. The tiles are
    recomputed for every sweep rather than held in registers next to each other: six
    small products per row block instead of two, against the hundreds of tiles a long
    row visits, and nothing here is stored, so step 2 bounds every tile alike.
    """
    m_s = tl.full([offs_m.shape[0]], float("-inf"), tl.float32)
    n_s = tl.zeros([offs_m.shape[0]], tl.int32)
    for back in range(0, 2):
        z = local_tile(q, k_base, diagonal, back, offs_m, offs_n, offs_d, M, N, valid_q, valid_k, qk_scale, stride_kn,
                       stride_kd, HEAD_DIM, IS_CAUSAL, DOT_PRECISION, USE_INT64, BLOCK_N)
        m_s = tl.maximum(m_s, tl.max(z, 1))
        n_s += tl.sum((z > float("-inf")).to(tl.int32), 1)
    m_shift = tl.where(m_s > float("-inf"), m_s, 0.0)
    lo, hi, tau_s, active = tau_init(m_s, n_s, alpha, ALPHA_MODE)
    for _ in range(FLOOR_SWEEPS):
        stat_f = tl.zeros([offs_m.shape[0], FLOOR_NBINS], tl.float32)
        stat_g = tl.zeros([offs_m.shape[0], FLOOR_NBINS], tl.float32)
        stat_c = tl.zeros([offs_m.shape[0], FLOOR_NBINS], tl.int32)
        for back in range(0, 2):
            z = local_tile(q, k_base, diagonal, back, offs_m, offs_n, offs_d, M, N, valid_q, valid_k, qk_scale,
                           stride_kn, stride_kd, HEAD_DIM, IS_CAUSAL, DOT_PRECISION, USE_INT64, BLOCK_N)
            stat_f, stat_g, stat_c = tau_accumulate(z, 1.0, m_shift, lo, hi, stat_f, stat_g, stat_c, inv, FLOOR_NBINS,
                                                    ALPHA_MODE, FLOOR_EDGE_UNROLL, True, True)
        lo, hi, tau_s, active = tau_update(lo, hi, tau_s, active, stat_f, stat_g, stat_c, m_shift, inv, FLOOR_NBINS,
                                           ALPHA_MODE, FLOOR_TAU_TOL, True, False)
    # FLOOR_SLACK absorbs float32 rounding of the bracket arithmetic.
    floor = tl.where((m_s > float("-inf")) & (n_s > 0), m_s + lo - FLOOR_SLACK, float("-inf"))
    return floor, m_s


@triton.jit
def _adasplash_fwd_rowmax(
    q_ptr, k_ptr, centre_ptr, radius_ptr, m_ptr, floor_ptr, local_floor_ptr, bound_ptr, rel_bound_ptr, tile_list_ptr,
    seqlens_ptr,
    stride_qz, stride_qh, stride_qm, stride_qd,
    stride_kz, stride_kh, stride_kn, stride_kd,
    stride_cz, stride_ch, stride_cn, stride_cd,
    stride_rz, stride_rh, stride_rn,
    stride_mz, stride_mh, stride_mm,
    stride_bz, stride_bh, stride_bm, stride_bn,
    stride_lz, stride_lh, stride_lm, stride_ln,
    M, N, GROUP, qk_scale_bits, alpha, inv,
    HEAD_DIM: tl.constexpr, HAS_SEQLENS: tl.constexpr, IS_CAUSAL: tl.constexpr, ALPHA_MODE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, CENTRE_CHUNK: tl.constexpr,
    SCAN: tl.constexpr, DOT_PRECISION: tl.constexpr, USE_INT64: tl.constexpr, SCALE_AS_BITS: tl.constexpr,
    KV_TMA: tl.constexpr,
):
    """Max sweep: row max m, threshold floor and the floor of the rows' two local tiles
    alone (m_ptr, floor_ptr, local_floor_ptr: same strides; kernels/low_bracket.py) and both
    bounds of the row block's visible tiles (those before n_tiles of ``block_keys``), per
    row group. Later passes read no tile past those, so the others stay unwritten.

    centre_ptr / radius_ptr: kernels/key_summary.py. bound_ptr / rel_bound_ptr share
    their shape and strides (stride_b*; the last dimension, BOUND_GROUPS row groups, is
    contiguous); tile_list_ptr is the int32 scratch of
    ``list_active_tiles`` (strides stride_l*). qk_scale_bits: with SCALE_AS_BITS the
    float32 bits of qk_scale as an int32 (``float32_bits``), else qk_scale itself (a
    symbolic scale under dynamic shapes).
    """
    # Inductor passes Python floats to user kernels as fp64, and an fp64 qk_scale alone
    # took this kernel, with pointer loads, from 128 to 131 registers (sm_90, triton 3.6
    # ptxas: the PTX differs only in the parameter's load and conversion), one program
    # fewer per SM, and the compiled forward 3-5% behind eager on the mid and high
    # workloads. Its bits as an int32 reach the kernel alike on both paths. tl.cast, not
    # tensor methods: torch 2.11's mutation analysis passes scalars in as Python ints.
    if SCALE_AS_BITS:
        qk_scale = tl.cast(tl.cast(qk_scale_bits, tl.int32), tl.float32, bitcast=True)
    else:
        qk_scale = tl.cast(qk_scale_bits, tl.float32)
    alpha = tl.cast(alpha, tl.float32)
    inv = tl.cast(inv, tl.float32)
    # One row block per program. Two (128 rows on 8 warps, each K tile serving both, a
    # tile listed for either computed for both) made the max sweep 3-16% slower and the
    # forward 1.5-10% slower at 2 stages or 3, capped at 128 registers (168 uncapped, one
    # program per SM); H100, same process, bitwise equal
    # (benchmarks/results/h100-2026-11-27-pair.md).
    tl.static_assert(BLOCK_M == 64, "BLOCK_M must equal TILE_M: one program row block = one tile row")
    tl.static_assert(BLOCK_N == 64, "BLOCK_N must equal TILE_N: one key step = one tile")
    row_block, start_m, off_z, off_h, off_kh = program_row_block(IS_CAUSAL, BLOCK_M, GROUP)

    offs_m, rows_m = query_rows(start_m, BLOCK_M, USE_INT64)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    q = load_q_tile(q_ptr + off_z * stride_qz + off_h * stride_qh, rows_m, offs_d, M, stride_qm, stride_qd, HEAD_DIM)
    k_base = k_ptr + off_z * stride_kz + off_kh * stride_kh
    if KV_TMA:
        k_tiles = (head_descriptor(k_ptr, off_z, stride_kz, tl.num_programs(1) // GROUP, stride_kh, N, stride_kn,
                                   BLOCK_N, BLOCK_D), off_kh.to(tl.int32))
    else:
        k_tiles = k_base
    bound_offset = off_z * stride_bz + off_h * stride_bh + row_block * stride_bm
    bound_row = bound_ptr + bound_offset
    rel_row = rel_bound_ptr + bound_offset
    list_ptr = tile_list_ptr + off_z * stride_lz + off_h * stride_lh + row_block * stride_lm

    valid_q, valid_k, n_tiles, n_i, first_masked = block_keys(seqlens_ptr, off_z, start_m, offs_m, M, N, HAS_SEQLENS,
                                                              IS_CAUSAL, BLOCK_M, BLOCK_N)

    # 1. The block's diagonal tile (the last visible one when causal) and the tile before
    #    it first: where attention is local, the row max sits there, and so does most of
    #    the row's mass, so their threshold floor (threshold_floor) is near the row's
    #    threshold. floor = max(m - 1, that floor) <= tau: entries at or below it are
    #    zeros of P.
    diagonal = tl.minimum(tl.maximum(start_m + (N - M), 0) // BLOCK_N, tl.maximum(n_tiles - 1, 0))
    floor_i, m_i = threshold_floor(q, k_base, diagonal, offs_m, offs_n, offs_d, M, N, valid_q, valid_k, qk_scale,
                                   alpha, inv, stride_kn, stride_kd, HEAD_DIM, IS_CAUSAL, DOT_PRECISION, USE_INT64,
                                   ALPHA_MODE, BLOCK_N)
    floor_i = tl.maximum(floor_i, m_i - 1.0)
    # Stored now, not at the end, where one more live row vector took the sweep with
    # pointer loads to 129 registers (sm_90, triton 3.6): the floor before the histogram
    # lifts it.
    tl.store(local_floor_ptr + off_z * stride_mz + off_h * stride_mh + rows_m * stride_mm, floor_i, mask=offs_m < M)

    # 2. Centre bounds (kernels/key_summary.py) for every tile, CENTRE_CHUNK tiles per
    #    product: z_ij <= qk_scale (q_i.c_J + |q_i| r_J). The slack term covers the
    #    float32 rounding of both dot products (relative 1e-4, far above it).
    #    |q_i| is the diagonal of Q.Q^T, one more small product: a float32 copy of the
    #    Q tile for a sum of squares raised the kernel (pointer loads) from 128 to 220
    #    registers, which halves the programs per SM for the whole sweep.
    q_gram = tile_dot(q, tl.trans(q), None, DOT_PRECISION)
    q_norm = tl.sqrt(tl.sum(tl.where(offs_m[:, None] == offs_m[None, :], q_gram, 0.0), 1))
    c_base = centre_ptr + off_z * stride_cz + off_kh * stride_ch
    r_base = radius_ptr + off_z * stride_rz + off_kh * stride_rh
    offs_c = tl.arange(0, CENTRE_CHUNK)
    for chunk in range(0, n_tiles, CENTRE_CHUNK):
        tiles = chunk + offs_c
        inside = tiles < n_tiles
        centres = tl.load(c_base + tiles[:, None] * stride_cn + offs_d[None, :] * stride_cd,
                          mask=inside[:, None] & (offs_d[None, :] < HEAD_DIM), other=0.0)
        radius = tl.load(r_base + tiles * stride_rn, mask=inside, other=0.0)
        centre_f32 = centres.to(tl.float32)
        centre_norm = tl.sqrt(tl.sum(centre_f32 * centre_f32, 1))
        dots = tile_dot(q, tl.trans(centres), None, DOT_PRECISION)
        slack = radius * 1.0001 + 1e-4 * centre_norm
        upper = qk_scale * (dots + q_norm[:, None] * slack[None, :])
        # Only (row, tile) pairs where the row sees a key of the tile.
        upper = tl.where(tiles[None, :] * BLOCK_N < n_i[:, None], upper, float("-inf"))
        # Rows whose max is still -inf (they see neither tile of step 1) give +inf: listed.
        rel = tl.where(upper > float("-inf"), upper - m_i[:, None], float("-inf"))
        group_shape: tl.constexpr = [BOUND_GROUPS, BLOCK_M // BOUND_GROUPS, CENTRE_CHUNK]
        relevant = tl.max(tl.reshape((upper > floor_i[:, None]).to(tl.int32), group_shape), 1) > 0
        offsets = tiles[None, :] * stride_bn + tl.arange(0, BOUND_GROUPS)[:, None]
        tl.store(bound_row + offsets, tl.where(relevant, tl.max(tl.reshape(upper, group_shape), 1), float("-inf")),
                 mask=inside[None, :])
        tl.store(rel_row + offsets, tl.where(relevant, tl.max(tl.reshape(rel, group_shape), 1), float("-inf")),
                 mask=inside[None, :])

    # 3. Exact scores only for the tiles whose bound exceeds some row's floor (floor >=
    #    m - 1 makes their relative bound > -1); the others keep -inf (no nonzero of P,
    #    not the max). Step 1's tiles are listed too where relevant (the diagonal one
    #    holds its rows' max), so their bounds are exact as well.
    n_listed, n_unmasked = list_active_tiles(bound_row, rel_row, stride_bn, list_ptr, stride_ln, n_tiles, first_masked,
                                             tl.full([BOUND_GROUPS], float("-inf"), tl.float32),
                                             tl.full([BOUND_GROUPS], -1.0, tl.float32), SCAN)
    hist_count = tl.zeros([BLOCK_M, HIST_BINS], tl.float32)
    hist_total = tl.zeros([BLOCK_M, HIST_BINS], tl.float32)
    # Each list loop reads entry i + 1 at the top of step i, as the backward's loops do:
    # triton 3.6 issues a tile's copy right after the load of its index, so an index read
    # in the step that needs it delays the copy by the load's latency every step.
    # Microbenchmark of the loops' cores over every causal tile (H100, N = 32768;
    # exp/step_width.py --listed on branch session24-exp), affine / listed / listed and
    # read ahead: the output pass 9.52 / 10.62 / 9.30 ms, the max pass through
    # descriptors 3.69 / 4.42 / 3.67. In the whole kernels the other programs on each SM
    # hide most of that latency already (module docstring: the forward moved by -1.9% to
    # +0.6%), and together with this loop's descriptors at three stages the max sweep
    # gained up to 4%. The loads stay inline, not in a helper: torch's
    # mutation analysis follows a helper's call into every argument it was given, so a
    # stored pointer computed from its result reported the kernel's inputs as written.
    #
    # The list runs backwards, from the diagonal down. A tile's relative bound is taken
    # against the running max, and going backwards the running max reaches the row's own
    # max sooner: where attention is local the larger scores sit near the diagonal. On
    # mid at N = 32768 the output pass then lists 34.3% of the causal tiles instead of
    # 38.9% (benchmarks/tile_model.py, 8 row blocks; the final max would give 33.6%,
    # bounds per row 30.1%), and the sweeps list fewer as well.
    last = n_listed - 1
    next_tile = tl.load(list_ptr + (last + LIST_HEAD) * stride_ln, mask=n_listed > 0, other=0)
    for i in range(0, n_listed):
        tile_n = next_tile
        next_tile = tl.load(list_ptr + (last - 1 - i + LIST_HEAD) * stride_ln, mask=i < last, other=0)
        # Scaling by qk_scale > 0 commutes with the max, rounding included: one multiply
        # per row instead of one per entry.
        qk = score_tile(q, k_tiles, tile_n * BLOCK_N, offs_m, offs_n, offs_d, M, N, valid_q, valid_k, 1.0,
                        stride_kn, stride_kd, last - i >= n_unmasked, HEAD_DIM, IS_CAUSAL, DOT_PRECISION, USE_INT64,
                        KV_TMA)
        row_max = tl.max(qk, 1) * qk_scale
        m_i = tl.maximum(m_i, row_max)
        store_tile_bounds(bound_row, rel_row, tile_n, stride_bn, row_max, m_i, floor_i, BLOCK_N)
        hist_count, hist_total = histogram_add(hist_count, hist_total, row_max, floor_i)
    # Every tile left out holds nothing above floor_i, so the binned tile maxima are all
    # those above it (kernels/histogram_floor.py). The tile bounds above keep the looser
    # floor: a superset of the relevant rows, so they stay upper bounds.
    floor_i = histogram_floor(hist_count, hist_total, floor_i, m_i, inv, ALPHA_MODE)
    row_offset = off_z * stride_mz + off_h * stride_mh + rows_m * stride_mm
    tl.store(m_ptr + row_offset, m_i, mask=offs_m < M)
    tl.store(floor_ptr + row_offset, floor_i, mask=offs_m < M)


allocate_scratch_before_launch(_adasplash_fwd_rowmax, "KV_TMA")


@triton.jit
def threshold_sweep(q, k_base, list_ptr, stride_ln, n_listed, n_unmasked, m_shift, lo, hi, tau, active, offs_m,
                    offs_n, offs_d, M, N, valid_q, valid_k, qk_scale, inv, tau_tol, stride_kn, stride_kd,
                    HEAD_DIM: tl.constexpr, IS_CAUSAL: tl.constexpr, DOT_PRECISION: tl.constexpr,
                    USE_INT64: tl.constexpr, KV_TMA: tl.constexpr, BLOCK_N: tl.constexpr, NBINS: tl.constexpr,
                    ALPHA_MODE: tl.constexpr, EDGE_UNROLL: tl.constexpr, KIND: tl.constexpr):
    """One threshold sweep over the n_listed tiles of list_ptr (``list_active_tiles``), the
    first n_unmasked of them without a mask: their tail statistics, then ``tau_update``.
    KIND: the statistics the sweep takes (SWEEP_PLAIN, SWEEP_COUNTED, SWEEP_CHORD).
    Returns (lo, hi, tau', active)."""
    # Unrolled edges keep lane statistics (kernels/tau.py ``tau_accumulate_lanes``).
    LANES: tl.constexpr = EDGE_UNROLL >= NBINS
    COUNTS: tl.constexpr = KIND == SWEEP_COUNTED
    CHORD: tl.constexpr = KIND == SWEEP_CHORD
    stats = sweep_statistics(offs_m.shape[0], NBINS, LANES)
    next_tile = tl.load(list_ptr + LIST_HEAD * stride_ln, mask=n_listed > 0, other=0)
    for i in range(0, n_listed):
        start_n = next_tile * BLOCK_N
        next_tile = tl.load(list_ptr + (i + 1 + LIST_HEAD) * stride_ln, mask=i + 1 < n_listed, other=0)
        # Unscaled: tau_accumulate folds qk_scale into its one multiply-add per entry and edge.
        qk = score_tile(q, k_base, start_n, offs_m, offs_n, offs_d, M, N, valid_q, valid_k, 1.0,
                        stride_kn, stride_kd, i >= n_unmasked, HEAD_DIM, IS_CAUSAL, DOT_PRECISION, USE_INT64, KV_TMA)
        stats = sweep_accumulate(qk, qk_scale, m_shift, lo, hi, stats, inv, NBINS, ALPHA_MODE, EDGE_UNROLL, COUNTS,
                                 CHORD, LANES)
    stat_f, stat_g, stat_c = sweep_totals(stats, NBINS, LANES)
    return tau_update(lo, hi, tau, active, stat_f, stat_g, stat_c, m_shift, inv, NBINS, ALPHA_MODE, tau_tol, COUNTS,
                      CHORD)


@triton.jit
def list_active_tiles(bound_ptr, rel_bound_ptr, stride_bn, list_ptr, stride_ln, n_tiles, first_masked, threshold,
                      rel_threshold, SCAN: tl.constexpr):
    """List the tiles j < n_tiles where some row group g has bound[j, g] > threshold[g]
    and rel_bound[j, g] > rel_threshold[g] (thresholds: [BOUND_GROUPS] vectors).

    Returns how many, and how many of them lie before tile first_masked
    (``first_masked_tile``): the list is in ascending order, so those come first and
    the sweep runs them without a mask. list_ptr[0:LIST_HEAD] receive the thresholds
    (float32 bits) and list_ptr[LIST_HEAD + i] the i-th listed tile index.
    Scanning SCAN tiles per vector load and compacting with a prefix sum lets the
    sweep that follows loop over listed tiles only: no per-tile branch or dependent
    scalar load, and its loads can be software-pipelined. The list is global scratch
    private to this program; the barriers order it after the reads of the previous
    sweep and before the reads that follow (bar.sync makes a CTA's global writes
    visible to all of its threads).

    The thresholds go through memory on purpose. torch's mutation analysis of Triton
    kernels (``torch.library.wrap_triton``) walks back from every store address
    through all arguments of the calls it depends on, stopping only at loads. The
    slots written here depend on the thresholds, which depend on Q.K^T (through
    ``score_tile``, whose arguments include the K pointer); without the round trip
    the analysis would report Q, K and seqlens as written and Inductor would clone
    them before every launch.
    """
    offs = tl.arange(0, SCAN)
    groups = tl.arange(0, BOUND_GROUPS)
    tl.debug_barrier()
    tl.store(list_ptr + groups * stride_ln, threshold.to(tl.int32, bitcast=True))
    tl.store(list_ptr + (BOUND_GROUPS + groups) * stride_ln, rel_threshold.to(tl.int32, bitcast=True))
    tl.debug_barrier()
    threshold = tl.load(list_ptr + groups * stride_ln).to(tl.float32, bitcast=True)
    rel_threshold = tl.load(list_ptr + (BOUND_GROUPS + groups) * stride_ln).to(tl.float32, bitcast=True)
    count = 0
    n_unmasked = 0
    for start in range(0, n_tiles, SCAN):
        tiles = start + offs
        inside = tiles < n_tiles
        offsets = tiles[:, None] * stride_bn + groups[None, :]
        bound = tl.load(bound_ptr + offsets, mask=inside[:, None], other=float("-inf"))
        rel_bound = tl.load(rel_bound_ptr + offsets, mask=inside[:, None], other=float("-inf"))
        above = (bound > threshold[None, :]) & (rel_bound > rel_threshold[None, :])
        active = tl.max(above.to(tl.int32), 1)
        slot = count + LIST_HEAD - 1 + tl.cumsum(active, 0)
        tl.store(list_ptr + slot * stride_ln, tiles, mask=active > 0)
        count += tl.sum(active, 0)
        n_unmasked += tl.sum(tl.where(tiles < first_masked, active, 0), 0)
    tl.debug_barrier()
    return count, n_unmasked


@triton.jit
def threshold_sweeps(q, k_base, bound_row, rel_row, stride_bn, list_ptr, stride_ln, n_tiles, first_masked, m_shift,
                     lo, hi, tau, active, sweep, sweep_limit, offs_m, offs_n, offs_d, M, N, valid_q, valid_k, qk_scale,
                     inv, tau_tol, stride_kn, stride_kd, HEAD_DIM: tl.constexpr, IS_CAUSAL: tl.constexpr,
                     DOT_PRECISION: tl.constexpr, USE_INT64: tl.constexpr, KV_TMA: tl.constexpr, BLOCK_N: tl.constexpr,
                     NBINS: tl.constexpr, ALPHA_MODE: tl.constexpr, EDGE_UNROLL: tl.constexpr, SCAN: tl.constexpr,
                     LATER: tl.constexpr):
    """Threshold sweeps from sweep number ``sweep`` until every row has converged or
    ``sweep_limit`` sweeps have run, sweep 0 plain (SWEEP_PLAIN) and the others of kind
    LATER (``threshold_sweep``). Returns (lo, hi, tau', active, sweeps run so far)."""
    n_active = tl.sum(active.to(tl.int32), 0)
    while (sweep < sweep_limit) & (n_active > 0):
        # A tile whose entries all lie at or below every active row's lower bracket
        # end adds nothing to the tail statistics, in absolute or shifted units: per
        # row group, whose bounds cover its own rows.
        skip_below = group_min(tl.where(active, m_shift + lo, float("inf")))
        rel_skip_below = group_min(tl.where(active, lo, float("inf")))
        n_listed, n_unmasked = list_active_tiles(bound_row, rel_row, stride_bn, list_ptr, stride_ln, n_tiles,
                                                 first_masked, skip_below, rel_skip_below, SCAN)
        # The first sweep takes no counts (tau_update, COUNTS): two instructions fewer
        # per entry and edge for alpha = 1.5, on the sweep over the widest bracket.
        # The kind is a constexpr: one call per value.
        if sweep == 0:
            lo, hi, tau, active = threshold_sweep(q, k_base, list_ptr, stride_ln, n_listed, n_unmasked, m_shift, lo,
                                                  hi, tau, active, offs_m, offs_n, offs_d, M, N, valid_q, valid_k,
                                                  qk_scale, inv, tau_tol, stride_kn, stride_kd, HEAD_DIM, IS_CAUSAL,
                                                  DOT_PRECISION, USE_INT64, KV_TMA, BLOCK_N, NBINS, ALPHA_MODE,
                                                  EDGE_UNROLL, SWEEP_PLAIN)
        else:
            lo, hi, tau, active = threshold_sweep(q, k_base, list_ptr, stride_ln, n_listed, n_unmasked, m_shift, lo,
                                                  hi, tau, active, offs_m, offs_n, offs_d, M, N, valid_q, valid_k,
                                                  qk_scale, inv, tau_tol, stride_kn, stride_kd, HEAD_DIM, IS_CAUSAL,
                                                  DOT_PRECISION, USE_INT64, KV_TMA, BLOCK_N, NBINS, ALPHA_MODE,
                                                  EDGE_UNROLL, LATER)
        n_active = tl.sum(active.to(tl.int32), 0)
        sweep += 1
    return lo, hi, tau, active, sweep


@triton.jit
def ratio_or_zero(weighted_sum, weight):
    """weighted_sum / weight per row ((ROWS, BLOCK_D) over (ROWS,)), 0 where weight = 0."""
    return tl.where(weight[:, None] > 0.0, weighted_sum / tl.where(weight > 0.0, weight, 1.0)[:, None], 0.0)


@triton.jit
def output_thresholds(m_shift, tau_shifted, sees_keys):
    """The rows' thresholds, absolute and shifted (tau' = tau - m), for the output pass and
    the tau output: +inf for rows that see no key, so their p is 0."""
    return (tl.where(sees_keys, m_shift + tau_shifted, float("inf")),
            tl.where(sees_keys, tau_shifted, float("inf")))


@triton.jit
def output_pass(q, k_base, v_base, bound_row, rel_row, stride_bn, tile_max_row, stride_tn, list_ptr, stride_ln,
                n_tiles, first_masked, tau, tau_shifted, offs_m, offs_n, offs_d, M, N, valid_q, valid_k, qk_scale, inv,
                stride_kn, stride_kd, stride_vn, stride_vd, HEAD_DIM: tl.constexpr, IS_CAUSAL: tl.constexpr,
                DOT_PRECISION: tl.constexpr, USE_INT64: tl.constexpr, KV_TMA: tl.constexpr, BLOCK_N: tl.constexpr,
                BLOCK_D: tl.constexpr, ALPHA_MODE: tl.constexpr, SCAN: tl.constexpr, FOLD: tl.constexpr):
    """The output pass at thresholds tau (absolute; +inf for rows that see nothing) over
    the tiles that may hold an entry above them; each one visited records in tile_max
    the largest z above its row's tau (-inf stays where there is none).

    Returns (acc, acc_u, l, u_sum, count): with h = [z - tau]_+ / 2 per entry,
    p = h^INV (``half_tail_gap``: p / 4 for alpha = 1.5, p / 2 for alpha = 2; the factor
    cancels in acc / l), acc = sum p.V and l = sum p; for alpha = 1.5, acc_u = sum h.V
    and u_sum = sum h (h is p^(2-alpha) = p^(1/2) up to that factor), whose ratio the
    backward takes DELTA from (``u_value_mean``), and with FOLD count = #(h > 0), for
    ``fold_correction`` with acc_u and u_sum (zeros where not gathered).
    """
    n_listed, n_unmasked = list_active_tiles(bound_row, rel_row, stride_bn, list_ptr, stride_ln, n_tiles,
                                             first_masked, group_min(tau), group_min(tau_shifted), SCAN)
    acc = tl.zeros([offs_m.shape[0], BLOCK_D], tl.float32)
    acc_u = tl.zeros([offs_m.shape[0], BLOCK_D], tl.float32)
    # Partial row sums (lane_sums), added up after the loop.
    l_i = tl.zeros([offs_m.shape[0], STAT_LANES], tl.float32)
    u_sum = tl.zeros([offs_m.shape[0], STAT_LANES], tl.float32)
    count = tl.zeros([offs_m.shape[0], STAT_LANES], tl.int32)
    next_tile = tl.load(list_ptr + LIST_HEAD * stride_ln, mask=n_listed > 0, other=0)
    for i in range(0, n_listed):
        tile_n = next_tile
        next_tile = tl.load(list_ptr + (i + 1 + LIST_HEAD) * stride_ln, mask=i + 1 < n_listed, other=0)
        start_n = tile_n * BLOCK_N
        qk = score_tile(q, k_base, start_n, offs_m, offs_n, offs_d, M, N, valid_q, valid_k, 1.0,
                        stride_kn, stride_kd, i >= n_unmasked, HEAD_DIM, IS_CAUSAL, DOT_PRECISION, USE_INT64, KV_TMA)
        # half_tail_gap takes the scale, the subtract and the max in one instruction. Its
        # half gap gives p / 4 (alpha = 1.5) or p / 2 (alpha = 2): the factor cancels in
        # out = acc / l. Other alphas double it back: 2^-INV would push p out of fp16's
        # range (and, towards alpha = 1, float32's). +inf thresholds (rows that see
        # nothing) give -inf -> p = 0.
        gap = half_tail_gap(qk, qk_scale, tau)
        if ALPHA_MODE == 0:
            gap = gap + gap
        p = entmax_power(gap, inv, ALPHA_MODE)
        l_i += lane_sums(p)
        # A row's largest z among its nonzeros is its largest z, if that one is nonzero:
        # one max per entry instead of a compare, a select and a max. Scaling by
        # qk_scale > 0 commutes with the max, rounding included.
        row_max = tl.max(qk, 1) * qk_scale
        support_max = tl.max(tl.where(row_max > tau, row_max, float("-inf")), 0)
        tl.store(tile_max_row + tile_n * stride_tn, support_max)
        v = load_kv_tile(v_base, start_n, start_n + offs_n, offs_d, N, stride_vn, stride_vd, HEAD_DIM, USE_INT64,
                         KV_TMA, False)
        acc = tile_dot(p.to(v.dtype), v, acc, DOT_PRECISION)
        if ALPHA_MODE == 1:
            u_sum += lane_sums(gap)
            acc_u = tile_dot(gap.to(v.dtype), v, acc_u, DOT_PRECISION)
            if FOLD:
                count += positive_count(gap, True)
    return acc, acc_u, tl.sum(l_i, 1), tl.sum(u_sum, 1), tl.sum(count, 1)


@triton.jit
def _adasplash_fwd_tau_out(
    q_ptr, k_ptr, v_ptr, out_ptr, u_value_mean_ptr, m_ptr, floor_ptr, local_floor_ptr, tau_ptr, bound_ptr,
    rel_bound_ptr, tile_max_ptr, tile_list_ptr, seqlens_ptr, handled_ptr,
    stride_qz, stride_qh, stride_qm, stride_qd,
    stride_kz, stride_kh, stride_kn, stride_kd,
    stride_vz, stride_vh, stride_vn, stride_vd,
    stride_oz, stride_oh, stride_om, stride_od,
    stride_uz, stride_uh, stride_um, stride_ud,
    stride_tauz, stride_tauh, stride_taum,
    stride_tz, stride_th, stride_tm, stride_tn,
    stride_bz, stride_bh, stride_bm, stride_bn,
    stride_lz, stride_lh, stride_lm, stride_ln,
    stride_hz, stride_hh, stride_hm,
    M, N, GROUP, qk_scale, alpha, inv, tau_tol, fold_tol,
    HEAD_DIM: tl.constexpr, HAS_SEQLENS: tl.constexpr, IS_CAUSAL: tl.constexpr, ALPHA_MODE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    NBINS: tl.constexpr, MAX_SWEEPS: tl.constexpr, EDGE_UNROLL: tl.constexpr,
    SCAN: tl.constexpr, FOLD: tl.constexpr,
    DOT_PRECISION: tl.constexpr, USE_INT64: tl.constexpr, KV_TMA: tl.constexpr, SKIP_HANDLED: tl.constexpr,
):
    """Threshold sweeps and the output pass for one row block: out, tau, tile_max and
    u_value_mean (float32, out's shape, strides stride_u*; adasplash_compile.options).

    m_ptr, floor_ptr, local_floor_ptr and tau_ptr share their shape and strides (stride_tau*); bound_ptr
    and rel_bound_ptr theirs (stride_b*, as in the max sweep). tile_max_ptr (strides
    stride_t*) must hold -inf on entry: only the tiles holding a nonzero of P are
    written. tile_list_ptr: int32 scratch (strides stride_l*), per program a row holding
    the thresholds and the listed tile indices, rewritten before every sweep
    (``list_active_tiles``). Reads only inputs and writes only outputs and scratch, so
    relaunching it (an autotuner's benchmark runs) gives the same results.
    """
    # Inductor passes Python floats to user kernels as fp64; keep the math in fp32.
    qk_scale = tl.cast(qk_scale, tl.float32)
    alpha = tl.cast(alpha, tl.float32)
    inv = tl.cast(inv, tl.float32)
    tau_tol = tl.cast(tau_tol, tl.float32)
    fold_tol = tl.cast(fold_tol, tl.float32)
    tl.static_assert(BLOCK_M == 64, "BLOCK_M must equal TILE_M: one program row block = one tile row")
    tl.static_assert(BLOCK_N == 64, "BLOCK_N must equal TILE_N: one key step = one tile")
    tl.static_assert((NBINS >= 2) and ((NBINS & (NBINS - 1)) == 0), "NBINS must be a power of two >= 2")
    tl.static_assert(MAX_SWEEPS >= 1, "MAX_SWEEPS must be >= 1")
    row_block, start_m, off_z, off_h, off_kh = program_row_block(IS_CAUSAL, BLOCK_M, GROUP)
    if SKIP_HANDLED:
        # kernels/candidates.py wrote this block's outputs.
        if tl.load(handled_ptr + off_z * stride_hz + off_h * stride_hh + row_block * stride_hm) != 0:
            return

    offs_m, rows_m = query_rows(start_m, BLOCK_M, USE_INT64)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    q = load_q_tile(q_ptr + off_z * stride_qz + off_h * stride_qh, rows_m, offs_d, M, stride_qm, stride_qd, HEAD_DIM)
    if KV_TMA:
        n_kv_heads = tl.num_programs(1) // GROUP
        head = off_kh.to(tl.int32)
        k_base = (head_descriptor(k_ptr, off_z, stride_kz, n_kv_heads, stride_kh, N, stride_kn, BLOCK_N, BLOCK_D), head)
        v_base = (head_descriptor(v_ptr, off_z, stride_vz, n_kv_heads, stride_vh, N, stride_vn, BLOCK_N, BLOCK_D), head)
    else:
        k_base = k_ptr + off_z * stride_kz + off_kh * stride_kh
        v_base = v_ptr + off_z * stride_vz + off_kh * stride_vh
    bound_offset = off_z * stride_bz + off_h * stride_bh + row_block * stride_bm
    bound_row = bound_ptr + bound_offset
    rel_row = rel_bound_ptr + bound_offset
    tile_max_row = tile_max_ptr + off_z * stride_tz + off_h * stride_th + row_block * stride_tm
    list_ptr = tile_list_ptr + off_z * stride_lz + off_h * stride_lh + row_block * stride_lm
    row_offset = off_z * stride_tauz + off_h * stride_tauh + rows_m * stride_taum

    valid_q, valid_k, n_tiles, n_i, first_masked = block_keys(seqlens_ptr, off_z, start_m, offs_m, M, N, HAS_SEQLENS,
                                                              IS_CAUSAL, BLOCK_M, BLOCK_N)

    # ---- threshold sweeps (kernels/tau.py); tau_i is the shifted threshold tau'
    m_i, m_shift, lo, hi, tau_i, active = start_bracket(m_ptr, floor_ptr, row_offset, offs_m, M, n_i, alpha,
                                                        ALPHA_MODE)
    sees_keys = (m_i > float("-inf")) & (n_i > 0)
    sweep = tl.zeros([], tl.int32)
    folded = tl.zeros([], tl.int32)
    out = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    u_mean = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    sweep_limit = MAX_SWEEPS
    if FOLD:
        # Stop after FOLD_AFTER sweeps and let the output pass finish the rows still
        # active (kernels/fold_output.py); where its correction is not accurate enough,
        # the sweeps resume below and the output pass runs again. The sweep before the
        # fold takes the chord's statistics (SWEEP_CHORD); the resumed ones count. A
        # block with dense scores sweeps the bottom of its bracket first and folds after
        # that one sweep (kernels/low_bracket.py): the sweep counter starts at 1, where
        # the sweeps take the chord's statistics, and the sweeps' budget moves up with it.
        local_floor = tl.load(local_floor_ptr + row_offset, mask=offs_m < M, other=float("-inf"))
        low = starts_low(lo, hi, local_floor - m_shift, n_i, active)
        full_hi = hi
        hi = low_top(lo, hi, active, low)
        top = hi
        sweep = low.to(tl.int32)
        sweep_limit += sweep
        lo, hi, tau_i, active, sweep = threshold_sweeps(
            q, k_base, bound_row, rel_row, stride_bn, list_ptr, stride_ln, n_tiles, first_masked, m_shift, lo, hi,
            tau_i, active, sweep, FOLD_AFTER, offs_m, offs_n, offs_d, M, N, valid_q, valid_k, qk_scale, inv, tau_tol,
            stride_kn, stride_kd, HEAD_DIM, IS_CAUSAL, DOT_PRECISION, USE_INT64, KV_TMA, BLOCK_N, NBINS, ALPHA_MODE,
            EDGE_UNROLL, SCAN, SWEEP_CHORD)
        lo, hi, tau_i, active, reopened = reopen_above(lo, hi, tau_i, active, top, full_hi)
        if (tl.sum(active.to(tl.int32), 0) > 0) & (reopened == 0):
            # The estimate: for alpha = 1.5 the closed form with the chord's count, within
            # about 2^-12 of tau' after two sweeps, or one low one (kernels/fold_output.py).
            tau_abs, tau_rel = output_thresholds(m_shift, tau_i, sees_keys)
            acc, acc_u, l_i, u_sum, count = output_pass(
                q, k_base, v_base, bound_row, rel_row, stride_bn, tile_max_row, stride_tn, list_ptr, stride_ln,
                n_tiles, first_masked, tau_abs, tau_rel, offs_m, offs_n, offs_d, M, N, valid_q, valid_k, qk_scale,
                inv, stride_kn, stride_kd, stride_vn, stride_vd, HEAD_DIM, IS_CAUSAL, DOT_PRECISION, USE_INT64, KV_TMA,
                BLOCK_N, BLOCK_D, ALPHA_MODE, SCAN, True)
            step, accurate = fold_correction(l_i, u_sum, count, active, fold_tol, FOLD_MAX_STEP)
            if tl.min(accurate.to(tl.int32), 0) > 0:
                tau_i = tau_i + step
                out = fold_output(acc, acc_u, l_i, u_sum, step)
                u_mean = ratio_or_zero(acc_u, u_sum)
                folded = tl.full([], 1, tl.int32)
    if folded == 0:
        lo, hi, tau_i, active, sweep = threshold_sweeps(
            q, k_base, bound_row, rel_row, stride_bn, list_ptr, stride_ln, n_tiles, first_masked, m_shift, lo, hi,
            tau_i, active, sweep, sweep_limit, offs_m, offs_n, offs_d, M, N, valid_q, valid_k, qk_scale, inv, tau_tol,
            stride_kn, stride_kd, HEAD_DIM, IS_CAUSAL, DOT_PRECISION, USE_INT64, KV_TMA, BLOCK_N, NBINS, ALPHA_MODE,
            EDGE_UNROLL, SCAN, SWEEP_COUNTED)
        # ---- output pass over the tiles that may hold a nonzero of P; each one visited
        # records in tile_max the largest z of its nonzeros (-inf stays where there is none).
        tau_abs, tau_rel = output_thresholds(m_shift, tau_i, sees_keys)
        acc, acc_u, l_i, u_sum, count = output_pass(
            q, k_base, v_base, bound_row, rel_row, stride_bn, tile_max_row, stride_tn, list_ptr, stride_ln, n_tiles,
            first_masked, tau_abs, tau_rel, offs_m, offs_n, offs_d, M, N, valid_q, valid_k, qk_scale, inv,
            stride_kn, stride_kd, stride_vn, stride_vd, HEAD_DIM, IS_CAUSAL, DOT_PRECISION, USE_INT64, KV_TMA, BLOCK_N,
            BLOCK_D, ALPHA_MODE, SCAN, False)
        # Renormalise as entmax_bisect does; rows without keys have l = 0 -> exact zeros.
        out = ratio_or_zero(acc, l_i)
        u_mean = ratio_or_zero(acc_u, u_sum)
    tau_abs, _ = output_thresholds(m_shift, tau_i, sees_keys)
    tl.store(tau_ptr + row_offset, tau_abs, mask=offs_m < M)
    tile_mask = (offs_m[:, None] < M) & (offs_d[None, :] < HEAD_DIM)
    out_ptrs = (out_ptr + off_z * stride_oz + off_h * stride_oh + rows_m[:, None] * stride_om
                + offs_d[None, :] * stride_od)
    tl.store(out_ptrs, out.to(out_ptr.dtype.element_ty), mask=tile_mask)
    u_mean_ptrs = (u_value_mean_ptr + off_z * stride_uz + off_h * stride_uh + rows_m[:, None] * stride_um
                   + offs_d[None, :] * stride_ud)
    tl.store(u_mean_ptrs, u_mean, mask=tile_mask)


allocate_scratch_before_launch(_adasplash_fwd_tau_out, "KV_TMA")


# --------------------------------------------------------------------------- launcher


def float32_bits(value):
    """(argument, SCALE_AS_BITS) of ``_adasplash_fwd_rowmax`` for a scale: a Python float
    as the bits of its float32 rounding, a signed int32, and True; a symbolic value (a
    SymFloat under dynamic shapes) unchanged, and False."""
    if isinstance(value, float):
        return struct.unpack("<i", struct.pack("<f", value))[0], True
    return value, False


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
    autotune: bool = False,
):
    """AdaSplash-2 forward; returns (out, tau, tile_max, u_value_mean) as
    reference.attention_forward.

    query (B, Hq, M, D), key/value (B, Hkv, N, D), any strides; out has query's
    dtype (``empty_like(query)``), tau float32 (B, Hq, M), tile_max float32
    (B, Hq, cdiv(M, 64) + 1, cdiv(N, 64) + 1), u_value_mean float32 (B, Hq, M, D),
    contiguous. ``wrap`` wraps every kernel before launch
    (``torch.library.wrap_triton`` under tracing); ``config`` overrides the default
    (``default_forward_config``); ``autotune`` chooses among ``autotune_forward_configs``
    instead (kernels/autotuning.py). Besides launch options, ``config`` may hold
    USE_INT64 and KV_TMA (force a path), NO_CANDIDATES (True: no row block takes
    kernels/candidates.py's lists) and CANDIDATE_PTX (force the lists' PTX appends).
    """
    buffers = _run_forward(query, key, value, alpha, is_causal, scale, seqlens, wrap, config, autotune,
                           with_output=True)
    return buffers["out"], buffers["tau"], buffers["tile_max"], buffers["u_value_mean"]


def max_sweep(query, key, alpha, is_causal, scale, seqlens=None, *, config=None) -> dict:
    """Kernel 1 alone, for tests and profiling: {"row_max", "floor", "local_floor", "bound",
    "rel_bound"}
    (bound and rel_bound shaped like tile_max plus a last dimension of BOUND_GROUPS row
    groups of 16 rows; written only for each row block's visible tiles, the rest left as
    allocated)."""
    buffers = _run_forward(query, key, key, alpha, is_causal, scale, seqlens, None, config, False,
                           with_output=False)
    return {name: buffers[name] for name in ("row_max", "floor", "local_floor", "bound", "rel_bound")}


def _run_forward(query, key, value, alpha, is_causal, scale, seqlens, wrap, config, autotune, with_output):
    """Allocate and launch; with_output=False stops after the max sweep. Returns every buffer by name."""
    if autotune and config is not None:
        raise ValueError("attention_forward: pass either config or autotune=True, not both")
    launch = wrap or _identity
    if scale <= 0:
        # The kernels take qk_scale > 0: the key summary's bounds, the tile maxima taken
        # before the scale and the masked -inf scores scaled in the sweeps all assume it
        # (at 0 those give -inf * 0 = NaN). scale * q.k = (-scale) * (-q).k, and 0 * q.k =
        # 1 * 0.k, give the same scores, hence the same out, tau, tile_max and
        # u_value_mean; the backward takes any sign as it is.
        query, scale = (torch.neg(query), -scale) if scale < 0 else (torch.zeros_like(query), 1.0)
    batch, q_heads, n_queries, head_dim = query.shape
    kv_heads, n_keys = key.shape[1], key.shape[2]
    out = torch.empty_like(query)
    tau = torch.empty((batch, q_heads, n_queries), dtype=torch.float32, device=query.device)
    tiles = (batch, q_heads, *tile_grid(n_queries, n_keys))
    # The output pass writes only the tiles holding a nonzero of P.
    tile_max = torch.full(tiles, float("-inf"), dtype=torch.float32, device=query.device)
    # Scratch, never read by the caller: the row max, the threshold floor and the local
    # tiles' floor before the histogram lifted it (kernels/low_bracket.py), the tile
    # bounds (tile_max's shape with a last, contiguous dimension of BOUND_GROUPS row
    # groups), and the per-program lists of active tiles: a row holds LIST_HEAD
    # threshold slots and up to cdiv(N, 64) tile indices; padded like tile_max, so no
    # dimension is 1.
    bounds = (*tiles, BOUND_GROUPS.value)
    buffers = dict(
        out=out, tau=tau, tile_max=tile_max,
        u_value_mean=torch.empty((batch, q_heads, n_queries, head_dim), dtype=torch.float32, device=query.device),
        row_max=torch.empty_like(tau), floor=torch.empty_like(tau),
        local_floor=torch.empty_like(tau),
        bound=torch.empty(bounds, dtype=torch.float32, device=query.device),
        rel_bound=torch.empty(bounds, dtype=torch.float32, device=query.device),
    )
    if batch == 0 or q_heads == 0 or n_queries == 0:
        return buffers

    cfg = dict(config) if config is not None else default_forward_config(head_dim, query.dtype)
    # USE_INT64 may be forced (tests run the int64 path on small tensors).
    use_int64 = cfg.pop("USE_INT64", None)
    if use_int64 is None:
        use_int64 = _needs_int64(query, key, value, out)
    block_m, block_n = cfg["BLOCK_M"], cfg["BLOCK_N"]
    block_d = _block_d(head_dim)
    # KV_TMA may be forced too (tests run the descriptor path under the interpreter).
    kv_tma = cfg.pop("KV_TMA", None)
    if kv_tma is None:
        kv_tma = descriptors_supported(key, value, head_dim=head_dim, block_d=block_d)
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
        BLOCK_D=block_d,
        # tf32 is not accurate enough for the 1e-4 fp32 bar; ignored for fp16/bf16.
        DOT_PRECISION="ieee" if query.dtype == torch.float32 else "tf32",
        USE_INT64=bool(use_int64),
        ALPHA_MODE=alpha_mode(alpha),
    )
    group = q_heads // kv_heads
    qk_scale = (alpha - 1.0) * scale
    grid = (triton.cdiv(n_queries, block_m), q_heads, batch)
    row_max, floor, local_floor, bound, rel_bound = (buffers[name] for name in
                                                     ("row_max", "floor", "local_floor", "bound", "rel_bound"))
    tile_list = torch.empty((*tiles[:3], tiles[3] + LIST_HEAD.value - 1), dtype=torch.int32, device=query.device)
    if autotune:
        candidates = autotune_forward_configs(head_dim, query.dtype)
        rowmax_kernel = autotuned(_adasplash_fwd_rowmax,
                                  _distinct([_streaming_launch_options(c, kv_tma) for c in candidates]),
                                  key=("M", "N"))
        tau_out_kernel = autotuned(_adasplash_fwd_tau_out,
                                   _distinct([_histogram_config(c, kv_tma) for c in candidates]),
                                   key=("M", "N"))
        rowmax_tuning, tau_out_tuning = {}, {}
    else:
        rowmax_kernel, tau_out_kernel = _adasplash_fwd_rowmax, _adasplash_fwd_tau_out
        rowmax_tuning = _streaming_launch_options(cfg, kv_tma)
        tau_out_tuning = _histogram_config(cfg, kv_tma)
    centre, radius = key_tile_summary(key, n_queries, seqlens_arg, has_seqlens, common["BLOCK_D"], bool(use_int64),
                                      wrap=wrap)
    scale_argument, scale_as_bits = float32_bits(qk_scale)
    launch(rowmax_kernel)[grid](
        query, key, centre, radius, row_max, floor, local_floor, bound, rel_bound, tile_list, seqlens_arg,
        *query.stride(), *key.stride(), *centre.stride(), *radius.stride(), *row_max.stride(), *bound.stride()[:4],
        *tile_list.stride(),
        n_queries, n_keys, group, scale_argument, alpha, 1.0 / (alpha - 1.0),
        CENTRE_CHUNK=_CENTRE_CHUNK, SCAN=_TILE_SCAN, SCALE_AS_BITS=scale_as_bits, KV_TMA=bool(kv_tma),
        **common, **rowmax_tuning,
    )
    if not with_output:
        return buffers
    fold_tol = fold_tolerance(alpha, query.dtype)
    # Imported here: kernels/candidates.py imports this module's helpers.
    from adasplash_compile.kernels.candidates import LIST_MIN_KEYS, launch_candidates

    # Dense row blocks take candidate lists (kernels/candidates.py) where the forward
    # folds (alpha = 1.5, 16-bit outputs); the threshold/output kernel skips them. Where no
    # row sees LIST_MIN_KEYS keys none can, and the lists' launches and memory are spared.
    no_candidates = cfg.pop("NO_CANDIDATES", False)
    # CANDIDATE_PTX may be forced (the mutation-analysis tests build the CUDA form on CPU tensors).
    candidate_ptx = cfg.pop("CANDIDATE_PTX", None)
    by_candidates = fold_tol > 0.0 and n_keys >= LIST_MIN_KEYS.value and not no_candidates
    if by_candidates:
        handled = launch_candidates(query, key, value, out, buffers["u_value_mean"], row_max, floor, local_floor, tau,
                                    bound, rel_bound, tile_max, tile_list, seqlens_arg, has_seqlens, grid, group,
                                    qk_scale, alpha, launch, common, candidate_ptx)
    else:
        # Never read without SKIP_HANDLED: any (B, H, ...) tensor stands in for the flags.
        handled = tau
    launch(tau_out_kernel)[grid](
        query, key, value, out, buffers["u_value_mean"], row_max, floor, local_floor, tau, bound, rel_bound, tile_max,
        tile_list, seqlens_arg, handled,
        *query.stride(), *key.stride(), *value.stride(), *out.stride(), *buffers["u_value_mean"].stride(),
        *tau.stride(), *tile_max.stride(),
        *bound.stride()[:4], *tile_list.stride(), *handled.stride()[:3],
        n_queries, n_keys, group, qk_scale, alpha, 1.0 / (alpha - 1.0), tau_tolerance(alpha, query.dtype),
        fold_tol, SCAN=_TILE_SCAN, FOLD=fold_tol > 0.0, SKIP_HANDLED=by_candidates,
        KV_TMA=bool(kv_tma), **common, **tau_out_tuning,
    )
    return buffers
