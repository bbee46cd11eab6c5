"""The calls to profile under Nsight Compute: ours and FA2 on one workload, nothing timed.

ncu profiles every kernel launch it is told to; this script only makes the launches,
ours (the public op, eager, with autograd) then FA2 (SDPA's flash backend), each
``--calls`` times, so that ``--launch-skip`` can pass over the first calls' compilation
and autotuning. The backward profile of session 29
(benchmarks/results/h200-2026-11-28-backward-gaps.md) was taken with the same calls, from a
script this one replaces:

    ncu --clock-control none --kernel-name regex:"adasplash_bwd_dq|adasplash_bwd_dkdv|flash_bwd_dq_dk_dv" \\
        --launch-count 6 --metrics <list> --csv python3 benchmarks/ncu_driver.py --workload mid --n 32768

and where in a kernel its warps stall (one kernel, source-level sampling) as

    ncu --clock-control none --kernel-name regex:adasplash_bwd_dq --launch-skip 1 --launch-count 1 \\
        --section SourceCounters --section WarpStateStats -o $OUT/dq python3 benchmarks/ncu_driver.py

``--forward-only`` leaves out the backward (inputs that require no grad).
"""

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import workloads as wl  # noqa: E402
from profile_kernels import fa2_fns  # noqa: E402

import adasplash_compile  # noqa: E402


def ours_fns(q, k, v, grad):
    """(forward, forward+backward) of ours through the public op, as ``fa2_fns`` gives FA2's."""

    def fwd():
        return adasplash_compile.adasplash(q, k, v, is_causal=True)

    def step():
        qq, kk, vv = (t.detach().requires_grad_() for t in (q, k, v))
        out = adasplash_compile.adasplash(qq, kk, vv, is_causal=True)
        return torch.autograd.grad(out, (qq, kk, vv), grad)

    return fwd, step


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workload", choices=wl.WORKLOADS, default="mid")
    parser.add_argument("--n", type=int, default=32768)
    parser.add_argument("--calls", type=int, default=2, help="calls of each implementation")
    parser.add_argument("--forward-only", action="store_true")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        parser.error("needs a CUDA GPU (ncu profiles CUDA kernels)")
    q, k, v = wl.make_inputs(args.workload, args.n, device="cuda")
    grad = torch.randn_like(q)
    for fns in (ours_fns, fa2_fns):
        fwd, step = fns(q, k, v, grad)
        for _ in range(args.calls):
            (fwd if args.forward_only else step)()
    torch.cuda.synchronize()
    return 0


if __name__ == "__main__":
    sys.exit(main())
