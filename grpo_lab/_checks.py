"""Input checks shared by the loss and advantage functions.

Every failure is a ``ValueError`` that names the argument and says what was expected, so a bad
call fails at the boundary with a message instead of deep inside torch with a NaN.
"""

from __future__ import annotations

import math

import torch

Tensor = torch.Tensor


def compute_dtype(x: Tensor) -> torch.dtype:
    """float32, or the input's dtype when that is wider (float64): never below float32."""
    if x.is_floating_point():
        return torch.promote_types(x.dtype, torch.float32)
    return torch.float32


def as_tensor(name: str, x: object) -> Tensor:
    if isinstance(x, Tensor):
        return x
    try:
        return torch.as_tensor(x)
    except (TypeError, ValueError, RuntimeError) as e:
        raise ValueError(f"{name} must be a tensor or array-like, got {type(x).__name__}") from e


def check_ndim(name: str, x: Tensor, ndim: int, shape_doc: str) -> None:
    if x.dim() != ndim:
        raise ValueError(f"{name} must be {shape_doc}, got shape {tuple(x.shape)}")


def check_same_shape(name: str, x: Tensor, ref_name: str, ref: Tensor) -> None:
    if x.shape != ref.shape:
        raise ValueError(
            f"{name} has shape {tuple(x.shape)} but {ref_name} has shape {tuple(ref.shape)}; "
            "they must match"
        )


def check_finite(name: str, x: Tensor, valid: Tensor | None = None) -> None:
    """Raise if ``x`` holds NaN or inf where ``valid`` (a bool mask) is True (everywhere if None)."""
    bad = ~torch.isfinite(x.detach())
    if valid is not None:
        bad = bad & valid
    if bool(bad.any()):
        n = int(bad.sum())
        where = " at unmasked positions" if valid is not None else ""
        raise ValueError(f"{name} holds {n} NaN/inf value(s){where}; inputs must be finite")


def as_mask(mask: object, shape: torch.Size, name: str = "mask") -> Tensor:
    """Validate a 0/1 (or bool) mask of ``shape`` (..., B, T); return it as a bool tensor.

    A mask that is all zero (in any leading slice) is an error: its aggregate would be 0/0.
    """
    m = as_tensor(name, mask)
    if m.shape != shape:
        raise ValueError(f"{name} has shape {tuple(m.shape)}; expected {tuple(shape)}")
    if m.dtype != torch.bool:
        if not bool(((m == 0) | (m == 1)).all()):
            raise ValueError(f"{name} must hold only 0 and 1 (or be bool)")
        m = m != 0
    if m.dim() < 2:
        raise ValueError(f"{name} must be (..., B, T), got shape {tuple(m.shape)}")
    if not bool(m.flatten(-2).any(dim=-1).all()):
        raise ValueError(f"{name} is all zero: it selects no token to aggregate")
    return m


def check_positive(name: str, value: float, *, upper: float | None = None) -> None:
    """Require a finite number in (0, upper) (or (0, inf) when upper is None)."""
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if value <= 0 or (upper is not None and value >= upper):
        rng = f"(0, {upper})" if upper is not None else "(0, inf)"
        raise ValueError(f"{name} must lie in {rng}, got {value!r}")
