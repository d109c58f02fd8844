"""Data for a run: `ovlt sft` and `ovlt grpo` call `ensure_data` before the engine starts.

Tiny recipes name `data.prepare_recipe`: their files are made by the data-preparation pipeline
when missing. This sits above data_prep and the engine (it runs the one, then hands over to the
other), so the engine only checks that its files are there.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from data_prep.pipeline import run_prepare
from ovlt.config import AppConfig, load_config
from ovlt_rl.data.formats import missing_sources, require_sources

log = logging.getLogger("ovlt")


def ensure_data(cfg: AppConfig) -> None:
    """Tiny recipes name `data.prepare_recipe`: if their files are missing, make them first with the
    data-preparation pipeline (synthetic task -> distillation -> filters -> mix) into `data.prepare_dir`."""
    files = list(cfg.data.train_files) + list(cfg.data.val_files)
    missing = missing_sources(files)
    if not cfg.data.prepare_recipe:
        require_sources(files)
        return
    out = cfg.data.prepare_dir or str(Path((missing or files)[0]).parent)
    prep = load_config("prepare", [f"recipe={cfg.data.prepare_recipe}", f"prepare.output_dir={out}"])
    if not missing:
        _check_prepared_with(prep, cfg.data.prepare_recipe, Path(out))
        return
    log.info("data files missing (%s): running `ovlt prepare recipe=%s` into %s", ", ".join(missing), cfg.data.prepare_recipe, out)
    run_prepare(prep)
    still = missing_sources(files)
    if still:
        raise FileNotFoundError(f"data preparation in {out} did not produce {', '.join(still)}")


def _check_prepared_with(prep: Any, recipe: str, out: Path) -> None:
    """Files made earlier by `ovlt prepare` with other settings than the recipe's are used (a smaller
    or custom preparation is legitimate), but never silently: a folder left by an older recipe
    (another distillation, other filters) trains on data the recipe no longer describes."""
    manifest = out / "manifest.json"
    if not manifest.is_file():  # files put there by hand: the user's data, used as given
        return
    made = json.loads(manifest.read_text())["config"]["prepare"]
    want = OmegaConf.to_container(OmegaConf.structured(prep))["prepare"]

    def diff(a: Any, b: Any, path: str) -> list[str]:
        if isinstance(a, dict) and isinstance(b, dict):
            return [d for k in sorted(a.keys() | b.keys()) for d in diff(a.get(k), b.get(k), f"{path}.{k}")]
        return [] if a == b else [path]

    changed = [d for d in diff(made, want, "prepare") if d != "prepare.output_dir"]
    if changed:
        log.warning(
            "%s was made by `ovlt prepare` with other settings than recipe %s has now (%s differ); using it "
            "as it is. Delete %s to remake it with the recipe's settings.", out, recipe, ", ".join(changed), out,
        )
