"""Resumable, sharded generation steps.

Generation (distillation, self-improvement sampling, pass-rate estimation) is the slow part of
data preparation. A step splits its input rows into shards of `shard_size`, and commits each
shard's output as one parquet file (shards/NAME-00000.parquet, ...; written to a temporary file
and renamed, so a file that exists is complete). Re-running the same step skips the shards that
exist, so an interrupted run loses at most the shards it was working on (one per engine: with
several engines, uncommitted shards run side by side and may commit out of order).

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
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from ovlt_rl.data.schema import read_rows, write_rows
from ovlt_rl.workers.engine_pool import run_concurrently

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

    def run(self, items: Rows, item_ids: list[str], fn: Callable[[Rows, int], Rows] | Sequence[Callable[[Rows, int], Rows]],
            progress=None) -> tuple[Rows, dict[str, int]]:
        """fn(shard_items, shard_index) -> output rows, for every shard not yet committed.

        `fn` may be a list of such functions, one per engine (data_prep/engine_io.load_engines):
        the uncommitted shards then run side by side, one thread per function, each shard with
        its own seed and its own atomic commit, and the rows are joined in shard order, so any
        number of engines writes the same shards. Committed shards are reported to on_commit
        first, then computed ones as they commit. `item_ids` identify the inputs (e.g. image hash
        + question) for the fingerprint. `progress` is a tqdm-like bar advanced by the number of
        items of each shard.
        """
        fns = [fn] if callable(fn) else list(fn)
        n_shards = (len(items) + self.shard_size - 1) // self.shard_size
        meta = {
            "step": self.name,
            "settings": fingerprint(self.settings),
            "inputs": fingerprint(item_ids),
            "n_items": len(items),
            "shard_size": self.shard_size,
        }
        self._check_meta(meta)
        chunks = [items[i * self.shard_size : (i + 1) * self.shard_size] for i in range(n_shards)]
        shards: dict[int, Rows] = {}
        todo = []
        for i in range(n_shards):
            if not self.shard_path(i).exists():
                todo.append(i)
                continue
            shards[i] = read_rows(self.shard_path(i))
            self._done(i, len(chunks[i]), True, progress)

        def worker(f: Callable[[Rows, int], Rows]) -> Callable[[int], Rows]:
            def compute(i: int) -> Rows:
                write_rows(f(chunks[i], i), self.shard_path(i))
                # read back, so that later steps see the same rows as a resumed run would
                return read_rows(self.shard_path(i))
            return compute

        def committed(k: int, rows: Rows) -> None:
            shards[todo[k]] = rows
            self._done(todo[k], len(chunks[todo[k]]), False, progress)

        start = time.perf_counter()
        run_concurrently([worker(f) for f in fns], todo, committed)
        out: Rows = [r for i in range(n_shards) for r in shards[i]]
        reused, computed = n_shards - len(todo), len(todo)
        log.info("%s: %d shards (%d reused, %d computed on %d engine(s) in %.1f s), %d rows", self.name, n_shards,
                 reused, computed, len(fns), time.perf_counter() - start, len(out))
        return out, {"shards": n_shards, "shards_reused": reused, "shards_computed": computed}

    def _done(self, index: int, n_items: int, reused: bool, progress) -> None:
        if progress is not None:
            progress.update(n_items)
        if self.on_commit is not None:
            self.on_commit(self.name, index, reused)
