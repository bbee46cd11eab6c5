"""A compiled training step: two AdaSplash-2 attention layers, fullgraph, no graph breaks.

On CUDA the attention kernels are compiled into Inductor's output code; on the CPU
the op runs its reference implementation inside the compiled graph.
"""

import torch
from torch import nn

from adasplash_compile import adasplash


class AttentionLayer(nn.Module):
    def __init__(self, dim: int, heads: int, kv_heads: int, alpha: float = 1.5):
        super().__init__()
        self.heads, self.kv_heads, self.head_dim, self.alpha = heads, kv_heads, dim // heads, alpha
        self.query = nn.Linear(dim, dim)
        self.key_value = nn.Linear(dim, 2 * kv_heads * self.head_dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x):
        batch, seq_len, dim = x.shape
        q = self.query(x).view(batch, seq_len, self.heads, self.head_dim)
        k, v = self.key_value(x).view(batch, seq_len, 2, self.kv_heads, self.head_dim).unbind(2)
        # (B, N, H, D) views transposed to (B, H, N, D): the kernels take the strides as they are.
        attended = adasplash(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), alpha=self.alpha, is_causal=True)
        return x + self.out(attended.transpose(1, 2).reshape(batch, seq_len, dim))


class TwoLayerModel(nn.Module):
    def __init__(self, dim=128, heads=4, kv_heads=2):
        super().__init__()
        self.layers = nn.Sequential(AttentionLayer(dim, heads, kv_heads), AttentionLayer(dim, heads, kv_heads, alpha=2.0))
        self.norm = nn.LayerNorm(dim)

    def forward(self, x):
        return self.norm(self.layers(x))


def sgd_update(params, lr):
    """Plain SGD in one fused foreach op. ``torch.optim`` optimizers break the graph on
    purpose around ``step`` (their no_grad handling), so the update is written out."""
    with torch.no_grad():
        torch._foreach_add_(params, [p.grad for p in params], alpha=-lr)


def make_train_step(model, lr=1e-2):
    """A training step whose forward (with its AOT-compiled backward) and SGD update
    are each compiled with ``fullgraph=True``: no graph breaks anywhere.
    ``loss.backward()`` stays in Python, where it runs the compiled backward graph."""
    compiled_model = torch.compile(model, fullgraph=True)
    compiled_update = torch.compile(sgd_update, fullgraph=True)
    params = [p for p in model.parameters() if p.requires_grad]

    def train_step(x, target):
        for p in params:
            p.grad = None
        loss = torch.nn.functional.mse_loss(compiled_model(x), target)
        loss.backward()
        compiled_update(params, lr)
        return loss.detach()

    return train_step


def main():
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    model = TwoLayerModel().to(device)
    train_step = make_train_step(model)
    x = torch.randn(2, 200, 128, device=device)
    target = torch.randn_like(x)
    for step in range(3):
        print(f"step {step}: loss {train_step(x, target).item():.4f}")


if __name__ == "__main__":
    main()
