"""Policy loss (clip, clip-higher, dual-clip), aggregation modes, SFT NLL, gradient accumulation."""

import math

import pytest
import torch

from ovlt_rl.algos import (
    AGG_MODES,
    aggregate,
    kl_loss,
    log_probs_from_logits,
    loss_denominator,
    masked_nll,
    policy_loss,
    token_advantages,
)

torch.set_num_threads(1)

# (advantage, ratio) per token, with clip_low 0.2, clip_high 0.3, dual_clip 3.0, and the
# per-token loss worked out by hand: L = max(-A r, -A clip(r, 0.8, 1.3)); for A < 0, min(L, -3A).
CASES = [
    (+1.0, 1.5),   # -1.5 vs -1.3         -> -1.3  clipped (above 1 + clip_high)
    (+1.0, 0.5),   # -0.5 vs -0.8         -> -0.5  not clipped (A > 0 ignores the low side)
    (-1.0, 0.5),   #  0.5 vs  0.8         ->  0.8  clipped (below 1 - clip_low)
    (-1.0, 1.5),   #  1.5 vs  1.3         ->  1.5  not clipped, under the dual cap 3
    (-1.0, 4.0),   #  4.0 vs  1.3 -> 4.0  ->  3.0  dual-clipped
    (+2.0, 1.0),   # -2.0                 -> -2.0
    (+0.5, 1.2),   # -0.6 vs -0.6         -> -0.6  inside the band
    (-2.0, 5.0),   # 10.0 vs  2.6 -> 10.0 ->  6.0  dual-clipped
]
EXPECTED_TOKEN_LOSS = [-1.3, -0.5, 0.8, 1.5, 3.0, -2.0, -0.6, 6.0]
# d loss / d log_prob per token, times 8 tokens: -A r where the unclipped term is taken, else 0
EXPECTED_GRAD_TIMES_N = [0.0, -0.5, 0.0, 1.5, 0.0, -2.0, -0.6, 0.0]


def _case_tensors():
    adv = torch.tensor([a for a, _ in CASES], dtype=torch.float64).reshape(2, 4)
    log_probs = torch.tensor([math.log(r) for _, r in CASES], dtype=torch.float64).reshape(2, 4)
    return adv, log_probs.requires_grad_(True), torch.zeros(2, 4, dtype=torch.float64)


def test_policy_loss_clip_and_dual_clip_by_hand():
    adv, log_probs, old = _case_tensors()
    loss, metrics = policy_loss(log_probs, old, adv, torch.ones(2, 4, dtype=torch.bool))
    assert loss.item() == pytest.approx(sum(EXPECTED_TOKEN_LOSS) / 8)       # 6.9 / 8
    assert loss.item() == pytest.approx(0.8625)
    loss.backward()
    assert torch.allclose(log_probs.grad.flatten(), torch.tensor(EXPECTED_GRAD_TIMES_N, dtype=torch.float64) / 8)
    assert metrics["clip_frac"].item() == pytest.approx(2 / 8)             # tokens 0 and 2
    assert metrics["dual_clip_frac"].item() == pytest.approx(2 / 8)        # tokens 4 and 7
    assert metrics["ratio_mean"].item() == pytest.approx(15.2 / 8)
    expected_kl = -sum(math.log(r) for _, r in CASES) / 8
    assert metrics["approx_kl"].item() == pytest.approx(expected_kl)


def test_dual_clip_disabled():
    adv, log_probs, old = _case_tensors()
    loss, metrics = policy_loss(log_probs, old, adv, torch.ones(2, 4, dtype=torch.bool), dual_clip=None)
    no_dual = [-1.3, -0.5, 0.8, 1.5, 4.0, -2.0, -0.6, 10.0]
    assert loss.item() == pytest.approx(sum(no_dual) / 8)
    assert metrics["dual_clip_frac"].item() == 0.0


def test_symmetric_clip_changes_upper_bound():
    adv, log_probs, old = _case_tensors()
    loss, _ = policy_loss(log_probs, old, adv, torch.ones(2, 4, dtype=torch.bool), clip_high=0.2)
    # token 0 now clips at 1.2 (-1.2), token 3 at 1.2 -> max(1.5, 1.2) = 1.5, token 7: min(10, 6) = 6
    by_hand = [-1.2, -0.5, 0.8, 1.5, 3.0, -2.0, -0.6, 6.0]
    assert loss.item() == pytest.approx(sum(by_hand) / 8)


def test_masked_positions_with_garbage_do_not_leak():
    adv, log_probs, old = _case_tensors()
    mask = torch.ones(2, 4, dtype=torch.bool)
    mask[1, 3] = False
    with torch.no_grad():
        log_probs[1, 3] = 1e4            # ratio would overflow without the clamp
    adv = adv.clone()
    adv[1, 3] = math.nan                  # and NaN * 0 would poison a multiply-by-mask
    loss, metrics = policy_loss(log_probs, old, adv, mask)
    assert loss.item() == pytest.approx(sum(EXPECTED_TOKEN_LOSS[:7]) / 7)
    loss.backward()
    assert torch.isfinite(log_probs.grad).all() and log_probs.grad[1, 3] == 0
    assert metrics["clip_frac"].item() == pytest.approx(2 / 7)


def test_per_sequence_advantages_broadcast():
    log_probs = torch.tensor([[math.log(1.5), 0.0], [0.0, math.log(0.5)]], dtype=torch.float64)
    loss, _ = policy_loss(log_probs, torch.zeros_like(log_probs), torch.tensor([1.0, -1.0], dtype=torch.float64),
                          torch.ones(2, 2, dtype=torch.bool))
    assert loss.item() == pytest.approx((-1.3 - 1.0 + 1.0 + 0.8) / 4)


def test_policy_loss_bad_args():
    adv, log_probs, old = _case_tensors()
    mask = torch.ones(2, 4, dtype=torch.bool)
    with pytest.raises(ValueError, match="dual_clip"):
        policy_loss(log_probs, old, adv, mask, dual_clip=1.0)
    with pytest.raises(ValueError, match="old_log_probs"):
        policy_loss(log_probs, old[:, :3], adv, mask)
    with pytest.raises(ValueError, match="no tokens"):
        policy_loss(log_probs, old, adv, torch.zeros(2, 4, dtype=torch.bool))


# loss [[1, 2, 3, pad], [4, 5, pad, pad]]: token-mean 15/5, seq-sum mean (6 + 9)/2, seq-mean mean (2 + 4.5)/2
LOSS_MAT = torch.tensor([[1.0, 2.0, 3.0, math.nan], [4.0, 5.0, math.nan, math.inf]])
MASK = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])


@pytest.mark.parametrize("mode,expected", [("token-mean", 3.0), ("seq-mean-token-sum", 7.5),
                                           ("seq-mean-token-mean", 3.25)])
def test_aggregate_modes_by_hand(mode, expected):
    assert aggregate(LOSS_MAT, MASK, mode).item() == pytest.approx(expected)


@pytest.mark.parametrize("mode,numerator,count", [("token-mean", 15.0, 5), ("seq-mean-token-sum", 15.0, 2),
                                                  ("seq-mean-token-mean", 6.5, 2)])
def test_aggregate_with_denominator(mode, numerator, count):
    assert aggregate(LOSS_MAT, MASK, mode, denominator=10).item() == pytest.approx(numerator / 10)
    assert loss_denominator(MASK, mode) == count


def test_aggregate_ignores_empty_rows_in_seq_modes_and_checks_inputs():
    mask = torch.tensor([[1, 1, 1, 0], [0, 0, 0, 0]])
    assert aggregate(LOSS_MAT, mask, "seq-mean-token-mean").item() == pytest.approx(2.0)
    assert aggregate(LOSS_MAT, torch.zeros(2, 4), denominator=4).item() == 0.0   # empty micro-batch
    with pytest.raises(ValueError, match="aggregation mode"):
        aggregate(LOSS_MAT, MASK, "sum")
    with pytest.raises(ValueError, match="denominator"):
        aggregate(LOSS_MAT, MASK, denominator=0)


def test_masked_nll_by_hand():
    log_probs = torch.tensor([[math.log(0.5), math.log(0.25), 7.0]])
    mask = torch.tensor([[True, True, False]])
    assert masked_nll(log_probs, mask).item() == pytest.approx((math.log(2) + math.log(4)) / 2)
    assert masked_nll(log_probs, mask, denominator=4).item() == pytest.approx((math.log(2) + math.log(4)) / 4)


def _toy_batch(seed=0, batch=8, seq=6, hidden=5, vocab=7):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, seq, hidden, generator=gen, dtype=torch.float64)
    labels = torch.randint(0, vocab, (batch, seq), generator=gen)
    lengths = torch.tensor([6, 0, 3, 5, 2, 6, 4, 1])     # unequal, one empty: naive per-micro-batch means differ
    mask = torch.arange(seq).unsqueeze(0) < lengths.unsqueeze(1)
    rewards_adv = torch.randn(batch, generator=gen, dtype=torch.float64)
    w0 = torch.randn(hidden, vocab, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        # old policy and reference are perturbed copies, so ratios are spread and some clip
        old = log_probs_from_logits(x @ (w0 + 0.3 * torch.randn(hidden, vocab, generator=gen, dtype=torch.float64)), labels)
        ref = log_probs_from_logits(x @ (w0 + 0.3 * torch.randn(hidden, vocab, generator=gen, dtype=torch.float64)), labels)
    return x, labels, mask, token_advantages(rewards_adv, mask), old, ref, w0


def _loss(w, x, labels, mask, adv, old, ref, mode, denominator):
    log_probs = log_probs_from_logits(x @ w, labels, chunk_size=4)
    pg, metrics = policy_loss(log_probs, old, adv, mask, agg=mode, denominator=denominator)
    return pg + 0.1 * kl_loss(log_probs, ref, mask, "low_var_kl", mode, denominator), metrics


@pytest.mark.parametrize("mode", AGG_MODES)
def test_gradient_accumulation_matches_full_batch(mode):
    x, labels, mask, adv, old, ref, w0 = _toy_batch()
    w_full = w0.clone().requires_grad_(True)
    loss, metrics = _loss(w_full, x, labels, mask, adv, old, ref, mode, None)
    loss.backward()
    assert metrics["clip_frac"] > 0          # the clipped branch is exercised

    denom = loss_denominator(mask, mode)
    w_acc = w0.clone().requires_grad_(True)
    w_naive = w0.clone().requires_grad_(True)
    for sl in (slice(i, i + 2) for i in range(0, 8, 2)):
        part = (x[sl], labels[sl], mask[sl], adv[sl], old[sl], ref[sl])
        _loss(w_acc, *part, mode, denom)[0].backward()
        (_loss(w_naive, *part, mode, None)[0] / 4).backward()   # per-micro-batch mean: not equal

    assert torch.allclose(w_acc.grad, w_full.grad, rtol=1e-10, atol=1e-12)
    assert not torch.allclose(w_naive.grad, w_full.grad, rtol=1e-3, atol=1e-6)
