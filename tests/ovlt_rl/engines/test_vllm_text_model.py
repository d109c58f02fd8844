"""The vLLM engine with a text-only model, as data preparation's reasoner uses it: tiny-reasoner
(tiny-pretrained's decoder as a Qwen2 model) gives the same greedy tokens and sampled log-probs
through vLLM as through the transformers engine. vLLM runs in-process here, as in test_vllm_real.py."""

from __future__ import annotations

import gc

import pytest
import torch

from ovlt_rl.engines.base import SamplingParams
from tests.ovlt_rl.engines.vllm_checks import engine_config, max_diff

pytestmark = pytest.mark.vllm

TOL = 3e-2 if torch.cuda.is_available() else 1e-3  # as test_vllm_real.py (fp32 both sides)


def test_text_only_reasoner_through_vllm_matches_transformers():
    from data_prep.engine_io import load_engine
    from data_prep.synthetic import generate
    from ovlt_rl.engines.hf import HFEngine
    from ovlt_rl.engines.vllm_engine import VLLMEngine

    cfg = engine_config()
    cfg.prepare.device = "cpu"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        engine, maker = load_engine(cfg, "tiny-reasoner")  # data preparation's own loader
    assert isinstance(engine, VLLMEngine)
    try:
        rows = [{**r, "images": []} for r in generate(4, seed=5, split="train")]
        items, index = maker.items(rows)
        assert index == [0, 1, 2, 3] and all(not it["images"] for it in items)
        hf = HFEngine(engine.llm.llm_engine.model_config.model, device="cpu", dtype=torch.float32)
        greedy = SamplingParams(n=1, temperature=0.0, max_new_tokens=24)
        tokens = lambda groups: [g[0].token_ids for g in groups]  # noqa: E731
        assert tokens(engine.generate(items, greedy)) == tokens(hf.generate(items, greedy))
        sampled = engine.generate(items, SamplingParams(n=2, temperature=1.0, max_new_tokens=16, seed=1, logprobs=True))
        prompts = [p for p, g in zip(items, sampled) for _ in g]
        responses = [s.token_ids for g in sampled for s in g]
        assert max_diff([s.logprobs for g in sampled for s in g], hf.compute_logprobs(prompts, responses)) < TOL
    finally:
        engine.llm.llm_engine.engine_core.shutdown()
        del engine
        gc.collect()
