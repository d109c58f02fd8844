"""The root of the config tree and its loading: what every `ovlt` command reads.

The tree is the engine's sections (ovlt_rl/config.py: model, data, rollout, actor, algorithm,
reward, trainer, eval) plus the two that sit above the engine: `prepare` (data preparation,
data_prep/config.py) and `cycle` (the SFT -> GRPO loop, below). A recipe YAML (`recipes/...`)
overrides the defaults and `key=value` arguments override the recipe:

    ovlt grpo recipe=tiny actor.lr=2e-5 trainer.output_dir=outputs/x
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from data_prep.config import PrepareConfig, validate_prepare
from ovlt_rl.config import Config, ConfigError, check
from ovlt_rl.config import validate as validate_engine


@dataclass
class CycleConfig:
    iterations: int = 2
    """K: iterations of SFT-i -> GRPO-i -> self-improvement data for i+1."""
    base_model: str = "tiny"
    """The base model every SFT-i starts from (the paper: Qwen2.5-VL-7B-Instruct)."""
    prepare_recipe: str = "tiny/prepare"
    """`ovlt prepare` recipe for iteration 1 (distillation) and, with prepare.mode=self_improve, later ones."""
    prepare_recipes: list[str] = field(default_factory=list)
    """Per-iteration prepare recipes instead (the last repeats), e.g. the paper's changing data mixes."""
    prepare_overrides: list[list[str]] = field(default_factory=list)
    """key=value overrides for iteration i's prepare stage, one list per iteration (the last repeats):
    a change of data mix from one iteration to the next without a second recipe file."""
    sft_recipes: list[str] = field(default_factory=lambda: ["tiny/sft"])
    """SFT recipe per iteration (the last one repeats when the list is shorter than `iterations`)."""
    grpo_recipes: list[str] = field(default_factory=lambda: ["tiny/grpo"])
    """GRPO recipe per iteration (the last one repeats)."""
    stage_overrides: list[str] = field(default_factory=list)
    """key=value overrides applied to every stage (e.g. trainer.device=cuda)."""
    sft_overrides: list[str] = field(default_factory=list)
    """key=value overrides for the SFT stages only (after stage_overrides)."""
    grpo_overrides: list[str] = field(default_factory=list)
    """key=value overrides for the GRPO stages only (after stage_overrides)."""


@dataclass
class AppConfig(Config):
    """The whole tree. It extends the engine's root rather than holding it in a field so that keys
    stay flat (`model.path` next to `prepare.seed`) and the engine takes this object as its own
    Config; the engine never reads the two sections added here."""

    prepare: PrepareConfig = field(default_factory=PrepareConfig)
    """Data preparation (`ovlt prepare`)."""
    cycle: CycleConfig = field(default_factory=CycleConfig)
    """The OpenVLThinker loop (`ovlt cycle`)."""


def validate(cfg: AppConfig, command: str) -> None:
    """The engine's checks, then those of the sections above it; run before any work starts."""
    validate_engine(cfg, command)
    if command == "prepare":
        validate_prepare(cfg.prepare)
    if command == "cycle":
        c = cfg.cycle
        check(c.iterations >= 1, "cycle.iterations", f"must be >= 1, got {c.iterations}")
        check(bool(c.sft_recipes) and bool(c.grpo_recipes), "cycle.sft_recipes", "needs at least one SFT and one GRPO recipe")
        for i, over in enumerate(c.prepare_overrides, 1):
            bad = [o for o in over if "=" not in o]
            check(not bad, "cycle.prepare_overrides", f"iteration {i}: expected key=value, got {bad}")


# --------------------------------------------------------------------------------------------
# Loading: defaults <- recipe YAML <- command-line overrides.

RECIPES_DIR = Path(__file__).resolve().parent.parent / "recipes"


def register_with_hydra() -> None:
    """Register the tree as Hydra structured configs (`ovlt` and one node per section), so that
    Hydra apps and `hydra.compose` can use `ovlt` as a schema."""
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    cs.store(name="ovlt", node=AppConfig)
    for f in dataclasses.fields(AppConfig):
        cs.store(group=f.name, name="default", node=f.default_factory)


def resolve_recipe(name: str, command: str):
    """Find the YAML of `recipe=NAME` for `command`.

    Tried in order: NAME as a path to a .yaml file; recipes/NAME.yaml; recipes/NAME/COMMAND.yaml.
    So `ovlt grpo recipe=tiny` reads recipes/tiny/grpo.yaml and `recipe=openvlthinker/iter1_grpo`
    reads recipes/openvlthinker/iter1_grpo.yaml.
    """
    candidates = []
    p = Path(name)
    if p.suffix in (".yaml", ".yml"):
        candidates.append(p)
        candidates.append(RECIPES_DIR.parent / p)
    candidates += [RECIPES_DIR / f"{name}.yaml", RECIPES_DIR / name / f"{command}.yaml"]
    for c in candidates:
        if c.is_file():
            return c
    tried = ", ".join(str(c) for c in candidates)
    raise ConfigError(f"recipe={name}: no recipe file for command {command!r} (tried {tried})")


def recipe_tree(name: str, command: str, _chain: tuple[Path, ...] = ()):
    """The YAML of `recipe=NAME`, merged over the recipes its `defaults` list names (in order, each
    found like recipe=NAME, Hydra's idiom): one recipe holds what several share and each of the
    others only what differs, e.g. openvlthinker/iter2_grpo is openvlthinker/grpo with its paths."""
    from omegaconf import DictConfig, OmegaConf

    path = resolve_recipe(name, command).resolve()
    if path in _chain:
        raise ConfigError(f"recipe={name}: its defaults come back to it ({' -> '.join(p.name for p in (*_chain, path))})")
    tree = OmegaConf.load(path)
    if not isinstance(tree, DictConfig):
        raise ConfigError(f"recipe={name}: {path} is not a mapping of config sections")
    bases = tree.pop("defaults", [])
    bases = list(bases) if OmegaConf.is_list(bases) else bases
    if not (isinstance(bases, list) and all(isinstance(b, str) for b in bases)):
        raise ConfigError(f"recipe={name}: defaults must be a list of recipe names, got {bases!r}")
    return OmegaConf.merge(*(recipe_tree(b, command, (*_chain, path)) for b in bases), tree)


def load_config(command: str, args: list[str]) -> AppConfig:
    """Build the config of one command from `recipe=NAME` and `key=value` arguments.

    Raises ConfigError naming the bad key or value. The result is a typed `AppConfig` object
    (OmegaConf-backed, read-only to code that would add keys).
    """
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    recipe = None
    overrides = []
    for a in args:
        if "=" not in a:
            raise ConfigError(f"argument {a!r}: expected key=value (for example trainer.output_dir=outputs/x)")
        key, value = a.split("=", 1)
        if key == "recipe":
            recipe = value
        else:
            overrides.append(a)
    cfg = OmegaConf.structured(AppConfig)
    OmegaConf.set_struct(cfg, True)
    OmegaConf.set_struct(cfg.reward.kwargs, False)  # the user's function's own keyword arguments: any keys
    OmegaConf.set_struct(cfg.actor.resources_per_worker, False)  # the cluster's own resource names
    try:
        if recipe:
            cfg = OmegaConf.merge(cfg, recipe_tree(recipe, command))
        if overrides:
            cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(overrides))
    except OmegaConfBaseException as e:
        where = f" in recipe {recipe}" if recipe else ""
        msg = str(e).split("\n")[0]
        key = getattr(e, "full_key", None)
        raise ConfigError(f"{key or 'config'}{where}: {msg}") from None
    obj = OmegaConf.to_object(cfg)
    validate(obj, command)
    return obj
