"""kernels/key_summary.py and the max sweep's use of it (kernels/forward.py, step 2):
centres and radii bound every visible key, and the tile bounds the max sweep records are
upper bounds that skip exactly the tiles whose scores all lie 1 or more below the row max."""

import pytest
import torch
import triton

from adasplash_compile.kernels import forward
from adasplash_compile.kernels.key_summary import key_tile_summary
from adasplash_compile.options import TILE_N, tile_grid
from tests.kernels.test_forward import make_qkv

interpret = pytest.mark.interpret
gpu = pytest.mark.gpu

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


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


def _max_sweep(q, k, scale, alpha=1.5):
    n, head_dim = q.shape[2], q.shape[3]
    tiles = (*q.shape[:2], *tile_grid(n, n))
    row_max = torch.empty(q.shape[:3], device=q.device)
    bound, rel_bound = torch.empty(tiles, device=q.device), torch.empty(tiles, device=q.device)
    tile_list = torch.empty((*tiles[:3], tiles[3] + 1), dtype=torch.int32, device=q.device)
    block_d = forward._block_d(head_dim)
    centre, radius = key_tile_summary(k, n, row_max, False, block_d, False)
    forward._adasplash_fwd_rowmax[(triton.cdiv(n, 64), q.shape[1], q.shape[0])](
        q, k, centre, radius, row_max, bound, rel_bound, tile_list, row_max,
        *q.stride(), *k.stride(), *centre.stride(), *radius.stride(), *row_max.stride(), *bound.stride(),
        *tile_list.stride(),
        n, n, 1, (alpha - 1) * scale, tiles[3],
        HEAD_DIM=head_dim, HAS_SEQLENS=False, IS_CAUSAL=True, BLOCK_M=64, BLOCK_N=64, BLOCK_D=block_d,
        CENTRE_CHUNK=64, SCAN=128, DOT_PRECISION="ieee" if q.dtype == torch.float32 else "tf32", USE_INT64=False,
    )
    return row_max, bound, rel_bound


def _check_max_sweep(q, k, scale, alpha=1.5):
    row_max, bound, rel_bound = _max_sweep(q, k, scale, alpha)
    n = q.shape[2]
    z = (alpha - 1) * scale * q.double() @ k.double().transpose(-1, -2)
    z = z.masked_fill(~torch.ones(n, n, dtype=torch.bool, device=z.device).tril(), float("-inf"))
    exact_max = z.amax(-1)
    torch.testing.assert_close(row_max.double(), exact_max, rtol=1e-4, atol=1e-4)
    t = triton.cdiv(n, 64)
    pad = t * 64 - n
    z = torch.nn.functional.pad(z, (0, pad, 0, pad), value=float("-inf"))
    shifted = torch.nn.functional.pad((z[..., :n, :] - exact_max[..., None]), (0, 0, 0, pad), value=float("-inf"))
    tile_top = z.view(*z.shape[:2], t, 64, t, 64).amax((3, 5))
    tile_rel = shifted.view(*z.shape[:2], t, 64, t, 64).amax((3, 5))
    visible = tile_top > float("-inf")
    assert (bound[..., :t, :t].double()[visible] >= tile_top[visible] - 1e-4).all()
    assert (rel_bound[..., :t, :t].double()[visible] >= tile_rel[visible] - 1e-4).all()
    assert torch.isneginf(bound[..., :t, :t][~visible]).all() and torch.isneginf(rel_bound[..., :t, t:]).all()
    skipped = visible & (rel_bound[..., :t, :t].double() <= -1)
    return int(skipped.sum()), int((visible & (tile_rel <= -1)).sum())


@interpret
def test_max_sweep_bounds_hold_and_skip_far_tiles():
    q, k, _ = make_qkv(1, 2, 2, 640, 640, 32, torch.float32, sparse=True)
    skipped, skippable = _check_max_sweep(q, k, 32**-0.5)
    assert skippable > 20 and skipped >= 0.9 * skippable
    q, k, _ = make_qkv(1, 2, 2, 300, 300, 32, torch.float32)  # i.i.d. keys: loose, still valid
    _check_max_sweep(q, k, 32**-0.5)


@gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_gpu_max_sweep_bounds_hold_and_skip_far_tiles(dtype):
    q, k, _ = make_qkv(1, 4, 4, 4096, 4096, 128, dtype, sparse=True)
    skipped, skippable = _check_max_sweep(q, k, 128**-0.5)
    assert skippable > 1000 and skipped >= 0.9 * skippable
    _check_summary(k[:, :, :1000], None)
