"""kernels/key_summary.py and the max sweep that uses it (kernels/forward.py, kernel 1):
centres and radii bound every visible key; the sweep's threshold floor is a lower bound
on tau, and each tile's record is either upper bounds on its scores or -inf for a tile
with nothing above its rows' floors, so on local attention it skips the zero tiles."""

import pytest
import torch
import triton

from adasplash_compile import reference
from adasplash_compile.kernels import forward
from adasplash_compile.kernels.key_summary import key_tile_summary
from adasplash_compile.options import TILE_N
from tests.conftest import DEVICE
from tests.kernels.test_forward import make_qkv

interpret = pytest.mark.interpret
gpu = pytest.mark.gpu


def _check_summary(key, lengths):
    seqlens = None if lengths is None else torch.tensor(lengths, dtype=torch.int32, device=key.device)
    centre, radius = key_tile_summary(key, key.shape[2], key if seqlens is None else seqlens, seqlens is not None,
                                      triton.next_power_of_2(max(16, key.shape[3])), False)
    n_tiles = triton.cdiv(key.shape[2], TILE_N)
    assert centre.shape == (*key.shape[:2], n_tiles, key.shape[3]) and centre.dtype == key.dtype
    assert radius.shape == (*key.shape[:2], n_tiles) and radius.dtype == torch.float32
    for b in range(key.shape[0]):
        valid = key.shape[2] if lengths is None else min(lengths[b], key.shape[2])
        for t in range(n_tiles):
            keys = key[b, :, t * TILE_N : min((t + 1) * TILE_N, valid)].double()
            if keys.shape[1] == 0:
                assert (radius[b, :, t] == 0).all()
                continue
            distance = (keys - centre[b, :, t, None].double()).norm(dim=-1).amax(-1)
            torch.testing.assert_close(radius[b, :, t].double(), distance, rtol=1e-5, atol=1e-5)
            tolerance = 1e-5 if key.dtype == torch.float32 else 1e-2
            torch.testing.assert_close(centre[b, :, t].double(), keys.mean(1), rtol=tolerance, atol=tolerance)


@interpret
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_centre_is_the_mean_and_radius_the_farthest_visible_key(dtype):
    key = torch.randn(2, 3, 150, 24, device=DEVICE).to(dtype)
    _check_summary(key, None)
    _check_summary(key, [100, 30])  # the third tile of batch 1 holds no visible key


def _check_max_sweep(q, k, scale, alpha=1.5):
    """Checks the sweep's outputs against float64; returns (tiles skipped, all-zero tiles,
    groups of listed tiles whose rows hold nothing above their floors there)."""
    sweep = forward.max_sweep(q, k, alpha, True, scale)
    row_max, floor, bound, rel_bound = (sweep[name] for name in ("row_max", "floor", "bound", "rel_bound"))
    n = q.shape[2]
    z = (alpha - 1) * scale * q.double() @ k.double().transpose(-1, -2)
    z = z.masked_fill(~torch.ones(n, n, dtype=torch.bool, device=z.device).tril(), float("-inf"))
    exact_max = z.amax(-1)
    tau = reference.solve_tau(z, alpha).squeeze(-1)
    torch.testing.assert_close(row_max.double(), exact_max, rtol=1e-4, atol=1e-4)
    # The floor is a lower bound on the threshold.
    assert (floor.double() <= tau + 1e-4).all()
    t = triton.cdiv(n, 64)
    pad = t * 64 - n

    def per_tile(x):
        x = torch.nn.functional.pad(x, (0, pad, 0, pad), value=float("-inf"))
        return x.view(*x.shape[:2], t, 64, t, 64).amax((3, 5))

    tile_top = per_tile(z)
    # The bounds cover, per group of 16 rows, the rows whose max within the tile exceeds
    # their floor (by more than float32 rounding here): per (row, tile) maxima, then the
    # max over such rows of the group.
    padded = torch.nn.functional.pad(z, (0, pad, 0, pad), value=float("-inf"))
    row_tile_max = padded.view(*z.shape[:2], t * 64, t, 64).amax(-1)
    row_floor = torch.nn.functional.pad(floor.double(), (0, pad), value=float("inf"))[..., None]
    row_m = torch.nn.functional.pad(exact_max, (0, pad), value=0.0)[..., None]
    relevant = row_tile_max > row_floor + 1e-4
    neg = torch.tensor(float("-inf"), dtype=z.dtype, device=z.device)

    def per_group(x):  # (B, H, t * 64, t) -> (B, H, t, t, 4): [row block, tile, group]
        return x.view(*z.shape[:2], t, 4, 16, t).amax(4).transpose(-1, -2)

    group_relevant_top = per_group(torch.where(relevant, row_tile_max, neg))
    group_rel = per_group(torch.where(relevant, row_tile_max - row_m, neg))
    above_floor = per_group(row_tile_max - row_floor)  # > 0: some entry above its row's floor
    above_tau = per_tile(z - tau[..., None])
    visible = tile_top > float("-inf")
    assert bound.shape == (*tile_top.shape[:2], t + 1, t + 1, 4) and bound.shape == rel_bound.shape
    bound, rel_bound = bound[..., :t, :t, :].double(), rel_bound[..., :t, :t, :].double()
    recorded = visible[..., None] & (bound > float("-inf"))
    # Recorded groups carry upper bounds; the others' rows hold nothing above their floors.
    assert (bound[recorded] >= group_relevant_top[recorded] - 1e-4).all()
    assert (rel_bound[recorded] >= group_rel[recorded] - 1e-4).all()
    assert (above_floor[visible[..., None] & ~recorded] <= 1e-4).all()
    # A tile some group lists (bound above -inf, relative bound above -1) was computed
    # exactly, so each group's bounds cover its own rows alone: no higher than the max
    # over the group's rows at most float32 rounding below their floor.
    listed = (visible[..., None] & ((bound > float("-inf")) & (rel_bound > -1)).any(-1, keepdim=True)).expand_as(bound)
    near_floor = row_tile_max > row_floor - 1e-4
    group_top = per_group(torch.where(near_floor, row_tile_max, neg))
    assert (bound[listed] <= group_top[listed] + 1e-4).all()
    # The max sweep walks its list backwards, from the diagonal down, so a tile's relative
    # bound is taken against the row's max over that tile, every later one and the two
    # local tiles (the max sweep's first step): tiles left out hold nothing above that.
    later_max = row_tile_max.flip(-1).cummax(-1).values.flip(-1)
    block_of_row = torch.arange(t * 64, device=z.device)[:, None] // 64
    with_local = torch.minimum(torch.arange(t, device=z.device)[None, :], (block_of_row - 1).clamp(min=0))
    running_max = later_max.gather(-1, with_local.expand_as(later_max))
    group_rel_descending = per_group(torch.where(near_floor, row_tile_max - running_max, neg))
    assert (rel_bound[listed] <= group_rel_descending[listed] + 1e-4).all()
    skipped = visible & (rel_bound.amax(-1) <= -1)
    groups_apart = listed & torch.isneginf(group_top)
    return int(skipped.sum()), int((visible & (above_tau <= 0)).sum()), int(groups_apart.sum())


@interpret
def test_max_sweep_bounds_hold_and_skip_far_tiles():
    q, k, _ = make_qkv(1, 2, 2, 640, 640, 32, torch.float32, sparse=True)
    skipped, zero_tiles, groups_apart = _check_max_sweep(q, k, 32**-0.5)
    assert zero_tiles > 20 and skipped >= 0.9 * zero_tiles and groups_apart > 0
    q, k, _ = make_qkv(1, 2, 2, 300, 300, 32, torch.float32)  # i.i.d. keys: loose, still valid
    _check_max_sweep(q, k, 32**-0.5)


@interpret
def test_relative_bounds_take_the_max_of_the_tiles_nearer_the_diagonal():
    # z = c_j for every row (queries and keys along one axis, scale folded into q): the
    # local tiles 4 and 5 hold zeros, tile 3 one entry of 0.5, tiles 0-2 one of 0.3 each,
    # all else -5. Row block 5's floor sits near -0.1, so all of these count. Walked
    # from the diagonal down, tile 3 raises the running max to 0.5 before tiles 0-2,
    # whose relative bound is then 0.3 - 0.5; upwards it would be 0.3 - 0.
    head_dim, n = 32, 384
    key_scores = torch.full((n,), -5.0)
    key_scores[256:] = 0.0
    key_scores[200] = 0.5
    key_scores[[10, 70, 140]] = 0.3
    q = torch.zeros(1, 1, n, head_dim)
    q[..., 0] = 2 * head_dim**0.5
    k = torch.zeros(1, 1, n, head_dim)
    k[0, 0, :, 0] = key_scores
    q, k = q.to(DEVICE), k.to(DEVICE)
    _check_max_sweep(q, k, head_dim**-0.5)
    rel_bound = forward.max_sweep(q, k, 1.5, True, head_dim**-0.5)["rel_bound"][0, 0, 5].double()
    torch.testing.assert_close(rel_bound[:3], torch.full((3, 4), -0.2, dtype=torch.float64), rtol=0, atol=1e-5)
    torch.testing.assert_close(rel_bound[3], torch.zeros(4, dtype=torch.float64), rtol=0, atol=1e-5)


@gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_gpu_max_sweep_bounds_hold_and_skip_far_tiles(dtype):
    q, k, _ = make_qkv(1, 4, 4, 4096, 4096, 128, dtype, sparse=True)
    skipped, zero_tiles, groups_apart = _check_max_sweep(q, k, 128**-0.5)
    assert zero_tiles > 1000 and skipped >= 0.9 * zero_tiles and groups_apart > 0
    _check_summary(k[:, :, :1000], None)


@interpret
@pytest.mark.parametrize("alpha", [1.5, 2.0])
def test_histogram_floor_is_tight_on_dense_scores(alpha):
    # Gaussian scores put a row's largest entries in different tiles, so the histogram of
    # tile maxima (kernels/histogram_floor.py) lifts the floor close to tau. Measured here
    # (seed 0): median 22 entries above the floor for alpha = 1.5 (4 for 2), against 111
    # (15) above m - 1, the floor without it; at most 74 (14), the support at most 50 (11).
    torch.manual_seed(0)
    q = torch.randn(1, 2, 256, 32, device=DEVICE)
    k = torch.randn(1, 2, 1024, 32, device=DEVICE)
    scale = 32**-0.5
    floor = forward.max_sweep(q, k, alpha, False, scale)["floor"].double()
    z = (alpha - 1) * scale * q.double() @ k.double().transpose(-1, -2)
    tau = reference.solve_tau(z, alpha).squeeze(-1)
    assert (floor <= tau + 1e-4).all()
    above_floor = (z > floor[..., None]).sum(-1).double()
    above_m_minus_one = (z > z.amax(-1, keepdim=True) - 1).sum(-1).double()
    support = (z > tau[..., None]).sum(-1)
    assert above_floor.median() * 3 <= above_m_minus_one.median()
    assert above_floor.max() <= 2 * support.max()
