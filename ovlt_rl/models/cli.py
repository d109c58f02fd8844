"""`ovlt prepare tiny-model`: build the tiny offline model, printing each step.

How it works: with no `out_dir` the model goes to the cache folder that `resolve_model_path("tiny")`
reads (so later runs with `model=tiny` find it); with `out_dir` it goes there. An existing model is
kept unless `force`, which removes it and builds again.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path


def prepare_tiny_model(out_dir: str | None, seed: int, force: bool) -> Path:
    from ovlt_rl.models.loading import ensure_tiny_model, tiny_model_dir  # noqa: PLC0415

    start = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[tiny-model {time.perf_counter() - start:5.1f}s] {msg}", flush=True)

    target = Path(out_dir).expanduser() if out_dir is not None else tiny_model_dir(seed=seed)
    if target.exists() and any(target.iterdir()):
        if not force:
            log(f"already built at {target} (pass force to rebuild)")
            return target
        log(f"removing {target} (force)")
        shutil.rmtree(target)
    log(f"building the tiny Qwen2.5-VL model (seed {seed}) into {target}")
    ensure_tiny_model(target, seed=seed, log=log)
    log("done")
    return target
