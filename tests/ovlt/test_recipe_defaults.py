"""A recipe's `defaults` list names recipes merged under it: the paper's GRPO and SFT settings are
written once (openvlthinker/grpo, openvlthinker/sft) and each iteration's recipe adds its paths."""

import pytest

from ovlt.config import load_config
from ovlt_rl.config import ConfigError, to_yaml


def _write(tmp_path, name, text):
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    return str(path)


def test_defaults_merge_in_order_and_the_recipe_itself_wins(tmp_path):
    a = _write(tmp_path, "a", "actor:\n  lr: 1.0e-3\n  kl_coef: 0.5\ntrainer:\n  seed: 7\n")
    b = _write(tmp_path, "b", "actor:\n  kl_coef: 0.25\n")
    top = _write(tmp_path, "top", f"defaults: [{a}, {b}]\nactor:\n  lr: 2.0e-3\n")
    cfg = load_config("grpo", [f"recipe={top}", "data.train_files=[x]", "trainer.seed=9"])
    assert (cfg.actor.lr, cfg.actor.kl_coef, cfg.trainer.seed) == (2e-3, 0.25, 9)  # command line last


@pytest.mark.parametrize("defaults, match", [("[SELF]", "come back to it"), ("7", "must be a list of recipe names"),
                                              ("[no/such]", "no recipe file")])
def test_bad_defaults_are_a_config_error(tmp_path, defaults, match):
    path = tmp_path / "loop.yaml"
    path.write_text(f"defaults: {defaults.replace('SELF', str(path))}\n")
    with pytest.raises(ConfigError, match=match):
        load_config("grpo", [f"recipe={path}", "data.train_files=[x]"])


@pytest.mark.parametrize("command", ["grpo", "sft"])
def test_each_iteration_is_the_shared_recipe_with_its_paths(command):
    shared = load_config(command, [f"recipe=openvlthinker/{command}"])
    for i in (1, 2, 3):
        it = load_config(command, [f"recipe=openvlthinker/iter{i}_{command}"])
        paths = {"model.path": it.model.path, "data.train_files": it.data.train_files,
                 "data.val_files": it.data.val_files, "trainer.output_dir": it.trainer.output_dir}
        assert f"iter{i}_" in str(paths)
        moved = load_config(command, [f"recipe=openvlthinker/{command}", *(f"{k}={v}".replace("'", "") for k, v in paths.items())])
        assert to_yaml(moved) == to_yaml(it)
    assert to_yaml(shared) == to_yaml(load_config(command, [f"recipe=openvlthinker/iter1_{command}"]))
