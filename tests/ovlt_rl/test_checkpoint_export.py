"""`ovlt export`'s choice of dtype and of checkpoint (no model, no Ray; the end-to-end export is
tests/ovlt_rl/test_export_cli.py)."""

from pathlib import Path

import pytest

from ovlt_rl.checkpoint import CheckpointError, CheckpointManager
from ovlt_rl.checkpoint_export import pick_checkpoint, training_dtype

_FILE = Path("ck/step_000001/config.yaml")


def _cfg(dtype, device):
    return {"model": {"dtype": dtype}, "trainer": {"device": device}}


def test_the_recorded_training_dtype_wins():
    assert training_dtype(_cfg("auto", "auto"), {"dtype": "bf16"}, _FILE) == "bf16"
    assert training_dtype(_cfg("bf16", "cpu"), {"dtype": "fp32"}, _FILE) == "fp32"
    with pytest.raises(CheckpointError, match="worker_state.json has dtype 'fp8', not bf16 or fp32"):
        training_dtype(_cfg("auto", "cpu"), {"dtype": "fp8"}, _FILE)


def test_older_checkpoints_take_it_from_the_config_or_ask():
    assert training_dtype(_cfg("bf16", "auto"), {}, _FILE) == "bf16"
    assert training_dtype(_cfg("fp32", "cuda"), {}, _FILE) == "fp32"
    assert training_dtype(_cfg("auto", "cpu"), {}, _FILE) == "fp32"
    for device in ("auto", "cuda"):  # auto on a GPU is bf16, but was it on a GPU?
        with pytest.raises(CheckpointError, match=f"does not record its training dtype .*trainer.device={device}.*pass dtype=bf16"):
            training_dtype(_cfg("auto", device), {}, _FILE)
    with pytest.raises(CheckpointError, match="config.yaml: has no trainer.device"):
        training_dtype({"model": {"dtype": "auto"}}, {}, _FILE)


def test_no_checkpoints_is_an_error_naming_the_folder(tmp_path):
    with pytest.raises(CheckpointError, match=f"no committed checkpoints in {tmp_path / 'checkpoints'}"):
        pick_checkpoint(tmp_path, None)
    CheckpointManager(tmp_path / "checkpoints").save(1, lambda d: None, {"step": 1})
    assert pick_checkpoint(tmp_path, None)[0] == 1
    (tmp_path / "checkpoints" / "step_000001" / "driver_state.json").write_text("{}")
    with pytest.raises(CheckpointError, match=r"no checkpoint in .* can be exported \(step_000001: driver_state.json has 2 bytes"):
        pick_checkpoint(tmp_path, None)
