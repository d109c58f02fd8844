"""Self-improvement sampling: k really means k (n=k in one call), only correct responses survive,
one per question. A small fake engine at the edge for the selection logic; the real HFEngine on
the tiny model for the engine contract."""

from __future__ import annotations

import pytest
from prep_helpers import row

from data_prep.self_improve import sample_responses, self_improve
from ovlt_rl.engines.base import Generation, SamplingParams


class ScriptedEngine:
    """Implements RolloutEngine.generate only: response j to a prompt is right when j is even,
    and has j+1 reasoning words; prompts whose ground truth is "unsolvable" are always wrong."""

    def __init__(self, short_by: int = 0):
        self.calls: list[tuple[int, int]] = []
        self.short_by = short_by

    def generate(self, prompts, params: SamplingParams):
        self.calls.append((len(prompts), params.n))
        groups = []
        for p in prompts:
            group = []
            for j in range(params.n - self.short_by):
                right = j % 2 == 0 and p["ground_truth"] != "unsolvable"
                answer = p["ground_truth"] if right else "999"
                text = f"<think>{' '.join(['step'] * (j + 1))}</think>\nSo.\n<answer>{answer}</answer>"
                group.append(Generation(token_ids=list(range(j + 1)), text=text, finish_reason="stop"))
            groups.append(group)
        return groups


def _rows():
    return [row(answer="3", color=(1, 1, 1)), row(answer="7", color=(2, 2, 2)), row(answer="unsolvable", color=(3, 3, 3))]


def _prompts(rows):
    return [{"ground_truth": r["reward_model"]["ground_truth"]} for r in rows]


def test_k_means_k_in_one_call():
    rows = _rows()
    engine = ScriptedEngine()
    cands, stats = sample_responses(rows, _prompts(rows), engine, 5, SamplingParams(n=1, temperature=1.0))
    assert engine.calls == [(3, 5)]  # one call, n=5, whatever n the params came with
    assert len(cands) == 15 and stats["responses"] == 15
    assert [c["extra_info"]["sample"] for c in cands[:5]] == [0, 1, 2, 3, 4]


def test_engine_returning_fewer_than_k_is_an_error():
    rows = _rows()
    with pytest.raises(RuntimeError, match="asked for n=4"):
        sample_responses(rows, _prompts(rows), ScriptedEngine(short_by=1), 4, SamplingParams())


def test_keeps_only_correct_and_one_per_question(reward_fn):
    rows = _rows()
    kept, steps = self_improve(rows, _prompts(rows), ScriptedEngine(), reward_fn, k=4, params=SamplingParams(),
                               pick="shortest")
    assert [r["reward_model"]["ground_truth"] for r in kept] == ["3", "7"]  # the unsolvable one is gone
    for r in kept:
        assert r["response"].endswith(f"<answer>{r['reward_model']['ground_truth']}</answer>")
        assert r["extra_info"]["sample"] == 0  # shortest correct: j=0
    by = {s["step"]: s for s in steps}
    assert by["sample"]["responses"] == 12 and by["correctness"]["rows_out"] == 4
    longest, _ = self_improve(rows, _prompts(rows), ScriptedEngine(), reward_fn, k=4, params=SamplingParams(),
                              pick="longest")
    assert [r["extra_info"]["sample"] for r in longest] == [2, 2]  # longest correct: j=2


@pytest.fixture(scope="module")
def tiny_engine():
    import torch

    from ovlt_rl.engines.hf import HFEngine
    from ovlt_rl.models.loading import load_processor, resolve_model_path

    torch.set_num_threads(1)
    path = resolve_model_path("tiny")
    return HFEngine(path, device="cpu", dtype=torch.float32), load_processor(path, min_pixels=3136, max_pixels=12544)


def test_real_hf_engine_draws_k_per_prompt(tiny_engine, reward_fn):
    from types import SimpleNamespace

    from data_prep.engine_io import PromptMaker
    from data_prep.filters import correctness
    from data_prep.synthetic import generate

    engine, processor = tiny_engine
    rows = generate(3, seed=0, split="train")
    data_cfg = SimpleNamespace(min_pixels=3136, max_pixels=12544, max_prompt_length=256)
    items, index = PromptMaker(processor, data_cfg, prompt_suffix=None).items(rows)
    assert index == [0, 1, 2]
    params = SamplingParams(temperature=1.0, max_new_tokens=8, seed=1, logprobs=False)
    cands, stats = sample_responses(rows, items, engine, 4, params)
    assert len(cands) == 12 and stats["responses"] == 12
    for i in range(3):
        texts = [c["response"] for c in cands[4 * i : 4 * i + 4]]
        assert len(set(texts)) > 1  # four samples, not one sample copied
    kept, cstats = correctness(cands, reward_fn)
    scores = reward_fn.score_batch([c["response"] for c in kept], [c["reward_model"]["ground_truth"] for c in kept]).scores
    assert all(s == 1.0 for s in scores) and cstats["rows_in"] == 12


def test_engine_captioner_and_reasoner_run_on_the_real_engine(tiny_engine):
    """The engine-backed distillation parts on the tiny (untrained) model: shapes and counts only."""
    from types import SimpleNamespace

    from data_prep.distill import EngineCaptioner, EngineReasoner, StoredCaptioner, distill
    from data_prep.engine_io import PromptMaker
    from data_prep.synthetic import generate

    engine, processor = tiny_engine
    maker = PromptMaker(processor, SimpleNamespace(min_pixels=3136, max_pixels=12544, max_prompt_length=256), None)
    rows = generate(3, seed=2, split="train")
    captions = EngineCaptioner(engine, maker.items, "Describe the image.", max_new_tokens=8).caption(rows)
    assert len(captions) == 3 and all(c is None or isinstance(c, str) for c in captions)
    reasoner = EngineReasoner(engine, maker.items, "Here is a detailed description of an image: {caption}\nQuestion: {question}\n",
                              temperature=1.0, top_p=1.0, max_new_tokens=8)
    groups = reasoner.reason(rows, ["three shapes"] * 3, k=2, seed=0)
    assert len(groups) == 3 and all(len(g) <= 2 for g in groups)
    out, stats = distill([{**r, "extra_info": {**r["extra_info"], "caption": "three shapes"}} for r in rows],
                         StoredCaptioner(), reasoner, k=2, seed=0)
    assert stats["rows_in"] == 3 and stats["responses"] <= 6
    assert stats["rows_out"] == len(out) == stats["responses"] - stats.get("no_answer", 0)
