"""Standalone alpha-entmax kernel (kernels/entmax.py) against entmax_bisect in float64.

``interpret`` tests run the kernel on CPU tensors under TRITON_INTERPRET=1 (fp32 and
fp16: the interpreter is wrong in bf16); ``gpu`` tests run it compiled for CUDA,
bf16 and long rows included. Checks: max |y - entmax_bisect| within the dtype's
tolerance, rows summing to one, the support (zeros) matching the reference, shape,
dtype and layout kept, and all -inf rows giving zeros.
"""

import pytest
import torch
from entmax import entmax_bisect, sparsemax

from adasplash_compile import reference
from adasplash_compile.kernels.entmax import default_entmax_config, entmax_forward, prune_entmax_configs
from tests.conftest import DEVICE, GPU_DTYPES, TOLERANCES
from tests.kernels.mutation import IN_BOTH_SUITES, kernel_writes

interpret = pytest.mark.interpret
gpu = pytest.mark.gpu
slow = pytest.mark.slow


def oracle(x, alpha, dim):
    """float64 entmax_bisect; rows of all -inf give zeros (bisect would give NaN)."""
    x64 = x.detach().cpu().double()
    empty = ~(x64 > float("-inf")).any(dim, keepdim=True)
    y = entmax_bisect(x64.masked_fill(empty, 0.0), alpha, dim=dim, n_iter=100)
    return y.masked_fill(empty, 0.0)


def check_entmax(x, alpha, dim, config=None, tol=None):
    y = entmax_forward(x, alpha, dim, config=config)
    assert y.dtype == x.dtype and y.shape == x.shape
    assert y.stride() == torch.empty_like(x).stride()
    assert not y.isnan().any()
    expected = oracle(x, alpha, dim)
    tol = TOLERANCES[x.dtype]["out"] if tol is None else tol
    err = (y.double().cpu() - expected).abs().max().item() if x.numel() else 0.0
    assert err <= tol, f"max |y - oracle| = {err:.3g} > {tol}"
    sums = y.double().cpu().sum(dim)
    has_entries = (x.cpu() > float("-inf")).any(dim)
    torch.testing.assert_close(sums[has_entries], torch.ones_like(sums[has_entries]), atol=4 * tol, rtol=0)
    assert (sums[~has_entries] == 0).all()
    if x.dtype == torch.float32:
        # The support is the reference's, up to entries within rounding of tau.
        mismatch = (y.cpu() > 0) != (expected > 1e-6)
        assert not (mismatch & (expected > 1e-6)).any()
    return y


# --------------------------------------------------------------------------- configs


def test_default_config_fits_tile_and_rows():
    config = default_entmax_config(1000, 37)
    assert config["BLOCK_L"] == 64 and config["BLOCK_R"] * config["BLOCK_L"] <= 4096
    assert default_entmax_config(3, 37)["BLOCK_R"] == 4  # no more rows than exist
    long_rows = default_entmax_config(10, 100_000)
    assert long_rows["BLOCK_L"] == 4096 and long_rows["BLOCK_R"] == 1
    assert prune_entmax_configs([config, dict(config, NBINS=3)]) == [config]


@IN_BOTH_SUITES
def test_mutation_analysis_reports_only_the_output(suite):
    writes = kernel_writes(
        "from adasplash_compile.kernels.entmax import entmax_forward\n"
        "entmax_forward(torch.randn(4, 3000), 1.5, -1, wrap=Capture)\n"
    )
    assert writes == {"_entmax_fwd": ["y_ptr"]}


# --------------------------------------------------------------------------- interpreter (CPU)


@interpret
@pytest.mark.parametrize("alpha", [1.05, 1.25, 1.5, 1.75, 2.0])
@pytest.mark.parametrize("row_length", [1, 2, 37, 1000])
def test_alphas_and_row_lengths(alpha, row_length):
    x = torch.randn(6, row_length) * 2
    check_entmax(x, alpha, -1)


@interpret
@pytest.mark.parametrize("shape, dim", [((3, 50, 4), 1), ((2, 3, 50), 0), ((4, 2, 3, 20), -2), ((30,), 0)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_dims_and_dtypes(shape, dim, dtype):
    x = (torch.randn(shape) * 2).to(dtype)
    check_entmax(x, 1.5, dim)


@interpret
@pytest.mark.parametrize("alpha", [1.25, 1.5, 2.0])
def test_chunked_long_rows(alpha):
    # BLOCK_L below the row length: every sweep streams the row in chunks.
    x = torch.randn(3, 700) * 3
    config = dict(default_entmax_config(3, 700), BLOCK_L=128, BLOCK_R=2)
    check_entmax(x, alpha, -1, config=config)


@interpret
@pytest.mark.parametrize("alpha", [1.5, 2.0, 1.25])
def test_infinite_entries(alpha):
    x = torch.randn(5, 40)
    x[0] = float("-inf")  # nothing finite: zeros
    x[1, :30] = float("-inf")  # a few finite entries
    x[2, 1:] = float("-inf")  # one finite entry: weight 1
    y = check_entmax(x, alpha, -1)
    assert (y[0] == 0).all()
    assert y[2, 0] == 1 and (y[2, 1:] == 0).all()


@interpret
def test_strided_and_non_mergeable_layouts():
    base = torch.randn(4, 6, 5, 30)
    check_entmax(base.transpose(0, 2), 1.5, -1)  # leading dims do not merge: copy path
    check_entmax(base[:, ::2], 1.5, 1)  # sliced: strides passed straight through
    y = check_entmax(base.permute(3, 1, 2, 0), 1.5, 0)  # output keeps the input's dense layout
    assert y.stride() == base.permute(3, 1, 2, 0).stride()


@interpret
def test_degenerate_inputs():
    check_entmax(torch.zeros(3, 17), 1.5, -1)  # ties: uniform
    check_entmax(torch.randn(3, 17) * 1e3, 1.5, -1)  # one-hot
    check_entmax(torch.randn(3, 17) * 1e-3, 2.0, -1)  # nearly flat
    assert entmax_forward(torch.empty(0, 5), 1.5, -1).shape == (0, 5)
    scalar = entmax_forward(torch.tensor(3.0), 1.5, 0)
    assert scalar.shape == () and scalar.item() == 1.0


@interpret
def test_sparsemax_and_softmax_limits():
    x = torch.randn(8, 33)
    torch.testing.assert_close(entmax_forward(x, 2.0, -1), sparsemax(x, dim=-1), atol=1e-6, rtol=0)
    # alpha -> 1 approaches softmax (not equal: entmax is still sparse-ish at 1.01).
    near_softmax = entmax_forward(x, 1.01, -1)
    assert (near_softmax - torch.softmax(x, -1)).abs().max() < 0.05


@interpret
def test_matches_reference_module():
    x = torch.randn(4, 7, 9)
    torch.testing.assert_close(entmax_forward(x, 1.5, 1), reference.entmax_forward(x, 1.5, 1), atol=1e-6, rtol=0)


@interpret
def test_wrap_is_applied():
    x = torch.randn(3, 20)
    wrapped = []
    y = entmax_forward(x, 1.5, -1, wrap=lambda kernel: wrapped.append(kernel) or kernel)
    assert len(wrapped) == 1
    torch.testing.assert_close(y, entmax_forward(x, 1.5, -1, wrap=torch.library.wrap_triton), atol=0, rtol=0)


# --------------------------------------------------------------------------- GPU

@gpu
@pytest.mark.parametrize("dtype", GPU_DTYPES)
@pytest.mark.parametrize("alpha", [1.05, 1.25, 1.5, 1.75, 2.0])
@pytest.mark.parametrize("row_length", [1, 37, 1000, 4096, 4097, pytest.param(65536, marks=pytest.mark.slow)])
def test_gpu_alphas_lengths_dtypes(row_length, alpha, dtype):
    x = (torch.randn(64, row_length, device="cuda") * 2).to(dtype)
    check_entmax(x, alpha, -1)


@gpu
@pytest.mark.parametrize("dtype", GPU_DTYPES)
@pytest.mark.parametrize("shape, dim", [((8, 500, 16), 1), ((300, 8, 16), 0), ((2, 3, 4, 1000), -1)])
def test_gpu_dims(shape, dim, dtype):
    x = (torch.randn(shape, device="cuda") * 2).to(dtype)
    check_entmax(x, 1.5, dim)


@gpu
def test_gpu_infinite_and_strided():
    x = torch.randn(16, 3000, device="cuda")
    x[0] = float("-inf")
    x[1, 5:] = float("-inf")
    check_entmax(x, 1.5, -1)
    check_entmax(torch.randn(40, 6, 70, device="cuda").transpose(0, 2), 2.0, 1)


@gpu
@slow
def test_gpu_int64_offsets():
    # 2^31 + 2^20 bf16 elements (4 GiB): row offsets pass int32.
    x = torch.randn(2**11 + 1, 2**20, device="cuda", dtype=torch.bfloat16)
    y = entmax_forward(x, 1.5, -1)
    for row in (0, 2**11):
        expected = oracle(x[row : row + 1], 1.5, -1)
        assert (y[row : row + 1].double().cpu() - expected).abs().max().item() <= TOLERANCES[torch.bfloat16]["out"]


@gpu
def test_gpu_autotuned_launch_matches_default():
    x = torch.randn(300, 1000, device=DEVICE, dtype=torch.bfloat16)
    torch.testing.assert_close(entmax_forward(x, 1.5, -1, autotune=True), entmax_forward(x, 1.5, -1),
                               rtol=0, atol=1e-2)
    check_entmax(x, 1.5, -1)
