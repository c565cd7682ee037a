"""Triton kernels for the adaptive activations: one fused forward and one fused backward pass.

The input is seen as rows (n, c) of S = prod(spatial) elements with one stride for the
flattened spatial dims (true for contiguous and channels_last tensors). A program handles a
block of one row, so each parameter is a scalar per program: per channel (C,), per sample
(N, C) or shared, passed as an (N, C) view with strides (0 where broadcast). Everything is
computed in float32. Reductions write per-(row, block) partial sums, which the host reduces
(a few floats per row): no extra full pass.

The backward kernel has two switches. PARTIALS: write the partial sums of the parameter
gradients. DX: write dx, plus (POOLED) a per-row term that depends only on the sign of x,
which is how the gradient of a global average pool of x (Meta-ACON-C) or of min(x, 0) and
max(x, 0) (APReLU) joins dx. Both on: one pass for the activations whose parameters are
not generated from x (5 passes forward+backward). For the generated ones the generator's
backward needs the parameter gradients before dx can be finished, so backward runs the
kernel twice (partials only: reads x and dy; then dx only): with the pooling read in
forward, 8 passes.

KIND selects the activation:
  0 AReLU       a = clamp(alpha) (slope), b = 1 + sigmoid(beta) (gain)
  1 ACON-C      a = p1 - p2, b = p2, c = beta          (ACON-A/B and Meta-ACON-C too)
  2 ACON-C      a = p1 - p2, b = p2, beta = sigmoid(x)   (Meta-ACON-C, pixel-wise)
  3 APReLU      c = alpha
"""

from __future__ import annotations

import triton
import triton.language as tl

AReLU, ACON, ACON_PIXEL, APReLU = 0, 1, 2, 3


@triton.jit
def _load_param(ptr, n, c, sn, sc):
    return tl.load(ptr + n * sn + c * sc).to(tl.float32)


@triton.jit
def _switching_factor(x, c_ptr, n, ch, c_sn, c_sc, KIND: tl.constexpr):
    """ACON's beta: a parameter per channel or sample (KIND 1) or sigmoid(x) per element (KIND 2)."""
    if KIND == 1:
        return _load_param(c_ptr, n, ch, c_sn, c_sc)
    return tl.sigmoid(x)


@triton.jit
def activation_fwd(x_ptr, y_ptr, a_ptr, b_ptr, c_ptr, a_sn, a_sc, b_sn, b_sc, c_sn, c_sc,
                   C, S, x_sn, x_sc, x_ss, KIND: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    n = row // C
    ch = row % C
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < S
    ptrs = n * x_sn + ch * x_sc + offs * x_ss
    x = tl.load(x_ptr + ptrs, mask=mask, other=0.0).to(tl.float32)
    if KIND == 0:
        a = _load_param(a_ptr, n, ch, a_sn, a_sc)
        b = _load_param(b_ptr, n, ch, b_sn, b_sc)
        y = tl.where(x > 0, b * x, a * x)
    elif KIND == 3:
        y = tl.where(x > 0, x, _load_param(c_ptr, n, ch, c_sn, c_sc) * x)
    else:
        a = _load_param(a_ptr, n, ch, a_sn, a_sc)
        b = _load_param(b_ptr, n, ch, b_sn, b_sc)
        beta = _switching_factor(x, c_ptr, n, ch, c_sn, c_sc, KIND)
        d = a * x
        y = d * tl.sigmoid(beta * d) + b * x
    tl.store(y_ptr + ptrs, y.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def activation_bwd(x_ptr, dy_ptr, dx_ptr, ga_ptr, gb_ptr, gc_ptr, en_ptr, ep_ptr, a_ptr, b_ptr, c_ptr,
                   a_sn, a_sc, b_sn, b_sc, c_sn, c_sc, C, S, NB,
                   x_sn, x_sc, x_ss, d_sn, d_sc, d_ss, KIND: tl.constexpr, BLOCK: tl.constexpr,
                   PARTIALS: tl.constexpr, DX: tl.constexpr, POOLED: tl.constexpr):
    row = tl.program_id(0)
    blk = tl.program_id(1)
    n = row // C
    ch = row % C
    offs = blk * BLOCK + tl.arange(0, BLOCK)
    mask = offs < S
    xp = n * x_sn + ch * x_sc + offs * x_ss
    dp = n * d_sn + ch * d_sc + offs * d_ss
    x = tl.load(x_ptr + xp, mask=mask, other=0.0).to(tl.float32)
    dy = tl.load(dy_ptr + dp, mask=mask, other=0.0).to(tl.float32)
    part = row * NB + blk
    if KIND == 0:
        a = _load_param(a_ptr, n, ch, a_sn, a_sc)
        b = _load_param(b_ptr, n, ch, b_sn, b_sc)
        dx = dy * tl.where(x > 0, b, tl.where(x < 0, a, 0.0))  # relu'(0) = 0, as the reference
        if PARTIALS:
            dyx = dy * x
            tl.store(ga_ptr + part, tl.sum(tl.where(x < 0, dyx, 0.0), axis=0))
            tl.store(gb_ptr + part, tl.sum(tl.where(x > 0, dyx, 0.0), axis=0))
    elif KIND == 3:
        alpha = _load_param(c_ptr, n, ch, c_sn, c_sc)
        dx = tl.where(x > 0, dy, dy * alpha)  # d min(x, 0)/dx = 1 at 0, as torch.clamp
        if PARTIALS:
            tl.store(gc_ptr + part, tl.sum(tl.where(x > 0, 0.0, dy * x), axis=0))
    else:
        a = _load_param(a_ptr, n, ch, a_sn, a_sc)
        b = _load_param(b_ptr, n, ch, b_sn, b_sc)
        beta = _switching_factor(x, c_ptr, n, ch, c_sn, c_sc, KIND)
        d = a * x
        s = tl.sigmoid(beta * d)
        t = s * (1.0 - s)
        g = s + beta * d * t
        dbeta = dy * d * d * t
        dx = dy * (a * g + b)
        if KIND == 2:
            dx += dbeta * beta * (1.0 - beta)
        if PARTIALS:
            tl.store(ga_ptr + part, tl.sum(dy * x * g, axis=0))  # -> p1 - p2 direction
            tl.store(gb_ptr + part, tl.sum(dy * x, axis=0))
            tl.store(gc_ptr + part, tl.sum(dbeta, axis=0))
    if DX:
        if POOLED:  # the pooling gradient: one value per row for x <= 0 and one for x > 0
            dx += tl.where(x > 0, tl.load(ep_ptr + row), tl.load(en_ptr + row))
        tl.store(dx_ptr + xp, dx.to(dx_ptr.dtype.element_ty), mask=mask)


@triton.jit
def signed_sums(x_ptr, neg_ptr, pos_ptr, C, S, NB, x_sn, x_sc, x_ss, BLOCK: tl.constexpr):
    """Partial sums of min(x, 0) and max(x, 0) per (row, block): the pooling read."""
    row = tl.program_id(0)
    blk = tl.program_id(1)
    offs = blk * BLOCK + tl.arange(0, BLOCK)
    x = tl.load(x_ptr + (row // C) * x_sn + (row % C) * x_sc + offs * x_ss, mask=offs < S, other=0.0)
    x = x.to(tl.float32)
    tl.store(neg_ptr + row * NB + blk, tl.sum(tl.minimum(x, 0.0), axis=0))
    tl.store(pos_ptr + row * NB + blk, tl.sum(tl.maximum(x, 0.0), axis=0))
