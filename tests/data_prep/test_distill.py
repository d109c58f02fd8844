"""Iteration-1 distillation with the programmatic captioner and reasoner, and the response format."""

from __future__ import annotations

import re

import pytest
from prep_helpers import row

from data_prep import distill as D
from data_prep.synthetic import generate

FORMAT = re.compile(r"<think>.+?</think>\n.+\n<answer>.+?</answer>", re.DOTALL)


def test_to_reward_format_keeps_formatted_and_converts_r1_style():
    done = "<think>a</think>\nb\n<answer>3</answer>"
    assert D.to_reward_format(done) == done
    r1 = "Okay, the bars are 2 and 5.\nSo 2 + 5 = 7.\n</think>\n\nThe sum is $\\boxed{7}$."
    assert D.to_reward_format(r1) == (
        "<think>Okay, the bars are 2 and 5.\nSo 2 + 5 = 7.</think>\nThe sum is $7$.\n<answer>7</answer>"
    )
    no_close = "<think>I add 2 and 5 to get 7.\n\nSo the answer is \\boxed{\\frac{1}{2}}"
    assert D.to_reward_format(no_close) == (
        "<think>I add 2 and 5 to get 7.</think>\nSo the answer is \\frac{1}{2}\n<answer>\\frac{1}{2}</answer>"
    )
    bare = "Thinking hard.</think>\\boxed{B}"
    assert D.to_reward_format(bare) == "<think>Thinking hard.</think>\nB\n<answer>B</answer>"
    assert D.to_reward_format("I think it is 7.") is None  # no final answer to check
    assert D.to_reward_format("</think>\\boxed{3}") is None  # no reasoning


def test_distill_programmatic_k_per_question():
    rows = generate(8, seed=1, split="train")
    reasoner = D.ProgrammaticTextReasoner(wrong_rate=0.3, reflect_rate=0.3, verbose_rate=0.0)
    out, stats = D.distill(rows, D.StoredCaptioner(), reasoner, k=3, seed=7)
    assert len(out) == 24 and stats["rows_in"] == 8 and stats["responses"] == 24 and stats["rows_out"] == 24
    for i, r in enumerate(out):
        src = rows[i // 3]
        assert r["prompt"] == src["prompt"] and r["images"] == src["images"]
        assert r["reward_model"] == src["reward_model"]
        assert FORMAT.fullmatch(r["response"])
        assert r["extra_info"]["caption"] == src["extra_info"]["caption"]
        assert r["extra_info"]["sample"] == i % 3
    again, _ = D.distill(rows, D.StoredCaptioner(), reasoner, k=3, seed=7)
    assert [r["response"] for r in again] == [r["response"] for r in out]  # seeded
    other, _ = D.distill(rows, D.StoredCaptioner(), reasoner, k=3, seed=8)
    assert [r["response"] for r in other] != [r["response"] for r in out]


def test_distill_counts_rows_the_reasoner_cannot_read():
    good = generate(2, seed=0, split="train")
    bad = {**good[0], "extra_info": {**good[0]["extra_info"], "caption": "An unreadable scene."}}
    reasoner = D.ProgrammaticTextReasoner(0.0, 0.0, 0.0)
    out, stats = D.distill([bad, *good], D.StoredCaptioner(), reasoner, k=2, seed=0)
    assert stats["reasoner_failed"] == 1 and len(out) == 4


def test_scene_captioner_needs_a_caption():
    with pytest.raises(ValueError, match="no extra_info\\['caption'\\]"):
        D.StoredCaptioner().caption([row()])


def test_bare_question_drops_placeholders():
    assert D.bare_question(row(question="How many?")) == "How many?"


def test_weak_captioner_leaves_out_values_and_the_reasoner_guesses():
    rows = generate(200, seed=2, split="train")
    captions = D.StoredCaptioner(vague_rate=0.5, seed=3).caption(rows)
    assert captions == D.StoredCaptioner(vague_rate=0.5, seed=3).caption(rows)  # seeded
    vague = [c != r["extra_info"]["caption"] for c, r in zip(captions, rows)]
    assert 70 <= sum(vague) <= 130  # about half (binomial, 200 draws)
    for c, r, v in zip(captions, rows, vague):
        if v:  # the kind of picture only: no digit of the scene survives
            assert not re.search(r"\d", c), c
    assert D.StoredCaptioner().caption(rows) == [r["extra_info"]["caption"] for r in rows]  # default: exact
    with pytest.raises(ValueError, match="vague_rate"):
        D.StoredCaptioner(vague_rate=1.5)

    reasoner = D.ProgrammaticTextReasoner(wrong_rate=0.0, reflect_rate=0.0, verbose_rate=0.0, restate_rate=1.0)
    out, stats = D.distill(rows, D.StoredCaptioner(vague_rate=0.5, seed=3), reasoner, k=4, seed=1)
    assert stats["rows_out"] == 800 and stats.get("reasoner_failed", 0) == 0
    guessed = [r for r in out if "can only guess" in r["response"]]
    assert {r["extra_info"]["caption"] for r in guessed} <= {c for c, v in zip(captions, vague) if v}
    assert len(guessed) == 4 * sum(vague)
    # every response restates the caption it was given; reading ones are always right here
    for r in out:
        assert r["response"].startswith("<think>" + r["extra_info"]["caption"] + " ")
        if r not in guessed:
            assert r["response"].endswith(f"<answer>{r['reward_model']['ground_truth']}</answer>")
    # guesses are right at about the chance rate, so the correctness filter keeps some of them
    right = sum(r["response"].endswith(f"<answer>{r['reward_model']['ground_truth']}</answer>") for r in guessed)
    assert 0.1 * len(guessed) < right < 0.6 * len(guessed)


def test_weak_captioner_can_miss_only_some_families():
    rows = generate(200, seed=2, split="train")
    captions = D.StoredCaptioner(vague_rate=1.0, seed=3, vague_families=["chart"]).caption(rows)
    for c, r in zip(captions, rows):
        exact = r["extra_info"]["caption"]
        if r["extra_info"]["family"] == "chart":
            assert c != exact and not re.search(r"\d", c), c
        else:
            assert c == exact
    assert any(r["extra_info"]["family"] == "chart" for r in rows) and any(r["extra_info"]["family"] != "chart" for r in rows)
    with pytest.raises(ValueError, match="unknown task families \\['charts'\\]"):
        D.StoredCaptioner(vague_rate=0.5, vague_families=["charts"])
