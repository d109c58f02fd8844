"""`ovlt export`: a committed checkpoint as the HF model folder a run writes at its end (`hf/`).

One process on the CPU, no Ray and no process group: the checkpoint's manifest is verified
(sha256) first, its config.yaml is read with a safe YAML loader (the base model for config,
processor and architecture; the training dtype; trainer.hf_max_shard_size), the model tensors are
read from the per-rank safetensors shards and reassembled by DCP's safetensors reader
(`sharded_state.read_full_model`), and the folder is written by the same writer as `hf/`
(`workers/export.save_hf_model`). Nothing is unpickled and the optimizer state is not read.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from ovlt_rl.checkpoint import CheckpointError, CheckpointManager

log = logging.getLogger(__name__)

DTYPES = ("auto", "bf16", "fp32")
"""`dtype=`: auto is the run's training dtype; bf16/fp32 cast the (fp32 master) weights."""


def pick_checkpoint(run_dir: Path, step: int | None) -> tuple[int, Path]:
    """Checkpoint `step` of the run, or its newest one that verifies; raises CheckpointError naming
    what is wrong (a corrupted file, the older pickle format, no checkpoints)."""
    manager = CheckpointManager(run_dir / "checkpoints")
    committed = manager.committed()
    if step is not None:
        path = manager.root / f"step_{step:06d}"
        if step not in dict(committed):
            have = ", ".join(str(s) for s, _ in committed) or "none"
            raise CheckpointError(f"{path}: no such committed checkpoint (committed steps in {manager.root}: {have})")
        ok, why = manager.is_valid(path)
        if not ok:
            raise CheckpointError(f"{path} can't be exported: {why}")
        return step, path
    problems = []
    for s, path in reversed(committed):
        ok, why = manager.is_valid(path)
        if ok:
            for p in problems:
                log.warning("skipped the newer checkpoint %s", p)
            return s, path
        problems.append(f"{path.name}: {why}")
    if not committed:
        raise CheckpointError(f"no committed checkpoints in {manager.root}")
    raise CheckpointError(f"no checkpoint in {manager.root} can be exported ({'; '.join(problems)})")


def _saved_config(path: Path) -> dict[str, Any]:
    """The checkpoint's config.yaml (listed in its manifest, so verified with it), as plain data."""
    import yaml
    from omegaconf import OmegaConf

    file = path / "config.yaml"
    try:  # OmegaConf's loader is yaml's SafeLoader: no python tags, nothing constructed but plain data
        cfg = OmegaConf.to_container(OmegaConf.load(file))
    except (OSError, ValueError, yaml.YAMLError) as e:
        raise CheckpointError(f"{file}: unreadable ({type(e).__name__}: {e})") from None
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{file}: not a config (a {type(cfg).__name__})")
    return cfg


def _field(cfg: dict[str, Any], dotted: str, file: Path) -> Any:
    node: Any = cfg
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            raise CheckpointError(f"{file}: has no {dotted}")
        node = node[part]
    return node


def training_dtype(cfg: dict[str, Any], worker_state: dict[str, Any], file: Path) -> str:
    """bf16 or fp32: what the checkpoint's run computed in. Checkpoints record it (worker_state.json's
    `dtype`); for older ones it follows from model.dtype, and from trainer.device when that is auto."""
    if "dtype" in worker_state:  # absent from checkpoints written before it was recorded
        if worker_state["dtype"] not in ("bf16", "fp32"):
            raise CheckpointError(f"{file.parent}: worker_state.json has dtype {worker_state['dtype']!r}, not bf16 or fp32")
        return worker_state["dtype"]
    dtype, device = _field(cfg, "model.dtype", file), _field(cfg, "trainer.device", file)
    if dtype in ("bf16", "fp32"):
        return dtype
    if dtype == "auto" and device == "cpu":
        return "fp32"
    raise CheckpointError(f"{file.parent}: the checkpoint does not record its training dtype (model.dtype={dtype}, "
                          f"trainer.device={device}): pass dtype=bf16 or dtype=fp32")


def export_checkpoint(run_dir: str | Path, *, step: int | None = None, out: str | Path | None = None,
                      dtype: str = "auto", force: bool = False) -> Path:
    """Write checkpoint `step` (default: the newest that verifies) of the run in `run_dir` as an HF
    folder at `out` (default: run_dir/export/step_N); returns the folder."""
    import torch

    from ovlt_rl.config import ConfigError
    from ovlt_rl.models.loading import resolve_model_path
    from ovlt_rl.models.paths import check_model_path
    from ovlt_rl.workers.export import StateDictMismatch, save_hf_model
    from ovlt_rl.workers.sharded_state import read_full_model

    if dtype not in DTYPES:
        raise ConfigError(f"dtype={dtype!r}: expected one of {', '.join(DTYPES)}")
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ConfigError(f"run={str(run_dir)!r}: no such folder (give a run's trainer.output_dir)")
    step, path = pick_checkpoint(run_dir, step)
    dest = Path(out) if out is not None else run_dir / "export" / f"step_{step}"
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())) and not force:
        raise ConfigError(f"out={str(dest)!r} exists and is not empty: pass force=true to replace it")
    cfg = _saved_config(path)
    model = _field(cfg, "model.path", path / "config.yaml")
    try:
        check_model_path(model, f"{path / 'config.yaml'}: model.path")
    except ConfigError as e:
        raise CheckpointError(f"{e} (the base model gives the export its config and processor)") from None
    try:
        tensors, worker_state = read_full_model(str(path))
    except ValueError as e:
        raise CheckpointError(str(e)) from None
    name = training_dtype(cfg, worker_state, path / "config.yaml") if dtype == "auto" else dtype
    shard = _field(cfg, "trainer.hf_max_shard_size", path / "config.yaml")
    log.info("export %s (step %d, %d ranks) -> %s in %s", path, step, worker_state["world_size"], dest, name)
    try:
        return save_hf_model(resolve_model_path(model), tensors, dest,
                             dtype={"bf16": torch.bfloat16, "fp32": torch.float32}[name], max_shard_size=shard)
    except StateDictMismatch as e:
        raise CheckpointError(f"{path} (written by {worker_state['world_size']} ranks) does not fit its base model "
                              f"{model}: is a rank's shard file missing? {e}") from None
