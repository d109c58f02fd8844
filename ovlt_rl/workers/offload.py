"""Optimizer state off the GPU between updates (`actor.offload_optimizer`).

On one GPU shared by the policy, its reference and a colocated vLLM engine, Adam's two moments
(fp32, twice the trainable parameters: 30 GB for a 3B model on one rank) are the largest thing
that sits idle outside the update. Moved to host memory after a step's updates and back before
the next step's first one, they leave that room to generation and the log-prob passes. A move
keeps every tensor's values and type (a DTensor stays a DTensor with the same sharding) and puts
each back on the device it came from (a non-fused Adam keeps its `step` counters on the CPU), so
the next update is the same as without the moves. The copies go through pageable host memory,
allocated anew each time (simple, and measured before anything faster is built).
"""

from __future__ import annotations

from typing import Any

import torch


class OptimizerOffload:
    """Moves an optimizer's per-parameter state tensors to host memory and back."""

    def __init__(self, optimizer: torch.optim.Optimizer):
        self.optimizer = optimizer
        self._moved: list[tuple[dict[str, Any], str, torch.device]] = []

    @property
    def offloaded(self) -> bool:
        return bool(self._moved)

    def offload(self) -> int:
        """Every state tensor not already in host memory goes there; the bytes moved."""
        moved = 0
        for state in self.optimizer.state.values():
            for key, value in state.items():
                if torch.is_tensor(value) and value.device.type != "cpu":
                    state[key] = value.to("cpu")
                    self._moved.append((state, key, value.device))
                    moved += local_bytes(value)
        return moved

    def reload(self) -> int:
        """What offload moved goes back to its device; the bytes moved."""
        moved = 0
        for state, key, device in self._moved:
            state[key] = state[key].to(device)
            moved += local_bytes(state[key])
        self._moved.clear()
        return moved


def local_bytes(t: torch.Tensor) -> int:
    """Bytes this rank holds of `t` (a DTensor's numel is the global tensor's)."""
    local = t.to_local() if hasattr(t, "to_local") else t
    return local.numel() * local.element_size()
