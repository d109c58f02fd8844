"""SFT on the tiny model straight from LLaMA-Factory ShareGPT-style "messages + images" JSON (the
layout of OpenVLThinker's SFT data), in bf16: the final HF export holds bf16 weights."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from safetensors import safe_open

pytestmark = pytest.mark.slow


def test_sft_from_sharegpt_json_exports_in_the_training_dtype(tmp_path, png_bytes):
    media = tmp_path / "media"
    media.mkdir()
    rows = []
    for k in (1, 2, 3, 2):
        (media / f"c{k}.png").write_bytes(png_bytes(n_circles=k))
        rows.append({
            "messages": [{"role": "user", "content": "<image>How many red circles are there?"},
                         {"role": "assistant", "content": f"<think>I count {k}.</think><answer>{k}</answer>"}],
            "images": [f"c{k}.png"],
        })
    data = tmp_path / "sft.json"
    data.write_text(json.dumps(rows))
    before = data.read_bytes()
    out = tmp_path / "run"
    cmd = [
        sys.executable, "-m", "ovlt.cli", "sft", "recipe=tiny", "model.path=tiny", "model.dtype=bf16",
        "data.format=sharegpt", f"data.train_files=[{data}]", f"data.image_dir={media}", "data.val_files=[]",
        "data.prepare_recipe=''", "actor.num_workers=1", "actor.global_batch_size=4", "actor.micro_batch_size=4",
        "trainer.total_steps=1", "trainer.save_hf=true", "trainer.hf_max_shard_size=2MB", "trainer.loggers=[jsonl]",
        f"trainer.output_dir={out}",
    ]
    done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=540)
    assert done.returncode == 0, (done.stdout + done.stderr)[-5000:]
    steps = [m for m in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if m.get("step") == 1 and "sft/loss" in m]
    assert steps and steps[0]["sft/loss"] > 0
    assert sorted(steps[0]["data/indices"]) == [0, 1, 2, 3]  # every JSON row became a sample
    hf = out / "hf"
    shards = sorted(set(json.loads((hf / "model.safetensors.index.json").read_text())["weight_map"].values()))
    assert len(shards) > 1
    for s in shards:
        with safe_open(str(hf / s), "pt") as f:
            assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"BF16"}
    assert data.read_bytes() == before
