"""torch.library.opcheck over the ops' matrix of cases (CPU; CUDA cases run on the GPU)."""

import pytest
import torch

import adasplash_compile  # noqa: F401  (registers the ops)
from adasplash_compile import reference
from tests.conftest import TOLERANCES
from tests.oracle import relative_error

OPCHECK_TESTS = ("test_schema", "test_autograd_registration", "test_faketensor", "test_aot_dispatch_dynamic")

ATTENTION_CASES = {
    "plain": dict(q=(1, 2, 20, 8), kv=(1, 2, 20, 8), is_causal=False, seqlens=None, strided=False),
    "causal": dict(q=(1, 2, 20, 8), kv=(1, 2, 33, 8), is_causal=True, seqlens=None, strided=False),
    "gqa": dict(q=(2, 4, 17, 16), kv=(2, 1, 17, 16), is_causal=True, seqlens=None, strided=False),
    "seqlens": dict(q=(2, 2, 18, 8), kv=(2, 2, 18, 8), is_causal=False, seqlens=[5, 18], strided=False),
    "strided": dict(q=(1, 2, 19, 8), kv=(1, 2, 19, 8), is_causal=True, seqlens=None, strided=True),
}


def _attention_args(case, dtype, device, requires_grad):
    def make(shape):
        if case["strided"]:
            b, h, n, d = shape
            t = torch.randn(b, n, h, d, dtype=dtype, device=device).transpose(1, 2)
        else:
            t = torch.randn(shape, dtype=dtype, device=device)
        return t.requires_grad_(requires_grad)

    seqlens = None if case["seqlens"] is None else torch.tensor(case["seqlens"], device=device)
    return make(case["q"]), make(case["kv"]), make(case["kv"]), seqlens


def _check_forward(case, dtype, device, requires_grad):
    q, k, v, seqlens = _attention_args(ATTENTION_CASES[case], dtype, device, requires_grad)
    torch.library.opcheck(
        torch.ops.adasplash.attention_fwd.default,
        (q, k, v, 1.5, ATTENTION_CASES[case]["is_causal"], 0.4, seqlens),
        test_utils=OPCHECK_TESTS,
    )


def _check_backward(case, dtype, device):
    q, k, v, seqlens = _attention_args(ATTENTION_CASES[case], dtype, device, False)
    causal = ATTENTION_CASES[case]["is_causal"]
    _, tau, tile_max, u_value_mean = torch.ops.adasplash.attention_fwd(q, k, v, 1.5, causal, 0.4, seqlens)
    grad_out = torch.randn_like(q)
    torch.library.opcheck(
        torch.ops.adasplash.attention_bwd.default,
        (grad_out, q, k, v, tau, tile_max, u_value_mean, 1.5, causal, 0.4, seqlens),
        test_utils=OPCHECK_TESTS,
    )


@pytest.mark.parametrize("requires_grad", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", ATTENTION_CASES)
def test_attention_fwd_opcheck(case, dtype, requires_grad):
    _check_forward(case, dtype, "cpu", requires_grad)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", ATTENTION_CASES)
def test_attention_bwd_opcheck(case, dtype):
    # The backward op has no derivative of its own (no double backward), so it is
    # checked with inputs that do not require grad.
    _check_backward(case, dtype, "cpu")


@pytest.mark.parametrize("requires_grad", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("dim", [0, -1])
def test_entmax_fwd_opcheck(dim, dtype, requires_grad):
    x = torch.randn(6, 11, dtype=dtype, requires_grad=requires_grad)
    torch.library.opcheck(torch.ops.adasplash.entmax_fwd.default, (x, 1.5, dim), test_utils=OPCHECK_TESTS)


def test_double_backward_is_refused_not_wrong():
    q, k, v = (torch.randn(1, 1, 6, 8, dtype=torch.float64, requires_grad=True) for _ in range(3))
    out = adasplash_compile.adasplash(q, k, v)
    (grad_q,) = torch.autograd.grad(out.sum(), q, create_graph=True)
    with pytest.raises(RuntimeError, match="attention_bwd"):
        grad_q.sum().backward()


def _zero_fills_during_backward(forward):
    """Sizes of the aten::zeros calls while autograd runs attention_fwd's backward, and the
    shapes of forward's (out, tau, tile_max, u_value_mean)."""
    from torch.profiler import ProfilerActivity, profile

    q = torch.randn(1, 2, 5, 8, requires_grad=True)
    k, v = (torch.randn(1, 2, 7, 8, requires_grad=True) for _ in range(2))
    outputs = forward(q, k, v)
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        torch.autograd.grad(outputs[0], (q, k, v), torch.randn_like(outputs[0]))
    sizes = [tuple(event.concrete_inputs[0]) for event in prof.events() if event.name == "aten::zeros"]
    return sizes, [tuple(t.shape) for t in outputs]


@pytest.mark.parametrize("path", ["plain", "op"])
def test_backward_gets_no_zero_gradients_for_the_forward_state(path):
    # Autograd would otherwise allocate and fill zeros for tau, tile_max and u_value_mean
    # on every backward (u_value_mean's: 256 MiB at B=1, H=16, N=32768, D=128).
    if path == "plain":
        def forward(q, k, v):
            return adasplash_compile.eager.attention(q, k, v, 1.5, False, 0.3, None)
    else:
        def forward(q, k, v):
            return torch.ops.adasplash.attention_fwd(q, k, v, 1.5, False, 0.3, None)
    sizes, shapes = _zero_fills_during_backward(forward)
    assert shapes[1:] == [(1, 2, 5), (1, 2, 2, 2), (1, 2, 5, 8)]
    assert not set(shapes[1:]) & set(sizes), f"zeros of sizes {sizes} for the forward state"


def test_forward_outputs_follow_the_contract():
    q, k, v = (torch.randn(1, 2, 70, 8) for _ in range(3))
    outputs = torch.ops.adasplash.attention_fwd(q, k, v, 1.5, True, 0.3, None)
    expected = reference.attention_forward(q, k, v, 1.5, True, 0.3, None)
    assert len(outputs) == len(expected) == 4
    for actual, want in zip(outputs, expected):
        torch.testing.assert_close(actual, want, rtol=0, atol=0)
    out, tau, tile_max, u_value_mean = outputs
    assert tau.dtype == tile_max.dtype == u_value_mean.dtype == torch.float32
    assert tau.shape == (1, 2, 70) and tile_max.shape == (1, 2, 3, 3) and u_value_mean.shape == (1, 2, 70, 8)


@pytest.mark.gpu
@pytest.mark.parametrize("requires_grad", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("case", ATTENTION_CASES)
def test_cuda_opcheck(case, dtype, requires_grad):
    _check_forward(case, dtype, "cuda", requires_grad)
    _check_backward(case, dtype, "cuda")


@pytest.mark.gpu
def test_cuda_entmax_opcheck():
    for requires_grad in (False, True):
        x = torch.randn(6, 300, device="cuda", requires_grad=requires_grad)
        torch.library.opcheck(torch.ops.adasplash.entmax_fwd.default, (x, 1.5, -1), test_utils=OPCHECK_TESTS)


@pytest.mark.interpret
def test_backend_switch_sends_cpu_tensors_through_the_kernels(monkeypatch):
    from adasplash_compile.kernels import backward, forward

    calls = []
    for module, name in ((forward, "attention_forward"), (backward, "attention_backward")):
        original = getattr(module, name)
        monkeypatch.setattr(module, name, lambda *a, _f=original, _n=name, **k: calls.append(_n) or _f(*a, **k))
    monkeypatch.setenv("ADASPLASH_COMPILE_BACKEND", "triton")
    q = torch.randn(1, 2, 70, 16, requires_grad=True)
    k, v = (torch.randn(1, 1, 70, 16, requires_grad=True) for _ in range(2))
    out = adasplash_compile.adasplash(q, k, v, is_causal=True)
    out.backward(torch.ones_like(out))
    assert calls == ["attention_forward", "attention_backward"]
    monkeypatch.delenv("ADASPLASH_COMPILE_BACKEND")
    expected_q, expected_k = q.grad.clone(), k.grad.clone()
    q.grad = k.grad = v.grad = None
    reference_out = adasplash_compile.adasplash(q, k, v, is_causal=True)
    reference_out.backward(torch.ones_like(reference_out))
    torch.testing.assert_close(out, reference_out, rtol=0, atol=1e-5)
    torch.testing.assert_close(expected_q, q.grad, rtol=0, atol=1e-4)
    torch.testing.assert_close(expected_k, k.grad, rtol=0, atol=1e-4)


@pytest.mark.interpret
def test_backend_switch_answers_bfloat16(monkeypatch):
    # Triton's interpreter gets bfloat16 tl.dot wrong (kernels/products.py); the kernels'
    # products widen their operands there, so bfloat16 CPU tensors come out right.
    monkeypatch.setenv("ADASPLASH_COMPILE_BACKEND", "triton")
    q = torch.randn(1, 2, 100, 32, dtype=torch.bfloat16, requires_grad=True)
    k, v = (torch.randn(1, 1, 100, 32, dtype=torch.bfloat16, requires_grad=True) for _ in range(2))
    out = adasplash_compile.adasplash(q, k, v, is_causal=True)
    grad_out = torch.randn_like(out)
    out.backward(grad_out)
    monkeypatch.delenv("ADASPLASH_COMPILE_BACKEND")
    exact = [t.detach().double().requires_grad_() for t in (q, k, v)]
    expected = adasplash_compile.adasplash(*exact, is_causal=True)
    expected.backward(grad_out.double())
    assert out.dtype == torch.bfloat16
    assert (out.double() - expected).abs().max().item() <= TOLERANCES[torch.bfloat16]["out"]
    for name, t, e in zip("qkv", (q, k, v), exact):
        assert relative_error(t.grad, e.grad) <= TOLERANCES[torch.bfloat16]["grad"], f"d{name}"
