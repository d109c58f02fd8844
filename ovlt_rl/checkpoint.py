"""Checkpoints that can't lose work.

Layout under `<output_dir>/checkpoints/`:

    step_000010/            a committed checkpoint
      __0_0.distcp ...      sharded model + optimizer state (torch.distributed.checkpoint, one file per rank)
      .metadata
      worker_state.pt       lr schedule position (tensors only; loaded with weights_only=True)
      driver_state.json     step, data order position, counters
      manifest.json         every file above with its size, written last
    .tmp-step_000020/       a checkpoint being written (ignored; removed on the next save)

A checkpoint is written into a temporary folder and committed by an atomic rename; older ones
are pruned only after the new one has committed. On start, the newest checkpoint whose manifest
matches the files on disk is resumed; if checkpoints exist but none is valid, the run stops with
an error instead of silently starting over.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any, Callable

log = logging.getLogger(__name__)

_STEP_DIR = re.compile(r"^step_(\d{6,})$")


class CheckpointError(RuntimeError):
    pass


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class CheckpointManager:
    def __init__(self, root: str | os.PathLike, keep: int = 2):
        self.root = Path(root)
        self.keep = max(1, keep)

    def _dirs(self) -> list[tuple[int, Path]]:
        if not self.root.is_dir():
            return []
        out = []
        for p in self.root.iterdir():
            m = _STEP_DIR.match(p.name)
            if m and p.is_dir():
                out.append((int(m.group(1)), p))
        return sorted(out)

    @staticmethod
    def is_valid(path: Path) -> tuple[bool, str]:
        """A checkpoint is valid when its manifest lists files that all exist with their sizes."""
        manifest = path / "manifest.json"
        if not manifest.is_file():
            return False, "no manifest.json (the write did not finish)"
        try:
            files = json.loads(manifest.read_text())["files"]
        except (ValueError, KeyError) as e:
            return False, f"unreadable manifest.json ({e})"
        for name, size in files.items():
            f = path / name
            if not f.is_file():
                return False, f"missing {name}"
            if f.stat().st_size != size:
                return False, f"{name} has {f.stat().st_size} bytes, manifest says {size}"
        return True, "ok"

    def latest(self) -> tuple[int, Path] | None:
        """The newest valid checkpoint, or None if there are none; raises if some exist but none is valid."""
        dirs = self._dirs()
        problems = []
        for step, path in reversed(dirs):
            ok, why = self.is_valid(path)
            if ok:
                if problems:
                    log.warning("skipping invalid checkpoints: %s", "; ".join(problems))
                return step, path
            problems.append(f"{path.name}: {why}")
        if dirs:
            raise CheckpointError(
                f"checkpoints exist in {self.root} but none is valid ({'; '.join(problems)}); "
                "refusing to start over from step 0. Move them away to start fresh."
            )
        return None

    def save(self, step: int, write_shards: Callable[[str], None], driver_state: dict[str, Any]) -> Path:
        """Write a checkpoint for `step`: `write_shards(tmp_dir)` saves the workers' state, then
        the driver state and manifest are written and the folder is renamed into place."""
        self.root.mkdir(parents=True, exist_ok=True)
        for p in self.root.glob(".tmp-step_*"):
            shutil.rmtree(p, ignore_errors=True)
        final = self.root / f"step_{step:06d}"
        tmp = self.root / f".tmp-step_{step:06d}"
        tmp.mkdir()
        write_shards(str(tmp))
        (tmp / "driver_state.json").write_text(json.dumps(driver_state, indent=1, sort_keys=True))
        files = {str(p.relative_to(tmp)): p.stat().st_size for p in sorted(tmp.rglob("*")) if p.is_file()}
        for name in files:
            with open(tmp / name, "rb") as fh:
                os.fsync(fh.fileno())
        (tmp / "manifest.json").write_text(json.dumps({"step": step, "files": files}, indent=1))
        _fsync_dir(tmp)
        if final.exists():  # a re-save of the same step after a resume
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(self.root)
        self._prune()
        return final

    def _prune(self) -> None:
        dirs = self._dirs()
        for _, path in dirs[: -self.keep]:
            shutil.rmtree(path, ignore_errors=True)

    @staticmethod
    def driver_state(path: Path) -> dict[str, Any]:
        return json.loads((path / "driver_state.json").read_text())
