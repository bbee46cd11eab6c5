"""AdaSplash-2 attention in a few lines: run it, check it, see how sparse it is.

Runs on CUDA when present (Triton kernels), otherwise on the CPU reference.
"""

import torch

from adasplash_compile import adasplash, entmax

device = "cuda" if torch.cuda.is_available() else "cpu"
torch.manual_seed(0)
batch, heads, seq_len, head_dim = 2, 4, 256, 64
q, k, v = (torch.randn(batch, heads, seq_len, head_dim, device=device) for _ in range(3))

out = adasplash(q, k, v, alpha=1.5, is_causal=True)



def dense_entmax15(scores):
    """Exact 1.5-entmax by sorting (Peters et al. 2019, Alg. 2): an independent check."""
    z = scores / 2
    z_sorted, _ = z.sort(dim=-1, descending=True)
    k = torch.arange(1, z.shape[-1] + 1, device=z.device, dtype=z.dtype)
    mean = z_sorted.cumsum(-1) / k
    mean_sq = (z_sorted**2).cumsum(-1) / k
    tau_k = mean - torch.sqrt(((1 - k * (mean_sq - mean**2)) / k).clamp_min(0))
    support = (tau_k <= z_sorted).sum(-1, keepdim=True)
    tau = tau_k.gather(-1, support - 1)
    return (z - tau).clamp_min(0) ** 2


# Dense check: exact entmax over the masked score matrix, in float64, then @ v.
scores = (q.double() @ k.double().transpose(-1, -2)) * head_dim**-0.5
causal = torch.ones(seq_len, seq_len, dtype=torch.bool, device=device).tril()
probs = dense_entmax15(scores.masked_fill(~causal, float("-inf")))
error = (out.double() - probs @ v.double()).abs().max().item()
zero_fraction = (probs[:, :, causal] == 0).float().mean().item()
row_sums = entmax(scores[0, 0].float()).sum(-1)  # the standalone entmax: rows sum to one

print(f"device: {device}")
print(f"output: shape {tuple(out.shape)}, dtype {out.dtype}, mean |out| {out.abs().mean():.4f}")
print(f"max |out - dense reference|: {error:.2e}")
print(f"standalone entmax rows sum to {row_sums.min():.6f}..{row_sums.max():.6f}")
print(f"sparsity: {100 * zero_fraction:.1f}% of visible attention weights are exactly zero")
assert error < 1e-4, "output disagrees with the dense reference"
