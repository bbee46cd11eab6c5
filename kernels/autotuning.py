"""Autotuned variants of the kernels, launched under ``torch.compile(mode="max-autotune")``.

Eager calls and default compiles launch every kernel with its fixed default config, so a
first call costs one compilation per kernel. With ``autotune=True`` (the lowering passes
it when Inductor's ``max_autotune`` is on) a launcher wraps its kernels with
``autotuned``: a ``triton.autotune`` over the same JIT function, whose configs set the
choices that are free per launch: warps, pipelining stages, and the forward's histogram
(``NBINS``, ``MAX_SWEEPS``, ``EDGE_UNROLL``). Traced through ``wrap_triton``, Inductor
compiles every config into its output code and benchmarks them on the first run (before
any CUDA-graph capture), per shape it specialises on.

Block sizes are not among the choices: the forward's are the 64x64 tile of the tile_max
record, and the backward's set the granularity of the active-tile lists that its list
kernels build before the dQ and dK/dV kernels launch, so changing them per config would
desynchronise the two. The tuned kernels read only inputs and write only outputs and
scratch, so the benchmark relaunches leave results unchanged (no ``restore_value``).
"""

import functools

import triton

LAUNCH_OPTIONS = ("num_warps", "num_stages")


def launch_options(config: dict) -> dict:
    """The num_warps / num_stages entries of a config."""
    return {name: config[name] for name in LAUNCH_OPTIONS}


def _frozen(configs: list) -> tuple:
    return tuple(
        (tuple(sorted((k, v) for k, v in c.items() if k not in LAUNCH_OPTIONS)), c["num_warps"], c["num_stages"])
        for c in configs
    )


@functools.lru_cache(maxsize=None)
def _autotuner(kernel, frozen_configs: tuple, key: tuple):
    configs = [triton.Config(dict(kwargs), num_warps=warps, num_stages=stages)
               for kwargs, warps, stages in frozen_configs]
    return triton.autotune(configs=configs, key=list(key))(kernel)


def autotuned(kernel, configs: list, key: tuple):
    """``triton.autotune(configs, key)(kernel)``, one object per distinct argument set.

    configs: dicts of the constexpr arguments to tune plus ``num_warps`` and
    ``num_stages``; the launcher then passes none of those. key: names of kernel
    arguments whose change re-tunes an eager launch (Inductor keys its own).
    """
    if not configs:
        raise ValueError("autotuned: no configs to choose from")
    return _autotuner(kernel, _frozen(configs), tuple(key))
