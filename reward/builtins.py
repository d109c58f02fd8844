"""Built-in reward functions, usable by name as ``reward.fn=<name>``.

Each follows the native contract ``fn(response, ground_truth, **extra)`` (``extra`` carries the
row's ``data_source`` and ``extra_info``) and returns a float, a dict with ``overall``, or None
when the row cannot be scored (e.g. a yes/no reward on a ground truth that is not yes/no).

    openvlthinker    the OpenVLThinker GRPO reward (the default)
    format           1.0 for "<think>...</think> <answer>...</answer>", else 0.0
    multiple_choice  option letters ("B", "(B)", "B.", "B) text") or option text via extra_info["choices"]
    numeric          numbers within a tolerance: units, fractions, decimals, percent, LaTeX
    yes_no           yes/no (true/false) answers
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from fractions import Fraction

from reward.grading import (
    extract_answer,
    grade,
    normalize_answer,
    number_candidates,
    numbers_close,
)

_FORMAT = re.compile(r"<think>.*?</think>\s*<answer>.*?</answer>", re.DOTALL)


def format_reward(response: str, ground_truth: str, **_extra) -> float:
    """1.0 when the whole response (surrounding whitespace aside) is think-then-answer."""
    return 1.0 if _FORMAT.fullmatch(response.strip()) else 0.0


def openvlthinker(response: str, ground_truth: str, **_extra) -> dict[str, float]:
    """The reward of OpenVLThinker's GRPO stages (its EasyR1 ``r1v.py``), reproduced.

    Accuracy: the last ``<answer>...</answer>`` (the whole response when there is none) is
    correct when it matches the ground truth case-insensitively or is mathematically
    equivalent (:func:`reward.grading.grade`). Penalty, exactly as the original: when the
    response contains both ``</think>`` and ``<answer>`` and the text after the last
    ``</think>`` up to the next ``<answer>`` is empty after stripping, a correct answer earns
    0.5 instead of 1.0 (an incorrect one stays 0.0; the penalty never goes negative). The
    format match is returned as the part ``format`` for logging and does not enter ``overall``.

    Differences from the original, on purpose: the original takes the FIRST tag and misses
    tags spanning lines; its ``accuracy`` equals ``overall``, ours is plain correctness (1/0);
    grading errors count as unscorable instead of 0.0; text answers are not sent to sympy
    (mathruler says "on" == "no").
    """
    correct = grade(extract_answer(response, boxed=False), ground_truth)
    penalty = 0.0
    if "</think>" in response and "<answer>" in response:
        between = response.split("</think>")[-1].split("<answer>")[0].strip()
        if not between:
            penalty = 0.5
    return {
        "overall": (1.0 - penalty) if correct else 0.0,
        "accuracy": 1.0 if correct else 0.0,
        "format": format_reward(response, ground_truth),
    }


# --------------------------------------------------------------------------- multiple choice

_LETTER_PATTERNS = [
    re.compile(r"^\(?([A-Za-z])\)?[.):]?$"),  # B  (B)  B.  B)  B:
    re.compile(r"^\(([A-Za-z])\)\s*\S"),  # (B) text
    re.compile(r"^([A-Z])[.):]\s+\S"),  # B. text  B) text  B: text
    re.compile(
        r"^(?:the\s+)?(?:correct\s+|final\s+)?(?:answer|option|choice)\s*(?:is\s*)?:?\s*\(?([A-Za-z])\)?(?:[.):,]|\s|$)",
        re.IGNORECASE,
    ),
]


def _letter_of(answer: str) -> str | None:
    """The option letter an answer names, upper case, or None."""
    text = answer.strip().strip("$").strip()
    text = re.sub(r"^\\(?:text|mathrm|textbf)\{(.*)\}$", r"\1", text, flags=re.DOTALL).strip()
    for pattern in _LETTER_PATTERNS:
        m = pattern.match(text)
        if m:
            return m.group(1).upper()
    return None


def _options(extra_info) -> dict[str, str]:
    """extra_info["choices"] as {letter: text}: a list (A, B, C, ... in order) or a dict."""
    if not isinstance(extra_info, Mapping) or "choices" not in extra_info:
        return {}
    choices = extra_info["choices"]
    if isinstance(choices, Mapping):
        return {str(k).strip().upper(): str(v) for k, v in choices.items()}
    if isinstance(choices, (str, bytes)) or not hasattr(choices, "__iter__"):
        raise TypeError(f"extra_info['choices'] must be a list or a dict, got {type(choices).__name__}")
    items = [str(c) for c in choices]  # lists, tuples and numpy arrays (parquet) alike
    if len(items) > 26:
        raise ValueError(f"extra_info['choices'] has {len(items)} options; at most 26 have letters")
    return {chr(ord("A") + i): text for i, text in enumerate(items)}


def _letter_by_text(answer: str, options: dict[str, str]) -> str | None:
    """The single option whose text the answer equals (normalised or graded); None if none or several."""
    norm = normalize_answer(answer)
    exact = [letter for letter, text in options.items() if normalize_answer(text) == norm]
    if len(exact) == 1:
        return exact[0]
    if exact:
        return None
    graded = [letter for letter, text in options.items() if grade(answer, text)]
    return graded[0] if len(graded) == 1 else None


def multiple_choice(response: str, ground_truth: str, *, extra_info=None, **_extra) -> float | None:
    """1.0 when the response picks the ground-truth option, else 0.0; None for an unusable ground truth.

    The answer (see :func:`reward.grading.extract_answer`) may be a letter ("B", "(B)", "B.",
    "B) 12", "Option B", "The answer is (B)") or, when ``extra_info["choices"]`` lists the
    options (a list in A, B, C order, or a dict letter -> text), an option's text. The ground
    truth may also be a letter or an option's text. A letter outside the given options is wrong.
    """
    options = _options(extra_info)
    truth = _letter_of(ground_truth)
    if truth is None and options:
        truth = _letter_by_text(ground_truth, options)
    if truth is None or (options and truth not in options):
        return None
    answer = extract_answer(response)
    picked = _letter_of(answer)
    if picked is None and options:
        picked = _letter_by_text(answer, options)
    if picked is None or (options and picked not in options):
        return 0.0
    return 1.0 if picked == truth else 0.0


# --------------------------------------------------------------------------- numeric

NUMERIC_REL_TOL = 1e-4
NUMERIC_ABS_TOL = 1e-9


def _numeric_values(answer: str) -> list[Fraction]:
    """Plain-number readings of an answer, else the value of a numeric LaTeX expression."""
    values = number_candidates(answer)
    if values:
        return values
    if not re.search(r"\d|\\pi|\\sqrt|\\frac|\\infty", answer):
        return []
    from math_verify import parse  # only for expressions such as 2\pi or \sqrt{2}

    for parsed in parse(answer if "$" in answer else f"${answer}$", parsing_timeout=None):
        if getattr(parsed, "is_number", False) and getattr(parsed, "is_real", False):
            value = complex(parsed.evalf(30)).real
            if value == value and abs(value) != float("inf"):
                return [Fraction(value)]
    return []


def numeric(response: str, ground_truth: str, *, extra_info=None, **_extra) -> float | None:
    """1.0 when the answer's number is within tolerance of the ground truth's, else 0.0.

    Tolerance: relative ``rel_tol`` (default 1e-4) or absolute ``abs_tol`` (default 1e-9),
    overridable per row through ``extra_info``. Units from a fixed list, currency signs and
    thousands separators are ignored; ``50%`` matches 0.5 and 50. Returns None when the ground
    truth is not a number (the row cannot be scored this way).
    """
    rel_tol, abs_tol = NUMERIC_REL_TOL, NUMERIC_ABS_TOL
    if isinstance(extra_info, Mapping):
        rel_tol = float(extra_info["rel_tol"]) if "rel_tol" in extra_info else rel_tol
        abs_tol = float(extra_info["abs_tol"]) if "abs_tol" in extra_info else abs_tol
    truths = _numeric_values(ground_truth)
    if not truths:
        return None
    predictions = _numeric_values(extract_answer(response))
    close = any(numbers_close(p, t, rel_tol, abs_tol) for p in predictions for t in truths)
    return 1.0 if close else 0.0


# --------------------------------------------------------------------------- yes / no

_YES = {"yes", "true", "correct", "y"}
_NO = {"no", "false", "incorrect", "n"}


def _yes_no(answer: str) -> str | None:
    words = re.findall(r"[a-z]+", normalize_answer(answer))
    if not words:
        return None
    if words[0] in _YES:
        return "yes"
    if words[0] in _NO:
        return "no"
    return None


def yes_no(response: str, ground_truth: str, **_extra) -> float | None:
    """1.0 when the answer's first word says the same as the ground truth (yes/true vs no/false).

    None when the ground truth is not a yes/no answer; 0.0 when the response's answer is neither.
    """
    truth = _yes_no(ground_truth)
    if truth is None:
        return None
    return 1.0 if _yes_no(extract_answer(response)) == truth else 0.0


BUILTINS = {
    "openvlthinker": openvlthinker,
    "format": format_reward,
    "multiple_choice": multiple_choice,
    "numeric": numeric,
    "yes_no": yes_no,
}


def warm_up() -> None:
    """Run the graders once, so a worker's first sample does not pay for lazy initialisation
    (math-verify's LaTeX parser takes most of a second the first time)."""
    grade("2\\pi", "6.283185")
    grade("\\frac{1}{2}", "x")
