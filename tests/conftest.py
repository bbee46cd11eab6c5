"""Markers, seeding and the tolerance table shared by every test.

Without CUDA, TRITON_INTERPRET=1 is set before anything imports Triton, so tests
marked ``interpret`` run the real kernels on CPU tensors through Triton's
interpreter. With CUDA the kernels are compiled for the GPU instead, so the
``interpret`` tests skip there and the ``gpu`` tests run.

Each session compiles into an Inductor cache of its own (TORCHINDUCTOR_CACHE_DIR, unless
set): AOTAutograd's cache key holds the graph Dynamo traced, which names our ops but not
their schema or autograd formula, so a cache left by an earlier version of this code
replays a backward that calls attention_bwd with the old arguments (seen when
attention_fwd gained its u_value_mean output). On CUDA the kernels' sources join the key
(lowering/decomposition.py); the CPU reference path has nothing that could.
"""

import os
import shutil
import tempfile

import pytest
import torch

# xdist workers inherit the controller's folder, which removes it at the end.
_INDUCTOR_CACHE = None
if "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
    _INDUCTOR_CACHE = tempfile.mkdtemp(prefix="adasplash-tests-inductor-")
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = _INDUCTOR_CACHE


def pytest_unconfigure(config):
    if _INDUCTOR_CACHE is not None:
        shutil.rmtree(_INDUCTOR_CACHE, ignore_errors=True)


HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"

# Where kernel tests put their tensors: the GPU when there is one, else the CPU
# (interpreted kernels).
DEVICE = "cuda" if HAS_CUDA else "cpu"

# A module-level ``pytestmark`` for kernel helpers tested both ways: interpreted on
# CPU, and compiled on CUDA where there is a GPU (each test takes a ``backend`` arg).
BOTH_BACKENDS = pytest.mark.parametrize(
    "backend", [pytest.param("interpret", marks=pytest.mark.interpret), pytest.param("gpu", marks=pytest.mark.gpu)]
)

# Max |out - ref| against entmax_bisect in float64, and relative gradient error
# ||g - ref|| / ||ref||; from the kernels issue's accuracy bar.
TOLERANCES = {
    torch.float32: {"out": 1e-4, "grad": 1e-3},
    torch.float16: {"out": 2e-2, "grad": 2e-2},
    torch.bfloat16: {"out": 4e-2, "grad": 4e-2},
}

# GPU test dtypes: every dtype where accuracy depends on it; elsewhere bf16 runs by
# default and the other dtypes are marked slow, so the default GPU run fits a short
# device lease.
ALL_GPU_DTYPES = [torch.float32, torch.float16, torch.bfloat16]
GPU_DTYPES = [
    pytest.param(torch.float32, marks=pytest.mark.slow),
    pytest.param(torch.float16, marks=pytest.mark.slow),
    torch.bfloat16,
]


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs CUDA")
    skip_interpret = pytest.mark.skip(reason="needs TRITON_INTERPRET=1 (CPU run without CUDA)")
    for item in items:
        if "gpu" in item.keywords and not HAS_CUDA:
            item.add_marker(skip_gpu)
        if "interpret" in item.keywords and not INTERPRETED:
            item.add_marker(skip_interpret)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
