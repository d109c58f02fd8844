"""Answer extraction and grading, per benchmark, on samples loaded from the fixture copies."""

from __future__ import annotations

import pytest

from ovlt_rl.eval.benchmarks import EvalSample, load_benchmark
from ovlt_rl.eval.grading import answer_source, choice_letter, grade_response, strip_unit


def _by_id(samples):
    return {s.id: s for s in samples}


@pytest.fixture
def vista(mathvista_dir):
    return _by_id(load_benchmark("mathvista", mathvista_dir))


@pytest.fixture
def verse(mathverse_dir):
    return _by_id(load_benchmark("mathverse", mathverse_dir))


@pytest.fixture
def vision(mathvision_dir):
    return _by_id(load_benchmark("mathvision", mathvision_dir))


THINK = "<think>Segment AB spans four units of 3 cm each.</think> "


@pytest.mark.parametrize(
    "response, correct, original",
    [
        (THINK + "<answer>B</answer>", True, True),
        (THINK + "<answer>(B)</answer>", True, True),
        (THINK + "<answer>B.</answer>", True, False),  # mathruler rejects "B." against "B"
        (THINK + "<answer>12 cm</answer>", True, False),  # the option's text -> B (not in the original rule)
        (THINK + "<answer>(B) 12 cm</answer>", True, False),
        (THINK + "<answer>Option B</answer>", True, False),
        (THINK + "<answer>A</answer>", False, False),
        (THINK + "<answer>3 cm</answer>", False, False),  # option A's text
        ("<answer>A</answer> then <answer>B</answer>", True, True),  # the last tag counts
        ("Therefore the answer is \\boxed{B}.", True, True),  # base model style
        ("B", True, False),  # no tag: the whole text, which the original rule rejects
        ("I think it is option B because AB is 12 cm.", False, False),
    ],
)
def test_mathvista_multiple_choice(vista, response, correct, original):
    rec = grade_response(vista["1"], response)
    assert rec["ground_truth"] == "B"
    assert (rec["correct"], rec["correct_original"]) == (correct, original), rec


@pytest.mark.parametrize(
    "response, correct",
    [
        ("<answer>14</answer>", True),
        ("<answer>14 cm</answer>", True),  # the sample's unit
        ("<answer>14cm</answer>", True),
        ("<answer>x = 14</answer>", True),
        ("<answer>14.0</answer>", True),
        ("<answer>15 cm</answer>", False),
        ("<answer></answer>", False),
        ("The perimeter is 14", False),  # no tag, and the sentence is not an answer
    ],
)
def test_mathvista_free_form_with_unit(vista, response, correct):
    assert grade_response(vista["2"], response)["correct"] is correct


@pytest.mark.parametrize(
    "response, correct",
    [("<answer>0.67</answer>", True), ("<answer>0.667</answer>", True), ("<answer>2/3</answer>", True), ("<answer>0.7</answer>", False)],
)
def test_mathvista_float_precision(vista, response, correct):
    # precision 2: the prediction is rounded to two decimals, as MathVista scores it.
    assert grade_response(vista["3"], response)["correct"] is correct


def test_mathvista_yes_no_choice(vista):
    s = vista["4"]
    assert grade_response(s, "<answer>Yes</answer>")["prediction"] == "A"
    assert grade_response(s, "<answer>yes</answer>")["correct"]
    assert not grade_response(s, "<answer>No</answer>")["correct"]


def test_mathverse(verse):
    first, vision_only, free = verse["1"], verse["2"], verse["3"]
    assert grade_response(first, "<answer>B</answer>")["correct"]
    assert grade_response(first, "<answer>40°</answer>")["prediction"] == "B"  # choices parsed from the text
    assert not grade_response(first, "<answer>50°</answer>")["correct"]
    assert grade_response(vision_only, "<answer>(B)</answer>")["correct"]  # options only in the image
    assert not grade_response(vision_only, "<answer>40°</answer>")["correct"]  # nothing to map option text to
    assert grade_response(free, "<think>3*3</think><answer>9</answer>")["correct"]
    assert grade_response(free, "<answer>\\boxed{9}</answer>")["correct"]
    assert not grade_response(free, "<answer>6</answer>")["correct"]


def test_mathvision(vision):
    letters, free, numeric = vision["1"], vision["2"], vision["3"]
    assert grade_response(letters, "<answer>C</answer>")["correct"]
    assert not grade_response(letters, "<answer>D</answer>")["correct"]
    assert grade_response(numeric, "<answer>14</answer>")["prediction"] == "C"
    assert grade_response(numeric, "<answer>(C) 14</answer>")["correct"]
    assert not grade_response(numeric, "<answer>12</answer>")["correct"]
    assert grade_response(free, "$\\boxed{7}$")["correct"]
    assert not grade_response(free, "<answer>8</answer>")["correct"]


def test_choice_letter_edge_cases():
    assert choice_letter("E", ["a", "b", "c", "d"]) is None  # out of range
    assert choice_letter("2", ["2", "2.0", "3"]) is None  # matches two options: ambiguous
    assert choice_letter("3", ["2", "2.0", "3"]) == "C"
    assert choice_letter("A cat", ["dog", "cat"]) is None  # a sentence starting with "A" is not a letter
    assert choice_letter("the answer is (b)", ["x", "y"]) == "B"


def test_strip_unit_and_source():
    assert strip_unit("12 cm", "cm") == "12"
    assert strip_unit("12", "cm") == "12"
    assert strip_unit("cm", "cm") == "cm"  # nothing left: keep the text
    assert strip_unit("12 cm", "") == "12 cm"
    assert answer_source("<think>x</think><answer>1</answer>") == "answer_tag"
    assert answer_source("so \\boxed{1}") == "boxed"
    assert answer_source("1") == "text"


def test_synthetic_compare_choices():
    s = EvalSample(id="0", benchmark="synthetic", prompt=[{"role": "user", "content": "<image>Which?"}], images=[b""],
                   ground_truth="A", choices=["A", "B"], question_type="multi_choice")
    assert grade_response(s, "<answer>A</answer>")["correct"]
    assert not grade_response(s, "<answer>B</answer>")["correct"]
