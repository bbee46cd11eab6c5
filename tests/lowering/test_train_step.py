"""A compiled training step with two attention layers: no graph breaks, eager numbers."""

import copy
import importlib.util
import pathlib

import pytest
import torch
from torch._dynamo.utils import counters

_spec = importlib.util.spec_from_file_location(
    "train_step_example", pathlib.Path(__file__).parents[2] / "examples" / "train_step.py"
)
example = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(example)


def _eager_step(model, x, target, lr):
    for p in model.parameters():
        p.grad = None
    loss = torch.nn.functional.mse_loss(model(x), target)
    loss.backward()
    example.sgd_update([p for p in model.parameters()], lr)
    return loss.detach()


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_compiled_training_step_matches_eager(device):
    torch._dynamo.reset()
    counters.clear()
    torch.manual_seed(0)
    model = example.TwoLayerModel().to(device)
    twin = copy.deepcopy(model)
    compiled_step = example.make_train_step(model, lr=0.05)
    x = torch.randn(2, 150, 128, device=device)
    target = torch.randn_like(x)
    for _ in range(2):
        loss = compiled_step(x, target)
        expected = _eager_step(twin, x, target, 0.05)
        torch.testing.assert_close(loss, expected, rtol=0, atol=1e-4)
    assert sum(counters["graph_break"].values()) == 0
    for p, q in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-4)
