"""The SFT filters on crafted rows: correctness, length (499/500/501 words), reflections (also
mid-sentence), dedup, contamination, pick-one and the chain's order."""

from __future__ import annotations

import re

import pytest
from prep_helpers import png, resp, row

from data_prep import filters as F
from data_prep.reasoner import DEFAULT_REFLECTION_PHRASES
from data_prep.rows import image_hash, normalize_question, word_count
from ovlt_rl.data.schema import make_row


def words(n: int) -> str:
    """A response of exactly n words by data_prep.rows.word_count (tags count as nothing)."""
    body = " ".join(f"w{i}" for i in range(n - 3))  # + "Answer 3." + "3"
    return f"<think>{body}</think>\nAnswer 3.\n<answer>3</answer>"


# --------------------------------------------------------------------------- correctness


def test_correctness_keeps_only_correct_and_counts(reward_fn):
    rows = [
        row(response=resp("Three circles.", "3")),  # correct
        row(response=resp("Two circles.", "2")),  # wrong
        row(response="<think>Three.</think><answer>3</answer>"),  # correct, nothing between: 0.5
        row(answer="B", response=resp("B is larger.", "(B)")),  # option letter in another form
    ]
    kept, stats = F.correctness(rows, reward_fn, min_reward=1.0)
    assert [r["response"] for r in kept] == [rows[0]["response"], rows[3]["response"]]
    assert stats == {"rows_in": 4, "rows_out": 2, "incorrect": 2, "unscorable": 0}
    kept_half, _ = F.correctness(rows, reward_fn, min_reward=0.5)
    assert len(kept_half) == 3


# --------------------------------------------------------------------------- length


def test_word_count_definition():
    assert word_count("<think>Okay so</think>\nyes\n<answer>3</answer>") == 4
    assert word_count(words(499)) == 499


@pytest.mark.parametrize("n, kept", [(499, True), (500, False), (501, False)])
def test_length_keeps_fewer_than_500_words(n, kept):
    rows = [row(response=words(n))]
    out, stats = F.length(rows, max_words=500)
    assert (len(out) == 1) is kept
    assert stats["too_long"] == (0 if kept else 1)


def test_length_zero_disables():
    out, _ = F.length([row(response=words(2000))], max_words=0)
    assert len(out) == 1


# --------------------------------------------------------------------------- reflections


def test_reflection_sentences_removed_including_mid_sentence():
    think = ("There are three circles. Wait, let me count again. I see the red ones, hmm, in the top row. "
             "So the count is 3.")
    r = row(response=resp(think, "3", conclusion="The answer is 3. Let me double-check: yes."))
    out, stats = F.reflections([r], DEFAULT_REFLECTION_PHRASES, mode="remove_sentences")
    text = out[0]["response"]
    assert text == "<think>There are three circles. So the count is 3.</think>\nThe answer is 3.\n<answer>3</answer>"
    assert stats["edited"] == 1 and stats["sentences_removed"] == 3
    assert not F.phrase_pattern(DEFAULT_REFLECTION_PHRASES).search(text)


def test_reflection_matching_is_case_insensitive_whole_words():
    pattern = F.phrase_pattern(["wait", "let me double-check"])
    assert pattern.search("WAIT. Something")
    assert pattern.search("so, Let me  double-check that")  # any spacing between the words
    assert not pattern.search("we await the result")  # not inside another word
    assert not pattern.search("the waiter")
    r = row(response=resp("We await the bus. It has 3 wheels.", "3"))
    out, stats = F.reflections([r], ["wait"], mode="remove_sentences")
    assert out[0]["response"] == r["response"] and stats["edited"] == 0


def test_reflection_phrase_inside_answer_tag_is_left_alone():
    r = row(answer="wait", response=resp("The sign says a word.", "wait"))
    out, stats = F.reflections([r], ["wait"], mode="remove_sentences")
    assert out[0]["response"] == r["response"]
    out, stats = F.reflections([r], ["wait"], mode="drop_sample")
    assert len(out) == 1


def test_reflection_drop_sample_mode_and_emptied():
    clean = row(response=resp("Three circles.", "3"))
    reflective = row(response=resp("Three circles. Hmm, yes three.", "3"))
    out, stats = F.reflections([clean, reflective], ["hmm"], mode="drop_sample")
    assert out == [clean] and stats["dropped"] == 1
    only_reflection = row(response=resp("Wait, I count three.", "3"))
    out, stats = F.reflections([only_reflection], ["wait"], mode="remove_sentences")
    assert out == [] and stats["emptied"] == 1


def test_reflection_unknown_mode_is_an_error():
    with pytest.raises(ValueError, match="unknown mode"):
        F.reflections([], ["wait"], mode="sometimes")


# --------------------------------------------------------------------------- dedup and contamination


def test_dedup_same_image_question_response():
    a = row(response=resp("Three.", "3"))
    same = row(question="  how many RED circles are there ", response=resp("Three.", "3"))
    other_response = row(response=resp("I count three.", "3"))
    other_image = row(color=(0, 0, 250), response=resp("Three.", "3"))
    out, stats = F.dedup([a, same, other_response, other_image])
    assert out == [a, other_response, other_image] and stats["duplicates"] == 1


def test_contamination_by_image_and_by_question(tmp_path):
    from ovlt_rl.data.schema import write_rows

    eval_rows = [row(question="What is the area of the triangle?", answer="6", color=(1, 2, 3))]
    path = write_rows(eval_rows, tmp_path / "bench.parquet")
    index = F.EvalIndex.from_files([str(path)], boilerplate=["You FIRST think."])
    same_image = row(question="Something else entirely?", color=(1, 2, 3))
    same_question = row(question="what is the AREA of the triangle?  You FIRST think.", color=(9, 9, 9))
    clean = row(question="How many sides?", color=(50, 60, 70))
    out, stats = F.contamination([same_image, same_question, clean], index)
    assert out == [clean]
    assert stats["same_image"] == 1 and stats["same_question"] == 1
    out, stats = F.contamination([same_image, same_question, clean], index, keys=["image"])
    assert out == [same_question, clean]


def test_image_hash_and_question_normalisation(tmp_path):
    p = tmp_path / "a.png"
    p.write_bytes(png((5, 5, 5)))
    by_bytes = make_row(data_source="x", question="<image>Q", ground_truth="1", images=[png((5, 5, 5))])
    by_path = {**by_bytes, "images": [{"bytes": None, "path": str(p)}]}
    assert image_hash(by_bytes) == image_hash(by_path) != ""
    assert normalize_question("<image> How  MANY?\n", ["how"]) == "many"


# --------------------------------------------------------------------------- pick one


def test_pick_one_shortest_longest_random():
    short, mid, long_ = (row(response=words(n)) for n in (10, 20, 30))
    other = row(color=(0, 0, 255), response=words(15))
    out, stats = F.pick_one([mid, short, other, long_], "shortest")
    assert out == [short, other] and stats["questions"] == 2
    assert F.pick_one([mid, short, long_], "longest")[0] == [long_]
    first = F.pick_one([mid, short, long_], "random", seed=3)[0]
    assert first == F.pick_one([mid, short, long_], "random", seed=3)[0]
    assert first[0] in (mid, short, long_)
    picks = {F.pick_one([mid, short, long_], "random", seed=s)[0][0]["response"] for s in range(20)}
    assert len(picks) > 1  # the seed matters


# --------------------------------------------------------------------------- the chain


def test_select_sft_chain(reward_fn):
    rows = [
        row(response=resp("Three circles. Wait, the top row, then three.", "3")),  # correct, reflective, shortest
        row(response=resp("I see three red circles in the picture, all round.", "3")),  # correct, clean
        row(response=resp("Two circles.", "2")),  # wrong
        row(response=words(600)),  # too long
        row(color=(0, 200, 0), response=resp("Three.", "3")),
        row(color=(0, 200, 0), response=resp("Three.", "3")),  # duplicate
    ]
    kept, steps = F.select_sft(rows, reward_fn, reflection_phrases=DEFAULT_REFLECTION_PHRASES)
    names = [s["step"] for s in steps]
    assert names == ["correctness", "length", "dedup", "pick_one", "reflections"]
    by = {s["step"]: s for s in steps}
    assert by["correctness"]["rows_out"] == 5 and by["length"]["rows_out"] == 4 and by["dedup"]["rows_out"] == 3
    assert len(kept) == 2
    # the first question keeps its shortest response as written, with the reflection deleted
    assert kept[0]["response"] == resp("Three circles.", "3")
    assert not any(re.search(r"(?i)\bwait\b", r["response"]) for r in kept)
    # drop_sample filters before the pick: the clean response survives
    kept, _ = F.select_sft(rows, reward_fn, reflection_mode="drop_sample", reflection_phrases=["wait"])
    assert kept[0]["response"] == rows[1]["response"]
