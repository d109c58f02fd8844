"""Source adapters: local copies of the paper's datasets -> schema rows.

    rows, counts = load_source(SourceConfig(name="scienceqa", path="data/ScienceQA/data"))

Sources: figureqa, geos, geometry3k, tabmwp, vizwiz, ai2d, clevr, superclevr, iconqa, mapqa,
scienceqa (each in its published form, data_prep/sources/native.py, or in the MathV360K
conversation form, data_prep/sources/llava.py), and "parquet" for files already in our schema.
Every row's data_source is the source name, so mixes can address it.
"""

from __future__ import annotations

import logging
from typing import Any

from data_prep.sources import llava
from data_prep.sources.common import Counts, Skip, env_path, root_of
from data_prep.sources.native import NATIVE

log = logging.getLogger(__name__)

# The paper's sources; GEOS and MapQA exist for training only in MathV360K's conversation form.
SOURCES = ("figureqa", "geos", "geometry3k", "tabmwp", "vizwiz", "ai2d", "clevr", "superclevr",
           "iconqa", "mapqa", "scienceqa")
DEFAULT_FORM = {name: ("native" if name in NATIVE else "llava") for name in SOURCES}


def forms_of(name: str) -> tuple[str, ...]:
    return ("native", "llava") if name in NATIVE else ("llava",)


def load_source(cfg) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Rows of one configured source (data_prep.config.SourceConfig) and its counts."""
    path = env_path(cfg.path)
    if cfg.name == "parquet":
        from ovlt_rl.data.schema import read_rows

        rows = read_rows(path)
        rows = rows[: cfg.limit] if cfg.limit else rows
        return rows, {"records": len(rows), "rows": len(rows), "skipped": {}}
    if cfg.name not in SOURCES:
        raise ValueError(f"prepare.sources: unknown source {cfg.name!r}; known: parquet, {', '.join(SOURCES)}")
    form = cfg.form or DEFAULT_FORM[cfg.name]
    if form not in forms_of(cfg.name):
        raise ValueError(f"prepare.sources: {cfg.name} is published only in the form(s) {forms_of(cfg.name)}, not {form!r}")
    if not path.exists():
        raise FileNotFoundError(f"prepare.sources: {cfg.name}: {path} does not exist")
    if form == "native":
        records, convert = NATIVE[cfg.name].records, NATIVE[cfg.name].convert
    else:
        records, convert = llava.records, llava.convert
    root = root_of(path, cfg.image_root)
    counts = Counts()
    rows = []
    for rec in records(path, cfg.split):
        if cfg.limit and counts.rows >= cfg.limit:
            break
        counts.records += 1
        try:
            rows.append(convert(cfg.name, rec, root, cfg.split))
            counts.rows += 1
        except Skip as e:
            counts.skipped[str(e)] += 1
    if counts.skipped:
        log.warning("source %s: %d of %d records skipped: %s", cfg.name, sum(counts.skipped.values()),
                    counts.records, dict(counts.skipped))
    if not rows:
        raise ValueError(f"prepare.sources: {cfg.name} ({path}, form {form}) gave no usable rows: {counts.as_dict()}")
    return rows, {"form": form, **counts.as_dict()}
