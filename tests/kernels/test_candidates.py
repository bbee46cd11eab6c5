"""Dense row blocks by candidate lists (kernels/candidates.py).

Under the interpreter the rule that picks the blocks taking lists (``takes_lists``,
512+ keys a row) is made to take rows of 256+ keys, so that most blocks of a
dense 1024-key problem take the lists; the forward is then checked against the float64
oracle (tests/kernels/test_forward.py ``check_forward``) and against the threshold/output
kernel alone. Lists made too short for any row send every block back to that kernel,
with bitwise the same outputs. On the GPU, dense bf16 scores at N = 4096 and 8192 take the
lists without help, in the PTX form.
"""

import itertools

import pytest
import torch
import triton
import triton.language as tl

from adasplash_compile import reference
from adasplash_compile.kernels import candidates as candidates_module
from adasplash_compile.kernels import forward as forward_module
from adasplash_compile.kernels.forward import attention_forward, default_forward_config
from adasplash_compile.kernels.tau import tau_tolerance
from tests.conftest import BOTH_BACKENDS, DEVICE, TOLERANCES
from tests.kernels.test_forward import check_forward, check_tile_max, make_qkv


def record_handled(monkeypatch):
    """A list that receives the handled flags of every launch."""
    flags = []
    launch = candidates_module.launch_candidates

    def recording(*args, **kwargs):
        handled = launch(*args, **kwargs)
        flags.append(handled)
        return handled

    monkeypatch.setattr(candidates_module, "launch_candidates", recording)
    return flags


def lists_from_half_the_keys(monkeypatch):
    """Blocks whose rows see LIST_MIN_KEYS / 2 keys take lists, so small problems reach them.
    Under the interpreter the kernel resolves its helpers through the module."""
    rule = candidates_module.takes_lists
    monkeypatch.setattr(candidates_module, "takes_lists",
                        lambda lo, hi, local_lo, n_keys, active: rule.fn(lo, hi, local_lo, n_keys * 2, active))


def launching_with(record):
    """A ``wrap`` for attention_forward that passes each launch's kernel name, grid and
    keyword arguments to record, then launches it."""
    class Recording:
        def __init__(self, kernel):
            self.kernel = kernel

        def __getitem__(self, grid):
            def run(*args, **kwargs):
                record(self.kernel.fn.__name__, grid, kwargs)
                return self.kernel[grid](*args, **kwargs)
            return run

    return Recording


def without_candidates(dtype, head_dim):
    return dict(default_forward_config(head_dim, dtype), NO_CANDIDATES=True)


@triton.jit
def _rank_trace(kept_ptr, rank_ptr, count_ptr, ROWS: tl.constexpr, BLOCK_N: tl.constexpr, PTX: tl.constexpr):
    rows = tl.arange(0, ROWS)
    cols = tl.arange(0, BLOCK_N)
    kept = tl.load(kept_ptr + rows[:, None] * BLOCK_N + cols[None, :]) != 0
    rank, count = candidates_module._ranks_in_row(kept, cols, PTX)
    tl.store(rank_ptr + rows[:, None] * BLOCK_N + cols[None, :], rank)
    tl.store(count_ptr + rows, count)


@pytest.mark.parametrize("ptx", [False, pytest.param(True, marks=pytest.mark.gpu)])
@pytest.mark.parametrize("block_n", [16, 32, 64])
def test_ranks_count_kept_entries_left_of_each_column(block_n, ptx):
    generator = torch.Generator().manual_seed(block_n)
    kept = (torch.rand(16, block_n, generator=generator) < 0.4).to(torch.int32)
    kept[0] = 1  # every bit of both words, the sign bits included
    kept[1] = 0
    kept[2, -1] = 1  # only the last column
    kept = kept.to(DEVICE)
    rank = torch.empty_like(kept)
    count = torch.empty(16, dtype=torch.int32, device=DEVICE)
    _rank_trace[(1,)](kept, rank, count, ROWS=16, BLOCK_N=block_n, PTX=ptx)
    expected = torch.cumsum(kept, 1) - kept
    assert torch.equal(rank.cpu(), expected.cpu().to(torch.int32))
    assert torch.equal(count.cpu(), kept.sum(1).cpu().to(torch.int32))


@triton.jit
def _solve_trace(z_ptr, lo_ptr, tau_ptr, active_ptr, out_ptr, tau_tol, ROWS: tl.constexpr, SLOTS: tl.constexpr):
    rows = tl.arange(0, ROWS)
    z = tl.load(z_ptr + rows[:, None] * SLOTS + tl.arange(0, SLOTS)[None, :])
    tau = candidates_module.solve_listed_threshold(z, tl.load(lo_ptr + rows), tl.load(tau_ptr + rows),
                                                   tl.load(active_ptr + rows) != 0, tau_tol)
    tl.store(out_ptr + rows, tau)


def entmax15_threshold(z):
    """The root of sum (z - t)_+^2 = 1 of each row of a float64 matrix (-inf entries out), by bisection."""
    lo, hi = z.max(1).values - 1.0, z.max(1).values
    for _ in range(200):
        mid = (lo + hi) / 2
        above = (torch.clamp(z - mid[:, None], min=0) ** 2).sum(1) > 1.0
        lo, hi = torch.where(above, mid, lo), torch.where(above, hi, mid)
    return (lo + hi) / 2


@BOTH_BACKENDS
def test_listed_threshold_solves_entmax15_rows(backend):
    rows, slots = 16, 128
    generator = torch.Generator().manual_seed(0)
    counts = torch.tensor([1, 2, 3, 5, 8, 20, 40, 64, 90, 128, 128, 7, 30, 50, 100, 3])
    z = torch.full((rows, slots), float("-inf"), dtype=torch.float64)
    for row, count in enumerate(counts.tolist()):
        z[row, :count] = torch.randn(count, generator=generator, dtype=torch.float64) * (0.05 + 0.1 * row)
    z -= z.max(1, keepdim=True).values  # shifted by the row max, as the kernel's
    expected = entmax15_threshold(z)
    # lo: the lowest listed entry or max - 1, whichever is higher, as a floor below every
    # listed entry would be; row 3 starts at the threshold itself, row 15 is not active.
    lo = torch.maximum(torch.where(torch.isinf(z), float("inf"), z).min(1).values - 1e-3, torch.full((rows,), -1.0,
                       dtype=torch.float64))
    lo = torch.minimum(lo, expected)
    lo[3] = expected[3]
    active = torch.ones(rows, dtype=torch.int32)
    active[15] = 0
    kept = torch.full((rows,), -0.25, dtype=torch.float32)
    out = torch.empty(rows, dtype=torch.float32, device=DEVICE)
    _solve_trace[(1,)](z.float().to(DEVICE), lo.float().to(DEVICE), kept.to(DEVICE), active.to(DEVICE), out,
                       3e-6, ROWS=rows, SLOTS=slots)
    out = out.cpu().double()
    assert out[15].item() == -0.25
    assert (out[:15] - expected[:15]).abs().max().item() <= 3e-6, (out[:15] - expected[:15])
    # Never above the root by more than rounding: a threshold past it would drop entries.
    assert (out[:15] - expected[:15]).max().item() <= 1e-6


@pytest.mark.interpret
@pytest.mark.parametrize("is_causal", [True, False])
def test_dense_blocks_take_candidate_lists(monkeypatch, is_causal):
    # Not causal: 700 queries against 1024 keys, the last row block part full.
    n_queries = 1024 if is_causal else 700
    q, k, v = make_qkv(1, 2, 1, n_queries, 1024, 64, torch.float16, device="cpu")
    scale = 64**-0.5
    lists_from_half_the_keys(monkeypatch)
    flags = record_handled(monkeypatch)
    out, tau, tile_max, u_mean = check_forward(q, k, v, 1.5, is_causal, scale, None)
    handled = flags[0]
    assert handled.sum().item() >= 8, handled
    plain = attention_forward(q, k, v, 1.5, is_causal, scale, None, config=without_candidates(torch.float16, 64))
    torch.testing.assert_close(tau, plain[1], atol=tau_tolerance(1.5, torch.float16), rtol=0)
    torch.testing.assert_close(out, plain[0], atol=2.0**-10, rtol=2.0**-9)
    torch.testing.assert_close(u_mean, plain[3], atol=2e-3, rtol=1e-3)
    assert torch.equal(torch.isfinite(tile_max), torch.isfinite(plain[2]))
    # Outside the handled blocks nothing moved.
    rows = ~handled.bool().repeat_interleave(64, dim=2)[:, :, :n_queries]
    assert torch.equal(out[rows], plain[0][rows]) and torch.equal(tau[rows], plain[1][rows])


@pytest.mark.parametrize("n_keys, listed", [(candidates_module.LIST_MIN_KEYS.value - 1, False),
                                             (candidates_module.LIST_MIN_KEYS.value, True)])
def test_lists_launch_only_where_a_row_can_see_enough_keys(n_keys, listed):
    launched = []

    class Recording:
        def __init__(self, kernel):
            self.kernel = kernel

        def __getitem__(self, grid):
            return lambda *args, **kwargs: launched.append(self.kernel.fn.__name__)

    q = torch.randn(1, 2, 70, 64, dtype=torch.bfloat16)
    k = torch.randn(1, 1, n_keys, 64, dtype=torch.bfloat16)
    attention_forward(q, k, k.clone(), 1.5, True, 0.125, None, wrap=Recording)
    assert ("_adasplash_fwd_candidates" in launched) == listed
    assert ("_adasplash_fwd_candidate_output" in launched) == listed
    assert "_adasplash_fwd_tau_out" in launched


@pytest.mark.interpret
def test_overflowing_lists_fall_back_bitwise(monkeypatch):
    q, k, v = make_qkv(1, 1, 1, 640, 640, 32, torch.float16, device="cpu")
    lists_from_half_the_keys(monkeypatch)
    monkeypatch.setattr(candidates_module, "MAX_CANDIDATES", tl.constexpr(2))
    flags = record_handled(monkeypatch)
    listed = attention_forward(q, k, v, 1.5, True, 32**-0.5, None)
    assert flags[0].sum().item() == 0
    plain = attention_forward(q, k, v, 1.5, True, 32**-0.5, None, config=without_candidates(torch.float16, 32))
    for a, b in zip(listed, plain):
        assert torch.equal(a, b)


@pytest.mark.parametrize("batch, heads, n_queries", [(1, 16, 32768), (1, 16, 4096), (1, 16, 8192), (3, 16, 32768),
                                                     (8, 32, 16384), (5, 1, 1000), (1, 3, 10**6), (2, 7, 40000),
                                                     (4096, 32, 1)])
def test_list_slices_cover_every_pair_once_within_the_budget(batch, heads, n_queries):
    slices = candidates_module.list_slices(batch, heads, n_queries)
    pairs = batch * heads
    assert [first for first, _ in slices] == list(itertools.accumulate([0] + [size for _, size in slices[:-1]]))
    assert sum(size for _, size in slices) == pairs
    list_bytes = 2 * candidates_module.MAX_CANDIDATES.value * 4 * n_queries
    largest = max(size for _, size in slices)
    assert largest - min(size for _, size in slices) <= largest // 2
    assert largest <= 65535
    assert len(slices) <= max(candidates_module.LIST_SLICES, -(-pairs // 65535))
    # A slice's lists stay within the byte budget unless one pair alone goes past it, or
    # the budget asks for more slices than the cap.
    capped = pairs * list_bytes > candidates_module.LIST_SLICES * candidates_module.LIST_SLICE_BYTES
    assert largest * list_bytes <= candidates_module.LIST_SLICE_BYTES or largest == 1 or capped


def test_list_slices_take_one_launch_where_lists_fit_or_sizes_are_symbolic():
    assert candidates_module.list_slices(2, 2, 1000) == [(0, 4)]
    assert candidates_module.list_slices(1, 16, 4096) == [(0, 16)]
    assert candidates_module.list_slices(1, 16, 16384) == [(0, 16)]
    assert candidates_module.list_slices(1, 16, 32768) == [(0, 8), (8, 8)]
    from torch.fx.experimental.symbolic_shapes import ShapeEnv

    length = ShapeEnv().create_unbacked_symint()
    assert candidates_module.list_slices(1, 16, length) == [(0, 16)]


@pytest.mark.interpret
def test_sliced_lists_give_bitwise_the_outputs_of_one_slice(monkeypatch):
    # Two batches of three query heads sharing a key head: six (batch, head) pairs, in
    # slices of one pair, then of two (one slice holding the last head of batch 0 and the
    # first of batch 1), against one launch over all six. One row block of 64 queries,
    # each seeing all 640 keys, keeps the interpreter's work small.
    q, k, v = make_qkv(2, 3, 1, 64, 640, 32, torch.float16, device="cpu")
    lists_from_half_the_keys(monkeypatch)
    flags = record_handled(monkeypatch)
    launched = []
    Recording = launching_with(lambda name, grid, kwargs: launched.append(grid[1])
                               if name == "_adasplash_fwd_candidates" else None)
    list_bytes = 2 * candidates_module.MAX_CANDIDATES.value * 4 * 64
    monkeypatch.setattr(candidates_module, "LIST_SLICES", 64)
    results, launches = {}, {}
    for name, budget in (("whole", 6 * list_bytes), ("single", list_bytes), ("spanning", 5 * list_bytes // 2)):
        monkeypatch.setattr(candidates_module, "LIST_SLICE_BYTES", budget)
        launched.clear()
        results[name] = attention_forward(q, k, v, 1.5, False, 32**-0.5, None, wrap=Recording)
        launches[name] = list(launched)
    assert launches == {"whole": [6], "single": [1] * 6, "spanning": [2] * 3}
    assert all(flag.sum().item() >= 4 for flag in flags), flags
    for name in ("single", "spanning"):
        for a, b in zip(results[name], results["whole"]):
            assert torch.equal(a, b), name


@pytest.mark.interpret
def test_lists_widen_their_row_offsets_alone(monkeypatch):
    # A list row (256 int32) outgrows int32 offsets before a query row of D = 64 does; the
    # predicate is made to see only the lists as too large, as they would be at 2^23 rows.
    q, k, v = make_qkv(1, 2, 1, 640, 640, 64, torch.float16, device="cpu")
    lists_from_half_the_keys(monkeypatch)
    needs_int64 = forward_module._needs_int64
    monkeypatch.setattr(forward_module, "_needs_int64",
                        lambda *tensors: any(t.dtype == torch.int32 and t.shape[-1] == 256 for t in tensors))
    widths = {}
    Recording = launching_with(lambda name, grid, kwargs: widths.__setitem__(name, kwargs.get("USE_INT64")))
    flags = record_handled(monkeypatch)
    listed = attention_forward(q, k, v, 1.5, True, 0.125, None, wrap=Recording)
    assert flags[0].sum().item() >= 2, flags[0]
    assert widths["_adasplash_fwd_candidates"] is True and widths["_adasplash_fwd_candidate_output"] is True
    assert widths["_adasplash_fwd_tau_out"] is False
    # The same lists with 32-bit offsets: bitwise the same outputs.
    monkeypatch.setattr(forward_module, "_needs_int64", needs_int64)
    plain = attention_forward(q, k, v, 1.5, True, 0.125, None)
    for a, b in zip(listed, plain):
        assert torch.equal(a, b)


@pytest.mark.gpu
@pytest.mark.parametrize("n, seqlens, is_causal", [(4096, None, True), (8192, None, True), (4096, [4096, 3000], True),
                                                  (4096, [4096, 3000], False)])
def test_gpu_dense_blocks_take_candidate_lists(monkeypatch, n, seqlens, is_causal):
    batch = 1 if seqlens is None else len(seqlens)
    q, k, v = make_qkv(batch, 2, 1, n, n, 128, torch.bfloat16)
    lengths = None if seqlens is None else torch.tensor(seqlens, device="cuda")
    flags = record_handled(monkeypatch)
    out, tau, tile_max, u_mean = attention_forward(q, k, v, 1.5, is_causal, 128**-0.5, lengths)
    handled = flags[0]
    assert handled.float().mean().item() >= 0.5, handled
    ref_out, ref_tau, _, ref_u_mean = reference.attention_forward(q.double(), k.double(), v.double(), 1.5, is_causal,
                                                                  128**-0.5, lengths)
    assert (out.double() - ref_out).abs().max().item() <= TOLERANCES[torch.bfloat16]["out"]
    assert (u_mean.double() - ref_u_mean.double()).abs().max().item() <= TOLERANCES[torch.bfloat16]["out"]
    finite = torch.isfinite(ref_tau)
    assert torch.equal(finite, torch.isfinite(tau))
    assert (tau[finite].double() - ref_tau[finite].double()).abs().max().item() <= 1e-4
    check_tile_max(tile_max, q, k, tau, 1.5, is_causal, 128**-0.5, lengths)
    plain = attention_forward(q, k, v, 1.5, is_causal, 128**-0.5, lengths,
                              config=without_candidates(torch.bfloat16, 128))
    assert torch.equal(torch.isfinite(tile_max), torch.isfinite(plain[2]))


@pytest.mark.gpu
def test_gpu_candidate_outputs_repeat_bitwise(monkeypatch):
    # Slots come from ranks, not from atomics whose order could change between runs.
    q, k, v = make_qkv(1, 4, 2, 4096, 4096, 128, torch.bfloat16)
    flags = record_handled(monkeypatch)
    runs = [attention_forward(q, k, v, 1.5, True, 128**-0.5, None) for _ in range(4)]
    assert flags[0].float().mean().item() >= 0.5, flags[0]
    for other in runs[1:]:
        for a, b in zip(runs[0], other):
            assert torch.equal(a, b)


@pytest.mark.gpu
def test_gpu_sliced_lists_match_one_slice_eager_and_compiled(monkeypatch):
    from adasplash_compile import adasplash

    q, k, v = make_qkv(2, 4, 2, 4096, 4096, 128, torch.bfloat16)
    scale = 128**-0.5
    flags = record_handled(monkeypatch)
    whole = attention_forward(q, k, v, 1.5, True, scale, None)
    plans = []
    plan = candidates_module.list_slices
    monkeypatch.setattr(candidates_module, "list_slices", lambda *sizes: plans.append(plan(*sizes)) or plans[-1])
    # Lists of three (batch, head) pairs at a time: three slices, the second holding the
    # last head of batch 0 and the first two of batch 1.
    monkeypatch.setattr(candidates_module, "LIST_SLICES", 64)
    pair_bytes = 2 * candidates_module.MAX_CANDIDATES.value * 4 * 4096
    monkeypatch.setattr(candidates_module, "LIST_SLICE_BYTES", 3 * pair_bytes)
    sliced = attention_forward(q, k, v, 1.5, True, scale, None)
    assert plans[-1] == [(0, 3), (3, 3), (6, 2)]
    assert flags[0].float().mean().item() >= 0.5, flags[0]
    for a, b in zip(sliced, whole):
        assert torch.equal(a, b)
    torch._dynamo.reset()
    plans.clear()
    compiled = torch.compile(lambda q, k, v: adasplash(q, k, v, is_causal=True), fullgraph=True)
    out = compiled(q, k, v)
    assert plans and all(len(p) == 3 for p in plans), plans
    assert torch.equal(out, whole[0])
