"""A run's datasets and how many steps they make."""

from __future__ import annotations

import logging

from ovlt_rl.config import Config

log = logging.getLogger("ovlt")


def open_datasets(cfg: Config, processor, *, sft: bool):
    """(train, val) as Items (rows whose images fail to decode are replaced or left out); val is
    None without data.val_files."""
    from ovlt_rl.data.dataset import PromptDataset, SFTDataset
    from ovlt_rl.data.formats import DataFormat
    from ovlt_rl.data.items import Items

    d = cfg.data
    fmt = DataFormat.from_config(d)
    common = dict(min_pixels=d.min_pixels, max_pixels=d.max_pixels, prompt_suffix=d.prompt_suffix,
                  max_bad_fraction=d.max_bad_fraction, data_format=fmt)
    if sft:
        train = SFTDataset(list(d.train_files), processor, max_length=d.max_prompt_length + d.max_response_length, **common)
    else:
        train = PromptDataset(list(d.train_files), processor, max_prompt_length=d.max_prompt_length, **common)
    val = PromptDataset(list(d.val_files), processor, max_prompt_length=d.max_prompt_length, **common) if d.val_files else None
    for name, ds in (("train", train), ("val", val)):
        if ds is not None and sum(ds.skipped.values()):
            log.warning("%s data: skipped %s", name, dict(ds.skipped))
    return Items(train), (Items(val) if val is not None else None)


def total_steps(cfg: Config, n_rows: int, per_step: int) -> int:
    """trainer.total_steps, or the full batches of `per_step` rows in trainer.total_epochs epochs."""
    if cfg.trainer.total_steps:
        return cfg.trainer.total_steps
    steps = (n_rows // per_step) * cfg.trainer.total_epochs
    if steps < 1:
        raise ValueError(f"data.train_files: {n_rows} usable rows make no full batch of {per_step}")
    return steps
