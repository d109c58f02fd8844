"""Checks during training: accuracy on held-out prompts, the SFT validation loss, and whether
the rollout engine and the policy agree after a weight sync."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from ovlt_rl.driver.rollouts import sampling_params, score_groups
from ovlt_rl.driver.timer import PhaseTimer
from ovlt_rl.engines.base import Generation

if TYPE_CHECKING:
    from ovlt_rl.driver.run import Run
    from ovlt_rl.workers.group import PolicyGroup, RolloutGroup


def accuracy_by_source(sources: list[str], correct: list[float]) -> dict[str, float]:
    """`val/accuracy/<data_source>` for each source: one overall number hides which family moved
    (a tiny model's greedy answers flip for a whole question template at once)."""
    totals: dict[str, list[float]] = {}
    for source, c in zip(sources, correct, strict=True):
        totals.setdefault(source, []).append(c)
    return {f"val/accuracy/{source}": sum(cs) / len(cs) for source, cs in sorted(totals.items())}


def validate(run: Run, dataset, step: int) -> dict[str, float]:
    """Generate on held-out prompts, grade with the evaluation grader, log a few generations."""
    from reward.grading import extract_answer, grade

    cfg = run.cfg
    n = len(dataset) if not cfg.data.max_val_samples else min(len(dataset), cfg.data.max_val_samples)
    prompts = dataset.present(range(n))  # rows whose images fail to decode are left out (counted)
    n = len(prompts)
    timer = PhaseTimer()
    with timer.phase("val"):
        groups: list[list[Generation]] = []
        for s in range(0, n, cfg.data.val_batch_size):
            groups += run.rollout.generate(prompts[s : s + cfg.data.val_batch_size], sampling_params(cfg, validation=True, seed=cfg.trainer.seed))
        texts = [g.text for grp in groups for g in grp]
        per_sample = [p for p, grp in zip(prompts, groups) for _ in grp]  # each prompt once per generation (val_n)
        gts = [p["ground_truth"] for p in per_sample]
        correct = [grade(extract_answer(t), gt) for t, gt in zip(texts, gts)]
        scores = score_groups(run.reward_fn, prompts, groups)
    ok = [s for s in scores.scores if s is not None]
    metrics = {
        "val/accuracy": sum(correct) / max(1, len(correct)),
        **accuracy_by_source([p["data_source"] for p in per_sample], correct),
        "val/reward": sum(ok) / max(1, len(ok)),
        "val/response_length": sum(len(g.token_ids) for grp in groups for g in grp) / max(1, len(texts)),
        "val/samples": float(len(texts)),
        **timer.metrics(),
    }
    k = cfg.trainer.num_val_generations_logged
    if k:
        path = run.out / "generations.jsonl"
        with open(path, "a") as f:
            for p, t, gt, c in list(zip(prompts, texts, gts, correct))[:k]:
                f.write(json.dumps({"step": step, "prompt": p.get("prompt_text", ""), "response": t, "ground_truth": gt, "correct": c}) + "\n")
    return metrics


def val_loss(policy: PolicyGroup, samples: list[dict[str, Any]]) -> float:
    """Token-mean NLL of held-out SFT samples."""
    per_sample = policy.eval_nll_per_sample(samples)
    return sum(nll for nll, _ in per_sample) / max(1.0, sum(count for _, count in per_sample))


def logprob_agreement(policy: PolicyGroup, rollout: RolloutGroup, prompts: list[dict[str, Any]],
                      responses: list[list[int]], micro_batch_size: int) -> float:
    """Mean |rollout log-prob - policy log-prob| over the same response tokens after a sync."""
    from ovlt_rl.models.sequences import make_sample

    rollout_lps = rollout.compute_logprobs(prompts, responses)
    samples = [make_sample(p, rsp) for p, rsp in zip(prompts, responses)]
    # Temperature 1 on both sides: the engines' teacher-forced log-probs are the model's own distribution.
    policy_lps = policy.compute_logprobs(samples, which="policy", micro_batch_size=micro_batch_size, temperature=1.0)
    diffs = []
    for p, rl, pl in zip(prompts, rollout_lps, policy_lps):
        pl = pl[len(p["input_ids"]) :]
        diffs += [abs(x - float(y)) for x, y in zip(rl, pl)]
    return sum(diffs) / max(1, len(diffs))
