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


def behaviour_logprobs(batch: Rollouts) -> list[torch.Tensor]:
    """Per sample (advantage_samples' order), the log-probs the rollout engine sampled each response
    token with, aligned with the sample's input_ids (0 on the prompt), as the update's old log-probs."""
    out = []
    for p, grp in zip(batch.prompts, batch.groups):
        for g in grp:
            if g.logprobs is None or len(g.logprobs) != len(g.token_ids):
                raise RuntimeError("algorithm.overlap needs the rollout engine's sampled log-probs, and a response came without them")
            out.append(torch.cat([torch.zeros(len(p["input_ids"])), torch.tensor(g.logprobs, dtype=torch.float32)]))
    return out


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
