"""Where our time goes: per-kernel times, tile counts and forward config sweeps, on the GPU.

For each workload and N (bf16, B=1, H=16, D=128, causal, alpha=1.5), side by side in one
process with FA2 (SDPA flash) on the same inputs:
  fa2 fwd, fa2 fwd+bwd;
  ours fwd (all kernels), the max sweep alone (kernels.forward.max_sweep), fwd+bwd (op + autograd), bwd alone
  (``attention_backward`` on the forward's tau/tile_max) and its list builders alone;
  tiles: causal-visible 64x64 tiles, the tiles the backward lists (from tile_max and
  tau), and the tiles of P that are really all zero (recomputed in row chunks, never
  an N x N tensor).
``--kernel-times`` adds, per case, each GPU kernel's own time in one fwd+bwd of ours (op +
autograd) and of FA2, from torch.profiler (device time per call, averaged over
``--profile-calls`` calls after warm-up).
``--sweep`` also times the forward under every candidate config (kernels.forward
``forward_configs``), ``--sweep-backward`` the backward under BACKWARD_CANDIDATES, at
N = ``--sweep-n`` on ``--sweep-workloads``.

Prints one table per section; ``--out`` gets profile.json. Timings: do_bench medians, ms.
"""

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import triton
from triton.testing import do_bench

sys.path.insert(0, str(Path(__file__).resolve().parent))
import workloads as wl  # noqa: E402

import adasplash_compile  # noqa: E402,F401  (registers the ops)
from adasplash_compile.kernels import backward as bwd_kernels  # noqa: E402
from adasplash_compile.kernels import forward as fwd_kernels  # noqa: E402
from adasplash_compile.options import TILE_M, TILE_N  # noqa: E402

ALPHA = 1.5


def fa2_fns(q, k, v, grad):
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    def fwd():
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)

    def step():
        qq, kk, vv = (t.detach().requires_grad_() for t in (q, k, v))
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            out = F.scaled_dot_product_attention(qq, kk, vv, is_causal=True)
        return torch.autograd.grad(out, (qq, kk, vv), grad)

    return fwd, step


def zero_tile_count(q, k, tau, scale, rows_per_chunk=1024):
    """(all-zero causal-visible tiles, causal-visible tiles) of P, exact, from tau."""
    b, h, n, _ = q.shape
    zero = visible = 0
    cols = torch.arange(n, device=q.device)
    for start in range(0, n, rows_per_chunk):
        stop = min(n, start + rows_per_chunk)
        z = (ALPHA - 1.0) * scale * torch.matmul(q[:, :, start:stop].float(), k[:, :, :stop].float().transpose(-1, -2))
        rows = torch.arange(start, stop, device=q.device)
        seen = cols[None, :stop] <= rows[:, None]
        nonzero = (z > tau[:, :, start:stop, None]) & seen
        row_tiles = (stop - start) // TILE_M
        key_tiles = triton.cdiv(stop, TILE_N)
        pad = key_tiles * TILE_N - stop
        nz = torch.nn.functional.pad(nonzero, (0, pad)).view(b, h, row_tiles, TILE_M, key_tiles, TILE_N)
        vis = torch.nn.functional.pad(seen, (0, pad)).view(row_tiles, TILE_M, key_tiles, TILE_N).any(3).any(1)
        tile_nz = nz.any(5).any(3)
        visible += int(vis.sum()) * b * h
        zero += int((vis & ~tile_nz).sum())
        del z, nonzero, nz
    return zero, visible


def listed_tile_count(tau, tile_max, n_keys):
    lists = bwd_kernels.active_tile_lists(tau, tile_max, tau.shape[1], n_keys, True, None)
    return int(lists.kv_count.sum())


def bench(fn, args):
    return do_bench(fn, warmup=args.warmup, rep=args.rep, return_mode="median")


def kernel_times(fn, calls):
    """[(kernel name, device ms per call, launches per call)] of fn, slowest first: the
    GPU time each kernel itself took, from torch.profiler, averaged over ``calls`` calls."""
    from torch.profiler import ProfilerActivity, profile

    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
    rows = [(event.key, event.self_device_time_total / calls / 1000.0, event.count // calls)
            for event in prof.key_averages() if event.self_device_time_total > 0]
    return sorted(rows, key=lambda row: -row[1])


def profile_case(workload, n, args):
    q, k, v = wl.make_inputs(workload, n)
    grad = torch.randn_like(q)
    scale = q.shape[-1] ** -0.5
    row = {"workload": workload, "n": n}
    fa2_fwd, fa2_step = fa2_fns(q, k, v, grad)
    row["fa2_fwd"] = bench(fa2_fwd, args)
    row["fa2_fwdbwd"] = bench(fa2_step, args)

    def ours_fwd():
        return fwd_kernels.attention_forward(q, k, v, ALPHA, True, scale, None)

    def ours_step():
        qq, kk, vv = (t.detach().requires_grad_() for t in (q, k, v))
        out = adasplash_compile.adasplash(qq, kk, vv, alpha=ALPHA, is_causal=True)
        return torch.autograd.grad(out, (qq, kk, vv), grad)

    _, tau, tile_max, u_mean = ours_fwd()
    row["ours_fwd"] = bench(ours_fwd, args)
    row["ours_rowmax"] = bench(lambda: fwd_kernels.max_sweep(q, k, ALPHA, True, scale), args)
    row["ours_fwdbwd"] = bench(ours_step, args)
    row["ours_bwd"] = bench(
        lambda: bwd_kernels.attention_backward(grad, q, k, v, tau, tile_max, u_mean, ALPHA, True, scale, None),
        args)
    row["ours_bwd_lists"] = bench(
        lambda: bwd_kernels.active_tile_lists(tau, tile_max, q.shape[1], n, True, None), args)
    if args.kernel_times:
        row["kernels"] = {"ours": kernel_times(ours_step, args.profile_calls),
                          "fa2": kernel_times(fa2_step, args.profile_calls)}
    row["tiles_listed"] = listed_tile_count(tau, tile_max, n)
    row["tiles_zero"], row["tiles_visible"] = zero_tile_count(q, k, tau, scale)
    del q, k, v, grad, tau, tile_max, u_mean
    torch.cuda.empty_cache()
    return row


def _time_each(label, workload, n, configs, run, args):
    """One row per config: do_bench median of run(config) in ms, or the error it raised."""
    rows = []
    for config in configs:
        started = time.time()
        try:
            run(config)  # compiles outside the timing
            torch.cuda.synchronize()
            ms = bench(lambda: run(config), args)
        except Exception as exc:  # noqa: BLE001 - a config that fails is reported, not fatal
            ms = f"{type(exc).__name__}: {str(exc)[:80]}"
        rows.append({"workload": workload, "n": n, "config": config, "ms": ms, "s": time.time() - started})
        print(f"  {label} {workload} {n} {config} -> {ms}", flush=True)
    return rows


def sweep_configs(workload, n, args):
    q, k, v = wl.make_inputs(workload, n)
    scale = q.shape[-1] ** -0.5

    def run(config):
        return fwd_kernels.attention_forward(q, k, v, ALPHA, True, scale, None, config=config)

    return _time_each("sweep", workload, n, fwd_kernels.forward_configs(q.shape[-1], q.dtype), run, args)


BACKWARD_CANDIDATES = [
    # (dq_block_m, dq_block_n, dq_warps, dq_stages, dkv_block_n, dkv_block_m, dkv_warps, dkv_stages)
    (64, 64, 8, 2, 64, 64, 8, 2),
    (64, 64, 4, 2, 64, 64, 4, 2),
    (64, 64, 8, 3, 64, 64, 8, 3),
    (64, 64, 4, 3, 64, 64, 4, 3),
    (64, 64, 8, 1, 64, 64, 8, 1),
    (128, 64, 8, 2, 128, 64, 8, 2),
    (128, 32, 8, 2, 128, 32, 8, 2),
    (128, 64, 8, 1, 128, 64, 8, 1),
    (64, 32, 4, 2, 64, 32, 4, 2),
    (32, 64, 4, 2, 32, 64, 4, 2),
    (64, 64, 8, 2, 128, 64, 8, 2),
    (128, 64, 8, 2, 64, 64, 8, 2),
    # One kernel varied, the other at the default (4 warps, 2 stages, 64 x 64): the
    # backward's time is the sum of the two kernels', so these tell which one moved.
    (64, 64, 4, 3, 64, 64, 4, 2),
    (128, 64, 8, 2, 64, 64, 4, 2),
    (128, 64, 8, 3, 64, 64, 4, 2),
    (64, 32, 4, 3, 64, 64, 4, 2),
    (64, 64, 4, 2, 64, 64, 4, 3),
    (64, 64, 4, 2, 128, 64, 8, 2),
    (64, 64, 4, 2, 64, 32, 4, 3),
]


def sweep_backward(workload, n, args):
    q, k, v = wl.make_inputs(workload, n)
    grad = torch.randn_like(q)
    scale = q.shape[-1] ** -0.5
    _, tau, tile_max, u_mean = fwd_kernels.attention_forward(q, k, v, ALPHA, True, scale, None)

    def run(values):
        return bwd_kernels.attention_backward(grad, q, k, v, tau, tile_max, u_mean, ALPHA, True, scale, None,
                                              config=bwd_kernels.BackwardConfig(*values))

    return _time_each("sweep-bwd", workload, n, BACKWARD_CANDIDATES, run, args)


def _sort_key(row):
    return row["workload"], row["ms"] if isinstance(row["ms"], float) else float("inf")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, nargs="+", default=[8192, 32768])
    parser.add_argument("--workloads", nargs="+", choices=wl.WORKLOADS, default=list(wl.WORKLOADS))
    parser.add_argument("--kernel-times", action="store_true")
    parser.add_argument("--profile-calls", type=int, default=5)
    parser.add_argument("--sweep", action="store_true")
    parser.add_argument("--sweep-backward", action="store_true")
    parser.add_argument("--sweep-n", type=int, default=8192)
    parser.add_argument("--sweep-workloads", nargs="+", choices=wl.WORKLOADS, default=["dense", "high"])
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--rep", type=int, default=40)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    print(f"{torch.cuda.get_device_name()} torch {torch.__version__} triton {triton.__version__}", flush=True)

    result = {"cases": [], "sweep": [], "sweep_backward": []}
    for n in args.n:
        for workload in args.workloads:
            row = profile_case(workload, n, args)
            result["cases"].append(row)
            print(json.dumps(row), flush=True)
    if args.sweep:
        for workload in args.sweep_workloads:
            result["sweep"] += sweep_configs(workload, args.sweep_n, args)
    if args.sweep_backward:
        for workload in args.sweep_workloads:
            result["sweep_backward"] += sweep_backward(workload, args.sweep_n, args)
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "profile.json").write_text(json.dumps(result, indent=1))

    print("\n| workload | N | FA2 fwd / fwd+bwd | ours fwd (rowmax) | ours fwd+bwd | ours bwd (lists) "
          "| fwd / FA2 | fwd+bwd / FA2 | tiles listed / zero / visible |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in result["cases"]:
        print(f"| {r['workload']} | {r['n']} | {r['fa2_fwd']:.2f} / {r['fa2_fwdbwd']:.2f} "
              f"| {r['ours_fwd']:.2f} ({r['ours_rowmax']:.2f}) | {r['ours_fwdbwd']:.2f} "
              f"| {r['ours_bwd']:.2f} ({r['ours_bwd_lists']:.3f}) | {r['ours_fwd'] / r['fa2_fwd']:.2f} "
              f"| {r['ours_fwdbwd'] / r['fa2_fwdbwd']:.2f} "
              f"| {r['tiles_listed'] / r['tiles_visible']:.1%} / {r['tiles_zero'] / r['tiles_visible']:.1%} "
              f"/ {r['tiles_visible']} |")
    if args.kernel_times:
        print("\n| workload | N | impl | kernel | ms per fwd+bwd | launches |")
        print("|---|---|---|---|---|---|")
        for r in result["cases"]:
            for impl, rows in r["kernels"].items():
                total = sum(ms for _, ms, _ in rows)
                print(f"| {r['workload']} | {r['n']} | {impl} | (all kernels) | {total:.3f} | "
                      f"{sum(c for _, _, c in rows)} |")
                for name, ms, launches in rows:
                    print(f"| {r['workload']} | {r['n']} | {impl} | `{name[:60]}` | {ms:.3f} | {launches} |")
    if result["sweep"]:
        print("\n| workload | config | fwd ms |")
        print("|---|---|---|")
        for r in sorted(result["sweep"], key=_sort_key):
            c = r["config"]
            text = f"NBINS={c['NBINS']} SW={c['MAX_SWEEPS']} U={c['EDGE_UNROLL']} w={c['num_warps']} s={c['num_stages']}"
            ms = f"{r['ms']:.2f}" if isinstance(r["ms"], float) else r["ms"]
            print(f"| {r['workload']} | {text} | {ms} |")
    if result["sweep_backward"]:
        print("\n| workload | backward config | bwd ms |")
        print("|---|---|---|")
        for r in sorted(result["sweep_backward"], key=_sort_key):
            ms = f"{r['ms']:.2f}" if isinstance(r["ms"], float) else r["ms"]
            print(f"| {r['workload']} | {tuple(r['config'])} | {ms} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
