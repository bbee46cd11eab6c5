"""Backward kernels (kernels/backward.py) against the float64 oracle and the CPU reference.

``interpret`` tests run the real kernels on CPU tensors under TRITON_INTERPRET=1 at
small shapes; ``gpu`` tests run the same matrix compiled for CUDA at large shapes.
tau and tile_max always come from ``reference.attention_forward``, which follows the
same conventions as the Triton forward.
"""

import ast
import math
import os
import subprocess
import sys

import pytest
import torch

from adasplash_compile import reference
from adasplash_compile.kernels.backward import (
    BackwardConfig,
    active_tile_lists,
    attention_backward,
    backward_config,
    check_backward_config,
)
from adasplash_compile.options import TILE_M, TILE_N, tile_grid
from tests.conftest import DEVICE, TOLERANCES
from tests.oracle import entmax_attention, relative_error

# The interpreter evaluates log2(0) = -inf with numpy, which warns; on the GPU it is the
# intended -inf (u = exp2(-inf) = 0 off the support).
pytestmark = pytest.mark.filterwarnings("ignore:divide by zero encountered in log2:RuntimeWarning")

interpret = pytest.mark.interpret
gpu = pytest.mark.gpu
slow = pytest.mark.slow

GRAD_NAMES = ("dq", "dk", "dv")


# --------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------


def make_inputs(batch, q_heads, kv_heads, n_queries, n_keys, head_dim, dtype, device=DEVICE,
                layout="bhnd", banded=False):
    """query, key, value, grad_out; layout "bnhd" gives (B, N, H, D) storage seen as (B, H, N, D).

    banded=True builds queries and keys from shared positional features so that query i
    mostly attends to keys near i + N - M: most 64x64 tiles of P are then exactly zero.
    """

    def randn(heads, length):
        if layout == "bnhd":
            return torch.randn(batch, length, heads, head_dim, device=device).transpose(1, 2)
        return torch.randn(batch, heads, length, head_dim, device=device)

    q, k, v, do = randn(q_heads, n_queries), randn(kv_heads, n_keys), randn(kv_heads, n_keys), randn(q_heads, n_queries)
    if banded:
        # cos/sin features of the positions: q_i.k_j = 9 sum_f cos(f (i' - j)) peaks at i' = j.
        freqs = torch.linspace(0.05, 0.5, head_dim // 2, device=device)
        offset = n_keys - n_queries

        def features(positions):
            angles = positions[:, None].float() * freqs[None, :]
            return torch.cat([angles.cos(), angles.sin()], dim=-1) * 3.0

        q = q * 0.1 + features(torch.arange(n_queries, device=device) + offset)
        k = k * 0.1 + features(torch.arange(n_keys, device=device))
    return tuple(t.to(dtype) for t in (q, k, v, do))


def forward_state(q, k, v, alpha, is_causal, scale, seqlens):
    """(tau, tile_max, u_value_mean) the backward takes, from the reference forward."""
    return reference.attention_forward(q, k, v, alpha, is_causal, scale, seqlens)[1:]


def oracle_grads(q, k, v, do, alpha, is_causal, scale, seqlens):
    q64, k64, v64 = (t.detach().cpu().double().requires_grad_() for t in (q, k, v))
    out, leaves = entmax_attention(q64, k64, v64, alpha, is_causal, scale,
                                   None if seqlens is None else seqlens.cpu())
    out.backward(do.detach().cpu().double())
    return tuple(leaf.grad for leaf in leaves)


def assert_close(grads, expected, tol, what):
    for name, g, ref in zip(GRAD_NAMES, grads, expected):
        assert torch.isfinite(g).all(), f"{name}: non-finite values"
        # Where the exact gradient vanishes (one visible key: dS = u (dP - delta) = 0),
        # a relative error only measures rounding against zero, so the norm is floored
        # at 0.1 per element (inputs and grad_out are N(0, 1)).
        floor = 0.1 * ref.numel() ** 0.5
        err = relative_error(g, ref) * ref.double().norm().item() / max(ref.double().norm().item(), floor)
        assert err <= tol, f"{name} vs {what}: relative error {err:.3e} > {tol:.1e}"


def check_case(batch, q_heads, kv_heads, n_queries, n_keys, head_dim, alpha, is_causal, dtype,
               seqlens=None, layout="bhnd", use_oracle=True, banded=False, config=None, seqlens_dtype=torch.int32):
    q, k, v, do = make_inputs(batch, q_heads, kv_heads, n_queries, n_keys, head_dim, dtype, layout=layout,
                              banded=banded)
    if seqlens is not None:
        seqlens = torch.tensor(seqlens, dtype=seqlens_dtype, device=q.device)
    scale = head_dim ** -0.5
    tau, tile_max, u_mean = forward_state(q, k, v, alpha, is_causal, scale, seqlens)
    grads = attention_backward(do, q, k, v, tau, tile_max, u_mean, alpha, is_causal, scale, seqlens, config=config)
    for g, t in zip(grads, (q, k, v)):
        assert g.shape == t.shape and g.dtype == t.dtype and g.device == t.device
    tol = TOLERANCES[dtype]["grad"]
    expected = reference.attention_backward(do, q, k, v, tau, alpha, is_causal, scale, seqlens)
    assert_close(grads, expected, tol, "reference")
    if use_oracle:
        assert_close(grads, oracle_grads(q, k, v, do, alpha, is_causal, scale, seqlens), tol, "oracle")
    return (q, k, v, do, tau, tile_max, u_mean, scale, seqlens), grads


# --------------------------------------------------------------------------------------
# Interpreter matrix (CPU, small shapes)
# --------------------------------------------------------------------------------------

# (B, Hq, Hkv, M, N, D): odd lengths, M != N both ways (M > N causal leaves rows that see
# nothing), GQA 2:1 and 4:1, D not a power of two. Kept small: the float64 oracle runs
# 100 bisection steps over every score (about 50 us per score on 2 cores).
SHAPES = [
    pytest.param((1, 2, 2, 1, 1, 8), id="M1-N1-D8"),
    pytest.param((1, 2, 2, 37, 37, 40), id="M37-N37-D40"),
    pytest.param((1, 4, 2, 70, 130, 64), id="M70-N130-D64-gqa2"),
    pytest.param((1, 1, 1, 257, 257, 96), id="M257-N257-D96"),
    pytest.param((1, 2, 2, 37, 257, 64), id="M37-N257-D64"),
    pytest.param((1, 4, 1, 130, 37, 40), id="M130-N37-D40-gqa4"),
    pytest.param((1, 2, 1, 130, 1, 8), id="M130-N1-D8-gqa2"),
]
ALPHAS = [1.25, 1.5, 2.0]


@interpret
@pytest.mark.parametrize("is_causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("alpha", ALPHAS)
@pytest.mark.parametrize("shape", SHAPES)
def test_interpret_matches_oracle_fp32(shape, alpha, is_causal):
    check_case(*shape, alpha, is_causal, torch.float32)


@interpret
@pytest.mark.parametrize("is_causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("alpha", [1.25, 2.0])
@pytest.mark.parametrize("shape", [SHAPES[1], SHAPES[2], SHAPES[4], SHAPES[5]])
def test_interpret_matches_oracle_fp16(shape, alpha, is_causal):
    check_case(*shape, alpha, is_causal, torch.float16)


@interpret
@pytest.mark.parametrize("alpha, is_causal", [(1.5, False), (1.25, True), (2.0, False)])
def test_interpret_dq_near_constant_values(alpha, is_causal):
    """Values nearly equal across keys: dP is then nearly DELTA, and dS = u (dP - DELTA)
    is small next to u dP. The dQ kernel centres dP at DELTA before rounding dS to fp16:
    at alpha = 1.5 DELTA comes from the forward's u_value_mean before the sweep; other
    alphas learn it over the tiles seen so far and re-centre the sum as it moves. Rounding
    u dP instead and subtracting DELTA sum_j u K at the end loses a factor
    |dP| / |dP - DELTA| (about 100 here) of relative accuracy: dQ's error was 2.7e-2 to
    3.6e-2 that way, against 3e-4."""
    q, k, v, do = make_inputs(1, 2, 2, 257, 257, 64, torch.float32)
    v = 1.0 + 0.01 * v
    q, k, v, do = (t.to(torch.float16) for t in (q, k, v, do))
    scale = 64 ** -0.5
    tau, tile_max, u_mean = forward_state(q, k, v, alpha, is_causal, scale, None)
    grads = attention_backward(do, q, k, v, tau, tile_max, u_mean, alpha, is_causal, scale, None)
    expected = oracle_grads(q, k, v, do, alpha, is_causal, scale, None)
    # Plain relative errors: these gradients are far below the N(0, 1) scale that
    # assert_close floors its norm at.
    for name, g, ref in zip(GRAD_NAMES, grads, expected):
        err = relative_error(g, ref)
        assert err <= TOLERANCES[torch.float16]["grad"], f"{name}: relative error {err:.3e}"


@interpret
@pytest.mark.parametrize(
    "n_queries, n_keys, seqlens, seqlens_dtype",
    [
        pytest.param(100, 100, [0, 50, 400], torch.int32, id="M=N-zero-mid-beyond"),
        pytest.param(40, 100, [0, 70, 100], torch.int64, id="M<N-int64"),
        pytest.param(100, 40, [5, 64, 200], torch.int32, id="M>N"),
    ],
)
@pytest.mark.parametrize("is_causal", [False, True], ids=["full", "causal"])
def test_interpret_seqlens(n_queries, n_keys, seqlens, seqlens_dtype, is_causal):
    (q, *_), (dq, _, _) = check_case(3, 2, 1, n_queries, n_keys, 40, 1.5, is_causal, torch.float32,
                                     seqlens=seqlens, seqlens_dtype=seqlens_dtype)
    if n_queries == n_keys:
        # Padding queries see nothing: their gradient is exactly zero, not just small.
        for b, length in enumerate(seqlens):
            assert (dq[b, :, max(length, 0):] == 0).all()


@interpret
@pytest.mark.parametrize("dtype, is_causal", [(torch.float32, False), (torch.float16, True)], ids=["fp32", "fp16"])
def test_interpret_strided_inputs(dtype, is_causal):
    """(B, N, H, D) storage, transposed views: every stride is honoured, nothing copied."""
    (q, k, v, do, *_), grads = check_case(2, 4, 2, 100, 130, 64, 1.5, is_causal, dtype, layout="bnhd",
                                          use_oracle=False)
    assert not q.is_contiguous() and not k.is_contiguous()


@interpret
def test_interpret_mixed_strides():
    """Each operand with its own layout, including a sliced (non-dense) head dim."""
    q, k, v, do = make_inputs(1, 2, 1, 70, 90, 40, torch.float32)
    q = torch.randn(1, 70, 2, 40).transpose(1, 2)
    v = torch.randn(1, 1, 90, 80)[..., ::2]
    do = torch.randn(1, 2, 40, 70).transpose(2, 3)
    scale = 0.3
    tau, tile_max, u_mean = forward_state(q, k, v, 1.5, True, scale, None)
    grads = attention_backward(do, q, k, v, tau, tile_max, u_mean, 1.5, True, scale, None)
    expected = reference.attention_backward(do, q, k, v, tau, 1.5, True, scale, None)
    assert_close(grads, expected, TOLERANCES[torch.float32]["grad"], "reference")


@interpret
@pytest.mark.parametrize("alpha, is_causal", [(1.5, True), (1.25, False)])
def test_interpret_bfloat16(alpha, is_causal):
    """bf16 under the interpreter, whose own bf16 tl.dot is wrong (kernels/products.py)."""
    check_case(1, 2, 1, 70, 130, 64, alpha, is_causal, torch.bfloat16)


@interpret
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_interpret_deterministic(dtype):
    q, k, v, do = make_inputs(1, 4, 1, 100, 130, 64, dtype)
    tau, tile_max, u_mean = forward_state(q, k, v, 1.5, False, 0.125, None)
    first = attention_backward(do, q, k, v, tau, tile_max, u_mean, 1.5, False, 0.125, None)
    second = attention_backward(do, q, k, v, tau, tile_max, u_mean, 1.5, False, 0.125, None)
    for name, a, b in zip(GRAD_NAMES, first, second):
        assert torch.equal(a, b), f"{name} differs between two runs"


@interpret
@pytest.mark.parametrize("alpha, is_causal", [(1.25, False), (1.5, True), (2.0, False), (2.0, True)])
def test_interpret_block_skipping(alpha, is_causal):
    """Banded P: zero tiles are skipped, and skipping changes nothing.

    Forcing every tile active (tile_max = +inf) visits the skipped tiles too; their
    entries are all zero, so the gradients agree up to rounding.
    """
    n = 300
    (q, k, v, do, tau, tile_max, u_mean, scale, _), grads = check_case(
        1, 2, 2, n, n, 64, alpha, is_causal, torch.float32, banded=True, use_oracle=alpha == 1.5)
    lists = active_tile_lists(tau, tile_max, 2, n, is_causal, None)
    active_fraction = int(lists.kv_count.sum()) / (2 * math.ceil(n / TILE_M) * math.ceil(n / TILE_N))
    assert active_fraction < 0.6, "banded input should leave many tiles inactive"
    dense = attention_backward(do, q, k, v, tau, torch.full_like(tile_max, math.inf), u_mean, alpha, is_causal, scale,
                               None)
    for name, a, b in zip(GRAD_NAMES, grads, dense):
        assert relative_error(a, b) <= 1e-6, f"{name}: skipping changed the result"


@interpret
@pytest.mark.parametrize(
    "config, is_causal",
    [
        pytest.param(BackwardConfig(32, 16, 4, 1, 32, 16, 4, 1), True, id="resident32-step16"),
        pytest.param(BackwardConfig(128, 32, 4, 1, 128, 32, 4, 1), False, id="resident128-step32"),
        pytest.param(BackwardConfig(16, 64, 4, 1, 128, 64, 4, 1), True, id="resident16-and-128"),
        pytest.param(BackwardConfig(128, 64, 4, 1, 16, 32, 4, 1), True, id="resident128-and-16"),
    ],
)
def test_interpret_configs(config, is_causal):
    """Resident blocks of a fraction of a tile and of two tiles, streamed steps below a tile."""
    check_case(1, 4, 2, 200, 150, 40, 1.5, is_causal, torch.float32, use_oracle=False, banded=True,
               config=config)


@interpret
@pytest.mark.parametrize(
    "is_causal, seqlens, tiles_per_list",
    [(False, None, 1), (True, None, 1), (True, [90, 0], 1), (False, [200, 40], 2), (True, None, 2)],
)
def test_interpret_tile_lists(is_causal, seqlens, tiles_per_list):
    """The lists hold exactly the tiles with tile_max > min tau of the row tile, in order.

    tiles_per_list = 2: one list per pair of row (key) tiles, as for 128-row (128-key)
    resident blocks; a tile then counts if either tile of the pair needs it.
    """
    batch, q_heads, kv_heads, n_queries, n_keys = 2, 4, 2, 150, 260
    q, k, v, _ = make_inputs(batch, q_heads, kv_heads, n_queries, n_keys, 32, torch.float32, banded=True)
    lengths = None if seqlens is None else torch.tensor(seqlens)
    tau, tile_max, _ = forward_state(q, k, v, 2.0, is_causal, 0.2, lengths)
    lists = active_tile_lists(tau, tile_max, kv_heads, n_keys, is_causal, lengths,
                              list_rows=TILE_M * tiles_per_list, list_keys=TILE_N * tiles_per_list)

    n_row_tiles, n_key_tiles = math.ceil(n_queries / TILE_M), math.ceil(n_keys / TILE_N)
    padded = torch.nn.functional.pad(tau, (0, n_row_tiles * TILE_M - n_queries), value=math.inf)
    tau_min = padded.view(batch, q_heads, n_row_tiles, TILE_M).amin(-1)
    assert torch.equal(lists.tau_min, tau_min)
    # tile_max carries one padding row and column of tiles (options.tile_grid); never read.
    active = tile_max[:, :, :n_row_tiles, :n_key_tiles] > tau_min[..., None]
    assert 0 < int(active.sum()) < active.numel()
    group = q_heads // kv_heads
    for b in range(batch):
        for h in range(q_heads):
            for r in range(math.ceil(n_row_tiles / tiles_per_list)):
                rows = slice(r * tiles_per_list, (r + 1) * tiles_per_list)
                expected = active[b, h, rows].any(0).nonzero().flatten().to(torch.int32)
                count = int(lists.kv_count[b, h, r])
                assert torch.equal(lists.kv_index[b, h, r, :count], expected)
        for kvh in range(kv_heads):
            for c in range(math.ceil(n_key_tiles / tiles_per_list)):
                keys = slice(c * tiles_per_list, (c + 1) * tiles_per_list)
                heads = active[b, kvh * group:(kvh + 1) * group, :, keys].any(-1)  # (group, Mt)
                expected = heads.reshape(-1).nonzero().flatten().to(torch.int32)
                count = int(lists.q_count[b, kvh, c])
                assert torch.equal(lists.q_index[b, kvh, c, :count], expected)


@interpret
def test_interpret_rows_without_keys_are_zero():
    """Causal with M > N: the first M - N rows see no key; their dQ is exactly zero."""
    (q, *_), (dq, _, _) = check_case(1, 2, 1, 150, 20, 40, 2.0, True, torch.float32)
    assert (dq[:, :, :130] == 0).all()


_TRACE_SCRIPT = """
import torch
from torch.fx.experimental.proxy_tensor import make_fx
from adasplash_compile.kernels.backward import attention_backward

def backward(do, q, k, v, tau, tile_max, u_mean, seqlens):
    return attention_backward(do, q, k, v, tau, tile_max, u_mean, 1.5, True, 0.2, seqlens,
                              wrap=torch.library.wrap_triton)

q, do = torch.randn(2, 4, 70, 40), torch.randn(2, 4, 70, 40)
k, v = torch.randn(2, 2, 90, 40), torch.randn(2, 2, 90, 40)
tau, tile_max, seqlens = torch.randn(2, 4, 70), torch.randn(2, 4, 3, 3), torch.tensor([50, 90])
u_mean = torch.randn(2, 4, 70, 40)
graph = make_fx(backward, tracing_mode="symbolic")(do, q, k, v, tau, tile_max, u_mean, seqlens)
launches = [n for n in graph.graph.nodes if "triton_kernel_wrapper" in str(n.target)]
others = {str(n.target) for n in graph.graph.nodes if n.op == "call_function"} - {str(n.target) for n in launches}
print(len(launches), sorted(others))
"""


def test_traces_with_wrap_triton():
    """Symbolic make_fx through wrap_triton: four launches, only empty/size ops besides.

    Runs in a subprocess without TRITON_INTERPRET: tracing never runs a kernel, and
    wrap_triton needs compiled (not interpreted) kernel objects. A .item(), a data_ptr()
    or a value-dependent branch in the launcher would fail here.
    """
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, "-c", _TRACE_SCRIPT], capture_output=True, text=True, env=env,
                            cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    assert result.returncode == 0, result.stderr[-3000:]
    count, others = result.stdout.strip().splitlines()[-1].split(" ", 1)
    assert count == "4"
    for target in ast.literal_eval(others):
        assert "empty" in target or "sym_" in target or target.startswith("<built-in function"), target


# --------------------------------------------------------------------------------------
# Configs
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("device_type", ["cuda", "cpu"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("head_dim", [8, 40, 64, 96, 128, 192, 256])
def test_default_configs_are_valid(head_dim, dtype, device_type):
    check_backward_config(backward_config(head_dim, dtype, device_type))


@pytest.mark.parametrize(
    "config, match",
    [
        (BackwardConfig(dq_block_m=256), "dq_block_m must be a power of two in \\[16, 128\\], got 256"),
        (BackwardConfig(dq_block_n=128), "dq_block_n must be a power of two in \\[16, 64\\], got 128"),
        (BackwardConfig(dkv_block_n=48), "dkv_block_n must be a power of two"),
        (BackwardConfig(dkv_block_m=8), "dkv_block_m must be a power of two in \\[16, 64\\], got 8"),
        (BackwardConfig(tma="yes"), "tma must be None, True or False, got 'yes'"),
    ],
)
def test_invalid_config_raises(config, match):
    with pytest.raises(ValueError, match=match):
        check_backward_config(config)


def test_tiles_match_options():
    # The list kernels and the skipping criterion assume the forward's tile granularity.
    assert (TILE_M, TILE_N) == (64, 64)


# --------------------------------------------------------------------------------------
# GPU matrix (CUDA). Every distinct (dtype, D, alpha kind, causal, seqlens) compiles new
# kernels (seconds each), so the cases below cover the matrix without its full product.
# --------------------------------------------------------------------------------------

BF16, FP16, FP32 = torch.bfloat16, torch.float16, torch.float32

# The float64 oracle runs on the CPU (about 50 us per score on 2 cores, 100 steps),
# so oracle cases stay below ~1M scores; the long cases compare with the reference.
GPU_CASES = [
    # (B, Hq, Hkv, M, N, D), alpha, is_causal, dtype
    ((1, 2, 2, 1, 1, 8), 1.5, False, BF16),
    ((1, 2, 2, 37, 37, 40), 1.25, True, BF16),
    ((1, 4, 2, 130, 130, 64), 2.0, False, BF16),
    ((1, 4, 1, 257, 257, 96), 1.5, True, BF16),
    ((2, 2, 2, 37, 1030, 64), 2.0, True, BF16),
    ((2, 4, 1, 1030, 37, 128), 1.25, True, BF16),
    ((1, 2, 2, 1, 1, 8), 2.0, True, FP16),
    ((1, 2, 1, 300, 700, 40), 1.5, False, FP16),
    ((1, 2, 1, 700, 300, 96), 2.0, True, FP16),
    ((1, 2, 2, 600, 500, 64), 1.25, False, FP16),
    ((1, 2, 2, 37, 37, 8), 1.25, False, FP32),
    ((1, 4, 2, 257, 130, 64), 1.5, True, FP32),
    ((1, 4, 1, 130, 700, 96), 2.0, False, FP32),
    ((1, 2, 2, 500, 600, 128), 1.5, True, FP32),
]


@gpu
@pytest.mark.parametrize("shape, alpha, is_causal, dtype", GPU_CASES,
                         ids=[f"{s[3]}x{s[4]}-D{s[5]}-h{s[1]}kv{s[2]}-a{a}-{'causal' if c else 'full'}-{str(d)[6:]}"
                              for s, a, c, d in GPU_CASES])
def test_gpu_matches_oracle(shape, alpha, is_causal, dtype):
    check_case(*shape, alpha, is_causal, dtype)


@gpu
@pytest.mark.parametrize("dtype", [BF16, FP32], ids=str)
@pytest.mark.parametrize("head_dim", [40, 64, 96, 128, 192, 256])
def test_gpu_head_dims(head_dim, dtype):
    check_case(1, 2, 1, 300, 400, head_dim, 1.5, True, dtype)


@gpu
@pytest.mark.parametrize(
    "shape, alpha, is_causal, dtype, banded",
    [
        pytest.param((1, 2, 1, 16384, 16384, 128), 2.0, True, BF16, True, id="16k-causal-banded-a2"),
        pytest.param((1, 2, 1, 16384, 16384, 128), 1.5, False, BF16, True, id="16k-full-banded-a1.5"),
        pytest.param((1, 2, 2, 4096, 4096, 64), 1.25, False, FP16, False, id="4k-full-dense-a1.25"),
        pytest.param((1, 2, 2, 2000, 8195, 256), 1.5, True, BF16, False, id="2k-8k-causal-D256"),
    ],
)
def test_gpu_long(shape, alpha, is_causal, dtype, banded):
    check_case(*shape, alpha, is_causal, dtype, use_oracle=False, banded=banded)


@gpu
@pytest.mark.parametrize(
    "n_queries, n_keys, seqlens, is_causal",
    [
        pytest.param(1000, 1000, [0, 300, 5000], True, id="M=N-causal"),
        pytest.param(700, 1000, [0, 999, 1000], False, id="M<N-full"),
        pytest.param(1000, 700, [5, 640, 2000], True, id="M>N-causal"),
    ],
)
def test_gpu_seqlens(n_queries, n_keys, seqlens, is_causal):
    (q, *_), (dq, _, _) = check_case(3, 4, 2, n_queries, n_keys, 64, 1.5, is_causal, BF16, seqlens=seqlens,
                                     use_oracle=False)
    if n_queries == n_keys:
        for b, length in enumerate(seqlens):
            assert (dq[b, :, max(length, 0):] == 0).all()


@gpu
def test_gpu_strided():
    check_case(2, 8, 2, 2000, 2100, 128, 1.5, True, BF16, layout="bnhd", use_oracle=False)


@gpu
@pytest.mark.parametrize("head_dim, dtype", [(128, BF16), (64, FP32)], ids=["D128-bf16", "D64-fp32"])
def test_gpu_deterministic(head_dim, dtype):
    q, k, v, do = make_inputs(2, 8, 2, 4096, 4096, head_dim, dtype)
    tau, tile_max, u_mean = forward_state(q, k, v, 1.5, True, head_dim ** -0.5, None)
    runs = [attention_backward(do, q, k, v, tau, tile_max, u_mean, 1.5, True, head_dim ** -0.5, None) for _ in range(3)]
    for other in runs[1:]:
        for name, a, b in zip(GRAD_NAMES, runs[0], other):
            assert torch.equal(a, b), f"{name} differs between runs"


@gpu
@slow
def test_gpu_int64_offsets():
    """B * H * N * D > 2**31 elements: batch/head offsets must be int64.

    Heads are independent, so the first and last batch elements run alone (small
    offsets) must give bitwise the same gradients as inside the big call; the last is
    also checked against the reference. bf16, about 21 GB of operands and gradients.
    """
    batch, q_heads, kv_heads, n, head_dim, alpha, scale = 17, 2048, 1024, 512, 128, 1.5, 128 ** -0.5
    assert batch * q_heads * n * head_dim > 2**31
    q, k, v, do = make_inputs(batch, q_heads, kv_heads, n, n, head_dim, BF16)
    tau = torch.empty(batch, q_heads, n, dtype=torch.float32, device=DEVICE)
    tile_max = torch.empty(batch, q_heads, *tile_grid(n, n), dtype=torch.float32, device=DEVICE)
    u_mean = torch.empty(batch, q_heads, n, head_dim, dtype=torch.float32, device=DEVICE)
    for b in range(batch):  # the reference forward per batch element keeps its scratch small
        part = slice(b, b + 1)
        tau[part], tile_max[part], u_mean[part] = forward_state(q[part], k[part], v[part], alpha, True, scale, None)
    grads = attention_backward(do, q, k, v, tau, tile_max, u_mean, alpha, True, scale, None)
    for b in (0, batch - 1):
        part = slice(b, b + 1)
        alone = attention_backward(do[part], q[part], k[part], v[part], tau[part], tile_max[part], u_mean[part],
                                   alpha, True, scale, None)
        for name, g, a in zip(GRAD_NAMES, grads, alone):
            assert torch.equal(g[part], a), f"{name} of batch {b} depends on its offset"
    last = slice(batch - 1, batch)
    expected = reference.attention_backward(do[last], q[last], k[last], v[last], tau[last], alpha, True, scale, None)
    assert_close([g[last] for g in grads], expected, TOLERANCES[BF16]["grad"], "reference")


@gpu
def test_gpu_autotuned_launch_matches_default():
    q, k, v, do = make_inputs(1, 4, 2, 700, 700, 64, torch.bfloat16, banded=True)
    tau, tile_max, u_mean = forward_state(q, k, v, 1.5, True, 0.125, None)
    default = attention_backward(do, q, k, v, tau, tile_max, u_mean, 1.5, True, 0.125, None)
    tuned = attention_backward(do, q, k, v, tau, tile_max, u_mean, 1.5, True, 0.125, None, autotune=True)
    for a, b in zip(tuned, default):
        assert relative_error(a, b) <= 1e-2
