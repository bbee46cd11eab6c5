"""AdaSplash-2 attention against dense and sparse baselines, side by side in one process.

Implementations (``--impls``):
  ours           ``adasplash_compile.adasplash`` eager (custom op + Triton kernels)
  ours_compiled  the same call under ``torch.compile(fullgraph=True)``, one static graph per
                 N (``--dynamic``: automatic dynamic shapes); its fwd+bwd runs the
                 compiled backward graph
  fa2            SDPA pinned to ``SDPBackend.FLASH_ATTENTION`` (FlashAttention-2), softmax
  flex           compiled ``flex_attention`` with a causal ``BlockMask`` (none when
                 non-causal), softmax
  adasplash_v2   the ``adasplash`` package (PyPI 0.2.2), ``adasplash_v2(q, k, v)``:
                 causal 1.5-entmax only; a row says why wherever it cannot run

Per cell (implementation x workload x N): forward ms and forward+backward ms (median of
``triton.testing.do_bench``), their ratio to FA2 on the same inputs, the peak memory of
one fwd+bwd above what was allocated before it, and, per workload and N, the block
sparsity: the fraction of causal-visible 64x64 tiles of P that the kernels skip, read
from the op's ``tau`` and ``tile_max`` (no N x N tensor is ever formed).

Also: accuracy at N=1024 against float64 references (exact sort-based 1.5-entmax for
the entmax implementations, softmax for FA2/flex); extra rows (non-causal, alpha=2,
GQA 16q/4kv, D=64); and time to first call for ours in fresh subprocesses, with an
empty and then a warm compiler cache.

Outputs under ``--out``: results.md, results.json (every number, written as the run
goes, so a crash keeps what was measured), relative_to_fa2.png. The main tables are
printed last. ``--check-cpu`` runs this file's CPU self-checks (workload generators,
the sparsity count against a dense P, the float64 references) and needs no GPU.
"""

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable, Optional

import torch

try:  # run as `python benchmarks/bench_attention.py` or imported as benchmarks.bench_attention
    from benchmarks import workloads as wl
except ImportError:
    import workloads as wl

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "benchmarks" / "results"

MAIN_N = (4096, 8192, 16384, 32768)
QUICK_N = (1024, 2048)
EXTRA_N = (8192, 32768)
ACCURACY_N = 1024
IMPLS = ("ours", "ours_compiled", "fa2", "flex", "adasplash_v2")
LABELS = {
    "ours": "ours",
    "ours_compiled": "ours (compiled)",
    "fa2": "FA2 (SDPA)",
    "flex": "FlexAttention",
    "adasplash_v2": "adasplash_v2 (PyPI)",
}
BASELINE = "fa2"
FIRST_CALL_MARK = "FIRST_CALL_JSON "

# Messages after which the CUDA context is unusable for the rest of the process.
_FATAL_CUDA = (
    "illegal memory access",
    "device-side assert",
    "unspecified launch failure",
    "misaligned address",
    "illegal instruction",
    "CUDA error: an illegal",
)


@dataclass(frozen=True)
class Case:
    """One input configuration; ``variant`` names it in tables."""

    workload: str
    n: int
    alpha: float = 1.5
    is_causal: bool = True
    q_heads: int = 16
    kv_heads: int = 16
    head_dim: int = 128
    batch: int = 1
    variant: str = "main"

    @property
    def scale(self) -> float:
        return 1.0 / math.sqrt(self.head_dim)

    @property
    def gqa(self) -> bool:
        return self.q_heads != self.kv_heads


def extra_cases(n: int, workload: str = "mid") -> list[Case]:
    """The extra rows: each changes one setting of the main (causal, alpha 1.5) case."""
    base = Case(workload, n)
    return [
        replace(base, is_causal=False, variant="non-causal"),
        replace(base, alpha=2.0, variant="alpha=2 (sparsemax)"),
        replace(base, kv_heads=4, variant="GQA 16q/4kv"),
        replace(base, head_dim=64, variant="D=64"),
    ]


# ----------------------------------------------------------------------------------------
# Block sparsity from the op's outputs
# ----------------------------------------------------------------------------------------


def tile_sparsity(tile_max: torch.Tensor, n_queries: int, n_keys: int, is_causal: bool,
                  tile: int = 64) -> tuple[int, int]:
    """(all-zero tiles, visible tiles) of P from ``attention_fwd``'s tile_max.

    tile_max: float32 (B, H, cdiv(Nq, tile) + 1, cdiv(Nk, tile) + 1), per 64x64 tile the
    largest z among its nonzeros of P, -inf for a tile without any (and in the padding
    row and column): the record the backward skips tiles by. A tile is visible when the
    mask (bottom-right causal alignment) lets any of its rows see any of its keys.
    Memory: O(B * H * tiles), never O(N^2).
    """
    b, h = tile_max.shape[:2]
    row_tiles, key_tiles = -(-n_queries // tile), -(-n_keys // tile)
    last_row = torch.clamp((torch.arange(row_tiles) + 1) * tile, max=n_queries) - 1
    first_key = torch.arange(key_tiles) * tile
    if is_causal:
        visible = first_key[None, :] <= last_row[:, None] + (n_keys - n_queries)
    else:
        visible = torch.ones(row_tiles, key_tiles, dtype=torch.bool)
    nonzero = (tile_max[:, :, :row_tiles, :key_tiles] > float("-inf")).cpu()
    zero = visible & ~nonzero
    return int(zero.sum()), int(visible.sum()) * b * h


def measure_sparsity(case: Case, q, k, v) -> dict:
    """Zero-tile fraction from one forward of our op on these inputs."""
    try:
        with torch.no_grad():
            outputs = torch.ops.adasplash.attention_fwd(q, k, v, case.alpha, case.is_causal, case.scale, None)
        zero, visible = tile_sparsity(outputs[2], q.shape[2], k.shape[2], case.is_causal)
        del outputs
        return {"zero_tiles": zero, "visible_tiles": visible, "fraction": zero / max(visible, 1)}
    except Exception as exc:  # noqa: BLE001 - any failure becomes the cell's text
        return {"error": _error_text(exc)}


# ----------------------------------------------------------------------------------------
# float64 references, in row chunks (O(chunk * N) memory per head)
# ----------------------------------------------------------------------------------------


def _entmax15_exact(s: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Exact 1.5-entmax of scores s over the visible entries (sort-based, Peters et al.
    2019, Alg. 2): z = s/2, sort descending, tau_k = mean_k - sqrt(max(0, (1 - k var_k)/k))
    with var_k the variance of the top k, support = #k with tau_k <= z_(k)."""
    z = torch.where(mask, s / 2, float("-inf"))
    z_sorted, _ = z.sort(dim=-1, descending=True)
    n_valid = mask.sum(dim=-1, keepdim=True)
    k = torch.arange(1, z.shape[-1] + 1, device=z.device, dtype=z.dtype)
    in_range = k <= n_valid
    # Masked entries sort last; zeroing them leaves every prefix sum with k <= n_valid exact.
    zs = torch.where(in_range, z_sorted, 0.0)
    mean = zs.cumsum(-1) / k
    mean_sq = (zs * zs).cumsum(-1) / k
    tau_k = mean - torch.sqrt(((1 - k * (mean_sq - mean * mean)) / k).clamp_min(0))
    support = ((tau_k <= zs) & in_range).sum(dim=-1, keepdim=True)
    tau = tau_k.gather(-1, (support - 1).clamp_min(0))
    p = (z - tau).clamp_min(0).square()
    return torch.where(n_valid > 0, p, 0.0)


def reference_attention(q, k, v, *, kind: str, is_causal: bool, rows_per_chunk: int = 256, tile: int = 64):
    """float64 attention on q's device; kind 'entmax15' or 'softmax'.

    Returns (out float64 (B, Hq, N, D), stats) where stats has the fraction of visible
    weights that are exactly zero and the fraction of visible tile x tile blocks that
    are all zero (N and rows_per_chunk multiples of ``tile``; else None).
    """
    batch, q_heads, n_queries, head_dim = q.shape
    group = q_heads // k.shape[1]
    kd = k.double().repeat_interleave(group, dim=1) if group > 1 else k.double()
    vd = v.double().repeat_interleave(group, dim=1) if group > 1 else v.double()
    n_keys = kd.shape[2]
    scale = 1.0 / math.sqrt(head_dim)
    out = torch.empty(batch, q_heads, n_queries, head_dim, dtype=torch.float64, device=q.device)
    cols = torch.arange(n_keys, device=q.device)
    tiled = n_queries % tile == 0 and n_keys % tile == 0 and rows_per_chunk % tile == 0
    zero_weights = visible_weights = zero_tiles = visible_tiles = 0
    for start in range(0, n_queries, rows_per_chunk):
        rows = torch.arange(start, min(start + rows_per_chunk, n_queries), device=q.device)
        s = torch.matmul(q[:, :, rows].double(), kd.transpose(-1, -2)) * scale
        if is_causal:  # bottom-right aligned, as FlashAttention-2
            mask = cols[None, :] <= rows[:, None] + (n_keys - n_queries)
        else:
            mask = torch.ones(rows.numel(), n_keys, dtype=torch.bool, device=q.device)
        mask = mask.expand_as(s)
        if kind == "softmax":
            p = torch.softmax(s.masked_fill(~mask, float("-inf")), dim=-1)
        elif kind == "entmax15":
            p = _entmax15_exact(s, mask)
            p = p / p.sum(-1, keepdim=True).clamp_min(torch.finfo(p.dtype).tiny)
        else:
            raise ValueError(f"kind: expected 'entmax15' or 'softmax', got {kind!r}")
        out[:, :, rows] = torch.matmul(p, vd)
        is_zero = (p == 0) & mask
        zero_weights += int(is_zero.sum())
        visible_weights += int(mask.sum())
        if tiled and rows.numel() % tile == 0:
            shape = (batch, q_heads, rows.numel() // tile, tile, n_keys // tile, tile)
            vis_t = mask.reshape(shape).any(dim=3).any(dim=-1)
            nonzero_t = (mask & ~is_zero).reshape(shape).any(dim=3).any(dim=-1)
            zero_tiles += int((vis_t & ~nonzero_t).sum())
            visible_tiles += int(vis_t.sum())
        del s, p, mask, is_zero
    stats = {
        "zero_weight_fraction": zero_weights / max(visible_weights, 1),
        "zero_tile_fraction": (zero_tiles / max(visible_tiles, 1)) if tiled else None,
    }
    return out, stats


# ----------------------------------------------------------------------------------------
# Implementations
# ----------------------------------------------------------------------------------------


class Unsupported(Exception):
    """The implementation does not compute this case (not a failure of the run)."""


def _causal_mask_mod(b, h, q_idx, kv_idx):
    return q_idx >= kv_idx


class Implementations:
    """Builds a ``fn(q, k, v) -> out`` per implementation and case; caches compiled
    functions, block masks and the peer import across cases."""

    def __init__(self, dynamic: bool = False):
        # False: one static graph per N; None: torch.compile's automatic dynamic shapes.
        self._dynamic = None if dynamic else False
        self._compiled = {}
        self._block_masks = {}
        self._flex = None
        self._make_block_mask = None
        self._peer = None
        self._peer_error = None

    def build(self, impl: str, case: Case) -> Callable:
        return getattr(self, f"_build_{impl}")(case)

    def _build_ours(self, case):
        from adasplash_compile import adasplash

        alpha, is_causal = case.alpha, case.is_causal
        return lambda q, k, v: adasplash(q, k, v, alpha=alpha, is_causal=is_causal)

    def _build_ours_compiled(self, case):
        key = (case.alpha, case.is_causal, case.q_heads, case.kv_heads, case.head_dim)
        if key not in self._compiled:
            eager = self._build_ours(case)
            # By default each N gets its own static graph, as a fixed-length training run
            # would; one fn per setting keeps the graphs per fn few.
            self._compiled[key] = torch.compile(eager, fullgraph=True, dynamic=self._dynamic)
        return self._compiled[key]

    def _build_fa2(self, case):
        import torch.nn.functional as F
        from torch.nn.attention import SDPBackend, sdpa_kernel

        is_causal, gqa = case.is_causal, case.gqa

        def fa2(q, k, v):
            with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                return F.scaled_dot_product_attention(q, k, v, is_causal=is_causal, enable_gqa=gqa)

        return fa2

    def _build_flex(self, case):
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention

        if self._flex is None:
            self._flex = torch.compile(flex_attention, dynamic=self._dynamic)
            # Compiled, create_block_mask never materialises the N x N mask.
            self._make_block_mask = torch.compile(create_block_mask)
        block_mask = None
        if case.is_causal:
            if case.n not in self._block_masks:
                self._block_masks[case.n] = self._make_block_mask(
                    _causal_mask_mod, None, None, case.n, case.n, device="cuda"
                )
            block_mask = self._block_masks[case.n]
        flex, gqa = self._flex, case.gqa
        return lambda q, k, v: flex(q, k, v, block_mask=block_mask, enable_gqa=gqa)

    def _build_adasplash_v2(self, case):
        if not case.is_causal or case.alpha != 1.5:
            raise Unsupported("adasplash_v2 computes causal 1.5-entmax only")
        if self._peer is None and self._peer_error is None:
            try:
                from adasplash import adasplash_v2

                self._peer = adasplash_v2
            except Exception as exc:  # noqa: BLE001 - ImportError or anything its import raises
                self._peer_error = f"import failed: {_error_text(exc)}"
        if self._peer_error is not None:
            raise Unsupported(self._peer_error)
        peer = self._peer
        return lambda q, k, v: peer(q, k, v)


# ----------------------------------------------------------------------------------------
# Measurement
# ----------------------------------------------------------------------------------------


def _error_text(exc: BaseException, limit: int = 600) -> str:
    text = f"{type(exc).__name__}: {exc}".strip()
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _is_fatal(exc: BaseException) -> bool:
    return any(marker in str(exc) for marker in _FATAL_CUDA)


def _sync():
    torch.cuda.synchronize()


def _timed_first_call(fn) -> float:
    _sync()
    start = time.perf_counter()
    fn()
    _sync()
    return time.perf_counter() - start


def _median_ms(fn, first_call_s: float, warmup: int, rep: int, min_samples: int) -> float:
    """do_bench's median, over at least about min_samples timed calls.

    do_bench sizes its runs from rep / (its own estimate of one call): at rep = 50 ms a
    90 ms call (dense, N = 32768, forward+backward) got a single sample. One more synced
    call, after the first one (which compiles), sizes rep and warmup to min_samples and
    one call.
    """
    from triton.testing import do_bench

    call_ms = min(first_call_s, _timed_first_call(fn)) * 1e3
    return do_bench(fn, warmup=max(warmup, call_ms), rep=max(rep, min_samples * call_ms), return_mode="median")


def forward_call(fn, q, k, v) -> Callable:
    """The timed forward: fn on (q, k, v) under no_grad."""
    def forward():
        with torch.no_grad():
            return fn(q, k, v)
    return forward


def step_call(fn, q, k, v, grad) -> Callable:
    """The timed forward+backward: out = fn on leaves copied from (q, k, v), then their
    gradients for grad."""
    qg, kg, vg = (t.detach().requires_grad_() for t in (q, k, v))

    def step():
        out = fn(qg, kg, vg)
        return torch.autograd.grad(out, (qg, kg, vg), grad)
    return step


def measure_cell(fn, q, k, v, grad, *, warmup: int, rep: int, min_samples: int) -> dict:
    """Forward and forward+backward medians (ms), first-call times (s), fwd+bwd peak memory."""
    cell = {}
    forward = forward_call(fn, q, k, v)

    try:
        cell["first_fwd_s"] = _timed_first_call(forward)
        cell["fwd_ms"] = _median_ms(forward, cell["first_fwd_s"], warmup, rep, min_samples)
    except Exception as exc:  # noqa: BLE001
        cell["fwd_error"] = _error_text(exc)
        if _is_fatal(exc):
            cell["fatal"] = True
            return cell
        torch.cuda.empty_cache()

    step = step_call(fn, q, k, v, grad)
    try:
        cell["first_fwd_bwd_s"] = _timed_first_call(step)
        cell["fwd_bwd_ms"] = _median_ms(step, cell["first_fwd_bwd_s"], warmup, rep, min_samples)
        _sync()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        grads = step()
        _sync()
        cell["peak_fwd_bwd_mib"] = (torch.cuda.max_memory_allocated() - before) / 2**20
        del grads
    except Exception as exc:  # noqa: BLE001
        cell["fwd_bwd_error"] = _error_text(exc)
        if _is_fatal(exc):
            cell["fatal"] = True
        else:
            torch.cuda.empty_cache()
    return cell


def compiled_against_eager(eager, compiled, q, k, v, grad, *, rounds: int, warmup: int, rep: int,
                           min_samples: int) -> dict:
    """Best-of-rounds medians (ms) of our eager and compiled op, forward and forward+backward,
    the two alternating round by round on the same inputs.

    The main tables time each implementation once, one after the other, so clock and
    thermal drift between the two can read as a few percent either way; alternating and
    keeping each one's best round leaves the difference between the builds.
    """
    best = {}
    modes = (("fwd", lambda fn: forward_call(fn, q, k, v)), ("fwd_bwd", lambda fn: step_call(fn, q, k, v, grad)))
    for mode, wrap in modes:
        calls = {"eager": wrap(eager), "compiled": wrap(compiled)}
        for _ in range(rounds):
            for build, call in calls.items():
                ms = _median_ms(call, _timed_first_call(call), warmup, rep, min_samples)
                key = f"{mode}_{build}_ms"
                best[key] = min(best.get(key, float("inf")), ms)
        best[f"{mode}_ratio"] = best[f"{mode}_compiled_ms"] / best[f"{mode}_eager_ms"]
    return best


class Run:
    """Holds the results dict, writes it as it grows, and stops GPU work after a fatal error."""

    def __init__(self, args):
        self.args = args
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.impls = Implementations(dynamic=args.dynamic)
        self.fatal = None
        self.start = time.perf_counter()
        self.results = {
            "meta": _environment(args),
            "workloads": wl.describe(),
            "accuracy": [],
            "sparsity": [],
            "cells": [],
            "first_call": None,
            "compiled_vs_eager": [],
            "skipped": [],
        }

    def over_budget(self, what: str) -> bool:
        """True (and noted) once the run has used --budget-s; later sections are skipped."""
        elapsed = time.perf_counter() - self.start
        if elapsed <= self.args.budget_s:
            return False
        self.results["skipped"].append(what)
        self.log(f"skipped {what}: over the time budget")
        return True

    def _fatal_text(self, error: Optional[str], where: str) -> bool:
        """Marks the run fatal when an error text says the CUDA context is lost."""
        if error and any(marker in error for marker in _FATAL_CUDA):
            self.fatal = f"{where}: {error}"
            self.log(f"FATAL CUDA error, stopping GPU measurements: {self.fatal}")
        return self.fatal is not None

    def log(self, msg: str):
        print(f"[{time.perf_counter() - self.start:7.1f}s] {msg}", flush=True)

    def save(self):
        self.results["meta"]["elapsed_s"] = time.perf_counter() - self.start
        self.results["meta"]["fatal_error"] = self.fatal
        (self.out / "results.json").write_text(json.dumps(self.results, indent=1, default=str))
        (self.out / "results.md").write_text(render_markdown(self.results))

    # -- one case: sparsity, then every implementation on the same inputs --------------
    def run_case(self, case: Case):
        if self.fatal or self.over_budget(f"{case.variant} {case.workload} N={case.n}"):
            return
        q, k, v = wl.make_inputs(
            case.workload,
            case.n,
            batch=case.batch,
            q_heads=case.q_heads,
            kv_heads=case.kv_heads,
            head_dim=case.head_dim,
            device="cuda",
        )
        grad = torch.randn(
            q.shape, generator=torch.Generator("cuda").manual_seed(case.n), device="cuda"
        ).to(q.dtype)
        sparsity = measure_sparsity(case, q, k, v)
        self.results["sparsity"].append({**asdict(case), **sparsity})
        if self._fatal_text(sparsity.get("error"), f"sparsity at {case.variant} {case.workload} N={case.n}"):
            self.save()
            return
        cells = []
        built = {}
        order = sorted(self.args.impls, key=lambda name: name != BASELINE)  # baseline first
        for impl in order:
            if self.fatal:
                break
            record = {"impl": impl, **asdict(case)}
            try:
                fn = self.impls.build(impl, case)
            except Unsupported as exc:
                record["unsupported"] = str(exc)
            except Exception as exc:  # noqa: BLE001
                record["fwd_error"] = record["fwd_bwd_error"] = _error_text(exc)
            else:
                built[impl] = fn
                record.update(measure_cell(fn, q, k, v, grad, warmup=self.args.warmup, rep=self.args.rep,
                                           min_samples=self.args.min_samples))
                if record.pop("fatal", False):
                    self.fatal = f"{impl} at {case.variant} {case.workload} N={case.n}: " + (
                        record.get("fwd_bwd_error") or record.get("fwd_error", "")
                    )
                    # Kernel errors surface at the next sync: the kernel at fault may be
                    # the one launched just before this implementation's.
                    self.log(f"FATAL CUDA error, stopping GPU measurements: {self.fatal}")
            cells.append(record)
            self.log(f"{case.variant:>20} {case.workload:>5} N={case.n:<6} {impl:<14} {_cell_text(record, None)}")
        base = next((c for c in cells if c["impl"] == BASELINE), {})
        for record in cells:
            for key in ("fwd_ms", "fwd_bwd_ms"):
                if record.get(key) is not None and base.get(key):
                    record["ratio_" + key[:-3]] = record[key] / base[key]
        self.results["cells"].extend(cells)
        measured = {c["impl"] for c in cells if c.get("fwd_ms") is not None and c.get("fwd_bwd_ms") is not None}
        if self.args.compiled_rounds and {"ours", "ours_compiled"} <= measured and not self.fatal:
            try:
                ratios = compiled_against_eager(built["ours"], built["ours_compiled"], q, k, v, grad,
                                                rounds=self.args.compiled_rounds, warmup=self.args.warmup,
                                                rep=self.args.rep, min_samples=self.args.min_samples)
            except Exception as exc:  # noqa: BLE001
                ratios = {"error": _error_text(exc)}
            self.results["compiled_vs_eager"].append({**asdict(case), **ratios})
            self.log(f"{case.variant:>20} {case.workload:>5} N={case.n:<6} compiled/eager "
                     f"{ratios.get('fwd_ratio', float('nan')):.3f} / {ratios.get('fwd_bwd_ratio', float('nan')):.3f}")
        del q, k, v, grad, built
        self.save()

    # -- accuracy at a small N -----------------------------------------------------------
    def run_accuracy(self):
        for workload in self.args.workloads:
            if self.fatal or self.over_budget(f"accuracy {workload}"):
                return
            case = Case(workload, ACCURACY_N, variant="accuracy")
            q, k, v = wl.make_inputs(workload, case.n, device="cuda")
            refs = {}
            row = {"workload": workload, "n": case.n, "errors": {}}
            for kind in ("entmax15", "softmax"):
                refs[kind], stats = reference_attention(q, k, v, kind=kind, is_causal=True)
                if kind == "entmax15":
                    row["reference"] = stats
            ref = refs["entmax15"]
            row["bf16_rounding_of_ref"] = (ref.to(torch.bfloat16).double() - ref).abs().max().item()
            row["op_sparsity"] = measure_sparsity(case, q, k, v)
            self._fatal_text(row["op_sparsity"].get("error"), f"sparsity at accuracy {workload}")
            for impl in self.args.impls:
                if self.fatal:
                    break
                entry = {"reference": "softmax" if impl in ("fa2", "flex") else "entmax15"}
                try:
                    fn = self.impls.build(impl, case)
                    with torch.no_grad():
                        out = fn(q, k, v).double()
                    ref = refs[entry["reference"]]
                    entry["max_abs"] = (out - ref).abs().max().item()
                    entry["rel_fro"] = ((out - ref).norm() / ref.norm()).item()
                    entry["finite"] = bool(torch.isfinite(out).all())
                except Unsupported as exc:
                    entry["unsupported"] = str(exc)
                except Exception as exc:  # noqa: BLE001
                    entry["error"] = _error_text(exc)
                    if _is_fatal(exc):
                        self.fatal = f"{impl} at accuracy {workload}: {entry['error']}"
                row["errors"][impl] = entry
                if self.fatal:
                    break
            self.results["accuracy"].append(row)
            self.log(f"accuracy {workload}: " + ", ".join(
                f"{i}={e.get('max_abs', e.get('unsupported') or e.get('error'))}" for i, e in row["errors"].items()
            ))
            del q, k, v, refs
            self.save()

    # -- time to first call in fresh processes -------------------------------------------
    def run_first_call(self):
        n = self.args.first_call_n
        record = {"n": n, "workload": "mid", "runs": {}}
        with tempfile.TemporaryDirectory(prefix="adasplash-first-call-") as root:
            for mode in ("eager", "compiled"):
                cache = Path(root) / mode
                env = dict(os.environ)
                env["TRITON_CACHE_DIR"] = str(cache / "triton")
                env["TORCHINDUCTOR_CACHE_DIR"] = str(cache / "inductor")
                for state in ("fresh cache", "warm cache"):
                    if self.over_budget(f"first call {mode}/{state}"):
                        continue
                    left = self.args.budget_s - (time.perf_counter() - self.start)
                    timeout = int(max(30, min(self.args.first_call_timeout, left)))
                    self.log(f"first call: {mode}, {state}, N={n} (timeout {timeout} s)")
                    record["runs"][f"{mode}/{state}"] = _run_child(mode, n, env, timeout)
                    self.results["first_call"] = record
                    self.save()


def _run_child(mode: str, n: int, env: dict, timeout: int) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--first-call-child", mode, "--first-call-n", str(n)]
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=REPO)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout} s", "process_s": time.perf_counter() - start}
    result = {"process_s": time.perf_counter() - start}
    lines = [line for line in proc.stdout.splitlines() if line.startswith(FIRST_CALL_MARK)]
    if lines:
        result.update(json.loads(lines[-1][len(FIRST_CALL_MARK):]))
    else:
        result["error"] = f"exit {proc.returncode}: " + (proc.stderr or proc.stdout)[-800:]
    return result


def first_call_child(mode: str, n: int):
    """Runs in a fresh process: times ours' first calls at N, prints one JSON line."""
    report = {"mode": mode}
    t0 = time.perf_counter()
    from adasplash_compile import adasplash

    report["import_s"] = time.perf_counter() - t0
    case = Case("mid", n)
    q, k, v = wl.make_inputs("mid", n, device="cuda")
    grad = torch.randn_like(q)
    fn = lambda q, k, v: adasplash(q, k, v, alpha=case.alpha, is_causal=case.is_causal)  # noqa: E731
    if mode == "compiled":
        fn = torch.compile(fn, fullgraph=True, dynamic=False)
    for name, call in (("fwd", forward_call(fn, q, k, v)), ("fwd_bwd", step_call(fn, q, k, v, grad))):
        try:
            report[f"first_{name}_s"] = _timed_first_call(call)
            report[f"second_{name}_s"] = _timed_first_call(call)
        except Exception as exc:  # noqa: BLE001
            report[f"{name}_error"] = _error_text(exc)
            break
    print(FIRST_CALL_MARK + json.dumps(report), flush=True)


# ----------------------------------------------------------------------------------------
# Reporting
# ----------------------------------------------------------------------------------------


def _environment(args) -> dict:
    meta = {
        "args": {k: v for k, v in vars(args).items() if k != "first_call_child"},
        "budget_s": args.budget_s,
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "warmup_ms": args.warmup,
        "compile_dynamic": args.dynamic,
        "rep_ms": args.rep,
        "min_samples": args.min_samples,
        "compiled_rounds": args.compiled_rounds,
        "timing": "triton.testing.do_bench, median; fwd under no_grad; fwd+bwd = out + autograd.grad",
    }
    try:
        import triton

        meta["triton"] = triton.__version__
    except Exception:  # noqa: BLE001
        meta["triton"] = None
    if torch.cuda.is_available():
        meta["gpu"] = torch.cuda.get_device_name()
        meta["capability"] = ".".join(map(str, torch.cuda.get_device_capability()))
    return meta


def _short(text: str, limit: int = 70) -> str:
    text = " ".join(str(text).split()).replace("|", "\\|")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _fmt_ms(x) -> str:
    return "-" if x is None else (f"{x:.2f}" if x < 100 else f"{x:.0f}")


def _cell_text(c: Optional[dict], baseline: Optional[str] = BASELINE) -> str:
    """'fwd / fwd+bwd ms (ratio / ratio)', or why there is no number."""
    if c is None:
        return "-"
    if c.get("unsupported"):
        return "n/a: " + _short(c["unsupported"], 70)
    if c.get("fwd_ms") is None and c.get("fwd_bwd_ms") is None:
        return "error: " + _short(c.get("fwd_error") or c.get("fwd_bwd_error") or "?")
    text = f"{_fmt_ms(c.get('fwd_ms'))} / {_fmt_ms(c.get('fwd_bwd_ms'))}"
    if c.get("fwd_bwd_error"):
        text += " (bwd error: " + _short(c["fwd_bwd_error"], 50) + ")"
    if baseline is not None and c["impl"] != baseline:
        rf, rb = c.get("ratio_fwd"), c.get("ratio_fwd_bwd")
        if rf is not None or rb is not None:
            text += " ({} / {})".format(*("-" if r is None else f"{r:.2f}x" for r in (rf, rb)))
    return text


def _sparsity_text(s: Optional[dict]) -> str:
    if s is None:
        return "-"
    if "error" in s:
        return "error: " + _short(s["error"], 40)
    return f"{100 * s['fraction']:.1f}%"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def _index(results):
    cells = {}
    for c in results["cells"]:
        cells[(c["variant"], c["workload"], c["n"], c["impl"])] = c
    sparsity = {(s["variant"], s["workload"], s["n"]): s for s in results["sparsity"]}
    return cells, sparsity


def _impls_in(results) -> list[str]:
    seen = {c["impl"] for c in results["cells"]}
    for row in results["accuracy"]:
        seen |= set(row["errors"])
    return [i for i in IMPLS if i in seen]


def render_main_tables(results) -> list[str]:
    cells, sparsity = _index(results)
    impls = _impls_in(results)
    main = [c for c in results["cells"] if c["variant"] == "main"]
    lines = []
    for workload in dict.fromkeys(c["workload"] for c in main):
        ns = sorted({c["n"] for c in main if c["workload"] == workload})
        lines += ["", f"### {workload}: fwd ms / fwd+bwd ms (ratio to FA2: fwd / fwd+bwd)", ""]
        lines += _table(
            ["N", "skipped tiles"] + [LABELS[i] for i in impls],
            [
                [str(n), _sparsity_text(sparsity.get(("main", workload, n)))]
                + [_cell_text(cells.get(("main", workload, n, i))) for i in impls]
                for n in ns
            ],
        )
        lines += ["", f"Peak fwd+bwd memory above inputs, MiB ({workload})", ""]
        lines += _table(
            ["N"] + [LABELS[i] for i in impls],
            [
                [str(n)]
                + [
                    "-" if cells.get(("main", workload, n, i), {}).get("peak_fwd_bwd_mib") is None
                    else f"{cells[('main', workload, n, i)]['peak_fwd_bwd_mib']:.0f}"
                    for i in impls
                ]
                for n in ns
            ],
        )
    return lines


def render_extra_table(results) -> list[str]:
    cells, sparsity = _index(results)
    impls = _impls_in(results)
    extra = [c for c in results["cells"] if c["variant"] != "main"]
    if not extra:
        return []
    keys = list(dict.fromkeys((c["variant"], c["workload"], c["n"]) for c in extra))
    lines = ["", "### Extra rows: fwd ms / fwd+bwd ms (ratio to FA2); FA2/flex are softmax", ""]
    lines += _table(
        ["variant", "workload", "N", "skipped tiles"] + [LABELS[i] for i in impls],
        [
            [variant, workload, str(n), _sparsity_text(sparsity.get((variant, workload, n)))]
            + [_cell_text(cells.get((variant, workload, n, i))) for i in impls]
            for variant, workload, n in keys
        ],
    )
    return lines


def render_accuracy_table(results) -> list[str]:
    rows = results["accuracy"]
    if not rows:
        return []
    impls = _impls_in(results)

    def entry_text(e):
        if e is None:
            return "-"
        if "unsupported" in e:
            return "n/a: " + _short(e["unsupported"], 40)
        if "error" in e:
            return "error: " + _short(e["error"], 50)
        return f"{e['max_abs']:.2e} ({e['rel_fro']:.1e})" + ("" if e.get("finite", True) else " NON-FINITE")

    lines = [
        "",
        f"### Accuracy at N={rows[0]['n']} (causal, bf16 inputs): max |out - ref| (relative Frobenius)",
        "",
        "Reference in float64: exact 1.5-entmax for ours and adasplash_v2, softmax for FA2 and flex. "
        "'bf16 ref' is the max error of rounding the entmax reference itself to bf16.",
        "",
    ]

    def pct(x):
        return "-" if x is None else f"{100 * x:.1f}%"

    lines += _table(
        ["workload"] + [LABELS[i] for i in impls] + ["bf16 ref", "ref zero weights", "ref all-zero tiles", "op skipped tiles"],
        [
            [r["workload"]]
            + [entry_text(r["errors"].get(i)) for i in impls]
            + [
                f"{r.get('bf16_rounding_of_ref', float('nan')):.1e}",
                pct(r.get("reference", {}).get("zero_weight_fraction")),
                pct(r.get("reference", {}).get("zero_tile_fraction")),
                _sparsity_text(r.get("op_sparsity")),
            ]
            for r in rows
        ],
    )
    return lines


def render_first_call_table(results) -> list[str]:
    lines = []
    fc = results.get("first_call")
    if fc:
        lines += [
            "",
            f"### Time to first call, ours, fresh process (N={fc['n']}, {fc['workload']}), seconds",
            "",
            "Each run is a new Python process; 'fresh cache' starts from empty TRITON_CACHE_DIR and "
            "TORCHINDUCTOR_CACHE_DIR, 'warm cache' reuses what the fresh run wrote. 'second' is the "
            "next call, for scale.",
            "",
        ]

        def sec(x):
            return "-" if x is None else f"{x:.2f}"

        rows = []
        for name, run in fc["runs"].items():
            err = run.get("error") or run.get("fwd_error") or run.get("fwd_bwd_error")
            rows.append(
                [name, sec(run.get("process_s")), sec(run.get("import_s")), sec(run.get("first_fwd_s")),
                 sec(run.get("second_fwd_s")), sec(run.get("first_fwd_bwd_s")), sec(run.get("second_fwd_bwd_s")),
                 _short(err, 60) if err else ""]
            )
        lines += _table(
            ["run", "process", "import", "first fwd", "second fwd", "first fwd+bwd", "second fwd+bwd", "error"],
            rows,
        )
    in_process = [c for c in results["cells"] if c["variant"] == "main" and c["impl"] in ("ours", "ours_compiled")]
    if in_process:
        lines += [
            "",
            "### First call at each new N inside the benchmark process (caches warm from earlier N), seconds",
            "",
        ]
        keys = list(dict.fromkeys((c["workload"], c["n"]) for c in in_process))
        by = {(c["workload"], c["n"], c["impl"]): c for c in in_process}

        def pair(c):
            if c is None:
                return "-"
            f, b = c.get("first_fwd_s"), c.get("first_fwd_bwd_s")
            return f"{'-' if f is None else f'{f:.2f}'} / {'-' if b is None else f'{b:.2f}'}"

        lines += _table(
            ["workload", "N", "ours fwd / fwd+bwd", "ours (compiled) fwd / fwd+bwd"],
            [[w, str(n), pair(by.get((w, n, "ours"))), pair(by.get((w, n, "ours_compiled")))] for w, n in keys],
        )
    return lines


def render_compiled_table(results) -> list[str]:
    rows = results.get("compiled_vs_eager") or []
    if not rows:
        return []
    rounds = results["meta"].get("compiled_rounds")

    def pair(r, mode):
        if r.get("error"):
            return _short(r["error"])
        eager, compiled = r[f"{mode}_eager_ms"], r[f"{mode}_compiled_ms"]
        return f"{eager:.2f} / {compiled:.2f} ({100 * (compiled / eager - 1):+.1f}%)"

    lines = ["", f"### Ours compiled against ours eager, alternating in one process (best of {rounds} "
                 "rounds each), ms: eager / compiled (compiled vs eager)", ""]
    lines += _table(["variant", "workload", "N", "fwd", "fwd+bwd"],
                    [[r["variant"], r["workload"], str(r["n"]), pair(r, "fwd"), pair(r, "fwd_bwd")] for r in rows])
    return lines


def render_markdown(results) -> str:
    meta = results["meta"]
    lines = [
        "# AdaSplash-2 attention benchmark",
        "",
        f"GPU: {meta.get('gpu', 'none')} (sm {meta.get('capability', '-')}); torch {meta['torch']}, "
        f"triton {meta.get('triton')}; {meta['timing']}; warmup {meta['warmup_ms']} ms, rep {meta['rep_ms']} ms "
        f"(at least {meta.get('min_samples', 1)} timed calls); "
        f"torch.compile {'automatic dynamic' if meta.get('compile_dynamic') else 'static shapes per N'}; "
        f"started {meta['started']}; elapsed {meta.get('elapsed_s', 0):.0f} s.",
        "",
        "Workloads: bf16, B=1, H=16, D=128, causal 1.5-entmax unless the row says otherwise. "
        "'skipped tiles': fraction of causal-visible 64x64 tiles of P that hold no nonzero, from our "
        "op's tile_max: the tiles the backward skips (the forward's threshold sweeps visit more). "
        "Ratios are time / FA2 time on the same inputs (below 1: faster than FA2).",
    ]
    if meta.get("fatal_error"):
        lines += ["", f"**Stopped early, CUDA context lost:** {_short(meta['fatal_error'], 400)}"]
    if results.get("skipped"):
        lines += ["", f"**Skipped, past --budget-s {meta.get('budget_s')} s:** " + "; ".join(results["skipped"])]
    lines += render_main_tables(results)
    lines += render_extra_table(results)
    lines += render_compiled_table(results)
    lines += render_accuracy_table(results)
    lines += render_first_call_table(results)
    return "\n".join(lines) + "\n"


_NICE_RATIOS = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 1, 1.25, 1.5, 2, 3, 4, 5, 7, 10, 20, 50)


def plot_relative(results, path: Path) -> Optional[str]:
    """time / FA2 time per N, one panel per workload; fwd+bwd solid, fwd dashed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator
    except Exception as exc:  # noqa: BLE001
        return f"no plot: {_error_text(exc)}"
    main = [c for c in results["cells"] if c["variant"] == "main"]
    workloads = list(dict.fromkeys(c["workload"] for c in main))
    if not workloads:
        return "no plot: no main cells"
    impls = [i for i in _impls_in(results) if i != BASELINE]
    plain = FuncFormatter(lambda y, _: f"{y:g}")
    fig, axes = plt.subplots(1, len(workloads), figsize=(5 * len(workloads), 4), squeeze=False, sharey=True)
    colors = {impl: f"C{i}" for i, impl in enumerate(impls)}
    for ax, workload in zip(axes[0], workloads):
        for impl in impls:
            rows = sorted((c for c in main if c["workload"] == workload and c["impl"] == impl), key=lambda c: c["n"])
            for key, style, suffix in (("ratio_fwd_bwd", "-", "fwd+bwd"), ("ratio_fwd", "--", "fwd")):
                pts = [(c["n"], c[key]) for c in rows if c.get(key) is not None]
                if pts:
                    ax.plot(*zip(*pts), style, marker="o", color=colors[impl], label=f"{LABELS[impl]} {suffix}")
        ax.axhline(1.0, color="black", linewidth=0.8, label="FA2 (= 1)")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ns = sorted({c["n"] for c in main if c["workload"] == workload})
        ax.set_xticks(ns, [str(n) for n in ns])
        ax.xaxis.set_minor_locator(NullLocator())
        ax.yaxis.set_major_locator(FixedLocator(_NICE_RATIOS))
        ax.yaxis.set_minor_locator(NullLocator())
        ax.yaxis.set_major_formatter(plain)
        ax.set_title(workload)
        ax.set_xlabel("N")
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].set_ylabel("time / FA2 time")
    handles, labels = axes[0][0].get_legend_handles_labels()
    for ax in axes[0][1:]:
        h, lab = ax.get_legend_handles_labels()
        for hh, ll in zip(h, lab):
            if ll not in labels:
                handles.append(hh)
                labels.append(ll)
    fig.legend(handles, labels, loc="lower center", ncol=max(1, min(4, len(labels))), fontsize=8)
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return None


# ----------------------------------------------------------------------------------------
# CPU self-checks (no GPU): generators, sparsity count, references
# ----------------------------------------------------------------------------------------


def check_cpu() -> int:
    import adasplash_compile  # noqa: F401 - registers torch.ops.adasplash
    from adasplash_compile import reference as project_reference

    failures = []

    def expect(ok, what):
        print(("ok   " if ok else "FAIL ") + what)
        if not ok:
            failures.append(what)

    # 1. Generators: shapes, dtype, determinism, the walk's normalisation, q's relation to k.
    for workload in wl.WORKLOADS:
        for kv_heads in (4, 2):
            q, k, v = wl.make_inputs(workload, 300, q_heads=4, kv_heads=kv_heads, head_dim=32,
                                     dtype=torch.float32, device="cpu")
            q2, k2, v2 = wl.make_inputs(workload, 300, q_heads=4, kv_heads=kv_heads, head_dim=32,
                                        dtype=torch.float32, device="cpu")
            expect(q.shape == (1, 4, 300, 32) and k.shape == v.shape == (1, kv_heads, 300, 32)
                   and all(t.is_contiguous() and t.dtype == torch.float32 for t in (q, k, v)),
                   f"{workload} kv_heads={kv_heads}: shapes, dtype, contiguity")
            expect(all(torch.equal(a, b) for a, b in ((q, q2), (k, k2), (v, v2))),
                   f"{workload} kv_heads={kv_heads}: same seed, same tensors")
            expect(abs(v.std().item() - 1) < 0.05 and abs(v.mean().item()) < 0.05, f"{workload}: v ~ N(0,1)")
            spec = wl.SPECS[workload]
            if spec is None:
                expect(abs(q.std().item() - 1) < 0.05 and abs(k.std().item() - 1) < 0.05, "dense: q, k ~ N(0,1)")
                continue
            norms = k.norm(dim=-1)
            expect(torch.allclose(norms, torch.full_like(norms, math.sqrt(32)), rtol=1e-5),
                   f"{workload}: key rows have norm sqrt(D)")
            expect(k.mean(dim=-1).abs().max().item() < 1e-5, f"{workload}: key rows centred over D")
            centre = k.repeat_interleave(4 // kv_heads, dim=1)
            noise = (q / spec.q_gain - centre) / spec.q_noise
            expect(abs(noise.std().item() - 1) < 0.05 and abs(noise.mean().item()) < 0.05,
                   f"{workload} kv_heads={kv_heads}: q = gain*(k[h//g] + noise*eps), eps ~ N(0,1)")
            # Consecutive keys are close (a walk), distant ones are not.
            near = (k[..., 1:, :] * k[..., :-1, :]).sum(-1).mean().item() / 32
            far = (k[..., 200:, :] * k[..., :100, :]).sum(-1).mean().item() / 32
            expect(near > 0.9 and far < near, f"{workload}: neighbour cosine {near:.3f} > distant {far:.3f}")
    qb, _, _ = wl.make_inputs("mid", 64, q_heads=2, head_dim=16, device="cpu")
    expect(qb.dtype == torch.bfloat16, "default dtype is bfloat16")
    seeds = {wl.workload_seed(w, n, 16, 16, 128) for w in wl.WORKLOADS for n in MAIN_N}
    expect(len(seeds) == len(wl.WORKLOADS) * len(MAIN_N), "distinct seeds per workload and N")

    # 2. tile_sparsity against a dense P computed here from the same tau.
    configs = [
        ("high", 256, True, 1.5, 4, 4, 32),
        ("mid", 320, True, 1.5, 4, 2, 32),
        ("high", 200, False, 1.5, 2, 2, 16),
        ("mid", 384, True, 2.0, 2, 1, 64),
        ("dense", 256, True, 1.5, 2, 2, 32),
    ]
    for workload, n, is_causal, alpha, hq, hkv, d in configs:
        q, k, v = wl.make_inputs(workload, n, q_heads=hq, kv_heads=hkv, head_dim=d,
                                 dtype=torch.float32, device="cpu")
        scale = 1 / math.sqrt(d)
        out, tau, tile_max, _ = torch.ops.adasplash.attention_fwd(q, k, v, alpha, is_causal, scale, None)
        zero, visible = tile_sparsity(tile_max, n, n, is_causal)
        kd = k.double().repeat_interleave(hq // hkv, dim=1)
        z = (alpha - 1) * scale * (q.double() @ kd.transpose(-1, -2))
        rows = torch.arange(n)
        mask = (rows[None, :] <= rows[:, None]) if is_causal else torch.ones(n, n, dtype=torch.bool)
        z = z.masked_fill(~mask, float("-inf"))
        pad = -n % 64
        t = (n + pad) // 64
        vis = torch.nn.functional.pad(mask, (0, pad, 0, pad)).view(t, 64, t, 64).any(3).any(1).expand(1, hq, t, t)
        # Exact all-zero tiles of P: every visible entry has z <= its row's tau.
        nonzero = (z > tau.double()[..., None])
        nonzero_t = torch.nn.functional.pad(nonzero, (0, pad, 0, pad)).view(1, hq, t, 64, t, 64).any(3).any(-1)
        exact = vis & ~nonzero_t
        expect(visible == int(vis.sum()) and zero == int(exact.sum()),
               f"{workload} N={n} causal={is_causal} a={alpha} {hq}q/{hkv}kv: zero tiles {zero}/{visible} "
               f"= dense count {int(exact.sum())}/{int(vis.sum())}")
        support_max = torch.nn.functional.pad(z.masked_fill(~nonzero, float("-inf")), (0, pad, 0, pad),
                                              value=float("-inf")).view(1, hq, t, 64, t, 64).amax(dim=(3, 5))
        expect(torch.allclose(tile_max[:, :, :t, :t].double(), support_max, atol=1e-4, rtol=1e-5)
               and bool((tile_max[:, :, t:, :] == float("-inf")).all())
               and bool((tile_max[:, :, :, t:] == float("-inf")).all()),
               "  tile_max = max z over each tile's nonzeros of P")
        p_out = out.double()
        ref_out = project_reference.attention_forward(q.double(), k.double(), v.double(), alpha, is_causal, scale, None)[0]
        expect((p_out - ref_out).abs().max().item() < 1e-4, "  CPU op output matches the float64 reference op")

    # 3. This file's float64 references against the project's reference and torch SDPA.
    for workload, n, hq, hkv, causal in (("mid", 192, 2, 2, True), ("high", 256, 4, 2, True), ("dense", 130, 2, 1, False)):
        q, k, v = wl.make_inputs(workload, n, q_heads=hq, kv_heads=hkv, head_dim=32, dtype=torch.float64, device="cpu")
        ours, stats = reference_attention(q, k, v, kind="entmax15", is_causal=causal, rows_per_chunk=64)
        theirs = project_reference.attention_forward(q, k, v, 1.5, causal, 1 / math.sqrt(32), None)[0]
        err = (ours - theirs).abs().max().item()
        expect(err < 1e-9, f"sort-based 1.5-entmax reference = bisection reference ({workload} N={n}): {err:.1e}")
        soft, _ = reference_attention(q, k, v, kind="softmax", is_causal=causal, rows_per_chunk=64)
        sdpa = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=hq != hkv)
        err = (soft - sdpa).abs().max().item()
        expect(err < 1e-10, f"softmax reference = SDPA float64 ({workload} N={n}): {err:.1e}")
        print(f"     reference zero weights {100 * stats['zero_weight_fraction']:.1f}%, "
              f"zero tiles {stats['zero_tile_fraction']}")

    # 4. The compiled-against-eager table: the sign and size of the difference, errors kept.
    rows = [{"variant": "main", "workload": "mid", "n": 8192, "fwd_eager_ms": 2.0, "fwd_compiled_ms": 2.1,
             "fwd_bwd_eager_ms": 4.0, "fwd_bwd_compiled_ms": 3.9},
            {"variant": "main", "workload": "high", "n": 8192, "error": "RuntimeError: out of memory"}]
    table = render_compiled_table({"meta": {"compiled_rounds": 3}, "compiled_vs_eager": rows})
    expect("| main | mid | 8192 | 2.00 / 2.10 (+5.0%) | 4.00 / 3.90 (-2.5%) |" in table
           and "| main | high | 8192 | RuntimeError: out of memory | RuntimeError: out of memory |" in table
           and any("best of 3 rounds" in line for line in table),
           "compiled-against-eager table: eager / compiled (compiled vs eager)")

    print(f"{len(failures)} failed" if failures else "all CPU checks passed")
    return 1 if failures else 0


# ----------------------------------------------------------------------------------------
# Entry point
# ----------------------------------------------------------------------------------------


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description="Benchmark AdaSplash-2 attention (ours eager/compiled) against FA2, "
        "FlexAttention and the adasplash PyPI package on an NVIDIA GPU.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="output folder")
    parser.add_argument("--n", type=int, nargs="+", default=None,
                        help=f"sequence lengths of the main tables (default {list(MAIN_N)})")
    parser.add_argument("--workloads", nargs="+", choices=wl.WORKLOADS, default=list(wl.WORKLOADS))
    parser.add_argument("--impls", nargs="+", choices=IMPLS, default=list(IMPLS),
                        help="ratios need fa2 among them")
    parser.add_argument("--quick", action="store_true",
                        help=f"smoke run: N={list(QUICK_N)} for the main and extra rows")
    parser.add_argument("--extra-n", type=int, nargs="+", default=None,
                        help=f"sequence lengths of the extra rows (default {list(EXTRA_N)})")
    parser.add_argument("--skip-extra", action="store_true", help="no non-causal/alpha=2/GQA/D=64 rows")
    parser.add_argument("--skip-accuracy", action="store_true", help=f"no accuracy table at N={ACCURACY_N}")
    parser.add_argument("--skip-first-call", action="store_true", help="no fresh-process first-call timing")
    parser.add_argument("--first-call-n", type=int, default=None,
                        help="N of the first-call timing (default 8192, or the largest --n below it)")
    parser.add_argument("--first-call-timeout", type=int, default=240, help="seconds per child process")
    parser.add_argument("--budget-s", type=float, default=480,
                        help="start no new case or child process after this many seconds; what is "
                        "skipped is listed in the results (the device allows 600 s per command)")
    parser.add_argument("--dynamic", action="store_true",
                        help="compile ours and flex with automatic dynamic shapes (fewer recompiles "
                        "across N) instead of one static graph per N")
    parser.add_argument("--warmup", type=int, default=25, help="do_bench warm-up, ms")
    parser.add_argument("--rep", type=int, default=100, help="do_bench repetitions, ms")
    parser.add_argument("--compiled-rounds", type=int, default=3,
                        help="alternating rounds of ours eager and compiled per case (0: none)")
    parser.add_argument("--min-samples", type=int, default=10,
                        help="time at least about this many calls per cell, whatever --rep says")
    parser.add_argument("--check-cpu", action="store_true",
                        help="run the CPU self-checks (generators, sparsity count, references) and exit")
    parser.add_argument("--first-call-child", choices=("eager", "compiled"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.compiled_rounds < 0:
        parser.error(f"--compiled-rounds must be >= 0, got {args.compiled_rounds}")
    if args.n is None:
        args.n = list(QUICK_N if args.quick else MAIN_N)
    if args.extra_n is None:
        args.extra_n = list(QUICK_N if args.quick else EXTRA_N)
    if args.first_call_n is None:
        below = [n for n in args.n if n <= 8192]
        args.first_call_n = max(below) if below else min(args.n)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.check_cpu:
        return check_cpu()
    if not torch.cuda.is_available():
        print("bench_attention: needs a CUDA GPU (use --check-cpu for the CPU self-checks)", file=sys.stderr)
        return 2
    if args.first_call_child:
        first_call_child(args.first_call_child, args.first_call_n)
        return 0

    import adasplash_compile  # noqa: F401 - registers torch.ops.adasplash

    # One compiled fn per setting, each specialised per N and grad mode: allow many graphs.
    for name, value in (("recompile_limit", 64), ("cache_size_limit", 64), ("accumulated_recompile_limit", 1024),
                        ("accumulated_cache_size_limit", 1024)):
        if hasattr(torch._dynamo.config, name):
            setattr(torch._dynamo.config, name, value)

    run = Run(args)
    meta = run.results["meta"]
    run.log(f"{meta.get('gpu')} torch {meta['torch']} triton {meta.get('triton')}; out {run.out}")
    run.log(f"N={args.n} workloads={args.workloads} impls={args.impls}")
    if not args.skip_accuracy:
        run.run_accuracy()
    for workload in args.workloads:
        for n in args.n:
            run.run_case(Case(workload, n))
    if not args.skip_extra:
        for n in args.extra_n:
            for case in extra_cases(n):
                run.run_case(case)
    if not args.skip_first_call:
        if not run.fatal:
            torch.cuda.empty_cache()  # leave the GPU's memory to the child processes
        run.run_first_call()
    run.save()
    note = plot_relative(run.results, run.out / "relative_to_fa2.png")
    run.log(note or f"wrote {run.out / 'relative_to_fa2.png'}")

    # The device returns only the tail of the output: the main tables go last.
    results = run.results
    for block in (render_accuracy_table(results), render_first_call_table(results),
                  render_extra_table(results), render_compiled_table(results), render_main_tables(results)):
        print("\n".join(block))
    if run.fatal:
        print(f"\nSTOPPED EARLY (CUDA context lost): {run.fatal}")
    print(f"\nresults: {run.out / 'results.md'}, results.json, relative_to_fa2.png; "
          f"elapsed {time.perf_counter() - run.start:.0f} s")
    return 1 if run.fatal else 0


if __name__ == "__main__":
    sys.exit(main())
