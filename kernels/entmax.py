"""Row-wise alpha-entmax forward: exact threshold by histogram sweeps, any row length.

Glossary
  x, y       input and output, any shape; entmax runs along ``dim``
  A, L, C    x viewed as (A, L, C): A = prod(shape[:dim]), L = shape[dim] (the row
             length), C = prod(shape[dim+1:]); row r = (r // C, r % C). The launcher
             passes x's own strides when the dims on each side of ``dim`` merge (no
             copy); otherwise it copies to a contiguous tensor first.
  R          number of rows, A * C
  z          (alpha-1) * x in float32; -inf entries (and padding) never enter the support
  ALPHA, INV, ALPHA_MODE, NBINS, MAX_SWEEPS, EDGE_UNROLL, TAU_TOL   see kernels/tau.py
  BLOCK_R    rows per program;  BLOCK_L  entries per chunk of a row
  SINGLE_CHUNK  constexpr, L <= BLOCK_L: the rows stay in registers across all
             sweeps; otherwise every sweep streams the row in BLOCK_L chunks, and the
             output takes two more passes (sum of p, then the normalised store)

Per program: a max/count pass, then at most MAX_SWEEPS threshold sweeps (the first
is the histogram over [m-1, m-n^(1-alpha)], later ones refine; the loop stops when
every row of the block converged), then p = [z - tau]_+^INV / sum. Rows of all -inf
(no finite entry) output zeros.
"""

import math

import torch
import triton
import triton.language as tl

from adasplash_compile.kernels.autotuning import autotuned
from adasplash_compile.kernels.tau import (
    TAU_TOL,
    alpha_mode,
    entmax_power,
    tau_accumulate,
    tau_init,
    tau_update,
)

# --------------------------------------------------------------------------- configs

# Elements of one (BLOCK_R, BLOCK_L) tile held in registers: 4096 fp32 values are
# 32 per thread at 4 warps, 16 at 8, leaving room for the (BLOCK_R, NBINS) stats.
_TILE_ELEMENTS = 4096
_MAX_BLOCK_R = 64


def _pow2_at_least(n, cap: int) -> int:
    """Smallest power of two >= n, at most cap. Comparisons only, so a symbolic n
    (dynamic shapes) yields a concrete block size and a guard on its range."""
    block = 1
    while block < n and block < cap:
        block *= 2
    return block


def prune_entmax_configs(configs: list) -> list:
    """Configs the kernel accepts (also tl.static_assert-ed in ``_entmax_fwd``)."""
    kept = []
    for config in configs:
        nbins = config["NBINS"]
        if nbins < 2 or nbins & (nbins - 1) or config["MAX_SWEEPS"] < 1 or config["EDGE_UNROLL"] < 1:
            continue
        if config["BLOCK_R"] * config["BLOCK_L"] > 4 * _TILE_ELEMENTS:
            continue
        kept.append(config)
    return kept


def default_entmax_config(n_rows: int, row_length: int) -> dict:
    """Whole rows in registers up to 4096 entries, as many rows per program as fit."""
    block_l = _pow2_at_least(row_length, _TILE_ELEMENTS)
    block_r = _pow2_at_least(n_rows, min(_MAX_BLOCK_R, _TILE_ELEMENTS // block_l))
    return dict(
        BLOCK_R=block_r,
        BLOCK_L=block_l,
        NBINS=8,
        MAX_SWEEPS=4,
        EDGE_UNROLL=1,
        num_warps=4 if block_r * block_l <= 2048 else 8,
        num_stages=1,
    )


# What a config sets beyond its block sizes: the histogram and the launch options.
_TUNED = ("NBINS", "MAX_SWEEPS", "EDGE_UNROLL", "num_warps", "num_stages")


def autotune_entmax_configs(config: dict) -> list:
    """Candidates around a default config: its block sizes, 4 or 8 edges, 4 or 8 warps."""
    candidates = []
    for nbins, sweeps in ((8, 4), (4, 5)):
        for num_warps in (config["num_warps"], 8 if config["num_warps"] == 4 else 4):
            for unroll in (1, nbins):
                candidates.append(dict(NBINS=nbins, MAX_SWEEPS=sweeps, EDGE_UNROLL=unroll, num_warps=num_warps,
                                       num_stages=config["num_stages"]))
    return candidates


def _merged_stride(shape, stride, start, stop):
    """Stride of dims [start, stop) merged into one index, or None if they do not merge."""
    dims = [i for i in range(start, stop) if shape[i] != 1]
    for outer, inner in zip(dims, dims[1:]):
        if stride[outer] != stride[inner] * shape[inner]:
            return None
    return stride[dims[-1]] if dims else 1


def _as_rows(t: torch.Tensor, dim: int):
    """(stride_a, stride_l, stride_c) viewing t as (A, L, C) around dim, or None."""
    shape, stride = t.shape, t.stride()
    stride_a = _merged_stride(shape, stride, 0, dim)
    stride_c = _merged_stride(shape, stride, dim + 1, t.dim())
    if stride_a is None or stride_c is None:
        return None
    return stride_a, stride[dim], stride_c


def _needs_int64(t: torch.Tensor) -> bool:
    extent = sum((size - 1) * abs(stride) for size, stride in zip(t.shape, t.stride()) if size > 0)
    return extent >= 2**31 - 1


# --------------------------------------------------------------------------- kernel


@triton.jit
def load_z_chunk(x_rows, cols, L, row_ok, stride_xl, alpha_m1, USE_INT64: tl.constexpr):
    """(BLOCK_R, BLOCK_L) chunk of z = (alpha-1)*x, -inf outside the rows."""
    if USE_INT64:
        offs = cols.to(tl.int64)
    else:
        offs = cols
    mask = row_ok[:, None] & (cols[None, :] < L)
    x = tl.load(x_rows[:, None] + offs[None, :] * stride_xl, mask=mask, other=float("-inf"))
    return x.to(tl.float32) * alpha_m1


@triton.jit
def _entmax_fwd(
    x_ptr, y_ptr,
    n_rows, L, C,
    stride_xa, stride_xl, stride_xc,
    stride_ya, stride_yl, stride_yc,
    alpha, alpha_m1, inv,
    ALPHA_MODE: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_L: tl.constexpr,
    NBINS: tl.constexpr, MAX_SWEEPS: tl.constexpr, EDGE_UNROLL: tl.constexpr, TAU_TOL: tl.constexpr,
    SINGLE_CHUNK: tl.constexpr, USE_INT64: tl.constexpr,
):
    # Inductor passes Python floats to user kernels as fp64; keep the math in fp32.
    alpha = tl.cast(alpha, tl.float32)
    alpha_m1 = tl.cast(alpha_m1, tl.float32)
    inv = tl.cast(inv, tl.float32)
    tl.static_assert((NBINS >= 2) and ((NBINS & (NBINS - 1)) == 0), "NBINS must be a power of two >= 2")
    tl.static_assert(MAX_SWEEPS >= 1, "MAX_SWEEPS must be >= 1")
    tl.static_assert(BLOCK_R * BLOCK_L <= 4 * 4096, "a (BLOCK_R, BLOCK_L) tile must fit in registers")
    rows = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    row_ok = rows < n_rows
    outer = rows // C
    inner = rows % C
    x_rows = x_ptr + outer * stride_xa + inner * stride_xc
    y_rows = y_ptr + outer * stride_ya + inner * stride_yc
    cols = tl.arange(0, BLOCK_L)

    # ---- row max m and count n of finite entries
    if SINGLE_CHUNK:
        z = load_z_chunk(x_rows, cols, L, row_ok, stride_xl, alpha_m1, USE_INT64)
        m_i = tl.max(z, 1)
        n_i = tl.sum((z > float("-inf")).to(tl.int32), 1)
    else:
        m_i = tl.full([BLOCK_R], float("-inf"), tl.float32)
        n_i = tl.zeros([BLOCK_R], tl.int32)
        for start in range(0, L, BLOCK_L):
            z = load_z_chunk(x_rows, start + cols, L, row_ok, stride_xl, alpha_m1, USE_INT64)
            m_i = tl.maximum(m_i, tl.max(z, 1))
            n_i += tl.sum((z > float("-inf")).to(tl.int32), 1)
    has_entries = (m_i > float("-inf")) & (n_i > 0)
    m_shift = tl.where(has_entries, m_i, 0.0)  # avoids -inf - (-inf)

    # ---- threshold sweeps (kernels/tau.py)
    lo, hi, tau_i, active = tau_init(m_i, n_i, alpha, ALPHA_MODE)
    sweep = 0
    n_active = tl.sum(active.to(tl.int32), 0)
    while (sweep < MAX_SWEEPS) & (n_active > 0):
        stat_f = tl.zeros([BLOCK_R, NBINS], tl.float32)
        stat_g = tl.zeros([BLOCK_R, NBINS], tl.float32)
        stat_c = tl.zeros([BLOCK_R, NBINS], tl.int32)
        if SINGLE_CHUNK:
            stat_f, stat_g, stat_c = tau_accumulate(z - m_shift[:, None], 1.0, 0.0, lo, hi, stat_f, stat_g, stat_c,
                                                    inv, NBINS, ALPHA_MODE, EDGE_UNROLL, True, True)
        else:
            for start in range(0, L, BLOCK_L):
                zc = load_z_chunk(x_rows, start + cols, L, row_ok, stride_xl, alpha_m1, USE_INT64)
                stat_f, stat_g, stat_c = tau_accumulate(zc - m_shift[:, None], 1.0, 0.0, lo, hi, stat_f, stat_g, stat_c,
                                                        inv, NBINS, ALPHA_MODE, EDGE_UNROLL, True, True)
        lo, hi, tau_i, active = tau_update(lo, hi, tau_i, active, stat_f, stat_g, stat_c, 0.0, inv, NBINS,
                                           ALPHA_MODE, TAU_TOL, True, False)
        n_active = tl.sum(active.to(tl.int32), 0)
        sweep += 1
    tau_i = tl.where(has_entries, m_shift + tau_i, float("inf"))

    # ---- p = [z - tau]_+^INV, renormalised to sum to one (0 for empty rows)
    if SINGLE_CHUNK:
        p = entmax_power(tl.maximum(z - tau_i[:, None], 0.0), inv, ALPHA_MODE)
        total = tl.sum(p, 1)
        scale = tl.where(total > 0.0, 1.0 / tl.where(total > 0.0, total, 1.0), 0.0)
        if USE_INT64:
            offs = cols.to(tl.int64)
        else:
            offs = cols
        mask = row_ok[:, None] & (cols[None, :] < L)
        tl.store(y_rows[:, None] + offs[None, :] * stride_yl, (p * scale[:, None]).to(y_ptr.dtype.element_ty),
                 mask=mask)
    else:
        total = tl.zeros([BLOCK_R], tl.float32)
        for start in range(0, L, BLOCK_L):
            zc = load_z_chunk(x_rows, start + cols, L, row_ok, stride_xl, alpha_m1, USE_INT64)
            total += tl.sum(entmax_power(tl.maximum(zc - tau_i[:, None], 0.0), inv, ALPHA_MODE), 1)
        scale = tl.where(total > 0.0, 1.0 / tl.where(total > 0.0, total, 1.0), 0.0)
        for start in range(0, L, BLOCK_L):
            zc = load_z_chunk(x_rows, start + cols, L, row_ok, stride_xl, alpha_m1, USE_INT64)
            p = entmax_power(tl.maximum(zc - tau_i[:, None], 0.0), inv, ALPHA_MODE)
            chunk = start + cols
            if USE_INT64:
                offs = chunk.to(tl.int64)
            else:
                offs = chunk
            mask = row_ok[:, None] & (chunk[None, :] < L)
            tl.store(y_rows[:, None] + offs[None, :] * stride_yl, (p * scale[:, None]).to(y_ptr.dtype.element_ty),
                     mask=mask)


# --------------------------------------------------------------------------- launcher


def _identity(kernel):
    return kernel


def entmax_forward(x: torch.Tensor, alpha: float, dim: int, *, wrap=None, config=None,
                   autotune: bool = False) -> torch.Tensor:
    """alpha-entmax of x along dim: x's dtype, shape and (dense) layout, rows sum to one.

    ``wrap`` wraps the kernel before launch (``torch.library.wrap_triton`` under
    tracing); ``config`` overrides ``default_entmax_config``; ``autotune`` keeps its
    block sizes and chooses the histogram and launch options among
    ``autotune_entmax_configs`` (kernels/autotuning.py).
    """
    if autotune and config is not None:
        raise ValueError("entmax_forward: pass either config or autotune=True, not both")
    launch = wrap or _identity
    out = torch.empty_like(x)
    if x.numel() == 0:
        return out
    if x.dim() == 0:
        x_nd, out_nd, dim = x.view(1), out.view(1), 0
    else:
        x_nd, out_nd, dim = x, out, dim % x.dim()
    row_length = x_nd.shape[dim]
    n_outer = math.prod(x_nd.shape[:dim])
    n_inner = math.prod(x_nd.shape[dim + 1:])

    x_strides = _as_rows(x_nd, dim)
    if x_strides is None:  # dims on one side of `dim` do not merge: read a copy
        x_nd = x_nd.contiguous()
        x_strides = _as_rows(x_nd, dim)
    target = out_nd
    out_strides = _as_rows(out_nd, dim)
    if out_strides is None:  # write a contiguous buffer, copy into out's layout after
        target = torch.empty(out_nd.shape, dtype=out_nd.dtype, device=out_nd.device)
        out_strides = _as_rows(target, dim)

    cfg = dict(config) if config is not None else default_entmax_config(n_outer * n_inner, row_length)
    n_rows = n_outer * n_inner
    grid = (triton.cdiv(n_rows, cfg["BLOCK_R"]),)
    if autotune:
        kernel = autotuned(_entmax_fwd, autotune_entmax_configs(cfg), key=("n_rows", "L"))
        tuning = {}
    else:
        kernel = _entmax_fwd
        tuning = {name: cfg[name] for name in _TUNED}
    launch(kernel)[grid](
        x_nd, target,
        n_rows, row_length, n_inner,
        *x_strides, *out_strides,
        alpha, alpha - 1.0, 1.0 / (alpha - 1.0),
        ALPHA_MODE=alpha_mode(alpha), BLOCK_R=cfg["BLOCK_R"], BLOCK_L=cfg["BLOCK_L"], TAU_TOL=TAU_TOL,
        SINGLE_CHUNK=row_length <= cfg["BLOCK_L"], USE_INT64=_needs_int64(x_nd) or _needs_int64(target),
        **tuning,
    )
    if target is not out_nd:
        out_nd.copy_(target)
    return out
