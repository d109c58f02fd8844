"""Resumable, sharded generation steps.

Generation (distillation, self-improvement sampling, pass-rate estimation) is the slow part of
data preparation. A step splits its input rows into shards of `shard_size`, and commits each
shard's output as one parquet file (shards/NAME-00000.parquet, ...; written to a temporary file
and renamed, so a file that exists is complete). Re-running the same step skips the shards that
exist, so an interrupted run loses at most the shard it was working on.

Each shard's work gets its own seed (`seed_for(base, index)`), so its output does not depend
on which shards ran before it: a resumed run produces the same data as an uninterrupted one.

A fingerprint of the step's inputs and settings is stored beside the shards (NAME.json); shards
made from other inputs or settings are never mixed in: the step stops with an error instead.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any, Callable

from ovlt_rl.data.schema import read_rows, write_rows

log = logging.getLogger(__name__)

Rows = list[dict[str, Any]]


def seed_for(base: int, index: int) -> int:
    """A seed for shard `index` of a run seeded with `base` (stable across runs and platforms)."""
    return int.from_bytes(hashlib.sha256(f"{base}/{index}".encode()).digest()[:4], "big")


def fingerprint(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str))
    os.replace(tmp, path)


class ShardedStep:
    """One generation step over `items`, committed shard by shard under `folder`.

    on_commit(step_name, shard_index, reused) is called after each shard is committed (or found
    committed); the pipeline uses it for logging, tests use it to interrupt a run.
    """

    def __init__(self, folder: str | os.PathLike, name: str, settings: dict[str, Any], shard_size: int,
                 on_commit: Callable[[str, int, bool], None] | None = None):
        if shard_size < 1:
            raise ValueError(f"shard_size must be >= 1, got {shard_size}")
        self.folder = Path(folder)
        self.name = name
        self.settings = settings
        self.shard_size = shard_size
        self.on_commit = on_commit

    def shard_path(self, index: int) -> Path:
        return self.folder / f"{self.name}-{index:05d}.parquet"

    def _check_meta(self, meta: dict[str, Any]) -> None:
        path = self.folder / f"{self.name}.json"
        if path.exists():
            old = json.loads(path.read_text())
            if old != meta:
                changed = sorted(k for k in set(old) | set(meta) if old.get(k) != meta.get(k))
                raise RuntimeError(
                    f"{self.folder}: the committed shards of step {self.name!r} were made from other "
                    f"inputs or settings (differs: {', '.join(changed)}); delete {self.folder} or use "
                    f"another prepare.output_dir"
                )
        else:
            self.folder.mkdir(parents=True, exist_ok=True)
            _write_json(path, meta)

    def run(self, items: Rows, item_ids: list[str], fn: Callable[[Rows, int], Rows],
            progress=None) -> tuple[Rows, dict[str, int]]:
        """fn(shard_items, shard_index) -> output rows, for every shard not yet committed.

        `item_ids` identify the inputs (e.g. image hash + question) for the fingerprint.
        `progress` is a tqdm-like bar advanced by the number of items of each shard.
        """
        n_shards = (len(items) + self.shard_size - 1) // self.shard_size
        meta = {
            "step": self.name,
            "settings": fingerprint(self.settings),
            "inputs": fingerprint(item_ids),
            "n_items": len(items),
            "shard_size": self.shard_size,
        }
        self._check_meta(meta)
        out: Rows = []
        reused = computed = 0
        for i in range(n_shards):
            chunk = items[i * self.shard_size : (i + 1) * self.shard_size]
            path = self.shard_path(i)
            was_committed = path.exists()
            if was_committed:
                rows = read_rows(path)
                reused += 1
            else:
                write_rows(fn(chunk, i), path)
                # read back, so that later steps see the same rows as a resumed run would
                rows = read_rows(path)
                computed += 1
            out += rows
            if progress is not None:
                progress.update(len(chunk))
            if self.on_commit is not None:
                self.on_commit(self.name, i, was_committed)
        log.info("%s: %d shards (%d reused, %d computed), %d rows", self.name, n_shards, reused, computed, len(out))
        return out, {"shards": n_shards, "shards_reused": reused, "shards_computed": computed}
