"""Fast paths behind the same maths: memory-lean autograd Functions and Triton kernels."""

from .dispatch import BACKENDS, resolve, triton_available

__all__ = ["BACKENDS", "resolve", "triton_available"]
