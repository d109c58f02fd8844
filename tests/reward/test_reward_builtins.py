"""The built-in rewards on tricky answers (called directly), and one through the worker pool by name."""

import pytest

import reward
from reward.builtins import BUILTINS, format_reward, multiple_choice, numeric, openvlthinker, yes_no
from reward.spec import BUILTIN_NAMES, parse_spec

THINK = "<think>Two rows of three squares: 2 x 3 = 6.</think>"


# --------------------------------------------------------------------------- openvlthinker


def test_openvlthinker_correct_with_reasoning_summary():
    out = openvlthinker(f"{THINK} So there are six. <answer>6</answer>", "6")
    assert out == {"overall": 1.0, "accuracy": 1.0, "format": 0.0}  # text between: not the strict format


def test_openvlthinker_empty_summary_halves_a_correct_answer():
    # the original: nothing between </think> and <answer> costs 0.5 of a correct answer
    out = openvlthinker(f"{THINK}\n  <answer>6</answer>", "6")
    assert out == {"overall": 0.5, "accuracy": 1.0, "format": 1.0}


def test_openvlthinker_penalty_never_makes_a_wrong_answer_negative():
    out = openvlthinker(f"{THINK}<answer>7</answer>", "6")
    assert out == {"overall": 0.0, "accuracy": 0.0, "format": 1.0}


def test_openvlthinker_penalty_uses_last_think_and_first_answer_after_it():
    # as the original: split on the last </think>, then take what comes before the next <answer>
    response = "<think>a</think> draft <answer>5</answer> <think>b</think><answer>6</answer>"
    assert openvlthinker(response, "6")["overall"] == 0.5
    # no </think> at all: no penalty
    assert openvlthinker("<answer>6</answer>", "6")["overall"] == 1.0


def test_openvlthinker_takes_the_last_answer_tag():
    response = f"{THINK} First <answer>5</answer>, no, it is <answer>6</answer>"
    assert openvlthinker(response, "6")["accuracy"] == 1.0
    assert openvlthinker(response, "5")["accuracy"] == 0.0


def test_openvlthinker_grades_the_whole_response_without_a_tag():
    assert openvlthinker("6", "6")["overall"] == 1.0
    assert openvlthinker(" Blue \n", "blue")["overall"] == 1.0
    # a tagless sentence containing the number is not an answer (the original: grade_answer on the text)
    assert openvlthinker(f"{THINK} The answer is 6.", "6")["overall"] == 0.0
    # \boxed{} is not looked at without a tag (the original has no boxed fallback)
    assert openvlthinker("so \\boxed{6}", "6")["overall"] == 0.0


@pytest.mark.parametrize(
    "answer, truth",
    [("\\frac{3}{4}", "0.75"), ("0.75", "3/4"), (" 12 cm ", "12"), ("X = 3", "3"), ("YES", "yes"), ("2\\pi", "6.283185")],
)
def test_openvlthinker_equivalent_answers(answer, truth):
    assert openvlthinker(f"{THINK} Done. <answer>{answer}</answer>", truth)["overall"] == 1.0


# --------------------------------------------------------------------------- format


@pytest.mark.parametrize(
    "response, expected",
    [
        ("<think>a\nb</think>\n<answer>1</answer>", 1.0),
        ("  <think>a</think><answer>1</answer>\n", 1.0),  # surrounding whitespace is fine
        ("<think>a</think> so <answer>1</answer>", 0.0),  # text between
        ("<answer>1</answer>", 0.0),
        ("<think>a</think><answer>1</answer> trailing", 0.0),
        ("<think>a</think>", 0.0),
    ],
)
def test_format(response, expected):
    assert format_reward(response, "ignored") == expected


# --------------------------------------------------------------------------- multiple choice


@pytest.mark.parametrize("answer", ["B", "(B)", "B.", "B)", "B) 12 cm", "(B) 12 cm", "b", "Option B", "The answer is (B)"])
def test_multiple_choice_letter_forms(answer):
    assert multiple_choice(f"<answer>{answer}</answer>", "B") == 1.0
    assert multiple_choice(f"<answer>{answer}</answer>", "C") == 0.0


def test_multiple_choice_with_option_texts():
    choices = {"choices": ["9 cm", "12 cm", "15 cm", "18 cm"]}
    assert multiple_choice("<answer>12 cm</answer>", "B", extra_info=choices) == 1.0
    assert multiple_choice("<answer>12</answer>", "B", extra_info=choices) == 1.0  # same number, unit dropped
    assert multiple_choice("<answer>15 cm</answer>", "B", extra_info=choices) == 0.0
    assert multiple_choice("<answer>B</answer>", "12 cm", extra_info=choices) == 1.0  # ground truth as text
    assert multiple_choice("<answer>E</answer>", "B", extra_info=choices) == 0.0  # no option E
    assert multiple_choice("\\boxed{B}", "B", extra_info={"choices": {"A": "x", "B": "y"}}) == 1.0


def test_multiple_choice_unusable_ground_truth_is_none():
    assert multiple_choice("<answer>B</answer>", "twelve") is None
    assert multiple_choice("<answer>B</answer>", "20 cm", extra_info={"choices": ["9 cm", "12 cm"]}) is None


def test_multiple_choice_rejects_bad_choices():
    with pytest.raises(TypeError, match="choices"):
        multiple_choice("<answer>B</answer>", "B", extra_info={"choices": "AB"})


# --------------------------------------------------------------------------- numeric


@pytest.mark.parametrize(
    "answer, truth",
    [
        ("0.75", "3/4"),
        ("\\frac{3}{4}", "0.75"),
        ("75%", "0.75"),
        ("$1,250", "1250"),
        ("12.00 cm", "12"),
        ("12.0001", "12"),  # within the default relative tolerance 1e-4
        ("1.4142", "\\sqrt{2}"),  # a numeric LaTeX ground truth
        ("x = 6.2832", "2\\pi"),
    ],
)
def test_numeric_matches(answer, truth):
    assert numeric(f"<answer>{answer}</answer>", truth) == 1.0


def test_numeric_mismatches_and_tolerance_override():
    assert numeric("<answer>12.01</answer>", "12") == 0.0
    assert numeric("<answer>12.01</answer>", "12", extra_info={"rel_tol": 0.01}) == 1.0
    assert numeric("<answer>about twelve</answer>", "12") == 0.0
    assert numeric("<answer>12</answer>", "blue") is None  # not a numeric row


# --------------------------------------------------------------------------- yes / no


@pytest.mark.parametrize(
    "answer, truth, expected",
    [("Yes", "yes", 1.0), ("yes, because the bar is taller.", "Yes", 1.0), ("True", "yes", 1.0),
     ("No.", "yes", 0.0), ("maybe", "no", 0.0), ("false", "No", 1.0)],
)
def test_yes_no(answer, truth, expected):
    assert yes_no(f"<answer>{answer}</answer>", truth) == expected


def test_yes_no_unusable_ground_truth_is_none():
    assert yes_no("<answer>yes</answer>", "7") is None


# --------------------------------------------------------------------------- by name, in the pool


def test_every_builtin_name_is_registered_and_parses():
    assert set(BUILTINS) == set(BUILTIN_NAMES)
    for name in BUILTIN_NAMES:
        assert parse_spec(name).kind == "builtin"


def test_openvlthinker_by_name_in_the_pool():
    responses = [
        f"{THINK} Six. <answer>6</answer>",
        f"{THINK}<answer>\\frac{{12}}{{2}}</answer>",
        f"{THINK} Seven. <answer>7</answer>",
        "6",
    ]
    with reward.load("openvlthinker", timeout=30.0, num_workers=1) as fn:
        assert fn.shape == "native"
        batch = fn.score_batch(responses, ["6"] * 4)
        assert fn("<answer>(B)</answer>", "B") == 1.0
    assert batch.scores == [1.0, 0.5, 0.0, 1.0]
    assert batch.parts == {"accuracy": [1.0, 1.0, 0.0, 1.0], "format": [0.0, 1.0, 0.0, 0.0]}
    assert not batch.none_reasons
    assert batch.metrics() == {
        "reward/count": 4.0,
        "reward/mean": 0.625,
        "reward/unscorable_frac": 0.0,
        "reward/accuracy": 0.75,
        "reward/format": 0.25,
    }
