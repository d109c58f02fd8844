"""The tiny offline Qwen2.5-VL: shape, tokenizer, determinism, training and generation with images."""

from __future__ import annotations

import hashlib
import io
import json
import os

import pytest
import torch
from PIL import Image

from ovlt_rl.models.tiny import QWEN2_5_VL_CHAT_TEMPLATE, SPECIAL_TOKENS, build_tiny_model, tiny_config


def _hashes(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def _prompt_batch(processor, n: int, questions=None):
    images = [Image.open(io.BytesIO(_png(k))) for k in range(n)]
    questions = questions or [f"How many red circles are there?{' Look closely.' * k}" for k in range(n)]
    texts = [
        processor.apply_chat_template(
            [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": q}]}],
            add_generation_prompt=True,
            tokenize=False,
        )
        for q in questions
    ]
    enc = processor(text=texts, images=images, padding=True, padding_side="left", return_tensors="pt")
    return enc


def _png(k: int) -> bytes:
    from PIL import ImageDraw

    img = Image.new("RGB", (112, 112), "white")
    for j in range(k + 1):
        ImageDraw.Draw(img).ellipse((8 + 25 * j, 40, 28 + 25 * j, 60), fill=(220, 20, 20))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def test_tiny_model_is_a_small_qwen2_5_vl(tiny_model_dir, tiny_model, tiny_processor):
    cfg = json.loads((tiny_model_dir / "config.json").read_text())
    assert cfg["model_type"] == "qwen2_5_vl"
    n_params = sum(p.numel() for p in tiny_model.parameters())
    assert 1_000_000 <= n_params <= 4_000_000
    tok = tiny_processor.tokenizer
    # Every special token is one id, after the learned vocabulary, as in Qwen's tokenizer.
    ids = [tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS]
    assert len(SPECIAL_TOKENS) == 14
    assert ids == list(range(ids[0], ids[0] + 14))
    assert ids[-1] == len(tok) - 1
    assert tiny_model.config.text_config.vocab_size % 64 == 0 and tiny_model.config.text_config.vocab_size >= len(tok)
    assert tiny_model.config.image_token_id == tok.convert_tokens_to_ids("<|image_pad|>")
    assert tiny_model.config.vision_start_token_id == tok.convert_tokens_to_ids("<|vision_start|>")
    gen = tiny_model.generation_config
    assert gen.eos_token_id == [tok.convert_tokens_to_ids("<|im_end|>"), tok.convert_tokens_to_ids("<|endoftext|>")]
    assert gen.pad_token_id == tok.pad_token_id == tok.convert_tokens_to_ids("<|endoftext|>")
    assert tiny_processor.chat_template == QWEN2_5_VL_CHAT_TEMPLATE
    # Byte-level BPE with Qwen's pre-tokenizer: any text round-trips, digits are single tokens.
    text = "Ünïcode ✓ 12345 <answer>7</answer>"
    assert tok.decode(tok(text)["input_ids"]) == text
    assert len(tok("12345")["input_ids"]) == 5


def test_build_is_deterministic_for_a_seed(tiny_model_dir, tmp_path):
    seed = json.loads((tiny_model_dir / "ovlt_tiny.json").read_text())["seed"]
    again = build_tiny_model(tmp_path / "again", seed=seed)
    assert _hashes(again) == _hashes(tiny_model_dir)
    other = build_tiny_model(tmp_path / "other", seed=seed + 1)
    assert _hashes(other)["model.safetensors"] != _hashes(tiny_model_dir)["model.safetensors"]
    # The usual umask modes (not mkdtemp's 0700 and the weight writer's 0600), so a shared cache works.
    umask = os.umask(0)
    os.umask(umask)
    assert again.stat().st_mode & 0o777 == 0o777 & ~umask
    assert (again / "model.safetensors").stat().st_mode & 0o777 == 0o666 & ~umask


def test_build_refuses_a_non_empty_folder_and_leaves_no_temp_folders(tmp_path):
    target = tmp_path / "m"
    target.mkdir()
    (target / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError, match="not empty"):
        build_tiny_model(target, corpus=["a b c"] * 10)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_config_rejects_an_mrope_section_that_does_not_fit_the_head_dim(tiny_processor):
    with pytest.raises(ValueError, match="mrope_section"):
        tiny_config(tiny_processor.tokenizer, hidden_size=128, num_attention_heads=4, mrope_section=(16, 24, 24))
    cfg = tiny_config(tiny_processor.tokenizer, hidden_size=64, num_attention_heads=4, num_key_value_heads=2, mrope_section=(2, 3, 3))
    assert cfg.text_config.hidden_size == 64


def test_forward_backward_with_images_reaches_the_vision_tower(tiny_model_dir, tiny_processor):
    from ovlt_rl.models.loading import load_model

    model = load_model(str(tiny_model_dir)).train()
    enc = _prompt_batch(tiny_processor, 3)
    out = model(**enc)
    assert out.logits.shape[:2] == enc["input_ids"].shape
    mask = enc["attention_mask"][:, 1:].float()
    logp = torch.log_softmax(out.logits[:, :-1].float(), -1).gather(-1, enc["input_ids"][:, 1:, None])[..., 0]
    loss = -(logp * mask).sum() / mask.sum()
    loss.backward()
    assert torch.isfinite(loss)
    vision_grad = model.model.visual.patch_embed.proj.weight.grad
    text_grad = model.model.language_model.layers[0].mlp.up_proj.weight.grad
    assert vision_grad is not None and vision_grad.abs().sum() > 0
    assert text_grad is not None and torch.isfinite(text_grad).all() and text_grad.abs().sum() > 0


def test_generate_with_images_and_several_samples_per_prompt(tiny_model, tiny_processor):
    enc = _prompt_batch(tiny_processor, 2)
    torch.manual_seed(0)
    out = tiny_model.generate(**enc, do_sample=True, max_new_tokens=6, num_return_sequences=3)
    prompt_len = enc["input_ids"].shape[1]
    assert out.shape[0] == 6 and prompt_len < out.shape[1] <= prompt_len + 6
    # Samples come grouped per prompt, each continuing its own prompt.
    for row in range(6):
        assert torch.equal(out[row, :prompt_len], enc["input_ids"][row // 3])
    # Sampling at temperature 1 from a random model: the three samples of a prompt are not all equal.
    assert len({tuple(out[r, prompt_len:].tolist()) for r in range(3)}) > 1


def test_shipped_tokenizer_corpus_is_the_synthetic_tasks_text():
    """The model layer reads the corpus from a file so that it imports nothing from data_prep; this
    keeps the file and the task's text the same (rewrite with data_prep.synthetic.write_tiny_corpus)."""
    from data_prep.synthetic import text_corpus
    from ovlt_rl.models.tiny import default_corpus

    assert default_corpus() == text_corpus(seed=0)
