"""Fused Triton kernels behind ``backend="triton"`` (CUDA; CPU under ``TRITON_INTERPRET=1``).

Same interface as ``adaptact.ops.autograd``: parameters arrive as views that broadcast against
``x`` on dims 0/1, and one fused kernel runs each direction. See ``kernels.py``.
"""

from .launch import acon_c, acon_c_pixel, aprelu, arelu, signed_spatial_mean

__all__ = ["acon_c", "acon_c_pixel", "aprelu", "arelu", "signed_spatial_mean"]
