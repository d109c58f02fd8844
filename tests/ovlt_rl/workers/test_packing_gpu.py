"""Packed attention on a GPU: torch's variable-length flash kernel (forward and backward) agrees
with per-sample SDPA, and packed rows give the padded batch's log-probs in bf16."""

import pytest
import torch

from ovlt_rl.models.varlen import find_varlen, varlen_attention
from ovlt_rl.workers.packed_attention import NAME, segments, use_packed_attention
from tests.ovlt_rl.models.attention_checks import assert_matches_reference


@pytest.mark.gpu(n=1)
def test_varlen_kernel_matches_per_sample_sdpa():
    assert find_varlen() is not None, "this torch has no torch.nn.attention.varlen"
    g = torch.Generator(device="cuda").manual_seed(0)
    lengths = [700, 1, 300, 1200]
    T = sum(lengths)
    q = torch.randn(1, 28, T, 128, device="cuda", generator=g, dtype=torch.bfloat16, requires_grad=True)
    k = torch.randn(1, 4, T, 128, device="cuda", generator=g, dtype=torch.bfloat16, requires_grad=True)
    v = torch.randn(1, 4, T, 128, device="cuda", generator=g, dtype=torch.bfloat16, requires_grad=True)
    pos = torch.cat([torch.arange(n) for n in lengths]).cuda()[None]
    cu, bounds, longest = segments(pos)
    out = varlen_attention(q, k, v, cu, longest, 128**-0.5, causal=True)
    assert out is not None and out.shape == (1, T, 28, 128)
    ref = []
    for a, b in zip(bounds[:-1], bounds[1:]):
        kk, vv = (t[:, :, a:b].float().repeat_interleave(7, dim=1) for t in (k, v))
        ref.append(torch.nn.functional.scaled_dot_product_attention(q[:, :, a:b].float(), kk, vv, is_causal=True).transpose(1, 2))
    ref = torch.cat(ref, dim=1)
    assert_matches_reference(out, ref, (q, k, v), g)


@pytest.mark.gpu(n=1)
def test_packed_logprobs_match_padded_in_bf16():
    from tests.ovlt_rl.workers.test_packing import _samples_for
    from ovlt_rl.models.loading import load_model, resolve_model_path
    from ovlt_rl.workers.packing import mrope_positions, pack_batch
    from ovlt_rl.models.sequences import build_batch, token_logprobs

    path = resolve_model_path("tiny")
    model = load_model(path, dtype=torch.bfloat16, device="cuda")
    use_packed_attention(model)
    assert model.config.get_text_config()._attn_implementation == NAME
    samples = _samples_for(path)
    to = lambda b: {k: (v.cuda() if torch.is_tensor(v) else v) for k, v in b.items()}  # noqa: E731
    with torch.no_grad():
        padded, _ = token_logprobs(model, to(build_batch(samples, 0)))
        packed, _ = token_logprobs(model, to(pack_batch(samples, 0, lambda s: mrope_positions(model.model, s))))
    mask = padded != 0
    assert mask.sum() > 20
    assert (padded - packed)[mask].abs().max() < 5e-2
