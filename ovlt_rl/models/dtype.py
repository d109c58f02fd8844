"""The compute dtype that `model.dtype` names on a device (policy workers, rollout engines, export)."""

from __future__ import annotations

import torch


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """"auto": bf16 on CUDA, fp32 elsewhere (CPUs have no fast bf16 matmuls); else "bf16" or "fp32"."""
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return {"bf16": torch.bfloat16, "fp32": torch.float32}[name]
