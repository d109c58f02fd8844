"""The step metrics reduced on the driver: over policy ranks and optimizer steps (from the
workers' sums), and over a step's responses."""

import pytest
import torch

from ovlt_rl.driver.metrics import grpo_update_metrics, rollout_metrics, sft_update_metrics
from ovlt_rl.driver.rollouts import Rollouts
from ovlt_rl.engines.base import Generation


def _rank(pg, tokens, entropy_sum, ratio, grad_norm, skipped=0.0, kl=None):
    res = {"actor/pg_loss": pg, "actor/entropy_sum": entropy_sum, "actor/tokens": tokens,
           "actor/ratio_mean_wsum": ratio * tokens, "actor/grad_norm": grad_norm, "actor/lr": 1e-3,
           "actor/skipped": skipped, "actor/update_s": 0.5}
    if kl is not None:
        res["actor/kl_loss"] = kl
    return res


def test_grpo_update_metrics_average_updates_and_weight_tokens():
    # Two optimizer steps over two ranks; each rank's pg_loss is already divided by the whole
    # mini-batch's denominator, so a step's loss is the sum over its ranks.
    results = [
        [_rank(0.1, 10, 20.0, 1.0, 2.0, kl=0.01), _rank(0.2, 30, 30.0, 0.5, 2.0, kl=0.03)],
        [_rank(-0.1, 20, 10.0, 1.0, 4.0, skipped=1.0, kl=0.02), _rank(0.0, 40, 40.0, 2.0, 4.0, skipped=1.0, kl=0.0)],
    ]
    m = grpo_update_metrics(results, world=2)
    assert m["actor/pg_loss"] == pytest.approx((0.1 + 0.2 - 0.1 + 0.0) / 2)
    assert m["actor/kl_loss"] == pytest.approx((0.01 + 0.03 + 0.02) / 2)
    assert m["actor/entropy"] == pytest.approx(100.0 / 100)  # per token over every rank and step
    assert m["actor/ratio_mean"] == pytest.approx((10 + 15 + 20 + 80) / 100)
    assert m["actor/grad_norm"] == pytest.approx(3.0) and m["actor/lr"] == pytest.approx(1e-3)
    assert m["actor/skipped_updates"] == 1.0  # one optimizer step skipped (on every rank)
    assert list(m)[:5] == ["actor/pg_loss", "actor/entropy", "actor/grad_norm", "actor/lr", "actor/skipped_updates"]
    assert "actor/tokens" not in m and "actor/update_s" not in m


def test_grpo_update_metrics_without_kl_and_without_tokens():
    m = grpo_update_metrics([[_rank(0.0, 0, 0.0, 1.0, 1.0)]], world=1)
    assert "actor/kl_loss" not in m
    assert m["actor/entropy"] == 0.0 and m["actor/ratio_mean"] == 0.0  # no division by zero


def test_sft_update_metrics():
    results = [{"sft/nll_sum": 6.0, "sft/tokens": 3.0, "sft/grad_norm": 2.5, "sft/lr": 1e-4, "sft/skipped": 0.0},
               {"sft/nll_sum": 2.0, "sft/tokens": 1.0, "sft/grad_norm": 2.5, "sft/lr": 1e-4, "sft/skipped": 0.0}]
    assert sft_update_metrics(results, 4.0) == {"sft/loss": 2.0, "sft/grad_norm": 2.5, "sft/lr": 1e-4, "sft/skipped_updates": 0.0}


def test_rollout_metrics():
    gen = lambda k, reason: Generation(token_ids=list(range(k)), text="", finish_reason=reason)  # noqa: E731
    batch = Rollouts(prompts=[{"input_ids": [0] * 5}, {"input_ids": [0] * 3}],
                     groups=[[gen(2, "stop"), gen(4, "length")], [gen(6, "length"), gen(4, "stop")]],
                     scores=[1.0, None, 0.0, 1.0], indices=[7, 3])
    m = rollout_metrics(batch, torch.tensor([1.0, float("nan"), 0.0, 1.0]), 2, decode_errors=1, step_s=2.0)
    assert m == {
        "reward/mean": pytest.approx(2 / 3),  # over the scorable responses
        "data/indices": [7, 3],
        "data/decode_errors": 1.0,
        "response_length/mean": 4.0,
        "response_length/clip_ratio": 0.5,
        "throughput/tokens_per_s": (16 + (5 + 3) * 2) / 2.0,  # responses and each response's prompt
        "timing/step_s": 2.0,
    }
