"""Padding-free packing and token-budget micro-batches: packed rows give the padded batch's
log-probs and gradients (fp32, CPU, every attention path), plans keep every sample once and
respect the budget, and the ranks' micro-batch counts can always be matched."""

import pytest
import torch
from PIL import Image

from ovlt_rl.data.prompts import chat_messages, encode_prompt, render_prompt
from ovlt_rl.models.loading import load_model, load_processor, resolve_model_path
from ovlt_rl.workers.packed_attention import NAME, segments, use_packed_attention
from ovlt_rl.workers.packing import mrope_positions, over_budget, pack_batch, plan_micro_batches, split_to_count
from ovlt_rl.models.sequences import build_batch, head_logprobs, make_sample, token_logprobs


@pytest.fixture(scope="module")
def model_path():
    torch.set_num_threads(1)
    return resolve_model_path("tiny")


@pytest.fixture(scope="module")
def samples(model_path):
    return _samples_for(model_path)


def _samples_for(model_path):
    """Mixed lengths, images of different (non-square) sizes, and one text-only sample."""
    processor = load_processor(model_path)
    g = torch.Generator().manual_seed(0)
    out = []
    for i, size in enumerate([(56, 84), (112, 56), None, (84, 84)]):
        text = f"How many shapes are there? {i}"
        if size is None:
            enc = encode_prompt(processor, render_prompt(processor, chat_messages([{"role": "user", "content": text}])), [])
        else:
            chat = chat_messages([{"role": "user", "content": f"<image>{text}"}])
            enc = encode_prompt(processor, render_prompt(processor, chat), [Image.new("RGB", size, ("red", "blue", "green")[i % 3])])
        out.append(make_sample(enc, torch.randint(20, 300, (3 + 5 * i,), generator=g).tolist()))
    return out


def _model(model_path, impl):
    m = load_model(model_path, attn_implementation="sdpa" if impl == NAME else impl)
    if impl == NAME:
        use_packed_attention(m)
    return m


def _logprobs_and_grads(model, batch, weights):
    model.zero_grad(set_to_none=True)
    lp, _ = token_logprobs(model, batch)
    (lp * weights).sum().backward()
    return lp.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("impl", ["eager", "sdpa", NAME])
def test_packed_matches_padded_logprobs_and_gradients(model_path, samples, impl):
    model = _model(model_path, impl)
    padded = build_batch(samples, 0)
    packed = pack_batch(samples, 0, lambda s: mrope_positions(model.model, s))
    assert packed["input_ids"].shape == (1, sum(len(s["input_ids"]) for s in samples))
    assert "attention_mask" not in packed
    weights = torch.randn(padded["loss_mask"].shape, generator=torch.Generator().manual_seed(1))
    lp_pad, g_pad = _logprobs_and_grads(model, padded, weights)
    lp_pack, g_pack = _logprobs_and_grads(model, packed, weights)
    assert lp_pad.shape == lp_pack.shape
    assert (lp_pad != 0).sum() == sum(int(s["loss_mask"][1:].sum()) for s in samples)
    assert (lp_pad - lp_pack).abs().max() < 1e-4
    assert g_pad.keys() == g_pack.keys() and len(g_pad) > 10
    for name in g_pad:
        scale = g_pad[name].abs().max().clamp(min=1e-3)
        assert ((g_pad[name] - g_pack[name]).abs().max() / scale) < 1e-4, name
    # the vision tower got gradient through the packed row too
    assert any(n.startswith("model.visual") and g.abs().sum() > 0 for n, g in g_pack.items())


def test_packed_positions_restart_per_sample_and_match_the_model(model_path, samples):
    model = load_model(model_path)
    packed = pack_batch(samples, 0, lambda s: mrope_positions(model.model, s))
    padded = build_batch(samples, 0)
    # What the model computes itself for the padded batch (attention mask, whole batch at once).
    ref, _ = model.model.get_rope_index(input_ids=padded["input_ids"], mm_token_type_ids=padded["mm_token_type_ids"],
                                        image_grid_thw=padded["image_grid_thw"], attention_mask=padded["attention_mask"])
    valid = padded["attention_mask"].bool()
    pos = packed["position_ids"]
    assert pos.shape == (4, 1, valid.sum())
    assert torch.equal(pos[1:, 0], ref[:, valid])
    starts = torch.cumsum(torch.tensor([0] + [len(s["input_ids"]) for s in samples[:-1]]), 0)
    assert pos[0, 0, starts].tolist() == [0] * len(samples)
    # image tokens really have 3-D positions (height and width rows differ somewhere)
    assert not torch.equal(pos[2], pos[3])


def test_attention_stays_within_each_sample(model_path, samples):
    model = _model(model_path, NAME)
    positions = lambda s: mrope_positions(model.model, s)  # noqa: E731
    with torch.no_grad():
        lp, _ = token_logprobs(model, pack_batch(samples, 0, positions))
        changed = [dict(s) for s in samples]
        changed[0]["input_ids"] = changed[0]["input_ids"].clone()
        changed[0]["input_ids"][-2:] = torch.tensor([7, 8])  # the end of the first sample
        lp2, _ = token_logprobs(model, pack_batch(changed, 0, positions))
    assert not torch.equal(lp[0], lp2[0])
    assert torch.equal(lp[1:], lp2[1:])


def test_segments_follow_the_position_restarts():
    pos = torch.tensor([[0, 1, 2, 0, 1, 0, 0, 1, 2, 3]])
    cu, bounds, longest = segments(pos)
    assert bounds == [0, 3, 5, 6, 10] and cu.tolist() == bounds and longest == 4


def test_fixed_plan_groups_similar_lengths():
    lengths = [5, 1, 9, 3, 7, 2]
    assert plan_micro_batches(lengths, micro_batch_size=2, max_tokens=0, padded=True) == [[1, 5], [3, 0], [4, 2]]


@pytest.mark.parametrize("padded", [False, True])
def test_budget_plan_keeps_every_sample_once_under_the_budget(padded):
    g = torch.Generator().manual_seed(3)
    lengths = torch.randint(100, 2048, (40,), generator=g).tolist() + [5000]
    plan = plan_micro_batches(lengths, micro_batch_size=1, max_tokens=4096, padded=padded)
    assert sorted(i for grp in plan for i in grp) == list(range(len(lengths)))
    for grp in plan:
        cost = len(grp) * max(lengths[i] for i in grp) if padded else sum(lengths[i] for i in grp)
        assert cost <= 4096 or grp == [40]  # the one sample over the budget runs alone
    assert over_budget(lengths, 4096) == 1
    if not padded:  # first-fit decreasing: close to the lower bound
        assert len(plan) <= -(-sum(lengths) // 4096) + 2


def test_split_to_count_matches_other_ranks():
    lengths = [100, 900, 300, 500, 200]
    plan = plan_micro_batches(lengths, micro_batch_size=1, max_tokens=4000, padded=False)
    assert len(plan) == 1
    groups, dummies = split_to_count(plan, lengths, 4, padded=False)
    assert len(groups) == 4 and dummies == 0
    assert sorted(i for g in groups for i in g) == list(range(5))
    groups, dummies = split_to_count(plan, lengths, 7, padded=False)
    assert len(groups) == 5 and dummies == 2  # one sample each, then two dummy micro-batches
    with pytest.raises(ValueError, match="more than the target"):
        split_to_count(groups, lengths, 3, padded=False)


@pytest.mark.parametrize("temperature", [1.0, 0.5])
@pytest.mark.parametrize("entropy_grad", [False, True])
def test_chunked_head_matches_full_log_softmax(entropy_grad, temperature):
    g = torch.Generator().manual_seed(5)
    head = torch.nn.Linear(16, 50, bias=False)
    hidden = torch.randn(37, 16, generator=g, requires_grad=True)
    labels = torch.randint(0, 50, (37,), generator=g)
    w = torch.randn(37, generator=g)
    lp, ent = head_logprobs(head, hidden, labels, with_entropy=True, entropy_grad=entropy_grad, chunk_size=8,
                            temperature=temperature)
    loss = (lp * w).sum() + (ent.sum() if entropy_grad else 0)
    got = torch.autograd.grad(loss, (hidden, head.weight))

    # At temperature T: the distribution softmax(logits / T) that a sampler at T draws from.
    logp = torch.log_softmax(head(hidden) / temperature, dim=-1)
    lp_ref = logp.gather(-1, labels[:, None]).squeeze(-1)
    ent_ref = -(logp.exp() * logp).sum(-1)
    loss_ref = (lp_ref * w).sum() + (ent_ref.sum() if entropy_grad else 0)
    want = torch.autograd.grad(loss_ref, (hidden, head.weight))
    assert (lp - lp_ref).abs().max() < 1e-5 and (ent - ent_ref).abs().max() < 1e-5
    assert ent.requires_grad == entropy_grad
    for a, b in zip(got, want):
        assert (a - b).abs().max() < 1e-5
