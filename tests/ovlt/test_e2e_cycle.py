"""End to end over real Ray actors, FSDP2 on gloo and the tiny model: a one-iteration cycle,
SIGKILLed during GRPO-1 and re-run. The finished stages are not redone, GRPO-1 resumes from its
last committed checkpoint with the same data order, and the run finishes with a report."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ovlt_rl.data.loader import EpochIterator

REPO = Path(__file__).resolve().parents[2]

# Small enough for a 2-core machine; the same code paths as the tiny recipes.
OVERRIDES = [
    "prepare.synthetic_train=240",
    "prepare.synthetic_val=16",
    "prepare.synthetic_test=16",
    "prepare.distill.limit=200",
    "prepare.mix.sft_total=96",
    "data.max_val_samples=16",
    "data.rollout_batch_size=4",
    "data.max_response_length=40",
    "rollout.n=4",
    "actor.global_batch_size=16",
    "actor.micro_batch_size=8",
    "trainer.val_every=2",
    "trainer.save_every=1",
    "trainer.loggers=[jsonl]",
    "data.val_loss_fraction=0.1",
]


def _cmd(out: Path) -> list[str]:
    stages = "[" + ",".join(f"'{o}'" for o in OVERRIDES + ["trainer.total_steps=4"]) + "]"
    return [sys.executable, "-m", "ovlt.cli", "cycle", "recipe=tiny", "cycle.iterations=1",
            f"trainer.output_dir={out}", f"cycle.stage_overrides={stages}"]


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


@pytest.mark.slow
def test_cycle_survives_sigkill_during_grpo(tmp_path):
    out = tmp_path / "cycle"
    log1 = open(tmp_path / "run1.log", "w")
    proc = subprocess.Popen(_cmd(out), cwd=tmp_path, env=_env(), stdout=log1, stderr=subprocess.STDOUT, start_new_session=True)
    ckpt = out / "grpo-1" / "checkpoints" / "step_000002"
    deadline = time.time() + 420
    try:
        while not ckpt.exists():
            assert proc.poll() is None, f"run ended before GRPO step 2 was saved:\n{(tmp_path / 'run1.log').read_text()[-3000:]}"
            assert time.time() < deadline, "timed out waiting for the GRPO checkpoint"
            time.sleep(0.5)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # the driver and the Ray processes it started
        except ProcessLookupError:
            pass
        proc.wait()
    sft_marker = out / "sft-1" / "stage.json"
    assert sft_marker.exists() and not (out / "grpo-1" / "stage.json").exists()
    sft_mtime = sft_marker.stat().st_mtime_ns
    sft_hf = (out / "sft-1" / "hf" / "model.safetensors").stat().st_mtime_ns

    log2 = tmp_path / "run2.log"
    res = subprocess.run(_cmd(out), cwd=tmp_path, env=_env(), stdout=open(log2, "w"), stderr=subprocess.STDOUT, timeout=600)
    text = log2.read_text()
    assert res.returncode == 0, text[-4000:]
    # Finished stages were skipped, not redone.
    assert "sft-1: already done" in text and "data-1: already done" in text
    assert sft_marker.stat().st_mtime_ns == sft_mtime
    assert (out / "sft-1" / "hf" / "model.safetensors").stat().st_mtime_ns == sft_hf
    # GRPO-1 resumed from a committed checkpoint at step >= 2, not from step 0.
    resumed = [int(l.rsplit("step ", 1)[1].rstrip(")")) for l in text.splitlines() if "resumed from" in l]
    assert resumed and resumed[0] >= 2, text[-3000:]
    # Each step is in the metrics once, and the data order equals an uninterrupted run's.
    metrics = [json.loads(l) for l in (out / "grpo-1" / "metrics.jsonl").read_text().splitlines()]
    steps = [m["step"] for m in metrics]
    assert steps == sorted(set(steps)) == [0, 1, 2, 3, 4]
    from ovlt_rl.data.schema import read_rows

    n_rl = len(read_rows(out / "data-1" / "rl.parquet", columns=["data_source"]))
    it = EpochIterator(n_rl, 4, seed=1, shuffle=True, drop_last=True)
    expected = [next(it) for _ in range(4)]
    got = [m["data/indices"] for m in metrics if m["step"] > 0]
    assert got == expected
    # Validation also reports accuracy per data source, and the overall number lies among them.
    val0 = metrics[0]
    per_source = {k: v for k, v in val0.items() if k.startswith("val/accuracy/")}
    assert set(per_source) <= {f"val/accuracy/synthetic/{f}" for f in ("count", "chart", "ruler", "compare")}
    assert len(per_source) >= 2 and min(per_source.values()) <= val0["val/accuracy"] <= max(per_source.values())
    # SFT reported a held-out validation loss at its last step.
    sft_metrics = [json.loads(l) for l in (out / "sft-1" / "metrics.jsonl").read_text().splitlines()]
    assert sft_metrics[-1]["val/loss"] > 0 and "val/accuracy" in sft_metrics[-1]
    # The report exists and names the stages.
    report = json.loads((out / "cycle_report.json").read_text())
    assert [s["name"] for s in report["stages"]] == ["sft-1", "grpo-1"]
    assert (out / "report.md").exists()
    assert (out / "grpo-1_curves.png").exists()  # the report found the GRPO stage's metrics
    lineage = json.loads((out / "lineage.json").read_text())
    assert set(lineage) == {"data-1", "sft-1", "grpo-1"}
    assert lineage["grpo-1"]["inputs"]["model"]["path"].endswith("sft-1/hf")
    assert len(lineage["sft-1"]["inputs"]["data"]["sha256"]) == 64
