"""Gated activations: SwiGLU/GEGLU as GatedActivation, any catalogue activation as the gate, and
GPT-OSS's clamped gate against transformers' own."""

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from adaptact.nn import AconC, GatedActivation, SwiGLUOSS


def test_swiglu_oss_equals_gpt_oss_gate_in_values_and_gradients():
    gpt_oss = pytest.importorskip("transformers.models.gpt_oss.modeling_gpt_oss")
    experts = SimpleNamespace(alpha=1.702, limit=7.0)  # what _apply_gate reads of GptOssExperts
    x = (6 * torch.randn(3, 5, 32, dtype=torch.float64)).requires_grad_()  # past the limit both ways
    y, ref = SwiGLUOSS()(x), gpt_oss.GptOssExperts._apply_gate(experts, x)
    torch.testing.assert_close(y, ref, rtol=1e-15, atol=1e-15)
    dy = torch.randn_like(y)
    (dx,), (dx_ref,) = torch.autograd.grad(y, x, dy), torch.autograd.grad(ref, x, dy)
    torch.testing.assert_close(dx, dx_ref, rtol=1e-15, atol=1e-15)
    halves = torch.cat((x[..., ::2], x[..., 1::2]), dim=-1)
    torch.testing.assert_close(SwiGLUOSS(interleaved=False)(halves), y, rtol=0, atol=0)


def test_swiglu_and_geglu_are_the_gated_silu_and_gelu_in_either_layout():
    x = torch.randn(4, 7, 12, dtype=torch.float64)
    a, b = x.chunk(2, dim=-1)
    torch.testing.assert_close(GatedActivation(nn.SiLU())(x), F.silu(a) * b, rtol=0, atol=0)
    first = GatedActivation(nn.GELU(), channel_dim=1)(x.transpose(1, 2))
    torch.testing.assert_close(first, (F.gelu(a) * b).transpose(1, 2), rtol=0, atol=0)


def test_an_adaptive_activation_is_the_gate_of_tokens():
    gate = AconC(6, channel_dim=-1)
    with torch.no_grad():
        gate.beta.uniform_(0.5, 2.0)
    x = torch.randn(2, 5, 12)
    a, b = x.chunk(2, dim=-1)
    y = GatedActivation(gate)(x)
    torch.testing.assert_close(y, gate(a) * b)
    y.sum().backward()
    assert gate.beta.grad is not None and gate.beta.grad.abs().sum() > 0


def test_an_odd_width_is_a_one_line_error():
    with pytest.raises(ValueError, match="needs an even size there, got input shape \\(2, 5\\)"):
        GatedActivation(nn.SiLU())(torch.randn(2, 5))
