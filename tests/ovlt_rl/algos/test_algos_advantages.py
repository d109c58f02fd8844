"""Group-relative advantages, dynamic sampling, token broadcast: against hand-computed values."""

import math

import pytest
import torch

from ovlt_rl.algos import (
    dynamic_sampling_keep,
    grpo_advantages,
    kept_group_count,
    rewards_tensor,
    token_advantages,
)

NAN = math.nan

# Groups, interleaved on purpose (groups need not be contiguous):
#   a: [1, 0, 1, None]  -> scorable [1, 0, 1]: mean 2/3, unbiased var ((1/3)^2*2 + (2/3)^2)/2 = 1/3
#   b: [0.5, 0.5]       -> zero variance
#   c: [1.0, None]      -> one scorable member
#   d: [None, None]     -> none scorable
#   e: [2.0]            -> size-1 group
#   f: [0.1, 0.1, 0.1]  -> equal rewards whose float mean is not exactly 0.1
REWARDS = [1.0, 0.5, 0.0, 1.0, 2.0, NAN, 0.5, 1.0, NAN, NAN, NAN, 0.1, 0.1, 0.1]
GROUPS = ["a", "b", "a", "c", "e", "d", "b", "a", "a", "c", "d", "f", "f", "f"]


def _expected(norm_by_std: bool, eps: float = 1e-6) -> list[float]:
    mean = 2 / 3
    std = math.sqrt(1 / 3)
    scale = (std + eps) if norm_by_std else 1.0
    hi, lo = (1 - mean) / scale, (0 - mean) / scale
    #        a    b    a   c    e    d    b    a   a    c    d    f    f    f
    return [hi, 0.0, lo, 0.0, 0.0, 0.0, 0.0, hi, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]


def test_grpo_advantages_by_hand():
    adv = grpo_advantages(torch.tensor(REWARDS, dtype=torch.float64), GROUPS)
    assert adv.dtype == torch.float64
    assert torch.allclose(adv, torch.tensor(_expected(True), dtype=torch.float64), atol=1e-12)
    # plain numbers: (1 - 2/3) / sqrt(1/3) = 0.57735, (0 - 2/3) / sqrt(1/3) = -1.1547
    assert adv[0].item() == pytest.approx(0.5773493, abs=1e-6)
    assert adv[2].item() == pytest.approx(-1.1546986, abs=1e-6)


def test_dr_grpo_no_std():
    adv = grpo_advantages(torch.tensor(REWARDS), GROUPS, norm_by_std=False)
    assert torch.allclose(adv, torch.tensor(_expected(False), dtype=torch.float32), atol=1e-7)
    assert adv[0].item() == pytest.approx(1 / 3) and adv[2].item() == pytest.approx(-2 / 3)


def test_no_nan_and_exact_zeros_for_groups_without_signal():
    adv = grpo_advantages(torch.tensor(REWARDS), GROUPS)
    assert torch.isfinite(adv).all()
    no_signal = [i for i, g in enumerate(GROUPS) if g in "bcdef"]
    assert (adv[no_signal] == 0).all()          # exactly 0, not 1e-11
    assert adv[8].item() == 0.0                  # the unscorable member of the signalling group a


def test_integer_tensor_group_ids_same_as_strings():
    ids = torch.tensor([ord(g) for g in GROUPS])
    assert torch.equal(grpo_advantages(torch.tensor(REWARDS), ids), grpo_advantages(torch.tensor(REWARDS), GROUPS))


def test_eps_keeps_tiny_std_finite():
    # group std ~ 7e-9: eps dominates, so the advantage is ~ +-(5e-9 / 1e-6), not +-0.7
    adv = grpo_advantages(torch.tensor([1.0, 1.0 + 1e-8], dtype=torch.float64), [0, 0])
    std = math.sqrt(((0.5e-8) ** 2) * 2 / 1)
    expect = 0.5e-8 / (std + 1e-6)
    assert adv[1].item() == pytest.approx(expect, rel=1e-6) and adv[0].item() == pytest.approx(-expect, rel=1e-6)


def test_dynamic_sampling_keep_and_count():
    keep = dynamic_sampling_keep(torch.tensor(REWARDS), GROUPS)
    assert keep.tolist() == [g == "a" for g in GROUPS]
    assert kept_group_count(keep, GROUPS) == 1
    rewards = torch.tensor([0.0, 1.0, 1.0, 1.0, 0.0, 0.5])
    groups = [0, 0, 1, 1, 2, 2]
    keep = dynamic_sampling_keep(rewards, groups)
    assert keep.tolist() == [True, True, False, False, True, True]
    assert kept_group_count(keep, groups) == 2


def test_kept_group_count_rejects_mask_split_within_group():
    with pytest.raises(ValueError, match="differs within a group"):
        kept_group_count(torch.tensor([True, False]), [0, 0])


def test_rewards_tensor_maps_none_to_nan_and_rejects_inf():
    t = rewards_tensor([1.0, None, 0])
    assert t.dtype == torch.float32 and t[0] == 1.0 and math.isnan(t[1]) and t[2] == 0.0
    with pytest.raises(ValueError, match=r"rewards\[1\]"):
        rewards_tensor([0.0, float("inf")])


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="infinite"):
        grpo_advantages(torch.tensor([1.0, math.inf]), [0, 0])
    with pytest.raises(ValueError, match="group_ids"):
        grpo_advantages(torch.tensor([1.0, 0.0]), [0])
    with pytest.raises(ValueError, match="floating"):
        grpo_advantages(torch.tensor([1, 0]), [0, 0])


def test_token_advantages():
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    out = token_advantages(torch.tensor([2.0, -1.0]), mask)
    assert out.tolist() == [[2.0, 2.0, 0.0], [-1.0, 0.0, 0.0]]
    with pytest.raises(ValueError, match="0 and 1"):
        token_advantages(torch.tensor([1.0, 1.0]), torch.tensor([[0.5, 1.0], [1.0, 1.0]]))
