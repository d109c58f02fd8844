"""Data mixes: counts and weights per source, determinism, prefixes, shortfalls, pass-rate selection."""

from __future__ import annotations

import pytest
from prep_helpers import row

from data_prep.config import MixEntry
from data_prep.mix import exclude, mix, plan_counts, select_by_pass_rate
from data_prep.rows import item_key


def pool():
    rows = []
    for src, n in (("figureqa", 30), ("geos", 10), ("synthetic/count", 20), ("synthetic/chart", 20)):
        rows += [row(question=f"{src} question {i}?", source=src, i=i) for i in range(n)]
    return rows


def test_plan_counts_weights_add_up_exactly():
    entries = [MixEntry("a", weight=1), MixEntry("b", weight=1), MixEntry("c", weight=1)]
    counts = plan_counts(entries, 100)
    assert sum(counts.values()) == 100 and sorted(counts.values()) == [33, 33, 34]
    assert plan_counts([MixEntry("a", count=7), MixEntry("b", count=2)], 0) == {"a": 7, "b": 2}
    with pytest.raises(ValueError, match="twice"):
        plan_counts([MixEntry("a", count=1), MixEntry("a", count=2)], 0)
    with pytest.raises(ValueError, match="count > 0"):
        plan_counts([MixEntry("a", weight=1.0)], 0)


def test_mix_counts_per_source_and_determinism():
    rows = pool()
    entries = [MixEntry("figureqa", count=12), MixEntry("synthetic", count=25)]
    out, stats = mix(rows, entries, 0, seed=5)
    sources = [r["data_source"] for r in out]
    assert sources.count("figureqa") == 12
    assert sum(s.startswith("synthetic/") for s in sources) == 25  # a prefix covers the families
    assert "geos" not in sources and stats["unused"] == 10
    again, _ = mix(rows, entries, 0, seed=5)
    assert [r["extra_info"]["i"] for r in again] == [r["extra_info"]["i"] for r in out]
    other, _ = mix(rows, entries, 0, seed=6)
    assert [(r["data_source"], r["extra_info"]["i"]) for r in other] != [(r["data_source"], r["extra_info"]["i"]) for r in out]
    assert len({id(r) for r in out}) == len(out)  # no row drawn twice


def test_mix_weights_and_shortfall():
    rows = pool()
    out, stats = mix(rows, [MixEntry("figureqa", weight=3), MixEntry("geos", weight=1)], 40, seed=0)
    per = stats["per_source"]
    assert per["figureqa"] == {"available": 30, "wanted": 30, "taken": 30}
    assert per["geos"] == {"available": 10, "wanted": 10, "taken": 10}
    out, stats = mix(rows, [MixEntry("geos", count=15)], 0, seed=0)
    assert len(out) == 10 and stats["shortfall"] == 5  # never padded with repeats


def test_mix_empty_means_all_and_overlap_is_an_error():
    rows = pool()
    out, stats = mix(rows, [], 0, seed=0)
    assert out == rows and stats["sources"] == "all"
    with pytest.raises(ValueError, match="several entries"):
        mix(rows, [MixEntry("synthetic", count=1), MixEntry("synthetic/count", count=1)], 0, seed=0)


def test_exclude_by_item_key():
    rows = pool()
    taken = {item_key(r) for r in rows[:5]}
    kept, stats = exclude(rows, taken, item_key)
    assert len(kept) == len(rows) - 5 and stats["in_sft"] == 5


def test_select_by_pass_rate_keeps_1_to_n_minus_1():
    rows = [row(i=i) for i in range(5)]
    kept, stats = select_by_pass_rate(rows, [0, 1, 4, 3, 2], n=4)
    assert [r["extra_info"]["i"] for r in kept] == [1, 3, 4]
    assert stats["all_wrong"] == 1 and stats["all_right"] == 1


class _Engine:
    """generate() only: for ground truth "g", the j-th response answers g when j < solved[g]."""

    def __init__(self, solved):
        self.solved, self.calls = solved, []

    def generate(self, prompts, params):
        from ovlt_rl.engines.base import Generation

        self.calls.append(params.n)
        return [[Generation([0], f"<think>t</think>\nso\n<answer>{p['gt'] if j < self.solved[p['gt']] else 'x'}</answer>", "stop")
                 for j in range(params.n)] for p in prompts]


def test_correct_counts_and_difficulty_selection(reward_fn):
    from data_prep.mix import correct_counts
    from ovlt_rl.engines.base import SamplingParams

    rows = [row(answer=a, color=(i, i, i)) for i, a in enumerate(["1", "2", "3"])]
    engine = _Engine({"1": 0, "2": 2, "3": 4})
    counts = correct_counts(rows, [{"gt": r["reward_model"]["ground_truth"]} for r in rows], engine, reward_fn, 4,
                            SamplingParams())
    assert counts == [0, 2, 4] and engine.calls == [4]
    kept, stats = select_by_pass_rate(rows, counts, 4)
    assert [r["reward_model"]["ground_truth"] for r in kept] == ["2"]
