"""Loading reward functions: verl and EasyR1 files unchanged, native functions, dotted paths, bad specs."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import reward
from reward.spec import RewardSpecError, parse_spec

ROOT = Path(__file__).resolve().parents[2]


def _write(path, source: str):
    path.write_text(textwrap.dedent(source))
    return path


def test_verl_style_function_loads_unchanged(tmp_path):
    # verl's custom reward: all four arguments by name, extra kwargs with defaults
    file = _write(
        tmp_path / "verl_reward.py",
        """
        def compute_score(data_source, solution_str, ground_truth, extra_info=None, bonus=0.0, **kwargs):
            base = 1.0 if solution_str.strip().endswith(ground_truth) else 0.0
            scale = extra_info["scale"] if extra_info else 1.0
            return base * scale + (0.25 if data_source == "geo" else 0.0) + bonus
        """,
    )
    with reward.load(str(file), num_workers=1) as fn:  # ":compute_score" is the default
        assert fn.shape == "verl"
        batch = fn.score_batch(
            ["the answer is 4", "the answer is 5", "4"],
            ["4", "4", "4"],
            [{"data_source": "geo", "extra_info": {"scale": 2.0}}, {"data_source": "x"}, {}],
        )
    assert batch.scores == [2.25, 0.0, 1.0]


def test_verl_function_with_dict_return_logs_parts(tmp_path):
    # verl takes "score" from a dict and logs the other keys
    file = _write(
        tmp_path / "verl_dict.py",
        """
        def compute_score(data_source, solution_str, ground_truth, extra_info):
            acc = float(solution_str == ground_truth)
            return {"score": acc, "acc": acc, "length": len(solution_str)}
        """,
    )
    with reward.load(f"{file}:compute_score", num_workers=1) as fn:
        batch = fn.score_batch(["7", "x"], ["7", "7"])
    assert batch.scores == [1.0, 0.0]
    assert batch.parts == {"acc": [1.0, 0.0], "length": [1.0, 1.0]}
    assert batch.metrics()["reward/acc"] == 0.5


def test_easyr1_style_function_loads_unchanged(tmp_path):
    # EasyR1 0.3 (OpenVLThinker's r1v.py shape): (predict_str, ground_truth) -> dict with overall
    file = _write(
        tmp_path / "r1v.py",
        """
        import re
        from typing import Dict

        def format_reward(predict_str: str) -> float:
            return 1.0 if re.fullmatch(r"<think>.*?</think>\\s*<answer>.*?</answer>", predict_str, re.DOTALL) else 0.0

        def compute_score(predict_str: str, ground_truth: str, format_weight: float = 0.5) -> Dict[str, float]:
            m = re.search(r"<answer>(.*?)</answer>", predict_str)
            acc = 1.0 if m and m.group(1).strip() == ground_truth else 0.0
            fmt = format_reward(predict_str)
            return {"overall": (1 - format_weight) * acc + format_weight * fmt, "format": fmt, "accuracy": acc}
        """,
    )
    with reward.load(f"{file}:compute_score", num_workers=1) as fn:
        assert fn.shape == "easyr1"
        batch = fn.score_batch(["<think>a</think><answer>3</answer>", "<answer>3</answer>", "nope"], ["3", "3", "3"])
    assert batch.scores == [1.0, 0.5, 0.0]
    assert batch.parts == {"format": [1.0, 0.0, 0.0], "accuracy": [1.0, 1.0, 0.0]}


def test_native_function_receives_extras_it_asks_for(tmp_path):
    file = _write(
        tmp_path / "native.py",
        """
        def plain(response, ground_truth):
            return float(response == ground_truth)

        def with_extras(response, ground_truth, **extra):
            return float(len(extra)) + (10.0 if extra.get("data_source") == "a" else 0.0)

        def with_info(response, ground_truth, *, extra_info=None):
            return float(extra_info["w"])
        """,
    )
    extras = [{"data_source": "a", "extra_info": {"w": 3}}]
    with reward.load(f"{file}:plain", num_workers=1) as fn:
        assert fn("x", "x", **extras[0]) == 1.0
    with reward.load(f"{file}:with_extras", num_workers=1) as fn:
        assert fn.score_batch(["r"], ["g"], extras).scores == [12.0]  # both extras passed
    with reward.load(f"{file}:with_info", num_workers=1) as fn:
        assert fn.score_batch(["r"], ["g"], extras).scores == [3.0]


def test_dotted_path_loading(tmp_path, monkeypatch):
    package = tmp_path / "my_rewards"
    package.mkdir()
    (package / "__init__.py").write_text("")
    _write(
        package / "scoring.py",
        """
        from .weights import WEIGHT  # a package: relative imports work

        def score(response, ground_truth, **extra):
            return WEIGHT if response == ground_truth else 0.0
        """,
    )
    (package / "weights.py").write_text("WEIGHT = 2.0\n")
    monkeypatch.syspath_prepend(str(tmp_path))  # spawned workers inherit the caller's sys.path
    with reward.load("my_rewards.scoring:score", num_workers=1) as fn:
        assert fn.score_batch(["x", "y"], ["x", "x"]).scores == [2.0, 0.0]


def test_file_can_import_its_sibling_modules(tmp_path):
    (tmp_path / "helpers_for_reward.py").write_text("WEIGHT = 0.25\n")
    file = _write(
        tmp_path / "uses_helper.py",
        """
        from helpers_for_reward import WEIGHT

        def score(response, ground_truth):
            return WEIGHT
        """,
    )
    with reward.load(f"{file}:score", num_workers=1) as fn:
        assert fn("a", "b") == 0.25


# --------------------------------------------------------------------------- bad specs


@pytest.mark.parametrize(
    "spec, message",
    [
        ("", "empty spec"),
        ("no_such_builtin", "not a built-in reward"),
        ("/no/such/dir/reward.py:score", "does not exist"),
        ("pkg.mod:not-a-name", "not a function name"),
        ("bad path!:x", "neither a .py file nor a module name"),
    ],
)
def test_bad_spec_is_rejected_in_the_caller(spec, message):
    with pytest.raises(RewardSpecError, match=message) as info:
        parse_spec(spec)
    assert repr(spec) in str(info.value)


def test_bad_spec_errors_at_load_name_the_spec(tmp_path):
    file = _write(
        tmp_path / "bad_rewards.py",
        """
        def takes_one(response):
            return 1.0

        def needs_more(response, ground_truth, weight):
            return 1.0

        def verl_needs_more(data_source, solution_str, ground_truth, extra_info, tokenizer):
            return 1.0

        def fine(response, ground_truth):
            return 1.0

        NOT_CALLABLE = 3
        """,
    )
    cases = {
        f"{file}:missing": ["has no attribute 'missing'", "fine"],  # lists the functions that exist
        f"{file}:takes_one": ["takes (response, ground_truth, **extra)"],
        f"{file}:needs_more": ["['weight'] have no default"],
        f"{file}:verl_needs_more": ["verl", "['tokenizer'] have no default"],
        f"{file}:NOT_CALLABLE": ["not a function"],
        "no_such_package_xyz.mod:score": ["importing 'no_such_package_xyz.mod' failed", "ModuleNotFoundError"],
    }
    for spec, fragments in cases.items():
        with pytest.raises(RewardSpecError) as info:
            reward.load(spec, num_workers=1)
        message = str(info.value)
        assert f"reward.fn={spec!r}" in message
        for fragment in fragments:
            assert fragment in message, (spec, message)


def test_import_errors_at_load_name_the_spec(tmp_path):
    broken = _write(tmp_path / "broken.py", "def score(response, ground_truth):\n    return (\n")
    with pytest.raises(RewardSpecError, match="SyntaxError") as info:
        reward.load(f"{broken}:score", num_workers=1)
    assert "broken.py:score" in str(info.value)
    raising = _write(tmp_path / "raising.py", "raise RuntimeError('no GPU here')\n")
    with pytest.raises(RewardSpecError, match="no GPU here"):
        reward.load(f"{raising}:score", num_workers=1)


def test_bad_load_arguments():
    with pytest.raises(ValueError, match="timeout"):
        reward.load("format", timeout=0)
    with pytest.raises(ValueError, match="num_workers"):
        reward.load("format", num_workers=0)


def test_importing_reward_is_light():
    # the trainer imports `reward` and workers running user code unpickle from it: neither
    # should pay for sympy and the math graders unless it grades
    code = "import sys, reward; print('sympy' in sys.modules); from reward import grade; print('sympy' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
    assert done.stdout.split() == ["False", "True"], done.stderr
