"""Attention forward kernels (kernels/forward.py) against the float64 oracle and the reference.

``interpret`` tests run the real kernels on CPU tensors under TRITON_INTERPRET=1 at
small shapes, mostly fp32 and fp16 (bf16 products take kernels/products.py's interpreter
twin there); ``gpu`` tests run the same matrix compiled for CUDA at large shapes, bf16
included. Every case checks: out against entmax_bisect in float64 (tests/oracle.py)
within the dtype's tolerance, tau against reference.attention_forward, tile_max against
the nonzeros of P recomputed in float64 (tests/oracle.py), exact zeros for rows that see
no key, and no NaN.
"""

import warnings

import pytest
import torch

from adasplash_compile import reference
from adasplash_compile.kernels.forward import (
    _needs_int64,
    attention_forward,
    default_forward_config,
    float32_bits,
    forward_configs,
    prune_forward_configs,
)
from adasplash_compile.kernels import forward as forward_module
from adasplash_compile.kernels.backward import attention_backward
from adasplash_compile.kernels.fold_output import FOLD_MAX_STEP, fold_tolerance
from adasplash_compile.kernels.tau import tau_tolerance
from adasplash_compile.options import TILE_M, TILE_N, tile_grid
from tests.conftest import ALL_GPU_DTYPES, DEVICE, GPU_DTYPES, TOLERANCES
from tests.kernels.mutation import IN_BOTH_SUITES, kernel_writes
from tests.kernels.test_backward import GRAD_NAMES, oracle_grads
from tests.oracle import dense_mask, entmax_attention, relative_error, support_tile_max_bounds, u_value_mean

interpret = pytest.mark.interpret
gpu = pytest.mark.gpu
slow = pytest.mark.slow


# --------------------------------------------------------------------------- helpers


def make_qkv(batch, q_heads, kv_heads, n_queries, n_keys, head_dim, dtype, device=DEVICE, layout="bhnd",
             sparse=False):
    """query, key, value. layout "bnhd": (B, N, H, D) storage seen as (B, H, N, D);
    "strided_d": every other element of a 2*D-wide tensor (stride 2 along D).

    sparse=True builds q and k from shared positional features, so query i mostly
    attends to keys near i + N - M and most 64x64 tiles of P are exactly zero: the
    tile-skipping paths (threshold sweeps and output pass) then carry the result.
    """
    q = torch.randn(batch, q_heads, n_queries, head_dim, device=device)
    k = torch.randn(batch, kv_heads, n_keys, head_dim, device=device)
    v = torch.randn(batch, kv_heads, n_keys, head_dim, device=device)
    if sparse:
        freqs = torch.linspace(0.02, 0.3, head_dim // 2, device=device)

        def features(positions):
            angles = positions[:, None].float() * freqs[None, :]
            return torch.cat([angles.cos(), angles.sin()], dim=-1) * 2.5

        q = q * 0.1 + features(torch.arange(n_queries, device=device) + (n_keys - n_queries))
        k = k * 0.1 + features(torch.arange(n_keys, device=device))
    return tuple(with_layout(t, dtype, layout) for t in (q, k, v))


def with_layout(t, dtype, layout):
    """t (B, H, N, D) in dtype, stored as layout says."""
    if layout == "bnhd":
        return t.transpose(1, 2).contiguous().to(dtype).transpose(1, 2)
    if layout == "strided_d":
        wide = torch.zeros(*t.shape[:-1], 2 * t.shape[-1], dtype=dtype, device=t.device)
        wide[..., ::2] = t
        return wide[..., ::2]
    return t.to(dtype)


def check_forward(q, k, v, alpha, is_causal, scale, seqlens, config=None, out_tol=None):
    out, tau, tile_max, u_mean = attention_forward(q, k, v, alpha, is_causal, scale, seqlens, config=config)
    batch, q_heads, n_queries, head_dim = q.shape
    n_keys = k.shape[2]

    assert out.dtype == q.dtype and out.shape == q.shape
    assert tau.dtype == torch.float32 and tau.shape == (batch, q_heads, n_queries)
    assert tile_max.dtype == torch.float32 and tile_max.shape == (batch, q_heads, *tile_grid(n_queries, n_keys))
    assert u_mean.dtype == torch.float32 and u_mean.shape == (batch, q_heads, n_queries, head_dim)
    assert not out.isnan().any() and not u_mean.isnan().any()
    assert not tau.isnan().any() and not tile_max.isnan().any()

    cpu_seqlens = None if seqlens is None else seqlens.cpu()
    gold, _ = entmax_attention(q, k, v, alpha, is_causal, scale, cpu_seqlens)
    tol = TOLERANCES[q.dtype]["out"] if out_tol is None else out_tol
    err = (out.double().cpu() - gold).abs().max().item()
    assert err <= tol, f"max |out - oracle| = {err:.3g} > {tol}"
    if alpha == 1.5:
        # u is rounded to the values' dtype for its product with V as p is, so the same bar.
        gold_u = u_value_mean(q, k, v, alpha, is_causal, scale, cpu_seqlens)
        u_err = (u_mean.double().cpu() - gold_u).abs().max().item()
        assert u_err <= tol, f"max |u_value_mean - oracle| = {u_err:.3g} > {tol}"
    else:
        assert (u_mean == 0).all(), "u_value_mean holds zeros for alpha != 1.5"

    # Rows that see no key output exact zeros and tau = +inf.
    mask = dense_mask(batch, n_queries, n_keys, is_causal, cpu_seqlens)
    empty = ~mask.any(-1).expand(batch, q_heads, n_queries)
    assert (out.cpu()[empty] == 0).all() and (u_mean.cpu()[empty] == 0).all()
    assert torch.isposinf(tau.cpu()[empty]).all()

    ref_tau = reference.attention_forward(q, k, v, alpha, is_causal, scale, seqlens)[1]
    # The kernel stops refining once the bracket holding tau is tau_tolerance wide
    # (looser for 16-bit outputs), so its tau may sit that far from the exact one.
    torch.testing.assert_close(tau, ref_tau, atol=2e-5 + tau_tolerance(alpha, q.dtype), rtol=2e-5)
    # A folded output pass (kernels/fold_output.py) leaves out entries within
    # FOLD_MAX_STEP of tau.
    slack = max(1e-4, FOLD_MAX_STEP.value) if fold_tolerance(alpha, q.dtype) > 0.0 else 1e-4
    check_tile_max(tile_max, q, k, tau, alpha, is_causal, scale, seqlens, slack)
    return out, tau, tile_max, u_mean


def check_tile_max(tile_max, q, k, tau, alpha, is_causal, scale, seqlens, slack=1e-4):
    """tile_max is the largest z among each tile's nonzeros of P (by the kernel's own tau),
    -inf for a tile without any, and -inf in the padding row and column."""
    rows, cols = tile_grid(q.shape[2], k.shape[2])
    assert torch.isneginf(tile_max[:, :, rows - 1]).all() and torch.isneginf(tile_max[:, :, :, cols - 1]).all()
    lower, upper = support_tile_max_bounds(q, k, tau, alpha, is_causal, scale,
                                           None if seqlens is None else seqlens.cpu(), TILE_M, TILE_N, slack)
    actual = tile_max[:, :, : rows - 1, : cols - 1].double().cpu()
    assert (actual >= lower - slack).all(), "a tile holding a nonzero of P lost its tile_max"
    assert (actual <= upper + slack).all(), "tile_max is set on a tile without nonzeros, or too large"


def _seqlens(values, dtype=torch.int32):
    return None if values is None else torch.tensor(values, dtype=dtype, device=DEVICE)


# --------------------------------------------------------------------------- configs (no kernels run)


def test_default_config_is_first_candidate_and_tile_aligned():
    for head_dim in (8, 40, 64, 96, 128, 192, 256):
        for dtype in (torch.float32, torch.float16, torch.bfloat16):
            config = default_forward_config(head_dim, dtype)
            assert config == forward_configs(head_dim, dtype)[0]
            assert config["BLOCK_M"] == TILE_M and config["BLOCK_N"] == TILE_N


def test_prune_rejects_misaligned_blocks_and_bad_nbins():
    good = dict(BLOCK_M=64, BLOCK_N=64, NBINS=8, MAX_SWEEPS=4, EDGE_UNROLL=1, num_warps=4, num_stages=2)
    bad = [dict(good, BLOCK_M=128), dict(good, BLOCK_N=32), dict(good, NBINS=6), dict(good, NBINS=1),
           dict(good, MAX_SWEEPS=0), dict(good, EDGE_UNROLL=0)]
    assert prune_forward_configs([good, *bad], 64, torch.float16) == [good]


def test_prune_drops_stages_that_overflow_shared_memory():
    config = dict(BLOCK_M=64, BLOCK_N=64, NBINS=8, MAX_SWEEPS=4, EDGE_UNROLL=1, num_warps=8, num_stages=2)
    assert prune_forward_configs([config], 256, torch.float32) == []
    assert prune_forward_configs([config], 256, torch.bfloat16) == [config]
    assert default_forward_config(256, torch.float32)["num_stages"] == 1


def test_descriptor_stages_only_where_descriptors_can_run():
    # A third pipeline stage for the threshold/output kernel, only when it reads K and V
    # through descriptors (16-bit inputs) and the tiles leave room for it (D <= 128).
    for head_dim, dtype, deeper in ((64, torch.bfloat16, 3), (128, torch.float16, 3), (256, torch.bfloat16, 2),
                                    (128, torch.float32, 2)):
        config = default_forward_config(head_dim, dtype)
        assert (config["num_stages"], config["TMA_STAGES"]) == (2 if dtype != torch.float32 or head_dim < 256 else 1,
                                                                 deeper)
        assert forward_module._histogram_config(config, True)["num_stages"] == deeper
        assert forward_module._histogram_config(config, False)["num_stages"] == config["num_stages"]
        # The max sweep streams K tiles at the same depth.
        assert forward_module._streaming_launch_options(config, True)["num_stages"] == deeper
    # Configs without the key keep num_stages for both paths.
    plain = dict(BLOCK_M=64, BLOCK_N=64, NBINS=4, MAX_SWEEPS=5, EDGE_UNROLL=4, num_warps=4, num_stages=2)
    assert forward_module._histogram_config(plain, True)["num_stages"] == 2
    # Pruning counts the deeper pipeline's shared memory too: fp32 at D = 256 fits one
    # stage, not three.
    assert prune_forward_configs([dict(plain, num_stages=1, TMA_STAGES=3)], 256, torch.float32) == []


def test_every_candidate_config_passes_pruning():
    for head_dim in (8, 64, 256):
        for dtype in (torch.float32, torch.bfloat16):
            configs = forward_configs(head_dim, dtype)
            assert configs and prune_forward_configs(configs, head_dim, dtype) == configs


def test_int64_predicate_on_meta_tensors():
    assert not _needs_int64(torch.empty(2, 8, 4096, 128, device="meta"))
    # Batch and head offsets are widened anyway: a huge B * H alone needs no USE_INT64.
    assert not _needs_int64(torch.empty(4096, 64, 4096, 128, device="meta"))
    # One head of 2^24 keys x 128 dims spans 2^31 elements.
    assert _needs_int64(torch.empty(1, 1, 2**24, 128, device="meta"))
    # A transposed (B, N, H, D) view: rows are H * D = 512 apart, so 2^22 + 1 keys pass.
    assert _needs_int64(torch.empty(1, 2**22 + 1, 8, 64, device="meta").transpose(1, 2))
    assert not _needs_int64(torch.empty(1, 2**20, 8, 64, device="meta").transpose(1, 2))


def test_float32_bits_round_to_nearest_float32():
    # The max sweep takes the scale as these bits (kernels/forward.py: an fp64 scale, as
    # Inductor passes floats, costs it registers); they must be float32's rounding.
    for value in (0.0625, 0.5 / 3**0.5, 1.0 / 3.0, 0.5 * 128**-0.5, 1e-30, 3.4e38):
        expected = torch.tensor(value, dtype=torch.float32).view(torch.int32).item()
        assert float32_bits(value) == (expected, True), value
    symbolic = object()
    argument, as_bits = float32_bits(symbolic)
    assert argument is symbolic and as_bits is False


@IN_BOTH_SUITES
def test_mutation_analysis_reports_only_outputs(suite):
    writes = kernel_writes(
        "from adasplash_compile.kernels.forward import attention_forward, default_forward_config\n"
        "q = torch.randn(1, 2, 70, 64, dtype=torch.bfloat16)\n"
        "k = torch.randn(1, 1, 600, 64, dtype=torch.bfloat16)\n"
        # The candidate kernels as CUDA builds them (kernels/candidates.py, PTX appends).
        "config = dict(default_forward_config(64, torch.bfloat16), CANDIDATE_PTX=True)\n"
        "attention_forward(q, k, k.clone(), 1.5, True, 0.125, torch.tensor([100]), wrap=Capture, config=config)\n"
    )
    assert writes == {
        "_key_tile_summary": ["centre_ptr", "radius_ptr"],
        "_adasplash_fwd_candidates": ["candidate_ptr", "count_ptr", "handled_ptr", "tile_list_ptr"],
        "_adasplash_fwd_candidate_output": ["candidate_ptr", "out_ptr", "tau_ptr", "tile_max_ptr", "u_value_mean_ptr"],
        "_adasplash_fwd_rowmax": ["bound_ptr", "floor_ptr", "local_floor_ptr", "m_ptr", "rel_bound_ptr",
                                  "tile_list_ptr"],
        "_adasplash_fwd_tau_out": ["out_ptr", "tau_ptr", "tile_list_ptr", "tile_max_ptr", "u_value_mean_ptr"],
    }


# --------------------------------------------------------------------------- interpreter (CPU)

ALPHAS = [1.05, 1.25, 1.5, 1.75, 2.0]


@interpret
@pytest.mark.parametrize("is_causal", [False, True])
@pytest.mark.parametrize("alpha", ALPHAS)
def test_alpha_and_causal(alpha, is_causal):
    q, k, v = make_qkv(1, 1, 1, 70, 130, 40, torch.float32)
    check_forward(q, k, v, alpha, is_causal, 40**-0.5, None)


def random_walk_qkv(n, head_dim, dtype):
    """The benchmark's mid workload, small: keys a random walk along the sequence, queries
    near their own key. Rows keep hundreds of keys near tau, so some row blocks still
    hold unconverged rows after two threshold sweeps."""
    steps = torch.randn(1, 1, n, head_dim) * 0.3
    k = steps.cumsum(2)
    k = k - k.mean(-1, keepdim=True)
    k = k / k.norm(dim=-1, keepdim=True) * head_dim**0.5
    q = 0.5 * (k + 1.5 * torch.randn_like(k))
    return q.to(dtype), k.to(dtype), torch.randn_like(k).to(dtype)


def count_folds(monkeypatch):
    """A list that gets one entry per row block whose output pass folds (interpreter only)."""
    folds = []
    folded_output = forward_module.fold_output

    def counting_fold_output(*args):
        folds.append(1)
        return folded_output.fn(*args)

    # Under the interpreter the kernel resolves its helpers through the module.
    monkeypatch.setattr(forward_module, "fold_output", counting_fold_output)
    return folds


@interpret
def test_folded_output_pass_matches_the_sweeps(monkeypatch):
    q, k, v = random_walk_qkv(1024, 64, torch.float16)
    folds = count_folds(monkeypatch)
    out, tau, tile_max, u_mean = check_forward(q, k, v, 1.5, True, 64**-0.5, None)
    assert len(folds) >= 2, "no row block folded its last sweep into the output pass"
    folds_with_fold = len(folds)
    monkeypatch.setattr(forward_module, "fold_tolerance", lambda alpha, dtype: 0.0)
    swept_out, swept_tau, swept_tile_max, swept_u_mean = attention_forward(q, k, v, 1.5, True, 64**-0.5, None)
    assert len(folds) == folds_with_fold, "the sweeps-only forward still folded"
    # Same thresholds to well within the sweeps' tolerance, outputs within an fp16 step.
    torch.testing.assert_close(tau, swept_tau, atol=tau_tolerance(1.5, torch.float16), rtol=0)
    torch.testing.assert_close(out, swept_out, atol=2.0**-11, rtol=2.0**-10)
    assert torch.equal(torch.isfinite(tile_max), torch.isfinite(swept_tile_max))
    # The fold takes u at its estimate t near tau (adasplash_compile.options): within the
    # values' rounding of the sweeps' u at tau.
    torch.testing.assert_close(u_mean, swept_u_mean, atol=2.0**-9, rtol=2.0**-9)


@interpret
@pytest.mark.parametrize("key_offset, dq_bar", [(0.0, 2.5e-3), (4.0, 1e-2)])
def test_folded_forward_gives_the_backward_its_delta(monkeypatch, key_offset, dq_bar):
    """The folded pass takes u at its estimate t near tau, rounded to fp16 for its product,
    for u_value_mean, from which the backward takes DELTA. Where DELTA is off, sum_j dS_j
    is not 0 and dQ moves by that times the keys' mean, so the keys here also share an
    offset of 0 or 4 times their norm (P does not change). The dQ kernel that learned
    DELTA itself was 1.1e-3 and 4.5e-3 off the float64 oracle here, DELTA from the forward
    1.5e-3 and 6.5e-3, about fp16's rounding of dS; dK and dV (3e-4) do not move."""
    q, k, v = random_walk_qkv(1024, 64, torch.float16)
    do = torch.randn_like(q)
    offset = key_offset * 64**0.5 * torch.nn.functional.normalize(torch.randn(64), dim=0)
    k = (k.float() + offset).to(torch.float16)
    folds = count_folds(monkeypatch)
    _, tau, tile_max, u_mean = attention_forward(q, k, v, 1.5, True, 64**-0.5, None)
    assert len(folds) >= 2, "no row block folded its last sweep into the output pass"
    grads = attention_backward(do, q, k, v, tau, tile_max, u_mean, 1.5, True, 64**-0.5, None)
    expected = oracle_grads(q, k, v, do, 1.5, True, 64**-0.5, None)
    for name, g, ref, bar in zip(GRAD_NAMES, grads, expected, (dq_bar, 6e-4, 6e-4)):
        err = relative_error(g, ref)
        assert err <= bar, f"{name}: relative error {err:.3e} > {bar:.1e}"


def test_fold_tolerance_only_for_16_bit_one_half():
    assert fold_tolerance(1.5, torch.bfloat16) == 2.0**-12
    assert fold_tolerance(1.5, torch.float16) == 2.0**-15
    assert fold_tolerance(1.5, torch.float32) == 0.0
    assert fold_tolerance(2.0, torch.bfloat16) == 0.0 and fold_tolerance(1.25, torch.float16) == 0.0


@interpret
@pytest.mark.parametrize("n_keys", [1, 37, 130, 257])
@pytest.mark.parametrize("is_causal", [False, True])
def test_odd_key_lengths(n_keys, is_causal):
    q, k, v = make_qkv(1, 1, 1, 37, n_keys, 16, torch.float32)
    check_forward(q, k, v, 1.5, is_causal, 0.5, None)


@interpret
@pytest.mark.parametrize("n_queries, n_keys", [(130, 37), (37, 130), (1, 100), (100, 1)])
@pytest.mark.parametrize("alpha", [1.5, 2.0])
def test_queries_differ_from_keys_causal(n_queries, n_keys, alpha):
    # Bottom-right causal: with M > N the first M - N rows see nothing (zeros, tau = +inf).
    q, k, v = make_qkv(1, 1, 1, n_queries, n_keys, 16, torch.float32)
    check_forward(q, k, v, alpha, True, 0.5, None)


@interpret
@pytest.mark.parametrize("q_heads, kv_heads", [(4, 2), (4, 1)])
def test_grouped_query_heads(q_heads, kv_heads):
    q, k, v = make_qkv(1, q_heads, kv_heads, 40, 70, 16, torch.float32)
    check_forward(q, k, v, 1.5, True, 0.5, None)


@interpret
@pytest.mark.parametrize("n_queries", [70, 40])
@pytest.mark.parametrize("is_causal", [False, True])
@pytest.mark.parametrize("seqlens_dtype", [torch.int32, torch.int64])
def test_seqlens(n_queries, is_causal, seqlens_dtype):
    # 0 (nothing visible), inside the sequence, and beyond N (clamped). With M == N the
    # padding queries see nothing too.
    n_keys = 70
    q, k, v = make_qkv(3, 2, 1, n_queries, n_keys, 16, torch.float32)
    check_forward(q, k, v, 1.5, is_causal, 0.5, _seqlens([0, 45, 200], seqlens_dtype))


@interpret
@pytest.mark.parametrize("head_dim", [8, 40, 64, 96])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_head_dims_and_dtypes(head_dim, dtype):
    q, k, v = make_qkv(1, 2, 1, 65, 100, head_dim, dtype)
    check_forward(q, k, v, 1.5, True, head_dim**-0.5, None)


@interpret
@pytest.mark.parametrize("alpha", [1.25, 2.0])
def test_half_precision_alphas(alpha):
    q, k, v = make_qkv(1, 1, 1, 64, 130, 32, torch.float16)
    check_forward(q, k, v, alpha, False, 32**-0.5, None)


@interpret
@pytest.mark.parametrize("layout", ["bnhd", "strided_d"])
def test_strided_inputs(layout):
    q, k, v = make_qkv(2, 2, 2, 50, 90, 16, torch.float32, layout=layout)
    assert not q.is_contiguous() and not k.is_contiguous()
    out = check_forward(q, k, v, 1.5, True, 0.5, None)[0]
    assert out.stride() == torch.empty_like(q).stride()


@interpret
@pytest.mark.parametrize(
    "batch, q_heads, kv_heads, n_queries, n_keys, head_dim, dtype, layout, seqlens, alpha",
    [
        (2, 4, 2, 90, 90, 40, torch.float16, "bnhd", [77, 0], 1.5),
        (2, 4, 1, 33, 150, 24, torch.float32, "strided_d", [150, 64], 1.25),
        (3, 2, 2, 129, 65, 64, torch.float32, "bnhd", [65, 1, 100], 2.0),
    ],
)
def test_combined_features(batch, q_heads, kv_heads, n_queries, n_keys, head_dim, dtype, layout, seqlens, alpha):
    # GQA, seqlens, strided storage, causal with M != N and half precision at once.
    q, k, v = make_qkv(batch, q_heads, kv_heads, n_queries, n_keys, head_dim, dtype, layout=layout)
    check_forward(q, k, v, alpha, True, head_dim**-0.5, _seqlens(seqlens))


@interpret
@pytest.mark.parametrize("alpha", [1.25, 1.5, 2.0])
def test_block_sparse_inputs_skip_tiles(alpha):
    # Most 64x64 tiles of P are zero here; the result must not depend on skipping.
    q, k, v = make_qkv(1, 1, 1, 200, 260, 32, torch.float32, sparse=True)
    _, tau, tile_max, _ = check_forward(q, k, v, alpha, False, 32**-0.5, None)
    rows = tau.view(-1)
    padded = torch.full((tile_max.shape[2] * TILE_M,), float("inf"))
    padded[: rows.numel()] = rows
    tile_tau_min = padded.view(-1, TILE_M).amin(1)
    zero_tiles = (tile_max[0, 0] <= tile_tau_min[:, None]).float().mean().item()
    assert zero_tiles > 0.5, "the sparse input should leave most tiles of P empty"


@interpret
@pytest.mark.parametrize("kind", ["ties", "one_hot", "flat"])
@pytest.mark.parametrize("alpha", [1.25, 1.5, 2.0])
def test_degenerate_scores(kind, alpha):
    q, k, v = make_qkv(1, 1, 1, 20, 75, 16, torch.float32)
    if kind == "ties":  # every key equal: uniform weights, tau' = -n^(1-alpha) exactly
        k = k[:, :, :1].expand_as(k).contiguous()
    elif kind == "one_hot":  # huge scores: the max key takes everything
        q = q * 50
    else:  # tiny scores: nearly uniform, everything inside the initial bracket
        q = q * 0.01
    check_forward(q, k, v, alpha, False, 0.25, None)


def check_nonpositive_scale(scale, is_causal, n_queries, n_keys, dtype, grad_bar):
    """Forward and gradients at a scale <= 0 against the float64 oracle. Sparse inputs
    under a negative scale attend to the keys farthest from their own position: the
    kernels' bounds and masks see scores of the opposite sign to the usual ones."""
    q, k, v = make_qkv(1, 2, 1, n_queries, n_keys, 64, dtype, sparse=True)
    _, tau, tile_max, u_mean = check_forward(q, k, v, 1.5, is_causal, scale, None)
    do = torch.randn_like(q)
    grads = attention_backward(do, q, k, v, tau, tile_max, u_mean, 1.5, is_causal, scale, None)
    expected = oracle_grads(q, k, v, do, 1.5, is_causal, scale, None)
    for name, g, ref in zip(GRAD_NAMES, grads, expected):
        # At scale 0 dQ and dK are exactly zero (P does not depend on the scores' values).
        err = relative_error(g, ref) if ref.abs().max() > 0 else g.abs().max().item()
        assert err <= grad_bar, f"{name}: relative error {err:.3e} > {grad_bar:.1e}"


@interpret
@pytest.mark.parametrize("is_causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("scale", [-0.3, 0.0], ids=["negative", "zero"])
def test_nonpositive_scale(scale, is_causal):
    # No NaN on the way either: the interpreter warns of an invalid multiply (-inf * 0).
    with warnings.catch_warnings():
        warnings.filterwarnings("error", "invalid value encountered in multiply", RuntimeWarning)
        check_nonpositive_scale(scale, is_causal, 70, 130, torch.float32, TOLERANCES[torch.float32]["grad"])


@interpret
@pytest.mark.parametrize("nbins, sweeps, unroll", [(4, 5, 4), (16, 3, 1), (2, 8, 1)])
@pytest.mark.parametrize("alpha", [1.25, 1.5, 2.0])
def test_other_histogram_configs(nbins, sweeps, unroll, alpha):
    q, k, v = make_qkv(1, 1, 1, 64, 130, 16, torch.float32)
    config = dict(BLOCK_M=64, BLOCK_N=64, NBINS=nbins, MAX_SWEEPS=sweeps, EDGE_UNROLL=unroll, num_warps=4,
                  num_stages=1)
    check_forward(q, k, v, alpha, True, 0.5, None, config=config)


@interpret
def test_forced_int64_offsets_match():
    q, k, v = make_qkv(2, 2, 1, 40, 70, 16, torch.float32, layout="bnhd")
    config = dict(default_forward_config(16, torch.float32), USE_INT64=True)
    forced = attention_forward(q, k, v, 1.5, True, 0.5, _seqlens([60, 30]), config=config)
    plain = attention_forward(q, k, v, 1.5, True, 0.5, _seqlens([60, 30]))
    for a, b in zip(forced, plain):
        torch.testing.assert_close(a, b, atol=0, rtol=0)


@interpret
def test_wrap_is_applied_to_every_launch():
    q, k, v = make_qkv(1, 1, 1, 20, 30, 8, torch.float32)
    wrapped = []

    def wrap(kernel):
        wrapped.append(kernel)
        return kernel

    out = attention_forward(q, k, v, 1.5, False, 0.5, None, wrap=wrap)[0]
    assert len(wrapped) == 3  # key summary, max sweep, thresholds and output
    traceable = attention_forward(q, k, v, 1.5, False, 0.5, None, wrap=torch.library.wrap_triton)[0]
    torch.testing.assert_close(out, traceable, atol=0, rtol=0)


# --------------------------------------------------------------------------- GPU

@gpu
@pytest.mark.parametrize("dtype", ALL_GPU_DTYPES)
@pytest.mark.parametrize("is_causal", [False, True])
@pytest.mark.parametrize("alpha", [1.05, 1.25, 1.5, 1.75, 2.0])
def test_gpu_alpha_causal_dtype(alpha, is_causal, dtype):
    q, k, v = make_qkv(2, 4, 2, 300, 1000, 64, dtype)
    check_forward(q, k, v, alpha, is_causal, 64**-0.5, None)


@gpu
@pytest.mark.parametrize("dtype", ALL_GPU_DTYPES)
@pytest.mark.parametrize("head_dim", [40, 64, 96, 128, 192, 256])
def test_gpu_head_dims(head_dim, dtype):
    q, k, v = make_qkv(1, 2, 1, 257, 513, head_dim, dtype)
    check_forward(q, k, v, 1.5, True, head_dim**-0.5, None)


@gpu
@pytest.mark.parametrize("dtype", GPU_DTYPES)
@pytest.mark.parametrize("n_keys", [1, 37, 257, 4097, 16384])
@pytest.mark.parametrize("is_causal", [False, True])
def test_gpu_long_keys(n_keys, is_causal, dtype):
    # Few query rows keep the float64 oracle cheap while rows see up to 16k keys.
    q, k, v = make_qkv(1, 2, 1, 100, n_keys, 64, dtype)
    check_forward(q, k, v, 1.5, is_causal, 0.125, None)


@gpu
@pytest.mark.parametrize("dtype", GPU_DTYPES)
@pytest.mark.parametrize("alpha", [1.25, 1.5, 2.0])
@pytest.mark.parametrize("n", [2048, 16384])
def test_gpu_block_sparse_long(n, alpha, dtype):
    # M = N = 16k: compared with the float64 reference on the GPU (the bisect oracle
    # would need the full M x N matrix on the CPU).
    q, k, v = make_qkv(1, 1, 1, n, n, 128, dtype, sparse=True)
    out, tau, tile_max, u_mean = attention_forward(q, k, v, alpha, True, 128**-0.5, None)
    ref_out, ref_tau, _, ref_u_mean = reference.attention_forward(q.double(), k.double(), v.double(), alpha, True,
                                                                  128**-0.5, None)
    err = (out.double() - ref_out).abs().max().item()
    assert err <= TOLERANCES[dtype]["out"], err
    u_err = (u_mean.double() - ref_u_mean.double()).abs().max().item()
    assert u_err <= TOLERANCES[dtype]["out"], u_err
    finite = torch.isfinite(ref_tau)
    assert torch.equal(finite, torch.isfinite(tau))
    assert (tau[finite].double() - ref_tau[finite].double()).abs().max().item() <= 1e-4
    check_tile_max(tile_max, q, k, tau, alpha, True, 128**-0.5, None)


@gpu
@pytest.mark.parametrize("dtype", GPU_DTYPES)
@pytest.mark.parametrize("n_queries, n_keys", [(1000, 300), (300, 1000), (1, 4000), (4000, 1)])
def test_gpu_queries_differ_from_keys(n_queries, n_keys, dtype):
    q, k, v = make_qkv(1, 2, 2, n_queries, n_keys, 64, dtype)
    check_forward(q, k, v, 1.5, True, 0.125, None)


@gpu
@pytest.mark.parametrize("dtype", GPU_DTYPES)
@pytest.mark.parametrize("is_causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("scale", [-0.125, 0.0], ids=["negative", "zero"])
def test_gpu_nonpositive_scale(scale, is_causal, dtype):
    check_nonpositive_scale(scale, is_causal, 700, 1000, dtype, TOLERANCES[dtype]["grad"])


@gpu
@pytest.mark.parametrize("dtype", GPU_DTYPES)
@pytest.mark.parametrize("is_causal", [False, True])
@pytest.mark.parametrize("square", [True, False])
def test_gpu_seqlens_gqa(square, is_causal, dtype):
    n_keys = 700
    n_queries = n_keys if square else 300
    q, k, v = make_qkv(4, 4, 2, n_queries, n_keys, 64, dtype)
    check_forward(q, k, v, 1.5, is_causal, 0.125, _seqlens([0, 1, 333, 5000], torch.int64))


@gpu
@pytest.mark.parametrize("dtype", GPU_DTYPES)
@pytest.mark.parametrize("layout", ["bnhd", "strided_d"])
def test_gpu_strided_inputs(layout, dtype):
    q, k, v = make_qkv(2, 4, 2, 500, 700, 64, dtype, layout=layout)
    check_forward(q, k, v, 1.5, True, 0.125, None)


@gpu
@pytest.mark.parametrize("nbins, sweeps, unroll", [(4, 5, 4), (8, 4, 8), (16, 3, 1)])
@pytest.mark.parametrize("alpha", [1.25, 1.5, 2.0])
def test_gpu_other_histogram_configs(nbins, sweeps, unroll, alpha):
    q, k, v = make_qkv(1, 2, 1, 300, 2000, 128, torch.bfloat16)
    config = dict(default_forward_config(128, torch.bfloat16), NBINS=nbins, MAX_SWEEPS=sweeps, EDGE_UNROLL=unroll)
    check_forward(q, k, v, alpha, True, 128**-0.5, None, config=config)


@gpu
@slow
def test_gpu_int64_offsets():
    # Each key/value head spans 2^31 + 64*128 elements (4 GiB in bf16, 16 GiB in all),
    # and batch 1 starts past 2^31 too. Keys are zero except the last 1000, whose
    # scores are large, so tau > 0 and only that tail (stored beyond element 2^31)
    # carries weight: the expected output is attention over the tail alone.
    batch, n_keys, head_dim, tail = 2, 2**24 + 64, 128, 1000
    dtype = torch.bfloat16
    q = torch.randn(batch, 1, 64, head_dim, device="cuda", dtype=dtype)
    k = torch.zeros(batch, 1, n_keys, head_dim, device="cuda", dtype=dtype)
    v = torch.zeros(batch, 1, n_keys, head_dim, device="cuda", dtype=dtype)
    k[:, :, -tail:] = (torch.randn(batch, 1, tail, head_dim, device="cuda") * 2).to(dtype)
    v[:, :, -tail:] = torch.randn(batch, 1, tail, head_dim, device="cuda").to(dtype)
    assert _needs_int64(k)
    out, tau, tile_max, u_mean = attention_forward(q, k, v, 1.5, False, 1.0, None)
    expected, ref_tau, _, ref_u_mean = reference.attention_forward(q, k[:, :, -tail:], v[:, :, -tail:], 1.5, False,
                                                                   1.0, None)
    assert (ref_tau > 0).all(), "zero keys (z = 0) must stay outside the support"
    assert (out.double() - expected.double()).abs().max().item() <= TOLERANCES[dtype]["out"]
    assert (u_mean.double() - ref_u_mean.double()).abs().max().item() <= TOLERANCES[dtype]["out"]
    torch.testing.assert_close(tau, ref_tau, atol=1e-4, rtol=1e-5)
    # tile_max, written past element 2^31 of its batch too: -inf on the zero keys (z = 0
    # < tau, no nonzero of P), and the largest z of the block among the tail's tiles.
    assert torch.isneginf(tile_max[:, :, 0, 0]).all()
    z_tail = 0.5 * (q.float() @ k[:, :, -tail:].float().transpose(-1, -2))
    tail_tiles = tile_max[:, :, 0, (n_keys - tail) // TILE_N: (n_keys + TILE_N - 1) // TILE_N]
    torch.testing.assert_close(tail_tiles.amax(-1), z_tail.amax((-1, -2)), atol=1e-3, rtol=1e-4)


@interpret
def test_strided_and_huge_seqlens_are_read_correctly():
    q, k, v = make_qkv(3, 2, 1, 70, 70, 16, torch.float32)
    lengths = torch.tensor([[40, -1], [2**40, -1], [0, -1]], dtype=torch.int64)[:, 0]
    assert not lengths.is_contiguous()
    out, _, _, u_mean = attention_forward(q, k, v, 1.5, True, 0.25, lengths)
    expected, _, _, ref_u_mean = reference.attention_forward(q, k, v, 1.5, True, 0.25, torch.tensor([40, 70, 0]))
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(u_mean, ref_u_mean, rtol=0, atol=1e-5)


@gpu
def test_gpu_autotuned_launch_matches_default():
    q, k, v = make_qkv(1, 4, 2, 700, 900, 64, torch.bfloat16, sparse=True)
    default = attention_forward(q, k, v, 1.5, True, 0.125, None)
    tuned = attention_forward(q, k, v, 1.5, True, 0.125, None, autotune=True)
    torch.testing.assert_close(tuned[0], default[0], rtol=0, atol=2e-2)
    torch.testing.assert_close(tuned[1], default[1], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(tuned[3], default[3], rtol=0, atol=2e-2)
    # Tile records agree wherever a tile is clearly inside or outside the support.
    check_tile_max(tuned[2], q, k, tuned[1], 1.5, True, 0.125, None)


def test_autotune_excludes_an_explicit_config():
    q, k, v = make_qkv(1, 1, 1, 8, 8, 16, torch.float32)
    with pytest.raises(ValueError, match="either config or autotune"):
        attention_forward(q, k, v, 1.5, True, 0.25, None, config=default_forward_config(16, torch.float32),
                          autotune=True)
