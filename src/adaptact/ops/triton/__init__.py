"""Fused Triton kernels behind ``backend="triton"`` (CUDA; CPU under ``TRITON_INTERPRET=1``).

Same interface as ``adaptact.ops.autograd``: parameters arrive as views that broadcast against
``x`` on dims 0/1, and one fused kernel runs each direction (``kernels.py``, launched and
registered as PyTorch operators in ``launch.py``). Meta-ACON-C and APReLU, whose parameter is
generated from a pool of x, run as one Function that owns the generator (``generated.py``);
Dynamic ReLU, whose K pieces are generated so, has its own kernels and Function (``dy_relu.py``).
"""

from .dy_relu import dy_relu, generated_dy_relu
from .generated import generated_acon_c, generated_aprelu
from .launch import acon_c, acon_c_pixel, aprelu, arelu

__all__ = ["acon_c", "acon_c_pixel", "aprelu", "arelu", "dy_relu", "generated_acon_c", "generated_aprelu",
           "generated_dy_relu"]
