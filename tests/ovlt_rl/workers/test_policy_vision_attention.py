"""The policy worker's vision tower runs ovlt's window attention (attn_implementation "sdpa"):
log-probs and the update's gradients are those of transformers' per-window SDPA, through FSDP2
(a 1-rank gloo group), with gradient checkpointing on and off and the tower trainable or frozen."""

import numpy as np
import pytest
import torch
from PIL import Image

from ovlt_rl.data.prompts import chat_messages, encode_prompt, render_prompt
from ovlt_rl.models.loading import load_processor, resolve_model_path
from ovlt_rl.models.vision_attention import use_stock_attention, uses_window_attention
from ovlt_rl.models.sequences import make_sample
from tests.ovlt_rl.workers.test_policy import _worker


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    """The tiny model with its vision queries and keys scaled up 10x: its random init (std 0.02)
    makes attention within a window nearly uniform, so that a wrong window or scale would barely
    move the log-probs; peaked attention makes them show."""
    from ovlt_rl.models.loading import load_model

    model = load_model(resolve_model_path("tiny"))
    with torch.no_grad():
        for block in model.model.visual.blocks:
            block.attn.qkv.weight[: 2 * block.attn.dim].mul_(10.0)
    path = tmp_path_factory.mktemp("sharp-tiny")
    model.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def samples():
    """Noise images of several sizes: 168 px is 12 patches a side, windows of 8 and 4 patches, so
    the tower's windowed layers see windows of several lengths in one call."""
    processor = load_processor(resolve_model_path("tiny"))
    rng = np.random.default_rng(0)
    g = torch.Generator().manual_seed(0)
    out = []
    for i, (w, h) in enumerate([(168, 168), (224, 112), (56, 84), (168, 112)]):
        img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        chat = chat_messages([{"role": "user", "content": f"<image>What is in the picture? {i}"}])
        s = make_sample(encode_prompt(processor, render_prompt(processor, chat), [img]),
                        torch.randint(20, 300, (6 + i,), generator=g).tolist())
        s["advantages"] = s["loss_mask"] * (1.0 if i % 2 else -0.5)
        out.append(s)
    return out


@pytest.mark.parametrize("overrides", [
    {"model.gradient_checkpointing": "true", "model.freeze_vision_tower": "false", "actor.padding_free": "true"},
    {"model.gradient_checkpointing": "false", "model.freeze_vision_tower": "true", "actor.padding_free": "false"},
], ids=["checkpointing-trainable-packed", "plain-frozen-padded"])
def test_window_attention_keeps_logprobs_and_gradients(model_path, samples, overrides):
    kw = {"actor.micro_batch_size": 2, "actor.global_batch_size": "4", **overrides}
    results = {}
    for implementation in ("ovlt", "sdpa"):
        w = _worker(model_path, **kw)
        assert uses_window_attention(w.policy.model)  # the worker switched it
        if implementation == "sdpa":
            use_stock_attention(w.policy.model)  # transformers' per-window loop
        lps = w.compute_logprobs(samples, which="policy", micro_batch_size=2, temperature=1.0)
        for s, lp in zip(samples, lps):
            s["old_logprobs"] = lp  # the same for both runs up to 1e-5 (asserted below)
        denom = float(sum(int(s["loss_mask"][1:].sum()) for s in samples))
        m = w.update_policy(samples, denominator=denom, temperature=1.0)
        assert m["actor/skipped"] == 0.0
        vision = {k: v.clone() for k, v in w.full_state_dict().items() if "visual" in k}
        results[implementation] = (lps, m["actor/grad_norm"], vision)
        w.shutdown()
    (lp_ours, g_ours, v_ours), (lp_ref, g_ref, v_ref) = results["ovlt"], results["sdpa"]
    for a, b in zip(lp_ours, lp_ref):
        assert (a - b).abs().max() < 1e-5
    assert g_ours == pytest.approx(g_ref, rel=1e-5)
    # The vision weights after the step: moved alike (trainable) or not at all (frozen).
    diff = max(float((v_ours[k] - v_ref[k]).abs().max()) for k in v_ours)
    assert diff < 1e-6
