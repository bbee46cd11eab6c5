"""Input checks shared by the public API, the op implementations and the fake functions.

Each message names the argument, says what was expected and what arrived, so that
eager, fake (compile/export) and compiled calls fail the same way. Checks read only
metadata: shapes, dtypes, devices. The one value check (negative ``seqlens``) lives
in the CPU implementation, where it costs no device sync.
"""

import math
import numbers

import torch

from adasplash_compile.options import HEAD_DIM_MULTIPLE, MAX_HEAD_DIM, SUPPORTED_DTYPES, tile_grid

_CPU_ONLY_DTYPES = (torch.float64,)


def check_alpha(alpha) -> float:
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real):
        raise TypeError(
            f"alpha must be a real number in (1, 2], got {type(alpha).__name__} {alpha!r}"
        )
    # float() of a float would turn a traced constant into a SymFloat and restart Dynamo.
    alpha = alpha if isinstance(alpha, float) else float(alpha)
    if not 1.0 < alpha <= 2.0:  # also rejects NaN
        raise ValueError(
            f"alpha must lie in (1, 2] (alpha=2 is sparsemax; alpha->1 approaches softmax), "
            f"got alpha={alpha}"
        )
    return alpha


def check_scale(scale, head_dim) -> float:
    if scale is None:
        # int() pins a symbolic head_dim: the scale must be a constant, not a SymFloat.
        return 1.0 / math.sqrt(int(head_dim))
    if isinstance(scale, bool) or not isinstance(scale, numbers.Real):
        raise TypeError(f"scale must be a real number or None, got {type(scale).__name__} {scale!r}")
    scale = scale if isinstance(scale, float) else float(scale)
    if not math.isfinite(scale):
        raise ValueError(f"scale must be finite, got scale={scale}")
    return scale


def check_dtype(name: str, tensor: torch.Tensor) -> None:
    """tensor's dtype against the supported ones on its device."""
    allowed = SUPPORTED_DTYPES + (_CPU_ONLY_DTYPES if tensor.device.type == "cpu" else ())
    if tensor.dtype not in allowed:
        names = ", ".join(str(d).replace("torch.", "") for d in allowed)
        raise TypeError(f"{name} must have dtype in ({names}) on {tensor.device.type}, got {tensor.dtype}")


def check_head_dim(head_dim) -> None:
    if head_dim % HEAD_DIM_MULTIPLE != 0 or head_dim > MAX_HEAD_DIM or head_dim < HEAD_DIM_MULTIPLE:
        raise ValueError(
            f"head_dim (the last dimension of query, key and value) must be a multiple of "
            f"{HEAD_DIM_MULTIPLE} between {HEAD_DIM_MULTIPLE} and {MAX_HEAD_DIM}, got head_dim={head_dim}"
        )


def check_attention_inputs(query, key, value, alpha, is_causal, seqlens) -> float:
    """Checks every attention argument but scale; returns alpha as a float."""
    alpha = check_alpha(alpha)
    for name, t in (("query", query), ("key", key), ("value", value)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(
                f"{name} must be 4-D (batch, heads, seq_len, head_dim), got {t.dim()}-D "
                f"with shape {tuple(t.shape)}"
            )
    if not isinstance(is_causal, bool):
        raise TypeError(f"is_causal must be a bool, got {type(is_causal).__name__} {is_causal!r}")
    check_dtype("query", query)
    for name, t in (("key", key), ("value", value)):
        if t.dtype != query.dtype:
            raise TypeError(
                f"{name} must have the same dtype as query ({query.dtype}), got {t.dtype}"
            )
        if t.device != query.device:
            raise ValueError(
                f"{name} must be on the same device as query ({query.device}), got {t.device}"
            )
    batch, q_heads, _, head_dim = query.shape
    if key.shape != value.shape:
        raise ValueError(
            f"key and value must have the same shape, got key {tuple(key.shape)} and "
            f"value {tuple(value.shape)}"
        )
    kv_batch, kv_heads, _, kv_head_dim = key.shape
    if kv_batch != batch:
        raise ValueError(
            f"key batch size ({kv_batch}) must equal query batch size ({batch})"
        )
    if kv_head_dim != head_dim:
        raise ValueError(
            f"key head_dim ({kv_head_dim}) must equal query head_dim ({head_dim})"
        )
    check_head_dim(head_dim)
    if kv_heads == 0 or q_heads % kv_heads != 0:
        raise ValueError(
            f"query heads ({q_heads}) must be a multiple of key/value heads ({kv_heads}) "
            f"for grouped-query attention"
        )
    if seqlens is not None:
        check_seqlens(seqlens, batch, query.device)
    return alpha


def check_forward_state(query, key, grad_out, tau, tile_max, u_value_mean) -> None:
    """Checks the backward's other tensors against query and key (metadata only): grad_out
    has query's shape and dtype, and tau, tile_max and u_value_mean are the float32 tensors
    attention_fwd returned for them (adasplash_compile.options)."""
    batch, q_heads, n_queries, head_dim = query.shape
    expected = (
        ("grad_out", grad_out, tuple(query.shape), query.dtype),
        ("tau", tau, (batch, q_heads, n_queries), torch.float32),
        ("tile_max", tile_max, (batch, q_heads, *tile_grid(n_queries, key.shape[2])), torch.float32),
        ("u_value_mean", u_value_mean, (batch, q_heads, n_queries, head_dim), torch.float32),
    )
    for name, t, shape, dtype in expected:
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if tuple(t.shape) != shape or t.dtype != dtype:
            raise ValueError(
                f"{name} must have shape {shape} and dtype {dtype} (from attention_fwd for this query "
                f"and key), got shape {tuple(t.shape)} and dtype {t.dtype}"
            )
        if t.device != query.device:
            raise ValueError(f"{name} must be on the same device as query ({query.device}), got {t.device}")


def check_seqlens(seqlens, batch, device) -> None:
    if not isinstance(seqlens, torch.Tensor):
        raise TypeError(f"seqlens must be a torch.Tensor or None, got {type(seqlens).__name__}")
    if seqlens.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"seqlens must have dtype int32 or int64, got {seqlens.dtype}")
    if seqlens.dim() != 1 or seqlens.shape[0] != batch:
        raise ValueError(
            f"seqlens must have shape (batch,) = ({batch},), got {tuple(seqlens.shape)}"
        )
    if seqlens.device != device:
        raise ValueError(
            f"seqlens must be on the same device as query ({device}), got {seqlens.device}"
        )


def check_no_negative_seqlens(seqlens) -> None:
    """Value check; call only where reading seqlens costs no device sync (CPU)."""
    if seqlens is not None and seqlens.device.type == "cpu" and bool((seqlens < 0).any()):
        raise ValueError(f"seqlens must be non-negative, got {seqlens.tolist()}")


def check_entmax_inputs(x, alpha, dim) -> float:
    """Checks the entmax arguments; returns alpha as a float."""
    alpha = check_alpha(alpha)
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    check_dtype("x", x)
    if isinstance(dim, bool) or not isinstance(dim, int):
        raise TypeError(f"dim must be an int, got {type(dim).__name__} {dim!r}")
    if x.dim() == 0:
        raise ValueError("x must have at least one dimension, got a 0-D tensor")
    if not -x.dim() <= dim < x.dim():
        raise ValueError(f"dim={dim} is out of range for x with {x.dim()} dimensions")
    return alpha
