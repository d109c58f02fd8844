"""reward.grading: answer extraction, normalisation and grading on tricky answers."""

from fractions import Fraction

import pytest

from reward.grading import extract_answer, grade, normalize_answer, parse_number


@pytest.mark.parametrize(
    "text, expected",
    [
        ("<think>hmm</think> <answer> 42 </answer>", "42"),
        ("<answer>1</answer> wait, no: <answer>2</answer>", "2"),  # several tags: the last
        ("<answer>\nx = 3\n</answer>", "x = 3"),  # a tag spanning lines
        ("<answer>The answer is \\boxed{\\frac{1}{2}}</answer>", "\\frac{1}{2}"),  # boxed inside a tag
        ("so it is \\boxed{\\frac{1}{2}} and \\boxed{\\sqrt{3}}", "\\sqrt{3}"),  # last boxed, nested braces
        ("  The answer is 7.  ", "The answer is 7."),  # no tag: the whole text, stripped
        ("<answer>5", "<answer>5"),  # an unclosed tag is not an answer
        ("\\boxed{3", "\\boxed{3"),  # nor an unbalanced box
    ],
)
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


def test_extract_answer_without_boxed_fallback():
    assert extract_answer("it is \\boxed{3}", boxed=False) == "it is \\boxed{3}"
    assert extract_answer("<answer>\\boxed{3}</answer>", boxed=False) == "3"


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("  Yes. ", "yes"),
        ("(B)", "b"),
        ("B.", "b"),
        ("B)", "b"),
        ("$x = 3$", "3"),
        ("\\boxed{\\text{Blue}}", "blue"),
        ("\\( 12 \\)", "12"),
        ("The   big  one", "the big one"),
        ("'red'", "red"),
        ("(1, 2)", "(1, 2)"),  # a tuple is not an option letter
    ],
)
def test_normalize_answer(raw, expected):
    assert normalize_answer(raw) == expected


@pytest.mark.parametrize(
    "raw, value",
    [
        ("0.75", Fraction(3, 4)),
        ("3/4", Fraction(3, 4)),
        ("\\frac{3}{4}", Fraction(3, 4)),
        ("-\\dfrac{1}{2}", Fraction(-1, 2)),
        ("1,000", Fraction(1000)),
        ("1{,}000", Fraction(1000)),
        ("12 cm", Fraction(12)),
        ("12\\,\\text{cm}", Fraction(12)),
        ("3 km/h", Fraction(3)),
        ("45°", Fraction(45)),
        ("45^\\circ", Fraction(45)),
        ("50%", Fraction(1, 2)),
        ("50\\%", Fraction(1, 2)),
        ("$5", Fraction(5)),
        ("x = 3", Fraction(3)),
        ("1.5e3", Fraction(1500)),
        ("3x", None),  # an expression, not a number with a unit
        ("2\\pi", None),
        ("1/0", None),
        ("blue", None),
    ],
)
def test_parse_number(raw, value):
    assert parse_number(raw) == value


@pytest.mark.parametrize(
    "pred, truth",
    [
        ("0.5", "\\frac{1}{2}"),  # decimal vs LaTeX fraction
        ("1/2", "0.5"),
        ("\\frac{3}{4}", "0.75"),
        ("3.0", "3"),
        ("3.5", "7/2"),
        ("0.333333", "1/3"),  # like math-verify's 6-decimal rounding
        ("x=3", "3"),
        ("12 cm", "12"),  # units stripped
        ("90^\\circ", "90"),
        ("50%", "0.5"),  # a percent may mean v/100 ...
        ("50%", "50"),  # ... or v
        ("1000", "1,000"),
        ("  Blue ", "blue"),  # whitespace and case
        ("(B)", "B"),
        ("\\boxed{7}", "7"),
        ("2\\pi", "6.283185"),  # math-verify
        ("\\sqrt{4}", "2"),  # mathruler / sympy
        ("\\pi/2", "\\frac{\\pi}{2}"),
        ("x^2+2x+1", "(x+1)^2"),
        ("(1,2)", "(1, 2)"),
    ],
)
def test_grade_accepts_equivalent_answers(pred, truth):
    assert grade(pred, truth)


@pytest.mark.parametrize(
    "pred, truth",
    [
        ("16", "15"),
        ("0.333", "1/3"),  # not close enough
        ("3x", "3"),  # not a unit
        ("on", "no"),  # mathruler alone says equal (n*o == o*n); text is compared as text
        ("B", "A"),
        ("", "15"),
        ("15", ""),
        ("The answer is 12.", "12"),  # prose is not an extracted answer
        ("2\\pi", "6.28"),
        ("yes", "no"),
    ],
)
def test_grade_rejects_different_answers(pred, truth):
    assert not grade(pred, truth)


def test_grade_rejects_non_strings():
    with pytest.raises(TypeError, match="strings"):
        grade(15, "15")


def test_grade_works_outside_the_main_thread():
    # math-verify's own timeouts use signal.alarm (main thread only); grade() turns them off
    import threading

    out = []
    thread = threading.Thread(target=lambda: out.append((grade("2\\pi", "6.283185"), grade("x^2", "x*x"))))
    thread.start()
    thread.join(timeout=60)
    assert out == [(True, True)]


@pytest.mark.parametrize("pred, truth", [("x^2", "x*x"), ("b+a", "a+b"), ("2x", "x+x")])
def test_grade_symbolic_ground_truths_without_digits(pred, truth):
    assert grade(pred, truth)
