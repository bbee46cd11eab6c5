"""kernels/forward.py list_active_tiles: the compacted tile lists every forward sweep loops over.

A small kernel runs it on given tile bounds, one pair per row group; the list must hold
exactly the tiles where some row group lies above both of its thresholds, in ascending
order (the sweeps rely on it: the tiles before first_masked come first and run without
a mask), and the count of those must match.
"""

import pytest
import torch
import triton
import triton.language as tl

from adasplash_compile.kernels.forward import BOUND_GROUPS, LIST_HEAD, list_active_tiles
from tests.conftest import BOTH_BACKENDS, DEVICE

pytestmark = BOTH_BACKENDS


@triton.jit
def _list(bound_ptr, rel_ptr, thresholds_ptr, list_ptr, counts_ptr, n_tiles, first_masked, SCAN: tl.constexpr):
    groups = tl.arange(0, BOUND_GROUPS)
    count, n_unmasked = list_active_tiles(bound_ptr, rel_ptr, BOUND_GROUPS, list_ptr, 1, n_tiles, first_masked,
                                          tl.load(thresholds_ptr + groups),
                                          tl.load(thresholds_ptr + BOUND_GROUPS + groups), SCAN)
    tl.store(counts_ptr, count)
    tl.store(counts_ptr + 1, n_unmasked)


@pytest.mark.parametrize("n_tiles, first_masked", [(1, 0), (7, 3), (40, 17), (40, 0), (40, 40), (33, 100)])
def test_lists_the_tiles_above_both_thresholds_in_order(backend, n_tiles, first_masked):
    groups = BOUND_GROUPS.value
    generator = torch.Generator().manual_seed(n_tiles)
    # One tile past n_tiles, above both thresholds, must stay out of the list.
    bound = torch.randn(n_tiles + 1, groups, generator=generator) - 0.5
    rel = torch.randn(n_tiles + 1, groups, generator=generator) - 0.5
    bound[n_tiles], rel[n_tiles] = 10.0, 10.0
    bound[::5] = float("-inf")
    threshold = torch.tensor([-0.2, 0.3, 0.0, 0.5])[:groups]
    rel_threshold = torch.tensor([0.1, -0.4, 0.2, 0.0])[:groups]
    # Above one threshold in one group and the other in another: not listed.
    if n_tiles > 1:
        bound[1], rel[1] = -1.0, -1.0
        bound[1, 0], rel[1, 1] = 1.0, 1.0
    # The tiles on either side of first_masked are listed, so an off-by-one shows.
    for tile in (first_masked - 1, first_masked):
        if 0 <= tile < n_tiles:
            bound[tile, groups - 1], rel[tile, groups - 1] = 1.0, 1.0
    thresholds = torch.cat([threshold, rel_threshold])
    head = LIST_HEAD.value
    tile_list = torch.full((n_tiles + head,), -7, dtype=torch.int32)
    counts = torch.zeros(2, dtype=torch.int32)
    bound, rel, thresholds, tile_list, counts = (t.to(DEVICE) for t in (bound, rel, thresholds, tile_list, counts))
    _list[(1,)](bound, rel, thresholds, tile_list, counts, n_tiles, first_masked, SCAN=16)

    keep = ((bound[:n_tiles] > threshold.to(DEVICE)) & (rel[:n_tiles] > rel_threshold.to(DEVICE))).any(1)
    expected = torch.nonzero(keep.cpu()).flatten().to(torch.int32)
    assert 0 < len(expected) < n_tiles or n_tiles == 1
    count, n_unmasked = counts.cpu().tolist()
    assert count == len(expected)
    assert n_unmasked == int((expected < first_masked).sum())
    assert torch.equal(tile_list.cpu()[head : head + count], expected)
    # The head slots carry the thresholds as float32 bits.
    assert torch.equal(tile_list.cpu()[:head].view(torch.float32), thresholds.cpu())
