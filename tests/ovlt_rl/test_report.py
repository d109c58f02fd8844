"""The cycle report from a synthetic cycle_report.json and metrics.jsonl files."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from ovlt_rl.report import ReportError, plot_run, read_metrics, series, write_report


def _write_metrics(path, n_steps, val_every=2, reward0=0.2):
    path.mkdir(parents=True, exist_ok=True)
    with open(path / "metrics.jsonl", "w") as f:
        for step in range(1, n_steps + 1):
            row = {"step": step, "reward/mean": reward0 + 0.05 * step, "response_length/mean": 100 + 3 * step}
            if step % val_every == 0:
                row["val/accuracy"] = 0.3 + 0.02 * step
            f.write(json.dumps(row) + "\n")


def _valid_png(path):
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size[0] > 100 and im.size[1] > 100


@pytest.fixture
def cycle(tmp_path):
    d = tmp_path / "cycle"
    d.mkdir()
    _write_metrics(d / "iter1_grpo", 6)
    _write_metrics(tmp_path / "elsewhere" / "grpo2", 4, reward0=0.5)  # absolute output_dir
    stages = [
        {"name": "sft-1", "kind": "sft", "iteration": 1, "val_accuracy": 0.40, "output_dir": "iter1_sft"},
        {"name": "grpo-1", "kind": "grpo", "iteration": 1, "val_accuracy": 0.47, "output_dir": "iter1_grpo"},
        {"name": "sft-2", "kind": "sft", "iteration": 2, "val_accuracy": 0.45, "output_dir": "iter2_sft"},
        {"name": "grpo-2", "kind": "grpo", "iteration": 2, "val_accuracy": 0.52, "output_dir": str(tmp_path / "elsewhere" / "grpo2")},
    ]
    (d / "cycle_report.json").write_text(json.dumps({"base_val_accuracy": 0.25, "stages": stages}))
    return d


def test_write_report(cycle):
    report = write_report(cycle)
    assert report == cycle / "report.md"
    text = report.read_text()
    for name in ("sft-1", "grpo-1", "sft-2", "grpo-2"):
        assert f"| {name} |" in text
    assert "| base | base | 0 | 25.0 |" in text
    assert "| grpo-1 | grpo | 1 | 47.0 | +7.0 |" in text  # change vs sft-1
    assert "| sft-2 | sft | 2 | 45.0 | -2.0 |" in text
    # Curves summary: reward 0.25 at step 1 -> 0.5 at step 6; validation only on even steps.
    assert "reward (mean): 0.25 at step 1 -> 0.5 at step 6" in text
    assert "validation accuracy: 0.34 at step 2 -> 0.42 at step 6" in text
    for png in ("accuracy_per_stage.png", "grpo-1_curves.png", "grpo-2_curves.png"):
        assert f"]({png})" in text
        _valid_png(cycle / png)
    assert not (cycle / "sft-1_curves.png").exists()


def test_missing_metrics_is_noted_not_fatal(cycle):
    (cycle / "iter1_grpo" / "metrics.jsonl").unlink()
    text = write_report(cycle).read_text()
    assert "metrics.jsonl`: curves not drawn." in text
    assert not (cycle / "grpo-1_curves.png").exists()
    _valid_png(cycle / "grpo-2_curves.png")


def test_bad_inputs_name_the_file(cycle, tmp_path):
    with open(cycle / "iter1_grpo" / "metrics.jsonl", "a") as f:
        f.write("{not json\n")
    with pytest.raises(ReportError, match=r"metrics.jsonl line 7: not JSON"):
        write_report(cycle)
    (tmp_path / "c2").mkdir()
    (tmp_path / "c2" / "cycle_report.json").write_text(json.dumps({"stages": [{"name": "x"}]}))
    with pytest.raises(ReportError, match=r"stage 0 lacks \['kind', 'output_dir'\]"):
        write_report(tmp_path / "c2")
    with pytest.raises(ReportError, match="no such file"):
        write_report(tmp_path / "nowhere")


def test_missing_accuracy_shows_na(cycle):
    data = json.loads((cycle / "cycle_report.json").read_text())
    data["stages"][2]["val_accuracy"] = None
    (cycle / "cycle_report.json").write_text(json.dumps(data))
    text = write_report(cycle).read_text()
    assert "| sft-2 | sft | 2 | n/a |  |" in text
    assert "| grpo-2 | grpo | 2 | 52.0 | +5.0 |" in text  # compared with the last known stage (grpo-1)


def test_plot_run(tmp_path):
    run = tmp_path / "sft_run"
    run.mkdir()
    with open(run / "metrics.jsonl", "w") as f:
        for step in range(1, 5):
            f.write(json.dumps({"step": step, "sft/loss": 2.0 / step, "sft/lr": 1e-5, "val/accuracy": None}) + "\n")
    out = plot_run(run)
    assert out == run / "metrics.png"
    _valid_png(out)
    rows = read_metrics(run / "metrics.jsonl")
    assert series(rows, "sft/loss") == ([1, 2, 3, 4], [2.0, 1.0, 2.0 / 3, 0.5])
    assert series(rows, "val/accuracy") == ([], [])
    (run / "metrics.jsonl").write_text(json.dumps({"step": 1, "something": 1.0}) + "\n")
    with pytest.raises(ReportError, match="none of the known metrics"):
        plot_run(run)
