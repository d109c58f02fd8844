"""A programmatic "text reasoner" standing in for an R1-distilled text model.

OpenVLThinker's first SFT set comes from a text-only reasoning model that reads an image caption and
the question and writes step-by-step reasoning. Offline there is no such model, so this module does
the same job for the synthetic task (data_prep/synthetic.py): it parses the caption (never the
ground truth), computes the answer, and writes a short response in the format the reward expects::

    <think>{reasoning}</think>
    {short conclusion sentence}
    <answer>{answer}</answer>

Like a real model it is imperfect, at configurable rates, so that the correctness, length and
reflection filters have real work to do:

- wrong: it misreads one value of the scene (an off-by-one count, a misread bar or line end, a
  misjudged angle or length) and reasons consistently from the misread scene to a wrong answer;
- reflective: it inserts reflection sentences ("Wait, ...", "Hmm, ...") and sometimes a reflection
  phrase in the middle of a sentence;
- verbose: it pads the reasoning with restatements until the response exceeds 500 words;
- guessing: given a caption without values (what a weak captioner writes, `vague_caption`), it
  says so and guesses an answer of the right kind. Lucky guesses pass the correctness filter, so
  SFT data distilled this way teaches a model to guess sometimes instead of reading the image;
  GRPO's group-relative reward is what selects reading over guessing (docs/notes/2026-11-22-weak-captioner.md).

With `restate_rate` that share of the responses starts its reasoning with the caption word for
word and then reasons as usual, as R1-style models restate what they were given. A restated
scene costs 15-35 tokens: under the tiny recipes' 64-token budget it leaves no room for the
answer (docs/notes/2026-11-23-sources-per-iteration.md).

Normal responses are kept short (about 20-60 words) because the tiny model has to learn them.
This module only knows the caption and question grammar of the synthetic generator; it does not
import it, so the generator can use the reasoner to build its text corpus.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, replace
from typing import Callable, Sequence

# Reflection phrases from the paper's filter (section 3.1: "wait", "let me double-check", "hmm",
# "re-examine", ...) plus a few of the same kind seen in R1 outputs. The reflection filter matches
# these; every reflective response contains at least one, and no other response contains any.
DEFAULT_REFLECTION_PHRASES: tuple[str, ...] = (
    "wait",
    "let me double-check",
    "hmm",
    "re-examine",
    "let me verify",
    "on second thought",
    "let me check again",
    "let me reconsider",
    "double-check",
    "re-evaluate",
)

# Full reflection sentences for the default phrases; other phrases get a generic sentence.
_REFLECTION_SENTENCES: dict[str, tuple[str, ...]] = {
    "wait": ("Wait, let me look at the {subject} once more.", "Wait, is that right? Yes, it matches the image."),
    "let me double-check": ("Let me double-check the {subject}.",),
    "hmm": ("Hmm, let me look at the image description closely.", "Hmm, that seems right."),
    "re-examine": ("I should re-examine the {subject} before answering.",),
    "let me verify": ("Let me verify the {subject} in the image.",),
    "on second thought": ("On second thought, I will go over the {subject} once more.",),
    "let me check again": ("Let me check again the {subject}: it agrees with the image.",),
    "let me reconsider": ("Let me reconsider the {subject} carefully.",),
    "double-check": ("A quick double-check of the {subject} confirms it.",),
    "re-evaluate": ("I will re-evaluate the {subject} step by step.",),
}

_VERBOSE_WORDS = 500  # the paper's length filter keeps responses under 500 words
_PAD_TEMPLATES = (
    "To restate what the image shows: {scene}.",
    "Going over the picture one more time, {scene}.",
    "In other words, {scene}.",
    "Describing the scene again in full detail, {scene}.",
    "Once more, for completeness, {scene}.",
)


@dataclass(frozen=True)
class _Problem:
    """A parsed caption + question: the scene's values and what is asked."""

    family: str
    values: dict  # name -> number (counts, bar values, line ends, angles, lengths)
    query: tuple  # family-specific description of what the question asks


@dataclass(frozen=True)
class _Family:
    parse: Callable[[str, str], _Problem]
    guesses: Callable[[str], tuple[str, ...]]  # the answers a question of this kind can have
    solve: Callable[[_Problem], str]
    perturbations: Callable[[_Problem], list[_Problem]]  # misreadings of one value
    explain: Callable[[_Problem, str], tuple[list[str], str]]  # (reasoning steps, conclusion)
    describe: Callable[[_Problem], str]  # the scene in words, for verbose padding
    subject: str  # what a reflection re-checks


def _fail(what: str, text: str) -> ValueError:
    return ValueError(f"reasoner cannot parse {what}: {text!r}")


def _join(items: Sequence[str]) -> str:
    items = list(items)
    if len(items) == 1:
        return items[0]
    return ", ".join(items[:-1]) + " and " + items[-1]


# ---------------------------------------------------------------- count
# caption: "The image shows 3 red circles, 2 blue squares and 1 green triangle."
# question: "How many red circles are there?" / "How many red shapes are there?"
_COUNT_Q = re.compile(r"How many (\w+) (\w+?)s are there\?")
_COUNT_ITEM = re.compile(r"(\d+) (\w+) (\w+?)s?\b")


def _count_parse(caption: str, question: str) -> _Problem:
    m = _COUNT_Q.search(question)
    if not m:
        raise _fail("count question", question)
    body = caption.partition("The image shows ")[2]
    if not body:
        raise _fail("count caption", caption)
    values = {(c, s): int(n) for n, c, s in _COUNT_ITEM.findall(body)}
    if not values:
        raise _fail("count caption", caption)
    color, shape = m.group(1), m.group(2)
    return _Problem("count", values, (color, None if shape == "shape" else shape))


def _count_guesses(question: str) -> tuple[str, ...]:
    if not _COUNT_Q.search(question):
        raise _fail("count question", question)
    return tuple(str(n) for n in range(6))


def _count_matches(p: _Problem) -> list[tuple[str, str]]:
    color, shape = p.query
    return [k for k in p.values if k[0] == color and (shape is None or k[1] == shape)]


def _count_solve(p: _Problem) -> str:
    return str(sum(p.values[k] for k in _count_matches(p)))


def _count_perturbations(p: _Problem) -> list[_Problem]:
    color, shape = p.query
    out = []
    for key in _count_matches(p):
        for d in (-1, 1):
            out.append(replace(p, values={**p.values, key: p.values[key] + d}))
    if not out:  # nothing matches: "seeing" one object that is not there
        for s in [shape] if shape else ["circle", "square", "triangle"]:
            out.append(replace(p, values={**p.values, (color, s): 1}))
    return out


def _plural(n: int, color: str, shape: str) -> str:
    return f"{n} {color} {shape}{'' if n == 1 else 's'}"


def _count_describe(p: _Problem) -> str:
    items = [_plural(n, c, s) for (c, s), n in p.values.items() if n > 0]
    return "the image shows " + (_join(items) if items else "no shapes")


def _count_explain(p: _Problem, answer: str) -> tuple[list[str], str]:
    color, shape = p.query
    target = f"{color} {shape}s" if shape else f"{color} shapes"
    steps = [f"I need to count the {target}.", _count_describe(p)[0].upper() + _count_describe(p)[1:] + "."]
    matches = [k for k in _count_matches(p) if p.values[k] > 0]
    if shape is None and len(matches) > 1:
        parts = " + ".join(str(p.values[k]) for k in matches)
        steps.append(f"The {color} ones are {_join(_plural(p.values[k], *k) for k in matches)}, so {parts} = {answer}.")
    else:
        steps.append(f"Only the {target} count, so the answer is {answer}.")
    return steps, f"There {'is' if answer == '1' else 'are'} {answer} {target[:-1] if answer == '1' else target}."


# ---------------------------------------------------------------- chart
# caption: "A bar chart with bars A=3, B=6, C=2."
# questions: "What is the value of bar B?" / "What is bar A plus bar C?" /
#            "What is the value of the tallest bar minus the value of the shortest bar?"
_BAR = re.compile(r"\b([A-Z])=(\d+)")
_CHART_VALUE = re.compile(r"What is the value of bar ([A-Z])\?")
_CHART_SUM = re.compile(r"What is bar ([A-Z]) plus bar ([A-Z])\?")
_CHART_RANGE = "What is the value of the tallest bar minus the value of the shortest bar?"


def _chart_parse(caption: str, question: str) -> _Problem:
    values = {k: int(v) for k, v in _BAR.findall(caption)}
    if not caption.startswith("A bar chart") or not values:
        raise _fail("chart caption", caption)
    if m := _CHART_VALUE.search(question):
        query = ("value", m.group(1))
    elif m := _CHART_SUM.search(question):
        query = ("sum", m.group(1), m.group(2))
    elif _CHART_RANGE in question:
        query = ("range",)
    else:
        raise _fail("chart question", question)
    for bar in query[1:]:
        if bar not in values:
            raise ValueError(f"chart question asks for bar {bar} but the caption has only {sorted(values)}: {caption!r}")
    return _Problem("chart", values, query)


def _chart_guesses(question: str) -> tuple[str, ...]:
    if _CHART_VALUE.search(question):
        return tuple(str(n) for n in range(1, 7))
    if _CHART_SUM.search(question):
        return tuple(str(n) for n in range(2, 13))
    if _CHART_RANGE in question:
        return tuple(str(n) for n in range(6))
    raise _fail("chart question", question)


def _chart_solve(p: _Problem) -> str:
    v, q = p.values, p.query
    if q[0] == "value":
        return str(v[q[1]])
    if q[0] == "sum":
        return str(v[q[1]] + v[q[2]])
    return str(max(v.values()) - min(v.values()))


def _chart_perturbations(p: _Problem) -> list[_Problem]:
    return [replace(p, values={**p.values, k: p.values[k] + d}) for k in p.values for d in (-1, 1) if p.values[k] + d >= 1]


def _chart_describe(p: _Problem) -> str:
    return "the bar chart has " + _join(f"bar {k} at {v}" for k, v in p.values.items())


def _chart_explain(p: _Problem, answer: str) -> tuple[list[str], str]:
    v, q = p.values, p.query
    steps = [_chart_describe(p)[0].upper() + _chart_describe(p)[1:] + "."]
    if q[0] == "value":
        steps.append(f"The question asks for bar {q[1]}, which reaches {v[q[1]]}.")
        return steps, f"Bar {q[1]} has the value {answer}."
    if q[0] == "sum":
        steps.append(f"Bar {q[1]} is {v[q[1]]} and bar {q[2]} is {v[q[2]]}, so {v[q[1]]} + {v[q[2]]} = {answer}.")
        return steps, f"The sum is {answer}."
    hi = max(v, key=lambda k: v[k])
    lo = min(v, key=lambda k: v[k])
    steps.append(f"The tallest bar is {hi} with {v[hi]} and the shortest is {lo} with {v[lo]}.")
    steps.append(f"So {v[hi]} - {v[lo]} = {answer}.")
    return steps, f"The difference is {answer}."


# ---------------------------------------------------------------- ruler
# caption: "A ruler from 0 to 6 cm with a red line from 0 cm to 4 cm[ and a blue line from 0 cm to 2 cm]."
# question: "How long is the line, in cm?" / "How long is the blue line, in cm?"
_LINE = re.compile(r"(\w+) line from (\d+) cm to (\d+) cm")
_RULER_Q = re.compile(r"How long is the (?:(\w+) )?line, in cm\?")


def _ruler_parse(caption: str, question: str) -> _Problem:
    lines = {c: (int(a), int(b)) for c, a, b in _LINE.findall(caption)}
    if not caption.startswith("A ruler") or not lines:
        raise _fail("ruler caption", caption)
    m = _RULER_Q.search(question)
    if not m:
        raise _fail("ruler question", question)
    color = m.group(1)
    if color is None:
        if len(lines) != 1:
            raise ValueError(f"ruler question asks for 'the line' but the caption has {len(lines)} lines: {caption!r}")
        color = next(iter(lines))
    if color not in lines:
        raise ValueError(f"ruler question asks for the {color} line, which the caption lacks: {caption!r}")
    # values: end points per line; starts kept separately in the query (never misread)
    return _Problem("ruler", {c: b for c, (a, b) in lines.items()}, (color, {c: a for c, (a, b) in lines.items()}))


def _ruler_guesses(question: str) -> tuple[str, ...]:
    if not _RULER_Q.search(question):
        raise _fail("ruler question", question)
    return tuple(str(n) for n in range(1, 7))


def _ruler_solve(p: _Problem) -> str:
    color, starts = p.query
    return str(p.values[color] - starts[color])


def _ruler_perturbations(p: _Problem) -> list[_Problem]:
    color, starts = p.query
    end = p.values[color]
    return [replace(p, values={**p.values, color: end + d}) for d in (-1, 1) if end + d > starts[color]]


def _ruler_describe(p: _Problem) -> str:
    _, starts = p.query
    return "the ruler shows " + _join(f"a {c} line from {starts[c]} cm to {e} cm" for c, e in p.values.items())


def _ruler_explain(p: _Problem, answer: str) -> tuple[list[str], str]:
    color, starts = p.query
    steps = [
        f"The {color} line starts at the {starts[color]} cm mark of the ruler.",
        f"It ends at the {p.values[color]} cm mark.",
        f"So its length is {p.values[color]} - {starts[color]} = {answer} cm.",
    ]
    return steps, f"The {color} line is {answer} cm long."


# ---------------------------------------------------------------- compare
# caption: "Two angles: angle A (left) is 40 degrees and angle B (right) is 90 degrees."
#          "Two lines: line A (top) is 7 units long and line B (bottom) is 4 units long."
# question: "Which angle is larger, A or B?" / "... smaller ..." / "Which line is longer|shorter, A or B?"
_ANGLE = re.compile(r"angle ([AB]) \(\w+\) is (\d+) degrees")
_LENGTH = re.compile(r"line ([AB]) \(\w+\) is (\d+) units long")
_COMPARE_Q = re.compile(r"Which (angle|line) is (larger|smaller|longer|shorter), A or B\?")


def _compare_parse(caption: str, question: str) -> _Problem:
    m = _COMPARE_Q.search(question)
    if not m:
        raise _fail("compare question", question)
    kind, word = m.groups()
    values = {k: int(v) for k, v in (_ANGLE if kind == "angle" else _LENGTH).findall(caption)}
    if set(values) != {"A", "B"}:
        raise _fail(f"compare caption (two {kind}s)", caption)
    return _Problem("compare", values, (kind, word))


def _compare_guesses(question: str) -> tuple[str, ...]:
    if not _COMPARE_Q.search(question):
        raise _fail("compare question", question)
    return ("A", "B")


def _compare_solve(p: _Problem) -> str:
    a, b = p.values["A"], p.values["B"]
    if a == b:
        raise ValueError(f"compare question has no answer: A and B are equal ({a})")
    bigger = "A" if a > b else "B"
    return bigger if p.query[1] in ("larger", "longer") else ("B" if bigger == "A" else "A")


def _compare_perturbations(p: _Problem) -> list[_Problem]:
    # misjudge one of the two so that the order flips (a real misreading of sizes)
    kind = p.query[0]
    step = 10 if kind == "angle" else 1
    a, b = p.values["A"], p.values["B"]
    out = []
    for name, other in (("A", b), ("B", a)):
        mine = p.values[name]
        new = other + step if mine < other else other - step
        if new > 0:
            out.append(replace(p, values={**p.values, name: new}))
    return out


def _compare_describe(p: _Problem) -> str:
    kind = p.query[0]
    unit = "degrees" if kind == "angle" else "units long"
    return f"{kind} A is {p.values['A']} {unit} and {kind} B is {p.values['B']} {unit}"


def _compare_explain(p: _Problem, answer: str) -> tuple[list[str], str]:
    kind, word = p.query
    a, b = p.values["A"], p.values["B"]
    sign = ">" if a > b else "<"
    steps = [
        _compare_describe(p)[0].upper() + _compare_describe(p)[1:] + ".",
        f"Comparing them, {a} {sign} {b}, so the {word} {kind} is {answer}.",
    ]
    return steps, f"{kind.capitalize()} {answer} is {word}."


_FAMILIES: dict[str, _Family] = {
    "count": _Family(_count_parse, _count_guesses, _count_solve, _count_perturbations, _count_explain, _count_describe, "count"),
    "chart": _Family(_chart_parse, _chart_guesses, _chart_solve, _chart_perturbations, _chart_explain, _chart_describe, "bar values"),
    "ruler": _Family(_ruler_parse, _ruler_guesses, _ruler_solve, _ruler_perturbations, _ruler_explain, _ruler_describe, "line ends"),
    "compare": _Family(
        _compare_parse, _compare_guesses, _compare_solve, _compare_perturbations, _compare_explain, _compare_describe, "comparison"
    ),
}
FAMILIES = tuple(_FAMILIES)


def _family(name: str) -> _Family:
    if name not in _FAMILIES:
        raise ValueError(f"reasoner knows no task family {name!r}; known: {', '.join(_FAMILIES)}")
    return _FAMILIES[name]


# What a weak captioner writes when it does not make out the values: the kind of picture only
# (comparisons: one caption per kind, angles or lines).
_VAGUE_CAPTIONS = {
    "count": ("The image shows some shapes.",),
    "chart": ("A bar chart.",),
    "ruler": ("A ruler with lines.",),
    "compare": ("Two angles.", "Two lines."),
}


def vague_caption(caption: str, family: str) -> str:
    """The caption a weak captioner writes for this scene: its kind, none of its values."""
    _family(family)
    options = _VAGUE_CAPTIONS[family]
    if family == "compare" and not caption.startswith("Two angles"):
        return options[1]
    return options[0]


def _is_vague(caption: str, family: str) -> bool:
    return caption in _VAGUE_CAPTIONS[family]


def reflection_sentences(phrases: Sequence[str] = DEFAULT_REFLECTION_PHRASES, subject: str = "count") -> list[str]:
    """All standalone reflection sentences the reasoner can write for these phrases."""
    out = []
    for phrase in phrases:
        for template in _REFLECTION_SENTENCES.get(phrase, (f"{phrase[:1].upper()}{phrase[1:]}, I go over the {{subject}} once more.",)):
            out.append(template.format(subject=subject))
    return out


class ProgrammaticReasoner:
    """Writes reasoning + answer from a caption and question, imperfectly at configured rates.

    Each of the k samples of a call draws independently from one seeded RNG: wrong with
    probability `wrong_rate`, reflective with `reflect_rate`, over-long with `verbose_rate`.
    A caption without values (`vague_caption`) gets k guesses instead. The same seed and the same
    sequence of calls give the same responses.
    """

    def __init__(
        self,
        seed: int = 0,
        wrong_rate: float = 0.25,
        reflect_rate: float = 0.25,
        verbose_rate: float = 0.15,
        reflection_phrases: Sequence[str] = DEFAULT_REFLECTION_PHRASES,
        restate_rate: float = 0.0,
    ):
        for name, rate in (("wrong_rate", wrong_rate), ("reflect_rate", reflect_rate), ("verbose_rate", verbose_rate),
                           ("restate_rate", restate_rate)):
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"{name} must be within [0, 1], got {rate}")
        phrases = [p.strip() for p in reflection_phrases]
        if not phrases or any(not p for p in phrases):
            raise ValueError(f"reflection_phrases must be non-empty strings, got {list(reflection_phrases)!r}")
        self.wrong_rate = wrong_rate
        self.reflect_rate = reflect_rate
        self.verbose_rate = verbose_rate
        self.reflection_phrases = tuple(phrases)
        self.restate_rate = restate_rate
        self._rng = random.Random(seed)

    def solve(self, caption: str, question: str, family: str) -> str:
        """The answer the caption implies (no randomness): what a perfect reasoner would say."""
        fam = _family(family)
        return fam.solve(fam.parse(caption, _strip(question)))

    def answer(self, caption: str, question: str, family: str, k: int = 1) -> list[str]:
        """k full responses "<think>...</think>\\n{conclusion}\\n<answer>...</answer>"."""
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        fam = _family(family)
        if _is_vague(caption, family):
            candidates = fam.guesses(_strip(question))
            return [self._guess(fam, caption, candidates) for _ in range(k)]
        problem = fam.parse(caption, _strip(question))
        truth = fam.solve(problem)
        return [self._one(fam, problem, truth, caption) for _ in range(k)]

    def _guess(self, fam: _Family, caption: str, candidates: tuple[str, ...]) -> str:
        """What a reasoner says when the caption has no values: that it cannot tell, and a guess."""
        answer = self._rng.choice(candidates)
        steps = [f"The description does not give the {fam.subject}, so I can only guess.", f"I guess {answer}."]
        if self._restate():
            steps.insert(0, caption)
        return f"<think>{' '.join(steps)}</think>\nMy guess is {answer}.\n<answer>{answer}</answer>"

    def _one(self, fam: _Family, problem: _Problem, truth: str, caption: str) -> str:
        rng = self._rng
        # draw all three decisions every time so that one rate does not shift the others' streams
        wrong = rng.random() < self.wrong_rate
        reflect = rng.random() < self.reflect_rate
        verbose = rng.random() < self.verbose_rate
        if wrong:
            misread = [q for q in fam.perturbations(problem) if fam.solve(q) != truth]
            if not misread:
                raise RuntimeError(f"no misreading changes the answer of {problem}")
            problem = rng.choice(misread)
        answer = fam.solve(problem)
        steps, conclusion = fam.explain(problem, answer)
        if self._restate():
            steps = [caption] + steps
        if reflect:
            steps = self._reflect(steps, fam.subject)
        if verbose:
            steps = self._pad(steps, fam.describe(problem), conclusion, answer)
        return f"<think>{' '.join(steps)}</think>\n{conclusion}\n<answer>{answer}</answer>"

    def _restate(self) -> bool:
        # no draw at rate 0 or 1, so those keep the RNG stream (and the data) of the other rates
        return self.restate_rate >= 1.0 or (self.restate_rate > 0.0 and self._rng.random() < self.restate_rate)

    def _reflect(self, steps: list[str], subject: str) -> list[str]:
        """Insert one or two reflection sentences, or a phrase in the middle of a sentence, or both."""
        rng = self._rng
        steps = list(steps)
        mode = rng.choice(("sentence", "mid", "both"))
        # the mid-sentence phrase goes first, into one of the original steps
        if mode in ("mid", "both"):
            i = rng.randrange(len(steps))
            words = steps[i].split()
            phrase = rng.choice(self.reflection_phrases)
            if len(words) >= 4:
                cut = rng.randint(2, len(words) - 2)
                if not words[cut - 1][-1] in ",.;:?":
                    words[cut - 1] += ","
                steps[i] = " ".join(words[:cut] + [f"{phrase},"] + words[cut:])
            else:  # too short to split: put the phrase in front instead
                steps[i] = f"{phrase[:1].upper()}{phrase[1:]}, {steps[i][:1].lower()}{steps[i][1:]}"
        if mode in ("sentence", "both"):
            for _ in range(rng.randint(1, 2)):
                sentence = rng.choice(reflection_sentences([rng.choice(self.reflection_phrases)], subject))
                steps.insert(rng.randint(1, len(steps)), sentence)
        return steps

    def _pad(self, steps: list[str], scene: str, conclusion: str, answer: str) -> list[str]:
        """Pad with verbose restatements until the whole response exceeds 500 words."""
        steps = list(steps)
        n_words = len(" ".join(steps).split()) + len(conclusion.split()) + 2
        i = self._rng.randrange(len(_PAD_TEMPLATES))
        while n_words <= _VERBOSE_WORDS + 10:
            pad = _PAD_TEMPLATES[i % len(_PAD_TEMPLATES)].format(scene=scene)
            pad += f" This still points to {answer}."
            steps.insert(len(steps) - 1, pad)
            n_words += len(pad.split())
            i += 1
        return steps


def _strip(question: str) -> str:
    return question.replace("<image>", "").strip()
