"""Write a trained state dict as an HF-format model folder (the stage-boundary format)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch


def save_hf_model(base_path: str, state_dict: dict[str, torch.Tensor], out_dir: str | os.PathLike) -> Path:
    """Save `state_dict` (names of the HF model) with the config and processor of `base_path`.

    Written into a temporary folder and renamed into place, so `out_dir` is either the old
    complete model or the new complete model, never half of one.
    """
    from transformers import AutoConfig, Qwen2_5_VLForConditionalGeneration

    from ovlt_rl.models.loading import load_processor

    out = Path(out_dir)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    config = AutoConfig.from_pretrained(base_path)
    with torch.device("meta"):
        model = Qwen2_5_VLForConditionalGeneration._from_config(config, torch_dtype=torch.float32)
    missing, unexpected = model.load_state_dict(state_dict, strict=False, assign=True)
    # Tied LM head / embeddings appear under one name only.
    missing = [m for m in missing if not (config.get_text_config().tie_word_embeddings and m == "lm_head.weight")]
    if missing or unexpected:
        raise RuntimeError(f"export to {out}: state dict does not match {base_path} (missing {missing[:5]}, unexpected {unexpected[:5]})")
    model.tie_weights()
    model.save_pretrained(tmp, safe_serialization=True)
    load_processor(base_path).save_pretrained(tmp)
    gen = Path(base_path) / "generation_config.json"
    if gen.exists():
        shutil.copy(gen, tmp / "generation_config.json")
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)
    return out
