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

``--forward-only`` leaves out the backward (both implementations run under no_grad).
"""

import argparse
import sys
from pathlib import Path

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

sys.path.insert(0, str(Path(__file__).resolve().parent))
import workloads as wl  # noqa: E402

import adasplash_compile  # noqa: E402


def run(attention, q, k, v, grad, forward_only: bool) -> None:
    if forward_only:
        with torch.no_grad():
            attention(q, k, v)
        return
    out = attention(q, k, v)
    torch.autograd.grad(out, (q, k, v), grad)


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
    for t in (q, k, v):
        t.requires_grad_(not args.forward_only)

    def ours(q, k, v):
        return adasplash_compile.adasplash(q, k, v, is_causal=True)

    def fa2(q, k, v):
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)

    for attention in (ours, fa2):
        for _ in range(args.calls):
            run(attention, q, k, v, grad, args.forward_only)
    torch.cuda.synchronize()
    return 0


if __name__ == "__main__":
    sys.exit(main())
