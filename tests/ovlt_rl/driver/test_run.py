"""The run skeleton's pure parts: the non-finite streak and the step cadence (the Run itself runs
in the end-to-end tests)."""

from pathlib import Path

import pytest

from ovlt_rl.driver.run import NonfiniteStreak, is_step


def test_the_streak_resets_on_a_good_step_and_stops_the_run_at_the_limit():
    streak = NonfiniteStreak(3, 1, Path("/out/checkpoints"))  # resumed with one skip in a row
    streak.count(True)
    streak.count(False)
    assert streak.in_a_row == 0
    streak.count(True)
    streak.count(True)
    with pytest.raises(RuntimeError, match=r"3 steps in a row .*actor.max_nonfinite_in_a_row.*intact in /out/checkpoints"):
        streak.count(True)


def test_is_step_every_n_and_the_last():
    assert [s for s in range(1, 8) if is_step(s, 3, 7)] == [3, 6, 7]
    assert [s for s in range(1, 8) if is_step(s, 0, 7)] == [7]
