"""Mask validation shared by the algorithms."""

from __future__ import annotations

import torch


def as_bool_mask(mask: torch.Tensor, name: str) -> torch.Tensor:
    """Return ``mask`` as a bool tensor; a non-bool mask must hold only 0 and 1.

    Masks here select tokens, they do not weight them: a float mask with other values would be
    silently read as "selected" by a bool cast, so it is refused instead. Pass bool masks to
    skip the check (it costs a device sync on GPU).
    """
    if not isinstance(mask, torch.Tensor):
        raise ValueError(f"{name} must be a tensor, got {type(mask).__name__}")
    if mask.dtype == torch.bool:
        return mask
    if ((mask != 0) & (mask != 1)).any():
        raise ValueError(f"{name} must hold only 0 and 1 (it selects tokens, it does not weight them)")
    return mask != 0
