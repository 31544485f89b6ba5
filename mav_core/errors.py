"""Errors a user can cause: one type, naming the parameter at fault.

The core raises InputError(param, message) with its own parameter names (`steps`, `sampler`, `frames`,
...) and a message that reads on from the name ("steps must be an integer in [1, 1000], got 0"); nodes
translate `param` to their input names and the CLI to its option names, so every check is written once,
here in the core. InputError is a ValueError: callers that catch ValueError keep working.
"""
from __future__ import annotations

import math

import torch


class InputError(ValueError):
    def __init__(self, param: str, message: str):
        super().__init__(f"{param} {message}")
        self.param = param
        self.message = message


def check_int(param: str, value, lo: int = 1, hi: int | None = None) -> int:
    """An integer in [lo, hi] (bools and floats are refused); returns it."""
    if isinstance(value, bool) or not isinstance(value, int) or value < lo or (hi is not None and value > hi):
        raise InputError(param, f"must be an integer in [{lo}, {hi if hi is not None else 'inf'}], got {value!r}")
    return value


def check_number(param: str, value, lo: float, hi: float, lo_open: bool = False) -> float:
    """A finite real number in [lo, hi] ((lo, hi] when lo_open); bools and strings are refused."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < lo or value > hi or (lo_open and value == lo):
        raise InputError(param, f"must be a finite number in {'(' if lo_open else '['}{lo}, {hi}], got {value!r}")
    return value


def check_choice(param: str, value, choices) -> str:
    if value not in choices:
        raise InputError(param, f"must be one of {sorted(choices)}, got {value!r}")
    return value


def check_finite(param: str, value, key: str | None = None) -> None:
    """Every floating-point tensor in `value` (a tensor, or a dict / list / tuple of them, as conditioning
    is) holds only finite values: NaN or inf in an input is that input's fault, not the model's."""
    if isinstance(value, dict):
        for k, v in value.items():
            check_finite(param, v, str(k))
    elif isinstance(value, (list, tuple)):
        for v in value:
            check_finite(param, v, key)
    elif isinstance(value, torch.Tensor) and value.is_floating_point() and value.numel():
        # the sum is finite when every value is (one reduction, nothing input-sized allocated); a sum that
        # overflowed from finite values is told apart by the exact check
        if not bool(torch.isfinite(value.sum())) and not bool((finite := value.isfinite()).all()):
            where = f" {key!r}" if key else ""
            raise InputError(param, f"must hold only finite values, but{where} has {int((~finite).sum())} NaN/inf "
                                    f"of {value.numel()} values")
