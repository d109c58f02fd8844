"""Batched windowed vision attention: the same numbers as transformers' window-by-window loop."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from ovlt_rl.engines.vision_attention import NAME, grouped_vision_attention, grouped_window_attention


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


def test_vision_tower_features_unchanged_and_config_restored(tiny_model, tiny_processor):
    # 168 px = 12 patches a side: windows of 8 and 4 patches, so segments of several lengths.
    images = [Image.new("RGB", (168, 168), "red"), Image.new("RGB", (56, 112), "blue"), Image.new("RGB", (224, 168), "green")]
    enc = tiny_processor.image_processor(images=images, return_tensors="pt")
    visual = tiny_model.model.visual
    with torch.no_grad():
        want = visual(enc["pixel_values"], grid_thw=enc["image_grid_thw"]).pooler_output
        before = visual.config._attn_implementation
        with grouped_vision_attention(tiny_model):
            assert visual.config._attn_implementation == NAME
            assert ALL_ATTENTION_FUNCTIONS.get_interface(NAME, None) is grouped_window_attention
            got = visual(enc["pixel_values"], grid_thw=enc["image_grid_thw"]).pooler_output
        assert visual.config._attn_implementation == before
    assert got.shape == want.shape
    assert torch.allclose(got, want, atol=1e-5)
