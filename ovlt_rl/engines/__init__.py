"""Rollout engines behind one interface (see base.py): `hf` (transformers) and `vllm`."""

from __future__ import annotations

import logging

import torch

log = logging.getLogger(__name__)


def engine_dtype(cfg, device: torch.device) -> torch.dtype:
    from ovlt_rl.models.dtype import resolve_dtype

    return resolve_dtype(cfg.model.dtype, device)


def make_engine(cfg, model_path: str, device: torch.device):
    """The engine named by cfg.rollout.engine.

    "vllm" without a usable vLLM is an error naming why; only "auto" falls back to the
    transformers engine, with a warning saying why."""
    name = cfg.rollout.engine
    if name in ("vllm", "auto"):
        from ovlt_rl.engines.vllm_engine import VLLMEngine, vllm_problem

        problem = vllm_problem()
        if problem is None:
            return VLLMEngine(cfg, model_path)
        if name == "vllm":
            raise RuntimeError(f"rollout.engine=vllm, but vLLM is not usable here: {problem} "
                               f"(install vLLM, or set rollout.engine=hf or auto)")
        log.warning("rollout.engine=auto: vLLM is not usable (%s); using the transformers engine", problem)
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
