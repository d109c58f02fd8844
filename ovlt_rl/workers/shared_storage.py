"""Is `trainer.output_dir` one folder for every policy rank? Checked when the ranks start.

The ranks write checkpoint shards into the output folder and the driver commits, verifies and
reads them; on a cluster whose nodes each have their own disk at that path, every checkpoint would
be incomplete and a resume would find nothing. So the driver writes a marker with a fresh token,
every rank reads it and writes its own, and the driver reads those: a rank that can't (a missing
folder, another disk, a read-only mount) stops the run before any training, with a message.

A fresh folder per check: no cached "file absent" answer (NFS's negative lookup cache) can hide a
marker, and reads are retried for a few seconds for storage that shows new files late.
"""

from __future__ import annotations

import shutil
import time
import uuid
from pathlib import Path
from typing import Any

WAIT_S = 10.0
DOCS = "docs/shared-storage.md"


class SharedStorageError(RuntimeError):
    pass


def _read(path: Path, wait_s: float) -> str | None:
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return path.read_text()
        except FileNotFoundError:
            if time.monotonic() > deadline:
                return None
            time.sleep(0.25)


def rank_check(folder: str, token: str, rank: int, wait_s: float = WAIT_S) -> str | None:
    """Run by each rank: read the driver's marker, write this rank's. None, or what went wrong."""
    d = Path(folder)
    seen = _read(d / "driver", wait_s)
    if seen is None:
        return f"does not see the marker {d / 'driver'} that the driver wrote"
    if seen != token:
        return f"reads another marker at {d / 'driver'} than the driver wrote"
    try:
        (d / f"rank-{rank}").write_text(token)
    except OSError as e:
        return f"cannot write {d / f'rank-{rank}'}: {e}"
    return None


def check_shared(output_dir: str | Path, workers: list[Any], wait_s: float = WAIT_S) -> None:
    """Every rank (an actor with `check_shared_storage(folder, token) -> (node address, problem)`)
    and the driver see the same `output_dir`; raise SharedStorageError naming the ranks that don't."""
    import ray

    out = Path(output_dir)
    token = uuid.uuid4().hex
    d = out / f".shared-check-{token[:12]}"
    d.mkdir(parents=True)
    try:
        (d / "driver").write_text(token)
        answers = ray.get([w.check_shared_storage.remote(str(d), token) for w in workers])
        bad = []
        for rank, (node, problem) in enumerate(answers):
            if problem is None and _read(d / f"rank-{rank}", wait_s) != token:
                problem = f"wrote {d / f'rank-{rank}'}, which the driver does not see"
            if problem:
                bad.append(f"rank {rank} on node {node} {problem}")
    finally:
        shutil.rmtree(d, ignore_errors=True)
    if bad:
        raise SharedStorageError(
            f"trainer.output_dir {out} is not the same folder on every node: {'; '.join(bad)}. "
            "The output folder must be on storage shared by all nodes (NFS, a bucket mount, ...): the "
            f"policy ranks write checkpoint shards there and the driver reads them. See {DOCS}."
        )
