"""`ovlt prepare` with 2 engine actors (Ray, the hf engine on CPU, tiny-pretrained) writes the
same shards and sets as with the one engine in the driver: each shard keeps its seed."""

from __future__ import annotations

import pytest

from data_prep.pipeline import run_prepare
from ovlt.config import load_config
from ovlt_rl.data.schema import read_rows

# Self-improvement sampling on 8 questions, 4 shards of 2. tiny-pretrained is rarely right in 8
# tokens, so min_reward=0 keeps every graded response: the sets are non-empty and the whole run
# goes through.
ARGS = ["recipe=tiny", "prepare.synthetic_train=8", "prepare.synthetic_val=2", "prepare.synthetic_test=2",
        "prepare.mode=self_improve", "prepare.self_improve.model_path=tiny-pretrained", "prepare.self_improve.k=2",
        "prepare.self_improve.max_new_tokens=8", "prepare.self_improve.limit=0", "prepare.mix.sft_total=0",
        "prepare.mix.sft=[]", "prepare.mix.rl_exclude_sft=false", "prepare.filters.min_reward=0.0",
        "prepare.filters.write_variants=false", "prepare.shard_size=2", "prepare.batch_size=2",
        "prepare.device=cpu", "reward.num_workers=1"]


@pytest.fixture
def ray_shutdown():
    import ray

    yield
    ray.shutdown()


@pytest.mark.slow
def test_two_engine_actors_write_the_rows_of_one(tmp_path, ray_shutdown):
    def cfg(out, n):
        return load_config("prepare", [*ARGS, f"prepare.output_dir={out}", f"prepare.synthetic_dir={tmp_path / 'syn'}",
                                       f"prepare.num_engines={n}"])

    one = run_prepare(cfg(tmp_path / "one", 1))
    seen = []
    two = run_prepare(cfg(tmp_path / "two", 2), on_shard_committed=lambda step, i, reused: seen.append(i))
    assert sorted(seen) == [0, 1, 2, 3]
    for i in range(4):
        rows = read_rows(two / "shards" / f"self_improve-{i:05d}.parquet")
        assert len(rows) == 4 and rows == read_rows(one / "shards" / f"self_improve-{i:05d}.parquet"), i
    for name in ("sft.parquet", "rl.parquet"):
        assert read_rows(one / name) == read_rows(two / name), name
    assert len(read_rows(two / "sft.parquet")) == 8
