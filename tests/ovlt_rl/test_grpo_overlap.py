"""One-step off-policy GRPO (algorithm.overlap) end to end over real Ray actors (2 FSDP2 ranks on
gloo, a transformers rollout worker, the tiny model): the first step is on-policy and the others
train the batch generated during the step before; the ratio is taken against the engine's
sampled log-probs at the sampling temperature; checkpoints keep the data order from before the
batch running ahead, so a resume draws the same rows in the same order."""

import json
import logging

import pytest

from ovlt.config import load_config
from ovlt_rl.controller import run_grpo
from ovlt_rl.data.loader import EpochIterator


pytestmark = pytest.mark.usefixtures("ray_down_after")


def _cfg(out, data, *args):
    return load_config("grpo", [
        "recipe=tiny", "model.path=tiny", "data.prepare_recipe=''", f"data.train_files=[{data}]", "data.val_files=[]",
        "data.rollout_batch_size=2", "rollout.n=2", "data.max_response_length=12",
        "actor.num_workers=2", "actor.global_batch_size=4", "actor.micro_batch_size=2",
        # the entropy bonus moves the weights even when a random model's groups have no reward signal
        "actor.entropy_coef=0.01", "actor.lr=1e-3", "algorithm.overlap=true", "trainer.device=cpu", "trainer.loggers=[jsonl]", "trainer.save_hf=false",
        "trainer.save_every=1", "trainer.keep_checkpoints=5", "trainer.val_before_train=false", "trainer.ray_num_cpus=4",
        f"trainer.output_dir={out}", *args])


def _metrics(out):
    return {m["step"]: m for m in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "actor/pg_loss" in m}


@pytest.mark.slow
def test_overlap_trains_one_step_behind_and_resumes_in_the_same_data_order(tmp_path, image_row, write_parquet, caplog):
    data = write_parquet([image_row(k % 3 + 1) for k in range(8)], "rl.parquet")
    out = tmp_path / "run"
    run_grpo(_cfg(out, data, "trainer.total_steps=3"))
    m = _metrics(out)
    assert sorted(m) == [1, 2, 3]
    assert [m[s]["rollout/staleness"] for s in (1, 2, 3)] == [0.0, 1.0, 1.0]
    # Step 1 samples and trains the same weights: the engine's log-probs (at the sampling
    # temperature, 0.5 in the tiny recipe) are the policy's, so the first mini-batch's ratio is 1.
    # Log-probs at temperature 1 would be off by far more than this.
    assert abs(m[1]["actor/approx_kl"]) < 1e-3 and abs(m[1]["actor/ratio_mean"] - 1) < 1e-3
    # Steps 2-3 train a batch sampled one update earlier: the ratio moved.
    assert abs(m[2]["actor/ratio_mean"] - 1) > 1e-6
    for s in (2, 3):  # the batch generated ahead carries its own generation time
        assert m[s]["timing/generate_s"] > 0 and "timing/rollout_wait_s" in m[s]

    # The checkpoint of step 2 holds the data order from before step 3's rows were drawn
    # (the thread had already drawn them when the checkpoint was written).
    state = json.loads((out / "checkpoints" / "step_000002" / "driver_state.json").read_text())
    assert (state["sampler"]["epoch"], state["sampler"]["position"]) == (0, 2)

    # Resume for one more step: step 4 is generated now, on-policy (logged), from the next rows.
    with caplog.at_level(logging.WARNING, logger="ovlt"):
        run_grpo(_cfg(out, data, "trainer.total_steps=4"))
    assert "resume with algorithm.overlap" in caplog.text
    m = _metrics(out)
    assert m[4]["rollout/staleness"] == 0.0
    order = EpochIterator(8, 2, seed=1, shuffle=True, drop_last=True)  # the tiny recipe's seed
    assert [m[s]["data/indices"] for s in (1, 2, 3, 4)] == [next(order) for _ in range(4)]


def test_overlap_is_refused_where_rollout_shares_the_policy_gpu():
    from ovlt_rl.config import ConfigError

    with pytest.raises(ConfigError, match="algorithm.overlap"):
        load_config("grpo", ["recipe=tiny", "algorithm.overlap=true", "rollout.gpus_per_worker=0.5"])
