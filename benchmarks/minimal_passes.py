"""What one pass over the causal key tiles costs at its least, next to FlashAttention-2.

Every pass of the forward (kernels/forward.py: the max sweep, the threshold sweeps, the
output pass) streams key tiles past a resident 64-row query block and runs a Q.K^T product
per tile, then its own per-entry work. This script times two minimal passes over every
causal tile (the dense case), with the same tile shapes and launch options as the
kernels', so that a planner can tell the products and copies from the per-entry work:

  max      s = Q.K^T and the row max of s: what the max sweep cannot do without
  output   the above, then p = [s - m + 1]_+^2 (one multiply-add, a max and a square per
           entry, as the output pass takes at a known threshold; m is the running max,
           so p is a cost model, not attention) and acc += p.V

Each runs with pointer loads or tensor descriptors (kernels/tensor_maps.py), 2 or 3
pipeline stages, and 64 rows on 4 warps (the kernels' block) or 128 rows on 8 warps.
Tiles before the block's diagonal run without the causal mask, as in the kernels.
FA2 (``scaled_dot_product_attention`` under the flash backend) times the same causal
inputs; ratios are to its forward.

    python3 benchmarks/minimal_passes.py --n 8192 32768
"""

import argparse
import sys

import torch
import triton
import triton.language as tl

from adasplash_compile.kernels.tensor_maps import ensure_scratch_allocator

TILE = 64


@triton.jit
def _key_tile(k_ref, head, start, offs_n, offs_d, n_keys, HEAD_DIM: tl.constexpr, DESCRIPTORS: tl.constexpr):
    if DESCRIPTORS:
        return k_ref.load([head * n_keys + start, 0])
    else:
        return tl.load(k_ref + (head * n_keys + start + offs_n)[:, None].to(tl.int64) * HEAD_DIM + offs_d[None, :])


@triton.jit
def _tile_step(q, k_ref, v_ref, head, start, offs_m, offs_n, offs_d, n_keys, row_max, acc, scale,
               HEAD_DIM: tl.constexpr, DESCRIPTORS: tl.constexpr, OUTPUT: tl.constexpr, MASKED: tl.constexpr):
    k = _key_tile(k_ref, head, start, offs_n, offs_d, n_keys, HEAD_DIM, DESCRIPTORS)
    s = tl.dot(q, tl.trans(k)) * scale
    if MASKED:
        s = tl.where(offs_m[:, None] >= (start + offs_n)[None, :], s, float("-inf"))
    row_max = tl.maximum(row_max, tl.max(s, 1))
    if OUTPUT:
        v = _key_tile(v_ref, head, start, offs_n, offs_d, n_keys, HEAD_DIM, DESCRIPTORS)
        gap = tl.maximum(s - row_max[:, None] + 1.0, 0.0)
        acc = tl.dot((gap * gap).to(v.dtype), v, acc)
    return row_max, acc


@triton.jit
def _minimal_pass(q_ptr, k_ptr, v_ptr, row_max_ptr, out_ptr, n_keys, n_heads, scale, BLOCK_M: tl.constexpr,
                  HEAD_DIM: tl.constexpr, DESCRIPTORS: tl.constexpr, OUTPUT: tl.constexpr, STAGES: tl.constexpr):
    """One program per (row block, head) of contiguous (1, H, N, HEAD_DIM) inputs, heaviest
    row block first; stores the row max of s and, with OUTPUT, acc."""
    row_block = tl.num_programs(0) - 1 - tl.program_id(0)
    head = tl.program_id(1)
    offs_m = row_block * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, 64)
    offs_d = tl.arange(0, HEAD_DIM)
    rows = (head * n_keys + offs_m).to(tl.int64)
    q = tl.load(q_ptr + rows[:, None] * HEAD_DIM + offs_d[None, :])
    if DESCRIPTORS:
        k_ref = tl.make_tensor_descriptor(k_ptr, shape=[n_heads * n_keys, HEAD_DIM], strides=[HEAD_DIM, 1],
                                          block_shape=[64, HEAD_DIM])
        v_ref = tl.make_tensor_descriptor(v_ptr, shape=[n_heads * n_keys, HEAD_DIM], strides=[HEAD_DIM, 1],
                                          block_shape=[64, HEAD_DIM])
    else:
        k_ref = k_ptr
        v_ref = v_ptr
    row_max = tl.full([BLOCK_M], float("-inf"), tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    first_masked = (row_block * BLOCK_M) // 64
    for tile in tl.range(0, first_masked, num_stages=STAGES):
        row_max, acc = _tile_step(q, k_ref, v_ref, head, tile * 64, offs_m, offs_n, offs_d, n_keys, row_max, acc,
                                  scale, HEAD_DIM, DESCRIPTORS, OUTPUT, False)
    for tile in tl.range(first_masked, (row_block + 1) * BLOCK_M // 64):
        row_max, acc = _tile_step(q, k_ref, v_ref, head, tile * 64, offs_m, offs_n, offs_d, n_keys, row_max, acc,
                                  scale, HEAD_DIM, DESCRIPTORS, OUTPUT, True)
    tl.store(row_max_ptr + rows, row_max)
    if OUTPUT:
        tl.store(out_ptr + rows[:, None] * HEAD_DIM + offs_d[None, :], acc)


def minimal_pass(query, key, value, *, output: bool, block_m: int = 64, descriptors: bool = False,
                 stages: int = 2, num_warps: int = 4):
    """Launch one minimal pass on contiguous (1, H, N, D) inputs; returns (row max of s, acc
    or None), float32, with s = Q.K^T / sqrt(D) causal."""
    _, n_heads, n_keys, head_dim = query.shape
    if n_keys % block_m or n_keys % TILE or query.shape[0] != 1:
        raise ValueError(f"query: expected (1, H, N, D) with N a multiple of {block_m}, got {tuple(query.shape)}")
    row_max = torch.empty((n_heads, n_keys), dtype=torch.float32, device=query.device)
    out = torch.empty((n_heads, n_keys, head_dim), dtype=torch.float32, device=query.device) if output else row_max
    if descriptors:
        ensure_scratch_allocator()
    _minimal_pass[(n_keys // block_m, n_heads)](
        query, key, value, row_max, out, n_keys, n_heads, head_dim**-0.5, BLOCK_M=block_m, HEAD_DIM=head_dim,
        DESCRIPTORS=descriptors, OUTPUT=output, STAGES=stages, num_warps=num_warps)
    return row_max, (out if output else None)


VARIANTS = [
    dict(block_m=block_m, num_warps=warps, descriptors=descriptors, stages=stages)
    for block_m, warps in ((64, 4), (128, 8)) for descriptors in (False, True) for stages in (2, 3)
]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, nargs="+", default=[8192, 32768])
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--head-dim", type=int, default=128)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("minimal_passes: needs a CUDA GPU", file=sys.stderr)
        return 1
    from triton.testing import do_bench

    def timed(fn):
        return do_bench(fn, warmup=10, rep=100, return_mode="median")

    print("| N | pass | rows, warps | loads | stages | ms | / FA2 forward |")
    print("|---|---|---|---|---|---|---|")
    for n in args.n:
        generator = torch.Generator(device="cuda").manual_seed(n)
        query, key, value = (torch.randn((1, args.heads, n, args.head_dim), device="cuda", dtype=torch.bfloat16,
                                         generator=generator) for _ in range(3))
        with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.FLASH_ATTENTION):
            fa2 = timed(lambda: torch.nn.functional.scaled_dot_product_attention(query, key, value, is_causal=True))
        print(f"| {n} | FA2 forward | | | | {fa2:.3f} | 1.00 |", flush=True)
        for output in (False, True):
            for variant in VARIANTS:
                ms = timed(lambda: minimal_pass(query, key, value, output=output, **variant))
                loads = "descriptors" if variant["descriptors"] else "pointers"
                print(f"| {n} | {'output' if output else 'max'} | {variant['block_m']}, {variant['num_warps']} | "
                      f"{loads} | {variant['stages']} | {ms:.3f} | {ms / fa2:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
