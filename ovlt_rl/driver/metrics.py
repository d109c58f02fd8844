"""Every step metric the loops log that is reduced from parts: over the policy ranks and
optimizer steps of an update, and over a step's responses.

The policy workers return sums (PolicyWorker.update_policy, sft_step), never means, so that
ranks and micro-batches of different sizes reduce exactly: token-weighted means divide by the
tokens of all of them.
"""

from __future__ import annotations

from typing import Any

import torch

from ovlt_rl.driver.rollouts import Rollouts


def grpo_update_metrics(results: list[list[dict[str, float]]], world: int) -> dict[str, float]:
    """`actor/*` of a GRPO step from each optimizer step's per-rank sums (results[update][rank])."""
    sums: dict[str, float] = {}
    skipped = 0
    for ranks in results:
        for res in ranks:
            for k, v in res.items():
                sums[k] = sums.get(k, 0.0) + v
        skipped += int(ranks[0]["actor/skipped"])  # every rank skips together (the grad norm is global)
    n_updates = len(results)
    tokens = sums.pop("actor/tokens")
    metrics = {
        "actor/pg_loss": sums["actor/pg_loss"] / n_updates,
        "actor/entropy": sums["actor/entropy_sum"] / max(1.0, tokens),
        "actor/grad_norm": sums["actor/grad_norm"] / (n_updates * world),
        "actor/lr": sums["actor/lr"] / (n_updates * world),
        "actor/skipped_updates": float(skipped),
    }
    if "actor/kl_loss" in sums:
        metrics["actor/kl_loss"] = sums["actor/kl_loss"] / n_updates
    for k in list(sums):
        if k.endswith("_wsum"):  # token-weighted sums of the loss's own metrics (ratio, clip fractions, ...)
            metrics[k[: -len("_wsum")]] = sums[k] / max(1.0, tokens)
    return metrics


def sft_update_metrics(results: list[dict[str, float]], denominator: float) -> dict[str, float]:
    """`sft/*` of an SFT step from its per-rank sums; `denominator`: the batch's loss tokens."""
    return {
        "sft/loss": sum(res["sft/nll_sum"] for res in results) / denominator,
        "sft/grad_norm": results[0]["sft/grad_norm"],
        "sft/lr": results[0]["sft/lr"],
        "sft/skipped_updates": float(results[0]["sft/skipped"]),
    }


def rollout_metrics(batch: Rollouts, rewards: torch.Tensor, n: int, *, decode_errors: int, step_s: float) -> dict[str, Any]:
    """A GRPO step's reward, data, response and throughput metrics (`n`: responses per prompt)."""
    lengths = [len(g.token_ids) for grp in batch.groups for g in grp]
    tokens = sum(lengths) + sum(len(p["input_ids"]) * n for p in batch.prompts)
    return {
        "reward/mean": float(torch.nanmean(rewards)),
        "data/indices": batch.indices,  # dataset rows of this step (checks that a resume keeps the order)
        "data/decode_errors": float(decode_errors),  # rows skipped so far (run total)
        "response_length/mean": sum(lengths) / len(lengths),
        "response_length/clip_ratio": sum(g.finish_reason == "length" for grp in batch.groups for g in grp) / len(lengths),
        "throughput/tokens_per_s": tokens / step_s,
        "timing/step_s": step_s,
    }
