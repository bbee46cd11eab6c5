"""torch.export on the CPU path: the op survives export, save and load in a fresh process."""

import subprocess
import sys
import textwrap

import torch

from adasplash_compile import adasplash


class Attention(torch.nn.Module):
    def forward(self, q, k, v, seqlens):
        return adasplash(q, k, v, is_causal=True, alpha=1.25, seqlens=seqlens)


def _inputs(n=48):
    return (torch.randn(2, 4, n, 16), torch.randn(2, 2, n, 16), torch.randn(2, 2, n, 16), torch.tensor([n, 30]))


def _count_op(program, name):
    return sum(1 for node in program.graph.nodes if node.op == "call_function" and name in str(node.target))


def test_export_keeps_the_forward_op_once():
    program = torch.export.export(Attention(), _inputs())
    assert _count_op(program, "adasplash.attention_fwd") == 1


def test_export_with_dynamic_sequence_length():
    seq = torch.export.Dim("seq", min=2, max=4096)
    shapes = {"q": {2: seq}, "k": {2: seq}, "v": {2: seq}, "seqlens": None}
    program = torch.export.export(Attention(), _inputs(), dynamic_shapes=shapes)
    for n in (33, 130):
        inputs = _inputs(n)
        torch.testing.assert_close(program.module()(*inputs), Attention()(*inputs), rtol=0, atol=0)


def test_saved_program_loads_in_a_fresh_process(tmp_path):
    inputs = _inputs()
    program = torch.export.export(Attention(), inputs)
    torch.export.save(program, tmp_path / "attention.pt2")
    torch.save((inputs, Attention()(*inputs)), tmp_path / "io.pt")
    script = textwrap.dedent(
        f"""
        import torch
        import adasplash_compile  # registers the op the program calls
        program = torch.export.load({str(tmp_path / "attention.pt2")!r})
        inputs, expected = torch.load({str(tmp_path / "io.pt")!r})
        assert torch.equal(program.module()(*inputs), expected)
        print("identical")
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "identical" in result.stdout
