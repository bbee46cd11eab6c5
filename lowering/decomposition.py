"""FunctionalTensorMode rules that decompose the adasplash ops into wrap_triton launches."""

import importlib

import torch


def _lookup(module: str, name: str):
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        return None


def _is_plain_tensor_type(t) -> bool:
    from torch._subclasses.fake_tensor import FakeTensor
    from torch._subclasses.functional_tensor import FunctionalTensor

    return t is torch.Tensor or issubclass(t, (FakeTensor, FunctionalTensor))


def _launchers():
    # Imported on first use: Triton stays out of ``import adasplash_compile``.
    from adasplash_compile.kernels.backward import attention_backward
    from adasplash_compile.kernels.entmax import entmax_forward
    from adasplash_compile.kernels.forward import attention_forward

    return {
        "attention_fwd": attention_forward,
        "attention_bwd": attention_backward,
        "entmax_fwd": entmax_forward,
    }


def max_autotune_enabled() -> bool:
    """Inductor's max_autotune flag (set by ``mode="max-autotune"``); False without Inductor."""
    inductor_config = _lookup("torch._inductor", "config")
    return bool(getattr(inductor_config, "max_autotune", False))


def _first_tensor(args):
    return next(a for a in args if isinstance(a, torch.Tensor))


def _make_rule(op_name, decomposition_disabled):
    def rule(mode, op, types, args, kwargs):
        decompose = (
            not decomposition_disabled()
            and _first_tensor(args).device.type == "cuda"
            and _first_tensor(args).dtype != torch.float64
            and all(_is_plain_tensor_type(t) for t in types)
        )
        if not decompose:
            return mode.__torch_dispatch__(op, types, args, kwargs)
        with mode:
            return _launchers()[op_name](*args, **kwargs, wrap=torch.library.wrap_triton,
                                         autotune=max_autotune_enabled())

    return rule


# Triton's kernel objects; InterpretedFunction is what @triton.jit makes under TRITON_INTERPRET=1.
_KERNEL_TYPES = ("JITFunction", "Autotuner", "Heuristics", "InterpretedFunction")


def _register_cache_key_kernels():
    """Tell AOTAutograd's cache which Triton sources each op runs, so edits invalidate it."""
    registry = _lookup("torch._library.triton", "triton_ops_to_kernels")
    if registry is None:
        return
    from adasplash_compile.kernels import backward, candidates, entmax, forward, key_summary

    launched = {
        "attention_fwd": (forward, key_summary, candidates),
        "attention_bwd": (backward,),
        "entmax_fwd": (entmax,),
    }
    for name, modules in launched.items():
        registry[f"adasplash::{name}"] = [
            value for module in modules for value in vars(module).values()
            if type(value).__name__ in _KERNEL_TYPES
        ]


def register_decompositions() -> bool:
    """Register the CUDA decompositions; False (ops stay opaque) if an API is missing."""
    functional_mode = _lookup("torch._subclasses.functional_tensor", "FunctionalTensorMode")
    decomposition_disabled = _lookup("torch.export._trace", "custom_triton_ops_decomposition_disabled")
    if functional_mode is None or decomposition_disabled is None or not hasattr(torch.library, "wrap_triton"):
        return False
    for op_name in ("attention_fwd", "attention_bwd", "entmax_fwd"):
        torch.library.register_torch_dispatch(
            f"adasplash::{op_name}", functional_mode, _make_rule(op_name, decomposition_disabled)
        )
    if torch.cuda.is_available():
        # Only where kernels can be decomposed: importing them on the CPU would fix
        # the interpreter switch (TRITON_INTERPRET is read when kernels are defined).
        _register_cache_key_kernels()
    return True
