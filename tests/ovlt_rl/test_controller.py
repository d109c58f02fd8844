"""Pure helpers of the controller (the loops themselves run in tests/ovlt/test_e2e_cycle.py)."""

import pytest

from ovlt_rl.controller import accuracy_by_source


def test_accuracy_by_source_per_family_and_sorted():
    sources = ["synthetic/count", "synthetic/chart", "synthetic/count", "synthetic/count", "mathvista"]
    correct = [1.0, 0.0, 0.0, 1.0, 1.0]
    got = accuracy_by_source(sources, correct)
    assert got == {
        "val/accuracy/mathvista": 1.0,
        "val/accuracy/synthetic/chart": 0.0,
        "val/accuracy/synthetic/count": pytest.approx(2 / 3),
    }
    assert list(got) == sorted(got)


def test_accuracy_by_source_rejects_mismatched_lengths():
    with pytest.raises(ValueError):
        accuracy_by_source(["a", "b"], [1.0])
