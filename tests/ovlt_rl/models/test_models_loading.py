"""load_processor / load_model / resolve_model_path: round trips, the stock-looking folder, the cache."""

from __future__ import annotations

import json
import threading

import pytest
import torch
from PIL import Image
from transformers import Qwen2_5_VLConfig, Qwen2Config
from transformers.models.auto.processing_auto import PROCESSOR_MAPPING

from ovlt_rl.models.loading import (
    ensure_tiny_model,
    load_model,
    load_processor,
    pixel_bounds,
    resolve_model_path,
    tiny_model_dir,
)
from ovlt_rl.models.processor import STOCK_PROCESSOR_CLASS, ImageOnlyQwen2_5_VLProcessor, torchvision_usable

MESSAGES = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "How many red circles?"}]}]


def _encode(processor, image):
    text = processor.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=False)
    return processor(text=[text], images=[image], return_tensors="pt")


def test_processor_class_fits_the_machine(tiny_processor):
    if torchvision_usable():
        assert type(tiny_processor).__name__ == STOCK_PROCESSOR_CLASS
    else:
        assert isinstance(tiny_processor, ImageOnlyQwen2_5_VLProcessor)
        assert PROCESSOR_MAPPING[Qwen2_5_VLConfig] is ImageOnlyQwen2_5_VLProcessor
        with pytest.raises(ValueError, match="videos"):
            tiny_processor(text=["x"], videos=[[Image.new("RGB", (28, 28))]])


def test_saved_folder_names_the_stock_processor(tiny_model_dir):
    # Stock transformers/vLLM on GPU machines must read the folder as a plain Qwen2.5-VL one.
    for name in ("processor_config.json", "tokenizer_config.json", "preprocessor_config.json"):
        assert json.loads((tiny_model_dir / name).read_text())["processor_class"] == STOCK_PROCESSOR_CLASS
    image_cfg = json.loads((tiny_model_dir / "preprocessor_config.json").read_text())
    assert image_cfg["image_processor_type"] == "Qwen2VLImageProcessor"
    assert image_cfg["max_pixels"] == image_cfg["size"]["longest_edge"]


def test_processor_and_model_round_trip(tiny_model_dir, tiny_processor, tiny_model, tmp_path):
    tiny_processor.save_pretrained(tmp_path)
    tiny_model.save_pretrained(tmp_path)
    processor2, model2 = load_processor(str(tmp_path)), load_model(str(tmp_path)).eval()
    image = Image.new("RGB", (140, 112), "white")
    a, b = _encode(tiny_processor, image), _encode(processor2, image)
    assert torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["pixel_values"], b["pixel_values"])
    assert processor2.chat_template == tiny_processor.chat_template
    with torch.no_grad():
        assert torch.equal(tiny_model(**a).logits, model2(**a).logits)


def test_loads_a_folder_in_the_released_qwen2_5_vl_layout(tiny_model_dir, tmp_path):
    """Qwen/Qwen2.5-VL-*-Instruct ship preprocessor_config.json with min/max_pixels and chat_template.json."""
    import shutil

    legacy = tmp_path / "legacy"
    shutil.copytree(tiny_model_dir, legacy)
    (legacy / "processor_config.json").unlink()
    template = (legacy / "chat_template.jinja").read_text()
    (legacy / "chat_template.jinja").unlink()
    (legacy / "chat_template.json").write_text(json.dumps({"chat_template": template}))
    image_cfg = json.loads((legacy / "preprocessor_config.json").read_text())
    del image_cfg["size"]
    image_cfg.update(min_pixels=3136, max_pixels=12845056)
    (legacy / "preprocessor_config.json").write_text(json.dumps(image_cfg))
    processor = load_processor(str(legacy), max_pixels=262144)
    assert processor.chat_template == template
    assert pixel_bounds(processor.image_processor) == (3136, 262144)
    assert _encode(processor, Image.new("RGB", (1024, 1024)))["image_grid_thw"][0].tolist() == [1, 36, 36]


def test_image_token_count_matches_the_grid(tiny_processor):
    enc = _encode(tiny_processor, Image.new("RGB", (112, 168), "white"))
    grid = enc["image_grid_thw"][0]
    assert grid.tolist() == [1, 12, 8]  # height 168/14, width 112/14
    n_pad = (enc["input_ids"] == tiny_processor.image_token_id).sum().item()
    assert n_pad == grid.prod().item() // tiny_processor.image_processor.merge_size**2 == 24


def test_pixel_bounds_override(tiny_model_dir):
    image = Image.new("RGB", (448, 448), "white")
    small = load_processor(str(tiny_model_dir), min_pixels=28 * 28, max_pixels=56 * 56)
    assert _encode(small, image)["image_grid_thw"][0].tolist() == [1, 4, 4]
    default = load_processor(str(tiny_model_dir))
    assert _encode(default, image)["image_grid_thw"][0].tolist() == [1, 16, 16]  # 224x224 = default max
    with pytest.raises(ValueError, match="min_pixels"):
        load_processor(str(tiny_model_dir), min_pixels=10_000, max_pixels=5_000)


def test_load_model_dtype_and_wrong_architecture(tiny_model_dir, tmp_path):
    model = load_model(str(tiny_model_dir), dtype=torch.bfloat16)
    assert next(model.parameters()).dtype == torch.bfloat16
    Qwen2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="'qwen2'"):
        load_model(str(tmp_path))


def test_resolve_tiny_builds_once_into_the_cache(tmp_path):
    assert resolve_model_path("/some/model") == "/some/model"
    target = tiny_model_dir(tmp_path)
    stale = tmp_path / f".{target.name}.tmp-dead"  # left by a build that was killed
    stale.mkdir()
    messages: list[str] = []
    # Two threads at once: the file lock lets one build while the other waits, then finds it.
    threads = [threading.Thread(target=ensure_tiny_model, args=(target,), kwargs={"log": messages.append}) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(m.startswith("saved to") for m in messages) == 1
    path = resolve_model_path("tiny", cache_dir=tmp_path)
    assert path == str(target) and (target / "model.safetensors").is_file()
    assert [p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")] == [target.name]


def test_prepare_tiny_model_cli(tmp_path, capsys):
    from ovlt_rl.models.cli import prepare_tiny_model

    out = prepare_tiny_model(str(tmp_path / "m"), seed=3, force=False)
    assert json.loads((out / "ovlt_tiny.json").read_text())["seed"] == 3
    first = (out / "model.safetensors").stat().st_mtime_ns
    assert prepare_tiny_model(str(out), seed=3, force=False) == out
    assert (out / "model.safetensors").stat().st_mtime_ns == first
    prepare_tiny_model(str(out), seed=3, force=True)
    printed = capsys.readouterr().out
    assert "parameters" in printed and "already built" in printed and "removing" in printed


def test_tiny_pretrained_is_shipped_and_reads_images():
    """The shipped base resolves without a build, loads with safetensors, and describes held-out
    synthetic images (greedy, so the count is fixed for these weights; the random tiny model
    describes none)."""
    import io

    from data_prep import synthetic
    from ovlt_rl.models.loading import BUILTIN_MODELS, TINY_PRETRAINED_DIR

    assert "tiny-pretrained" in BUILTIN_MODELS
    path = resolve_model_path("tiny-pretrained")
    assert path == str(TINY_PRETRAINED_DIR) and (TINY_PRETRAINED_DIR / "model.safetensors").is_file()
    processor = load_processor(path, min_pixels=3136, max_pixels=12544)
    model = load_model(path).eval()
    exact = 0
    for i in range(20):
        family = synthetic.FAMILIES[i % len(synthetic.FAMILIES)]
        s = synthetic.sample(i, seed=0, split="val", family=family)
        image = Image.open(io.BytesIO(synthetic.render(s))).convert("RGB")
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe the image."}]}]
        text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        inputs = processor(text=[text], images=[image], return_tensors="pt")
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=64, do_sample=False)
        exact += processor.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip() == s.caption
    assert exact >= 6, exact  # 42 of 80 when it was shipped (README.md in its folder)
