"""`ovlt sft` over real Ray actors (2 FSDP ranks on gloo, the tiny model) on data with one row whose
image passes the start-up check but fails to decode at step 1: the run finishes, the row is a
counted skip logged with its file and row, the batch is refilled to its size (gloo aborts when the
ranks' forwards differ), and a resume from the step-2 checkpoint still counts it."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1].parent


def _sft(data: Path, out: Path, steps: int) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    cmd = [sys.executable, "-m", "ovlt.cli", "sft", "recipe=tiny", "model.path=tiny", "data.prepare_recipe=''",
           f"data.train_files=[{data}]", "data.val_files=[]", "data.shuffle=false", "data.val_loss_fraction=0",
           "data.max_bad_fraction=0.1", "actor.num_workers=2", "actor.global_batch_size=8", "actor.micro_batch_size=4",
           f"trainer.total_steps={steps}", "trainer.save_every=1", "trainer.loggers=[jsonl]",
           f"trainer.output_dir={out}", "trainer.ray_num_cpus=3"]
    return subprocess.run(cmd, cwd=out.parent, env=env, capture_output=True, text=True, timeout=400)


def test_sft_skips_an_undecodable_image_refills_the_batch_and_resumes(tmp_path, image_row, undecodable_row, write_parquet):
    # 1 bad row of 40, as in the report that crashed at step 1 (max_bad_fraction 10%).
    rows = [undecodable_row(2, response="<answer>2</answer>") if i == 1 else image_row(i % 3 + 1, response=f"<answer>{i % 3 + 1}</answer>")
            for i in range(40)]
    data = write_parquet(rows, "sft.parquet")
    out = tmp_path / "sft"
    res = _sft(data, out, steps=2)
    log = res.stdout + res.stderr
    assert res.returncode == 0, log[-5000:]
    assert f"skipping {data}#1 (decode_error): cannot decode image (OSError: broken data stream" in log
    rows_out = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    # No shuffling: step 1 is rows 0-7, row 1 replaced by the next row not in the batch (8).
    assert [r["data/indices"] for r in rows_out] == [[0, 8, 2, 3, 4, 5, 6, 7], list(range(8, 16))]
    assert [r["data/decode_errors"] for r in rows_out] == [1.0, 1.0]
    state = json.loads(next((out / "checkpoints").glob("step_*2/driver_state.json")).read_text())
    assert state["decode_failures"] == [1]

    # Resume to step 3: the failure found before the checkpoint is still counted.
    res = _sft(data, out, steps=3)
    assert res.returncode == 0, (res.stdout + res.stderr)[-5000:]
    last = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["step"] == 3 and last["data/indices"] == list(range(16, 24)) and last["data/decode_errors"] == 1.0
