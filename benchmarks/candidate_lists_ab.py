"""The forward with candidate lists (kernels/candidates.py) against the forward without
them (config ``NO_CANDIDATES``), in one process, on the GPU.

    python3 benchmarks/candidate_lists_ab.py dense:8192 dense:32768 mid:32768

Per case (workload:N; bf16, B=1, H=16, D=128, causal, alpha=1.5): the share of row
blocks whose output came from the lists ("handled"), forward and forward+backward
(kernel entry points, not the autograd wrapper) with and without lists, best of
``--rounds`` alternating rounds of do_bench medians in ms, and the max difference of each
forward output (out, tau, tile_max where both are finite, u_value_mean) and whether
tile_max is finite on the same tiles.
"""

import argparse
import sys
from pathlib import Path

import torch
from triton.testing import do_bench

sys.path.insert(0, str(Path(__file__).resolve().parent))
import workloads as wl  # noqa: E402

from adasplash_compile.kernels import candidates  # noqa: E402
from adasplash_compile.kernels.backward import attention_backward  # noqa: E402
from adasplash_compile.kernels.forward import attention_forward, default_forward_config  # noqa: E402

ALPHA = 1.5
HEAD_DIM = 128


def handled_share(q, k, v, scale, config):
    """Share of row blocks the lists handled in one forward under config."""
    flags = []
    launch = candidates.launch_candidates

    def recording(*args, **kwargs):
        flags.append(launch(*args, **kwargs))
        return flags[-1]

    # kernels/forward.py imports launch_candidates from the module at each call.
    candidates.launch_candidates = recording
    try:
        attention_forward(q, k, v, ALPHA, True, scale, None, config=dict(config))
    finally:
        candidates.launch_candidates = launch
    return flags[0].float().mean().item() if flags else 0.0


def output_differences(reference, other):
    """(max abs difference where both are finite, same finite pattern) per output."""
    differences = []
    for a, b in zip(reference, other):
        a, b = a.float(), b.float()
        both = torch.isfinite(a) & torch.isfinite(b)
        gap = (a[both] - b[both]).abs().max().item() if both.any() else 0.0
        differences.append((gap, torch.equal(torch.isfinite(a), torch.isfinite(b))))
    return differences


def run_case(case, rounds, warmup, rep):
    workload, n = case.split(":")
    q, k, v = wl.make_inputs(workload, int(n))
    scale = HEAD_DIM**-0.5
    with_lists = default_forward_config(HEAD_DIM, q.dtype)
    configs = {"without": dict(with_lists, NO_CANDIDATES=True), "with": with_lists}
    grad_out = torch.randn_like(q)

    def forward(config):
        return attention_forward(q, k, v, ALPHA, True, scale, None, config=dict(config))

    def forward_backward(config):
        out, tau, tile_max, u_value_mean = forward(config)
        return attention_backward(grad_out, q, k, v, tau, tile_max, u_value_mean, ALPHA, True, scale, None)

    share = handled_share(q, k, v, scale, with_lists)
    differences = output_differences(forward(configs["without"]), forward(configs["with"]))
    times = {name: {"fwd": [], "fwd+bwd": []} for name in configs}
    for _ in range(rounds):
        for name, config in configs.items():
            times[name]["fwd"].append(do_bench(lambda: forward(config), warmup=warmup, rep=rep))
            times[name]["fwd+bwd"].append(do_bench(lambda: forward_backward(config), warmup=warmup, rep=rep))
    cells = []
    for kind in ("fwd", "fwd+bwd"):
        before, after = min(times["without"][kind]), min(times["with"][kind])
        cells.append(f"{kind} {before:.3f} -> {after:.3f} ms ({after / before - 1:+.1%})")
    names = ("out", "tau", "tile_max", "u_value_mean")
    shown = ", ".join(f"{name} {gap:.3g}{'' if same else ' (finite tiles differ)'}"
                      for name, (gap, same) in zip(names, differences))
    print(f"{case}: handled {share:.2f}; {'; '.join(cells)}; max differences: {shown}", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("cases", nargs="+", help="workload:N, workload one of " + ", ".join(wl.WORKLOADS))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--rep", type=int, default=60)
    args = parser.parse_args()
    for case in args.cases:
        workload, _, n = case.partition(":")
        if workload not in wl.WORKLOADS or not n.isdigit():
            parser.error(f"cases: expected workload:N with workload in {list(wl.WORKLOADS)}, got {case!r}")
    if not torch.cuda.is_available():
        parser.error("needs a CUDA device")
    for case in args.cases:
        run_case(case, args.rounds, args.warmup, args.rep)


if __name__ == "__main__":
    main()
