"""Triton kernels for the adaptive activations: a fused forward, a fused backward and a pooling read.

A dense input is seen as (N, C, S), the spatial dims flattened to S, with one stride per dim:
contiguous NCHW/NCL/NCDHW tensors have S unit-stride, channels_last/channels_last_3d and (N, C)
tensors C. Each program takes one tile of BLOCK_N x BLOCK_C x BLOCK_S elements; the host
(``launch.plan``) sizes the tile so its widest side runs along the unit-stride dim, where loads
and stores coalesce and vectorise, and so that few lanes fall outside the tensor. Parameters
come as (N, C) views with a stride per dim (0 where broadcast): per channel, per sample or
shared, they are gathered per tile (a BLOCK_N x BLOCK_C x 1 load, broadcast over S).
Everything is computed in float32. Offsets are 64-bit when WIDE (tensors of 2^31 elements or more).

Reductions never take a pass of their own: a tile's sums over S (and over N when no parameter
is per sample) are written as partial sums, which the host adds up (``launch.py``).

KIND selects the activation (``ops.kinds``); a, b, c are its parameters. Dynamic ReLU, whose K
pieces each have a slope and an intercept, has kernels of its own (``dy_relu_fwd``/``dy_relu_bwd``).
"""

from __future__ import annotations

import triton
import triton.language as tl

from .. import kinds

AReLU: tl.constexpr = tl.constexpr(kinds.AReLU)
ACON_C: tl.constexpr = tl.constexpr(kinds.ACON_C)
ACON_C_PIXEL: tl.constexpr = tl.constexpr(kinds.ACON_C_PIXEL)
APReLU: tl.constexpr = tl.constexpr(kinds.APReLU)


@triton.jit
def _tile(N, C, S, NB_C, NB_S, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr,
          WIDE: tl.constexpr):
    """This program's tile: block indices and the (n, c, s) indices shaped to broadcast as
    BLOCK_N x BLOCK_C x BLOCK_S, with the mask of the elements inside the tensor."""
    pid = tl.program_id(0)
    blk_s = pid % NB_S
    blk_c = (pid // NB_S) % NB_C
    blk_n = pid // (NB_S * NB_C)
    n = blk_n * BLOCK_N + tl.arange(0, BLOCK_N)[:, None, None]
    c = blk_c * BLOCK_C + tl.arange(0, BLOCK_C)[None, :, None]
    s = blk_s * BLOCK_S + tl.arange(0, BLOCK_S)[None, None, :]
    if WIDE:
        n = n.to(tl.int64)
        c = c.to(tl.int64)
        s = s.to(tl.int64)
    return blk_n, blk_s, n, c, s, (n < N) & (c < C) & (s < S)


@triton.jit
def _gather(ptr, n, c, sn, sc, N, C):
    """A parameter viewed as (N, C) with strides (sn, sc), gathered for the tile: BLOCK_N x BLOCK_C x 1."""
    return tl.load(ptr + n * sn + c * sc, mask=(n < N) & (c < C), other=0.0).to(tl.float32)


@triton.jit
def _activation(x, a, b, c, KIND: tl.constexpr):
    if AReLU == KIND:
        y = tl.where(x > 0, b * x, a * x)
    elif APReLU == KIND:
        y = tl.where(x > 0, x, c * x)
    else:
        if KIND == ACON_C_PIXEL:
            c = tl.sigmoid(x)
        d = a * x
        y = d * tl.sigmoid(c * d) + b * x
    return y


@triton.jit
def _activation_grads(x, dy, a, b, c, KIND: tl.constexpr):
    """dy * dy/dx and the per-element terms of the gradients of a, b and c (each summed later)."""
    if AReLU == KIND:
        dx = dy * tl.where(x > 0, b, tl.where(x < 0, a, 0.0))  # relu'(0) = 0, as the reference
        dyx = dy * x
        da = tl.where(x < 0, dyx, 0.0)
        db = tl.where(x > 0, dyx, 0.0)
        dc = da
    elif APReLU == KIND:
        dx = tl.where(x > 0, dy, dy * c)  # d min(x, 0)/dx = 1 at 0, as torch.clamp
        dc = tl.where(x > 0, 0.0, dy * x)
        da = dc
        db = dc
    else:
        if KIND == ACON_C_PIXEL:
            c = tl.sigmoid(x)
        d = a * x
        s = tl.sigmoid(c * d)
        t = s * (1.0 - s)
        g = s + c * d * t
        dc = dy * d * d * t
        dx = dy * (a * g + b)
        if KIND == ACON_C_PIXEL:
            dx += dc * c * (1.0 - c)
        da = dy * x * g
        db = dy * x
    return dx, da, db, dc


@triton.jit
def _store_sums(ptr, terms, blk_n, blk_s, n, c, N, C, NB_S, PER_SAMPLE: tl.constexpr):
    """The tile's partial sums of ``terms``: over S into (NB_S, N, C) when PER_SAMPLE, else over
    N and S into (NB_N * NB_S, C)."""
    sums = tl.sum(terms, axis=2, keep_dims=True)
    if PER_SAMPLE:
        tl.store(ptr + (blk_s * N + n) * C + c, sums, mask=(n < N) & (c < C))
    else:
        sums = tl.sum(sums, axis=0, keep_dims=True)  # 1 x BLOCK_C x 1, as c
        tl.store(ptr + (blk_n * NB_S + blk_s) * C + c, sums, mask=c < C)


@triton.jit
def activation_fwd(x_ptr, y_ptr, a_ptr, b_ptr, c_ptr, a_sn, a_sc, b_sn, b_sc, c_sn, c_sc,
                   N, C, S, x_sn, x_sc, x_ss, NB_C, NB_S, KIND: tl.constexpr,
                   BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr, WIDE: tl.constexpr):
    """y = activation(x); y has x's strides."""
    _, _, n, c, s, mask = _tile(N, C, S, NB_C, NB_S, BLOCK_N, BLOCK_C, BLOCK_S, WIDE)
    offs = n * x_sn + c * x_sc + s * x_ss
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    a = _gather(a_ptr, n, c, a_sn, a_sc, N, C) if APReLU != KIND else 0.0
    b = _gather(b_ptr, n, c, b_sn, b_sc, N, C) if APReLU != KIND else 0.0
    p = _gather(c_ptr, n, c, c_sn, c_sc, N, C) if KIND == ACON_C or APReLU == KIND else 0.0
    y = _activation(x, a, b, p, KIND)
    tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def activation_bwd(x_ptr, dy_ptr, dx_ptr, ga_ptr, gb_ptr, gc_ptr, pool_neg_ptr, pool_pos_ptr, a_ptr, b_ptr,
                   c_ptr,
                   a_sn, a_sc, b_sn, b_sc, c_sn, c_sc, N, C, S, x_sn, x_sc, x_ss, dy_sn, dy_sc, dy_ss,
                   NB_C, NB_S,
                   KIND: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr,
                   WIDE: tl.constexpr, GRAD_A: tl.constexpr, GRAD_B: tl.constexpr, GRAD_C: tl.constexpr,
                   PER_SAMPLE: tl.constexpr, DX: tl.constexpr, POOLED: tl.constexpr):
    """From one read of x and dy: the partial sums of the gradients of a, b and c that GRAD_*
    ask for, and (DX) dx in x's strides, plus (POOLED) the gradient of a pool of x that depends
    only on the sign of x: pool_pos[n, c] where x > 0, pool_neg[n, c] elsewhere ((N, C), contiguous)."""
    blk_n, blk_s, n, c, s, mask = _tile(N, C, S, NB_C, NB_S, BLOCK_N, BLOCK_C, BLOCK_S, WIDE)
    offs = n * x_sn + c * x_sc + s * x_ss
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    dy = tl.load(dy_ptr + n * dy_sn + c * dy_sc + s * dy_ss, mask=mask, other=0.0).to(tl.float32)
    a = _gather(a_ptr, n, c, a_sn, a_sc, N, C) if APReLU != KIND else 0.0
    b = _gather(b_ptr, n, c, b_sn, b_sc, N, C) if APReLU != KIND else 0.0
    p = _gather(c_ptr, n, c, c_sn, c_sc, N, C) if KIND == ACON_C or APReLU == KIND else 0.0
    dx, da, db, dc = _activation_grads(x, dy, a, b, p, KIND)
    if GRAD_A:
        _store_sums(ga_ptr, da, blk_n, blk_s, n, c, N, C, NB_S, PER_SAMPLE)
    if GRAD_B:
        _store_sums(gb_ptr, db, blk_n, blk_s, n, c, N, C, NB_S, PER_SAMPLE)
    if GRAD_C:
        _store_sums(gc_ptr, dc, blk_n, blk_s, n, c, N, C, NB_S, PER_SAMPLE)
    if DX:
        if POOLED:
            neg = _gather(pool_neg_ptr, n, c, C, 1, N, C)
            pos = _gather(pool_pos_ptr, n, c, C, 1, N, C)
            dx += tl.where(x > 0, pos, neg)
        tl.store(dx_ptr + offs, dx.to(dx_ptr.dtype.element_ty), mask=mask)


@triton.jit
def signed_sums(x_ptr, neg_ptr, pos_ptr, N, C, S, x_sn, x_sc, x_ss, NB_C, NB_S,
                BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr, WIDE: tl.constexpr):
    """Partial sums over S of min(x, 0) and max(x, 0), (NB_S, N, C) each: the pooling read."""
    blk_n, blk_s, n, c, s, mask = _tile(N, C, S, NB_C, NB_S, BLOCK_N, BLOCK_C, BLOCK_S, WIDE)
    x = tl.load(x_ptr + n * x_sn + c * x_sc + s * x_ss, mask=mask, other=0.0).to(tl.float32)
    _store_sums(neg_ptr, tl.minimum(x, 0.0), blk_n, blk_s, n, c, N, C, NB_S, True)
    _store_sums(pos_ptr, tl.maximum(x, 0.0), blk_n, blk_s, n, c, N, C, NB_S, True)


@triton.jit
def _pieces(x, a_ptr, b_ptr, n, c, a_sn, a_sc, a_sk, b_sn, b_sc, b_sk, N, C, K: tl.constexpr):
    """Dynamic ReLU's max over K pieces a_k x + b_k, the slope of the winning piece and its index
    (the first of equal pieces wins, as ``ops.autograd``)."""
    a = _gather(a_ptr, n, c, a_sn, a_sc, N, C)
    best = a * x + _gather(b_ptr, n, c, b_sn, b_sc, N, C)
    slope = a + tl.zeros_like(x)
    win = tl.zeros(x.shape, dtype=tl.int32)
    for k in tl.static_range(1, K):
        a = _gather(a_ptr + k * a_sk, n, c, a_sn, a_sc, N, C)
        v = a * x + _gather(b_ptr + k * b_sk, n, c, b_sn, b_sc, N, C)
        take = v > best
        best = tl.where(take, v, best)
        slope = tl.where(take, a, slope)
        win = tl.where(take, k, win)
    return best, slope, win


@triton.jit
def _store_piece_sums(ptr, terms, k, blk_s, n, c, N, C, K: tl.constexpr):
    """The tile's partial sums over S of one piece's ``terms``, into (NB_S, N, C, K)."""
    sums = tl.sum(terms, axis=2, keep_dims=True)
    tl.store(ptr + ((blk_s * N + n) * C + c) * K + k, sums, mask=(n < N) & (c < C))


@triton.jit
def dy_relu_fwd(x_ptr, y_ptr, a_ptr, b_ptr, a_sn, a_sc, a_sk, b_sn, b_sc, b_sk, N, C, S, x_sn, x_sc, x_ss,
                NB_C, NB_S, K: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr,
                BLOCK_S: tl.constexpr, WIDE: tl.constexpr):
    """y = max_k (a_k x + b_k), the pieces (N, C, K) with a stride per dim (sc = 0 when shared
    across channels); y has x's strides."""
    _, _, n, c, s, mask = _tile(N, C, S, NB_C, NB_S, BLOCK_N, BLOCK_C, BLOCK_S, WIDE)
    offs = n * x_sn + c * x_sc + s * x_ss
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    y, _, _ = _pieces(x, a_ptr, b_ptr, n, c, a_sn, a_sc, a_sk, b_sn, b_sc, b_sk, N, C, K)
    tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def dy_relu_bwd(x_ptr, dy_ptr, dx_ptr, ga_ptr, gb_ptr, pool_ptr, a_ptr, b_ptr, a_sn, a_sc, a_sk, b_sn, b_sc,
                b_sk, N, C, S, x_sn, x_sc, x_ss, dy_sn, dy_sc, dy_ss, NB_C, NB_S, K: tl.constexpr,
                BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr, WIDE: tl.constexpr,
                GRADS: tl.constexpr, DX: tl.constexpr, POOLED: tl.constexpr):
    """From one read of x and dy, with the winning piece recomputed: (GRADS) the partial sums over
    S of dy x and dy where each piece wins, the gradients of its slope and intercept, (NB_S, N, C, K)
    each; (DX) dx = dy a_win in x's strides, plus (POOLED) the gradient of the spatial mean
    pool[n, c] ((N, C), contiguous)."""
    _, blk_s, n, c, s, mask = _tile(N, C, S, NB_C, NB_S, BLOCK_N, BLOCK_C, BLOCK_S, WIDE)
    offs = n * x_sn + c * x_sc + s * x_ss
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    dy = tl.load(dy_ptr + n * dy_sn + c * dy_sc + s * dy_ss, mask=mask, other=0.0).to(tl.float32)
    _, slope, win = _pieces(x, a_ptr, b_ptr, n, c, a_sn, a_sc, a_sk, b_sn, b_sc, b_sk, N, C, K)
    if GRADS:
        dyx = dy * x
        for k in tl.static_range(K):
            on = win == k
            _store_piece_sums(ga_ptr, tl.where(on, dyx, 0.0), k, blk_s, n, c, N, C, K)
            _store_piece_sums(gb_ptr, tl.where(on, dy, 0.0), k, blk_s, n, c, N, C, K)
    if DX:
        dx = dy * slope
        if POOLED:
            dx += _gather(pool_ptr, n, c, C, 1, N, C)
        tl.store(dx_ptr + offs, dx.to(dx_ptr.dtype.element_ty), mask=mask)
