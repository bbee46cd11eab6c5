"""Which arguments torch.library.wrap_triton's analysis reports each kernel as writing.

An argument reported as written is cloned by Inductor before every launch, so the
kernel tests pin these sets. The analysis runs on the real (compiled, not
interpreted) kernels in a fresh process; without a GPU it targets sm_90 through a
stub driver (TTIR needs no GPU).
"""

import json
import os
import subprocess
import sys

import pytest

# CI runs torch 2.13 and the GPU run torch 2.11, whose analysis has another entry point
# and handles scalar arguments differently (a kernel that passed on 2.13 once made 2.11's
# analysis fail and report every input as written). The analysis needs no GPU, so the
# tests run in both suites: "gpu" only adds the marker that puts them in the GPU run.
IN_BOTH_SUITES = pytest.mark.parametrize("suite", ["cpu", pytest.param("gpu", marks=pytest.mark.gpu)])

_PROLOGUE = """
import json, torch, triton
from triton.backends.compiler import GPUTarget
if not torch.cuda.is_available():
    class _Stub:
        def get_current_target(self):
            return GPUTarget("cuda", 90, 32)
    triton.runtime.driver.set_active(_Stub())
try:
    from torch._higher_order_ops.triton_kernel_wrap import identify_accessed_tensors
    def written_names(kernel, named):
        return [dep.name for dep in identify_accessed_tensors(kernel, named, {}).read_writes.writes]
except ImportError:  # torch 2.11 has the older entry point, which returns the names
    from torch._higher_order_ops.triton_kernel_wrap import identify_mutated_tensors
    def written_names(kernel, named):
        return list(identify_mutated_tensors(kernel, named, {}))
launches = []
class Capture:
    def __init__(self, kernel):
        self.kernel = kernel
    def __getitem__(self, grid):
        return lambda *args, **kwargs: launches.append((self.kernel, args, kwargs))
"""

_EPILOGUE = """
result = {}
for kernel, args, kwargs in launches:
    named = dict(zip(kernel.arg_names, args))
    named.update({n: v for n, v in kwargs.items() if n not in ("num_warps", "num_stages")})
    result[kernel.fn.__name__] = sorted(written_names(kernel, named))
print(json.dumps(result))
"""


def kernel_writes(launch_code: str) -> dict:
    """Run ``launch_code`` (which calls a launcher with ``wrap=Capture``); return
    {kernel name: sorted names of the arguments the analysis reports as written}."""
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    done = subprocess.run(
        [sys.executable, "-c", _PROLOGUE + launch_code + _EPILOGUE],
        capture_output=True, text=True, env=env, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "assuming every input is mutated" not in done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])
