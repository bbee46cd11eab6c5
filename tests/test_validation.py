"""Bad input raises a clear error naming the argument, on every path."""

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from adasplash_compile import adasplash, entmax


def _qkv(q_shape=(1, 4, 16, 8), kv_shape=(1, 2, 16, 8), dtype=torch.float32):
    return tuple(torch.randn(shape).to(dtype) for shape in (q_shape, kv_shape, kv_shape))


def _case(q=None, k=None, v=None, **kwargs):
    dq, dk, dv = _qkv()
    return (dq if q is None else q, dk if k is None else k, dv if v is None else v), kwargs


BAD_ATTENTION_INPUTS = {
    "query ndim": (_case(q=torch.randn(4, 16, 8)), ValueError, "query must be 4-D"),
    "value ndim": (_case(v=torch.randn(1, 2, 16)), ValueError, "value must be 4-D"),
    "batch mismatch": (_case(k=torch.randn(2, 2, 16, 8), v=torch.randn(2, 2, 16, 8)), ValueError, "key batch size"),
    "seq mismatch": (_case(v=torch.randn(1, 2, 15, 8)), ValueError, "key and value must have the same shape"),
    "head_dim mismatch": (_case(k=torch.randn(1, 2, 16, 16), v=torch.randn(1, 2, 16, 16)), ValueError, "key head_dim"),
    "head_dim not multiple of 8": (_case(*_qkv((1, 4, 16, 12), (1, 2, 16, 12))), ValueError, "head_dim.*got head_dim=12"),
    "head_dim too large": (_case(*_qkv((1, 1, 4, 264), (1, 1, 4, 264))), ValueError, "head_dim.*got head_dim=264"),
    "heads not divisible": (_case(k=torch.randn(1, 3, 16, 8), v=torch.randn(1, 3, 16, 8)), ValueError, r"query heads \(4\).*key/value heads \(3\)"),
    "mixed dtypes": (_case(k=torch.randn(1, 2, 16, 8, dtype=torch.float16)), TypeError, "key must have the same dtype as query"),
    "unsupported dtype": (_case(*_qkv(dtype=torch.int32)), TypeError, "query must have dtype in"),
    "alpha <= 1": (_case(alpha=1.0), ValueError, r"alpha must lie in \(1, 2\]"),
    "alpha > 2": (_case(alpha=2.5), ValueError, r"alpha must lie in \(1, 2\]"),
    "alpha nan": (_case(alpha=float("nan")), ValueError, r"alpha must lie in \(1, 2\]"),
    "alpha not real": (_case(alpha="1.5"), TypeError, "alpha must be a real number"),
    "alpha bool": (_case(alpha=True), TypeError, "alpha must be a real number"),
    "is_causal not bool": (_case(is_causal=1), TypeError, "is_causal must be a bool"),
    "scale not real": (_case(scale="x"), TypeError, "scale must be a real number"),
    "seqlens shape": (_case(seqlens=torch.tensor([[3]])), ValueError, r"seqlens must have shape \(batch,\)"),
    "seqlens dtype": (_case(seqlens=torch.tensor([3.0])), TypeError, "seqlens must have dtype int32 or int64"),
    "seqlens negative": (_case(seqlens=torch.tensor([-1])), ValueError, "seqlens must be non-negative"),
}


@pytest.mark.parametrize("name", BAD_ATTENTION_INPUTS)
def test_eager_rejects(name):
    (args, kwargs), error, match = BAD_ATTENTION_INPUTS[name]
    with pytest.raises(error, match=match):
        adasplash(*args, **kwargs)


@pytest.mark.parametrize("name", [n for n in BAD_ATTENTION_INPUTS if n != "seqlens negative"])
def test_compiled_rejects_with_the_same_error(name):
    (args, kwargs), error, match = BAD_ATTENTION_INPUTS[name]
    torch._dynamo.reset()
    with pytest.raises(error, match=match):
        torch.compile(lambda *a: adasplash(*a, **kwargs), backend="inductor")(*args)


def test_fullgraph_compile_reports_the_error_message():
    # With fullgraph=True Dynamo reports a user exception as Unsupported; the
    # original ValueError and its message travel with it.
    q, k, v = _qkv()
    torch._dynamo.reset()
    with pytest.raises(torch._dynamo.exc.Unsupported, match=r"alpha must lie in \(1, 2\]"):
        torch.compile(lambda q, k, v: adasplash(q, k, v, alpha=3.0), fullgraph=True)(q, k, v)


def test_negative_seqlens_raise_at_run_time_under_compile():
    q, k, v = _qkv()
    compiled = torch.compile(lambda q, k, v, s: adasplash(q, k, v, seqlens=s), fullgraph=True)
    compiled(q, k, v, torch.tensor([3]))
    with pytest.raises(ValueError, match="seqlens must be non-negative"):
        compiled(q, k, v, torch.tensor([-2]))


@pytest.mark.parametrize("name", ["query ndim", "heads not divisible", "head_dim not multiple of 8", "alpha > 2", "seqlens shape"])
def test_export_rejects_with_the_same_error(name):
    (args, kwargs), error, match = BAD_ATTENTION_INPUTS[name]

    class Attention(torch.nn.Module):
        def forward(self, q, k, v):
            return adasplash(q, k, v, **kwargs)

    with pytest.raises(error, match=match):
        torch.export.export(Attention(), args)


@pytest.mark.parametrize("name", ["query ndim", "heads not divisible", "mixed dtypes", "head_dim too large", "alpha <= 1", "seqlens dtype"])
def test_fake_function_rejects_direct_op_calls(name):
    (args, kwargs), error, match = BAD_ATTENTION_INPUTS[name]
    alpha = kwargs.get("alpha", 1.5)
    with FakeTensorMode() as mode:
        fake_args = [mode.from_tensor(t) for t in args]
        seqlens = kwargs.get("seqlens")
        seqlens = None if seqlens is None else mode.from_tensor(seqlens)
        with pytest.raises(error, match=match):
            torch.ops.adasplash.attention_fwd(*fake_args, alpha, False, 0.5, seqlens)


def test_cpu_op_rejects_unsupported_head_dim_directly():
    q, k, v = _qkv((1, 1, 4, 20), (1, 1, 4, 20))
    with pytest.raises(ValueError, match="head_dim"):
        torch.ops.adasplash.attention_fwd(q, k, v, 1.5, False, 0.5, None)


def _forward_state():
    q, k, v = _qkv()
    return (torch.randn_like(q), q, k, v, *torch.ops.adasplash.attention_fwd(q, k, v, 1.5, True, 0.5, None)[1:])


BAD_FORWARD_STATE = {
    "grad_out": (0, lambda t: t[..., :4], r"grad_out must have shape \(1, 4, 16, 8\)"),
    "tau": (4, lambda t: t.double(), r"tau must have shape \(1, 4, 16\) and dtype torch.float32"),
    "tile_max": (5, lambda t: t[:, :, :1], r"tile_max must have shape \(1, 4, 2, 2\)"),
    "u_value_mean": (6, lambda t: t[:, :2], r"u_value_mean must have shape \(1, 4, 16, 8\)"),
    "u_value_mean dtype": (6, lambda t: t.half(),
                           "u_value_mean must have .* dtype torch.float32.*got .* torch.float16"),
}


@pytest.mark.parametrize("name", BAD_FORWARD_STATE)
@pytest.mark.parametrize("fake", [False, True])
def test_backward_op_rejects_bad_forward_state(name, fake):
    index, corrupt, match = BAD_FORWARD_STATE[name]
    args = list(_forward_state())
    args[index] = corrupt(args[index])
    if fake:
        mode = FakeTensorMode()
        args = [mode.from_tensor(t) for t in args]
    with pytest.raises(ValueError, match=match):
        if fake:
            with mode:
                torch.ops.adasplash.attention_bwd(*args, 1.5, True, 0.5, None)
        else:
            torch.ops.adasplash.attention_bwd(*args, 1.5, True, 0.5, None)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"alpha": 0.5}, ValueError, "alpha must lie"),
        ({"dim": 3}, ValueError, "dim=3 is out of range"),
        ({"dim": 1.0}, TypeError, "dim must be an int"),
    ],
)
def test_entmax_rejects(kwargs, error, match):
    with pytest.raises(error, match=match):
        entmax(torch.randn(2, 3), **kwargs)
    with pytest.raises(TypeError, match="x must have dtype"):
        entmax(torch.ones(2, 3, dtype=torch.int64))
