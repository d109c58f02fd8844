"""Tracker: TensorBoard events readable by TensorBoard's own reader, a resume replacing the steps
past it; wandb (offline) logging, and a resumed run continuing the same wandb run."""

from __future__ import annotations

import json

import pytest

from ovlt_rl.tracking import Tracker, wandb_run_id


def _scalars(folder, tag):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder))
    acc.Reload()
    return [(e.step, round(e.value, 6)) for e in acc.Scalars(tag)]


def test_tensorboard_scalars_and_resume(tmp_path):
    t = Tracker(["tensorboard", "jsonl"], tmp_path, total_steps=3)
    for step in (1, 2, 3):
        t.log(step, {"loss": float(step), "reward/mean": 0.5 * step, "note": "text"})
    t.close()
    assert _scalars(tmp_path / "tensorboard", "loss") == [(1, 1.0), (2, 2.0), (3, 3.0)]
    assert _scalars(tmp_path / "tensorboard", "reward/mean") == [(1, 0.5), (2, 1.0), (3, 1.5)]
    # Resumed from step 2's checkpoint: step 3 is logged again, and only the new value remains.
    t = Tracker(["tensorboard", "jsonl"], tmp_path, total_steps=3, start_step=2)
    t.log(3, {"loss": 30.0, "reward/mean": 0.25})
    t.close()
    assert _scalars(tmp_path / "tensorboard", "loss") == [(1, 1.0), (2, 2.0), (3, 30.0)]
    assert [json.loads(l)["loss"] for l in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [1.0, 2.0, 30.0]


def test_wandb_offline_resume_continues_the_same_run(tmp_path, monkeypatch):
    import wandb  # noqa: F401  (in the dev extra: this test must run, not skip)

    from ovlt_rl.loopback import LOOPBACK_ENV

    # Offline, and nothing may leave the machine: HTTP(S) to a closed loopback port, as in local runs.
    for key, value in {**LOOPBACK_ENV, "WANDB_MODE": "offline", "WANDB_SILENT": "true",
                       "WANDB_ERROR_REPORTING": "false", "WANDB_DISABLE_GIT": "true"}.items():
        monkeypatch.setenv(key, value)
    t = Tracker(["wandb"], tmp_path, total_steps=3, project="p", experiment="e", config={"lr": 1.0})
    t.log(1, {"loss": 1.0})
    t.log(2, {"loss": 2.0})
    first = t.wandb.id
    t.close()
    t = Tracker(["wandb"], tmp_path, total_steps=3, start_step=2, project="p", experiment="e")
    assert t.wandb.id == first  # the same run, resumed
    t.log(3, {"loss": 3.0})
    t.close()
    assert (tmp_path / "wandb_run_id").read_text().strip() == first
    runs = sorted((tmp_path / "wandb").glob("offline-run-*"))
    # offline-run-<time>-<id>, and "-1" appended when both records start within the same second
    assert len(runs) == 2 and all(r.name.split("-", 3)[3].split("-")[0] == first for r in runs), runs
    # Both offline records hold the logged history (`wandb sync` uploads them into the one run).
    assert all(b"loss" in next(r.glob("run-*.wandb")).read_bytes() for r in runs)


def test_a_bad_run_id_file_is_an_error_not_a_new_run(tmp_path):
    (tmp_path / "wandb_run_id").write_text("$(rm -rf /)\n")
    with pytest.raises(ValueError, match="not a wandb run id"):
        wandb_run_id(tmp_path)
    (tmp_path / "wandb_run_id").write_text("abc123xy\n")
    assert wandb_run_id(tmp_path) == "abc123xy"
