"""kernels/autotuning.py: the triton.autotune wrappers max-autotune launches (CPU: no GPU
needed to build them; tests/lowering/test_lowering.py and the gpu tests of each kernel
run them)."""

import pytest
import torch

from adasplash_compile.kernels.autotuning import autotuned, launch_options
from adasplash_compile.kernels.backward import _adasplash_bwd_dq, autotune_launch_options
from adasplash_compile.kernels.entmax import autotune_entmax_configs, default_entmax_config
from adasplash_compile.kernels.forward import (
    _adasplash_fwd_tau_out,
    autotune_forward_configs,
    default_forward_config,
    prune_forward_configs,
)


def test_autotuner_carries_each_config():
    configs = [dict(NBINS=4, MAX_SWEEPS=5, EDGE_UNROLL=4, num_warps=4, num_stages=2),
               dict(NBINS=8, MAX_SWEEPS=4, EDGE_UNROLL=1, num_warps=8, num_stages=1)]
    tuner = autotuned(_adasplash_fwd_tau_out, configs, key=("M", "N"))
    assert tuner.fn is _adasplash_fwd_tau_out
    assert [(c.kwargs, c.num_warps, c.num_stages) for c in tuner.configs] == [
        ({k: v for k, v in c.items() if k not in ("num_warps", "num_stages")}, c["num_warps"], c["num_stages"])
        for c in configs
    ]
    assert tuner.keys == ["M", "N"]
    # One autotuner per distinct argument set, so its benchmark results are reused.
    assert autotuned(_adasplash_fwd_tau_out, [dict(c) for c in configs], key=("M", "N")) is tuner
    assert autotuned(_adasplash_fwd_tau_out, configs[:1], key=("M", "N")) is not tuner


def test_autotuner_needs_configs():
    with pytest.raises(ValueError, match="no configs"):
        autotuned(_adasplash_bwd_dq, [], key=())


@pytest.mark.parametrize("head_dim", [16, 64, 128, 256])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_forward_candidates_start_at_the_default_and_fit(head_dim, dtype):
    candidates = autotune_forward_configs(head_dim, dtype)
    assert candidates[0] == default_forward_config(head_dim, dtype)
    assert prune_forward_configs(candidates, head_dim, dtype) == candidates
    assert len(candidates) >= 2 and len({tuple(sorted(c.items())) for c in candidates}) == len(candidates)


def test_backward_and_entmax_candidates_vary_warps_and_stages():
    for dtype in (torch.float32, torch.bfloat16):
        options = autotune_launch_options(dtype)
        assert len({(o["num_warps"], o["num_stages"]) for o in options}) == len(options) >= 4
    default = default_entmax_config(1000, 300)
    candidates = autotune_entmax_configs(default)
    assert {"NBINS", "MAX_SWEEPS", "EDGE_UNROLL", "num_warps", "num_stages"} == set(candidates[0])
    assert any(c == {k: default[k] for k in c} for c in candidates)
    assert launch_options(default) == dict(num_warps=default["num_warps"], num_stages=default["num_stages"])
