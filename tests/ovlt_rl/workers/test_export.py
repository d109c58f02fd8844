"""The HF export: training dtype, sharded safetensors, processor and generation config, loads in transformers."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from ovlt_rl.workers.export import save_hf_model


def _weights_bytes(folder) -> int:
    return sum(p.stat().st_size for p in folder.glob("*.safetensors"))


def test_bf16_export_is_sharded_half_the_size_and_loads(tmp_path, tiny_model_dir, tiny_model):
    from transformers import GenerationConfig, Qwen2_5_VLForConditionalGeneration

    from ovlt_rl.models.loading import load_processor

    sd = {k: v.detach().clone() for k, v in tiny_model.state_dict().items()}
    fp32 = save_hf_model(str(tiny_model_dir), sd, tmp_path / "fp32")  # the default: as before
    bf16 = save_hf_model(str(tiny_model_dir), sd, tmp_path / "bf16", dtype=torch.bfloat16, max_shard_size="1MB")

    fp32_bytes, bf16_bytes = _weights_bytes(fp32), _weights_bytes(bf16)
    print(f"tiny model weights on disk: fp32 {fp32_bytes} B, bf16 {bf16_bytes} B, ratio {bf16_bytes / fp32_bytes:.3f}")
    assert 0.45 < bf16_bytes / fp32_bytes < 0.55

    index = json.loads((bf16 / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1 and all((bf16 / s).is_file() for s in shards)
    for s in shards:
        with safe_open(str(bf16 / s), "pt") as f:
            assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"BF16"}
    assert json.loads((bf16 / "config.json").read_text())["dtype"] == "bfloat16"
    for name in ("generation_config.json", "preprocessor_config.json", "tokenizer.json", "chat_template.jinja"):
        assert (bf16 / name).is_file(), name

    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(bf16)  # dtype from config.json
    assert model.dtype == torch.bfloat16
    loaded = model.state_dict()
    for k, v in sd.items():
        assert torch.equal(loaded[k], v.to(torch.bfloat16)), k
    assert GenerationConfig.from_pretrained(bf16).eos_token_id is not None
    processor = load_processor(str(bf16))  # AutoProcessor's video part would need torchvision
    ids = processor.tokenizer("How many circles?", return_tensors="pt").input_ids
    out = model.generate(ids, max_new_tokens=3, do_sample=False)
    assert out.shape[1] == ids.shape[1] + 3 or out[0, -1].item() in processor.tokenizer.all_special_ids


def test_unsupported_dtype_is_refused(tmp_path, tiny_model_dir):
    with pytest.raises(ValueError, match="unsupported dtype torch.int8"):
        save_hf_model(str(tiny_model_dir), {}, tmp_path / "x", dtype=torch.int8)
