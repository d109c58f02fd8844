"""images.py (decode, alpha, resize) and prompts.py (chat messages, template, image-token expansion)."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from ovlt_rl.data.images import ImageError, check_image, fit_image, fitted_size, load_image
from ovlt_rl.data.prompts import chat_messages, count_placeholders, encode_prompt, image_token_count, render_prompt


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def test_load_from_bytes_and_from_a_relative_path(tmp_path, png_bytes):
    data = png_bytes(100, 60)
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "a.png").write_bytes(data)
    from_bytes = load_image({"bytes": data, "path": "ignored.png"})
    from_path = load_image({"bytes": None, "path": "imgs/a.png"}, base_dir=tmp_path)
    assert from_bytes.mode == from_path.mode == "RGB"
    assert from_bytes.size == from_path.size == (100, 60)
    assert from_bytes.tobytes() == from_path.tobytes()
    assert check_image({"bytes": None, "path": "imgs/a.png"}, tmp_path) == (100, 60)


def test_transparent_pixels_become_white():
    img = Image.new("RGBA", (30, 30), (0, 0, 0, 0))
    img.putpixel((5, 5), (10, 20, 30, 255))
    out = load_image({"bytes": _png(img), "path": None})
    assert out.getpixel((0, 0)) == (255, 255, 255)
    assert out.getpixel((5, 5)) == (10, 20, 30)


@pytest.mark.parametrize(
    "image, match",
    [
        ({"bytes": b"not an image", "path": None}, "not a readable image"),
        ({"bytes": None, "path": "missing.png"}, "not found"),
        ({"bytes": None, "path": None}, "neither bytes nor path"),
    ],
)
def test_unusable_images_raise_image_error(tmp_path, image, match):
    with pytest.raises(ImageError, match=match):
        check_image(image, tmp_path)
    with pytest.raises(ImageError, match=match):
        load_image(image, tmp_path)


def test_truncated_png_fails_the_cheap_check(png_bytes):
    data = png_bytes(112, 112, n_circles=3)
    with pytest.raises(ImageError):
        check_image({"bytes": data[: len(data) // 2], "path": None})


@pytest.mark.parametrize("size", [(112, 112), (500, 300), (30, 40), (1000, 20)])
def test_fit_image_gives_multiples_of_28_within_bounds(size):
    lo, hi = 56 * 56, 224 * 224
    img = fit_image(Image.new("RGB", size), min_pixels=lo, max_pixels=hi)
    w, h = img.size
    assert w % 28 == 0 and h % 28 == 0 and lo <= w * h <= hi
    assert (w, h) == fitted_size(*size, min_pixels=lo, max_pixels=hi)
    assert abs(w / h - size[0] / size[1]) / (size[0] / size[1]) < 0.5  # aspect ratio roughly kept
    if size == (112, 112):
        assert img.size == size


def test_extreme_aspect_ratio_is_an_image_error():
    with pytest.raises(ImageError, match="aspect ratio"):
        fitted_size(10_000, 20, min_pixels=56 * 56, max_pixels=224 * 224)


def test_chat_messages_split_placeholders_and_append_the_suffix():
    prompt = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Compare <image> and <image>: which has more circles? "},
    ]
    assert count_placeholders(prompt) == 2
    chat = chat_messages(prompt, suffix="Think first.")
    assert chat[0] == {"role": "system", "content": [{"type": "text", "text": "Be brief."}]}
    assert chat[1]["content"] == [
        {"type": "text", "text": "Compare "},
        {"type": "image"},
        {"type": "text", "text": " and "},
        {"type": "image"},
        {"type": "text", "text": ": which has more circles?\nThink first."},
    ]
    with pytest.raises(ValueError, match="no user message"):
        chat_messages([{"role": "system", "content": "x"}])


def test_rendered_prompt_and_encoding_count_image_tokens(tiny_processor):
    chat = chat_messages([{"role": "user", "content": "<image>Left.<image>Right. Which is longer?"}])
    text = render_prompt(tiny_processor, chat)
    assert text.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n")
    assert text.endswith("Which is longer?<|im_end|>\n<|im_start|>assistant\n")
    assert text.count("<|vision_start|><|image_pad|><|vision_end|>") == 2
    images = [Image.new("RGB", (112, 112)), Image.new("RGB", (168, 56))]
    enc = encode_prompt(tiny_processor, text, images)
    merge = tiny_processor.image_processor.merge_size
    expected = [image_token_count(*im.size, patch_size=14, merge_size=merge) for im in images]
    assert expected == [16, 12]
    assert (enc["image_grid_thw"].prod(-1) // merge**2).tolist() == expected
    n_pad = (enc["input_ids"] == tiny_processor.image_token_id).sum().item()
    assert n_pad == sum(expected) == enc["mm_token_type_ids"].sum().item()
    n_text = len(tiny_processor.tokenizer(text)["input_ids"])
    assert len(enc["input_ids"]) == n_text - 2 + sum(expected)
    assert enc["pixel_values"].shape[0] == (8 * 8) + (12 * 4)
