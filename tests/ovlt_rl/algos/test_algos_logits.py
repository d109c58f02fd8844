"""Chunked log-probs and entropy: hand-computed values, equality with the naive computation, bf16."""

import math

import pytest
import torch

from ovlt_rl.algos import entropy_from_logits, log_probs_from_logits

torch.set_num_threads(1)


def _naive_log_probs(logits, labels):
    return torch.log_softmax(logits.float(), dim=-1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)


def _naive_entropy(logits):
    logp = torch.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(-1)


def test_log_probs_and_entropy_by_hand():
    # logits [0, ln 3] -> probabilities [1/4, 3/4]
    logits = torch.tensor([[0.0, math.log(3.0)], [0.0, math.log(3.0)]])
    lp = log_probs_from_logits(logits, torch.tensor([1, 0]))
    assert lp.tolist() == pytest.approx([math.log(0.75), math.log(0.25)])
    h = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    assert entropy_from_logits(logits).tolist() == pytest.approx([h, h])


def test_large_equal_logits_are_stable():
    # exp(1000) overflows a naive softmax; the result is the uniform distribution over 5
    logits = torch.full((3, 5), 1000.0)
    assert entropy_from_logits(logits).tolist() == pytest.approx([math.log(5)] * 3)
    assert log_probs_from_logits(logits, torch.tensor([0, 2, 4])).tolist() == pytest.approx([-math.log(5)] * 3)


@pytest.mark.parametrize("chunk_size", [1, 16, 10_000])
def test_chunked_equals_naive_with_gradients(chunk_size):
    gen = torch.Generator().manual_seed(0)
    logits = (3 * torch.randn(3, 37, 50, generator=gen)).requires_grad_(True)
    labels = torch.randint(0, 50, (3, 37), generator=gen)
    w_lp = torch.randn(3, 37, generator=gen)
    w_h = torch.randn(3, 37, generator=gen)

    lp, h = log_probs_from_logits(logits, labels, chunk_size), entropy_from_logits(logits, chunk_size)
    assert lp.shape == (3, 37) and h.shape == (3, 37) and lp.dtype == torch.float32
    ((lp * w_lp).sum() + (h * w_h).sum()).backward()
    grad = logits.grad.clone()
    logits.grad = None

    lp_ref, h_ref = _naive_log_probs(logits, labels), _naive_entropy(logits)
    ((lp_ref * w_lp).sum() + (h_ref * w_h).sum()).backward()
    assert torch.allclose(lp, lp_ref, atol=1e-5)
    assert torch.allclose(h, h_ref, atol=1e-5)
    assert torch.allclose(grad, logits.grad, atol=1e-5)


def test_bf16_logits_upcast_per_chunk():
    gen = torch.Generator().manual_seed(1)
    logits32 = 4 * torch.randn(2, 29, 300, generator=gen)
    logits16 = logits32.bfloat16().requires_grad_(True)
    labels = torch.randint(0, 300, (2, 29), generator=gen)
    lp = log_probs_from_logits(logits16, labels, chunk_size=8)
    h = entropy_from_logits(logits16, chunk_size=8)
    assert lp.dtype == torch.float32 and h.dtype == torch.float32
    # the same bf16 values, naive in fp32: equal up to fp32 rounding
    assert torch.allclose(lp, _naive_log_probs(logits16, labels), atol=1e-5)
    assert torch.allclose(h, _naive_entropy(logits16), atol=1e-5)
    # against the fp32 originals: bf16 rounding of logits (rel 2^-8, |logit| <~ 16) bounds the error
    assert torch.allclose(lp, _naive_log_probs(logits32, labels), atol=0.15)
    assert torch.allclose(h, _naive_entropy(logits32), atol=0.1)
    lp.sum().backward()
    assert logits16.grad.dtype == torch.bfloat16 and torch.isfinite(logits16.grad.float()).all()


def test_no_grad_path_and_empty_input():
    logits = torch.randn(4, 6)
    with torch.no_grad():
        assert torch.allclose(entropy_from_logits(logits, 3), _naive_entropy(logits), atol=1e-6)
    empty = log_probs_from_logits(torch.randn(0, 6), torch.zeros(0, dtype=torch.long))
    assert empty.shape == (0,)


def test_bad_labels_raise():
    logits = torch.randn(2, 3, 5)
    with pytest.raises(ValueError, match=r"\[0, 5\)"):
        log_probs_from_logits(logits, torch.tensor([[0, 1, -100], [0, 1, 2]]))
    with pytest.raises(ValueError, match="shape"):
        log_probs_from_logits(logits, torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="chunk_size"):
        entropy_from_logits(logits, chunk_size=0)
