"""benchmarks/tile_model.py: its tile counts against the reference's tile_max and each other."""

import math
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import tile_model  # noqa: E402
import workloads as wl  # noqa: E402

from adasplash_compile import reference  # noqa: E402
from adasplash_compile.options import TILE_M  # noqa: E402

N = 1024


@pytest.mark.parametrize("workload", ["mid", "high"])
def test_nonzero_share_matches_the_reference_tile_max(workload):
    # Every eligible row block (the last 7/8 of them): the model's nonzero tiles must be
    # exactly the tiles where the reference's tile_max is finite.
    n_blocks = N // TILE_M
    blocks = range(n_blocks // 8, n_blocks)
    shares = tile_model.tile_shares(workload, N, blocks=len(blocks))
    query, key, value = (t.to(torch.float64) for t in wl.make_inputs(workload, N, q_heads=1, device="cpu"))
    tile_max = reference.attention_forward(query, key, value, tile_model.ALPHA, True,
                                           1.0 / math.sqrt(query.shape[-1]), None)[2]
    nonzero = sum(int(torch.isfinite(tile_max[0, 0, block, : block + 1]).sum()) for block in blocks)
    visible = sum(block + 1 for block in blocks)
    assert 0.0 < shares["nonzero"] < 1.0
    if workload == "mid":
        # Rows whose max lies outside their local tiles: the relative bound drops tiles
        # the bound alone keeps.
        assert shares["groups=4"] < shares["bound alone=4"]
    assert shares["nonzero"] == pytest.approx(nonzero / visible, abs=1e-12)


@pytest.mark.parametrize("workload", ["mid", "high", "dense"])
def test_bounds_list_every_tile_above_the_floor_and_groups_every_nonzero_tile(workload):
    shares = tile_model.tile_shares(workload, N, blocks=6, seed=1)
    for parts in tile_model.CENTRE_COUNTS:
        assert shares[f"centres={parts}"] >= shares["above"]
    assert shares["above"] >= shares["bound alone=4"] >= shares["groups=4"]
    for groups in tile_model.GROUP_COUNTS:
        assert shares["above"] >= shares[f"groups={groups}"] >= shares["nonzero"]
    # One group per row: a tile is listed iff one of its rows has an entry above its tau.
    assert shares["groups=64"] == shares["nonzero"]


def test_rejects_a_length_it_cannot_sample():
    with pytest.raises(ValueError, match="n: expected a multiple of 64"):
        tile_model.tile_shares("mid", 1000, blocks=2)
