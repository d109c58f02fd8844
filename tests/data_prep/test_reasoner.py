"""The programmatic reasoner: answers from captions alone, imperfect at the configured rates."""

from __future__ import annotations

import collections
import re

import pytest

from data_prep import synthetic
from data_prep.reasoner import DEFAULT_REFLECTION_PHRASES, ProgrammaticReasoner, vague_caption

FORMAT = re.compile(r"<think>(.+)</think>\n(.+)\n<answer>(.+)</answer>", re.DOTALL)
N = 500  # samples per family


@pytest.fixture(scope="module")
def samples():
    return [synthetic.sample(i, seed=5, split="train", family=f) for i in range(N) for f in synthetic.FAMILIES]


def _parts(response: str) -> tuple[str, str, str]:
    m = FORMAT.fullmatch(response)
    assert m, response
    return m.groups()


def _reflective(text: str, phrases=DEFAULT_REFLECTION_PHRASES) -> bool:
    return any(re.search(rf"(?<![\w-]){re.escape(p)}(?![\w-])", text, re.IGNORECASE) for p in phrases)


def _run(reasoner, samples, k=1):
    """(sample, response) pairs, questions given with the image placeholder as rows carry them."""
    return [(s, r) for s in samples for r in reasoner.answer(s.caption, "<image>" + s.question, s.family, k=k)]


def test_plain_reasoner_is_always_right_from_the_caption_alone(samples):
    reasoner = ProgrammaticReasoner(seed=0, wrong_rate=0.0, reflect_rate=0.0, verbose_rate=0.0)
    words = []
    for s, response in _run(reasoner, samples):
        think, conclusion, answer = _parts(response)
        assert answer == s.answer, (s.caption, s.question, response)
        assert conclusion.strip() and answer in think
        assert not _reflective(response), response
        words.append(len(response.split()))
    assert max(words) <= 70 and 20 <= sum(words) / len(words) <= 60, (min(words), max(words))
    # solve() is the same computation without randomness
    assert all(reasoner.solve(s.caption, s.question, s.family) == s.answer for s in samples[:200])


def test_rates_are_met(samples):
    reasoner = ProgrammaticReasoner(seed=1, wrong_rate=0.25, reflect_rate=0.3, verbose_rate=0.1)
    out = _run(reasoner, samples)
    n = len(out)
    wrong = sum(_parts(r)[2] != s.answer for s, r in out) / n
    reflective = sum(_reflective(r) for _, r in out) / n
    long = sum(len(r.split()) > 500 for _, r in out) / n
    assert abs(wrong - 0.25) < 0.03, wrong
    assert abs(reflective - 0.3) < 0.03, reflective
    assert abs(long - 0.1) < 0.02, long
    for s, r in out:
        think, conclusion, answer = _parts(r)
        assert conclusion.strip()
        # a wrong answer is still a well-formed answer of the family, reached by the reasoning
        assert answer in think
        assert answer in ("A", "B") if s.family == "compare" else answer.isdigit()
        if len(r.split()) <= 500:
            assert len(r.split()) <= 90, r
    # some reflection phrases sit in the middle of a sentence, lower-case between commas
    mids = [r for _, r in out if re.search(r"\w, (" + "|".join(map(re.escape, DEFAULT_REFLECTION_PHRASES)) + r"), \w", r)]
    assert len(mids) > 0.05 * n


def test_wrong_answers_come_with_consistent_misreadings(samples):
    """A wrong count restates a count off by one; a wrong comparison restates values in that order."""
    reasoner = ProgrammaticReasoner(seed=2, wrong_rate=1.0, reflect_rate=0.0, verbose_rate=0.0)
    for s, r in _run(reasoner, samples[:400]):
        think, _, answer = _parts(r)
        assert answer != s.answer
        if s.family in ("count", "ruler"):
            assert abs(int(answer) - int(s.answer)) == 1, r
        if s.family == "compare":
            a, b = (int(x) for x in re.findall(r"is (\d+)", think)[:2])
            bigger = "A" if a > b else "B"
            assert (answer == bigger) == any(w in s.question for w in ("larger", "longer")), r


def test_k_samples_seeded_and_varied():
    s = synthetic.sample(0, seed=0, split="train", family="chart")
    a = ProgrammaticReasoner(seed=7, wrong_rate=0.5, reflect_rate=0.5, verbose_rate=0.0)
    b = ProgrammaticReasoner(seed=7, wrong_rate=0.5, reflect_rate=0.5, verbose_rate=0.0)
    c = ProgrammaticReasoner(seed=8, wrong_rate=0.5, reflect_rate=0.5, verbose_rate=0.0)
    out = a.answer(s.caption, s.question, "chart", k=8)
    assert len(out) == 8 and len(set(out)) > 2
    assert out == b.answer(s.caption, s.question, "chart", k=8)
    assert out != c.answer(s.caption, s.question, "chart", k=8)


def test_custom_reflection_phrases_are_used():
    phrases = ["but let me think"]
    reasoner = ProgrammaticReasoner(seed=0, wrong_rate=0.0, reflect_rate=1.0, verbose_rate=0.0, reflection_phrases=phrases)
    s = synthetic.sample(0, seed=0, split="train", family="count")
    for r in reasoner.answer(s.caption, s.question, "count", k=20):
        assert _reflective(r, phrases) and not _reflective(r), r


def test_bad_input_is_named():
    reasoner = ProgrammaticReasoner(seed=0)
    with pytest.raises(ValueError, match="geometry"):
        reasoner.answer("A circle.", "What is x?", "geometry", k=1)
    with pytest.raises(ValueError, match="caption"):
        reasoner.answer("A cat on a mat.", "How many red circles are there?", "count", k=1)
    with pytest.raises(ValueError, match="question"):
        reasoner.answer("A bar chart with bars A=1, B=2, C=3.", "Which bar is blue?", "chart", k=1)
    with pytest.raises(ValueError, match="wrong_rate"):
        ProgrammaticReasoner(seed=0, wrong_rate=1.5)
    with pytest.raises(ValueError, match="k must"):
        reasoner.answer("A bar chart with bars A=1, B=2, C=3.", "What is the value of bar A?", "chart", k=0)


def test_vague_caption_gets_guesses_of_the_right_kind():
    reasoner = ProgrammaticReasoner(seed=0, wrong_rate=0.0, reflect_rate=0.0, verbose_rate=0.0)
    answers = collections.defaultdict(set)
    for i in range(120):
        family = synthetic.FAMILIES[i % len(synthetic.FAMILIES)]
        s = synthetic.sample(i, seed=0, split="train", family=family)
        vague = vague_caption(s.caption, family)
        assert not any(ch.isdigit() for ch in vague) and vague != s.caption
        for r in reasoner.answer(vague, s.question, family, k=8):
            assert "can only guess" in r, r
            answers[s.template].add(r.rsplit("<answer>", 1)[1].removesuffix("</answer>"))
    # every guess is an answer the template can have, and the guesses vary
    for template, got in answers.items():
        assert got <= set(synthetic.TEMPLATE_ANSWERS[template]), (template, got)
        assert len(got) >= 2, (template, got)
    with pytest.raises(ValueError, match="question"):  # a question it does not know is still an error
        reasoner.answer("A bar chart.", "Which bar is blue?", "chart", k=1)


def test_restated_caption_opens_the_reasoning_which_then_goes_on_as_usual():
    plain = ProgrammaticReasoner(seed=0, wrong_rate=0.0, reflect_rate=0.0, verbose_rate=0.0)
    restating = ProgrammaticReasoner(seed=0, wrong_rate=0.0, reflect_rate=0.0, verbose_rate=0.0, restate_rate=1.0)
    for family in synthetic.FAMILIES:
        s = synthetic.sample(0, seed=0, split="train", family=family)
        before, after = plain.answer(s.caption, s.question, family)[0], restating.answer(s.caption, s.question, family)[0]
        assert not before.startswith("<think>" + s.caption)
        # the caption, then the whole plain reasoning: every family's response gets longer
        assert after == before.replace("<think>", "<think>" + s.caption + " ", 1), family
        assert after.endswith(f"<answer>{s.answer}</answer>")


def test_restate_rate_restates_about_that_share_and_zero_keeps_the_stream():
    s = synthetic.sample(0, seed=0, split="train", family="ruler")
    half = ProgrammaticReasoner(seed=1, wrong_rate=0.0, reflect_rate=0.0, verbose_rate=0.0, restate_rate=0.5)
    got = half.answer(s.caption, s.question, "ruler", k=200)
    restated = sum(r.startswith("<think>" + s.caption) for r in got)
    assert 70 <= restated <= 130  # binomial(200, 0.5)
    assert all(r.endswith(f"<answer>{s.answer}</answer>") for r in got)
    # rates 0 and 1 draw nothing: the same seed makes the same misreadings with either
    ends = lambda rate: [r.rsplit("<answer>", 1)[1] for r in ProgrammaticReasoner(seed=3, wrong_rate=0.5, reflect_rate=0.0, verbose_rate=0.0, restate_rate=rate)
                         .answer(s.caption, s.question, "ruler", k=40)]
    assert ends(0.0) == ends(1.0) and len(set(ends(0.0))) > 1
    with pytest.raises(ValueError, match="restate_rate"):
        ProgrammaticReasoner(restate_rate=2.0)
