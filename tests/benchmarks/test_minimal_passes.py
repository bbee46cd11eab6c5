"""benchmarks/minimal_passes.py: its passes compute what they claim to, against torch."""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import minimal_passes  # noqa: E402

from tests.conftest import BOTH_BACKENDS  # noqa: E402


def expected(query, key, value):
    """(row max of s, acc) of the passes' cost model: tiles in ascending order, each one's
    p taken against the running max after it."""
    n_keys, head_dim = query.shape[2], query.shape[3]
    s = (query[0].double() @ key[0].double().transpose(1, 2)) * head_dim**-0.5
    s = s.masked_fill(torch.ones(n_keys, n_keys, dtype=torch.bool).triu(1), float("-inf"))
    running = torch.full(s.shape[:2], float("-inf"), dtype=torch.float64)
    acc = torch.zeros(*s.shape[:2], head_dim, dtype=torch.float64)
    for start in range(0, n_keys, minimal_passes.TILE):
        tile = s[:, :, start:start + minimal_passes.TILE]
        running = torch.maximum(running, tile.amax(2))
        p = (tile - running[..., None] + 1.0).clamp(min=0.0).square()
        acc += p.to(value.dtype).double() @ value[0, :, start:start + minimal_passes.TILE].double()
    return running, acc


@BOTH_BACKENDS
@pytest.mark.parametrize("variant", [dict(), dict(block_m=128, num_warps=8), dict(descriptors=True, stages=3)],
                         ids=["64 rows", "128 rows", "descriptors"])
def test_passes_match_torch(backend, variant):
    device = "cuda" if backend == "gpu" else "cpu"
    generator = torch.Generator().manual_seed(0)
    # float16: Triton's interpreter multiplies bfloat16 tiles as their raw bits.
    query, key, value = (torch.randn((1, 2, 256, 64), generator=generator).to(device, torch.float16)
                         for _ in range(3))
    running, acc = expected(query.cpu(), key.cpu(), value.cpu())
    row_max, out = minimal_passes.minimal_pass(query, key, value, output=True, **variant)
    torch.testing.assert_close(row_max.cpu().double(), running, atol=1e-4, rtol=1e-4)
    # p is rounded to float16 for the P.V product on both sides; sums of up to 256 terms.
    torch.testing.assert_close(out.cpu().double(), acc, atol=2e-2, rtol=1e-2)
    row_max_only, none = minimal_passes.minimal_pass(query, key, value, output=False, **variant)
    assert none is None
    torch.testing.assert_close(row_max_only, row_max)


def test_rejects_a_length_off_the_block():
    query = torch.zeros((1, 1, 96, 64), dtype=torch.float16)
    with pytest.raises(ValueError, match="query"):
        minimal_passes.minimal_pass(query, query, query, output=False)
