"""PhaseTimer: seconds per phase, summed over repeats, named as the timing metrics."""

import time

import pytest

from ovlt_rl.driver.timer import PhaseTimer


def test_phases_sum_their_repeats_and_keep_the_order_first_entered():
    timer = PhaseTimer()
    for _ in range(2):
        with timer.phase("generate"):
            time.sleep(0.02)
        with timer.phase("reward"):
            pass
    with timer.phase("update"):
        time.sleep(0.01)
    m = timer.metrics()
    assert list(m) == ["timing/generate_s", "timing/reward_s", "timing/update_s"]
    assert m["timing/generate_s"] >= 0.04 and m["timing/update_s"] >= 0.01
    assert timer.elapsed() >= sum(m.values())


def test_a_phase_that_raises_still_counts():
    timer = PhaseTimer()
    with pytest.raises(ValueError):
        with timer.phase("sync"):
            time.sleep(0.01)
            raise ValueError("boom")
    assert timer.seconds["sync"] >= 0.01


def test_a_phase_never_entered_has_no_metric():
    assert PhaseTimer().metrics() == {}
