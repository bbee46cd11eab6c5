"""Constants shared by the reference, the ops and the kernels.

TILE_M, TILE_N: the granularity of the block-sparsity record. The forward returns
``tile_max[b, h, i, j]``: over query rows ``[i*TILE_M, (i+1)*TILE_M)`` and key
columns ``[j*TILE_N, (j+1)*TILE_N)``, the largest ``z = (alpha-1)*scale*q.k`` among
the entries with ``z > tau`` of their row (the nonzeros of P), ``-inf`` for a tile
with none. So a tile holds a nonzero of P iff its tile_max exceeds the smallest
threshold of its rows, and the backward visits exactly those tiles. The value is
part of the op contract, so the CPU reference computes it too.

``u_value_mean[b, h, i]`` (float32, (B, Hq, Nq, D)), for alpha = 1.5: row i's values
averaged with the weights u_ij = p_ij^(2-alpha) = p_ij^(1/2), the diagonal of the entmax
Jacobian, over its support: sum_j u_ij v_j / sum_j u_ij, zeros for a row without support.
The backward's DELTA_i = sum_j u_ij dP_ij / sum_j u_ij is then dO_i . u_value_mean_i, with
no product over the keys. The 16-bit forward that folds its last threshold sweep
(kernels/fold_output.py) takes the weights at its estimate t, within 2^-11 of tau, instead
of at tau.
Zeros for other alphas, whose backward learns DELTA over its own support: there u jumps
(alpha = 2) or rises steeply at the support's edge, so entries that the forward and the
backward round to different sides of tau would move a shared DELTA by a whole share
(kernels/backward.py).

tile_max has one more row and column of tiles than the data needs, always -inf:
``(B, Hq, cdiv(Nq, TILE_M) + 1, cdiv(Nk, TILE_N) + 1)``. A dimension that can be
1 makes PyTorch's contiguity checks guard on it, which pins a dynamic sequence
length at export (``Dim("seq")`` would fail for lengths <= 64) and recompiles
under ``dynamic=True``; padded, no dimension is ever 1. ``tile_grid`` gives the
padded shape.

BACKEND_ENV: ``ADASPLASH_COMPILE_BACKEND=triton`` sends CPU tensors through the
Triton kernels; together with ``TRITON_INTERPRET=1`` this runs the real kernels
on the CPU, which is how CPU CI tests them. Any other value, or none, keeps CPU
tensors on the pure-PyTorch reference.
"""

import os

import torch

TILE_M = 64
TILE_N = 64

MAX_HEAD_DIM = 256
HEAD_DIM_MULTIPLE = 8

BACKEND_ENV = "ADASPLASH_COMPILE_BACKEND"

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def cpu_uses_triton() -> bool:
    """True when CPU tensors should run the Triton kernels (under the interpreter)."""
    return os.environ.get(BACKEND_ENV, "").strip().lower() == "triton"


def tile_grid(n_queries, n_keys):
    """(rows, cols) of tile_max, padding included; symbolic sizes stay symbolic."""
    return (n_queries + TILE_M - 1) // TILE_M + 1, (n_keys + TILE_N - 1) // TILE_N + 1
