"""The attention kernels' matrix products, right under Triton's interpreter too.

Triton's interpreter (TRITON_INTERPRET=1, how CPU tensors run the kernels) computes
``tl.dot`` of bfloat16 operands wrongly: on triton 3.9 a 16 x 16 product of N(0, 1)
entries came out about 2.5e10 off, where float16 and float32 operands are exact. So under
the interpreter ``tile_dot`` widens bfloat16 operands to float32 first. That is the GPU's
arithmetic too: its bfloat16 products are exact in the float32 accumulator. Compiled
for a GPU the branch is a constant and the product is ``tl.dot`` as written: offline
sm_90 builds (triton 3.6) of every attention kernel gave the same SASS, except that the
threshold/output kernel's epilogue swapped two registers and two predicates, and the
source Inductor writes for them into compiled graphs (which carries INTERPRETED as a
False constant) built to that same SASS.
"""

import triton
import triton.language as tl


@triton.jit
def tile_dot(a, b, acc, INPUT_PRECISION: tl.constexpr):
    """``tl.dot(a, b, acc, input_precision=INPUT_PRECISION)``; acc may be None."""
    if INTERPRETED:
        if a.dtype == tl.bfloat16:
            return tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
    return tl.dot(a, b, acc, input_precision=INPUT_PRECISION)


# Decided as triton.jit decides: a function decorated while TRITON_INTERPRET=1 is an
# InterpretedFunction and runs on the interpreter.
INTERPRETED: tl.constexpr = tl.constexpr(type(tile_dot).__name__ == "InterpretedFunction")
