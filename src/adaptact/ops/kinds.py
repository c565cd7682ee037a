"""The activations the fused paths compute, by number: the ``kind`` of the Triton kernels and ops
(``ops/triton``) and of their autograd fallback (``ops/fallback.py``). a, b, c are the parameters:

  AReLU         y = b x (x > 0), a x (x <= 0)      a = clamp(alpha, 0.01, 0.99), b = 1 + sigmoid(beta)
  ACON_C        y = a x sigmoid(c a x) + b x        a = p1 - p2, b = p2, c = beta (ACON-A/B, Meta-ACON-C)
  ACON_C_PIXEL  ACON_C with c = sigmoid(x)          (Meta-ACON-C, pixel-wise)
  APReLU        y = x (x > 0), c x (x <= 0)        c = alpha
"""

AReLU, ACON_C, ACON_C_PIXEL, APReLU = range(4)

# Which of a, b, c each kind has, and so which parameter gradients it reduces.
PARAMETERS = {AReLU: "ab", ACON_C: "abc", ACON_C_PIXEL: "ab", APReLU: "c"}
