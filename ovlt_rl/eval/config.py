"""The `eval` section of the config tree (see ovlt_rl/config.py): benchmark evaluation."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class EvalConfig:
    benchmarks: list[str] = field(default_factory=lambda: ["synthetic"])
    """Benchmarks to run: synthetic, mathvista, mathverse, mathvision, mathvision_mini."""
    data: str = ""
    """Local copy of the benchmark (file or folder in its published HF form); synthetic: a parquet."""
    data_paths: list[str] = field(default_factory=list)
    """Per-benchmark local copies as NAME=PATH items (eval.data_paths=[mathvista=/d/MathVista,mathverse=/d/MathVerse]);
    they take precedence over `data`, which may serve only one benchmark."""
    responses: str = ""
    """Offline mode: a JSONL of existing responses to score instead of generating (no model)."""
    output_dir: str = "outputs/eval"
    """Results go to output_dir/<benchmark>/ (samples.jsonl, summary.json)."""
    max_samples: int = 0
    """Evaluate at most this many samples per benchmark (0: all)."""
    prompt_suffix: str = ""
    """Text appended (after a newline) to each question. The original evaluation adds none for its
    trained models; for base models it asks for "Your final answer MUST BE put in \\boxed{}."."""
    batch_size: int = 64
    """Questions per generation call."""
    num_engines: int = 1
    """Engines generating side by side, each on its own batches: 1 is one engine in the command's
    own process; more are Ray actors of rollout.gpus_per_worker GPUs each (on a GPU machine: one
    per GPU, or per tensor-parallel group). Same records for any number."""
    max_new_tokens: int = 2048
    """Generation limit per response (the paper's Table 6)."""
    temperature: float = 0.01
    """Sampling temperature; with top_k 1 decoding is greedy (the paper's 0.01 / top_p 0.001 / top_k 1)."""
    top_p: float = 0.001
    """Nucleus sampling threshold."""
    top_k: int = 1
    """Top-k sampling; 1 is greedy."""
    repetition_penalty: float = 1.0
    """transformers/vLLM repetition penalty (1.0: none)."""
