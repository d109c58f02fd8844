"""ShardedStep with several workers (one per engine): the same shards as one worker, in shard
order, and an interrupted run resumes at the shards not yet committed."""

from __future__ import annotations

import random
import threading
import time

import pytest

from data_prep.shards import ShardedStep, seed_for
from ovlt_rl.data.schema import make_row, read_rows

ITEMS = [make_row(data_source="test/x", question=f"q{i}", ground_truth=str(i), extra_info={"i": i}) for i in range(10)]
IDS = [str(i) for i in range(10)]
threads: set[str] = set()  # names of the threads that ran `work`


def work(shard, index):
    """Rows that depend on the shard's seed only; a delay that differs by shard, so that shards can commit out of order."""
    rng = random.Random(seed_for(7, index))
    time.sleep(rng.random() * 0.02)
    threads.add(threading.current_thread().name)
    return [{**r, "extra_info": {**r["extra_info"], "draw": rng.random()}} for r in shard]


def test_two_workers_write_the_shards_of_one(tmp_path):
    one, stats1 = ShardedStep(tmp_path / "one", "s", {}, 3).run(ITEMS, IDS, work)
    threads.clear()
    two, stats2 = ShardedStep(tmp_path / "two", "s", {}, 3).run(ITEMS, IDS, [work, work])
    assert len(threads) == 2  # both workers took shards
    assert one == two and [r["extra_info"]["i"] for r in two] == list(range(10))
    assert stats1 == stats2 == {"shards": 4, "shards_reused": 0, "shards_computed": 4}
    for i in range(4):
        assert read_rows(tmp_path / "one" / f"s-{i:05d}.parquet") == read_rows(tmp_path / "two" / f"s-{i:05d}.parquet")


def test_interrupted_workers_resume_at_the_uncommitted_shards(tmp_path):
    clean, _ = ShardedStep(tmp_path / "clean", "s", {}, 2).run(ITEMS, IDS, work)

    def stop(step, index, reused):
        raise KeyboardInterrupt("simulated interruption")

    with pytest.raises(KeyboardInterrupt):
        ShardedStep(tmp_path / "run", "s", {}, 2, on_commit=stop).run(ITEMS, IDS, [work, work])
    committed = sorted(int(p.stem[-5:]) for p in (tmp_path / "run").glob("s-*.parquet"))
    # the first commit stops the run; the other worker finishes the shard it had started, no more
    assert 1 <= len(committed) <= 2
    seen = []
    out, stats = ShardedStep(tmp_path / "run", "s", {}, 2, on_commit=lambda s, i, reused: seen.append((i, reused))).run(
        ITEMS, IDS, [work, work])
    assert sorted(i for i, reused in seen if reused) == committed
    assert sorted(i for i, reused in seen if not reused) == [i for i in range(5) if i not in committed]
    assert stats["shards_reused"] == len(committed) and out == clean
