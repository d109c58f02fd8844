"""GRPO on GPUs over Ray: FSDP2 policy ranks over NCCL, an hf rollout worker on its own GPU,
weights synced by NCCL broadcast, and rollout/policy log-probs agreeing after every sync."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.gpu(n=3)
@pytest.mark.parametrize("policy_gpus", [1, 2])
def test_tiny_grpo_on_gpus(tmp_path, policy_gpus):
    out = tmp_path / "grpo"
    cmd = [
        sys.executable, "-m", "ovlt.cli", "grpo", "recipe=tiny", "model.path=tiny",
        f"data.prepare_dir={tmp_path / 'data'}",
        f"data.train_files=[{tmp_path / 'data' / 'rl.parquet'}]", f"data.val_files=[{tmp_path / 'data' / 'val.parquet'}]",
        f"actor.num_workers={policy_gpus}", "actor.gpus_per_worker=1", "rollout.gpus_per_worker=1",
        "rollout.weight_sync=nccl", "trainer.device=cuda", "trainer.total_steps=3", "trainer.val_every=3",
        f"trainer.output_dir={out}", "trainer.loggers=[jsonl]", "data.max_val_samples=32",
    ]
    res = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, (res.stdout + res.stderr)[-5000:]
    assert "weight sync: nccl" in res.stderr + res.stdout
    metrics = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [m for m in metrics if m["step"] > 0]
    assert [m["step"] for m in steps] == [1, 2, 3]
    for m in steps:
        # bf16 on both sides: the same weights give log-probs equal up to bf16 rounding
        assert m["sync/logprob_mae"] < 0.05, m
        assert m["actor/skipped_updates"] == 0
    assert (out / "hf" / "model.safetensors").exists()
