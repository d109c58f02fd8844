"""tiny-reasoner: tiny-pretrained's decoder as a text-only Qwen2ForCausalLM (models/tiny_reasoner.py)."""

import json
from pathlib import Path

import pytest
import torch


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    from ovlt_rl.models.loading import resolve_model_path

    cache = tmp_path_factory.mktemp("cache")
    return resolve_model_path("tiny-reasoner", cache_dir=cache), resolve_model_path("tiny-pretrained"), cache


def test_built_once_into_the_cache_as_a_text_only_qwen2(paths):
    from transformers import AutoConfig

    from ovlt_rl.models.loading import is_vision_language, resolve_model_path

    reasoner, pretrained, cache = paths
    assert AutoConfig.from_pretrained(reasoner).model_type == "qwen2"
    assert not is_vision_language(reasoner) and is_vision_language(pretrained)
    note = json.loads((Path(reasoner) / "ovlt_tiny.json").read_text())
    assert note["source"] == "tiny-pretrained" and len(note["source_sha256"]) == 64
    assert resolve_model_path("tiny-reasoner", cache_dir=cache) == reasoner  # the same folder, not rebuilt


def test_same_logits_as_the_vision_language_model_on_text(paths):
    """Without images mRoPE's three position components are equal: 1-D RoPE, so the same logits."""
    from transformers import AutoTokenizer

    from ovlt_rl.models.loading import load_model, load_text_model

    reasoner, pretrained, _ = paths
    text = load_text_model(reasoner).eval()
    vl = load_model(pretrained).eval()
    tok = AutoTokenizer.from_pretrained(reasoner)
    ids = tok.apply_chat_template([{"role": "user", "content": "There are 3 red circles and 2 blue squares. How many shapes?"}],
                                  add_generation_prompt=True, return_tensors="pt", return_dict=True)["input_ids"]
    with torch.no_grad():
        a = text(input_ids=ids).logits
        b = vl(input_ids=ids, mm_token_type_ids=torch.zeros_like(ids)).logits
    assert a.shape == b.shape
    assert (a - b).abs().max() < 1e-4


def test_hf_engine_generates_with_a_text_only_model(paths):
    from data_prep.engine_io import TextPromptMaker
    from data_prep.synthetic import generate
    from ovlt_rl.engines.base import SamplingParams
    from ovlt_rl.engines.hf import HFEngine

    reasoner, _, _ = paths
    engine = HFEngine(reasoner, device="cpu", dtype=torch.float32)
    assert not engine.vision and engine.fast is None
    rows = [{**r, "images": []} for r in generate(3, seed=4, split="train")]
    items, index = TextPromptMaker(engine.tokenizer, 512).items(rows)
    assert index == [0, 1, 2]
    groups = engine.generate(items, SamplingParams(n=2, temperature=1.0, max_new_tokens=16, seed=3, logprobs=True))
    assert [len(g) for g in groups] == [2, 2, 2]
    for g in groups[0]:
        assert len(g.logprobs) == len(g.token_ids) > 0 and all(lp <= 0 for lp in g.logprobs)
    with pytest.raises(ValueError, match="fast path is for Qwen2.5-VL"):
        HFEngine(reasoner, device="cpu", fast_decode="on")
