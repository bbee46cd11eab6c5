"""The eager path: attention_fwd and attention_bwd's implementations under a plain
autograd.Function, wherever nothing could tell it from the registered op.

An eager call through ``torch.ops.adasplash.attention_fwd`` pays for the Python layers
that ``torch.library.custom_op`` puts around the implementation (argument filling, a
generated autograd.Function, redispatch, the aliasing check, a Dynamo-disable wrapper),
once for the forward and again for the backward. On the H100's host (torch 2.11,
triton 3.6, bf16, B=1, H=16, N=4096, D=128, ``high``; one process, min of five rounds)
a forward+backward took 1.43 ms through the op and 1.21 ms through this path, with the
kernels' own launches at 0.44 ms; at that size the GPU finishes first, so the host time
is the time. Without grad the implementation runs alone, no Function around it. Both
paths run the same implementation (ops.run_attention_forward / _backward), so their
outputs, gradients and errors are the same.

The op stays in charge wherever something may watch or transform it:
- under torch.compile and torch.export (Dynamo, fake tensors and proxy modes), and
  torch.jit.trace, which must record the op;
- for any tensor that is not a plain torch.Tensor (subclasses such as DTensor or
  FakeTensor), or a functorch wrapper (vmap, torch.func.grad);
- while a dispatch mode (FlopCounterMode, fake or functional tensors, tracing) or a
  torch function mode other than ``torch.device``'s default-device context is active.
The backward applies the same test to its own inputs, and calls the op under
``create_graph=True``, whose result must carry the op's "no double backward" refusal.
Where a probe this relies on is missing from torch, every call takes the op.
"""

from typing import Optional

import torch
from torch import Tensor

from adasplash_compile.autograd import attention_gradients, attention_setup_context
from adasplash_compile.ops import run_attention_backward, run_attention_forward

_FUNCTORCH = getattr(torch._C, "_functorch", None)
_tracing_state = getattr(torch._C, "_get_tracing_state", None)
_dispatch_mode_depth = getattr(torch._C, "_len_torch_dispatch_stack", None)
_function_mode_enabled = getattr(torch._C, "_is_torch_function_mode_enabled", None)
_function_mode_stack = getattr(torch.overrides, "_get_current_function_mode_stack", None)
_functorch_transform = getattr(_FUNCTORCH, "peek_interpreter_stack", None)
_is_functorch_wrapped = getattr(_FUNCTORCH, "is_functorch_wrapped_tensor", None)
_HAS_PROBES = None not in (_tracing_state, _dispatch_mode_depth, _function_mode_enabled, _function_mode_stack,
                           _functorch_transform, _is_functorch_wrapped)
try:
    from torch.utils._device import DeviceContext as _DeviceContext
except ImportError:  # without it, any torch function mode sends calls to the op
    _DeviceContext = ()


def plain_call_allowed(*tensors: Optional[Tensor]) -> bool:
    """True where calling the implementation directly cannot differ from calling the op:
    see the module docstring. None entries (an absent seqlens) are skipped."""
    if torch.compiler.is_compiling() or not _HAS_PROBES:
        return False
    if _tracing_state() is not None or _dispatch_mode_depth() > 0 or _functorch_transform() is not None:
        return False
    if _function_mode_enabled() and not all(isinstance(mode, _DeviceContext) for mode in _function_mode_stack()):
        return False
    return all(t is None or (type(t) is Tensor and not _is_functorch_wrapped(t)) for t in tensors)


class PlainAttention(torch.autograd.Function):
    """attention_fwd's forward and autograd formula without the dispatcher; take it only
    where ``plain_call_allowed`` holds for the inputs.

    forward takes ctx itself: a separate setup_context makes every apply bind its
    arguments through inspect.signature, which cost more host time (0.1 ms per call on
    the H100's host) than the dispatcher it replaces.
    """

    @staticmethod
    def forward(ctx, query, key, value, alpha, is_causal, scale, seqlens):
        inputs = (query, key, value, alpha, is_causal, scale, seqlens)
        output = run_attention_forward(*inputs)
        attention_setup_context(ctx, inputs, output)
        return output

    @staticmethod
    def backward(ctx, grad_out, grad_tau, grad_tile_max, grad_u_value_mean):
        saved = ctx.saved_tensors
        direct = not torch.is_grad_enabled() and plain_call_allowed(grad_out, *saved)
        return attention_gradients(ctx, saved, grad_out, run_attention_backward if direct
                                   else torch.ops.adasplash.attention_bwd)


def attention(query: Tensor, key: Tensor, value: Tensor, alpha: float, is_causal: bool, scale: float,
              seqlens: Optional[Tensor]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """attention_fwd for inputs where ``plain_call_allowed`` holds: through PlainAttention
    where autograd records a graph, else the implementation alone."""
    if torch.is_grad_enabled() and any(t.requires_grad for t in (query, key, value)):
        return PlainAttention.apply(query, key, value, alpha, is_causal, scale, seqlens)
    return run_attention_forward(query, key, value, alpha, is_causal, scale, seqlens)
