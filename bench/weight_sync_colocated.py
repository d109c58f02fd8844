"""Colocated weight sync benchmark: seconds to hand a Qwen2.5-VL-7B-shaped policy's full weights
(fp32 master weights on the GPU) to a vLLM engine sleeping on the same GPU, bf16 on arrival.

    python bench/weight_sync_colocated.py [--model-dir /tmp/ovlt-7b] [--repeats 3] [--bucket-mb 512]

ours:      VLLMEngine.start_ipc_update / ipc_update per chunk / finish_ipc_update, fed by
           ovlt_rl.workers.ipc_sync.weight_chunks (what rollout.weight_sync=ipc runs each step),
           after a sleep at each level; the wake of the KV cache and the sleep are timed apart
baseline:  VLLMEngine.load_state_dict from the same GPU tensors (safetensors buckets over vLLM's
           RPC, staged, one reload): what the object-store path does once the weights reached the
           rollout worker (the gather to the host and Ray's object store not even counted)
limit:     the bytes the hand-over must move through HBM at least (read fp32, write bf16 into the
           buffer, read it, write the weights) over the GPU's HBM bandwidth

vLLM's engine core runs in its own process (vLLM's default), so the buffer crosses a process
boundary through CUDA IPC as in a colocated run. The model folder (bench/rollout_vllm.py's) is
built once into --model-dir.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

from common import hbm_bytes_per_s, record, table  # noqa: E402  (bench/ is the script's folder)



def main() -> None:
    import torch

    from rollout_vllm import build_model_dir, engine_config

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model-dir", default="/tmp/ovlt-7b")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--bucket-mb", type=int, default=512)
    ap.add_argument("--no-baseline", action="store_true")
    args = ap.parse_args()
    if not (Path(args.model_dir) / "config.json").exists():
        build_model_dir(Path(args.model_dir))

    from ovlt_rl.engines.base import SamplingParams
    from ovlt_rl.engines.vllm_engine import VLLMEngine
    from ovlt_rl.models.loading import load_model
    from ovlt_rl.workers.ipc_sync import weight_chunks

    cfg = engine_config(args.model_dir, 16, ["rollout.gpus_per_worker=0.5", "rollout.gpu_memory_utilization=0.3",
                                             "rollout.vllm_enforce_eager=true"])
    engine = VLLMEngine(cfg, args.model_dir)
    assert engine.ipc, "this vLLM has no CUDA IPC weight transfer"
    dev = torch.device("cuda", 0)
    t0 = time.perf_counter()
    policy = load_model(args.model_dir, dtype=torch.float32, device=dev)  # the policy's fp32 master weights
    with torch.no_grad():
        for p in policy.parameters():
            p.mul_(1.01)  # other weights than vLLM loaded
    load_s = time.perf_counter() - t0
    n_params = sum(p.numel() for p in policy.parameters())
    bf16_bytes = n_params * 2
    limit_s = (n_params * 4 + 3 * bf16_bytes + bf16_bytes) / hbm_bytes_per_s(default="H100")
    prompt = [{"prompt_text": "<|im_start|>user\nt1 t2 t3<|im_end|>\n<|im_start|>assistant\n", "images": []}]
    greedy = SamplingParams(n=1, temperature=0.0, max_new_tokens=8)

    rows = []
    for level in (1, 2):
        engine.sleep_level = level
        sync, sleep, wake = [], [], []
        for i in range(args.repeats + 1):  # the first is a warm-up
            engine.generate(prompt, greedy)
            torch.cuda.synchronize()
            t = time.perf_counter()
            engine.sleep()
            ts = time.perf_counter() - t
            t = time.perf_counter()
            engine.start_ipc_update()
            for chunk in weight_chunks(policy, torch.bfloat16, dev, args.bucket_mb << 20):
                engine.ipc_update(chunk)
            engine.finish_ipc_update()
            tsync = time.perf_counter() - t
            t = time.perf_counter()
            engine.wake_up()  # the KV cache
            tw = time.perf_counter() - t
            if i:
                sync.append(tsync), sleep.append(ts), wake.append(tw)
            print(f"level {level} repeat {i}: sleep {ts:.3f} s, sync {tsync:.3f} s, wake {tw:.3f} s", flush=True)
        rows.append({"path": f"ours: CUDA IPC after sleep level {level}", "sync_s": statistics.median(sync),
                     "sleep_s": statistics.median(sleep), "wake_kv_s": statistics.median(wake),
                     "GB_per_s": bf16_bytes / statistics.median(sync) / 1e9, "x_limit": statistics.median(sync) / limit_s})
    engine.generate(prompt, greedy)  # it still generates after the syncs

    if not args.no_baseline:
        # One timed run (host copies need no warm-up); tensors cast one at a time, as a bucket fills.
        t = time.perf_counter()
        engine.load_state_dict((k, v.to(torch.bfloat16)) for k, v in policy.state_dict().items())
        times = [time.perf_counter() - t]
        rows.append({"path": "baseline: safetensors buckets over vLLM RPC", "sync_s": statistics.median(times),
                     "sleep_s": None, "wake_kv_s": None, "GB_per_s": bf16_bytes / statistics.median(times) / 1e9,
                     "x_limit": statistics.median(times) / limit_s})
    rows.append({"path": "limit: HBM traffic / bandwidth", "sync_s": limit_s, "sleep_s": None, "wake_kv_s": None,
                 "GB_per_s": bf16_bytes / limit_s / 1e9, "x_limit": 1.0})
    print(table(rows, ["path", "sync_s", "sleep_s", "wake_kv_s", "GB_per_s", "x_limit"]))
    record("weight_sync_colocated", config={"model": "Qwen2.5-VL-7B-shaped", "params": n_params, "bucket_mb": args.bucket_mb,
                                            "repeats": args.repeats, "policy_load_s": load_s, "command": " ".join(sys.argv)},
           figures={"rows": rows}, n_gpu=1)


if __name__ == "__main__":
    main()
