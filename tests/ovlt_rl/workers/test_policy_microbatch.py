"""The policy worker with packed rows and token-budget micro-batches gives the same log-probs and
the same update as one padded full batch, on one rank and on two ranks whose micro-batch counts
differ (the short rank splits and runs dummy micro-batches, and nothing hangs)."""

import os
import queue
import socket
import time

import pytest
import torch
import torch.multiprocessing as mp

from ovlt.config import load_config
from ovlt_rl.models.loading import load_processor, resolve_model_path
from ovlt_rl.workers.policy import PolicyWorker, worker_settings

# The rank processes are spawned and import this module: keep its imports light (test_policy's
# rollout-engine imports alone take seconds), so `_samples` is imported where it is used.


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cfg(**overrides):
    args = {"actor.use_kl_loss": "false", "actor.lr": "1e-3", "trainer.device": "cpu", "data.train_files": "[x]",
            "actor.global_batch_size": "8", "actor.micro_batch_size": "8", **overrides}
    return load_config("sft", [f"{k}={v}" for k, v in args.items()])


def _worker(cfg, rank=0, world=1, port=None):
    w = PolicyWorker(resolve_model_path("tiny"), rank, world, "127.0.0.1", port or _free_port(), **worker_settings(cfg))
    w.setup(total_opt_steps=10)
    return w


def _params(w):
    return {k: v.clone() for k, v in w.full_state_dict().items()}


@pytest.fixture(scope="module")
def samples():
    from tests.ovlt_rl.workers.test_policy import _samples

    torch.set_num_threads(1)
    out = _samples(load_processor(resolve_model_path("tiny")), n=8)
    # Mixed lengths: make two responses much longer.
    for s, extra in ((out[1], 40), (out[6], 25)):
        for k in ("input_ids", "mm_token_type_ids", "loss_mask", "advantages", "old_logprobs"):
            fill = s[k][-1:].expand(extra) if k != "mm_token_type_ids" else torch.zeros(extra, dtype=torch.long)
            s[k] = torch.cat([s[k], fill])
    return out


# Budget in tokens: the samples are ~20-95 tokens long, so this makes several micro-batches and one
# sample over the budget (it runs alone).
BUDGET = 90


def _update(cfg, samples):
    w = _worker(cfg)
    lps = w.compute_logprobs(samples, which="policy", micro_batch_size=4, temperature=1.0)
    denom = float(sum(int(s["loss_mask"][1:].sum()) for s in samples))
    batch = [dict(s, old_logprobs=lp) for s, lp in zip(samples, lps)]
    m = w.update_policy(batch, denominator=denom, temperature=1.0)
    sft = w.sft_step(samples, denominator=denom)
    out = lps, _params(w), m, sft
    w.shutdown()
    return out


def _close(p, q):
    # Adam divides by |g|: entries whose gradient is at rounding level may move differently.
    total = sum(v.numel() for v in p.values())
    off = sum(int(((p[k] - q[k]).abs() > 1e-6).sum()) for k in p)
    return off / total < 0.01


def test_budget_and_packing_give_the_full_batch_update(samples):
    assert max(len(s["input_ids"]) for s in samples) > BUDGET
    full = _update(_cfg(**{"actor.padding_free": "false"}), samples)
    budget = _update(_cfg(**{"actor.max_tokens_per_micro_batch": BUDGET}), samples)
    (lp_f, p_f, m_f, s_f), (lp_b, p_b, m_b, s_b) = full, budget
    assert max(float((a - b).abs().max()) for a, b in zip(lp_f, lp_b)) < 1e-5
    assert m_f["actor/skipped"] == m_b["actor/skipped"] == 0.0
    assert m_b["actor/grad_norm"] == pytest.approx(m_f["actor/grad_norm"], rel=1e-5)
    assert m_b["actor/tokens"] == m_f["actor/tokens"]
    assert m_b["actor/pg_loss"] == pytest.approx(m_f["actor/pg_loss"], rel=1e-5, abs=1e-7)
    assert s_b["sft/grad_norm"] == pytest.approx(s_f["sft/grad_norm"], rel=1e-5)
    assert s_b["sft/nll_sum"] == pytest.approx(s_f["sft/nll_sum"], rel=1e-5)
    assert _close(p_f, p_b)


def test_plan_uses_the_budget(samples):
    w = _worker(_cfg(**{"actor.max_tokens_per_micro_batch": BUDGET}))
    plan = w._plan(samples, 8, BUDGET)
    w.shutdown()
    assert len(plan) >= 3 and not any(d for _, d in plan)
    lengths = [len(s["input_ids"]) for s in samples]
    assert all(sum(lengths[i] for i in idx) <= BUDGET or len(idx) == 1 for idx, _ in plan)


def _rank_main(rank, port, shares, denom, q):
    torch.set_num_threads(1)
    cfg = _cfg(**{"actor.max_tokens_per_micro_batch": BUDGET, "actor.num_workers": 2, "actor.micro_batch_size": 4})
    w = _worker(cfg, rank, 2, port)
    plan = w._plan(shares[rank], 8, BUDGET)
    lps = w.compute_logprobs(shares[rank], which="policy", micro_batch_size=8, temperature=1.0)
    m = w.update_policy([dict(s, old_logprobs=lp) for s, lp in zip(shares[rank], lps)], denominator=denom, temperature=1.0)
    sd = w.full_state_dict()  # a collective; only rank 0 gets the tensors
    # As numpy: torch tensors go through shared memory, which dies with this process.
    sd = {k: v.numpy() for k, v in sd.items()} if sd is not None else None
    q.put((rank, len(plan), sum(d for _, d in plan), m["actor/grad_norm"], sd))
    w.shutdown()
    q.close()
    q.join_thread()
    os._exit(0)  # skip the interpreter's teardown (seconds on a busy 2-core machine)


def test_two_ranks_with_unequal_work_match_one_rank(samples):
    # Rank 0 gets the long samples and several micro-batches, rank 1 one short sample: it must
    # run dummy micro-batches to match rank 0's collectives.
    order = sorted(range(len(samples)), key=lambda i: len(samples[i]["input_ids"]))
    shares = [[samples[i] for i in order[1:]], [samples[order[0]]]]
    denom = float(sum(int(s["loss_mask"][1:].sum()) for s in samples))
    # forkserver: the heavy imports (torch, transformers: ~5-10 s on 2 busy cores) happen once in the
    # server, and both ranks fork from that clean process (not from pytest's, whose threads make fork unsafe).
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["ovlt_rl.workers.policy", "ovlt_rl.models.loading", "tests.ovlt_rl.workers.test_policy_microbatch"])
    q = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_rank_main, args=(r, port, shares, denom, q)) for r in range(2)]
    for p in procs:
        p.start()
    results = {}
    deadline = time.monotonic() + 120
    while len(results) < 2:
        # Fail fast if a rank died (the other would wait in a collective until the timeout).
        assert not any(p.exitcode for p in procs), [p.exitcode for p in procs]
        assert time.monotonic() < deadline, "ranks did not finish (a collective mismatch hangs)"
        try:
            r = q.get(timeout=1)
        except queue.Empty:
            continue
        results[r[0]] = r[1:]
    for p in procs:
        p.join(timeout=60)
    assert all(p.exitcode == 0 for p in procs)
    (n0, dummies0, gn0, params0), (n1, dummies1, gn1, _) = results[0], results[1]
    assert n0 == n1 >= 3 and dummies0 == 0 and dummies1 == n1 - 1

    # One rank, all samples: same old log-probs (the initial policy), same update.
    w = _worker(_cfg(**{"actor.padding_free": "false"}))
    lps = w.compute_logprobs(samples, which="policy", micro_batch_size=8, temperature=1.0)
    m = w.update_policy([dict(s, old_logprobs=lp) for s, lp in zip(samples, lps)], denominator=denom, temperature=1.0)
    ref = _params(w)
    w.shutdown()
    assert gn0 == gn1 == pytest.approx(m["actor/grad_norm"], rel=1e-5)
    assert _close({k: torch.from_numpy(v) for k, v in params0.items()}, ref)
