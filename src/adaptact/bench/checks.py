"""Checks of a workflow's numbers, run before any expensive work: each failure is a UserError
whose message names the option and says what is wrong."""

from __future__ import annotations

import math

from ..errors import UserError

__all__ = ["finite_positive", "int_in_range"]


def int_in_range(name: str, value: object, low: int = 1, high: int | None = None) -> int:
    too_high = high is not None and isinstance(value, int) and value > high
    if isinstance(value, bool) or not isinstance(value, int) or value < low or too_high:
        bounds = f"from {low} to {high}" if high is not None else f">= {low}"
        raise UserError(f"{name} must be an int {bounds}, got {value!r}")
    return value


def finite_positive(name: str, value: object) -> float:
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if not number or not math.isfinite(value) or value <= 0:
        raise UserError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)
