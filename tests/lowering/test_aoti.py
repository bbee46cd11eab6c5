"""AOTInductor: package the exported attention and load it in a fresh process."""

import importlib.util
import pathlib
import subprocess
import sys
import textwrap
import zipfile

import pytest
import torch

_spec = importlib.util.spec_from_file_location(
    "export_aoti", pathlib.Path(__file__).parents[2] / "examples" / "export_aoti.py"
)
example = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(example)

PLAIN_CONTROL = textwrap.dedent(
    """
    import sys, torch
    class Plain(torch.nn.Module):
        def forward(self, x, w):
            return x @ w
    x, w = torch.randn(64, 64, device="cuda"), torch.randn(64, 64, device="cuda")
    path = torch._inductor.aoti_compile_and_package(torch.export.export(Plain(), (x, w)), package_path=sys.argv[1])
    runner = torch._inductor.aoti_load_package(path)
    torch.testing.assert_close(runner(x, w), x @ w)
    print("control ok")
    """
)


def _roundtrip(tmp_path, device):
    package = tmp_path / "attention.pt2"
    program = example.export_and_package(package, device)
    assert sum("adasplash.attention_fwd" in str(n.target) for n in program.graph.nodes) == 1
    assert zipfile.is_zipfile(package)
    return package


def test_cpu_package_round_trips_in_a_fresh_process(tmp_path):
    package = _roundtrip(tmp_path, "cpu")
    result = example.load_in_fresh_process(package, "cpu")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "round trip ok" in result.stdout


@pytest.mark.gpu
def test_cuda_package_compiles_and_round_trips(tmp_path):
    package = _roundtrip(tmp_path, "cuda")
    # Measured on the H100 image (torch 2.11+cu130): aoti_load_package can segfault
    # even for a plain matmul. Load a plain control package first; skip if it crashes.
    control = subprocess.run(
        [sys.executable, "-c", PLAIN_CONTROL, str(tmp_path / "plain.pt2")],
        capture_output=True, text=True, timeout=600,
    )
    if control.returncode != 0:
        pytest.skip(f"aoti_load_package fails for a plain model here too (exit {control.returncode})")
    result = example.load_in_fresh_process(package, "cuda")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "round trip ok" in result.stdout
