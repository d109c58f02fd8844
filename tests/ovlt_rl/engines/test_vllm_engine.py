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
from ovlt_rl.engines.base import SamplingParams

HAS_VLLM = importlib.util.find_spec("vllm") is not None
needs_vllm = pytest.mark.skipif(not HAS_VLLM, reason="vLLM is not importable")


# -- version pin ----------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["0.10.2", "0.11.0", "0.11.0+cu128", "0.11.1rc1", "0.11.2.post1"])
def test_supported_versions_pass(version):
    assert ve.check_vllm_version(version) == version


@pytest.mark.parametrize("version", ["0.9.2", "0.10.1.1", "0.12.0", "0.12.0rc1", "1.0.0"])
def test_unsupported_versions_name_installed_and_supported(version):
    with pytest.raises(RuntimeError) as e:
        ve.check_vllm_version(version)
    msg = str(e.value)
    assert f"vLLM {version} is installed" in msg
    assert f">={ve.SUPPORTED[0]},<{ve.SUPPORTED[1]}" in msg
    assert "rollout.engine=hf" in msg


def test_installed_version_is_checked_or_import_error():
    if HAS_VLLM:
        from importlib.metadata import version

        installed = version("vllm")
        in_range = ve._release(ve.SUPPORTED[0]) <= ve._release(installed) < ve._release(ve.SUPPORTED[1])
        if in_range:
            assert ve.check_vllm_version() == installed
        else:
            with pytest.raises(RuntimeError):
                ve.check_vllm_version()
    else:
        with pytest.raises(ImportError):
            ve.check_vllm_version()


def test_module_does_not_import_vllm():
    # The module is imported at the top of this file; vLLM must only load when an engine is made.
    if not HAS_VLLM:
        assert "vllm" not in sys.modules
    assert "OvltWorkerExtension" in dir(ve)
    assert ve.EXTENSION == f"{ve.__name__}.OvltWorkerExtension"


# -- translation ----------------------------------------------------------------------------


def test_sampling_kwargs():
    p = SamplingParams(n=5, temperature=1.0, top_p=0.99, top_k=-1, max_new_tokens=512, stop=["</answer>"], seed=7)
    kw = ve.vllm_sampling_kwargs(p)
    assert kw == dict(
        n=5, temperature=1.0, top_p=0.99, top_k=0, max_tokens=512, stop=["</answer>"], seed=7,
        repetition_penalty=1.0, logprobs=0, skip_special_tokens=True, logit_bias=None,
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
    out = list(ve.buckets(ts, max_bytes=80))  # 80 bytes = 20 floats
    assert [[n for n, _ in b] for b in out] == [["w0", "w1"], ["w2"], ["w3"], ["w4"], ["w5"]]
    assert [n for b in out for n, _ in b] == [n for n, _ in ts]
    for b in out:
        assert len(b) == 1 or sum(t.numel() * 4 for _, t in b) <= 80
    assert list(ve.buckets([], max_bytes=80)) == []


def test_weight_meta():
    meta = ve.weight_meta([("a", torch.zeros(2, 3, dtype=torch.bfloat16)), ("b", torch.zeros(4))])
    assert meta == [("a", "bfloat16", [2, 3]), ("b", "float32", [4])]
    assert all(getattr(torch, d) in (torch.bfloat16, torch.float32) for _, d, _ in meta)


# -- the fallback, and the engine itself -----------------------------------------------------


@pytest.mark.skipif(HAS_VLLM, reason="tests the fallback for machines without vLLM")
def test_make_engine_falls_back_to_hf(tiny_model_dir, caplog):
    from ovlt_rl.config import Config
    from ovlt_rl.engines import make_engine
    from ovlt_rl.engines.hf import HFEngine

    cfg = Config()
    cfg.rollout.engine = "vllm"
    with caplog.at_level(logging.WARNING):
        engine = make_engine(cfg, str(tiny_model_dir), torch.device("cpu"))
    assert isinstance(engine, HFEngine)
    assert "vLLM is not importable" in caplog.text


@needs_vllm
@pytest.mark.gpu
def test_vllm_engine_generates_syncs_weights_and_scores(tiny_model_dir, prompt_items):
    if not torch.cuda.is_available():
        pytest.skip("the vLLM engine needs a GPU")
    from ovlt_rl.config import Config
    from ovlt_rl.engines.hf import HFEngine
    from ovlt_rl.models.loading import load_model

    cfg = Config()
    cfg.rollout.engine = "vllm"
    cfg.rollout.gpu_memory_utilization = 0.3
    cfg.model.dtype = "fp32"
    engine = ve.VLLMEngine(cfg, str(tiny_model_dir))
    groups = engine.generate(prompt_items, SamplingParams(n=3, max_new_tokens=16, seed=1))
    assert [len(g) for g in groups] == [3, 3]
    for g in groups[0]:
        assert 1 <= len(g.token_ids) <= 16 and len(g.logprobs) == len(g.token_ids)

    # Teacher-forced log-probs agree with the transformers engine on the same weights.
    responses = [groups[0][0].token_ids, groups[1][0].token_ids]
    hf = HFEngine(str(tiny_model_dir), device="cuda", dtype=torch.float32)
    ours = engine.compute_logprobs(prompt_items, responses)
    ref = hf.compute_logprobs(prompt_items, responses)
    for a, b in zip(ours, ref):
        assert len(a) == len(b) and max(abs(x - y) for x, y in zip(a, b)) < 1e-2

    # New weights change what vLLM computes, without going through disk: a zeroed final norm
    # makes every logit 0 (the tiny model ties lm_head to the embeddings, so zero the norm).
    before = engine.weights_checksum()
    state = load_model(str(tiny_model_dir)).state_dict()
    final_norm = [k for k in state if k.endswith("norm.weight") and "layers" not in k and "visual" not in k]
    assert len(final_norm) == 1
    state = {k: (torch.zeros_like(v) if k in final_norm else v) for k, v in state.items()}
    assert engine.load_state_dict(state) == len(state)
    assert engine.weights_checksum() != before
    flat = engine.compute_logprobs(prompt_items[:1], responses[:1])[0]
    vocab = hf.model.config.get_text_config().vocab_size
    assert all(abs(x + torch.log(torch.tensor(float(vocab))).item()) < 1e-3 for x in flat)  # uniform
