"""Checks of a workflow's numbers and device, run before any expensive work: each failure is a
UserError whose message names the option and says what is wrong."""

from __future__ import annotations

import math

import torch

from .errors import UserError
from .nn.base import int_at_least

__all__ = ["device", "finite_positive", "int_in_range", "share"]


def int_in_range(name: str, value: object, low: int = 1, high: int | None = None) -> int:
    """``nn.base.int_at_least`` as a UserError, with an upper bound."""
    try:
        number = int_at_least(name, value, low)
    except ValueError as err:
        raise UserError(str(err)) from None
    if high is not None and number > high:
        raise UserError(f"{name} must be at most {high}, got {value!r}")
    return number


def device(name: str | None) -> torch.device:
    """The device to work on: cpu or an available cuda device; "auto" or None: cuda if available."""
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        raise UserError(f"unknown device {name!r}; use cpu, cuda or auto") from None
    if dev.type not in ("cpu", "cuda"):
        raise UserError(f"device {name!r}: adaptact runs on cpu or cuda")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {name!r}: no CUDA GPU is available here")
    return dev


def finite_positive(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) \
            or value <= 0:
        raise UserError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def share(name: str, value: object) -> float:
    """A fraction in [0, 1)."""
    if not isinstance(value, int | float) or isinstance(value, bool) or not 0 <= value < 1:
        raise UserError(f"{name} must be a share in [0, 1), got {value!r}")
    return float(value)
