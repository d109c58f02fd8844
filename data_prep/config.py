"""The `prepare` section of the config tree (see ovlt_rl/config.py): data preparation."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class PrepareConfig:
    output_dir: str = "outputs/data"
    seed: int = 0
    synthetic_train: int = 2000
    synthetic_val: int = 200
    synthetic_test: int = 200
    image_size: int = 112
    families: list[str] = field(default_factory=list)
    """Synthetic families (empty: all)."""
