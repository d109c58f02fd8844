"""Shared pieces of the benchmarks: the 7B-shaped model, machine facts, result records, tables."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results.jsonl"
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

PEAK_BF16_TFLOPS = 989.0  # dense bf16 per H100/H200 (SXM), the MFU denominator the issue fixes


HBM_BYTES_PER_S = {"H100": 3.35e12, "H200": 4.8e12}  # memory bandwidth (SXM): the decode and copy limit


def hbm_bytes_per_s(default: str | None = None) -> float | None:
    """This GPU's HBM bandwidth in bytes/s; for an unknown GPU, `default`'s (a key above) or None."""
    name = device_name()
    return next((b for k, b in HBM_BYTES_PER_S.items() if k in name), HBM_BYTES_PER_S.get(default))


class GpuMemoryPeak:
    """The highest memory in use on torch's GPU 0 (every process: policy, reference and a colocated vLLM
    together), sampled from nvidia-smi every `every` seconds in a thread while the block runs."""

    def __init__(self, every: float = 0.2):
        self.every, self.peak_gib = every, 0.0

    def __enter__(self) -> "GpuMemoryPeak":
        import threading

        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(self.every):
            try:
                gpu = os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0] or "0"  # torch's GPU 0
                out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits", "-i", gpu],
                                     capture_output=True, text=True, timeout=10).stdout
                self.peak_gib = max(self.peak_gib, float(out.split()[0]) / 1024)
            except (OSError, ValueError, IndexError, subprocess.TimeoutExpired):
                return  # no nvidia-smi: the peak stays 0 and is reported as such

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        self._thread.join(timeout=15)


def qwen25vl_7b_config():
    """Qwen2.5-VL-7B-Instruct's published architecture (random weights are enough for throughput)."""
    from transformers import Qwen2_5_VLConfig

    return Qwen2_5_VLConfig(
        text_config=dict(
            hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
            num_key_value_heads=4, vocab_size=152064, max_position_embeddings=128000, rms_norm_eps=1e-6,
            rope_theta=1e6, tie_word_embeddings=False, hidden_act="silu",
            rope_scaling={"type": "mrope", "mrope_section": [16, 24, 24]},
        ),
        vision_config=dict(
            depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, in_chans=3, out_hidden_size=3584,
            patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=112,
            fullatt_block_indexes=[7, 15, 23, 31], tokens_per_second=2, hidden_act="silu",
        ),
        image_token_id=151655, video_token_id=151656, vision_start_token_id=151652, vision_end_token_id=151653,
        tie_word_embeddings=False,
    )


def versions() -> dict[str, str]:
    import torch
    import transformers

    out = {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__}
    try:
        out["ovlt_commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                                            text=True).stdout.strip() or "unknown"
    except OSError:
        out["ovlt_commit"] = "unknown"
    out["cuda"] = torch.version.cuda or "none"
    return out


def device_name() -> str:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"


def record(bench: str, *, config: dict, figures: dict, baseline: dict | None = None, n_gpu: int = 0) -> dict:
    rec = {"bench": bench, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "device": device_name(),
           "n_gpu": n_gpu, "versions": versions(), "command": " ".join(sys.argv), "config": config, **figures,
           "baseline": baseline or {}}
    out = Path(os.environ.get("OVLT_BENCH_RESULTS", RESULTS))
    with open(out, "a") as f:
        f.write(json.dumps(rec) + "\n")
    return rec


def table(rows: list[dict], columns: list[str]) -> str:
    widths = [max(len(c), *(len(_fmt(r.get(c))) for r in rows)) for c in columns]
    line = "  ".join(c.ljust(w) for c, w in zip(columns, widths))
    out = [line, "  ".join("-" * w for w in widths)]
    for r in rows:
        out.append("  ".join(_fmt(r.get(c)).ljust(w) for c, w in zip(columns, widths)))
    return "\n".join(out)


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "" if v is None else str(v)
