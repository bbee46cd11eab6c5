"""Compiler integration: the ops become Triton kernel calls inside Inductor's graph.

Mechanism (design (a) of the lowering issue). Each adasplash op gets a rule for
``FunctionalTensorMode``, the mode AOTAutograd traces under. For CUDA tensors the
rule runs the op's launcher with ``wrap=torch.library.wrap_triton``, so the graph
holds ``triton_kernel_wrapper_functional`` nodes for our kernels (the histogram
tau solve, the tile-skipping output pass, the backward kernels) and the buffers
they write. Inductor then compiles those kernels into its output code beside the
pointwise work around them, plans their buffers, and captures them in CUDA graphs.
This is what ``torch.library.triton_op`` does, made conditional on the device:

- CPU tensors stay on the opaque op (the reference, or the interpreted kernels).
  A plain ``triton_op`` cannot be traced on a machine without a GPU driver,
  because Inductor's kernel-mutation analysis needs one.
- ``torch.export`` disables the decomposition, so exported programs keep
  ``torch.ops.adasplash.attention_fwd`` as one serialisable node; AOTInductor
  decomposes it again when it compiles the package for CUDA.

Under ``mode="max-autotune"`` (Inductor's ``max_autotune`` flag, read when the rule
runs) the launchers wrap their kernels in ``triton.autotune``
(``adasplash_compile.kernels.autotuning``): Inductor compiles every config into the
output code and benchmarks them on the first run, before CUDA-graph capture.

Private APIs used, each looked up by feature (never by version string); when one
is missing the rule is not registered and the ops stay opaque, which is slower but
correct: ``torch._subclasses.functional_tensor.FunctionalTensorMode``,
``torch.export._trace.custom_triton_ops_decomposition_disabled`` and
``torch._library.triton.triton_ops_to_kernels`` (the AOTAutograd cache key). Also
``torch._inductor.config.max_autotune``, read as False where it is missing.
"""

from adasplash_compile.lowering.decomposition import register_decompositions

DECOMPOSITIONS_REGISTERED = register_decompositions()
