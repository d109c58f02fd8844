"""cluster/runtime_env.yaml's upload excludes, read by Ray's own matcher: the job's copy of the repo
keeps the code and the shipped tiny model, and leaves outputs, environments and data behind."""

from pathlib import Path

import yaml
from ray._private.runtime_env.packaging import _get_excludes

REPO = Path(__file__).resolve().parents[2]


def _excluded(rel: str) -> bool:
    excludes = yaml.safe_load((REPO / "cluster" / "runtime_env.yaml").read_text())["excludes"]
    return _get_excludes(REPO, excludes)(REPO / rel)


def test_the_shipped_tiny_model_is_uploaded_and_outputs_are_not():
    shipped = "ovlt_rl/models/tiny_pretrained/model.safetensors"
    assert (REPO / shipped).is_file()
    assert not _excluded(shipped)
    assert not _excluded("ovlt/cli.py")
    for rel in ("outputs/run/hf/model.safetensors", "data/train.parquet", "some/model.safetensors", ".venv/bin/python"):
        assert _excluded(rel), rel
