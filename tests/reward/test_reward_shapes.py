"""verl's and EasyR1's reward files, as those projects ship them (tests/reward/fixtures/), load
unchanged through ``reward.fn=file.py:name`` and agree with calling them the way verl and EasyR1
do; batch functions run batched, with a per-sample fallback; ambiguous shapes are clear errors."""

import asyncio
import importlib.util
import json
import math
import time
from pathlib import Path

import pytest

import reward
from reward.cli import main as cli_main
from reward.spec import RewardSpecError

FIXTURES = Path(__file__).resolve().parent / "fixtures"

THINK = "<think>count them</think>"
# (response, ground truth, data_source, extra_info, response_length in tokens)
ROWS = [
    (f"{THINK} <answer>6</answer>", "6", "geo", {"id": 1}, 12),
    (f"{THINK}<answer>\\frac{{12}}{{2}}</answer>", "6", "count", {"id": 2}, 30),
    ("<answer>7</answer>", "6", "geo", {}, 5),
    (f"{THINK} so \\boxed{{6}}", "6", "count", {"id": 4}, 61),
    ("The sum is 6.\n#### 6", "6", "gsm8k", {"id": 5}, 9),
    ("Answer: 6", "6", "math", {"id": 6}, 70),
    ("Answer: 5\nmore text", "6", "math", None, 3),
]


def _module(name: str):
    spec = importlib.util.spec_from_file_location(f"direct_{name}", FIXTURES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# How verl and EasyR1 call each shape and read its result (their reward managers, in short).
def _verl_direct(fn, kwargs):
    out = []
    for response, truth, source, info, _ in ROWS:
        result = fn(data_source=source, solution_str=response, ground_truth=truth, extra_info=info if info is not None else {}, **kwargs)
        if asyncio.iscoroutine(result):
            result = asyncio.run(result)
        out.append(result)
    return out


def _verl_batch_direct(fn, kwargs):
    return fn(
        data_sources=[r[2] for r in ROWS], solution_strs=[r[0] for r in ROWS], ground_truths=[r[1] for r in ROWS],
        extra_infos=[r[3] if r[3] is not None else {} for r in ROWS], **kwargs,
    )


def _easyr1_input(row):
    return {"response": row[0], "response_length": row[4], "ground_truth": row[1]}


def _easyr1_sequential_direct(fn, kwargs):
    return [fn(_easyr1_input(r), **kwargs) for r in ROWS]


def _easyr1_batch_direct(fn, kwargs):
    return fn([_easyr1_input(r) for r in ROWS], **kwargs)


def _easyr1_legacy_direct(fn, kwargs):
    return [fn(r[0], r[1], **kwargs) for r in ROWS]


CASES = [
    # fixture, expected shape, kwargs (reward.kwargs), direct caller, primary key
    ("verl_gsm8k_style", "verl", {"method": "flexible", "format_score": 0.1}, _verl_direct, "score"),
    ("verl_dict_style", "verl", {}, _verl_direct, "score"),
    ("verl_batch_style", "verl-batch", {"bonus": 0.5}, _verl_batch_direct, "score"),
    ("verl_async_style", "verl", {}, _verl_direct, "score"),
    ("easyr1_sequential_style", "easyr1-sequential", {"format_weight": 0.2}, _easyr1_sequential_direct, "overall"),
    ("easyr1_batch_style", "easyr1-batch", {}, _easyr1_batch_direct, "overall"),
    (
        "easyr1_dapo_style", "easyr1-batch",
        {"max_response_length": 64, "overlong_buffer_length": 16, "overlong_penalty_factor": 1.0},
        _easyr1_batch_direct, "overall",
    ),
    ("easyr1_legacy_style", "easyr1", {}, _easyr1_legacy_direct, "overall"),
]


@pytest.mark.parametrize("name, shape, kwargs, direct, primary", CASES, ids=[c[0] for c in CASES])
def test_shipped_shapes_load_unchanged_and_agree_with_direct_calls(name, shape, kwargs, direct, primary):
    expected = direct(getattr(_module(name), "compute_score"), kwargs)
    extras = [
        {"data_source": source, "extra_info": info, "response_length": length} for _, _, source, info, length in ROWS
    ]
    with reward.load(f"{FIXTURES / name}.py:compute_score", timeout=30.0, num_workers=2, kwargs=kwargs) as fn:
        assert fn.shape == shape
        batch = fn.score_batch([r[0] for r in ROWS], [r[1] for r in ROWS], extras)
    assert not batch.none_reasons, batch.details
    assert batch.batch_fallbacks == 0
    want_scores = [float(e[primary]) if isinstance(e, dict) else float(e) for e in expected]
    assert batch.scores == want_scores
    assert len(set(want_scores)) > 1  # the rows tell right from wrong for every fixture
    metrics = batch.metrics()
    for key in {k for e in expected if isinstance(e, dict) for k in e} - {primary}:
        values = [e[key] for e in expected]
        if all(isinstance(v, (int, float)) for v in values):  # bools too, as verl's "acc"
            assert batch.parts[key] == [float(v) for v in values]
            assert metrics[f"reward/{key}"] == pytest.approx(sum(map(float, values)) / len(values))
        else:  # verl's "pred": logged by verl, counted here
            assert metrics[f"reward/non_numeric/{key}"] == len(values)
            assert f"reward/{key}" not in metrics


def test_verl_dict_without_score_is_non_numeric_naming_the_key(tmp_path):
    file = tmp_path / "wrong_key.py"
    file.write_text("def compute_score(data_source, solution_str, ground_truth, extra_info=None):\n    return {'overall': 1.0}\n")
    with reward.load(f"{file}:compute_score", num_workers=1) as fn:
        batch = fn.score_batch(["a"], ["a"])
    assert batch.reasons == ["non_numeric"]
    assert "without 'score'" in batch.details[0]


def test_easyr1_file_without_reward_type_is_chosen_by_its_parameter_name(tmp_path):
    # EasyR1 versions that set reward_type in the config ship files without REWARD_TYPE
    file = tmp_path / "no_metadata.py"
    file.write_text(
        "def seq(reward_input, w=1.0):\n    return {'overall': w * float(reward_input['response'] == reward_input['ground_truth'])}\n"
        "def bat(reward_inputs):\n    return [{'overall': float(len(reward_inputs))} for _ in reward_inputs]\n"
    )
    with reward.load(f"{file}:seq", num_workers=1, kwargs={"w": 2.0}) as fn:
        assert fn.shape == "easyr1-sequential"
        assert fn.score_batch(["a", "b"], ["a", "a"]).scores == [2.0, 0.0]
    with reward.load(f"{file}:bat", num_workers=1) as fn:
        assert fn.shape == "easyr1-batch"
        assert fn.score_batch(["a"] * 8, ["a"] * 8).scores == [2.0] * 8  # chunks of 2 (8 / (4 * 1 worker))


# --------------------------------------------------------------------------- batch calls


BATCHY = """
import json, os, time
REWARD_TYPE = "batch"

def compute_score(reward_inputs, log_path):
    responses = [r["response"] for r in reward_inputs]
    with open(log_path, "a") as f:
        f.write(json.dumps(responses) + "\\n")
    if "raise" in responses:
        raise ValueError("bad sample in the chunk")
    if "hang" in responses:
        time.sleep(10**6)
    if "exit" in responses:
        os._exit(5)
    if "short" in responses:
        return []  # fewer results than samples
    return [{"overall": float(r == "a"), "n": float(len(reward_inputs))} for r in responses]
"""


@pytest.fixture
def batchy(tmp_path):
    path = tmp_path / "batchy.py"
    path.write_text(BATCHY)
    log = tmp_path / "calls.jsonl"
    return path, log


def _calls(log: Path) -> list[list[str]]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def test_batch_function_gets_one_call_per_chunk(batchy):
    path, log = batchy
    with reward.load(f"{path}:compute_score", num_workers=1, kwargs={"log_path": str(log)}) as fn:
        assert fn.batched
        batch = fn.score_batch(["a", "b"] * 10, ["x"] * 20)
    assert batch.scores == [1.0, 0.0] * 10
    assert [len(c) for c in _calls(log)] == [5, 5, 5, 5]  # 20 samples, 4 chunks per worker
    assert batch.parts["n"] == [5.0] * 20


@pytest.mark.parametrize("bad, reason", [("raise", "exception"), ("short", "exception"), ("exit", "worker_crashed")])
def test_a_failing_chunk_falls_back_to_per_sample_calls(batchy, bad, reason):
    path, log = batchy
    responses = ["a", "b", "a", "a", "b", "a", bad, "a"]
    with reward.load(f"{path}:compute_score", timeout=30.0, num_workers=1, kwargs={"log_path": str(log)}) as fn:
        batch = fn.score_batch(responses, ["x"] * 8)
    expected = [1.0, 0.0, 1.0, 1.0, 0.0, 1.0, None, 1.0]
    assert batch.scores == expected
    assert batch.none_reasons == {reason: 1}
    assert batch.batch_fallbacks == 1
    assert batch.metrics()["reward/batch_fallbacks"] == 1.0
    calls = _calls(log)
    assert [len(c) for c in calls] == [2, 2, 2, 2, 1, 1]  # the last chunk once as a whole, then each sample
    assert calls[-2:] == [[bad], ["a"]]


def test_a_hung_chunk_costs_its_timeout_then_only_the_bad_sample_times_out(batchy):
    path, log = batchy
    timeout = 1.0
    with reward.load(f"{path}:compute_score", timeout=timeout, num_workers=1, kwargs={"log_path": str(log)}) as fn:
        start = time.monotonic()
        batch = fn.score_batch(["a", "hang", "b", "a"], ["x"] * 4)
        elapsed = time.monotonic() - start
        assert fn.score_batch(["a"], ["x"]).scores == [1.0]  # the pool is whole again
    assert batch.scores == [1.0, None, 0.0, 1.0]
    assert batch.reasons[1] == "timeout"
    assert batch.batch_fallbacks == 1
    assert 2 * timeout <= elapsed < 2 * timeout + 15, elapsed  # the chunk's timeout, then the sample's (+ restarts)


# --------------------------------------------------------------------------- ambiguous or unfit


def test_ambiguous_or_unfit_shapes_are_clear_errors(tmp_path):
    files = {
        "batch_but_native.py": 'REWARD_TYPE = "batch"\ndef compute_score(response, ground_truth):\n    return 1.0\n',
        "unknown_type.py": 'REWARD_TYPE = "parallel"\ndef compute_score(reward_input):\n    return {"overall": 1.0}\n',
        "type_and_verl.py": 'REWARD_TYPE = "sequential"\ndef compute_score(data_source, solution_str, ground_truth, extra_info=None):\n    return 1.0\n',
        "two_shapes.py": "def compute_score(solution_str, predict_str, ground_truth):\n    return 1.0\n",
        "one_argument.py": "def compute_score(inputs):\n    return 1.0\n",
        "dapo_no_kwargs.py": (FIXTURES / "easyr1_dapo_style.py").read_text(),
    }
    for name, source in files.items():
        (tmp_path / name).write_text(source)
    dapo_kwargs = {"max_response_length": 1, "overlong_buffer_length": 1, "overlong_penalty_factor": 1.0}
    cases = [
        ("batch_but_native.py", {}, ["['ground_truth'] have no default"]),
        ("unknown_type.py", {}, ["REWARD_TYPE = 'parallel'", "'sequential' and 'batch'"]),
        ("type_and_verl.py", {}, ["REWARD_TYPE = 'sequential'", "verl's"]),
        ("two_shapes.py", {}, ["more than one shape", "easyr1, verl"]),
        ("one_argument.py", {}, ["takes one argument", "REWARD_TYPE = 'sequential' or 'batch'"]),
        ("dapo_no_kwargs.py", {}, ["no default", "max_response_length", "reward.kwargs"]),
        ("dapo_no_kwargs.py", {**dapo_kwargs, "typo": 1}, ["reward.kwargs has 'typo'"]),
        ("one_argument.py", {"inputs": [1]}, ["a reward function takes (response, ground_truth, **extra)"]),
    ]
    with_kwargs_collision = tmp_path / "verl_plain.py"
    with_kwargs_collision.write_text("def compute_score(data_source, solution_str, ground_truth, extra_info=None, **kw):\n    return 1.0\n")
    for name, kwargs, fragments in cases:
        spec = f"{tmp_path / name}:compute_score"
        with pytest.raises(RewardSpecError) as info:
            reward.load(spec, num_workers=1, kwargs=kwargs)
        message = str(info.value)
        assert f"reward.fn={spec!r}" in message
        for fragment in fragments:
            assert fragment in message, (name, message)
    with pytest.raises(RewardSpecError, match="'ground_truth', an argument ovlt passes itself"):
        reward.load(f"{with_kwargs_collision}:compute_score", num_workers=1, kwargs={"ground_truth": "x"})


def test_part_names_that_collide_with_the_metrics_own_are_prefixed(tmp_path):
    file = tmp_path / "collide.py"
    file.write_text("def score(response, ground_truth):\n    return {'overall': 1.0, 'mean': 3.0, 'count': 2.0, 'acc': 1.0, 'bad': math.nan}\nimport math\n")
    with reward.load(f"{file}:score", num_workers=1) as fn:
        metrics = fn.score_batch(["a", "b"], ["a", "a"]).metrics()
    assert metrics["reward/mean"] == 1.0 and metrics["reward/count"] == 2.0  # the metrics' own
    assert metrics["reward/part/mean"] == 3.0 and metrics["reward/part/count"] == 2.0
    assert metrics["reward/acc"] == 1.0
    assert metrics["reward/non_numeric/bad"] == 2.0 and math.isfinite(sum(metrics.values()))


def test_cli_shows_the_detected_shape_and_passes_kwargs(tmp_path, capsys):
    data = tmp_path / "rows.jsonl"
    data.write_text(
        "\n".join(json.dumps({"response": r[0], "ground_truth": r[1], "response_length": r[4]}) for r in ROWS) + "\n"
    )
    kwargs = json.dumps({"max_response_length": 64, "overlong_buffer_length": 16, "overlong_penalty_factor": 1.0})
    code = cli_main(["score", f"fn={FIXTURES / 'easyr1_dapo_style.py'}:compute_score", f"data={data}", f"kwargs={kwargs}", "workers=1"])
    printed = capsys.readouterr().out
    assert code == 0
    assert "shape: easyr1-batch (EasyR1 REWARD_TYPE='batch'" in printed
    assert "part overlong: mean" in printed
    assert cli_main(["score", f"fn={FIXTURES / 'easyr1_dapo_style.py'}:compute_score", f"data={data}", "kwargs=[1]"]) == 2
    assert "expected a JSON object" in capsys.readouterr().err


def test_kwargs_must_be_a_mapping():
    with pytest.raises(ValueError, match="kwargs must be a mapping"):
        reward.load("format", kwargs=[("a", 1)])
