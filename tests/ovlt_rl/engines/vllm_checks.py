"""Checks shared by the vLLM engine tests (CPU and GPU)."""

from __future__ import annotations

import torch


def perturbed(state: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    """Other weights of the same model: each tensor times (1 + 0.3 noise), tied tensors kept tied."""
    g = torch.Generator().manual_seed(seed)
    out, done = {}, {}
    for name, t in state.items():
        key = t.data_ptr()
        if key not in done:
            done[key] = t * (1 + 0.3 * torch.randn(t.shape, generator=g))
        out[name] = done[key]
    return out


def max_diff(a: list[list[float]], b: list[list[float]]) -> float:
    assert [len(x) for x in a] == [len(y) for y in b]
    return max(abs(x - y) for xs, ys in zip(a, b) for x, y in zip(xs, ys))


def engine_config(**rollout):
    """The vLLM tests' engine settings: the tiny model in fp32, short sequences, eager (no compile
    warm-up), a small KV cache on either device; `rollout` overrides RolloutConfig fields. The whole
    tree (AppConfig), so that data preparation's engine loader can take it too."""
    from ovlt.config import AppConfig

    cfg = AppConfig()
    cfg.rollout.engine = "vllm"
    cfg.model.dtype = "fp32"
    cfg.data.max_prompt_length, cfg.data.max_response_length = 256, 64
    cfg.rollout.cpu_kv_cache_gib = 0.5
    cfg.rollout.vllm_enforce_eager = True  # skips ~45 s of torch.compile warm-up on 2 cores
    cfg.rollout.gpu_memory_utilization = 0.3  # GPUs only
    for k, v in rollout.items():
        setattr(cfg.rollout, k, v)
    return cfg
