"""docs/coming-from-verl-easyr1.md: every row of the config-key table names real ovlt keys and its
example loads and sets them; the whole-config examples (docs/examples/*.yaml) load and validate."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from ovlt.config import load_config

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "coming-from-verl-easyr1.md"
BASE = ["data.train_files=[x.parquet]"]


def _table_rows() -> list[tuple[str, list[str], list[str]]]:
    """(setting, ovlt keys, example arguments) of each row of the "Config keys" table."""
    section = DOC.read_text().split("## Config keys", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 5 or cells[0] in ("setting", "---"):
            continue
        keys = re.findall(r"`([a-z_]+\.[a-z_.]+)`", cells[3])
        example = cells[4].strip("`").split()
        rows.append((cells[0], keys, example))
    return rows


def _get(cfg, dotted: str):
    for part in dotted.split("."):
        cfg = getattr(cfg, part)
    return cfg


def _expected(actual, text: str):
    if isinstance(actual, bool):
        return text == "true"
    if isinstance(actual, list):
        return [str(x) for x in yaml.safe_load(text.replace("[", "['").replace("]", "']").replace(",", "','"))]
    return type(actual)(text)


def test_the_table_has_the_common_settings():
    settings = {s for s, _, _ in _table_rows()}
    for needed in ("samples per prompt", "temperature", "clip ratio (low)", "clip ratio (high)", "KL coefficient",
                   "learning rate", "prompts per step", "update batch", "max prompt length", "max response length"):
        assert needed in settings


@pytest.mark.parametrize("setting,keys,example", _table_rows(), ids=[r[0] for r in _table_rows()])
def test_each_rows_example_loads_and_sets_its_keys(setting, keys, example):
    assert keys and example
    cfg = load_config("grpo", BASE + example)
    set_keys = [a.split("=", 1)[0] for a in example]
    assert set(keys) <= set(set_keys), f"{setting}: the example does not set {set(keys) - set(set_keys)}"
    for arg in example:
        key, value = arg.split("=", 1)
        actual = _get(cfg, key)
        assert actual == _expected(actual, value), f"{setting}: {key} is {actual!r}"


@pytest.mark.parametrize("name,fmt", [("grpo_from_easyr1.yaml", "easyr1"), ("grpo_from_verl.yaml", "verl")])
def test_whole_config_examples_load(name, fmt):
    cfg = load_config("grpo", [f"recipe=docs/examples/{name}"])
    assert cfg.data.format == fmt
    assert cfg.rollout.n == 5 and cfg.data.rollout_batch_size == 512
    assert cfg.actor.global_batch_size == 128 * cfg.rollout.n  # their 128 prompts per update, in samples
    assert cfg.actor.use_kl_loss and cfg.actor.kl_type == "low_var_kl"
