"""Training samples on the driver: a GRPO step's responses with their advantages, mini-batches,
and the loss normaliser of a whole batch."""

from __future__ import annotations

from typing import Any

import torch

from ovlt_rl.algos import grpo_advantages, loss_denominator, rewards_tensor
from ovlt_rl.driver.rollouts import Rollouts
from ovlt_rl.models.sequences import make_sample, predicted_tokens


def advantage_samples(batch: Rollouts, n: int, *, norm_by_std: bool) -> tuple[list[dict[str, Any]], torch.Tensor]:
    """(one sample per response, its group-relative advantage on every response token; the rewards)."""
    rewards = rewards_tensor(batch.scores)
    group_ids = torch.arange(len(batch.prompts)).repeat_interleave(n)
    adv = grpo_advantages(rewards, group_ids, norm_by_std=norm_by_std)
    samples = []
    for gi, (p, grp) in enumerate(zip(batch.prompts, batch.groups)):
        for j, g in enumerate(grp):
            s = make_sample(p, g.token_ids)
            s["advantages"] = s["loss_mask"] * float(adv[gi * n + j])
            samples.append(s)
    return samples, rewards


def attach(samples: list[dict[str, Any]], key: str, values: list[Any]) -> None:
    """samples[i][key] = values[i]."""
    for s, v in zip(samples, values, strict=True):
        s[key] = v


def minibatches(samples: list[Any], size: int) -> list[list[Any]]:
    """Consecutive mini-batches of `size` samples (whole groups when size is a multiple of the group)."""
    return [samples[i : i + size] for i in range(0, len(samples), size)]


def batch_denominator(samples: list[dict[str, Any]], agg_mode: str) -> float:
    """The loss normaliser of a whole (mini-)batch across ranks (algos.loss_denominator of its
    loss masks; at least 1), which every rank's micro-batches divide by so that their summed
    gradients are the batch's."""
    mask = predicted_tokens(torch.nn.utils.rnn.pad_sequence([s["loss_mask"] for s in samples], batch_first=True))
    return float(max(1, loss_denominator(mask, agg_mode)))
