"""Resume end to end (real Ray actors, 2 FSDP2 ranks on gloo, the tiny model): a same-size corrupted
shard makes the resume fall back to the previous checkpoint with a warning and the run continues
exactly as it would have; a checkpoint folder whose every file is a malicious pickle is refused and
its payload never runs."""

import hashlib
import json
import logging
import pickle

import pytest

from ovlt_rl.checkpoint import CheckpointError
from ovlt.config import load_config
from ovlt_rl.config_change import ConfigChangeRefused
from ovlt_rl.controller import run_sft


pytestmark = pytest.mark.usefixtures("ray_down_after")


def _cfg(out, data, *args):
    return load_config("sft", [
        "model.path=tiny", f"data.train_files=[{data}]", "data.max_prompt_length=128", "data.max_response_length=16",
        "actor.num_workers=2", "actor.global_batch_size=4", "actor.micro_batch_size=2", "actor.lr=1e-2",
        "trainer.device=cpu", "trainer.loggers=[jsonl]", "trainer.save_hf=false", "trainer.save_every=1",
        "trainer.keep_checkpoints=3", f"trainer.output_dir={out}", *args])


def _losses(out):
    return {m["step"]: m["sft/loss"] for m in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())}


class _Plant:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_corrupted_newest_falls_back_and_planted_pickles_never_run(tmp_path, image_row, write_parquet, caplog):
    rows = [image_row(k % 4 + 1, response=f"<think>I count them.</think><answer>{k % 4 + 1}</answer>") for k in range(12)]
    data = write_parquet(rows, "sft.parquet")
    out = tmp_path / "run"
    run_sft(_cfg(out, data, "trainer.total_steps=3"))
    first = _losses(out)
    ck = out / "checkpoints"
    assert sorted(p.name for p in ck.iterdir()) == ["step_000001", "step_000002", "step_000003"]

    # Same-size corruption of one rank's shard of the newest checkpoint (one byte, mid-file).
    shard = ck / "step_000003" / "shard-00002-model-00001-of-00001.safetensors"
    blob = bytearray(shard.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    shard.write_bytes(bytes(blob))
    with caplog.at_level(logging.INFO):
        run_sft(_cfg(out, data, "trainer.total_steps=4"))  # a longer run: a harmless change
    print(*[r.getMessage() for r in caplog.records if r.getMessage().startswith("resume")], sep="\n")
    assert "step_000003 is not usable: shard-00002-model-00001-of-00001.safetensors fails its sha256 check" in caplog.text
    assert (ck / "broken-step_000003").is_dir()
    second = _losses(out)
    assert sorted(second) == [1, 2, 3, 4]
    # Resumed from step 2's weights, optimizer and data order: step 3 is the first run's step 3 again.
    assert second[3] == pytest.approx(first[3], rel=1e-5)
    assert (out / "config.1.yaml").is_file() and "total_steps: 3" in (out / "config.1.yaml").read_text()

    # Every file of every checkpoint replaced by a malicious pickle, the manifests updated to match:
    # first all but config.yaml (the loaders must refuse), then config.yaml too.
    marker = tmp_path / "PWNED"
    payload = pickle.dumps(_Plant(marker))
    metrics_before = (out / "metrics.jsonl").read_text()
    for spare, error, match in ((("config.yaml",), CheckpointError, "none is usable.*refusing to start over from step 0"),
                                ((), ConfigChangeRefused, r"config.yaml: unreadable \(UnicodeDecodeError\)")):
        for step_dir in ck.glob("step_*"):
            manifest = json.loads((step_dir / "manifest.json").read_text())
            for name in manifest["files"]:
                if name not in spare:
                    (step_dir / name).write_bytes(payload)
                    manifest["files"][name] = {"size": len(payload), "sha256": hashlib.sha256(payload).hexdigest()}
            (step_dir / "manifest.json").write_text(json.dumps(manifest))
        with pytest.raises(error, match=match):
            run_sft(_cfg(out, data, "trainer.total_steps=4"))
        assert not marker.exists()
        assert (out / "metrics.jsonl").read_text() == metrics_before
