"""Benchmark inputs: query/key/value generators with a controlled amount of sparsity.

Shape legend: B batch, Hq query heads, Hkv key/value heads, N sequence length,
D head dim. Every tensor is (B, H, N, D), contiguous, and every head is an
independent draw.

Workloads (each row of the table below is one draw per head):

- ``dense``: q, k, v ~ N(0, 1). Scores are small and flat, so 1.5-entmax keeps
  many keys per row: the sparse kernels' least favourable case.
- ``mid``: keys follow a random walk along the sequence, ``k_t = sum_{s<=t} e_s``
  with ``e_s ~ N(0, 0.3^2 I_D)``, each row then centred over D and rescaled to
  norm sqrt(D). Nearby keys are similar, far ones are not. Queries are noisy
  copies, ``q = 0.5 (k + 1.5 eps)``, so each query prefers the keys near its own
  position and the attention becomes local with a moderate support.
- ``high``: the same walk with step 0.15 and ``q = 3.0 (k + 0.5 eps)``: sharper
  scores, a small support, most 64x64 tiles of P entirely zero.

v ~ N(0, 1) in every workload. Draws happen in float32 on the target device from a
seeded ``torch.Generator`` (the same seed gives the same tensors on a given device),
then are cast to the requested dtype. For GQA (Hq = g * Hkv) query head h is drawn
around key head ``h // g``, the head it attends to.
"""

import math
import zlib
from dataclasses import asdict, dataclass
from typing import Optional

import torch

__all__ = ["WORKLOADS", "WalkSpec", "SPECS", "make_inputs", "workload_seed", "describe"]


@dataclass(frozen=True)
class WalkSpec:
    """Random-walk keys with noisy-copy queries: ``q = q_gain * (k + q_noise * eps)``."""

    step: float
    q_gain: float
    q_noise: float


# None: the dense (i.i.d. Gaussian) workload.
SPECS: dict[str, Optional[WalkSpec]] = {
    "dense": None,
    "mid": WalkSpec(step=0.3, q_gain=0.5, q_noise=1.5),
    "high": WalkSpec(step=0.15, q_gain=3.0, q_noise=0.5),
}
WORKLOADS = tuple(SPECS)


def workload_seed(workload: str, n: int, q_heads: int, kv_heads: int, head_dim: int, base: int = 0) -> int:
    """A stable seed per workload and shape (crc32, not Python's salted hash)."""
    key = f"{workload}/{n}/{q_heads}/{kv_heads}/{head_dim}/{base}"
    return zlib.crc32(key.encode())


def _random_walk_keys(shape, step: float, generator: torch.Generator, device) -> torch.Tensor:
    """(B, H, N, D) float32: cumulative sum over N of N(0, step^2) steps, each row
    centred over D and scaled to norm sqrt(D)."""
    steps = torch.randn(shape, generator=generator, device=device, dtype=torch.float32)
    keys = steps.mul_(step).cumsum_(dim=2)
    keys = keys - keys.mean(dim=-1, keepdim=True)
    norms = keys.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)
    return keys * (math.sqrt(shape[-1]) / norms)


def make_inputs(
    workload: str,
    n: int,
    *,
    batch: int = 1,
    q_heads: int = 16,
    kv_heads: Optional[int] = None,
    head_dim: int = 128,
    dtype: torch.dtype = torch.bfloat16,
    device="cuda",
    seed: Optional[int] = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Draw (query, key, value) for one workload.

    Args:
        workload: one of ``WORKLOADS``.
        n: sequence length (queries and keys).
        batch, q_heads, head_dim: B, Hq, D.
        kv_heads: Hkv; ``None`` means Hkv = Hq. Hq must be a multiple of it.
        dtype: dtype of the returned tensors (drawn in float32 first).
        device: where to draw; ``"cpu"`` works for small shapes and tests.
        seed: generator seed; ``None`` derives one from the workload and shape.

    Returns:
        query ``(B, Hq, N, D)``, key and value ``(B, Hkv, N, D)``, contiguous.
    """
    if workload not in SPECS:
        raise ValueError(f"workload: expected one of {WORKLOADS}, got {workload!r}")
    kv_heads = q_heads if kv_heads is None else kv_heads
    if kv_heads <= 0 or q_heads % kv_heads:
        raise ValueError(
            f"kv_heads: must divide q_heads={q_heads}, got {kv_heads}; use e.g. kv_heads={q_heads // 4 or 1}"
        )
    if seed is None:
        seed = workload_seed(workload, n, q_heads, kv_heads, head_dim)
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    kv_shape = (batch, kv_heads, n, head_dim)
    q_shape = (batch, q_heads, n, head_dim)

    spec = SPECS[workload]
    if spec is None:
        query = torch.randn(q_shape, generator=generator, device=device, dtype=torch.float32)
        key = torch.randn(kv_shape, generator=generator, device=device, dtype=torch.float32)
    else:
        key = _random_walk_keys(kv_shape, spec.step, generator, device)
        group = q_heads // kv_heads
        centre = key if group == 1 else key.repeat_interleave(group, dim=1)
        noise = torch.randn(q_shape, generator=generator, device=device, dtype=torch.float32)
        query = spec.q_gain * (centre + spec.q_noise * noise)
        del centre, noise
    value = torch.randn(kv_shape, generator=generator, device=device, dtype=torch.float32)
    return tuple(t.to(dtype).contiguous() for t in (query, key, value))


def describe() -> dict:
    """The workload parameters, for the results file."""
    return {name: (None if spec is None else asdict(spec)) for name, spec in SPECS.items()}
