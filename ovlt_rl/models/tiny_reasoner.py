"""The tiny text reasoner: tiny-pretrained's language model as a text-only `Qwen2ForCausalLM`.

OpenVLThinker's iteration-1 data comes from a text-only reasoning model (an R1-distilled Qwen)
reading image captions. For tests and the embedded default, "tiny-reasoner" is that kind of model,
offline: the decoder of the shipped tiny-pretrained model (pretrained on captions and on text-only
reasoning), moved into transformers' text-only Qwen2 class, with the same tokenizer and chat template.

Why the weights carry over unchanged: Qwen2.5-VL's decoder is Qwen2's, except for its 3-D rotary
positions (mRoPE). For a prompt without images all three position components are the same index, so
every frequency band turns by that index, which is Qwen2's 1-D RoPE with the same base; the
`test_models_tiny_reasoner` test checks the two models' logits agree on text.

Built on first use into the cache (`$OVLT_CACHE`), named by this builder's version and the
tiny-pretrained weights' hash, like the tiny model (ovlt_rl/models/loading.py).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

TINY_REASONER_BUILDER_VERSION = 1


def source_fingerprint(pretrained_dir: Path) -> str:
    return hashlib.sha256((pretrained_dir / "model.safetensors").read_bytes()).hexdigest()


def text_config(vl_config):
    """The Qwen2 config of a Qwen2.5-VL config's decoder (1-D RoPE with the same base)."""
    from transformers import Qwen2Config

    t = vl_config.text_config
    return Qwen2Config(
        vocab_size=t.vocab_size, hidden_size=t.hidden_size, intermediate_size=t.intermediate_size,
        num_hidden_layers=t.num_hidden_layers, num_attention_heads=t.num_attention_heads,
        num_key_value_heads=t.num_key_value_heads, hidden_act=t.hidden_act, max_position_embeddings=t.max_position_embeddings,
        rms_norm_eps=t.rms_norm_eps, rope_parameters={"rope_type": "default", "rope_theta": t.rope_parameters["rope_theta"]},
        tie_word_embeddings=vl_config.tie_word_embeddings, bos_token_id=t.bos_token_id, eos_token_id=t.eos_token_id,
        pad_token_id=t.pad_token_id, use_sliding_window=False,
    )


def text_state_dict(vl_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Qwen2.5-VL weight names -> Qwen2ForCausalLM's: the decoder and the LM head; the vision tower is dropped."""
    prefix = "model.language_model."
    out = {"model." + k[len(prefix):]: v for k, v in vl_state.items() if k.startswith(prefix)}
    out["lm_head.weight"] = vl_state["lm_head.weight"]
    return out


def build_tiny_reasoner(out_dir: Path, pretrained_dir: Path) -> Path:
    """Write the text-only model into `out_dir` (must not exist); returns it."""
    from transformers import AutoTokenizer, GenerationConfig, Qwen2_5_VLForConditionalGeneration, Qwen2ForCausalLM

    vl = Qwen2_5_VLForConditionalGeneration.from_pretrained(pretrained_dir, dtype=torch.float32)
    model = Qwen2ForCausalLM(text_config(vl.config)).to(torch.float32)
    missing, unexpected = model.load_state_dict(text_state_dict(vl.state_dict()), strict=False)
    # A tied LM head is one tensor with the embeddings: load_state_dict lists it under neither.
    if unexpected or [k for k in missing if k != "lm_head.weight"]:
        raise RuntimeError(f"tiny reasoner: weights do not map (missing {missing}, unexpected {unexpected})")
    model.generation_config = GenerationConfig.from_pretrained(pretrained_dir)
    tokenizer = AutoTokenizer.from_pretrained(pretrained_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        note = {"builder": "ovlt_rl.models.tiny_reasoner.build_tiny_reasoner", "builder_version": TINY_REASONER_BUILDER_VERSION,
                "source": "tiny-pretrained", "source_sha256": source_fingerprint(pretrained_dir)}
        (tmp / "ovlt_tiny.json").write_text(json.dumps(note, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir
