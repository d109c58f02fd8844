"""How `ovlt cycle` builds each iteration's stage configs (the stages themselves run in
tests/ovlt_rl/test_e2e_cycle.py)."""

import pytest

from ovlt.config import load_config
from ovlt_rl.config import ConfigError
from ovlt.cycle import run_cycle, stage_configs


def _cycle(tmp_path, *args):
    return load_config("cycle", ["recipe=tiny", f"trainer.output_dir={tmp_path / 'c'}", *args])


def test_prepare_overrides_apply_per_iteration_and_the_last_repeats(tmp_path):
    cfg = _cycle(tmp_path, "cycle.iterations=3", "cycle.prepare_overrides=[[prepare.mix.rl_total=7], [prepare.mix.rl_total=9]]",
                 "cycle.stage_overrides=[prepare.seed=5]")
    got = [stage_configs(cfg.cycle, tmp_path, i) for i in (1, 2, 3)]
    assert [p.prepare.mix.rl_total for p, _, _ in got] == [7, 9, 9]
    assert [p.prepare.mode for p, _, _ in got] == ["distill", "self_improve", "self_improve"]
    assert got[2][0].prepare.self_improve.model_path == str(tmp_path / "grpo-2" / "hf")
    assert all(p.prepare.seed == 5 for p, _, _ in got)
    # each stage reads the files of its own iteration
    assert got[1][1].data.train_files == [str(tmp_path / "data-2" / "sft.parquet")]
    assert got[1][2].model.path == str(tmp_path / "sft-2" / "hf")


def test_the_tiny_cycle_changes_its_rl_sources_between_iterations(tmp_path):
    cfg = _cycle(tmp_path)
    first, second = (stage_configs(cfg.cycle, tmp_path, i)[0].prepare.mix.rl for i in (1, 2))
    assert {e.source for e in first} == {"synthetic/ruler", "synthetic/chart"}
    assert {e.source for e in second} == {"synthetic/count", "synthetic/compare"}


def test_a_bad_override_of_a_later_iteration_fails_before_any_stage_runs(tmp_path):
    cfg = _cycle(tmp_path, "cycle.prepare_overrides=[[], [prepare.mix.no_such_key=1]]")
    with pytest.raises(ConfigError, match="no_such_key"):
        run_cycle(cfg)
    assert not (tmp_path / "c" / "data-1").exists()  # iteration 1 never started


def test_prepare_overrides_must_be_key_value(tmp_path):
    with pytest.raises(ConfigError, match="cycle.prepare_overrides"):
        _cycle(tmp_path, "cycle.prepare_overrides=[[prepare.seed]]")
