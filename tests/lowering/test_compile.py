"""torch.compile contract on the CPU path: one graph, eager numbers, pinned graph text."""

import torch
from expecttest import TestCase
from torch._dynamo.backends.common import aot_autograd
from torch._dynamo.testing import CompileCounterWithBackend, normalize_gm

from adasplash_compile import adasplash, entmax


def _qkv(n=40, requires_grad=True, b=1, hq=4, hkv=2, d=16):
    q = torch.randn(b, hq, n, d, requires_grad=requires_grad)
    k = torch.randn(b, hkv, n, d, requires_grad=requires_grad)
    v = torch.randn(b, hkv, n, d, requires_grad=requires_grad)
    return q, k, v


def _attention_block(q, k, v, seqlens):
    # Pointwise work around the op, as in a model: scale q, gate the output.
    out = adasplash(q * 0.9, k, v, is_causal=True, alpha=1.5, seqlens=seqlens)
    return (out * torch.sigmoid(q)).sum(dim=-1)


def _grads(fn, inputs, seqlens):
    leaves = [t.detach().clone().requires_grad_() for t in inputs]
    out = fn(*leaves, seqlens)
    out.backward(torch.ones_like(out))
    return out, [t.grad for t in leaves]


class TestCompile(TestCase):
    def setUp(self):
        torch._dynamo.reset()
        torch.manual_seed(0)

    def test_fullgraph_inductor_matches_eager_in_one_frame(self):
        counter = CompileCounterWithBackend("inductor")
        compiled = torch.compile(_attention_block, backend=counter, fullgraph=True)
        inputs = _qkv()
        seqlens = torch.tensor([33])
        out, grads = _grads(compiled, inputs, seqlens)
        expected, expected_grads = _grads(_attention_block, inputs, seqlens)
        self.assertEqual(counter.frame_count, 1)
        torch.testing.assert_close(out, expected, rtol=0, atol=1e-5)
        for g, e in zip(grads, expected_grads):
            torch.testing.assert_close(g, e, rtol=0, atol=1e-5)

    def test_dynamic_lengths_compile_once(self):
        counter = CompileCounterWithBackend("inductor")
        compiled = torch.compile(_attention_block, backend=counter, fullgraph=True, dynamic=True)
        frames = []
        for n in (130, 257, 400, 1000):
            inputs = _qkv(n, hq=2, hkv=1, d=8)
            out, _ = _grads(compiled, inputs, None)
            expected, _ = _grads(_attention_block, inputs, None)
            torch.testing.assert_close(out, expected, rtol=0, atol=1e-5)
            frames.append(counter.frame_count)
        # Dynamo may restart its first analysis once to specialise the float alpha;
        # what matters is that no new length compiles again.
        self.assertEqual(len(set(frames)), 1)
        self.assertLessEqual(frames[0], 2)

    def test_entmax_compiles_fullgraph(self):
        counter = CompileCounterWithBackend("inductor")
        fn = lambda x: entmax(x * 2.0, alpha=1.25, dim=0)  # noqa: E731
        x = torch.randn(7, 5, requires_grad=True)
        out = torch.compile(fn, backend=counter, fullgraph=True)(x)
        out.backward(torch.arange(35.0).view(7, 5))
        x_eager = x.detach().clone().requires_grad_()
        expected = fn(x_eager)
        expected.backward(torch.arange(35.0).view(7, 5))
        self.assertEqual(counter.frame_count, 1)
        torch.testing.assert_close(out, expected)
        torch.testing.assert_close(x.grad, x_eager.grad)

    def test_aot_graphs_call_the_ops(self):
        graphs = []

        def capture(gm, example_inputs):
            graphs.append(normalize_gm(gm.print_readable(print_output=False)))
            return gm

        backend = aot_autograd(fw_compiler=capture, bw_compiler=capture)
        fn = lambda q, k, v: adasplash(q, k, v, is_causal=True)  # noqa: E731
        q, k, v = (torch.randn(1, 2, 10, 8, requires_grad=True) for _ in range(3))
        torch.compile(fn, backend=backend, fullgraph=True)(q, k, v).sum().backward()
        self.assertExpectedInline(
            graphs[0],
            """\
class GraphModule(torch.nn.Module):
    def forward(self, primals_1: "f32[1, 2, 10, 8]", primals_2: "f32[1, 2, 10, 8]", primals_3: "f32[1, 2, 10, 8]"):
        attention_fwd = torch.ops.adasplash.attention_fwd.default(primals_1, primals_2, primals_3, 1.5, True, 0.35355339059327373, None)
        getitem: "f32[1, 2, 10, 8]" = attention_fwd[0]
        getitem_1: "f32[1, 2, 10]" = attention_fwd[1]
        getitem_2: "f32[1, 2, 2, 2]" = attention_fwd[2]
        getitem_3: "f32[1, 2, 10, 8]" = attention_fwd[3];  attention_fwd = None
        return (getitem, primals_1, primals_2, primals_3, getitem_1, getitem_2, getitem_3)
""",
        )
        self.assertExpectedInline(
            graphs[1],
            """\
class GraphModule(torch.nn.Module):
    def forward(self, primals_1: "f32[1, 2, 10, 8]", primals_2: "f32[1, 2, 10, 8]", primals_3: "f32[1, 2, 10, 8]", getitem_1: "f32[1, 2, 10]", getitem_2: "f32[1, 2, 2, 2]", getitem_3: "f32[1, 2, 10, 8]", tangents_1: "f32[1, 2, 10, 8]"):
        attention_bwd = torch.ops.adasplash.attention_bwd.default(tangents_1, primals_1, primals_2, primals_3, getitem_1, getitem_2, getitem_3, 1.5, True, 0.35355339059327373, None);  tangents_1 = primals_1 = primals_2 = primals_3 = getitem_1 = getitem_2 = getitem_3 = None
        getitem_4: "f32[1, 2, 10, 8]" = attention_bwd[0]
        getitem_5: "f32[1, 2, 10, 8]" = attention_bwd[1]
        getitem_6: "f32[1, 2, 10, 8]" = attention_bwd[2];  attention_bwd = None
        return (getitem_4, getitem_5, getitem_6)
""",
        )


def test_max_autotune_flag_comes_from_inductor_config():
    from adasplash_compile.lowering.decomposition import max_autotune_enabled

    with torch._inductor.config.patch(max_autotune=False):
        assert not max_autotune_enabled()
    with torch._inductor.config.patch(max_autotune=True):
        assert max_autotune_enabled()


def test_cache_key_lists_every_kernel_each_op_launches(monkeypatch):
    import torch._library.triton as triton_library

    from adasplash_compile.lowering import decomposition

    registry = {}
    monkeypatch.setattr(triton_library, "triton_ops_to_kernels", registry)
    decomposition._register_cache_key_kernels()
    names = {op: {kernel.fn.__name__ for kernel in kernels} for op, kernels in registry.items()}
    assert {"_key_tile_summary", "_adasplash_fwd_rowmax", "_adasplash_fwd_tau_out", "_adasplash_fwd_candidates",
            "_adasplash_fwd_candidate_output"} <= names["adasplash::attention_fwd"]
    assert {"_adasplash_bwd_row_lists", "_adasplash_bwd_key_lists", "_adasplash_bwd_dq",
            "_adasplash_bwd_dkdv"} <= names["adasplash::attention_bwd"]
    assert "_entmax_fwd" in names["adasplash::entmax_fwd"]
