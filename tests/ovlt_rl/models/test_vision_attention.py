"""Window attention for the vision tower (CPU path: one SDPA per window length): the same numbers,
forward and backward, as transformers' window-by-window loop."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from ovlt_rl.models.loading import load_model, load_processor, resolve_model_path
from ovlt_rl.models.vision_attention import (
    NAME,
    grouped_vision_attention,
    grouped_window_attention,
    kernel_for,
    use_window_attention,
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
    out, _ = grouped_window_attention(None, q, k, v, scaling=0.3, cu_seq_lens_q=cu, cu_seq_lens_k=cu)
    assert out.shape == (1, 27, 2, 8)
    for a, b in zip(cu[:-1].tolist(), cu[1:].tolist()):
        ref = F.scaled_dot_product_attention(q[:, :, a:b], k[:, :, a:b], v[:, :, a:b], scale=0.3)  # [1, 2, len, 8]
        assert torch.allclose(out[0, a:b], ref[0].transpose(0, 1), atol=1e-6)
    with pytest.raises(ValueError, match="same cu_seq_lens"):
        grouped_window_attention(None, q, k, v, cu_seq_lens_q=cu, cu_seq_lens_k=cu.flip(0))
    with pytest.raises(ValueError, match="non-causal"):
        grouped_window_attention(None, q, k, v, cu_seq_lens_q=cu, cu_seq_lens_k=cu, is_causal=True)
    assert kernel_for("cpu", torch.float32) == "SDPA, one call per window length"


def _features_and_grads(model, pixels, grid, implementation):
    """The tower's merged features and the gradients of a fixed random projection of them."""
    visual = model.model.visual
    visual.config._attn_implementation = implementation
    pixels = pixels.clone().requires_grad_(True)
    out = visual(pixels, grid_thw=grid).pooler_output
    w = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    params = [p for p in visual.parameters()]
    grads = torch.autograd.grad((out * w).sum(), [pixels, *params])
    return out.detach(), grads


def test_vision_tower_forward_and_backward_match_per_window_sdpa(model_path, vision_inputs):
    model = _sharp_model(model_path).train()  # train(): the workers' mode (dropout is 0 in Qwen2.5-VL)
    pixels, grid = vision_inputs
    want, want_grads = _features_and_grads(model, pixels, grid, "sdpa")
    use_window_attention(model)
    assert model.model.visual.config._attn_implementation == NAME
    assert ALL_ATTENTION_FUNCTIONS.get_interface(NAME, None) is grouped_window_attention
    got, got_grads = _features_and_grads(model, pixels, grid, NAME)
    assert got.shape == want.shape
    assert torch.allclose(got, want, atol=1e-5)
    assert len(got_grads) == len(want_grads) > 2
    for a, b in zip(got_grads, want_grads):
        assert b.abs().max() > 0  # every gradient is exercised, so the comparison can fail
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-4), (a - b).abs().max()
    # The text decoder keeps its own attention.
    assert model.config.get_text_config()._attn_implementation == "sdpa"


def test_context_manager_restores_the_config(model_path, vision_inputs):
    model = _sharp_model(model_path).eval()
    pixels, grid = vision_inputs
    visual = model.model.visual
    with torch.no_grad():
        want = visual(pixels, grid_thw=grid).pooler_output
        before = visual.config._attn_implementation
        with grouped_vision_attention(model):
            assert visual.config._attn_implementation == NAME
            got = visual(pixels, grid_thw=grid).pooler_output
        assert visual.config._attn_implementation == before == "sdpa"
    assert torch.allclose(got, want, atol=1e-5)
