"""Rollout engines behind one interface (see base.py): `hf` (transformers) and `vllm`."""

from __future__ import annotations

import logging

import torch

log = logging.getLogger(__name__)


def engine_dtype(cfg, device: torch.device) -> torch.dtype:
    from ovlt_rl.workers.policy import resolve_dtype

    return resolve_dtype(cfg.model.dtype, device)


def make_engine(cfg, model_path: str, device: torch.device):
    """The engine named by cfg.rollout.engine; vllm falls back to hf (with a warning) where it can't import."""
    name = cfg.rollout.engine
    if name == "vllm":
        try:
            from ovlt_rl.engines.vllm_engine import VLLMEngine, check_vllm_version

            check_vllm_version()
            return VLLMEngine(cfg, model_path)
        except ImportError as e:
            log.warning("rollout.engine=vllm but vLLM is not importable (%s): falling back to the transformers engine", e)
    from ovlt_rl.engines.hf import HFEngine

    return HFEngine(
        model_path,
        device=device,
        dtype=engine_dtype(cfg, device),
        micro_batch_size=cfg.rollout.micro_batch_size,
        attn_implementation=cfg.model.attn_implementation,
        fast_decode=cfg.rollout.hf_fast_decode,
        decode_compile="inductor" if cfg.rollout.hf_decode_compile else None,
    )
