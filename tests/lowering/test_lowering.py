"""CUDA: the ops compile into Inductor's output code as our Triton kernels."""

import ast
import logging
import re

import pytest
import torch
from torch._dynamo.testing import CompileCounterWithBackend
from torch._inductor.utils import run_and_get_code
from torch.testing import FileCheck

import adasplash_compile
from adasplash_compile import adasplash

pytestmark = pytest.mark.gpu


def _kernel_names(module_name):
    import importlib

    module = importlib.import_module(f"adasplash_compile.kernels.{module_name}")
    return sorted(
        name for name, value in vars(module).items()
        if type(value).__name__ in ("JITFunction", "Autotuner", "Heuristics") and name.startswith("_")
    )


def _qkv(n=300, dtype=torch.bfloat16, requires_grad=False):
    q = torch.randn(2, 4, n, 64, device="cuda", dtype=torch.float32, requires_grad=requires_grad)
    k = torch.randn(2, 2, n, 64, device="cuda", dtype=dtype, requires_grad=requires_grad)
    v = torch.randn(2, 2, n, 64, device="cuda", dtype=dtype, requires_grad=requires_grad)
    return q, k, v


def _block(q, k, v, gate):
    # A scale and cast of q before, a cast and gating multiply after: all pointwise.
    out = adasplash((q * 0.5).to(torch.bfloat16), k, v, is_causal=True)
    return out.float() * torch.sigmoid(gate)


def test_decompositions_are_registered():
    assert adasplash_compile.lowering.DECOMPOSITIONS_REGISTERED


def test_forward_output_code_has_our_kernels_and_no_op_call():
    torch._dynamo.reset()
    q, k, v = _qkv()
    gate = torch.randn(2, 4, 300, 64, device="cuda")
    compiled = torch.compile(_block, fullgraph=True)
    out, (code,) = run_and_get_code(compiled, q, k, v, gate)
    torch.testing.assert_close(out, _block(q, k, v, gate), rtol=0, atol=2e-2)
    for name in _kernel_names("forward"):
        FileCheck().check(f"def {name}(").run(code)
    FileCheck().check_not("torch.ops.adasplash").check_not("extern_kernels.adasplash").run(code)
    # The pointwise prologue and epilogue are Inductor-generated Triton kernels.
    assert code.count("triton_poi_fused") >= 2
    # No defensive copies: the kernels read the inputs in place, so the key and value
    # arguments are never cloned.
    FileCheck().check_not("aten.clone").check_not(".copy_(").run(code)


def test_backward_output_code_has_our_kernels():
    torch._dynamo.reset()
    q, k, v = _qkv(requires_grad=True)
    gate = torch.randn(2, 4, 300, 64, device="cuda")
    compiled = torch.compile(_block, fullgraph=True)

    def step():
        compiled(q, k, v, gate).sum().backward()

    _, codes = run_and_get_code(step)
    backward_code = codes[-1]
    for name in _kernel_names("backward"):
        FileCheck().check(f"def {name}(").run(backward_code)
    FileCheck().check_not("torch.ops.adasplash").run(backward_code)


def test_dynamic_lengths_recompile_at_most_once():
    torch._dynamo.reset()
    counter = CompileCounterWithBackend("inductor")
    fn = lambda q, k, v: adasplash(q, k, v, is_causal=True)  # noqa: E731
    compiled = torch.compile(fn, backend=counter, fullgraph=True)
    frames = []
    for n in (1000, 2048, 3000, 8192):
        q, k, v = (torch.randn(1, 2, n, 64, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
        out = compiled(q, k, v)
        out.sum().backward()
        torch.testing.assert_close(out, fn(q, k, v), rtol=0, atol=2e-2)
        frames.append(counter.frame_count)
    # The first new length marks the sequence dim dynamic (one recompile); no more after.
    assert frames[-1] == frames[1] and frames[1] - frames[0] <= 1


def test_reduce_overhead_captures_our_kernels_in_cuda_graphs(caplog):
    torch._dynamo.reset()
    q, k, v = _qkv(256, dtype=torch.float32, requires_grad=True)
    q = q.detach().requires_grad_()
    fn = lambda q, k, v: adasplash(q, k, v, is_causal=True, alpha=1.5)  # noqa: E731
    compiled = torch.compile(fn, mode="reduce-overhead", fullgraph=True)
    with caplog.at_level(logging.DEBUG, logger="torch._inductor"):
        for _ in range(3):
            out = compiled(q, k, v)
            grads = torch.autograd.grad(out.sum(), (q, k, v))
    assert "skipping cudagraphs" not in caplog.text.lower()
    from torch._dynamo.utils import counters

    assert counters["inductor"].get("cudagraph_skips", 0) == 0
    expected = fn(q, k, v)
    expected_grads = torch.autograd.grad(expected.sum(), (q, k, v))
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-4)
    for g, e in zip(grads, expected_grads):
        torch.testing.assert_close(g, e, rtol=1e-3, atol=1e-4)


def _autotune_configs(code, kernel_name):
    """The configs of the user_autotune decorator above our kernel's definition."""
    match = re.search(rf"def {kernel_name}(_\d+)?\(", code)
    assert match, f"{kernel_name} is not in the output code"
    start = code.rindex("configs=", 0, match.start()) + len("configs=")
    return ast.literal_eval(code[start : code.index("\n", start)].rstrip(","))


def test_max_autotune_compiles_and_benchmarks_several_configs():
    from adasplash_compile.kernels.backward import autotune_launch_options
    from adasplash_compile.kernels.forward import autotune_forward_configs

    torch._dynamo.reset()
    q, k, v = _qkv(n=500, dtype=torch.float32, requires_grad=True)

    def loss(q, k, v):
        return adasplash(q.bfloat16(), k.bfloat16(), v.bfloat16(), is_causal=True).float().square().sum()

    compiled = torch.compile(loss, mode="max-autotune", fullgraph=True)

    def step():
        value = compiled(q, k, v)
        return value, torch.autograd.grad(value, (q, k, v))

    (value, grads), codes = run_and_get_code(step)
    code = "\n".join(codes)
    tau_out = _autotune_configs(code, "_adasplash_fwd_tau_out")
    assert len(tau_out) == len(autotune_forward_configs(64, torch.bfloat16)) >= 4
    assert len({c["NBINS"] for c in tau_out}) >= 2 and len({c["num_warps"] for c in tau_out}) >= 2
    assert len(_autotune_configs(code, "_adasplash_fwd_rowmax")) >= 2
    for name in ("_adasplash_bwd_dq", "_adasplash_bwd_dkdv"):
        configs = _autotune_configs(code, name)
        assert len(configs) == len(autotune_launch_options(torch.bfloat16))
        assert len({(c["num_warps"], c["num_stages"]) for c in configs}) == len(configs)
    expected = loss(q, k, v)
    expected_grads = torch.autograd.grad(expected, (q, k, v))
    torch.testing.assert_close(value, expected, rtol=1e-3, atol=0)
    # Other warps and stages round the bf16 key/value gradients in another order.
    for g, e in zip(grads, expected_grads):
        assert ((g.double() - e.double()).norm() / e.double().norm()).item() <= 1e-2


def test_max_autotune_keeps_dynamic_shapes_and_cuda_graphs():
    torch._dynamo.reset()
    fn = lambda q, k, v: adasplash(q, k, v, is_causal=True)  # noqa: E731
    compiled = torch.compile(fn, mode="max-autotune", fullgraph=True, dynamic=True)
    for n in (700, 1500):
        q, k, v = (torch.randn(1, 2, n, 64, device="cuda", dtype=torch.bfloat16) for _ in range(3))
        for _ in range(3):  # warm-up runs, then CUDA-graph replays
            out = compiled(q, k, v)
        torch.testing.assert_close(out, fn(q, k, v), rtol=0, atol=2e-2)
