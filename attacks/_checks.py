"""Input checks shared by the attack functions.

Every check raises ``ValueError`` that names the offending argument and says
what is allowed, so a bad signal fails where it enters, not three calls later
as a NaN AUC.
"""

from __future__ import annotations

import torch
from torch import Tensor


def as_float64(name: str, x, ndim: int | tuple[int, ...] | None = None) -> Tensor:
    """``x`` as a finite float64 tensor with ``ndim`` dimensions."""
    if not isinstance(x, Tensor):
        try:
            x = torch.as_tensor(x)
        except Exception as e:  # noqa: BLE001 - re-raised with the argument's name
            raise ValueError(f"{name} must be a tensor of numbers, got {type(x).__name__}") from e
    if not (x.is_floating_point() or x.dtype in (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)):
        raise ValueError(f"{name} must hold real numbers, got dtype {x.dtype}")
    dims = (ndim,) if isinstance(ndim, int) else ndim
    if dims is not None and x.ndim not in dims:
        want = " or ".join(f"{d}-D" for d in dims)
        raise ValueError(f"{name} must be {want}, got shape {tuple(x.shape)}")
    x = x.detach().to(torch.float64)
    if not bool(torch.isfinite(x).all()):
        bad = (~torch.isfinite(x)).sum().item()
        raise ValueError(f"{name} must be finite, got {bad} NaN or infinite value(s)")
    return x


def as_probability(name: str, x, ndim: int | tuple[int, ...] | None = None) -> Tensor:
    """``x`` as float64 with every value in [0, 1]."""
    x = as_float64(name, x, ndim)
    if x.numel() and (x.min() < 0 or x.max() > 1):
        raise ValueError(
            f"{name} must be probabilities in [0, 1], got values in [{x.min().item():.4g}, {x.max().item():.4g}]"
        )
    return x


def as_mask(name: str, x, shape: tuple[int, ...]) -> Tensor:
    """``x`` as a bool tensor of ``shape`` (0/1 integers are accepted)."""
    if not isinstance(x, Tensor):
        x = torch.as_tensor(x)
    if tuple(x.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(x.shape)}")
    if x.dtype != torch.bool:
        if x.is_floating_point() or x.is_complex() or not bool(((x == 0) | (x == 1)).all()):
            raise ValueError(f"{name} must be a bool tensor (or 0/1 integers), got dtype {x.dtype}")
        x = x.to(torch.bool)
    return x


def same_shape(name_a: str, a: Tensor, name_b: str, b: Tensor) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{name_a} and {name_b} must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")


def references_vs_target(target: Tensor, references: Tensor, name: str = "references",
                         target_name: str = "target") -> None:
    """references must be [K, *target.shape] with K >= 1."""
    if references.ndim != target.ndim + 1 or references.shape[1:] != target.shape:
        raise ValueError(
            f"{name} must have shape [K, {', '.join(map(str, target.shape))}] to match {target_name}, "
            f"got {tuple(references.shape)}"
        )
    if references.shape[0] == 0:
        raise ValueError(f"{name} must hold at least one reference model (K >= 1), got K = 0")
