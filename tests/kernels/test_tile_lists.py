"""kernels/forward.py list_active_tiles: the compacted tile lists every forward sweep loops over.

A small kernel runs it on given tile bounds; the list must hold exactly the tiles above
both thresholds, in ascending order (the sweeps rely on it: the tiles before
first_masked come first and run without a mask), and the count of those must match.
"""

import pytest
import torch
import triton
import triton.language as tl

from adasplash_compile.kernels.forward import list_active_tiles
from tests.conftest import BOTH_BACKENDS, DEVICE

pytestmark = BOTH_BACKENDS


@triton.jit
def _list(bound_ptr, rel_ptr, list_ptr, counts_ptr, n_tiles, first_masked, threshold, rel_threshold,
          SCAN: tl.constexpr):
    count, n_unmasked = list_active_tiles(bound_ptr, rel_ptr, 1, list_ptr, 1, n_tiles, first_masked,
                                          tl.cast(threshold, tl.float32), tl.cast(rel_threshold, tl.float32), SCAN)
    tl.store(counts_ptr, count)
    tl.store(counts_ptr + 1, n_unmasked)


@pytest.mark.parametrize("n_tiles, first_masked", [(1, 0), (7, 3), (40, 17), (40, 0), (40, 40), (33, 100)])
def test_lists_the_tiles_above_both_thresholds_in_order(backend, n_tiles, first_masked):
    generator = torch.Generator().manual_seed(n_tiles)
    # One tile past n_tiles, above both thresholds, must stay out of the list.
    bound = torch.randn(n_tiles + 1, generator=generator)
    rel = torch.randn(n_tiles + 1, generator=generator)
    bound[n_tiles], rel[n_tiles] = 10.0, 10.0
    bound[::5] = float("-inf")
    # The tiles on either side of first_masked are listed, so an off-by-one shows.
    for tile in (first_masked - 1, first_masked):
        if 0 <= tile < n_tiles:
            bound[tile], rel[tile] = 1.0, 1.0
    threshold, rel_threshold = -0.2, 0.1
    tile_list = torch.full((n_tiles + 3,), -7, dtype=torch.int32)
    counts = torch.zeros(2, dtype=torch.int32)
    bound, rel, tile_list, counts = (t.to(DEVICE) for t in (bound, rel, tile_list, counts))
    _list[(1,)](bound, rel, tile_list, counts, n_tiles, first_masked, threshold, rel_threshold, SCAN=16)

    keep = (bound[:n_tiles] > threshold) & (rel[:n_tiles] > rel_threshold)
    expected = torch.nonzero(keep.cpu()).flatten().to(torch.int32)
    count, n_unmasked = counts.cpu().tolist()
    assert count == len(expected)
    assert n_unmasked == int((expected < first_masked).sum())
    assert torch.equal(tile_list.cpu()[2 : 2 + count], expected)
    # Slots 0 and 1 carry the thresholds as float32 bits.
    assert tile_list.cpu()[:2].view(torch.float32).tolist() == pytest.approx([threshold, rel_threshold])
