"""The `eval` section of the config tree (see ovlt_rl/config.py): benchmark evaluation."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class EvalConfig:
    benchmarks: list[str] = field(default_factory=lambda: ["synthetic"])
    """Benchmarks to run: synthetic, mathvista, mathverse, mathvision, mathvision_mini."""
    data: str = ""
    """Local copy of the benchmark (file or folder in its published HF form); synthetic: a parquet."""
    responses: str = ""
    """Offline mode: a JSONL of existing responses to score instead of generating (no model)."""
    output_dir: str = "outputs/eval"
    max_samples: int = 0
    """Evaluate at most this many samples per benchmark (0: all)."""
    batch_size: int = 64
    max_new_tokens: int = 2048
    temperature: float = 0.01
    top_p: float = 0.001
    top_k: int = 1
    repetition_penalty: float = 1.0
