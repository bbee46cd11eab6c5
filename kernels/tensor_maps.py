"""Tensor descriptors for the Hopper copy engine (TMA): when the kernels use them, and the
jit helpers that build and read them.

A kernel that loads a tile through a descriptor issues one bulk tensor copy for it,
where pointer loads cost each thread an address, a mask and a copy per 16 bytes: in the
forward's threshold/output kernel (bf16, D = 128, sm_90, triton 3.6 SASS) the loop of the
first threshold sweep fell from 710 to 678 instructions and that of the folded output
pass from 667 to 596, and its spills from 80 to 24 bytes. The copy engine fills rows past
the sequence with zeros, as the pointer loads' masks do, so results are bitwise equal.
Streamed tiles go through descriptors: K and V in the forward's threshold/output kernel
and in the dQ kernel, Q and dO in the dK/dV kernel. H100, same process against pointer
loads (``benchmarks/results/h100-2026-11-27-tma.md``): backward 8.5-13% faster, forward
1-3%. The max sweep keeps pointer loads: with descriptors it needed 136 registers,
past the 128 that let four of its programs share an SM, and ran 8-11% slower.

Each program builds its descriptors itself (``tl.make_tensor_descriptor``), from the
pointers and strides it already takes, so ``torch.library.wrap_triton`` traces the
launches unchanged (it captures no host-side descriptor outside Dynamo, torch 2.11 to
2.13). A built descriptor lives in 128 bytes of global scratch per program, which
Triton's launcher takes from the allocator of ``triton.set_allocator``: Inductor sets
one before its launches, and the kernels that build descriptors set
``ensure_scratch_allocator``'s where none is set, from a launch hook
(``allocate_scratch_before_launch``).

The copy engine needs compute capability 9.0 or newer, a contiguous last dimension, and
16-byte aligned strides and base; the box here is as wide as the head, so the head dim
must be a power of two of at least 16 (``descriptors_supported``). Other inputs take the
pointer loads.
"""

import torch
import triton
import triton.language as tl
from torch._subclasses.fake_tensor import FakeTensor
from torch._subclasses.functional_tensor import FunctionalTensor

try:
    from triton.runtime._allocation import NullAllocator, _allocator
except ImportError:  # no way to see the current allocator: ensure_scratch_allocator sets ours
    NullAllocator = _allocator = None

_BOX_BYTES_ALIGNMENT = 16


def _is_real(tensor: torch.Tensor) -> bool:
    """False for the fake and functional tensors of tracing, which have no data pointer."""
    return not isinstance(tensor, (FakeTensor, FunctionalTensor))


def _aligned(tensor: torch.Tensor) -> bool:
    size = tensor.element_size()
    if tensor.stride(-1) != 1:
        return False
    if any((stride * size) % _BOX_BYTES_ALIGNMENT for stride in tensor.stride()[:-1]):
        return False
    if (tensor.storage_offset() * size) % _BOX_BYTES_ALIGNMENT:
        return False
    return not _is_real(tensor) or tensor.data_ptr() % _BOX_BYTES_ALIGNMENT == 0


def descriptors_supported(*tensors: torch.Tensor, head_dim: int, block_d: int) -> bool:
    """Whether (B, H, N, D) tensors can be read through tile descriptors of (1, 1, rows,
    block_d): a CUDA device of compute capability 9.0 or newer, 16-bit elements, a box as
    wide as the head (block_d == head_dim, so no padding column is read), and aligned
    tensors with at least one element per dimension."""
    if not hasattr(tl, "make_tensor_descriptor") or block_d != head_dim:
        return False
    first = tensors[0]
    if first.device.type != "cuda" or torch.cuda.get_device_capability(first.device)[0] < 9:
        return False
    for tensor in tensors:
        if tensor.dtype not in (torch.float16, torch.bfloat16) or tensor.dim() != 4:
            return False
        if any(size == 0 for size in tensor.shape) or not _aligned(tensor):
            return False
    return True


def allocate_scratch_before_launch(kernel, flag: str):
    """Have ``kernel`` (a ``triton.jit`` function) call ``ensure_scratch_allocator`` before
    every launch whose keyword argument ``flag`` is true, and return it.

    Triton keeps the allocator per thread (a ContextVar). A graph that AOTAutograd traced,
    run without Inductor (``backend="aot_eager"``, ``torch.library.opcheck``), launches the
    backward's kernels from the autograd engine's device thread, where the launchers' own
    call never ran: the launch hook runs in whichever thread launches. torch's traced
    launches pass every argument by position, the launchers the flags by name.
    """
    if not hasattr(kernel, "add_pre_run_hook"):
        return kernel
    position = kernel.arg_names.index(flag)

    def set_allocator_where_flagged(*args, **kwargs):
        if kwargs[flag] if flag in kwargs else len(args) > position and args[position]:
            ensure_scratch_allocator()

    kernel.add_pre_run_hook(set_allocator_where_flagged)
    return kernel


def ensure_scratch_allocator() -> None:
    """Give Triton an allocator for the descriptors' scratch memory if it has none.

    A kernel that builds a descriptor writes it to global scratch memory (128 bytes per
    program), which Triton's launcher takes from the allocator of ``triton.set_allocator``.
    One set by the caller (or by Inductor, which sets its own) stays.
    """
    if _allocator is None or isinstance(_allocator.get(), NullAllocator):
        triton.set_allocator(_torch_scratch)


def _torch_scratch(size: int, alignment: int, stream):
    # The caching allocator's blocks are 512-byte aligned, above the 128 asked for.
    return torch.empty(size, dtype=torch.int8, device="cuda")


@triton.jit
def head_descriptor(tensor, batch, stride_z, n_heads, stride_h, n_rows, stride_row, ROWS: tl.constexpr,
                    COLS: tl.constexpr):
    """Descriptor of batch ``batch`` of a (B, H, N, COLS) kernel argument: a (H, N, COLS)
    tensor read in boxes of (1, ROWS, COLS)."""
    return tl.make_tensor_descriptor(tensor + batch * stride_z, shape=[n_heads, n_rows, COLS],
                                     strides=[stride_h, stride_row, 1], block_shape=[1, ROWS, COLS])


@triton.jit
def descriptor_tile(descriptor, head, start):
    """Rows start .. start + ROWS of one head (``head_descriptor``): (ROWS, COLS), zero past
    the sequence."""
    tile = descriptor.load([head, start, 0])
    return tl.reshape(tile, [tile.shape[1], tile.shape[2]])
