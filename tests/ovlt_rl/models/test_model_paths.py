"""Model settings that name no model fail at once with one line naming the setting, before any
worker, engine or data preparation starts (ovlt_rl/models/paths.py)."""

from __future__ import annotations

import time

import huggingface_hub.constants
import pytest

from ovlt_rl import loopback
from ovlt.cli import main
from ovlt_rl.config import ConfigError


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """An empty local Hugging Face cache; cache(repo_id) puts a model's config.json in it."""
    root = tmp_path / "hf-cache"
    root.mkdir()
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(root))

    def cache(repo_id: str):
        repo = root / f"models--{repo_id.replace('/', '--')}"
        (repo / "refs").mkdir(parents=True)
        (repo / "refs" / "main").write_text("abc123")
        snap = repo / "snapshots" / "abc123"
        snap.mkdir(parents=True)
        (snap / "config.json").write_text("{}")
        return snap

    return cache


def test_accepted_models(tmp_path, hub_cache):
    from ovlt_rl.models.loading import resolve_model_path
    from ovlt_rl.models.paths import check_model_path

    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    for value in ("tiny", "tiny-pretrained", str(folder)):
        check_model_path(value, "model.path")
    snap = hub_cache("someorg/somemodel")
    check_model_path("someorg/somemodel", "model.path")
    # Workers get the cached snapshot folder, not the id (nothing asks the Hub).
    assert resolve_model_path("someorg/somemodel") == str(snap)


@pytest.mark.parametrize("case", ["missing", "no_config", "file", "uncached_hub_id", "empty"])
def test_refused_models_name_the_setting_in_one_line(tmp_path, hub_cache, case):
    from ovlt_rl.models.paths import check_model_path

    value = {
        "missing": str(tmp_path / "does" / "not" / "exist"),
        "no_config": str(tmp_path),
        "file": str(tmp_path / "weights.safetensors"),
        "uncached_hub_id": "someorg/notcached",
        "empty": "",
    }[case]
    (tmp_path / "weights.safetensors").write_bytes(b"x")
    with pytest.raises(ConfigError) as e:
        check_model_path(value, "prepare.distill.reasoner_model")
    msg = str(e.value)
    assert msg.startswith("prepare.distill.reasoner_model") and "\n" not in msg
    assert repr(value) in msg or case == "empty"
    if case in ("missing", "uncached_hub_id"):
        assert "runs do not download models" in msg
    if case == "uncached_hub_id":
        assert "`hf download someorg/notcached`" in msg


@pytest.fixture
def run_cli(monkeypatch, capsys):
    """run_cli(*args) -> (exit code, stderr, seconds): `ovlt` in this process, environment restored."""
    for k in loopback.LOOPBACK_ENV:
        monkeypatch.delenv(k, raising=False)  # main() sets them; monkeypatch removes them again
    monkeypatch.delenv("RAY_ADDRESS", raising=False)

    def run(*args: str):
        t0 = time.perf_counter()
        rc = main(list(args))
        return rc, capsys.readouterr().err, time.perf_counter() - t0

    return run


def _data(write_parquet, image_row):
    return write_parquet([image_row(k % 3 + 1, response="<answer>1</answer>") for k in range(8)])


@pytest.mark.parametrize("command", ["sft", "grpo"])
def test_training_with_a_missing_model_is_one_line_before_any_worker(command, tmp_path, run_cli, write_parquet, image_row):
    import ray

    data = _data(write_parquet, image_row)
    missing = tmp_path / "no-such-model"
    rc, err, seconds = run_cli(command, "recipe=tiny", f"model={missing}", "data.prepare_recipe=''",
                               f"data.train_files=[{data}]", "data.val_files=[]", f"trainer.output_dir={tmp_path / 'out'}")
    assert rc == 2
    assert err.strip().count("\n") == 0 and f"ovlt {command}: config error: model.path='{missing}'" in err
    assert not ray.is_initialized() and seconds < 10


def test_eval_with_a_missing_model(tmp_path, run_cli, write_parquet, image_row):
    data = _data(write_parquet, image_row)
    rc, err, _ = run_cli("eval", "benchmark=synthetic", f"data={data}", "model=someorg/notcached",
                         f"eval.output_dir={tmp_path / 'eval'}")
    assert rc == 2 and err.strip().count("\n") == 0
    assert "ovlt eval: config error: model.path='someorg/notcached'" in err
    assert not (tmp_path / "eval").exists()


@pytest.mark.parametrize("role", ["captioner", "reasoner"])
def test_prepare_with_a_missing_distillation_model(role, tmp_path, run_cli):
    out = tmp_path / "data"
    rc, err, seconds = run_cli("prepare", "recipe=tiny/prepare", f"prepare.output_dir={out}",
                               f"prepare.distill.{role}=engine", f"prepare.distill.{role}_model={tmp_path / 'nope'}")
    assert rc == 2 and err.strip().count("\n") == 0
    assert f"ovlt prepare: config error: prepare.distill.{role}_model='{tmp_path / 'nope'}'" in err
    assert not out.exists() and seconds < 10  # nothing was generated first


def test_cycle_checks_its_base_model_before_the_first_stage(tmp_path, run_cli):
    out = tmp_path / "cycle"
    rc, err, _ = run_cli("cycle", "recipe=tiny", f"cycle.base_model={tmp_path / 'nope'}", f"trainer.output_dir={out}")
    assert rc == 2 and f"ovlt cycle: config error: cycle.base_model='{tmp_path / 'nope'}'" in err
    assert not (out / "data-1").exists()
