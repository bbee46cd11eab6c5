"""The eager path (adasplash_compile/eager.py): taken only where nothing observes the op,
and the same outputs, gradients and errors as the op where it is taken."""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import adasplash_compile
from adasplash_compile import eager


class _RecordingMode(TorchDispatchMode):
    """Records every op that reaches the dispatcher."""

    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(str(func))
        return func(*args, **(kwargs or {}))


class _PassThroughFunctionMode(torch.overrides.TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        return func(*args, **(kwargs or {}))


class _Subclass(torch.Tensor):
    pass


def _count_calls(monkeypatch, name):
    calls = []
    original = getattr(eager, name)
    monkeypatch.setattr(eager, name, lambda *a, **k: calls.append(name) or original(*a, **k))
    return calls


def _inputs(dtype=torch.float32, requires_grad=True):
    q = torch.randn(1, 2, 20, 8, dtype=dtype, requires_grad=requires_grad)
    k, v = (torch.randn(1, 1, 20, 8, dtype=dtype, requires_grad=requires_grad) for _ in range(2))
    return q, k, v


def _assert_eager_matches_the_op(q, k, v, alpha=1.5, scale=8**-0.5):
    """Causal adasplash() and attention_fwd give bitwise equal outputs and gradients."""
    grad = torch.randn_like(q)
    out = adasplash_compile.adasplash(q, k, v, alpha=alpha, is_causal=True, scale=scale)
    grads = torch.autograd.grad(out, (q, k, v), grad)
    op_out = torch.ops.adasplash.attention_fwd(q, k, v, alpha, True, scale, None)[0]
    op_grads = torch.autograd.grad(op_out, (q, k, v), grad)
    for actual, expected in zip((out, *grads), (op_out, *op_grads)):
        torch.testing.assert_close(actual, expected, rtol=0, atol=0)


def test_plain_tensors_and_the_default_device_context_allow_the_direct_call():
    q, k, v = _inputs()
    assert eager.plain_call_allowed(q, k, v, None)
    with torch.device("cpu"):
        assert eager.plain_call_allowed(q, k, v, None)


def test_modes_subclasses_fakes_and_transforms_send_calls_to_the_op():
    q, k, v = _inputs()
    with _RecordingMode():
        assert not eager.plain_call_allowed(q, k, v, None)
    with _PassThroughFunctionMode():
        assert not eager.plain_call_allowed(q, k, v, None)
    assert not eager.plain_call_allowed(q.detach().as_subclass(_Subclass), k, v, None)
    assert not eager.plain_call_allowed(q, k, v, torch.nn.Parameter(torch.ones(1)))
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        fake = torch.empty(1, 2, 20, 8)
    assert not eager.plain_call_allowed(fake, k, v, None)
    seen = []
    torch.func.vmap(lambda t: seen.append(eager.plain_call_allowed(t)) or t)(torch.randn(3, 2))
    assert seen == [False]
    compiled = torch.compile(lambda t: t + eager.plain_call_allowed(t), backend="eager", fullgraph=True)
    assert compiled(torch.zeros(2)).tolist() == [0.0, 0.0]


def test_eager_call_runs_the_implementation_directly_and_matches_the_op(monkeypatch):
    forward_calls = _count_calls(monkeypatch, "run_attention_forward")
    backward_calls = _count_calls(monkeypatch, "run_attention_backward")
    _assert_eager_matches_the_op(*_inputs(torch.float64), alpha=1.3, scale=0.7)
    # The op calls the implementation it was registered with, not eager's (patched) names.
    assert forward_calls == ["run_attention_forward"] and backward_calls == ["run_attention_backward"]


def test_a_dispatch_mode_sees_the_ops_forward_and_backward():
    q, k, v = _inputs()
    with _RecordingMode() as mode:
        out = adasplash_compile.adasplash(q, k, v, is_causal=True)
    assert "adasplash.attention_fwd.default" in mode.ops
    out = adasplash_compile.adasplash(q, k, v, is_causal=True)
    with _RecordingMode() as mode:
        out.sum().backward()
    assert "adasplash.attention_bwd.default" in mode.ops


def test_bad_input_raises_the_same_error_on_both_paths():
    q, k, v = _inputs()
    with pytest.raises(ValueError, match="key and value must have the same shape"):
        adasplash_compile.adasplash(q, k, v[:, :, :5])
    with _RecordingMode(), pytest.raises(ValueError, match="key and value must have the same shape"):
        adasplash_compile.adasplash(q, k, v[:, :, :5])
    with pytest.raises(ValueError, match="seqlens must be non-negative"):
        adasplash_compile.adasplash(q, k, v, seqlens=torch.tensor([-1]))


@pytest.mark.interpret
def test_interpreted_kernels_match_the_op_bitwise(monkeypatch):
    monkeypatch.setenv("ADASPLASH_COMPILE_BACKEND", "triton")
    _assert_eager_matches_the_op(*_inputs())


@pytest.mark.gpu
def test_cuda_eager_call_matches_the_op_bitwise():
    _assert_eager_matches_the_op(*(t.cuda().to(torch.bfloat16).detach().requires_grad_() for t in _inputs()))


def test_inference_call_runs_the_implementation_without_autograd(monkeypatch):
    forward_calls = _count_calls(monkeypatch, "run_attention_forward")
    q, k, v = _inputs()
    with torch.no_grad():
        out = adasplash_compile.adasplash(q, k, v, is_causal=True)
    assert forward_calls == ["run_attention_forward"] and out.grad_fn is None
    op_out = torch.ops.adasplash.attention_fwd(q, k, v, 1.5, True, 8**-0.5, None)[0]
    torch.testing.assert_close(out, op_out, rtol=0, atol=0)
