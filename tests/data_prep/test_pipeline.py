"""`ovlt prepare`: the tiny recipe end to end on a small synthetic task, the manifest against the
files, resume after an interruption, and refusing shards made with other settings."""

from __future__ import annotations

import json
import re

import pyarrow.parquet as pq
import pytest

from data_prep.pipeline import run_prepare
from data_prep.reasoner import DEFAULT_REFLECTION_PHRASES
from data_prep.rows import item_key, word_count
from ovlt.config import load_config
from ovlt_rl.config import ConfigError
from ovlt_rl.data.schema import read_rows

SMALL = ["prepare.synthetic_train=160", "prepare.synthetic_val=20", "prepare.synthetic_test=20",
         "prepare.distill.limit=0", "prepare.mix.sft_total=60", "prepare.shard_size=40", "reward.num_workers=1"]


def small_cfg(out, synthetic_dir, *extra):
    return load_config("prepare", ["recipe=tiny", f"prepare.output_dir={out}",
                                   f"prepare.synthetic_dir={synthetic_dir}", *SMALL, *extra])


@pytest.fixture(scope="module")
def synthetic_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("synthetic")


@pytest.fixture(scope="module")
def clean_run(tmp_path_factory, synthetic_dir):
    """One uninterrupted run through the CLI entry point (as `ovlt prepare recipe=tiny ...`)."""
    from ovlt.cli import main

    out = tmp_path_factory.mktemp("clean")
    args = ["prepare", "recipe=tiny", f"prepare.output_dir={out}", f"prepare.synthetic_dir={synthetic_dir}", *SMALL]
    assert main(args) == 0
    return out


def test_outputs_and_manifest_match(clean_run, reward_fn):
    out = clean_run
    manifest = json.loads((out / "manifest.json").read_text())
    for name in ("sft.parquet", "rl.parquet", "val.parquet", "test.parquet", "ablation/sft_unfiltered.parquet",
                 "ablation/sft_length.parquet", "ablation/sft_noreflect.parquet"):
        assert manifest["outputs"][name]["rows"] == pq.ParquetFile(out / name).metadata.num_rows
    steps = {s["step"]: s for s in manifest["steps"]}
    assert steps["distill"]["rows_in"] == 160 and steps["distill"]["rows_out"] == 160 * 4
    assert steps["sft/correctness"]["rows_in"] == 640
    # each step starts from what the previous one left
    chain = ["sft/correctness", "sft/length", "sft/dedup", "sft/pick_one", "sft/reflections", "sft/mix"]
    for a, b in zip(chain, chain[1:]):
        assert steps[a]["rows_out"] == steps[b]["rows_in"], (a, b)
    assert steps["sft/mix"]["rows_out"] == manifest["outputs"]["sft.parquet"]["rows"] == 60
    assert steps["rl/mix"]["rows_out"] == manifest["outputs"]["rl.parquet"]["rows"]
    assert manifest["inputs"][0]["name"] == "synthetic/train" and manifest["models"]["reasoner"].startswith("programmatic")
    assert manifest["config"]["prepare"]["distill"]["k"] == 4

    sft, rl, val = read_rows(out / "sft.parquet"), read_rows(out / "rl.parquet"), read_rows(out / "val.parquet")
    scores = reward_fn.score_batch([r["response"] for r in sft], [r["reward_model"]["ground_truth"] for r in sft]).scores
    assert all(s == 1.0 for s in scores)  # every SFT response is right, in the reward's format
    assert all(word_count(r["response"]) < 500 for r in sft)
    phrases = re.compile("|".join(rf"(?<!\w){re.escape(p)}(?!\w)" for p in DEFAULT_REFLECTION_PHRASES), re.I)
    assert not any(phrases.search(r["response"]) for r in sft)
    assert len({item_key(r) for r in sft}) == len(sft)  # one response per question
    assert not {item_key(r) for r in sft} & {item_key(r) for r in rl}  # RL prompts are other questions
    assert all("response" not in r for r in rl)
    assert not {item_key(r)[0] for r in val} & {item_key(r)[0] for r in sft + rl}  # no eval image in training


def test_ablation_sets_order_by_length(clean_run):
    sets = {v: read_rows(clean_run / "ablation" / f"sft_{v}.parquet") for v in ("unfiltered", "length", "noreflect")}
    keys = [sorted(item_key(r) for r in rows) for rows in sets.values()]
    assert keys[0] == keys[1] == keys[2]  # the same questions; only the responses differ
    mean = {v: sum(word_count(r["response"]) for r in rows) / len(rows) for v, rows in sets.items()}
    assert mean["unfiltered"] > mean["length"] > mean["noreflect"]
    assert max(word_count(r["response"]) for r in sets["unfiltered"]) >= 500


def test_resume_after_interruption(tmp_path, synthetic_dir, clean_run):
    out = tmp_path / "interrupted"
    cfg = small_cfg(out, synthetic_dir)
    done = []

    def stop_after_two(step, index, reused):
        done.append((step, index, reused))
        if len(done) == 2:
            raise KeyboardInterrupt("simulated interruption")

    with pytest.raises(KeyboardInterrupt):
        run_prepare(cfg, on_shard_committed=stop_after_two)
    shards = sorted(p.name for p in (out / "shards").glob("distill-*.parquet"))
    assert shards == ["distill-00000.parquet", "distill-00001.parquet"]
    assert not (out / "sft.parquet").exists()
    mtimes = {n: (out / "shards" / n).stat().st_mtime_ns for n in shards}

    seen = []
    run_prepare(cfg, on_shard_committed=lambda step, index, reused: seen.append((index, reused)))
    assert seen == [(0, True), (1, True), (2, False), (3, False)]  # 160 questions / 40 per shard
    assert {n: (out / "shards" / n).stat().st_mtime_ns for n in shards} == mtimes  # not redone
    for name in ("sft.parquet", "rl.parquet", "ablation/sft_unfiltered.parquet"):
        assert read_rows(out / name) == read_rows(clean_run / name), name


def test_shards_from_other_settings_are_refused(tmp_path, synthetic_dir):
    out = tmp_path / "run"
    run_prepare(small_cfg(out, synthetic_dir, "prepare.filters.write_variants=false"))
    with pytest.raises(RuntimeError, match="other inputs or settings"):
        run_prepare(small_cfg(out, synthetic_dir, "prepare.distill.k=2"))


def test_source_pool_with_validation_holdout(tmp_path, synthetic_dir, clean_run):
    out = tmp_path / "sources"
    cfg = load_config("prepare", [
        "recipe=tiny", f"prepare.output_dir={out}", "prepare.synthetic=false", *SMALL,
        f"prepare.sources=[{{name: parquet, path: {synthetic_dir / 'train.parquet'}}}]",
        "prepare.val_count=20", "prepare.filters.write_variants=false",
    ])
    run_prepare(cfg)
    val, sft, rl = (read_rows(out / f"{n}.parquet") for n in ("val", "sft", "rl"))
    assert len(val) == 20 and not (out / "test.parquet").exists()
    assert not {item_key(r)[0] for r in val} & {item_key(r)[0] for r in sft + rl}
    steps = {s["step"]: s for s in json.loads((out / "manifest.json").read_text())["steps"]}
    hold = steps["val_holdout"]
    assert hold["held_out"] == 20 and hold["rows_in"] - 20 - hold["same_image_as_val"] == hold["rows_out"]
    assert steps["source/parquet"]["rows_out"] == 160


def test_config_errors_name_the_field():
    def check(args, field):
        with pytest.raises(ConfigError, match=re.escape(field)):
            load_config("prepare", ["recipe=tiny", *args])

    check(["prepare.mode=sometimes"], "prepare.mode")
    check(["prepare.mode=self_improve"], "prepare.self_improve.model_path")
    check(["prepare.filters.reflection_mode=maybe"], "prepare.filters.reflection_mode")
    check(["prepare.mix.sft_total=0"], "prepare.mix.sft")  # weights given but no total
    check(["prepare.distill.captioner=engine"], "prepare.distill.captioner_model")
    check(["prepare.simulate.vague_families=[charts]"], "prepare.simulate.vague_families")
    check(["prepare.filters.contamination_keys=[pixels]"], "prepare.filters.contamination_keys")
    check(["prepare.num_engines=0"], "prepare.num_engines")


@pytest.mark.parametrize("recipe", ["tiny/prepare", "openvlthinker/prepare_iter1", "openvlthinker/prepare_iter2",
                                    "openvlthinker/prepare_iter3"])
def test_prepare_recipes_validate(recipe):
    from data_prep.config import validate_prepare

    cfg = load_config("prepare", [f"recipe={recipe}"])  # raises ConfigError naming the field if invalid
    validate_prepare(cfg.prepare)
    # every recipe prepares something: the synthetic task (tiny) or named sources (the paper)
    assert cfg.prepare.synthetic or cfg.prepare.sources
    assert cfg.prepare.mode == ("distill" if recipe.endswith(("prepare", "iter1")) else "self_improve")
