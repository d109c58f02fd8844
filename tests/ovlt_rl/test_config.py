"""The typed config tree: loading, overrides, unknown keys, validation naming the field, recipes."""

from pathlib import Path

import pytest

from ovlt.config import RECIPES_DIR, load_config, register_with_hydra, resolve_recipe
from ovlt_rl.config import Config, ConfigError

TRAIN = "data.train_files=[x.parquet]"


def test_defaults_and_overrides_are_typed():
    cfg = load_config("grpo", [TRAIN, "actor.lr=3e-5", "rollout.n=4", "actor.global_batch_size=8"])
    assert isinstance(cfg, Config)
    assert cfg.actor.lr == pytest.approx(3e-5) and isinstance(cfg.actor.lr, float)
    assert cfg.rollout.n == 4
    assert cfg.data.train_files == ["x.parquet"]


@pytest.mark.parametrize(
    "args, field",
    [
        (["actor.lrr=1"], "actor.lrr"),
        (["nosection.x=1"], "nosection"),
        (["actor.lr=abc"], "actor.lr"),
        ([TRAIN, "actor.num_workers=3"], "actor.global_batch_size"),
        ([TRAIN, "actor.micro_batch_size=80"], "actor.micro_batch_size"),
        ([TRAIN, "actor.global_batch_size=40", "actor.micro_batch_size=3"], "actor.micro_batch_size"),
        ([TRAIN, "data.rollout_batch_size=1", "rollout.n=2", "actor.global_batch_size=8", "actor.micro_batch_size=1"], "actor.global_batch_size"),
        ([TRAIN, "rollout.n=3", "data.rollout_batch_size=8", "actor.global_batch_size=8", "actor.micro_batch_size=1"], "actor.global_batch_size"),
        ([TRAIN, "actor.lr_schedule=linearish"], "actor.lr_schedule"),
        ([TRAIN, "rollout.temperature=0"], "rollout.temperature"),
        ([TRAIN, "reference.enabled=false"], "reference"),  # retired: the reference model exists exactly when actor.use_kl_loss
        ([TRAIN, "reward.max_memory_mb=-1"], "reward.max_memory_mb"),
        ([TRAIN, "reward.max_processes=-5"], "reward.max_processes"),
        (["trainer.loggers=[console,carrier_pigeon]", TRAIN], "trainer.loggers"),
        ([TRAIN, "data.format=alpaca"], "data.format"),
        ([TRAIN, "data.format=sharegpt"], "data.format"),  # an SFT layout, no ground truths
        ([TRAIN, "data.prompt_key="], "data.prompt_key"),
        ([TRAIN, "data.image_key="], "data.image_key"),
        ([], "data.train_files"),
        (["recipe=does/not/exist"], "recipe=does/not/exist"),
        (["justakey"], "justakey"),
    ],
)
def test_bad_config_names_the_field(args, field):
    with pytest.raises(ConfigError) as e:
        load_config("grpo", args)
    assert field in str(e.value)


def test_sft_refuses_the_easyr1_layout_which_has_no_responses():
    with pytest.raises(ConfigError, match="data.format: easyr1 rows have no response"):
        load_config("sft", [TRAIN, "data.format=easyr1"])
    assert load_config("sft", [TRAIN, "data.format=sharegpt"]).data.format == "sharegpt"


def test_reward_kwargs_take_any_keys_of_the_users_function():
    cfg = load_config("grpo", [TRAIN, "reward.kwargs.format_weight=0.1", "reward.kwargs.tags=[a,b]"])
    assert cfg.reward.kwargs == {"format_weight": 0.1, "tags": ["a", "b"]}
    assert load_config("grpo", [TRAIN]).reward.kwargs == {}


def _recipes():
    return sorted(p for p in RECIPES_DIR.rglob("*.yaml"))


def _command_of(path: Path) -> str:
    stem = path.stem
    for cmd in ("sft", "grpo", "cycle", "eval", "prepare"):
        if stem == cmd or stem.endswith("_" + cmd) or stem.startswith(cmd):
            return cmd
    raise AssertionError(f"{path}: can't tell which command this recipe is for from its name")


def test_there_are_recipes():
    names = {str(p.relative_to(RECIPES_DIR)) for p in _recipes()}
    assert {"tiny/sft.yaml", "tiny/grpo.yaml"} <= names


@pytest.mark.parametrize("path", _recipes(), ids=lambda p: str(p.relative_to(RECIPES_DIR)))
def test_every_recipe_loads_and_validates(path):
    text = path.read_text()
    assert text.startswith("# ovlt ") or text.startswith("# cluster/"), f"{path} must start with the command that launches it"
    cmd = _command_of(path)
    cfg = load_config(cmd, [f"recipe={path.relative_to(RECIPES_DIR).with_suffix('')}"])
    assert isinstance(cfg, Config)


def test_recipe_resolution_by_command():
    assert resolve_recipe("tiny", "grpo") == RECIPES_DIR / "tiny" / "grpo.yaml"
    assert resolve_recipe("tiny", "sft") == RECIPES_DIR / "tiny" / "sft.yaml"


def test_hydra_registration():
    from hydra.core.config_store import ConfigStore

    register_with_hydra()
    repo = ConfigStore.instance().repo
    assert "ovlt.yaml" in repo and "actor" in repo


@pytest.mark.parametrize("command, arg, message", [
    ("grpo", "actor.kl_type=k9", "actor.kl_type: unknown 'k9'; one of 'low_var_kl', 'k1', 'k2', 'mse', 'k3'"),
    ("sft", "rollout.weight_sync=carrier", "rollout.weight_sync: unknown 'carrier'; one of 'auto', 'object_store', 'nccl', 'ipc'"),
    ("grpo", "trainer.loggers=[jsonl,fax]", "trainer.loggers: unknown 'fax'; one of 'console', 'jsonl', 'tensorboard', 'wandb'"),
    ("prepare", "prepare.filters.pick=median", "prepare.filters.pick: unknown 'median'; one of 'shortest', 'longest', 'random'"),
    ("prepare", "prepare.sources=[{name: geos, path: x, form: csv}]", "prepare.sources[0].form: unknown 'csv'; one of '', 'native', 'llava'"),
])
def test_enum_like_fields_are_checked_at_load_naming_field_and_values(command, arg, message):
    """One mechanism (ovlt_rl.config.one_of/any_of): the field's choices are declared with it."""
    with pytest.raises(ConfigError) as e:
        load_config(command, [TRAIN, "prepare.synthetic=true", arg])
    assert str(e.value) == message
    cfg = load_config(command, [TRAIN, "prepare.synthetic=true"])
    assert isinstance(cfg.actor.kl_type, str) and cfg.actor.kl_type == "low_var_kl"  # plain strings, the first choice
