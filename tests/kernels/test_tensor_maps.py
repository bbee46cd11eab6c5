"""When the kernels read tiles through tensor descriptors (kernels/tensor_maps.py), and
that the descriptor path computes exactly what the pointer path does.

The ``interpret`` tests force the descriptor path on CPU tensors under TRITON_INTERPRET=1
(the interpreter emulates the copy engine, zero fill past the sequence included); the
``gpu`` tests compare the two paths compiled for the H100, where the descriptor path is
the default for aligned 16-bit inputs with a power-of-two head dim.
"""

import threading

import pytest
import torch

from adasplash_compile import reference
from adasplash_compile.kernels.backward import attention_backward, backward_config
from adasplash_compile.kernels.forward import _block_d, attention_forward, default_forward_config
from adasplash_compile.kernels.backward import _adasplash_bwd_dkdv, _adasplash_bwd_dq
from adasplash_compile.kernels.forward import _adasplash_fwd_rowmax, _adasplash_fwd_tau_out
from adasplash_compile.kernels.tensor_maps import NullAllocator, _aligned, _allocator, descriptors_supported
from tests.conftest import DEVICE
from tests.kernels.mutation import IN_BOTH_SUITES, kernel_writes

interpret = pytest.mark.interpret
gpu = pytest.mark.gpu


def make_inputs(q_heads, kv_heads, n_queries, n_keys, head_dim, dtype, layout="bhnd"):
    """query, key, value, grad_out (B = 2); layout "bnhd": (B, N, H, D) storage seen as (B, H, N, D)."""

    def randn(heads, length):
        if layout == "bnhd":
            return torch.randn(2, length, heads, head_dim, device=DEVICE).transpose(1, 2).to(dtype)
        return torch.randn(2, heads, length, head_dim, device=DEVICE).to(dtype)

    return randn(q_heads, n_queries), randn(kv_heads, n_keys), randn(kv_heads, n_keys), randn(q_heads, n_queries)


def run_both(q, k, v, do, is_causal, seqlens, forward_configs, backward_configs):
    """((out, tau, tile_max, u_value_mean), gradients) at alpha = 1.5 under each (forward
    config, backward config) pair."""
    scale = q.shape[-1] ** -0.5
    results = []
    for forward_config, backward_config_ in zip(forward_configs, backward_configs):
        outputs = attention_forward(q, k, v, 1.5, is_causal, scale, seqlens, config=forward_config)
        grads = attention_backward(do, q, k, v, *outputs[1:], 1.5, is_causal, scale, seqlens,
                                   config=backward_config_)
        results.append((outputs, grads))
    return results


def assert_bitwise_equal(pointer, descriptor):
    for a, b in zip(pointer[0] + pointer[1], descriptor[0] + descriptor[1]):
        assert torch.equal(a, b)


# --------------------------------------------------------------------------- eligibility (no kernels run)


def test_alignment_rules():
    base = torch.empty(2, 3, 40, 64, dtype=torch.bfloat16)
    assert _aligned(base)
    # (B, N, H, D) storage: rows are H * D elements apart, still 16-byte multiples.
    assert _aligned(torch.empty(2, 40, 3, 64, dtype=torch.bfloat16).transpose(1, 2))
    # D not contiguous.
    assert not _aligned(torch.empty(2, 3, 64, 40, dtype=torch.bfloat16).transpose(2, 3))
    # Rows 24 bytes apart (D = 12 in bf16).
    assert not _aligned(torch.empty(2, 3, 40, 12, dtype=torch.bfloat16))
    # A view starting 2 bytes into its storage.
    assert not _aligned(torch.empty(2 * 3 * 40 * 64 + 1, dtype=torch.bfloat16)[1:].view(2, 3, 40, 64))
    # ... or 16 bytes in.
    assert _aligned(torch.empty(2 * 3 * 40 * 64 + 8, dtype=torch.bfloat16)[8:].view(2, 3, 40, 64))


def test_no_descriptors_on_cpu():
    assert not descriptors_supported(torch.empty(1, 2, 64, 64, dtype=torch.bfloat16), head_dim=64, block_d=64)


@gpu
def test_gpu_descriptors_need_16bit_full_width_boxes_and_alignment():
    cuda = torch.empty(1, 2, 64, 64, dtype=torch.bfloat16, device=DEVICE)
    assert descriptors_supported(cuda, cuda.half(), head_dim=64, block_d=64)
    assert not descriptors_supported(cuda, cuda.float(), head_dim=64, block_d=64)
    # D = 40 pads the box to 64 columns.
    assert not descriptors_supported(cuda[..., :40].contiguous(), head_dim=40, block_d=_block_d(40))
    assert not descriptors_supported(cuda[:, :, :0], head_dim=64, block_d=64)
    assert not descriptors_supported(cuda, cuda[..., 1:].contiguous()[..., :63], head_dim=63, block_d=64)
    shifted = torch.empty(64 * 64 * 2 + 1, dtype=torch.bfloat16, device=DEVICE)[1:].view(1, 2, 64, 64)
    assert not descriptors_supported(cuda, shifted, head_dim=64, block_d=64)


@IN_BOTH_SUITES
def test_mutation_analysis_of_the_descriptor_path_reports_only_outputs(suite):
    writes = kernel_writes(
        "from adasplash_compile.kernels.forward import attention_forward, default_forward_config\n"
        "from adasplash_compile.kernels.backward import attention_backward, backward_config\n"
        "q = torch.randn(1, 2, 70, 64, dtype=torch.bfloat16)\n"
        "k = torch.randn(1, 1, 130, 64, dtype=torch.bfloat16)\n"
        "config = dict(default_forward_config(64, torch.bfloat16), KV_TMA=True)\n"
        "attention_forward(q, k, k.clone(), 1.5, True, 0.125, None, config=config, wrap=Capture)\n"
        "tau = torch.zeros(1, 2, 70)\n"
        "tile_max = torch.zeros(1, 2, 3, 4)\n"
        "u_mean = torch.zeros(1, 2, 70, 64)\n"
        "attention_backward(q.clone(), q, k, k.clone(), tau, tile_max, u_mean, 1.5, True, 0.125, None,\n"
        "                   config=backward_config(64, torch.bfloat16)._replace(tma=True), wrap=Capture)\n"
    )
    assert writes["_adasplash_fwd_rowmax"] == ["bound_ptr", "floor_ptr", "local_floor_ptr", "m_ptr", "rel_bound_ptr",
                                               "tile_list_ptr"]
    assert writes["_adasplash_fwd_tau_out"] == ["out_ptr", "tau_ptr", "tile_list_ptr", "tile_max_ptr",
                                                "u_value_mean_ptr"]
    assert writes["_adasplash_bwd_dq"] == ["delta_ptr", "dq_ptr"]
    assert writes["_adasplash_bwd_dkdv"] == ["dk_ptr", "dv_ptr"]


# --------------------------------------------------------------------------- interpreter (CPU)


@interpret
@pytest.mark.parametrize(
    "q_heads, kv_heads, n_queries, n_keys, head_dim, is_causal, seqlens, layout",
    [
        pytest.param(2, 1, 150, 130, 32, True, None, "bhnd", id="gqa-causal-ragged"),
        pytest.param(2, 2, 70, 200, 16, False, [200, 90], "bnhd", id="seqlens-transposed"),
    ],
)
def test_interpret_descriptor_path_is_bitwise_the_pointer_path(q_heads, kv_heads, n_queries, n_keys, head_dim,
                                                                 is_causal, seqlens, layout):
    q, k, v, do = make_inputs(q_heads, kv_heads, n_queries, n_keys, head_dim, torch.float16, layout)
    seqlens = None if seqlens is None else torch.tensor(seqlens, dtype=torch.int32)
    forward = default_forward_config(head_dim, torch.float16)
    backward = backward_config(head_dim, torch.float16, "cpu")
    pointer, descriptor = run_both(
        q, k, v, do, is_causal, seqlens,
        (dict(forward, KV_TMA=False), dict(forward, KV_TMA=True)),
        (backward._replace(tma=False), backward._replace(tma=True)),
    )
    assert_bitwise_equal(pointer, descriptor)
    # And both are right: the output against the reference forward.
    expected = reference.attention_forward(q, k, v, 1.5, is_causal, head_dim ** -0.5, seqlens)[0]
    torch.testing.assert_close(descriptor[0][0].float(), expected.float(), atol=2e-3, rtol=0)


# --------------------------------------------------------------------------- GPU


@gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize(
    "q_heads, kv_heads, n_queries, n_keys, head_dim, is_causal, seqlens, layout",
    [
        pytest.param(4, 2, 1000, 1300, 128, True, None, "bhnd", id="gqa-causal"),
        pytest.param(2, 2, 700, 1030, 64, False, [1030, 500], "bnhd", id="seqlens-transposed"),
        pytest.param(2, 1, 300, 257, 256, True, None, "bhnd", id="D256"),
    ],
)
def test_gpu_descriptor_path_is_bitwise_the_pointer_path(dtype, q_heads, kv_heads, n_queries, n_keys, head_dim,
                                                         is_causal, seqlens, layout):
    q, k, v, do = make_inputs(q_heads, kv_heads, n_queries, n_keys, head_dim, dtype, layout)
    seqlens = None if seqlens is None else torch.tensor(seqlens, dtype=torch.int32, device=DEVICE)
    assert descriptors_supported(q, k, v, do, head_dim=head_dim, block_d=head_dim)
    forward = default_forward_config(head_dim, dtype)
    backward = backward_config(head_dim, dtype)
    pointer, default = run_both(q, k, v, do, is_causal, seqlens, (dict(forward, KV_TMA=False), None),
                                (backward._replace(tma=False), None))
    assert_bitwise_equal(pointer, default)


@gpu
def test_gpu_kernels_set_the_scratch_allocator_in_the_thread_that_launches_them():
    # Triton's allocator is per thread; a new thread starts with none, as the autograd
    # engine's device thread does when a traced backward runs there without Inductor.
    q, k, v, do = make_inputs(2, 2, 300, 300, 64, torch.bfloat16)
    assert descriptors_supported(q, k, v, do, head_dim=64, block_d=64)
    launched = []

    def launch():
        launched.extend(run_both(q, k, v, do, True, None, (None,), (None,)))
        torch.cuda.synchronize()

    thread = threading.Thread(target=launch)
    thread.start()
    thread.join()
    assert len(launched) == 1, "the launches in a new thread raised"
    assert_bitwise_equal(run_both(q, k, v, do, True, None, (None,), (None,))[0], launched[0])


@pytest.mark.parametrize("kernel, flag", [(_adasplash_fwd_rowmax, "KV_TMA"), (_adasplash_fwd_tau_out, "KV_TMA"),
                                          (_adasplash_bwd_dq, "TMA"), (_adasplash_bwd_dkdv, "TMA")],
                         ids=["rowmax", "tau_out", "dq", "dkdv"])
@pytest.mark.parametrize("by_position", [False, True])
@pytest.mark.parametrize("flag_on", [False, True])
def test_launch_hook_sets_the_allocator_where_the_descriptor_flag_is_on(kernel, flag, by_position, flag_on):
    if _allocator is None or not hasattr(kernel, "pre_run_hooks"):
        pytest.skip("this Triton has no allocator to inspect or no launch hooks")
    # The hooks run as Triton runs them before a launch: our launchers pass the flag by
    # name, torch's traced launches every argument by position. A new thread starts
    # without an allocator.
    args = [None] * len(kernel.arg_names)
    args[kernel.arg_names.index(flag)] = flag_on
    without_allocator = []

    def launch_hooks():
        for hook in kernel.pre_run_hooks:
            hook(*args) if by_position else hook(**{flag: flag_on})
        without_allocator.append(isinstance(_allocator.get(), NullAllocator))

    thread = threading.Thread(target=launch_hooks)
    thread.start()
    thread.join()
    assert without_allocator == [not flag_on]
