"""NCCL weight sync between two processes on two GPUs: the receiver ends with the sender's weights."""

import socket

import pytest
import torch
import torch.multiprocessing as mp

from ovlt_rl.workers.weight_sync import init_sync_group, plan_buckets, receive_weights, send_weights


def test_plan_buckets_is_consecutive_and_bounded():
    specs = [("a", torch.Size([10])), ("b", torch.Size([30])), ("c", torch.Size([100])), ("d", torch.Size([5]))]
    buckets = plan_buckets(specs, elem_size=2, bucket_bytes=80)
    assert buckets == [[0, 1], [2], [3]]
    assert [i for b in buckets for i in b] == list(range(4))


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(rank, port, model_dir, q):
    from ovlt_rl.models.loading import load_model

    dev = torch.device("cuda", rank)
    torch.cuda.set_device(dev)
    model = load_model(model_dir, dtype=torch.bfloat16, device=dev)
    if rank == 1:  # make the receiver different first
        with torch.no_grad():
            for p in model.parameters():
                p.add_(1.0)
    pg = init_sync_group("127.0.0.1", port, rank, 2, dev)
    if rank == 0:
        n = send_weights(pg, model, 0, torch.bfloat16, dev, bucket_bytes=1 << 16)
    else:
        n = receive_weights(pg, model, torch.bfloat16, dev, bucket_bytes=1 << 16)
    # numpy arrays travel by value (torch tensors would be shared through file descriptors that
    # vanish when this process exits)
    q.put((rank, n, {k: v.float().cpu().numpy() for k, v in model.state_dict().items()}))


@pytest.mark.gpu(n=2)
def test_nccl_broadcast_copies_every_weight():
    from ovlt_rl.models.loading import resolve_model_path

    model_dir = resolve_model_path("tiny")
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    port = _port()
    procs = [ctx.Process(target=_run, args=(r, port, model_dir, q)) for r in range(2)]
    for p in procs:
        p.start()
    out = dict((r, (n, sd)) for r, n, sd in (q.get(timeout=300) for _ in procs))
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    (n0, sd0), (n1, sd1) = out[0], out[1]
    assert n0 == n1 > 0
    for k in sd0:
        assert (sd0[k] == sd1[k]).all(), k
