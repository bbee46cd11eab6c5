"""kernels/masking.py: first_masked_tile against the dense visibility mask, and the
launch order of heaviest_first.

The forward skips the per-entry mask on the tiles before first_masked_tile, so every
row of the block must see every key there; and the tile it names must hold a hidden
entry (else tiles that need no mask pay for one). heaviest_first must give every row
block to exactly one program, those that see more keys first.
"""

import pytest
import torch
import triton
import triton.language as tl

from adasplash_compile.kernels.masking import first_masked_tile, heaviest_first, valid_lengths
from adasplash_compile.options import TILE_M, TILE_N
from tests.conftest import BOTH_BACKENDS, DEVICE
from tests.oracle import dense_mask

pytestmark = BOTH_BACKENDS


@triton.jit
def _first_masked(seqlens_ptr, out_ptr, M, N, n_blocks, HAS_SEQLENS: tl.constexpr, IS_CAUSAL: tl.constexpr,
                  BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    block = tl.program_id(0)
    batch = tl.program_id(1)
    valid_q, valid_k = valid_lengths(seqlens_ptr, batch, M, N, HAS_SEQLENS)
    first = first_masked_tile(block * BLOCK_M, M, N, valid_q, valid_k, IS_CAUSAL, BLOCK_M, BLOCK_N)
    tl.store(out_ptr + batch * n_blocks + block, first)


@pytest.mark.parametrize("is_causal", [False, True])
@pytest.mark.parametrize(
    "n_queries, n_keys, lengths",
    [(256, 256, None), (200, 200, None), (130, 300, None), (300, 130, None), (256, 256, [256, 100, 64, 0, 1000]),
     (192, 192, [5, 191])],
)
def test_tiles_before_first_masked_are_whole_and_the_first_is_not(backend, n_queries, n_keys, lengths, is_causal):
    batch = 1 if lengths is None else len(lengths)
    seqlens = None if lengths is None else torch.tensor(lengths, dtype=torch.int32, device=DEVICE)
    n_blocks, n_tiles = triton.cdiv(n_queries, TILE_M), triton.cdiv(n_keys, TILE_N)
    first = torch.empty(batch, n_blocks, dtype=torch.int32, device=DEVICE)
    _first_masked[(n_blocks, batch)](first if seqlens is None else seqlens, first, n_queries, n_keys, n_blocks,
                                     HAS_SEQLENS=seqlens is not None, IS_CAUSAL=is_causal, BLOCK_M=TILE_M,
                                     BLOCK_N=TILE_N)
    visible = dense_mask(batch, n_queries, n_keys, is_causal, None if lengths is None else torch.tensor(lengths))[:, 0]
    pad_m, pad_n = -n_queries % TILE_M, -n_keys % TILE_N
    # Rows past n_queries and keys past n_keys count as hidden.
    visible = torch.nn.functional.pad(visible, (0, pad_n, 0, pad_m), value=False)
    whole = visible.view(batch, n_blocks, TILE_M, n_tiles, TILE_N).all(4).all(2)  # (B, blocks, tiles)
    for b in range(batch):
        for block in range(n_blocks):
            f = first[b, block].item()
            assert 0 <= f
            assert whole[b, block, :f].all(), (b, block, f)
            if f < n_tiles:
                assert not whole[b, block, f], (b, block, f)


@triton.jit
def _launch_order(out_ptr, IS_CAUSAL: tl.constexpr):
    program = tl.program_id(0)
    tl.store(out_ptr + program, heaviest_first(program, tl.num_programs(0), IS_CAUSAL))


@pytest.mark.parametrize("is_causal", [False, True])
@pytest.mark.parametrize("n_queries, n_keys", [(256, 256), (200, 200), (130, 300), (300, 130), (64, 64)])
def test_heaviest_first_covers_every_block_once_most_keys_first(backend, n_queries, n_keys, is_causal):
    n_blocks = triton.cdiv(n_queries, TILE_M)
    order = torch.full((n_blocks,), -1, dtype=torch.int32, device=DEVICE)
    _launch_order[(n_blocks,)](order, IS_CAUSAL=is_causal)
    order = order.cpu()
    assert sorted(order.tolist()) == list(range(n_blocks))
    visible = dense_mask(1, n_queries, n_keys, is_causal, None)[0, 0]
    visible = torch.nn.functional.pad(visible, (0, 0, 0, -n_queries % TILE_M), value=False)
    keys_seen = visible.view(n_blocks, TILE_M, n_keys).any(1).sum(1)  # per row block
    launched = keys_seen[order.long()]
    assert (launched[:-1] >= launched[1:]).all(), launched
    if is_causal and n_blocks > 1 and n_keys >= n_queries:
        assert launched[0] > launched[-1]
    if not is_causal:
        assert order.tolist() == list(range(n_blocks))
