"""The reference maths of adaptact: one pure function per activation, plain torch ops.

Every module and every fast path in ``adaptact.ops`` must equal these functions.

Parameter shapes. Inputs are (N, C, *) with channels on dim 1. A parameter may be

* a scalar (0-d or shape (1,)): shared by the whole tensor;
* per channel, shape (C,): broadcast on dim 1;
* per sample and channel, shape (N, C) (or (N, 1), one value per sample);
* already broadcastable against ``x`` (ndim == x.ndim), e.g. Meta-ACON's pixel-wise beta.

Parameters are cast to the input's dtype, so a float32 module applied to bfloat16
activations returns bfloat16 (gradients still reach the float32 parameters).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "acon_a",
    "acon_b",
    "acon_c",
    "apl",
    "aprelu",
    "arelu",
    "channel_view",
    "crelu",
    "dy_relu",
    "frelu",
    "gelu_tanh",
    "golu",
    "laplace",
    "maxout",
    "maxout_pool",
    "meta_acon_c",
    "mixture",
    "pau",
    "polynorm",
    "quick_gelu",
    "relu2",
    "slaf",
    "spatial_mean",
    "sqrt_softplus",
    "swiglu_oss",
    "swish",
    "xielu",
]


def channel_view(t: Tensor, x: Tensor, cast: bool = True) -> Tensor:
    """View ``t`` (scalar, (C,), (N, C) or x-shaped) so it broadcasts against ``x`` on dims 0/1,
    cast to ``x``'s dtype unless ``cast`` is False."""
    if cast:
        t = t.to(x.dtype)
    if x.ndim == 0:  # a 0-D input keeps its shape: its parameters are single values
        return t.reshape(())
    if t.ndim == 1 and x.ndim > 2:
        return t.reshape((-1,) + (1,) * (x.ndim - 2))
    if t.ndim == 2 and x.ndim > 2:
        return t.reshape(t.shape + (1,) * (x.ndim - 2))
    return t


def spatial_mean(x: Tensor, dtype: torch.dtype | None = None) -> Tensor:
    """Global average pool of (N, C, *) over every dim after the channels: (N, C).

    ``dtype`` sets the accumulation and result dtype (no full-size cast of ``x``).
    """
    if x.ndim <= 2:
        return x if dtype is None else x.to(dtype)
    return x.mean(dim=tuple(range(2, x.ndim)), dtype=dtype)


def arelu(x: Tensor, alpha: Tensor, beta: Tensor) -> Tensor:
    """AReLU (Chen et al. 2020, arXiv 2006.13858).

    y = (1 + sigmoid(beta)) * relu(x) - clamp(alpha, 0.01, 0.99) * relu(-x)
    """
    gain = channel_view(1 + torch.sigmoid(beta), x)
    slope = channel_view(alpha.clamp(0.01, 0.99), x)
    return gain * F.relu(x) - slope * F.relu(-x)


def acon_c(x: Tensor, p1: Tensor, p2: Tensor, beta: Tensor) -> Tensor:
    """ACON-C (Ma et al., CVPR 2021, arXiv 2009.04759): S_beta(p1 x, p2 x).

    y = (p1 - p2) x * sigmoid(beta (p1 - p2) x) + p2 x
    """
    d = channel_view(p1 - p2, x) * x
    return d * torch.sigmoid(channel_view(beta, x) * d) + channel_view(p2, x) * x


def acon_b(x: Tensor, p: Tensor, beta: Tensor) -> Tensor:
    """ACON-B: S_beta(x, p x) = (1 - p) x * sigmoid(beta (1 - p) x) + p x."""
    return acon_c(x, torch.ones_like(p), p, beta)


def acon_a(x: Tensor, beta: Tensor) -> Tensor:
    """ACON-A: S_beta(x, 0) = x * sigmoid(beta x), Swish with a learnable beta."""
    return x * torch.sigmoid(channel_view(beta, x) * x)


def meta_acon_c(x: Tensor, p1: Tensor, p2: Tensor, beta: Tensor) -> Tensor:
    """Meta-ACON-C: ACON-C whose ``beta`` is generated from the input.

    ``beta`` is (N, C) for the channel-wise generator, (N, 1) for the layer-wise one and
    x-shaped for the pixel-wise one; the modules in ``adaptact.nn`` compute it.
    """
    return acon_c(x, p1, p2, beta)


def aprelu(x: Tensor, alpha: Tensor) -> Tensor:
    """APReLU (Zhao et al., IEEE TIE 2020): y = max(x, 0) + alpha * min(x, 0).

    ``alpha`` is per sample: (N, C) in the paper, (N, 1) in the authors' Keras CIFAR code.
    """
    return F.relu(x) + channel_view(alpha, x) * torch.clamp(x, max=0)


def swish(x: Tensor, beta: Tensor | float = 1.0) -> Tensor:
    """Swish (Ramachandran et al. 2017, arXiv 1710.05941): x * sigmoid(beta x)."""
    if not isinstance(beta, Tensor):
        return x * torch.sigmoid(beta * x)
    return acon_a(x, beta)


def crelu(x: Tensor) -> Tensor:
    """CReLU (Shang et al., ICML 2016): concat(relu(x), relu(-x)) on dim 1 (2C channels)."""
    return torch.cat((F.relu(x), F.relu(-x)), dim=1)


def apl(x: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """Adaptive piecewise linear unit (Agostinelli et al., ICLR-W 2015, arXiv 1412.6830).

    y = relu(x) + sum_s a_s * relu(b_s - x); ``a`` and ``b`` have shape (S,) (shared).
    """
    hinge = F.relu(b.to(x.dtype).reshape((-1,) + (1,) * x.ndim) - x)
    return F.relu(x) + (a.to(x.dtype).reshape((-1,) + (1,) * x.ndim) * hinge).sum(0)


def mixture(x: Tensor, p: Tensor) -> Tensor:
    """Mixture of identity and ReLU, as in the AReLU paper's code: y = p x + (1 - p) relu(x)."""
    p = channel_view(p, x)
    return p * x + (1 - p) * F.relu(x)


def slaf(x: Tensor, coeff: Tensor) -> Tensor:
    """Self-learnable activation (Goyal et al. 2019, arXiv 1906.09529): y = sum_i c_i x^i.

    Evaluated by Horner's rule; ``coeff`` is (K,), lowest degree first.
    """
    return _polyval(coeff.to(x.dtype), x)


def _polyval(coeff: Tensor, x: Tensor) -> Tensor:
    y = torch.zeros_like(x) + coeff[-1]
    for i in range(coeff.shape[0] - 2, -1, -1):
        y = y * x + coeff[i]
    return y


def pau(x: Tensor, numerator: Tensor, denominator: Tensor) -> Tensor:
    """Safe Pade activation unit (Molina et al., ICLR 2020, arXiv 1907.06732).

    y = (a_0 + a_1 x + ... + a_m x^m) / (1 + |b_1| |x| + ... + |b_n| |x|^n)

    ``numerator`` is (m + 1,) = (a_0..a_m); ``denominator`` is (n,) = (b_1..b_n).
    The denominator is >= 1, so the unit has no poles. float16/bfloat16 inputs are computed in
    float32 (x^m overflows float16 from |x| ~ 7 at m = 5) and the result cast back.
    """
    xc = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
    num = _polyval(numerator.to(xc.dtype), xc)
    b = torch.cat((denominator.new_zeros(1), denominator.abs())).to(xc.dtype)
    den = 1 + _polyval(b, xc.abs())
    return (num / den).to(x.dtype)


def maxout(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """Per-channel maxout of K affine pieces: y = max_k (w_ck x + b_ck).

    ``weight`` and ``bias`` are (C, K). This is a maxout unit (Goodfellow et al., ICML 2013)
    whose K input maps are per-channel affine functions of x, so the shape is preserved.
    """
    shape = (1, weight.shape[0]) + (1,) * (x.ndim - 2) + (weight.shape[1],)
    pieces = x.unsqueeze(-1) * weight.to(x.dtype).reshape(shape) + bias.to(x.dtype).reshape(shape)
    return pieces.amax(dim=-1)


def maxout_pool(x: Tensor, pool_size: int = 1) -> Tensor:
    """Channel-pooling maxout, as the AReLU code's ``Maxout(pool_size)``: dim 1 split into groups
    of ``pool_size`` consecutive channels, each group replaced by its maximum (C / pool_size
    channels out). ``pool_size=1``, the code's default and what its experiments ran, is the identity.
    """
    if x.ndim < 2 or x.shape[1] % pool_size:
        raise ValueError(f"maxout_pool({pool_size}) needs dim 1 divisible by {pool_size}, got shape "
                         f"{tuple(x.shape)}")
    return x.unflatten(1, (x.shape[1] // pool_size, pool_size)).amax(dim=2)


def gelu_tanh(x: Tensor, coefficient: float = math.sqrt(2.0 / math.pi)) -> Tensor:
    """GELU's tanh form (Hendrycks & Gimpel, arXiv 1606.08415):
    y = x/2 * (1 + tanh(coefficient * (x + 0.044715 x^3))), coefficient = sqrt(2/pi) in the paper
    (0.7979946 in the AReLU code, see ``nn.TanhGELU``)."""
    return 0.5 * x * (1 + torch.tanh(coefficient * (x + 0.044715 * x.pow(3))))


def dy_relu(x: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """Dynamic ReLU (Chen et al., ECCV 2020, arXiv 2003.10027): y = max_k (a_k x + b_k).

    ``a`` and ``b`` are (N, C, K) per sample and channel (DY-ReLU-B) or (N, 1, K) per sample
    (DY-ReLU-A); K linear pieces. Pieces that vary along x's other dims come with x.ndim + 1 dims,
    broadcastable against ``x.unsqueeze(-1)`` (per position: (N, C or 1, T, K) for (N, C, T)).
    """
    if a.ndim == x.ndim + 1:
        return (x.unsqueeze(-1) * a.to(x.dtype) + b.to(x.dtype)).amax(dim=-1)
    shape = (a.shape[0], a.shape[1]) + (1,) * (x.ndim - 2) + (a.shape[-1],)
    return (x.unsqueeze(-1) * a.to(x.dtype).reshape(shape) + b.to(x.dtype).reshape(shape)).amax(dim=-1)


def frelu(x: Tensor, t: Tensor) -> Tensor:
    """FReLU (Ma, Zhang, Sun, ECCV 2020, arXiv 2007.11824): y = max(x, T(x)), with the funnel
    condition ``t`` = T(x) = BN(depthwise conv k x k (x)) computed by the caller."""
    return torch.maximum(x, t)


# --- the activations of today's language models ----------------------------------------------


def relu2(x: Tensor) -> Tensor:
    """Squared ReLU, relu(x)^2 (So et al., "Primer", arXiv 2109.08668)."""
    return torch.square(torch.relu(x))


GOLU_FLOOR = -20.0  # below it exp(-exp(-x)) is 0 in float64 already (from x < -6.62)


def golu(x: Tensor) -> Tensor:
    """Gompertz linear unit, x exp(-exp(-x)) (Das et al., arXiv 2502.03654). The inner exp sees x
    clamped at ``GOLU_FLOOR``: the same values, and a zero rather than 0 * inf = NaN gradient
    where exp(-x) overflows."""
    return x * torch.exp(-torch.exp(-x.clamp(min=GOLU_FLOOR)))


def xielu(x: Tensor, alpha_p: Tensor, alpha_n: Tensor, beta: Tensor | float = 0.5,
          eps: Tensor | float = -1e-6) -> Tensor:
    """xIELU (Huang & Schlag, arXiv 2411.13010), from its raw parameters as transformers'
    ``XIELUActivation`` holds them: with a_p = softplus(``alpha_p``) and a_n = beta +
    softplus(``alpha_n``), y = a_p x^2 + beta x for x > 0 and a_n (expm1(min(x, eps)) - x) +
    beta x otherwise."""
    beta = torch.as_tensor(beta, device=x.device).to(x.dtype)
    a_p = F.softplus(alpha_p).to(x.dtype)
    a_n = beta + F.softplus(alpha_n).to(x.dtype)
    eps = torch.as_tensor(eps, device=x.device).to(x.dtype)
    negative = (torch.expm1(torch.minimum(x, eps)) - x) * a_n + beta * x
    return torch.where(x > 0, a_p * x * x + beta * x, negative)


def polynorm(x: Tensor, weight: Tensor, bias: Tensor, eps: float = 1e-6, dim: int = -1) -> Tensor:
    """PolyNorm (Zhuo et al., ICLR 2025, arXiv 2411.03884), as its official code computes it:
    weight[0] n(x^3) + weight[1] n(x^2) + weight[2] n(x) + bias, with n(u) = u / sqrt(mean(u^2
    over ``dim``) + eps) (each token normalised over its channels). float16/bfloat16 inputs are
    normalised in float32, as RMSNorm layers do (x^6 underflows in half precision), and the result
    cast back."""

    def norm(u: Tensor) -> Tensor:
        return u * torch.rsqrt(u.pow(2).mean(dim, keepdim=True) + eps)

    xf = x.to(torch.promote_types(x.dtype, torch.float32))
    w = weight.to(xf.dtype)
    y = w[0] * norm(xf ** 3) + w[1] * norm(xf ** 2) + w[2] * norm(xf) + bias.to(xf.dtype)
    return y.to(x.dtype)


def quick_gelu(x: Tensor) -> Tensor:
    """GELU's sigmoid approximation, x sigmoid(1.702 x) (Hendrycks & Gimpel, arXiv 1606.08415;
    CLIP's and transformers' "quick_gelu")."""
    return x * torch.sigmoid(1.702 * x)


LAPLACE_MU, LAPLACE_SIGMA = 0.707107, 0.282095  # MEGA's constants (transformers' LaplaceActivation)


def laplace(x: Tensor, mu: float = LAPLACE_MU, sigma: float = LAPLACE_SIGMA) -> Tensor:
    """MEGA's Laplace attention function (Ma et al., arXiv 2209.10655), the normal CDF at
    (x - mu) / sigma: 0.5 (1 + erf((x - mu) / (sigma sqrt 2)))."""
    return 0.5 * (1.0 + torch.erf((x - mu) / (sigma * math.sqrt(2.0))))


def sqrt_softplus(x: Tensor) -> Tensor:
    """sqrt(softplus(x)), DeepSeek-V4's router score (transformers' "sqrtsoftplus")."""
    return F.softplus(x).sqrt()


def swiglu_oss(gate: Tensor, up: Tensor, alpha: float = 1.702, limit: float = 7.0) -> Tensor:
    """GPT-OSS's clamped SwiGLU gate (transformers' ``GptOssExperts._apply_gate``): with
    g = min(gate, limit) and u = clamp(up, -limit, limit), (u + 1) g sigmoid(alpha g)."""
    g = gate.clamp(max=limit)
    u = up.clamp(min=-limit, max=limit)
    return (u + 1) * (g * torch.sigmoid(g * alpha))
