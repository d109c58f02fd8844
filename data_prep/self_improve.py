"""Self-improvement sampling: the GRPO model of iteration i writes the SFT data of iteration i+1.

For each seed question the model draws k responses in ONE generate call with n=k (the original
script accepted --k but drew a single sample); correct ones are kept (the reward against the
ground truth), the SFT filters apply, and one response per question is picked (the shortest
correct by default; "random" or "longest" by config).

    candidates, stats = sample_responses(rows, prompts, engine, k, params)
    sft_rows, steps = select_sft(candidates, reward_fn, ...)   # data_prep/filters chain

`self_improve()` composes the two for callers that do not need sharding (tests, notebooks);
the pipeline calls the parts itself so that generation is sharded and resumable.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from typing import Any

from ovlt_rl.engines.base import SamplingParams

Rows = list[dict[str, Any]]


def sample_responses(rows: Rows, prompts: list, engine, k: int, params: SamplingParams) -> tuple[Rows, dict]:
    """k responses per row from the engine (n=k in one call); one candidate row per response.

    `prompts[i]` is the engine's prompt item for `rows[i]`. Raises if the engine returns a
    different number of groups or of responses per group: k means k.
    """
    if k < 1:
        raise ValueError(f"self-improvement: k must be >= 1, got {k}")
    if len(prompts) != len(rows):
        raise ValueError(f"self-improvement: {len(prompts)} prompts for {len(rows)} rows")
    if not rows:
        return [], {"rows_in": 0, "responses": 0, "truncated": 0, "rows_out": 0}
    groups = engine.generate(prompts, replace(params, n=k))
    if len(groups) != len(rows):
        raise RuntimeError(f"engine returned {len(groups)} groups for {len(rows)} prompts")
    out: Rows = []
    stats = Counter(rows_in=len(rows))
    for i, (row, group) in enumerate(zip(rows, groups)):
        if len(group) != k:
            raise RuntimeError(f"engine returned {len(group)} responses for prompt {i}, asked for n={k}")
        for j, gen in enumerate(group):
            stats["responses"] += 1
            stats["truncated"] += int(gen.finish_reason != "stop")
            out.append({**row, "response": gen.text, "extra_info": {**row["extra_info"], "sample": j}})
    stats["rows_out"] = len(out)
    return out, dict(stats)


def self_improve(rows: Rows, prompts: list, engine, reward_fn, *, k: int, params: SamplingParams,
                 min_reward: float = 1.0, pick: str = "shortest", seed: int = 0, max_words: int = 0,
                 reflection_mode: str = "off", reflection_phrases=(), eval_index=None,
                 contamination_keys=("image", "question")) -> tuple[Rows, list[dict]]:
    """Sample k per row, keep correct responses, apply the filters, pick one per question.

    Returns (SFT rows, one stats dict per step, each with its "step" name).
    """
    from data_prep.filters import select_sft

    candidates, stats = sample_responses(rows, prompts, engine, k, params)
    kept, steps = select_sft(
        candidates, reward_fn, min_reward=min_reward, max_words=max_words, reflection_mode=reflection_mode,
        reflection_phrases=reflection_phrases, eval_index=eval_index, contamination_keys=contamination_keys,
        pick=pick, seed=seed,
    )
    return kept, [{"step": "sample", **stats}, *steps]
