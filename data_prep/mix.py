"""Data mixes: how many rows of which source go into a stage's set, drawn deterministically.

A recipe lists sources per stage (the paper's Table 2), either as counts or as weights of a
total (data_prep/config.py MixConfig):

    mix:
      sft_total: 25000              # > 0: entries are weights of this total
      sft: [{source: figureqa, weight: 1}, {source: geos, weight: 1}, ...]
      rl:  [{source: geometry3k, count: 1000}, ...]   # rl_total 0: entries are counts

A source name matches a row's `data_source` exactly or as a prefix before "/" ("synthetic"
matches "synthetic/count"). Sampling is without replacement, seeded per source, and the result
is shuffled with the seed, so the same inputs and seed give the same set.

Optional difficulty selection keeps RL prompts that the current model solves sometimes but not
always (1..n-1 correct of n samples), as later GRPO iterations favour harder questions.
"""

from __future__ import annotations

import logging
import math
import random
from collections import Counter
from dataclasses import replace
from typing import Any, Sequence

from ovlt_rl.engines.base import SamplingParams

log = logging.getLogger(__name__)

Rows = list[dict[str, Any]]


def matches(data_source: str, source: str) -> bool:
    return data_source == source or data_source.startswith(source + "/")


def plan_counts(entries: Sequence[Any], total: int) -> dict[str, int]:
    """Rows wanted per source: the entries' counts (total 0), or the total split by weight with
    the largest-remainder method (so the counts add up to exactly `total`)."""
    names = [e.source for e in entries]
    if len(set(names)) != len(names):
        dup = sorted(n for n, c in Counter(names).items() if c > 1)
        raise ValueError(f"mix: source listed twice: {dup}")
    if total <= 0:
        bad = [e.source for e in entries if e.count <= 0]
        if bad:
            raise ValueError(f"mix: sources {bad} need a count > 0 when the stage total is 0")
        return {e.source: int(e.count) for e in entries}
    weights = [float(e.weight) for e in entries]
    if any(w <= 0 for w in weights):
        raise ValueError(f"mix: every weight must be > 0 when a total is given, got {dict(zip(names, weights))}")
    shares = [total * w / sum(weights) for w in weights]
    counts = [math.floor(s) for s in shares]
    by_remainder = sorted(range(len(shares)), key=lambda i: (-(shares[i] - counts[i]), i))
    for i in by_remainder[: total - sum(counts)]:
        counts[i] += 1
    return dict(zip(names, counts))


def mix(rows: Rows, entries: Sequence[Any], total: int, seed: int | str) -> tuple[Rows, dict]:
    """Draw each source's rows for one stage. No entries: every row, in order.

    A source with fewer rows than wanted gives all it has; the shortfall is counted and logged
    (the set is smaller than asked, never padded with repeats). Rows of sources not in the mix
    are counted as "unused".
    """
    if not entries:
        return list(rows), {"rows_in": len(rows), "rows_out": len(rows), "sources": "all"}
    wanted = plan_counts(entries, total)
    pools: dict[str, Rows] = {name: [] for name in wanted}
    unused = 0
    for r in rows:
        hits = [name for name in wanted if matches(r["data_source"], name)]
        if len(hits) > 1:
            raise ValueError(f"mix: data_source {r['data_source']!r} matches several entries {hits}; make them disjoint")
        if hits:
            pools[hits[0]].append(r)
        else:
            unused += 1
    out: Rows = []
    per_source = {}
    for name, want in wanted.items():
        pool = pools[name]
        take = min(want, len(pool))
        if take < want:
            log.warning("mix: source %r has %d rows, %d wanted; taking all of them", name, len(pool), want)
        picked = sorted(random.Random(f"{seed}/{name}").sample(range(len(pool)), take))
        out += [pool[i] for i in picked]
        per_source[name] = {"available": len(pool), "wanted": want, "taken": take}
    random.Random(f"{seed}/shuffle").shuffle(out)
    shortfall = sum(v["wanted"] - v["taken"] for v in per_source.values())
    return out, {"rows_in": len(rows), "rows_out": len(out), "unused": unused, "shortfall": shortfall,
                 "per_source": per_source}


def exclude(rows: Rows, taken_keys: set, key_fn) -> tuple[Rows, dict]:
    """Rows whose key (e.g. image + question) is not in `taken_keys`: keeps RL prompts apart from SFT."""
    kept = [r for r in rows if key_fn(r) not in taken_keys]
    return kept, {"rows_in": len(rows), "rows_out": len(kept), "in_sft": len(rows) - len(kept)}


# --------------------------------------------------------------------------- difficulty


def correct_counts(rows: Rows, prompts: list, engine, reward_fn, n: int, params: SamplingParams,
                   min_reward: float = 1.0) -> list[int]:
    """How many of n samples per row the model gets right (reward >= min_reward)."""
    if not rows:
        return []
    groups = engine.generate(prompts, replace(params, n=n))
    if len(groups) != len(rows) or any(len(g) != n for g in groups):
        raise RuntimeError(f"engine returned {[len(g) for g in groups]} responses for {len(rows)} prompts at n={n}")
    responses = [g.text for group in groups for g in group]
    truths = [r["reward_model"]["ground_truth"] for r in rows for _ in range(n)]
    extras = [{"data_source": r["data_source"], "extra_info": r["extra_info"]} for r in rows for _ in range(n)]
    scores = reward_fn.score_batch(responses, truths, extras).scores
    return [sum(1 for s in scores[i * n : (i + 1) * n] if s is not None and s >= min_reward) for i in range(len(rows))]


def select_by_pass_rate(rows: Rows, counts: list[int], n: int) -> tuple[Rows, dict]:
    """Keep rows solved 1..n-1 times out of n: the ones GRPO can learn from (a group with all
    responses equally right or wrong has zero advantage)."""
    if len(counts) != len(rows):
        raise ValueError(f"difficulty: {len(counts)} counts for {len(rows)} rows")
    kept = [r for r, c in zip(rows, counts) if 1 <= c <= n - 1]
    return kept, {"rows_in": len(rows), "rows_out": len(kept),
                  "all_wrong": sum(c == 0 for c in counts), "all_right": sum(c == n for c in counts)}
