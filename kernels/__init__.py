"""Triton kernels for AdaSplash-2 attention and alpha-entmax.

Imported lazily by ``adasplash_compile.ops`` so that importing the package never
needs Triton or a GPU driver.
"""
