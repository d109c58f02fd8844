"""One GRPO step over real Ray actors with an EasyR1-style reward file: reward.kwargs reach the
function, the driver passes each response's token count (response_length), and every part of the
function's dict result reaches the driver's metrics as reward/<key> (a non-number counted)."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

from ovlt_rl.data.schema import write_rows

REPO = Path(__file__).resolve().parents[2]

REWARD = """
REWARD_NAME = "lengths"
REWARD_TYPE = "sequential"


def compute_score(reward_input, weight):
    return {
        "overall": weight * min(1.0, len(reward_input["response"]) / 100),
        "tokens": float(reward_input["response_length"]),
        "weight": float(weight),
        "kind": "text",  # not a number: counted, not logged
    }
"""


def test_reward_parts_reach_the_grpo_metrics(tmp_path, image_row):
    rows = [image_row(k) for k in (1, 2, 3, 2)]
    write_rows(rows, tmp_path / "rl.parquet")
    (tmp_path / "lengths.py").write_text(textwrap.dedent(REWARD))
    out = tmp_path / "grpo"
    cmd = [
        sys.executable, "-m", "ovlt.cli", "grpo", "recipe=tiny", "model.path=tiny",
        f"data.train_files=[{tmp_path / 'rl.parquet'}]", "data.val_files=[]", "data.prepare_recipe=''",
        "data.rollout_batch_size=2", "rollout.n=2", "data.max_response_length=16",
        "actor.num_workers=1", "actor.global_batch_size=4", "actor.micro_batch_size=4", "actor.use_kl_loss=false",
        "trainer.total_steps=1", "trainer.save_hf=false", "trainer.loggers=[jsonl]", f"trainer.output_dir={out}",
        f"reward.fn={tmp_path / 'lengths.py'}:compute_score", "reward.kwargs.weight=0.5", "reward.num_workers=1",
    ]
    done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=540)
    assert done.returncode == 0, (done.stdout + done.stderr)[-5000:]
    steps = [m for m in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if m["step"] == 1]
    assert len(steps) == 1
    m = steps[0]
    assert m["reward/weight"] == 0.5  # reward.kwargs.weight reached the function
    assert m["reward/tokens"] == m["response_length/mean"]  # the driver's token counts, per sample
    assert m["reward/non_numeric/kind"] == 4.0  # 2 prompts x 2 samples
    assert "reward/kind" not in m
    assert 0.0 <= m["reward/mean"] <= 0.5
