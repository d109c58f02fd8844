"""Write a trained state dict as an HF-format model folder (the stage-boundary format).

The folder is what transformers' and vLLM's loaders take as is: sharded safetensors (with
model.safetensors.index.json when there is more than one shard), config.json, the processor
(tokenizer, chat template, image processor) and generation_config.json. Weights are written in the
training dtype (bf16 for a bf16 run: half the bytes of fp32, and what the model computed with),
and config.json records it.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch


class StateDictMismatch(RuntimeError):
    """The tensors are not those of the base model's architecture (names or shapes)."""


def save_hf_model(
    base_path: str,
    state_dict: dict[str, torch.Tensor],
    out_dir: str | os.PathLike,
    *,
    dtype: torch.dtype = torch.float32,
    max_shard_size: str = "5GB",
) -> Path:
    """Save `state_dict` (names of the HF model) in `dtype`, with the config and processor of `base_path`.

    Shards hold at most `max_shard_size` each (transformers' notation, e.g. "5GB"). Written into a
    temporary folder and renamed into place, so `out_dir` is either the old complete model or the
    new complete model, never half of one.
    """
    if dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise ValueError(f"export to {out_dir}: unsupported dtype {dtype}")
    from transformers import AutoConfig, Qwen2_5_VLForConditionalGeneration

    from ovlt_rl.models.loading import load_processor

    out = Path(out_dir)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    config = AutoConfig.from_pretrained(base_path)
    with torch.device("meta"):
        model = Qwen2_5_VLForConditionalGeneration._from_config(config, dtype=dtype)
    # Floating tensors in the export dtype (fp32 master weights of a bf16 run -> bf16); integer
    # buffers, if any, as they are.
    state_dict = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state_dict.items()}
    expected = model.state_dict()
    wrong = [f"{k} {list(v.shape)} vs {list(expected[k].shape)}" for k, v in state_dict.items()
             if k in expected and v.shape != expected[k].shape]
    if wrong:
        raise StateDictMismatch(f"export to {out}: tensor shapes differ from {base_path}'s ({'; '.join(wrong[:3])})")
    missing, unexpected = model.load_state_dict(state_dict, strict=False, assign=True)
    # Tied LM head / embeddings appear under one name only.
    missing = [m for m in missing if not (config.get_text_config().tie_word_embeddings and m == "lm_head.weight")]
    if missing or unexpected:
        raise StateDictMismatch(f"export to {out}: state dict does not match {base_path} (missing {missing[:5]}, unexpected {unexpected[:5]})")
    model.tie_weights()
    model.config.dtype = dtype  # config.json says what the shards hold
    model.save_pretrained(tmp, max_shard_size=max_shard_size)
    load_processor(base_path).save_pretrained(tmp)
    gen = Path(base_path) / "generation_config.json"
    if gen.exists():
        shutil.copy(gen, tmp / "generation_config.json")
    else:  # the model's defaults (EOS, pad), so that generate and vLLM stop where training did
        model.generation_config.save_pretrained(tmp)
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)
    return out
