"""EpochIterator: coverage, determinism, epoch boundaries, state round trips."""

from __future__ import annotations

import itertools

import pytest

from ovlt_rl.data.loader import EpochIterator


def _take(it, n):
    return list(itertools.islice(it, n))


def test_each_epoch_covers_every_index_once_in_a_new_order():
    it = EpochIterator(10, 5, seed=1, drop_last=True)
    assert it.batches_per_epoch == 2
    e0, e1 = _take(it, 2), _take(it, 2)
    assert sorted(sum(e0, [])) == sorted(sum(e1, [])) == list(range(10))
    assert e0 != e1  # reshuffled per epoch
    assert e0 == _take(EpochIterator(10, 5, seed=1), 2)  # same seed, same order
    assert e0 != _take(EpochIterator(10, 5, seed=2), 2)
    assert _take(EpochIterator(10, 5, seed=1, shuffle=False), 2) == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]


def test_epoch_boundaries_never_give_empty_batches():
    keep = EpochIterator(10, 4, seed=0, drop_last=False)
    batches = _take(keep, 6)
    assert [len(b) for b in batches] == [4, 4, 2, 4, 4, 2]
    assert keep.epoch == 2 and keep.position == 0
    drop = EpochIterator(10, 4, seed=0, drop_last=True)
    assert [len(b) for b in _take(drop, 5)] == [4] * 5
    assert drop.epoch == 2 and drop.position == 1
    with pytest.raises(ValueError, match="zero steps"):
        EpochIterator(3, 4, seed=0, drop_last=True)
    assert _take(EpochIterator(3, 4, seed=0, drop_last=False, shuffle=False), 2) == [[0, 1, 2], [0, 1, 2]]


@pytest.mark.parametrize("steps", [0, 1, 3, 4, 7])  # 3 batches per epoch: 3 and 6 are epoch ends
def test_state_round_trip_resumes_the_same_order(steps):
    a = EpochIterator(13, 4, seed=7)
    _take(a, steps)
    state = a.state_dict()
    b = EpochIterator(13, 4, seed=7)
    b.load_state_dict(dict(state))
    assert _take(b, 8) == _take(a, 8)
    if steps == 3:
        assert state["epoch"] == 1 and state["position"] == 0


def test_mismatched_state_is_refused():
    state = EpochIterator(13, 4, seed=7).state_dict()
    with pytest.raises(ValueError, match="n_items=13"):
        EpochIterator(12, 4, seed=7).load_state_dict(state)
    with pytest.raises(ValueError, match="seed=7"):
        EpochIterator(13, 4, seed=8).load_state_dict(state)
    with pytest.raises(ValueError, match="out of range"):
        EpochIterator(13, 4, seed=7).load_state_dict({**state, "position": 3})
