"""Weight sync benchmark: seconds to move a Qwen2.5-VL-7B-shaped model's full weights from the
policy (fp32 master weights on GPU 0) to an hf rollout engine (bf16 on GPU 1) on one node.

    python bench/weight_sync.py [--repeats 3] [--bucket-mb 512]

ours:      ovlt_rl.workers.weight_sync (bucketed NCCL broadcast, cast to bf16 on the sender)
baseline:  the host round trip the object-store path needs at least (device->host on the sender,
           host->device on the receiver; Ray's serialisation not even counted)
limit:     bytes / NVLink bandwidth (450 GB/s per direction on H100/H200 SXM)
"""

from __future__ import annotations

import argparse
import socket
import statistics
import time

import torch
import torch.multiprocessing as mp

from common import qwen25vl_7b_config, record, table  # noqa: E402  (bench/ is the script's folder)

NVLINK_GBPS = 450.0


def _build(dtype, device, seed):
    from transformers import Qwen2_5_VLForConditionalGeneration

    torch.manual_seed(seed)
    with torch.device(device):
        model = Qwen2_5_VLForConditionalGeneration._from_config(qwen25vl_7b_config(), dtype=dtype)
    return model


def _worker(rank, port, repeats, bucket_bytes, q):
    from ovlt_rl.workers.weight_sync import init_sync_group, receive_weights, send_weights

    dev = torch.device("cuda", rank)
    torch.cuda.set_device(dev)
    model = _build(torch.float32 if rank == 0 else torch.bfloat16, dev, seed=rank)
    pg = init_sync_group("127.0.0.1", port, rank, 2, dev)
    times, nbytes = [], 0
    for i in range(repeats + 1):  # the first is a warm-up
        torch.cuda.synchronize(dev)
        t0 = time.perf_counter()
        if rank == 0:
            nbytes = send_weights(pg, model, 0, torch.bfloat16, dev, bucket_bytes=bucket_bytes)
        else:
            nbytes = receive_weights(pg, model, torch.bfloat16, dev, bucket_bytes=bucket_bytes)
        torch.cuda.synchronize(dev)
        if i:
            times.append(time.perf_counter() - t0)
    check = None
    if rank == 1:
        check = float(model.lm_head.weight.float().abs().sum())
    if rank == 0:
        check = float(model.lm_head.weight.to(torch.bfloat16).float().abs().sum())
        # baseline: D2H of the whole state dict (what a host-side gather must do) ...
        torch.cuda.synchronize(dev)
        t0 = time.perf_counter()
        host = {k: v.to(torch.bfloat16).cpu() for k, v in model.state_dict().items()}
        d2h = time.perf_counter() - t0
        # ... then H2D into a receiving model on the same GPU's peer (GPU 1)
        dev1 = torch.device("cuda", 1)
        t0 = time.perf_counter()
        on_peer = {k: v.to(dev1) for k, v in host.items()}
        torch.cuda.synchronize(dev1)
        h2d = time.perf_counter() - t0
        del on_peer, host
        q.put(("baseline", d2h, h2d))
    q.put((rank, times, nbytes, check))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--bucket-mb", type=int, default=512)
    args = ap.parse_args()
    assert torch.cuda.device_count() >= 2, "needs 2 GPUs"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(r, port, args.repeats, args.bucket_mb << 20, q)) for r in range(2)]
    for p in procs:
        p.start()
    got = {}
    for _ in range(3):
        item = q.get(timeout=900)
        got[item[0]] = item[1:]
    for p in procs:
        p.join()
    times0, nbytes, check0 = got[0]
    times1, _, check1 = got[1]
    assert abs(check0 - check1) <= 1e-3 * abs(check0), f"receiver's weights differ ({check0} vs {check1})"
    secs = statistics.median(max(a, b) for a, b in zip(times0, times1))
    gb = nbytes / 1e9
    d2h, h2d = got["baseline"]
    limit = gb / NVLINK_GBPS
    rows = [
        {"path": "ours: NCCL broadcast, 512 MB buckets", "seconds": secs, "GB": gb, "GB/s": gb / secs},
        {"path": "baseline: host round trip (D2H + H2D)", "seconds": d2h + h2d, "GB": gb, "GB/s": gb / (d2h + h2d)},
        {"path": "limit: NVLink 450 GB/s", "seconds": limit, "GB": gb, "GB/s": NVLINK_GBPS},
    ]
    print(table(rows, ["path", "seconds", "GB", "GB/s"]))
    record("weight_sync", n_gpu=2, config={"model": "Qwen2.5-VL-7B-shaped", "sender_dtype": "fp32", "wire_dtype": "bf16",
                                           "bucket_mb": args.bucket_mb, "repeats": args.repeats},
           figures={"seconds": secs, "gbytes": gb, "all_seconds": [max(a, b) for a, b in zip(times0, times1)],
                    "limit_seconds": limit},
           baseline={"host_round_trip_seconds": d2h + h2d, "d2h_seconds": d2h, "h2d_seconds": h2d})


if __name__ == "__main__":
    main()
