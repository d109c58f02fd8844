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


def test_every_shipped_recipe_submits_as_its_command():
    """submit.sh's shorthand (a recipe file -> `ovlt COMMAND recipe=FILE`) names a command for every
    shipped recipe, and that command loads the recipe in the job's working dir (the repo's copy)."""
    import os
    import subprocess
    import sys

    from ovlt.config import load_config

    env = {**os.environ, "OVLT_LOOPBACK": "1", "RAY": str(Path(sys.executable).parent / "ray")}
    recipes = sorted(p.relative_to(REPO).as_posix() for p in (REPO / "recipes").rglob("*.yaml"))
    assert len(recipes) >= 16
    for recipe in recipes:
        out = subprocess.run([str(REPO / "cluster" / "submit.sh"), "--dry-run", recipe, "trainer.seed=3"], env=env,
                             cwd=REPO, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, f"{recipe}: {out.stderr}"
        words = out.stdout.split("\n")[:-1]
        assert words[:3] == ["python", "-m", "ovlt.cli"] and words[4:] == [f"recipe={recipe}", "trainer.seed=3"], words
        cfg = load_config(words[3], [f"recipe={REPO / recipe}", "trainer.seed=3"])
        assert cfg.trainer.seed == 3


def test_the_pip_example_names_the_gpu_lock_versions():
    """runtime_env.yaml's commented pip list (for nodes without the dependencies) pins what locks/gpu.txt pins."""
    import re

    lock = dict(re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)", (REPO / "locks" / "gpu.txt").read_text(), re.M))
    example = re.findall(r'^#\s+- "([A-Za-z0-9_.-]+)==([^"]+)"', (REPO / "cluster" / "runtime_env.yaml").read_text(), re.M)
    assert {name for name, _ in example} >= {"vllm", "torch", "transformers"}
    for name, version in example:
        assert lock.get(name) == version, f"runtime_env.yaml pins {name}=={version}, locks/gpu.txt has {lock.get(name)}"
