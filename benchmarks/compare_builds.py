"""Our kernels from two or more builds of this package, timed side by side in one process.

A kernel change is judged against the build before it on the same GPU, the same inputs
and the same clock: timings from separate runs drift by a few percent, as much as many
changes gain. Each build is a folder that ``pip install --target`` filled:

    git archive <base commit> | (mkdir -p /tmp/base && tar -x -C /tmp/base)
    python -m pip install -q --no-deps --no-build-isolation --target /tmp/base_site /tmp/base
    python -m pip install -q --no-deps --no-build-isolation --target /tmp/new_site .
    python benchmarks/compare_builds.py base=/tmp/base_site new=/tmp/new_site

For each case (workload:N, bf16, B=1, H=16, D=128, causal, alpha=1.5, inputs from
workloads.py) it times, per build, the max sweep alone (``kernels.forward.max_sweep``),
the forward (``attention_forward``: every forward kernel) and the backward
(``attention_backward`` on that build's own tau and tile_max). ``--rounds`` rounds
alternate the builds and each keeps its best round (do_bench median, ms). Every build
after the first is compared with the first: ratios, and whether its outputs (out, tau,
tile_max, the three gradients) are bitwise equal, else their largest differences. Each
case's rows print as soon as its rounds end, so a run that a time limit cuts short still
reports the cases it finished. ``--rounds 1`` once showed a build's unchanged backward
1.78x slower at mid 4096 (H200), where three rounds gave 1.000: report three or more.

``--device cpu`` runs the same on CPU tensors under TRITON_INTERPRET=1 with one timed
call each: a check of the script, not a measurement.
"""

import argparse
import importlib
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

ALPHA = 1.5
DEFAULT_CASES = ("mid:8192", "mid:32768", "high:32768", "dense:8192")


def load_build(site: str) -> dict:
    """The forward and backward kernel modules of the build installed in ``site``, and
    every adasplash_compile module it imported.

    Modules of earlier builds are dropped from sys.modules first, so each build imports
    its own copy; the kernel objects stay alive through the returned references. The
    forward imports kernels/candidates.py when it runs, by name: ``in_build`` puts the
    build's own modules back into sys.modules before each of its calls.
    """
    if not (Path(site) / "adasplash_compile" / "kernels" / "forward.py").is_file():
        raise SystemExit(f"compare_builds: {site!r} holds no installed adasplash_compile (pip install --target)")
    for name in _package_modules():
        del sys.modules[name]
    sys.path.insert(0, site)
    try:
        forward = importlib.import_module("adasplash_compile.kernels.forward")
        backward = importlib.import_module("adasplash_compile.kernels.backward")
        if (Path(site) / "adasplash_compile" / "kernels" / "candidates.py").is_file():
            importlib.import_module("adasplash_compile.kernels.candidates")
    finally:
        sys.path.remove(site)
    modules = {name: sys.modules[name] for name in _package_modules()}
    return {"forward": forward, "backward": backward, "modules": modules}


def _package_modules() -> list:
    return [name for name in sys.modules if name == "adasplash_compile" or name.startswith("adasplash_compile.")]


def in_build(build: dict, fn):
    """fn, called with build's modules in sys.modules."""
    def call():
        sys.modules.update(build["modules"])
        return fn()

    return call


def parse_case(text: str) -> tuple:
    import workloads as wl

    workload, _, n = text.partition(":")
    if workload not in wl.WORKLOADS or not n.isdigit() or int(n) < 1:
        raise argparse.ArgumentTypeError(f"a case is workload:N with workload in {wl.WORKLOADS}, got {text!r}")
    return workload, int(n)


def parse_build(text: str) -> tuple:
    name, sep, site = text.partition("=")
    if not sep or not name or not site:
        raise argparse.ArgumentTypeError(f"a build is name=site-folder, got {text!r}")
    return name, site


def make_timer(device: str):
    if device == "cuda":
        from triton.testing import do_bench

        return lambda fn: do_bench(fn, warmup=10, rep=60, return_mode="median")

    def once(fn) -> float:
        start = time.perf_counter()
        fn()
        return (time.perf_counter() - start) * 1e3

    return once


def run_build(build: dict, q, k, v, grad, scale: float) -> tuple:
    """(max sweep, forward, backward) callables of one build, its outputs and its peak
    memory (MiB above what was allocated before: the forward's, and the forward's and
    backward's together with the forward's outputs kept; None on the CPU). A build's
    forward returns out and then what its backward takes after q, k and v (tau and
    tile_max, and u_value_mean since it exists), so builds from before and after it compare."""
    import torch

    fwd, bwd = build["forward"], build["backward"]
    on_cuda = q.is_cuda
    if on_cuda:
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    out, *state = in_build(build, lambda: fwd.attention_forward(q, k, v, ALPHA, True, scale, None))()
    if on_cuda:
        forward_peak = torch.cuda.max_memory_allocated() - before
    grads = in_build(build, lambda: bwd.attention_backward(grad, q, k, v, *state, ALPHA, True, scale, None))()
    peaks = None
    if on_cuda:
        peaks = (forward_peak / 2**20, (torch.cuda.max_memory_allocated() - before) / 2**20)
    calls = tuple(in_build(build, call) for call in (
        lambda: fwd.max_sweep(q, k, ALPHA, True, scale),
        lambda: fwd.attention_forward(q, k, v, ALPHA, True, scale, None),
        lambda: bwd.attention_backward(grad, q, k, v, *state, ALPHA, True, scale, None),
    ))
    return calls, (out, *state[:2], *grads), peaks


def difference(base: tuple, other: tuple) -> str:
    """'bitwise equal', or the largest |difference| of each output that differs."""
    import torch

    names = ("out", "tau", "tile_max", "dq", "dk", "dv")
    differing = []
    for name, a, b in zip(names, base, other):
        if torch.equal(a, b):
            continue
        if name == "tile_max":
            same_support = bool((torch.isfinite(a) == torch.isfinite(b)).all())
            differing.append(f"tile_max support {'same' if same_support else 'differs'}")
            continue
        finite = torch.isfinite(a) & torch.isfinite(b)
        gap = (a.float() - b.float()).abs().masked_fill(~finite, 0).max().item()
        differing.append(f"{name} {gap:.1e}")
    return "bitwise equal" if not differing else ", ".join(differing)


def compare(builds: dict, cases: list, rounds: int, device: str):
    """Yields each case's rows as soon as its rounds are done, so that a run cut short by a
    time limit still reports the cases it finished."""
    import torch
    import workloads as wl

    timer = make_timer(device)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    for workload, n in cases:
        rows = []
        q, k, v = wl.make_inputs(workload, n, dtype=dtype, device=device)
        grad = torch.randn_like(q)
        scale = q.shape[-1] ** -0.5
        runs = {name: run_build(build, q, k, v, grad, scale) for name, build in builds.items()}
        best = {name: [float("inf")] * 3 for name in builds}
        for _ in range(rounds):
            for name, (calls, _, _) in runs.items():
                best[name] = [min(b, timer(call)) for b, call in zip(best[name], calls)]
        # (max sweep, forward, backward, forward + backward) per build
        times = {name: [*b, b[1] + b[2]] for name, b in best.items()}
        first = next(iter(builds))
        for name in builds:
            rows.append({
                "case": f"{workload} {n}", "build": name, "ms": times[name],
                "ratio": [t / b for t, b in zip(times[name], times[first])],
                "outputs": "reference" if name == first else difference(runs[first][1], runs[name][1]),
                "peaks": runs[name][2],
            })
        del q, k, v, grad, runs
        if device == "cuda":
            torch.cuda.empty_cache()
        yield rows


TABLE_HEADER = ("| case | build | max sweep ms | forward ms | backward ms | fwd+bwd ms | ratio fwd / bwd / fwd+bwd "
                "| peak MiB fwd / fwd+bwd | outputs |\n|---|---|---|---|---|---|---|---|---|")


def render(rows: list) -> str:
    """The table lines of rows, without TABLE_HEADER."""
    lines = []
    for row in rows:
        times = " | ".join(f"{t:.3f}" for t in row["ms"])
        ratio = " / ".join(f"{r:.3f}" for r in row["ratio"][1:])
        peaks = "-" if row["peaks"] is None else " / ".join(f"{p:.0f}" for p in row["peaks"])
        lines.append(f"| {row['case']} | {row['build']} | {times} | {ratio} | {peaks} | {row['outputs']} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("builds", nargs="+", type=parse_build, help="name=site-folder, the first is the reference")
    parser.add_argument("--cases", nargs="+", type=parse_case, default=None,
                        help=f"workload:N (default {' '.join(DEFAULT_CASES)})")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error(f"--rounds must be at least 1, got {args.rounds}")
    names = [name for name, _ in args.builds]
    if len(set(names)) != len(names):
        parser.error(f"build names must differ, got {names}")
    if args.device == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        parser.error("--device cpu runs the kernels under Triton's interpreter: set TRITON_INTERPRET=1")
    cases = args.cases or [parse_case(c) for c in DEFAULT_CASES]
    builds = {name: load_build(site) for name, site in args.builds}
    print(TABLE_HEADER, flush=True)
    for rows in compare(builds, cases, args.rounds, args.device):
        print(render(rows), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
