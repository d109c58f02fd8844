"""Grading one benchmark response: extract the answer, map it to an option letter, compare.

Answer normalisation and equivalence live in `reward.grading` (the same judge as the training
reward); this module only adds what a benchmark question knows and a bare reward does not:

1. Extraction (`reward.grading.extract_answer`): the last <answer>...</answer>; else the last
   \\boxed{} (base models prompted for it); else the whole response.
2. Multiple choice: "B", "(B)", "B.", "B)", "(B) 12 cm", "Option B" and the option's own text
   ("12 cm" or "12" when option B is "12 cm": equal after normalisation or the same plain
   number; it must match one option only) all become "B".
3. Free-form: the benchmark's unit ("cm" in MathVista) is removed from the end; a MathVista float
   answer with a `precision` is compared after rounding the prediction to that many decimals
   (MathVista's own scoring rule).
4. Correct when `reward.grading.grade(prediction, ground_truth)` holds (case-insensitive exact
   match after normalisation, equal numbers, or mathruler/math-verify equivalence).

Every record also carries `correct_original`: the rule of OpenVLThinker's released evaluation
scripts, kept verbatim so our numbers can be set beside the paper's: the answer must come from
an <answer> tag or a \\boxed{} (no whole-text fallback, no option-text mapping), and it is
correct when it equals the (letter-mapped) ground truth case-insensitively or mathruler's
`grade_answer` accepts it.
"""

from __future__ import annotations

import re
from typing import Any

from mathruler.grader import grade_answer as _original_grade_answer

from ovlt_rl.eval.benchmarks import LETTERS, EvalSample
from reward.grading import extract_answer, grade, normalize_answer, parse_number

_ANSWER_TAG = re.compile(r"<answer>.*?</answer>", re.DOTALL)
_BOXED = re.compile(r"\\(?:boxed|fbox)\{")
# "(B) 12 cm", "B. 12 cm", "B: twelve", "B) x": a letter, a separator, then the option's text.
_LETTER_THEN_TEXT = re.compile(r"^\(?([A-Z])\s*[\).:]\s+\S")
# "Option B", "the answer is (B)", "Choice: B."
_LETTER_AFTER_WORD = re.compile(
    r"^(?:the\s+)?(?:correct\s+)?(?:option|choice|answer)(?:\s+is)?\s*:?\s*\(?([A-Za-z])\)?\.?$", re.IGNORECASE
)


def answer_source(response: str) -> str:
    """Where `extract_answer` found the answer: "answer_tag", "boxed" or "text" (the whole response)."""
    if _ANSWER_TAG.search(response):
        return "answer_tag"
    if _BOXED.search(response):
        return "boxed"
    return "text"


def choice_letter(answer: str, choices: list[str]) -> str | None:
    """The option letter an extracted answer names, or None.

    `choices` may be empty for a multiple-choice question whose options are in the image
    (then any single letter is accepted as a letter, and option texts can't be matched).
    """
    allowed = LETTERS[: len(choices)] if choices else LETTERS
    norm = normalize_answer(answer)
    if len(norm) == 1 and norm.upper() in allowed:
        return norm.upper()
    text = answer.strip()
    for pattern in (_LETTER_THEN_TEXT, _LETTER_AFTER_WORD):
        m = pattern.match(text)
        if m and m.group(1).upper() in allowed:
            return m.group(1).upper()
    matches = [LETTERS[i] for i, option in enumerate(choices) if _same_option_text(text, str(option))]
    return matches[0] if len(matches) == 1 else None


def _same_option_text(answer: str, option: str) -> bool:
    """The answer restates the option: equal after normalisation, or the same plain number
    ("12" for "12 cm"). Deliberately not `grade()`'s symbolic equivalence, which finds a number
    inside a whole sentence and would turn prose into an option."""
    if normalize_answer(answer) == normalize_answer(option):
        return True
    a, o = parse_number(answer), parse_number(option)
    return a is not None and a == o


def strip_unit(answer: str, unit: str) -> str:
    """`answer` without a trailing `unit` ("12 cm" -> "12" for unit "cm"); unchanged otherwise."""
    unit = unit.strip()
    if unit and answer.rstrip().lower().endswith(unit.lower()):
        head = answer.rstrip()[: -len(unit)].rstrip()
        if head:
            return head
    return answer


def _equal_at_precision(pred: str, truth: str, precision: int) -> bool:
    p, t = parse_number(pred), parse_number(truth)
    if p is None or t is None:
        return False
    return round(float(p), precision) == round(float(t), precision)


def grade_response(sample: EvalSample, response: str) -> dict[str, Any]:
    """Grade one response to `sample`: the per-sample record (without the prompt/response text).

    Keys: extracted, extracted_from, prediction (after letter/unit mapping), ground_truth,
    correct, correct_original.
    """
    source = answer_source(response)
    extracted = extract_answer(response)
    truth = sample.ground_truth
    if sample.question_type == "multi_choice":
        prediction = choice_letter(extracted, sample.choices) or extracted
    else:
        prediction = strip_unit(extracted, sample.unit)
    correct = grade(prediction, truth)
    if not correct and sample.precision is not None:
        correct = _equal_at_precision(prediction, truth, sample.precision)
    original = source != "text" and (extracted.lower() == truth.lower() or _original_grade_answer(extracted, truth))
    return {
        "extracted": extracted,
        "extracted_from": source,
        "prediction": prediction,
        "ground_truth": truth,
        "correct": bool(correct),
        "correct_original": bool(original),
    }
