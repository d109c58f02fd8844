"""Answer extraction, normalisation and grading: the one place that decides "is this answer right".

Training rewards (reward/builtins.py) and evaluation code both import this module, so a
model is judged the same way while it learns and when it is measured.

Public API:

    extract_answer(text, *, boxed=True) -> str
        The final answer in a model response: the content of the LAST <answer>...</answer>
        tag; else the content of the last \\boxed{...}; else the whole text. Stripped.
    normalize_answer(s) -> str
        A canonical string for exact comparison (case, wrappers such as $...$, \\boxed{},
        \\text{}, "x = ...", option letters like "(B)", trailing periods, spacing).
    grade(pred, ground_truth) -> bool
        True when the prediction is the ground truth: normalised exact match, equal numbers
        (fractions, decimals, percent, LaTeX \\frac, thousands separators, common units), or
        mathematical equivalence by mathruler's grade_answer or math-verify.
    parse_number(s) -> Fraction | None
        The exact value of a plain numeric answer ("3/4", "0.75", "\\frac{3}{4}", "1,000",
        "12 cm", "50%" -> 1/2), or None when it is not a plain number.

No timeouts here: sympy can be slow on adversarial input. Inside training, these run in the
reward worker pool (reward.load), which enforces a wall-clock timeout per sample; code that
grades untrusted text elsewhere should do the same. math-verify is called with its
signal-based timeouts disabled, so these functions are safe in any thread.
"""

from __future__ import annotations

import functools
import logging
import re
from fractions import Fraction

from math_verify import parse as _mv_parse
from math_verify import verify as _mv_verify
from mathruler.grader import grade_answer as _mathruler_grade

__all__ = ["extract_answer", "normalize_answer", "grade", "parse_number"]


class _DropTimeoutDisabledWarning(logging.Filter):
    """math-verify warns once per process that its timeout is off; we turned it off on purpose."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Timeout is disabled")


for _name in ("math_verify.parser", "math_verify.grader"):
    logging.getLogger(_name).addFilter(_DropTimeoutDisabledWarning())


# --------------------------------------------------------------------------- extraction

_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)


def _last_boxed(text: str) -> str | None:
    """Content of the last \\boxed{...} (or \\fbox{...}), braces balanced; None if absent."""
    start = max(text.rfind("\\boxed{"), text.rfind("\\fbox{"))
    if start == -1:
        return None
    i = text.index("{", start) + 1
    depth = 1
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i:j]
    return None  # unbalanced: a truncated response


def extract_answer(text: str, *, boxed: bool = True) -> str:
    """The final answer in a model response, stripped.

    The content of the last ``<answer>...</answer>`` (a ``\\boxed{}`` inside it is unwrapped);
    else, when ``boxed`` is true, the content of the last ``\\boxed{...}``; else the whole text.
    """
    tags = _ANSWER_TAG.findall(text)
    if tags:
        inner = tags[-1]
        inside = _last_boxed(inner)
        return (inside if inside is not None else inner).strip()
    if boxed:
        inside = _last_boxed(text)
        if inside is not None:
            return inside.strip()
    return text.strip()


# --------------------------------------------------------------------------- normalisation

_MATH_DELIMS = [("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")]
_WRAPPERS = re.compile(r"^\\(?:boxed|fbox|text|textbf|mathrm|mathbf|textrm|mbox)\{(.*)\}$", re.DOTALL)
_LATEX_SPACES = re.compile(r"\\[,;:! ]|\\quad|\\qquad")
_ASSIGNMENT = re.compile(r"^[a-z]\s*=\s*(?=\S)")
_OPTION_LETTER = re.compile(r"^\(?([a-z])\)?[.):]?$")


def _unwrap(s: str) -> str:
    """Strip math delimiters and whole-string \\boxed{}/\\text{}-style wrappers, repeatedly."""
    while True:
        before = s
        for left, right in _MATH_DELIMS:
            if len(s) > len(left) + len(right) and s.startswith(left) and s.endswith(right):
                s = s[len(left) : -len(right)].strip()
        m = _WRAPPERS.match(s)
        if m and _balanced(m.group(1)):
            s = m.group(1).strip()
        if s == before:
            return s


def _balanced(s: str) -> bool:
    depth = 0
    for ch in s:
        depth += (ch == "{") - (ch == "}")
        if depth < 0:
            return False
    return depth == 0


def normalize_answer(s: str) -> str:
    """A canonical form of an answer string for exact comparison.

    Lower case; math delimiters and whole-string ``\\boxed{}``/``\\text{}`` wrappers removed;
    LaTeX spacing commands dropped; whitespace collapsed; a trailing period and surrounding
    quotes removed; a single-variable assignment ``x = 3`` reduced to ``3``; an option letter
    written ``(B)``, ``B.``, ``B)`` or ``B:`` reduced to ``b``. Numbers and units are left to
    :func:`parse_number`, so ``normalize_answer`` never changes what a text answer says.
    """
    s = _unwrap(s.strip())
    s = _LATEX_SPACES.sub(" ", s).replace("\\%", "%")
    s = " ".join(s.split()).lower()
    s = s.strip("\"'`")
    if s.endswith(".") and not s.endswith(".."):
        s = s[:-1].rstrip()
    s = _ASSIGNMENT.sub("", s)
    s = _unwrap(s)
    m = _OPTION_LETTER.match(s)
    if m:
        return m.group(1)
    return s


# --------------------------------------------------------------------------- numbers

# Units that may follow a number ("12 cm", "45°", "3 km/h"); anything else ("3x") is not a unit.
_UNIT_WORDS = (
    "mm cm dm m km in inch inches ft foot feet yd yard yards mi mile miles meter meters metre metres "
    "millimeter millimeters centimeter centimeters kilometer kilometers "
    "unit units sq square cubic deg degree degrees rad radian radians "
    "s sec secs second seconds min mins minute minutes h hr hrs hour hours day days week weeks "
    "month months year years "
    "mg g kg gram grams kilogram kilograms lb lbs pound pounds oz ton tons "
    "ml l liter liters litre litres gallon gallons "
    "dollar dollars cent cents usd euro euros yuan "
    "percent people persons students items times"
).split()
_UNIT = r"(?:%s)" % "|".join(sorted(map(re.escape, _UNIT_WORDS), key=len, reverse=True))
_UNIT_SUFFIX = re.compile(
    rf"^(?:\s*(?:{_UNIT})(?:\s*(?:\^\s*\{{?[23]\}}?|[²³]))?(?:\s*/\s*(?:{_UNIT}))?)+\s*$", re.IGNORECASE
)
_DEGREE = re.compile(r"(?:\^\s*\{?\s*\\circ\s*\}?|\\circ|°|\\degree)\s*$")
_NUMBER = re.compile(r"^([+-]?)\s*(\d+(?:\.\d*)?|\.\d+)(?:[eE]([+-]?\d+))?$")
_FRACTION = re.compile(r"^([+-]?)\s*(\d+)\s*/\s*(\d+)$")
_LATEX_FRACTION = re.compile(r"^([+-]?)\s*\\[dt]?frac\s*\{\s*([+-]?\d+)\s*\}\s*\{\s*([+-]?\d+)\s*\}$")
_THOUSANDS = re.compile(r"^[+-]?\d{1,3}(?:,\d{3})+(?:\.\d+)?$")


def _strip_units(s: str) -> tuple[str, bool]:
    """(the numeric part, whether a percent sign was present), units and currency removed."""
    s = s.replace("\\%", "%").replace("\\$", "$").replace("{,}", ",")
    s = re.sub(r"\\(?:text|mathrm|mbox|textrm)\{([^{}]*)\}", r" \1 ", s)  # \text{cm} -> cm
    s = _LATEX_SPACES.sub(" ", s).strip()
    s = _DEGREE.sub("", s).strip()
    percent = False
    if s.endswith("%"):
        percent, s = True, s[:-1].strip()
    else:
        m = re.search(r"\d\.?\s*([a-zA-Z].*)$", s)
        if m and _UNIT_SUFFIX.match(m.group(1)):
            unit = m.group(1)
            percent = unit.strip().lower() == "percent"
            s = s[: m.start(1)].strip()
    for sign in ("$", "€", "£", "¥"):
        s = s.replace(sign, "")  # a currency symbol may sit before or after the number
    return s.strip(), percent


def _plain_number(s: str) -> Fraction | None:
    if _THOUSANDS.match(s):
        s = s.replace(",", "")
    m = _NUMBER.match(s)
    if m:
        sign, digits, exp = m.groups()
        if exp is not None and abs(int(exp)) > 400:
            return None  # keep Fraction arithmetic cheap; such answers go to the symbolic graders
        value = Fraction(digits) * (Fraction(10) ** int(exp or 0))
        return -value if sign == "-" else value
    m = _FRACTION.match(s) or _LATEX_FRACTION.match(s)
    if m:
        sign, num, den = m.groups()
        if int(den) == 0:
            return None
        value = Fraction(int(num), int(den))
        return -value if sign == "-" else value
    return None


def _number_and_percent(s: str) -> tuple[Fraction, bool] | None:
    text = _unwrap(s.strip())
    text = re.sub(r"^[a-zA-Z]\s*=\s*", "", text)  # "x = 3"
    text = _unwrap(text.rstrip(".").strip())  # a sentence's final period ("12 cm.")
    number, percent = _strip_units(text)
    value = _plain_number(number)
    return None if value is None else (value, percent)


def parse_number(s: str) -> Fraction | None:
    """The exact value of a plain numeric answer, or None when ``s`` is not a plain number.

    Accepts integers, decimals, scientific notation, ``a/b``, ``\\frac{a}{b}``, thousands
    separators (``1,000``), math delimiters, ``x = ...``, a currency sign, a percent sign
    (``50%`` -> 1/2) and a trailing unit from a fixed list (``12 cm``, ``45°``, ``3 km/h``).
    Expressions (``2\\pi``, ``\\sqrt{2}``, ``3x``) are not plain numbers.
    """
    parsed = _number_and_percent(s)
    if parsed is None:
        return None
    value, percent = parsed
    return value / 100 if percent else value


def number_candidates(s: str) -> list[Fraction]:
    """The values a plain numeric answer may mean: ``[v]``, or ``[v/100, v]`` for ``v%``.

    A percent is ambiguous in answers ("50%" for a ground truth of 50 or of 0.5), so both
    readings are kept; empty when ``s`` is not a plain number.
    """
    parsed = _number_and_percent(s)
    if parsed is None:
        return []
    value, percent = parsed
    return [value / 100, value] if percent else [value]


def numbers_close(a: Fraction, b: Fraction, rel_tol: float, abs_tol: float) -> bool:
    """|a - b| <= max(rel_tol * max(|a|, |b|), abs_tol), exactly (no float rounding)."""
    diff = abs(a - b)
    return diff <= Fraction(abs_tol) or diff <= Fraction(rel_tol) * max(abs(a), abs(b))


# --------------------------------------------------------------------------- grading

# Close to math-verify's default rounding to 6 decimals: 0.333333 counts as 1/3, 0.333 does not.
_NUMERIC_REL_TOL = 1e-6
_NUMERIC_ABS_TOL = 5e-7


def _looks_mathematical(normalized: str) -> bool:
    """A digit, a LaTeX command, an operator or a math symbol. Text answers ("no", "blue") are
    compared as text only: symbolic graders read words as products of symbols ("no" == "on")."""
    return bool(re.search(r"[0-9\\π√∞^*+/=<>]", normalized))


def _reads_like_text(s: str) -> bool:
    """A sentence or a whole response rather than an answer: three or more plain words outside
    LaTeX commands, a \\boxed{} inside, or tags. math-verify searches such text for something to
    grade ("The answer is 12." == 12, "so \\boxed{6}" == 6), which would grade text as an answer."""
    if "\\boxed" in s or "\\fbox" in s or "<answer>" in s or "</think>" in s:
        return True
    s = re.sub(r"\\[a-zA-Z]+(\{[^{}]*\})?", " ", s)
    return len(re.findall(r"\b[a-zA-Z]{2,}\b", s)) >= 3


def _math_verify_equal(pred: str, ground_truth: str) -> bool:
    def wrap(s: str) -> str:
        return s if ("$" in s or "\\boxed" in s) else f"${s}$"

    gold = _mv_parse(wrap(ground_truth), parsing_timeout=None)
    target = _mv_parse(wrap(pred), parsing_timeout=None)
    if not gold or not target or _numerically_apart(gold, target):
        return False
    return bool(_mv_verify(gold, target, timeout_seconds=None))


def _numerically_apart(gold: list, target: list) -> bool:
    """True when every parsed reading of both sides is a constant and each pair differs by more
    than 1e-4 relative: then verify() cannot find them equal (it rounds to 6 decimals and
    symbolic equality implies numeric equality), and its sympy simplify, most of a wrong
    answer's grading time, is skipped. Anything else (symbols, sets, strings) goes to verify()."""
    try:
        values = []
        for side in (gold, target):
            numbers = [complex(x.evalf(20)) for x in side if not isinstance(x, str) and getattr(x, "is_number", False)]
            if len(numbers) != sum(not isinstance(x, str) for x in side) or not numbers:
                return False
            values.append(numbers)
        if {x.strip() for x in gold if isinstance(x, str)} & {x.strip() for x in target if isinstance(x, str)}:
            return False
        return all(abs(g - t) > 1e-4 * max(abs(g), abs(t)) + 1e-9 for g in values[0] for t in values[1])
    except (TypeError, ValueError, ArithmeticError, AttributeError):
        return False


def grade(pred: str, ground_truth: str) -> bool:
    """True when the predicted answer is the ground truth.

    In order: a normalised exact match (case-insensitive, see :func:`normalize_answer`);
    when both are plain numbers, numeric equality decides alone (tolerance 1e-6 relative or
    5e-7 absolute; a percent may be read as v or v/100); a text ground truth stops here;
    otherwise mathruler's ``grade_answer``, then math-verify's ``verify``, may prove
    equivalence (``2\\pi`` vs ``6.283185``, ``\\sqrt{4}`` vs ``2``).

    ``pred`` is an extracted answer, not a whole response (call :func:`extract_answer`
    first). math-verify is skipped when ``pred`` reads like a sentence or a response, since it
    would search the text for a number and grade that.
    """
    if not isinstance(pred, str) or not isinstance(ground_truth, str):
        raise TypeError(f"grade() takes strings, got {type(pred).__name__} and {type(ground_truth).__name__}")
    if len(pred) + len(ground_truth) <= _CACHED_LENGTH:
        return _grade_cached(pred, ground_truth)
    return _grade(pred, ground_truth)


# A group of rollouts often repeats the same answer, and symbolic grading costs tens of ms:
# remember short pairs (grading is a pure function), not whole responses.
_CACHED_LENGTH = 400


def _grade(pred: str, ground_truth: str) -> bool:
    norm_pred, norm_truth = normalize_answer(pred), normalize_answer(ground_truth)
    if not norm_pred or not norm_truth:
        return False
    if norm_pred == norm_truth:
        return True
    truth_numbers, pred_numbers = number_candidates(ground_truth), number_candidates(pred)
    if truth_numbers and pred_numbers:
        return any(numbers_close(p, t, _NUMERIC_REL_TOL, _NUMERIC_ABS_TOL) for p in pred_numbers for t in truth_numbers)
    if not _looks_mathematical(norm_truth):
        return False
    if _mathruler_grade(pred.strip(), ground_truth.strip()):
        return True
    if _reads_like_text(_unwrap(pred.strip())):
        return False
    return _math_verify_equal(pred.strip(), ground_truth.strip())


_grade_cached = functools.lru_cache(maxsize=1 << 16)(_grade)
