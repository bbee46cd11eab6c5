"""AdaSplash-2 sparse attention for the PyTorch compiler stack."""

# Registration order matters: the ops must exist before their fakes and autograd.
from adasplash_compile import ops as _ops  # noqa: F401
from adasplash_compile import fake as _fake  # noqa: F401
from adasplash_compile import autograd as _autograd  # noqa: F401
from adasplash_compile import lowering as _lowering  # noqa: F401
from adasplash_compile.api import adasplash, entmax
from adasplash_compile.version import __version__

__all__ = ["adasplash", "entmax", "__version__"]
