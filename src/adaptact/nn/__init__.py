"""torch.nn modules of adaptact's activations (torch.nn's own classes cover the rest)."""

from .acon import AconA, AconB, AconC
from .aprelu import APReLU
from .arelu import AReLU
from .base import ActivationModule
from .channels import ChannelModule
from .context import CONTEXTS
from .tracking import track_decoding
from .classic import CReLU, PReLU, Swish, TanhGELU
from .dy_relu import DyReLU
from .fixed import ClippedGELU, Laplace, QuickGELU, SqrtSoftplus
from .frelu import FReLU
from .gated import GatedActivation, SwiGLUOSS
from .llm import XIELU, GoLU, PolyNorm, ReLU2
from .comparators import APL, SLAF, Maxout, MaxoutPool, Mixture
from .meta_acon import MetaAconC
from .rational import PAU

__all__ = [
    "APL",
    "PAU",
    "SLAF",
    "APReLU",
    "AReLU",
    "AconA",
    "AconB",
    "AconC",
    "ActivationModule",
    "CONTEXTS",
    "ChannelModule",
    "ClippedGELU",
    "CReLU",
    "DyReLU",
    "FReLU",
    "GatedActivation",
    "GoLU",
    "Laplace",
    "Maxout",
    "MaxoutPool",
    "MetaAconC",
    "Mixture",
    "PReLU",
    "PolyNorm",
    "QuickGELU",
    "ReLU2",
    "SqrtSoftplus",
    "SwiGLUOSS",
    "Swish",
    "TanhGELU",
    "XIELU",
    "track_decoding",
]
