"""Export AdaSplash-2 attention, package it with AOTInductor, load it in a fresh process.

    python examples/export_aoti.py [--device cuda] [--package PATH]

The exported program keeps one ``torch.ops.adasplash.attention_fwd`` node with a
dynamic sequence length; the package is then loaded by a second Python process,
run at two lengths, and compared with eager.
"""

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

import adasplash_compile  # noqa: F401  (registers the ops)
from adasplash_compile import adasplash


class Attention(torch.nn.Module):
    def forward(self, q, k, v):
        return adasplash(q, k, v, is_causal=True)


def make_inputs(seq_len, device):
    generator = torch.Generator(device="cpu").manual_seed(seq_len)
    shapes = ((1, 4, seq_len, 64), (1, 2, seq_len, 64), (1, 2, seq_len, 64))
    return tuple(torch.randn(s, generator=generator).to(device) for s in shapes)


def export_and_package(package_path: Path, device: str) -> torch.export.ExportedProgram:
    seq = torch.export.Dim("seq", min=2, max=8192)
    program = torch.export.export(
        Attention(), make_inputs(96, device), dynamic_shapes=({2: seq}, {2: seq}, {2: seq})
    )
    torch._inductor.aoti_compile_and_package(program, package_path=str(package_path))
    return program


LOAD_AND_CHECK = """
import sys, torch
import adasplash_compile
from export_aoti import Attention, make_inputs
package, device = sys.argv[1], sys.argv[2]
runner = torch._inductor.aoti_load_package(package)
for seq_len in (77, 300):
    inputs = make_inputs(seq_len, device)
    error = (runner(*inputs) - Attention()(*inputs)).abs().max().item()
    print(f"seq_len {seq_len}: max |packaged - eager| = {error:.2e}")
    assert error <= 1e-5, error
print("round trip ok")
"""


def load_in_fresh_process(package_path: Path, device: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", LOAD_AND_CHECK, str(package_path), device],
        cwd=Path(__file__).parent,
        capture_output=True,
        text=True,
        timeout=600,
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--package", type=Path, default=None)
    args = parser.parse_args()
    package = args.package or Path(tempfile.mkdtemp()) / "adasplash.pt2"
    program = export_and_package(package, args.device)
    ops = [n.target for n in program.graph.nodes if "adasplash" in str(n.target)]
    print(f"exported ops: {ops}")
    print(f"package: {package}")
    result = load_in_fresh_process(package, args.device)
    print(result.stdout, end="")
    if result.returncode != 0:
        print(result.stderr[-4000:], file=sys.stderr)
        sys.exit(result.returncode)


if __name__ == "__main__":
    main()
