"""`ovlt cycle`: the OpenVLThinker loop as one command.

    for i in 1..K:
        data-i   iteration 1: distillation (captioner -> text reasoner -> filters -> mix)
                 later:       self-improvement sampling from grpo-(i-1) (k samples, keep correct, filters)
        sft-i    SFT from the BASE model on data-i's SFT set
        grpo-i   GRPO from sft-i on data-i's RL set
    then cycle_report.json + report.md

Every stage is an ordinary `ovlt prepare/sft/grpo` run with its own recipe and output folder under
`trainer.output_dir`, so each can also be run (or re-run) alone. A finished stage writes
`stage.json` into its folder and is never redone; an interrupted one is re-run with the same config
and resumes from its own checkpoint. `lineage.json` records what every model and dataset was made
from, with the config hash and the hashes of the data files.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any, Callable

from ovlt.config import AppConfig, load_config
from ovlt_rl.checkpoint import file_sha256
from ovlt_rl.config import to_yaml

log = logging.getLogger("ovlt.cycle")


def _pick(recipes: list[str], i: int) -> str:
    return recipes[min(i - 1, len(recipes) - 1)]


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
    os.replace(tmp, path)


def _last_val_accuracy(metrics_path: Path) -> tuple[float | None, float | None]:
    """(accuracy at the first validation, accuracy at the last) from a run's metrics.jsonl."""
    from ovlt_rl.tracking import read_metrics

    vals = [m["val/accuracy"] for m in read_metrics(metrics_path) if m.get("val/accuracy") is not None]
    return (vals[0], vals[-1]) if vals else (None, None)


class Cycle:
    def __init__(self, cfg: AppConfig):
        self.cfg = cfg
        self.root = Path(cfg.trainer.output_dir)
        self.root.mkdir(parents=True, exist_ok=True)
        self.lineage_path = self.root / "lineage.json"
        self.lineage: dict[str, Any] = json.loads(self.lineage_path.read_text()) if self.lineage_path.exists() else {}

    def stage(self, name: str, kind: str, cfg: AppConfig, run: Callable[[AppConfig], Any], inputs: dict[str, str],
              outputs: dict[str, str]) -> dict[str, Any]:
        """Run one stage unless its stage.json says it finished with the same config."""
        folder = self.root / name
        marker = folder / "stage.json"
        config_hash = hashlib.sha256(to_yaml(cfg).encode()).hexdigest()
        if marker.exists():
            done = json.loads(marker.read_text())
            if done["config_hash"] != config_hash:
                raise RuntimeError(
                    f"{name}: finished earlier with a different config (stage.json in {folder}); "
                    "use a new trainer.output_dir or remove that stage's folder to redo it"
                )
            log.info("%s: already done, skipping", name)
            return done
        log.info("%s: starting (%s)", name, kind)
        run(cfg)
        record = {
            "name": name,
            "kind": kind,
            "config_hash": config_hash,
            "inputs": {k: {"path": v, "sha256": file_sha256(v) if Path(v).is_file() else None} for k, v in inputs.items()},
            "outputs": {k: {"path": v, "sha256": file_sha256(v) if Path(v).is_file() else None} for k, v in outputs.items()},
        }
        folder.mkdir(parents=True, exist_ok=True)
        _write_json(marker, record)
        self.lineage[name] = record
        _write_json(self.lineage_path, self.lineage)
        return record


def _stage_cfg(command: str, recipe: str, overrides: list[str]) -> AppConfig:
    return load_config(command, [f"recipe={recipe}", *overrides])


def stage_configs(c, root: Path, i: int) -> tuple[AppConfig, AppConfig, AppConfig]:
    """Iteration i's (prepare, sft, grpo) configs: each stage's recipe with the paths that chain the
    stages and the cycle's overrides. Built for every iteration before the first stage runs, so a
    bad recipe or override of iteration 2 fails in seconds, not after iteration 1's training."""
    data_dir, sft_dir, grpo_dir = root / f"data-{i}", root / f"sft-{i}", root / f"grpo-{i}"
    common = list(c.stage_overrides)
    prep_over = [f"prepare.output_dir={data_dir}", *common]
    if i > 1:  # self-improvement from the previous iteration's GRPO model
        prep_over += ["prepare.mode=self_improve", f"prepare.self_improve.model_path={root / f'grpo-{i - 1}' / 'hf'}"]
    if c.prepare_overrides:
        prep_over += _pick(c.prepare_overrides, i)
    prep_recipe = _pick(c.prepare_recipes, i) if c.prepare_recipes else c.prepare_recipe
    prep = _stage_cfg("prepare", prep_recipe, prep_over)
    sft = _stage_cfg("sft", _pick(c.sft_recipes, i), [
        f"model.path={c.base_model}",
        f"data.train_files=[{data_dir / 'sft.parquet'}]",
        f"data.val_files=[{data_dir / 'val.parquet'}]",
        "data.prepare_recipe=''",
        f"trainer.output_dir={sft_dir}",
        "trainer.val_before_train=true" if i == 1 else "trainer.val_before_train=false",
        *common,
        *c.sft_overrides,
    ])
    grpo = _stage_cfg("grpo", _pick(c.grpo_recipes, i), [
        f"model.path={sft_dir / 'hf'}",
        f"data.train_files=[{data_dir / 'rl.parquet'}]",
        f"data.val_files=[{data_dir / 'val.parquet'}]",
        "data.prepare_recipe=''",
        f"trainer.output_dir={grpo_dir}",
        *common,
        *c.grpo_overrides,
    ])
    return prep, sft, grpo


def run_cycle(cfg: AppConfig) -> Path:
    """The whole cycle, holding its output folder's lock (one cycle per folder; each stage's run
    also locks its own folder)."""
    from ovlt_rl.run_lock import OutputLock

    with OutputLock(cfg.trainer.output_dir):
        return _run_cycle(cfg)


def _run_cycle(cfg: AppConfig) -> Path:
    from data_prep.pipeline import run_prepare
    from ovlt_rl.controller import run_grpo, run_sft
    from ovlt_rl.report import write_report

    c = cfg.cycle
    cyc = Cycle(cfg)
    root = cyc.root
    configs = [stage_configs(c, root, i) for i in range(1, c.iterations + 1)]
    # The base model (every SFT stage's model.path) exists now; each later stage's model is made by
    # the stage before it and is checked when its stage starts. Iteration 1's preparation models too.
    from data_prep.config import check_prepare_models
    from ovlt_rl.models.paths import check_model_path

    check_model_path(c.base_model, "cycle.base_model")
    check_prepare_models(configs[0][0].prepare)
    report: dict[str, Any] = {"base_val_accuracy": None, "stages": []}
    prev_grpo_model = None
    for i in range(1, c.iterations + 1):
        data_dir, sft_dir, grpo_dir = root / f"data-{i}", root / f"sft-{i}", root / f"grpo-{i}"
        prep_cfg, sft_cfg, grpo_cfg = configs[i - 1]
        cyc.stage(f"data-{i}", "prepare", prep_cfg, run_prepare,
                  inputs={"model": prev_grpo_model or "programmatic"},
                  outputs={"sft": str(data_dir / "sft.parquet"), "rl": str(data_dir / "rl.parquet"), "val": str(data_dir / "val.parquet")})

        cyc.stage(f"sft-{i}", "sft", sft_cfg, run_sft, inputs={"model": c.base_model, "data": str(data_dir / "sft.parquet")},
                  outputs={"model": str(sft_dir / "hf")})
        first, last = _last_val_accuracy(sft_dir / "metrics.jsonl")
        if i == 1:
            report["base_val_accuracy"] = first if sft_cfg.trainer.val_before_train else None
        report["stages"].append({"name": f"sft-{i}", "kind": "sft", "iteration": i, "val_accuracy": last, "output_dir": sft_dir.name})

        cyc.stage(f"grpo-{i}", "grpo", grpo_cfg, run_grpo, inputs={"model": str(sft_dir / "hf"), "data": str(data_dir / "rl.parquet")},
                  outputs={"model": str(grpo_dir / "hf")})
        _, last = _last_val_accuracy(grpo_dir / "metrics.jsonl")
        report["stages"].append({"name": f"grpo-{i}", "kind": "grpo", "iteration": i, "val_accuracy": last, "output_dir": grpo_dir.name})
        prev_grpo_model = str(grpo_dir / "hf")
        _write_json(root / "cycle_report.json", report)

    _write_json(root / "cycle_report.json", report)
    md = write_report(root)
    print(f"\ncycle report: {root / 'cycle_report.json'}\n              {md}")
    for s in report["stages"]:
        acc = s["val_accuracy"]
        print(f"  {s['name']:<8} val accuracy {acc:.3f}" if acc is not None else f"  {s['name']:<8} val accuracy n/a")
    return root
