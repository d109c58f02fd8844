"""Vision window attention on a GPU: one non-causal varlen flash call over all windows agrees with
transformers' per-window SDPA, forward and backward, in bf16."""

import pytest
import torch
import torch.nn.functional as F

from ovlt_rl.models.varlen import find_varlen, varlen_attention, varlen_works
from ovlt_rl.models.vision_attention import grouped_window_attention, kernel_for, use_window_attention, uses_window_attention
from tests.ovlt_rl.models.attention_checks import assert_matches_reference


def _per_window_sdpa(q, k, v, cu, scaling):
    """The reference: fp32 SDPA window by window, as transformers' vision attention does."""
    bounds = cu.tolist()
    pieces = [F.scaled_dot_product_attention(*(t[:, :, a:b].float() for t in (q, k, v)), scale=scaling).transpose(1, 2)
              for a, b in zip(bounds[:-1], bounds[1:])]
    return torch.cat(pieces, dim=1)  # [1, T, heads, D]


@pytest.mark.gpu(n=1)
def test_varlen_window_attention_matches_per_window_sdpa():
    assert find_varlen() is not None, "this torch has no torch.nn.attention.varlen"
    assert varlen_works(torch.device("cuda", 0), torch.bfloat16, False)
    assert kernel_for("cuda", torch.bfloat16) == "torch varlen flash attention, one call per layer"
    # A 7B-shaped tower (16 heads of 80): 25 windows of 64 tokens (a 504x504 image), windows cut
    # at an image edge, a single token, and a whole image (the full-attention layers' segments).
    lengths = [64] * 25 + [32, 48, 16, 1, 1296]
    cu = torch.tensor([0] + lengths, device="cuda").cumsum(0).to(torch.int32)
    T, scaling = sum(lengths), 80**-0.5
    g = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(1, 16, T, 80, device="cuda", generator=g, dtype=torch.bfloat16, requires_grad=True) for _ in range(3))

    out = grouped_window_attention(q, k, v, cu, scaling)
    assert out.shape == (1, T, 16, 80) and out.dtype == torch.bfloat16
    # It took the varlen path: the same numbers as the kernel called directly (with the given max).
    direct = varlen_attention(q, k, v, cu, 1296, scaling, causal=False)
    assert direct is not None and torch.equal(out, direct)
    given_max = grouped_window_attention(q, k, v, cu, scaling, max_len=1296)
    assert torch.equal(given_max, out)

    ref = _per_window_sdpa(q, k, v, cu, scaling)
    assert_matches_reference(out, ref, (q, k, v), g)


@pytest.mark.gpu(n=1)
def test_tiny_vision_tower_in_bf16_matches_per_window_sdpa():
    from PIL import Image

    from ovlt_rl.models.loading import load_model, load_processor, resolve_model_path

    path = resolve_model_path("tiny")
    model = load_model(path, dtype=torch.bfloat16, device="cuda").train()
    with torch.no_grad():  # peaked attention (see tests/ovlt_rl/models/test_vision_attention.py)
        for block in model.model.visual.blocks:
            block.attn.qkv.weight[: 2 * block.attn.dim].mul_(10.0)
    images = [Image.new("RGB", (168, 168), "red"), Image.new("RGB", (224, 112), "blue")]
    enc = load_processor(path).image_processor(images=images, return_tensors="pt")
    g = torch.Generator().manual_seed(0)
    pixels = (enc["pixel_values"] + 0.5 * torch.randn(enc["pixel_values"].shape, generator=g)).to("cuda", torch.bfloat16)
    grid = enc["image_grid_thw"].cuda()
    visual = model.model.visual

    def run():
        x = pixels.clone().requires_grad_(True)
        out = visual(x, grid_thw=grid).pooler_output
        loss = (out.float() * torch.linspace(-1, 1, out.numel(), device="cuda").view(out.shape)).sum()
        return out.float(), torch.autograd.grad(loss, [x, visual.blocks[0].attn.qkv.weight])

    want, want_grads = run()
    use_window_attention(model)
    assert uses_window_attention(model)
    got, got_grads = run()
    assert (got - want).abs().max() / want.abs().max() < 3e-2
    for a, b in zip(got_grads, want_grads):
        assert (a.float() - b.float()).abs().max() / b.float().abs().max() < 5e-2
