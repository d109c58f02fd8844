"""Metrics out: console progress bar, metrics.jsonl, TensorBoard, wandb (when configured).

`metrics.jsonl` has one JSON object per step with `step` and every metric of that step
(validation steps add `val/accuracy`). On resume, lines past the resumed step are dropped first,
so the file never holds two different histories of the same step; TensorBoard's writer purges
the events past it the same way (`purge_step`). wandb: the run's id is kept in
`output_dir/wandb_run_id` (plain text, checked to be an id), so a resumed run logs to the same
wandb run (`resume="allow"`), online or offline (`WANDB_MODE=offline`; `wandb sync` uploads it).
"""

from __future__ import annotations

import json
import math
import os
import re
import uuid
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm


class Tracker:
    def __init__(self, loggers: list[str], output_dir: str | os.PathLike, *, total_steps: int, start_step: int = 0,
                 project: str = "ovlt", experiment: str = "", config: dict | None = None, desc: str = "train"):
        self.dir = Path(output_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.jsonl = self.dir / "metrics.jsonl" if "jsonl" in loggers else None
        if self.jsonl is not None:
            _truncate_after(self.jsonl, start_step)
        self.tb = None
        if "tensorboard" in loggers:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(self.dir / "tensorboard"), purge_step=start_step + 1 if start_step else None)
        self.wandb = None
        if "wandb" in loggers:
            import wandb  # optional; install it to use it

            self.wandb = wandb.init(project=project, name=experiment or None, config=config, dir=str(self.dir),
                                    id=wandb_run_id(self.dir), resume="allow")
        self.bar = tqdm(total=total_steps, initial=start_step, desc=desc, dynamic_ncols=True,
                        disable=False if "console" in loggers else True)

    def log(self, step: int, metrics: dict[str, Any], postfix_keys: tuple[str, ...] = ()) -> None:
        clean = {k: _jsonable(v) for k, v in metrics.items()}
        if self.jsonl is not None:
            with open(self.jsonl, "a") as f:
                f.write(json.dumps({"step": step, **clean}) + "\n")
        if self.tb is not None:
            for k, v in clean.items():
                if isinstance(v, (int, float)) and v is not None and math.isfinite(v):
                    self.tb.add_scalar(k, v, step)
        if self.wandb is not None:
            self.wandb.log(clean, step=step)
        post = {k.split("/")[-1] if k.count("/") else k: f"{clean[k]:.3g}" for k in postfix_keys if isinstance(clean.get(k), (int, float))}
        if post:
            self.bar.set_postfix(post, refresh=False)

    def advance(self, n: int = 1) -> None:
        self.bar.update(n)

    def write(self, msg: str) -> None:
        tqdm.write(msg)

    def close(self) -> None:
        self.bar.close()
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()


_RUN_ID = re.compile(r"[a-z0-9]{8,64}")


def wandb_run_id(output_dir: Path) -> str:
    """The wandb run id of this output folder: read from `wandb_run_id`, or made and written there."""
    path = output_dir / "wandb_run_id"
    if path.exists():
        run_id = path.read_text().strip()
        if not _RUN_ID.fullmatch(run_id):
            raise ValueError(f"{path}: not a wandb run id ({run_id[:80]!r}); delete the file to start a new wandb run")
        return run_id
    run_id = uuid.uuid4().hex[:16]  # wandb's own generator moved between releases; any [a-z0-9] id works
    tmp = path.with_suffix(".tmp")
    tmp.write_text(run_id + "\n")
    os.replace(tmp, path)
    return run_id


def _jsonable(v: Any) -> Any:
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def _truncate_after(path: Path, step: int) -> None:
    if not path.exists():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["step"] <= step:
                keep.append(line)
        except (ValueError, KeyError):
            continue
    tmp = path.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(l + "\n" for l in keep))
    os.replace(tmp, path)


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    return [json.loads(l) for l in Path(path).read_text().splitlines() if l.strip()]
