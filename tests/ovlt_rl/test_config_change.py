"""A resume compares its config with the checkpoint's: meaning changes stop the run unless
trainer.allow_config_change, harmless ones pass and are logged; config.yaml is written only once a
run really starts, and earlier ones are kept."""

import pytest
from omegaconf import OmegaConf

from ovlt_rl.checkpoint import CheckpointManager
from ovlt.config import load_config
from ovlt_rl.config import to_yaml
from ovlt_rl.config_change import ConfigChangeRefused, check_resume_config, config_changes
from ovlt_rl.controller import run_sft
from ovlt_rl.driver.run import absolute_paths, write_config


def _cfg(out, *args):
    cfg = load_config("sft", ["recipe=tiny", f"trainer.output_dir={out}", "model.path=tiny", *args])
    absolute_paths(cfg)
    return cfg


def _tree(cfg):
    return OmegaConf.to_container(OmegaConf.structured(cfg))


def test_changes_are_sorted_into_harmless_and_meaning(tmp_path):
    old = _tree(_cfg(tmp_path))
    new = _tree(_cfg(tmp_path, "actor.lr=5e-4", "trainer.total_steps=99", "trainer.save_every=3",
                     "actor.micro_batch_size=8", "data.rollout_batch_size=1000", "prepare.seed=9"))
    del old["trainer"]["allow_config_change"]  # a field the older version didn't have (new: its default)
    old["trainer"]["retired_knob"] = 3  # a field this version no longer has
    harmless, meaning, one_side = config_changes(old, new, _tree(_cfg(tmp_path)))
    a, d, t = old["actor"], old["data"], old["trainer"]
    assert meaning == [f"actor.lr: {a['lr']!r} -> 0.0005", f"data.rollout_batch_size: {d['rollout_batch_size']} -> 1000"]
    assert harmless == [f"actor.micro_batch_size: {a['micro_batch_size']} -> 8", f"prepare.seed: {old['prepare']['seed']} -> 9",
                        f"trainer.save_every: {t['save_every']} -> 3", f"trainer.total_steps: {t['total_steps']} -> 99"]
    assert one_side == ["trainer.retired_knob (only in the saved config)"]


def test_new_fields_and_user_kwargs_are_compared_too(tmp_path):
    """A field the saved config predates counts from its default; reward.kwargs is one value."""
    defaults = _tree(_cfg(tmp_path))
    old = _tree(_cfg(tmp_path, "reward.kwargs.format_weight=0.1"))
    del old["data"]["format"]  # the saved run predates data.format: it read ovlt's own layout
    new = _tree(_cfg(tmp_path, "reward.kwargs.format_weight=0.5", "data.format=sharegpt"))
    harmless, meaning, lost = config_changes(old, new, defaults)
    assert harmless == [] and lost == []
    assert meaning == [f"data.format: {defaults['data']['format']!r} -> 'sharegpt' (the default: the saved config predates this field)",
                       "reward.kwargs: {'format_weight': 0.1} -> {'format_weight': 0.5}"]
    # A kwarg added or removed is a change of the field as well.
    _, meaning, _ = config_changes(_tree(_cfg(tmp_path)), old, defaults)
    assert meaning == ["reward.kwargs: {} -> {'format_weight': 0.1}"]


def _checkpoint_with_config(out, cfg):
    m = CheckpointManager(out / "checkpoints")
    return m.save(5, lambda d: None, {"step": 5}, extra_files={"config.yaml": to_yaml(cfg)})


def test_a_resume_that_changes_the_lr_is_refused_before_any_work(tmp_path):
    out = tmp_path / "run"
    _checkpoint_with_config(out, _cfg(out, "actor.lr=1e-3"))
    (out / "config.yaml").write_text(to_yaml(_cfg(out, "actor.lr=1e-3")))
    before = (out / "config.yaml").read_text()
    with pytest.raises(ConfigChangeRefused, match=r"actor.lr: 0.001 -> 0.0005.*trainer.allow_config_change=true"):
        run_sft(_cfg(out, "actor.lr=1e-3", "actor.lr=5e-4"))
    assert (out / "config.yaml").read_text() == before
    assert not list(out.glob("config.*.yaml")) and not (out / "metrics.jsonl").exists()


def test_harmless_changes_pass_and_the_override_lets_meaning_changes_through_with_a_warning(tmp_path, caplog):
    out = tmp_path / "run"
    path = _checkpoint_with_config(out, _cfg(out, "actor.lr=1e-3", "trainer.total_steps=120"))
    with caplog.at_level("INFO", logger="ovlt"):
        assert check_resume_config(path / "config.yaml", _cfg(out, "actor.lr=1e-3", "trainer.total_steps=200")) == \
            ["trainer.total_steps: 120 -> 200"]
    assert "config changed (allowed): trainer.total_steps: 120 -> 200" in caplog.text
    caplog.clear()
    with caplog.at_level("INFO", logger="ovlt"):
        check_resume_config(path / "config.yaml", _cfg(out, "actor.lr=5e-4", "trainer.allow_config_change=true"))
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warned == ["resume: config changed (trainer.allow_config_change=true): actor.lr: 0.001 -> 0.0005"]


def test_a_failed_command_leaves_config_yaml_alone(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.yaml").write_text("the run that worked\n")
    with pytest.raises(FileNotFoundError, match="no-such.parquet"):
        run_sft(_cfg(out, f"data.train_files=[{tmp_path / 'no-such.parquet'}]", "data.prepare_recipe=''"))
    assert (out / "config.yaml").read_text() == "the run that worked\n"
    assert not list(out.glob("config.*.yaml"))


def test_write_config_keeps_earlier_configs(tmp_path):
    first, second = _cfg(tmp_path), _cfg(tmp_path, "trainer.total_steps=7")
    write_config(tmp_path, first)
    write_config(tmp_path, first)  # the same config again (a plain resume): nothing to keep
    assert not list(tmp_path.glob("config.*.yaml"))
    write_config(tmp_path, second)
    write_config(tmp_path, first)
    assert (tmp_path / "config.1.yaml").read_text() == to_yaml(first)
    assert (tmp_path / "config.2.yaml").read_text() == to_yaml(second)
    assert (tmp_path / "config.yaml").read_text() == to_yaml(first)


def test_every_harmless_entry_names_a_field_of_the_tree(tmp_path):
    from ovlt_rl.config_change import HARMLESS_ON_RESUME, _flatten

    keys = set(_flatten(_tree(_cfg(tmp_path))))
    for entry in HARMLESS_ON_RESUME:
        assert any(k == entry or k.startswith(entry + ".") for k in keys), entry


def test_a_checkpoint_written_before_fields_were_retired_or_moved_resumes(tmp_path, caplog):
    """Fields nothing read (algorithm.adv_estimator, model.tiny_seed, reference.enabled) were removed
    and the simulation knobs moved from prepare.distill to prepare.simulate: an older checkpoint's
    config.yaml still holds them. The resume goes on, names each retired field in the log, and
    compares a moved one at its new place (a harmless change: sft and grpo don't read prepare)."""
    out = tmp_path / "run"
    cfg = _cfg(out)
    old = _tree(cfg)
    old["algorithm"]["adv_estimator"] = "grpo"
    old["model"]["tiny_seed"] = 0
    old["reference"] = {"enabled": True}
    sim = old["prepare"].pop("simulate")
    old["prepare"]["distill"].update({**sim, "restate_rate": 0.7})  # a recipe's value, not the default
    harmless, meaning, lost = config_changes(old, _tree(cfg), _tree(cfg))
    assert meaning == [] and harmless == [f"prepare.simulate.restate_rate: 0.7 -> {sim['restate_rate']!r}"]
    assert lost == [f"{k} (only in the saved config)" for k in ["algorithm.adv_estimator", "model.tiny_seed", "reference.enabled"]]

    saved = tmp_path / "config.yaml"
    saved.write_text(OmegaConf.to_yaml(OmegaConf.create(old)))
    with caplog.at_level("INFO", logger="ovlt"):
        assert check_resume_config(saved, cfg) == harmless
    assert "resume: config field reference.enabled (only in the saved config)" in caplog.text
    assert "resume: config field algorithm.adv_estimator (only in the saved config)" in caplog.text


def test_every_renamed_field_lands_on_a_field_of_the_tree(tmp_path):
    from ovlt_rl.config_change import RENAMED, _flatten

    keys = set(_flatten(_tree(_cfg(tmp_path))))
    assert set(RENAMED.values()) <= keys and not set(RENAMED) & keys
