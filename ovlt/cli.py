"""`ovlt`: the command line.

    ovlt prepare tiny-model [out=DIR] [seed=0] [force=true]   build the offline tiny Qwen2.5-VL model
    ovlt prepare synthetic recipe=tiny [prepare.output_dir=D] write the synthetic task's train/val/test
    ovlt prepare recipe=tiny [prepare.output_dir=D]           data preparation: distill -> filter -> mix
    ovlt prepare convert src=PATH out=F.parquet data.format=easyr1 [data.prompt_key=...]  verl/EasyR1/ShareGPT data -> ovlt Parquet
    ovlt sft recipe=tiny [key=value ...]                       supervised fine-tuning on the policy workers
    ovlt grpo recipe=tiny [key=value ...]                      GRPO: rollouts, rewards, policy updates
    ovlt cycle recipe=tiny [key=value ...]                     SFT -> GRPO -> self-improvement, K iterations
    ovlt eval [recipe=...] benchmark=NAME data=PATH [model=DIR | responses=FILE.jsonl]
    ovlt reward score fn=SPEC data=FILE.jsonl                  try a reward function on a JSONL file
    ovlt export run=OUTPUT_DIR [step=N] [out=DIR] [dtype=auto|bf16|fp32] [force=true]
                                                               a checkpoint as an HF model folder
    ovlt config COMMAND recipe=... [key=value ...]             print the resolved config and exit

Every command takes `recipe=NAME` (recipes/NAME.yaml or recipes/NAME/COMMAND.yaml) and
`section.key=value` overrides of the typed tree in ovlt/config.py. Shorthands: `model=X`
means `model.path=X`; for eval, `benchmark=`, `data=` and `responses=` set eval.benchmarks,
eval.data and eval.responses.
"""

from __future__ import annotations

import logging
import sys

from ovlt.config import load_config  # imports no Ray
from ovlt_rl.config import ConfigError, to_yaml

# Shorthand keys, per command, and the tree fields they stand for.
_ALIASES = {
    "*": {"model": "model.path"},
    "eval": {"benchmark": "eval.benchmarks", "data": "eval.data", "responses": "eval.responses"},
}


def _expand_aliases(command: str, args: list[str]) -> list[str]:
    table = {**_ALIASES["*"], **_ALIASES.get(command, {})}
    out = []
    for a in args:
        key, sep, value = a.partition("=")
        if sep and key in table:
            if table[key] == "eval.benchmarks" and not value.startswith("["):
                value = f"[{value}]"
            a = f"{table[key]}={value}"
        out.append(a)
    return out


def _kv(args: list[str], allowed: dict[str, str]) -> dict[str, str]:
    """Parse key=value arguments of the small non-tree commands; unknown keys are errors."""
    out = {}
    for a in args:
        key, sep, value = a.partition("=")
        if not sep or key not in allowed:
            raise ConfigError(f"argument {a!r}: expected one of {', '.join(f'{k}=' for k in allowed)}")
        out[key] = value
    return out


def configure_logging() -> None:
    """INFO and up to stderr, with times: the entry points' choice (library code only logs)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(__doc__)
        return 0
    command, rest = argv[0], argv[1:]
    if command != "reward":  # `ovlt reward` has its own format (reward/cli.py)
        configure_logging()
    from ovlt_rl import loopback

    loopback.apply(rest)  # before anything imports Ray
    try:
        return _dispatch(command, rest)
    except ConfigError as e:
        print(f"ovlt {command}: config error: {e}", file=sys.stderr)
        return 2


def _dispatch(command: str, rest: list[str]) -> int:
    if command == "prepare":
        return _prepare(rest)
    if command == "reward":
        from reward.cli import main as reward_main

        return reward_main(rest)
    if command == "export":
        return _export(rest)
    if command == "config":
        if not rest:
            raise ConfigError("usage: ovlt config COMMAND recipe=... [key=value ...]")
        cfg = load_config(rest[0], _expand_aliases(rest[0], rest[1:]))
        print(to_yaml(cfg))
        return 0
    if command in ("sft", "grpo", "cycle", "eval"):
        cfg = load_config(command, _expand_aliases(command, rest))
        _check_command_models(cfg, command)  # a bad model path: one line now, not a traceback later
        if command in ("sft", "grpo"):
            from ovlt.run_data import ensure_data
            from ovlt_rl.controller import run_grpo, run_sft

            ensure_data(cfg)
            (run_sft if command == "sft" else run_grpo)(cfg)
        elif command == "cycle":
            from ovlt.cycle import run_cycle

            run_cycle(cfg)
        else:
            from ovlt_rl.eval.run import run_eval

            run_eval(cfg)
        return 0
    raise ConfigError(f"unknown command {command!r}; run `ovlt --help`")


def _check_command_models(cfg, command: str) -> None:
    """The model settings `command` loads at its start (checked before the engine is imported; the
    loops check again for callers that skip the CLI). Preparation's models are checked when it
    starts (data_prep.config.check_prepare_models), a cycle's later stages' when they start."""
    from ovlt_rl.models.paths import check_model_path

    if command in ("sft", "grpo") or (command == "eval" and not cfg.eval.responses):
        check_model_path(cfg.model.path, "model.path")
    elif command == "cycle":
        check_model_path(cfg.cycle.base_model, "cycle.base_model")


def _prepare(rest: list[str]) -> int:
    what = rest[0] if rest and "=" not in rest[0] else None
    args = rest[1:] if what else rest
    if what == "tiny-model":
        from ovlt_rl.models.cli import prepare_tiny_model

        opts = _kv(args, {"out": "folder (default: the cache)", "seed": "int", "force": "bool"})
        path = prepare_tiny_model(
            opts.get("out"), seed=int(opts.get("seed", 0)), force=opts.get("force", "false").lower() == "true"
        )
        print(f"tiny model: {path}")
        return 0
    if what == "synthetic":
        from data_prep.synthetic import write_synthetic

        cfg = load_config("prepare", _expand_aliases("prepare", args)).prepare
        paths = write_synthetic(
            cfg.output_dir,
            n_train=cfg.synthetic_train,
            n_val=cfg.synthetic_val,
            n_test=cfg.synthetic_test,
            seed=cfg.seed,
            image_size=cfg.image_size,
            families=list(cfg.families) or None,
        )
        for split, p in paths.items():
            print(f"{split}: {p}")
        return 0
    if what == "convert":
        return _convert(args)
    if what is None:
        from data_prep.pipeline import run_prepare

        run_prepare(load_config("prepare", _expand_aliases("prepare", args)))
        return 0
    raise ConfigError(f"ovlt prepare {what}: unknown; expected tiny-model, synthetic, convert, or recipe=... for the data pipeline")


def _export(args: list[str]) -> int:
    """ovlt export run=OUTPUT_DIR [step=N] [out=DIR] [dtype=auto|bf16|fp32] [force=true]"""
    from ovlt_rl.checkpoint import CheckpointError
    from ovlt_rl.checkpoint_export import export_checkpoint

    opts = _kv(args, {"run": "a run's trainer.output_dir", "step": "int (default: the newest that verifies)",
                      "out": "folder (default: RUN/export/step_N)", "dtype": "auto|bf16|fp32", "force": "bool"})
    if "run" not in opts:
        raise ConfigError("usage: ovlt export run=OUTPUT_DIR [step=N] [out=DIR] [dtype=auto|bf16|fp32] [force=true]")
    step = opts.get("step")
    if step is not None and not step.isdigit():
        raise ConfigError(f"step={step!r}: expected a step number")
    force = opts.get("force", "false").lower()
    if force not in ("true", "false"):
        raise ConfigError(f"force={force!r}: expected true or false")
    try:
        path = export_checkpoint(opts["run"], step=None if step is None else int(step), out=opts.get("out"),
                                 dtype=opts.get("dtype", "auto"), force=force == "true")
    except CheckpointError as e:
        print(f"ovlt export: {e}", file=sys.stderr)
        return 1
    print(f"model: {path}")
    return 0


_CONVERT_KEYS = ("format", "prompt_key", "answer_key", "image_key", "messages_key", "image_dir")


def _convert(args: list[str]) -> int:
    """ovlt prepare convert src=PATH out=FILE.parquet [data.format=easyr1 data.prompt_key=... ...]"""
    data_args = [a for a in args if a.startswith("data.")]
    opts = _kv([a for a in args if not a.startswith("data.")], {"src": "data to convert", "out": "ovlt Parquet file"})
    if "src" not in opts or "out" not in opts:
        raise ConfigError("usage: ovlt prepare convert src=PATH out=FILE.parquet [data.format=verl|easyr1|sharegpt] [data.prompt_key=...]")
    bad = [a for a in data_args if a.split("=", 1)[0].removeprefix("data.") not in _CONVERT_KEYS]
    if bad:
        raise ConfigError(f"argument {bad[0]!r}: convert takes {', '.join('data.' + k for k in _CONVERT_KEYS)}")
    d = load_config("convert", data_args).data  # the data section, checked like a run's
    from data_prep.convert import convert
    from ovlt_rl.data.formats import DataFormat

    path, n = convert(opts["src"], opts["out"], DataFormat.from_config(d))
    print(f"{n} rows: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
