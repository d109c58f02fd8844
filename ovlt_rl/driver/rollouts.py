"""A GRPO step's groups: prompts -> `rollout.n` responses each -> rewards, and dynamic sampling's refill.

`collect_groups` is the orchestration only (what to draw, keep and fill); drawing prompts,
generating and scoring are the caller's functions, so it is tested without Ray or a model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from ovlt_rl.algos import dynamic_sampling_keep, rewards_tensor
from ovlt_rl.config import Config
from ovlt_rl.engines.base import Generation, SamplingParams

if TYPE_CHECKING:
    from reward import BatchScores, RewardFn


@dataclass
class Rollouts:
    """The groups a step learns from, and what drawing and scoring them reported."""

    prompts: list[dict[str, Any]] = field(default_factory=list)
    groups: list[list[Generation]] = field(default_factory=list)
    """groups[i]: the responses to prompts[i]."""
    scores: list[float | None] = field(default_factory=list)
    """One per response, group after group (None: unscorable)."""
    indices: list[int] = field(default_factory=list)
    """The dataset rows drawn, in every round (a resume checks that it draws the same)."""
    metrics: dict[str, Any] = field(default_factory=dict)
    """The reward's metrics over every response generated for the step (all rounds, kept or not;
    unscorable ones by reason as `reward/none/<reason>`) and, under dynamic sampling,
    `dynamic_sampling/kept_groups` (summed over rounds)."""

    def add(self, entries: list[tuple[dict[str, Any], list[Generation], list[float | None]]], up_to: int) -> None:
        """Append (prompt, group, its scores) entries in order while there are fewer than `up_to` groups."""
        for prompt, group, scores in entries:
            if len(self.prompts) >= up_to:
                return
            self.prompts.append(prompt)
            self.groups.append(group)
            self.scores += scores


def collect_groups(
    draw: Callable[[], tuple[list[dict[str, Any]], list[int]]],
    generate: Callable[[list[dict[str, Any]], int], list[list[Generation]]],
    score: Callable[[list[dict[str, Any]], list[list[Generation]]], BatchScores],
    *,
    want: int,
    n: int,
    dynamic_sampling: bool,
    max_rounds: int,
) -> Rollouts:
    """`want` groups of `n` scored responses.

    draw() -> (prompts, their dataset rows); generate(prompts, round) -> a group per prompt;
    score(prompts, groups) -> reward.BatchScores of the responses, group after group.

    Without dynamic sampling: one round, all its groups. With it (DAPO): up to `max_rounds`
    rounds, each drawing a new batch, keep the groups whose rewards differ (the others have no
    advantage to learn from) until `want` are kept. If the rounds run out first, the last round's
    dropped groups fill the rest in order (each group is trained once), so every step has the
    configured size and the policy ranks stay balanced.
    """
    from reward.scores import BatchScores

    out = Rollouts()
    rounds: list[BatchScores] = []

    def done() -> Rollouts:
        every = BatchScores.concat(rounds)
        out.metrics.update(every.metrics())
        return out

    for round_ in range(max_rounds if dynamic_sampling else 1):
        prompts, rows = draw()
        out.indices += rows
        groups = generate(prompts, round_)
        scored = score(prompts, groups)
        rounds.append(scored)
        batch = [(p, g, scored.scores[i * n : (i + 1) * n]) for i, (p, g) in enumerate(zip(prompts, groups))]
        if not dynamic_sampling:
            out.add(batch, up_to=len(batch))
            return done()
        keep = groups_with_signal(scored.scores, n)
        out.metrics["dynamic_sampling/kept_groups"] = out.metrics.get("dynamic_sampling/kept_groups", 0) + sum(keep)
        out.add([entry for entry, kept in zip(batch, keep) if kept], up_to=want)
        if len(out.prompts) >= want:
            return done()
    # The last round's dropped groups (advantage 0) fill the rest; its kept ones are in already.
    out.add([entry for entry, kept in zip(batch, keep) if not kept], up_to=want)
    if len(out.prompts) < want:
        raise RuntimeError(f"dynamic sampling: {len(out.prompts)} groups for a step of {want} (a round drew fewer prompts than a step needs)")
    return done()


def groups_with_signal(scores: list[float | None], n: int) -> list[bool]:
    """Per group of `n` consecutive scores: whether its rewards differ (dynamic sampling keeps it)."""
    n_groups = len(scores) // n
    keep = dynamic_sampling_keep(rewards_tensor(scores), torch.arange(n_groups).repeat_interleave(n))
    return keep.view(n_groups, n)[:, 0].tolist()


def score_groups(reward_fn: RewardFn, prompts: list[dict[str, Any]], groups: list[list[Generation]]) -> BatchScores:
    """The reward of every response against its prompt's ground truth, group after group. The function also sees the row's data_source and extra_info and the
    response's token count."""
    texts = [g.text for grp in groups for g in grp]
    gts = [p["ground_truth"] for p, grp in zip(prompts, groups) for _ in grp]
    extras = [
        {"data_source": p["data_source"], "extra_info": p["extra_info"], "response_length": len(g.token_ids)}
        for p, grp in zip(prompts, groups) for g in grp
    ]
    return reward_fn.score_batch(texts, gts, extras)


def sampling_params(cfg: Config, *, validation: bool, seed: int | None) -> SamplingParams:
    r = cfg.rollout
    return SamplingParams(
        n=r.val_n if validation else r.n,
        temperature=r.val_temperature if validation else r.temperature,
        top_p=r.val_top_p if validation else r.top_p,
        top_k=r.top_k,
        max_new_tokens=cfg.data.max_response_length,
        stop=list(r.stop),
        seed=seed,
        # One-step off-policy updates take their ratio against the engine's sampled log-probs;
        # on-policy ones recompute them on the policy workers.
        logprobs=cfg.algorithm.overlap and not validation,
    )
