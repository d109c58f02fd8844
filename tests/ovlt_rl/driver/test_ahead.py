"""RolloutsAhead (the batch generated one step ahead under algorithm.overlap) and the behaviour
log-probs its update takes the ratio against."""

import threading

import pytest
import torch

from ovlt_rl.driver.ahead import RolloutsAhead
from ovlt_rl.driver.rollouts import Rollouts
from ovlt_rl.driver.samples import advantage_samples, behaviour_logprobs
from ovlt_rl.engines.base import Generation


def _batch(logprobs=True):
    prompts = [{"input_ids": torch.tensor([5, 6, 7]), "mm_token_type_ids": torch.zeros(3, dtype=torch.long)},
               {"input_ids": torch.tensor([8, 9]), "mm_token_type_ids": torch.zeros(2, dtype=torch.long)}]
    groups = [[Generation([1, 2], "a", "stop", [-0.5, -0.25] if logprobs else None), Generation([3], "b", "stop", [-1.0])],
              [Generation([4, 5, 6], "c", "length", [-0.1, -0.2, -0.3]), Generation([7], "d", "stop", [-2.0])]]
    return Rollouts(prompts=prompts, groups=groups, scores=[1.0, 0.0, 0.0, 1.0])


def test_behaviour_logprobs_align_with_the_samples_input_ids():
    batch = _batch()
    samples, _ = advantage_samples(batch, 2, norm_by_std=True)
    lps = behaviour_logprobs(batch)
    assert [len(lp) for lp in lps] == [len(s["input_ids"]) for s in samples]
    first = lps[0]
    assert first[:3].tolist() == [0.0, 0.0, 0.0] and first[3:].tolist() == [-0.5, -0.25]
    # the response positions are exactly where the loss mask is
    for s, lp in zip(samples, lps):
        assert torch.equal(lp != 0, s["loss_mask"].bool())


def test_a_response_without_logprobs_is_an_error():
    with pytest.raises(RuntimeError, match="sampled log-probs"):
        behaviour_logprobs(_batch(logprobs=False))


def test_ahead_runs_in_a_thread_and_hands_over_its_batch_and_data_state():
    started, release = threading.Event(), threading.Event()
    main = threading.get_ident()
    seen = {}

    def produce():
        seen["thread"] = threading.get_ident()
        started.set()
        release.wait(5)
        return _batch()

    with RolloutsAhead() as ahead:
        assert ahead.take(1) is None  # nothing pending: the caller generates now
        ahead.start(2, produce, data_state={"sampler": {"position": 1}})
        assert started.wait(5)  # running while this thread goes on
        assert ahead.data_state == {"sampler": {"position": 1}}
        with pytest.raises(RuntimeError, match="still pending"):
            ahead.start(3, produce, data_state={})
        release.set()
        got = ahead.take(2)
        assert got.scores == [1.0, 0.0, 0.0, 1.0] and seen["thread"] != main
        assert ahead.data_state is None and ahead.take(3) is None


def test_ahead_raises_the_generation_error_and_refuses_another_step():
    def fail():
        raise ValueError("engine died")

    with RolloutsAhead() as ahead:
        ahead.start(2, fail, data_state={})
        with pytest.raises(ValueError, match="engine died"):
            ahead.wait()
        with pytest.raises(RuntimeError, match="for step 2, not 3"):
            ahead.take(3)
