"""Atomic checkpoints: commit by rename, prune after commit, skip truncated, refuse to restart."""

import json

import pytest

from ovlt_rl.checkpoint import CheckpointError, CheckpointManager


def _writer(payload: bytes):
    def write(d):
        with open(f"{d}/shard.bin", "wb") as f:
            f.write(payload)

    return write


def test_save_commits_and_latest_finds_it(tmp_path):
    m = CheckpointManager(tmp_path / "ck", keep=2)
    assert m.latest() is None
    p = m.save(10, _writer(b"abc"), {"step": 10, "sampler": {"epoch": 0, "pos": 3}})
    assert p.name == "step_000010"
    step, path = m.latest()
    assert step == 10 and path == p
    assert m.driver_state(path)["sampler"]["pos"] == 3
    assert not list((tmp_path / "ck").glob(".tmp-*"))


def test_prunes_only_old_ones(tmp_path):
    m = CheckpointManager(tmp_path / "ck", keep=2)
    for s in (1, 2, 3):
        m.save(s, _writer(b"x" * s), {"step": s})
    names = sorted(p.name for p in (tmp_path / "ck").iterdir())
    assert names == ["step_000002", "step_000003"]


def test_truncated_checkpoint_is_ignored(tmp_path):
    m = CheckpointManager(tmp_path / "ck", keep=3)
    m.save(1, _writer(b"good"), {"step": 1})
    p2 = m.save(2, _writer(b"newer"), {"step": 2})
    (p2 / "shard.bin").write_bytes(b"ne")  # truncated after commit (disk trouble)
    step, path = m.latest()
    assert step == 1


def test_unfinished_write_is_ignored(tmp_path):
    m = CheckpointManager(tmp_path / "ck", keep=3)
    m.save(1, _writer(b"good"), {"step": 1})

    def crash(d):
        _writer(b"partial")(d)
        raise KeyboardInterrupt  # killed mid-write

    with pytest.raises(KeyboardInterrupt):
        m.save(2, crash, {"step": 2})
    assert m.latest()[0] == 1
    m.save(2, _writer(b"again"), {"step": 2})  # the stale temp folder doesn't block the next save
    assert m.latest()[0] == 2


def test_no_valid_checkpoint_is_an_error(tmp_path):
    m = CheckpointManager(tmp_path / "ck")
    p = m.save(5, _writer(b"data"), {"step": 5})
    (p / "manifest.json").write_text(json.dumps({"step": 5, "files": {"shard.bin": 999}}))
    with pytest.raises(CheckpointError, match="none is valid"):
        m.latest()
