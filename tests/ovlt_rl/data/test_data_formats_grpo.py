"""Acceptance for issue #22 item 2: a GRPO run on the tiny model straight from an EasyR1 dataset
folder with an EasyR1 batch reward file, and one from a verl parquet with a verl dict reward, the
user's files untouched: only data.format and the column names are set on the command line."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from foreign_layouts import easyr1_table, save_to_disk, verl_rows, write_verl_parquet

REPO = Path(__file__).resolve().parents[3]
FIXTURES = REPO / "tests" / "reward" / "fixtures"

pytestmark = pytest.mark.slow


def _digest(path: Path) -> str:
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    return hashlib.sha256(b"".join(p.read_bytes() for p in files)).hexdigest()


def _grpo(tmp_path: Path, data: Path, args: list[str]) -> tuple[dict, list[dict]]:
    out = tmp_path / "run"
    cmd = [
        sys.executable, "-m", "ovlt.cli", "grpo", "recipe=tiny", "model.path=tiny",
        f"data.train_files=[{data}]", f"data.val_files=[{data}]", "data.prepare_recipe=''",
        "data.rollout_batch_size=2", "rollout.n=2", "data.max_response_length=16", "data.val_batch_size=4",
        "actor.num_workers=1", "actor.global_batch_size=4", "actor.micro_batch_size=4", "actor.use_kl_loss=false",
        "trainer.total_steps=1", "trainer.save_hf=false", "trainer.loggers=[jsonl]", f"trainer.output_dir={out}",
        "reward.num_workers=1", *args,
    ]
    done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=540)
    assert done.returncode == 0, (done.stdout + done.stderr)[-5000:]
    metrics = [m for m in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if m["step"] == 1 and "reward/mean" in m]
    assert len(metrics) == 1
    generations = [json.loads(line) for line in (out / "generations.jsonl").read_text().splitlines()]
    return metrics[0], generations


def test_grpo_from_an_easyr1_dataset_folder_with_an_easyr1_batch_reward(tmp_path, png_bytes):
    folder = save_to_disk(easyr1_table([png_bytes(n_circles=k) for k in (1, 2, 3, 2)], ["1", "2", "3", "2"]), tmp_path / "geometry3k")
    before = _digest(folder)
    m, gens = _grpo(tmp_path, folder, [
        "data.format=easyr1", "data.prompt_key=problem", "data.answer_key=answer", "data.image_key=images",
        f"reward.fn={FIXTURES / 'easyr1_batch_style.py'}:compute_score", "reward.kwargs.format_weight=0.1",
    ])
    # The EasyR1 function scored every sample: its parts reach the metrics.
    assert {"reward/format", "reward/accuracy"} <= m.keys()
    assert 0.0 <= m["reward/mean"] <= 1.0
    # Validation read the folder's prompts and answers.
    assert gens and all("How many red circles" in g["prompt"] for g in gens)
    assert {g["ground_truth"] for g in gens} <= {"1", "2", "3"}
    assert _digest(folder) == before


def test_grpo_from_a_verl_parquet_with_a_verl_dict_reward(tmp_path, png_bytes):
    path = write_verl_parquet(verl_rows([png_bytes(n_circles=k) for k in (1, 2, 3, 2)], ["1", "2", "3", "2"]), tmp_path / "train.parquet")
    before = _digest(path)
    m, gens = _grpo(tmp_path, path, ["data.format=verl", f"reward.fn={FIXTURES / 'verl_dict_style.py'}:compute_score"])
    assert "reward/acc" in m  # the dict's extra keys, as verl logs them
    assert -1.0 <= m["reward/mean"] <= 1.0
    assert gens and all("Answer: N" in g["prompt"] for g in gens)
    assert {g["ground_truth"] for g in gens} <= {"1", "2", "3"}
    assert _digest(path) == before
