"""Window attention for the vision tower (CPU path: one SDPA per window length): the same numbers,
forward and backward, as transformers' window-by-window loop."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from ovlt_rl.models.loading import load_model, load_processor, resolve_model_path
from ovlt_rl.models.vision_attention import (
    grouped_vision_attention,
    grouped_window_attention,
    kernel_for,
    use_stock_attention,
    use_window_attention,
    uses_window_attention,
)


@pytest.fixture(scope="module")
def model_path():
    return resolve_model_path("tiny")


def _sharp_model(model_path):
    """The tiny model with its vision queries and keys scaled up 10x: its random init (std 0.02)
    makes attention within a window nearly uniform, so that a wrong window or scale would barely
    move the features; peaked attention makes them show."""
    model = load_model(model_path)
    with torch.no_grad():
        for block in model.model.visual.blocks:
            block.attn.qkv.weight[: 2 * block.attn.dim].mul_(10.0)
    return model


@pytest.fixture(scope="module")
def vision_inputs(model_path):
    # 168 px = 12 patches a side: windows of 8 and 4 patches, so segments of several lengths.
    images = [Image.new("RGB", (168, 168), "red"), Image.new("RGB", (56, 112), "blue"), Image.new("RGB", (224, 168), "green")]
    enc = load_processor(model_path).image_processor(images=images, return_tensors="pt")
    g = torch.Generator().manual_seed(0)
    # Noise on the flat colours, so that attention weights are not uniform within windows.
    return enc["pixel_values"] + 0.5 * torch.randn(enc["pixel_values"].shape, generator=g), enc["image_grid_thw"]


def test_grouped_attention_equals_attention_per_segment():
    g = torch.Generator().manual_seed(0)
    cu = torch.tensor([0, 5, 10, 13, 21, 26, 27])  # lengths 5, 5, 3, 8, 5, 1
    q, k, v = (torch.randn(1, 2, 27, 8, generator=g) for _ in range(3))
    out = grouped_window_attention(q, k, v, cu, 0.3)
    assert out.shape == (1, 27, 2, 8)
    for a, b in zip(cu[:-1].tolist(), cu[1:].tolist()):
        ref = F.scaled_dot_product_attention(q[:, :, a:b], k[:, :, a:b], v[:, :, a:b], scale=0.3)  # [1, 2, len, 8]
        assert torch.allclose(out[0, a:b], ref[0].transpose(0, 1), atol=1e-6)
    assert kernel_for("cpu", torch.float32) == "SDPA, one call per window length"


def _features_and_grads(model, pixels, grid):
    """The tower's merged features and the gradients of a fixed random projection of them."""
    visual = model.model.visual
    pixels = pixels.clone().requires_grad_(True)
    out = visual(pixels, grid_thw=grid).pooler_output
    w = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    params = [p for p in visual.parameters()]
    grads = torch.autograd.grad((out * w).sum(), [pixels, *params])
    return out.detach(), grads


def test_vision_tower_forward_and_backward_match_per_window_sdpa(model_path, vision_inputs):
    model = _sharp_model(model_path).train()  # train(): the workers' mode (dropout is 0 in Qwen2.5-VL)
    pixels, grid = vision_inputs
    want, want_grads = _features_and_grads(model, pixels, grid)  # transformers' per-window SDPA
    use_window_attention(model)
    assert uses_window_attention(model)
    got, got_grads = _features_and_grads(model, pixels, grid)
    assert got.shape == want.shape
    assert torch.allclose(got, want, atol=1e-5)
    assert len(got_grads) == len(want_grads) > 2
    for a, b in zip(got_grads, want_grads):
        assert b.abs().max() > 0  # every gradient is exercised, so the comparison can fail
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-4), (a - b).abs().max()
    # The configs are untouched: the text decoder keeps its own attention, and transformers'
    # set_attn_implementation (which re-checks every sub-config) still works on the model.
    assert model.config.get_text_config()._attn_implementation == "sdpa"
    assert model.model.visual.config._attn_implementation == "sdpa"
    model.set_attn_implementation("eager")
    model.set_attn_implementation("sdpa")
    assert uses_window_attention(model)
    # And it comes off again: transformers' own forward, the same numbers as before.
    use_stock_attention(model)
    assert not uses_window_attention(model)
    again, _ = _features_and_grads(model, pixels, grid)
    assert torch.equal(again, want)


def test_context_manager_restores_stock_attention(model_path, vision_inputs):
    model = _sharp_model(model_path).eval()
    pixels, grid = vision_inputs
    visual = model.model.visual
    with torch.no_grad():
        want = visual(pixels, grid_thw=grid).pooler_output
        with grouped_vision_attention(model):
            assert uses_window_attention(model)
            got = visual(pixels, grid_thw=grid).pooler_output
        assert not uses_window_attention(model)
        assert type(visual.blocks[0].attn).forward is not None and "forward" not in vars(visual.blocks[0].attn)
        # Inside a model that already uses it for good, the block leaves it on.
        use_window_attention(model)
        with grouped_vision_attention(model):
            pass
        assert uses_window_attention(model)
    assert torch.allclose(got, want, atol=1e-5)


def test_a_tower_of_another_layout_is_a_clear_error(model_path):
    model = load_model(model_path)
    del model.model.visual.blocks[0].attn.qkv
    with pytest.raises(TypeError, match="has no \\['qkv'\\]"):
        use_window_attention(model)
