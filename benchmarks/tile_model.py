"""Which 64 x 64 tiles each forward pass computes: a CPU model for planning kernel work.

The forward's passes (kernels/forward.py) each run one Q.K^T product per tile they list,
so the share of causal tiles a pass lists is most of its cost. This model redraws a
benchmark workload (workloads.py, one head, float64 scores of the bf16 inputs, causal,
alpha = 1.5), takes ``--blocks`` row blocks of 64 queries at random from the last 7/8
of the sequence (all of them where there are fewer), and counts per block:

  visible     causal-visible key tiles
  centres=P   tiles the max sweep computes exactly with P centres per key tile: some row's
              Cauchy-Schwarz bound q.c + |q| r over one of the tile's P sub-tiles of 64/P
              keys exceeds the row's floor (kernels/key_summary.py; the kernels keep P = 1)
  above       tiles holding an entry above its row's floor: what an exact bound would list
  bound alone=4  tiles where, for some of the kernels' 4 row groups, the largest row max
              among the group's rows above their floor exceeds the group's smallest tau
  groups=G    the output pass's list with G row groups per block (kernels/forward.py
              BOUND_GROUPS; the kernels keep G = 4): bound alone=G, and also the group's
              largest (row max - running row max) over those rows exceeds its smallest
              tau - m. The running max starts at the max of the block's two local tiles
              and takes in the tiles from the diagonal down, as the max sweep walks them.
              The threshold sweeps list by the same rule at their bracket's lower end, so
              they list at least this many
  nonzero     tiles holding a nonzero of P: what the backward visits

The floor here is each row's exact threshold over its block's two local tiles (the
diagonal one and the one before), or max z - 1 if higher; the kernel's is a lower
bracket end on it, so it lists a few tiles more than modelled. Shares are summed over
the sampled blocks, so long rows weigh more, as they do in the kernels' time.

A share is not a time. Here (32 blocks, mid, N = 32768), by the bound alone, 8 and 16 row
groups listed 3% and 5% fewer tiles than 4 for the output pass; on the H100 they made the
max sweep 4-13% slower and the forward 0.4% slower and 1.5% faster there, and up to 7.5%
slower on the other cases (benchmarks/results/h100-2026-11-27-head.md). With the
relative bound (8 blocks, mid, N = 32768) 4 groups list 34.3% (40.3% by the bound
alone; 38.9% had the max sweep walked its tiles upwards) and 8 and 16 groups 33.4% and 33.1%.

    python benchmarks/tile_model.py --workloads mid high --n 8192 32768 --blocks 8
"""

import argparse
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import workloads as wl  # noqa: E402

from adasplash_compile.options import TILE_M, TILE_N  # noqa: E402
from adasplash_compile.reference import solve_tau  # noqa: E402

ALPHA = 1.5
CENTRE_COUNTS = (1, 2, 4)
GROUP_COUNTS = (4, 8, 16, 64)


def key_summaries(key: torch.Tensor, parts: int):
    """Per key tile and sub-tile of TILE_N // parts keys: the centre, rounded to bf16 as the
    kernels store it, and the radius around the rounded centre. key: (N, D), N % TILE_N == 0."""
    tiles = key.view(-1, parts, TILE_N // parts, key.shape[-1])
    centre = tiles.mean(2).to(torch.bfloat16).to(key.dtype)
    radius = (tiles - centre[:, :, None, :]).norm(dim=-1).amax(2)
    return centre, radius


def local_floor(z: torch.Tensor, block: int) -> torch.Tensor:
    """Each row's floor: the exact threshold over the block's diagonal tile and the one
    before it, or its max over them - 1 if higher. z: (TILE_M, keys), -inf where masked."""
    first = max(0, block - 1) * TILE_N
    local = z[:, first:]
    return torch.maximum(solve_tau(local, ALPHA)[:, 0], local.amax(1) - 1.0)


def head_inputs(workload: str, n: int):
    """(query, key, scale): one head of the workload's bf16 inputs, in float64, and 1/sqrt(D)."""
    query, key, _ = wl.make_inputs(workload, n, q_heads=1, device="cpu")
    query = query[0, 0].to(torch.float64)
    return query, key[0, 0].to(torch.float64), 1.0 / math.sqrt(query.shape[-1])


def block_scores(query, key, block, scale):
    """z = (alpha-1) scale q.k of row block ``block`` against its causal keys, -inf above the
    diagonal: (TILE_M, (block + 1) * TILE_N)."""
    n_keys = (block + 1) * TILE_N
    z = (ALPHA - 1.0) * scale * (query[block * TILE_M:(block + 1) * TILE_M] @ key[:n_keys].T)
    row_ids = torch.arange(TILE_M)[:, None] + block * TILE_M
    return torch.where(torch.arange(n_keys)[None, :] <= row_ids, z, float("-inf"))


def block_counts(query, key, summaries, block, scale):
    """Tile counts of one row block (module docstring), as a dict."""
    n_tiles = block + 1
    q = query[block * TILE_M:(block + 1) * TILE_M]
    z = block_scores(query, key, block, scale)
    tile_row_max = z.view(TILE_M, n_tiles, TILE_N).amax(2)
    floor = local_floor(z, block)
    tau = solve_tau(z, ALPHA)[:, 0]

    counts = {"visible": n_tiles}
    q_norm = q.norm(dim=1)
    for parts, (centre, radius) in summaries.items():
        bound = (ALPHA - 1.0) * scale * (torch.einsum("id,jpd->ijp", q, centre[:n_tiles])
                                          + q_norm[:, None, None] * radius[None, :n_tiles])
        counts[f"centres={parts}"] = int((bound.amax(2) > floor[:, None]).any(0).sum())
    above = tile_row_max > floor[:, None]
    counts["above"] = int(above.any(0).sum())
    local_max = tile_row_max[:, max(0, block - 1):].amax(1, keepdim=True)
    running_max = torch.maximum(tile_row_max.flip(1).cummax(1).values.flip(1), local_max)
    shifted_tau = tau - tile_row_max.amax(1)
    for groups in GROUP_COUNTS:
        def group_max(x):
            return torch.where(above, x, float("-inf")).view(groups, TILE_M // groups, n_tiles).amax(1)

        def group_min(x):
            return x.view(groups, TILE_M // groups).amin(1)[:, None]

        over_tau = group_max(tile_row_max) > group_min(tau)
        if groups == 4:
            counts["bound alone=4"] = int(over_tau.any(0).sum())
        over_shifted_tau = group_max(tile_row_max - running_max) > group_min(shifted_tau)
        counts[f"groups={groups}"] = int((over_tau & over_shifted_tau).any(0).sum())
    counts["nonzero"] = int((tile_row_max > tau[:, None]).any(0).sum())
    return counts


def sample_blocks(n: int, blocks: int, seed: int) -> list:
    """Up to ``blocks`` distinct row blocks, drawn from the last 7/8 of n queries."""
    if n % TILE_M or n // TILE_M < 8:
        raise ValueError(f"n: expected a multiple of {TILE_M} of at least {8 * TILE_M}, got {n}")
    n_blocks = n // TILE_M
    generator = torch.Generator().manual_seed(seed)
    candidates = torch.arange(n_blocks // 8, n_blocks)
    return candidates[torch.randperm(len(candidates), generator=generator)[:blocks]].tolist()


def tile_shares(workload: str, n: int, blocks: int, seed: int = 0) -> dict:
    """Summed counts over ``blocks`` row blocks, each divided by the visible tiles."""
    picked = sample_blocks(n, blocks, seed)
    query, key, scale = head_inputs(workload, n)
    summaries = {parts: key_summaries(key, parts) for parts in CENTRE_COUNTS}
    total = {}
    for block in picked:
        for name, count in block_counts(query, key, summaries, block, scale).items():
            total[name] = total.get(name, 0) + count
    return {name: count / total["visible"] for name, count in total.items() if name != "visible"}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workloads", nargs="+", choices=wl.WORKLOADS, default=["mid", "high"])
    parser.add_argument("--n", type=int, nargs="+", default=[8192, 32768])
    parser.add_argument("--blocks", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    header = None
    for workload in args.workloads:
        for n in args.n:
            shares = tile_shares(workload, n, args.blocks, args.seed)
            if header is None:
                header = list(shares)
                print("| workload | N | " + " | ".join(header) + " |")
                print("|---" * (len(header) + 2) + "|")
            print(f"| {workload} | {n} | " + " | ".join(f"{shares[name]:.1%}" for name in header) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
