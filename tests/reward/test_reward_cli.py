"""`ovlt reward score` / `python -m reward.cli score`: summary, per-row output, clear input errors."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from reward.cli import main

ROOT = Path(__file__).resolve().parents[2]


def _rows(path: Path, rows: list, blank_line_after_first: bool = False) -> Path:
    lines = [json.dumps(r) if not isinstance(r, str) else r for r in rows]
    if blank_line_after_first:
        lines.insert(1, "")
    path.write_text("\n".join(lines) + "\n")
    return path


def test_score_prints_summary_and_writes_rows(tmp_path, capsys):
    rewards = tmp_path / "tagged.py"
    rewards.write_text(
        "import re\n"
        "def score(response, ground_truth):\n"
        "    m = re.search(r'<answer>(.*?)</answer>', response)\n"
        "    acc = float(m is not None and m.group(1) == ground_truth)\n"
        "    fmt = float(response.startswith('<think>'))\n"
        "    return {'overall': acc * (0.5 + 0.5 * fmt), 'accuracy': acc, 'format': fmt}\n"
    )
    data = _rows(
        tmp_path / "rows.jsonl",
        [
            {"response": "<think>a</think> so <answer>0.75</answer>", "ground_truth": "0.75"},
            {"response": "<answer>0.75</answer>", "ground_truth": "0.75", "data_source": "geo"},
            {"response": "<think>b</think><answer>5</answer>", "ground_truth": "6", "extra_info": {"id": 3}},
        ],
        blank_line_after_first=True,  # blank lines are skipped, line numbers stay true
    )
    out = tmp_path / "scores.jsonl"
    assert main(["score", f"fn={rewards}:score", f"data={data}", "timeout=20", "workers=1", f"out={out}"]) == 0
    printed = capsys.readouterr().out
    assert "rows: 3" in printed
    assert "mean: 0.5000" in printed  # (1.0 + 0.5 + 0.0) / 3
    assert "unscorable: none" in printed
    assert "part accuracy: mean 0.6667 over 3 rows" in printed
    assert "part format: mean 0.6667 over 3 rows" in printed
    written = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["line"] for r in written] == [1, 3, 4]
    assert [r["score"] for r in written] == [1.0, 0.5, 0.0]
    assert written[1]["parts"] == {"accuracy": 1.0, "format": 0.0}


def test_unscorable_rows_are_counted_by_reason(tmp_path, capsys):
    rewards = tmp_path / "picky.py"
    rewards.write_text(
        "def score(response, ground_truth):\n"
        "    if response == 'boom':\n        raise ValueError('bad')\n"
        "    return None if response == 'skip' else 1.0\n"
    )
    data = _rows(tmp_path / "rows.jsonl", [{"response": r, "ground_truth": "x"} for r in ["ok", "boom", "skip", "skip"]])
    out = tmp_path / "scores.jsonl"
    assert main(["score", f"fn={rewards}:score", f"data={data}", "workers=1", f"out={out}"]) == 0
    printed = capsys.readouterr().out
    assert "unscorable: exception=1, returned_none=2" in printed
    assert "scored: 1  mean: 1.0000" in printed
    assert [json.loads(line)["reason"] for line in out.read_text().splitlines()] == [None, "exception", "returned_none", "returned_none"]


@pytest.mark.parametrize(
    "rows, message",
    [
        ([{"response": "a", "ground_truth": "a"}, {"response": "b"}], "rows.jsonl:2: missing key 'ground_truth'"),
        ([{"ground_truth": "a"}], "rows.jsonl:1: missing key 'response'"),
        ([{"response": "a", "ground_truth": 3}], "rows.jsonl:1: 'ground_truth' must be a string"),
        (["{not json"], "rows.jsonl:1: not valid JSON"),
        (["[1, 2]"], "rows.jsonl:1: expected a JSON object"),
    ],
)
def test_bad_rows_name_the_line(tmp_path, capsys, rows, message):
    data = _rows(tmp_path / "rows.jsonl", rows)
    assert main(["score", "fn=format", f"data={data}"]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, message",
    [
        ([], "usage"),
        (["score", "fn=format"], "missing data="),
        (["score", "fn=format", "data=x.jsonl", "colour=red"], "unknown argument 'colour=red'"),
        (["score", "fn=format", "data=/no/such.jsonl"], "no such file"),
        (["score", "fn=/no/such/file.py:score", "data={data}"], "does not exist"),
        (["score", "fn=format", "data={data}", "timeout=0"], "must be positive"),
        (["score", "fn=format", "data={data}", "workers=two"], "not a valid int"),
    ],
)
def test_usage_errors(tmp_path, capsys, argv, message):
    data = _rows(tmp_path / "rows.jsonl", [{"response": "a", "ground_truth": "a"}])
    argv = [a.replace("{data}", str(data)) for a in argv]
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_runs_as_a_module(tmp_path):
    rewards = tmp_path / "same.py"
    rewards.write_text("def score(response, ground_truth):\n    return float(response == ground_truth)\n")
    data = _rows(tmp_path / "rows.jsonl", [{"response": "1", "ground_truth": "1"}])
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-m", "reward.cli", "score", f"fn={rewards}:score", f"data={data}", "workers=1"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "rows: 1" in done.stdout and "mean: 1.0000" in done.stdout
