"""collect_groups, the orchestration of a GRPO step's groups (dynamic sampling's refill), with
plain functions standing in for the dataset, the rollout workers and the reward."""

from collections import Counter

import pytest

from ovlt_rl.driver.rollouts import collect_groups, groups_with_signal
from ovlt_rl.engines.base import Generation
from reward import BatchScores

N = 2  # responses per prompt


class Source:
    """Rounds of prompts; each prompt carries the rewards its group will get ("id", "rewards")."""

    def __init__(self, *rounds):
        self.rounds = list(rounds)
        self.drawn = 0
        self.generated_rounds = []

    def draw(self):
        batch = self.rounds[self.drawn]
        self.drawn += 1
        return [{"id": pid, "rewards": rewards} for pid, rewards in batch], [pid for pid, _ in batch]

    def generate(self, prompts, round_):
        self.generated_rounds.append(round_)
        return [[Generation(token_ids=[j], text=f"{p['id']}.{j}", finish_reason="stop") for j in range(N)] for p in prompts]


def score(prompts, groups):
    scores = [r for p in prompts for r in p["rewards"]]
    reasons = [None if s is not None else "exception" for s in scores]
    return BatchScores(scores=scores, reasons=reasons, none_reasons=Counter(r for r in reasons if r))


def collect(source, *, want, dynamic_sampling=True, max_rounds=3):
    return collect_groups(source.draw, source.generate, score, want=want, n=N,
                          dynamic_sampling=dynamic_sampling, max_rounds=max_rounds)


def ids(batch):
    return [p["id"] for p in batch.prompts]


def test_without_dynamic_sampling_one_round_keeps_every_group():
    source = Source([(0, [1.0, 1.0]), (1, [0.0, 1.0])], [(2, [0.0, 1.0]), (3, [0.0, 1.0])])
    batch = collect(source, want=2, dynamic_sampling=False)
    assert ids(batch) == [0, 1] and batch.indices == [0, 1]
    assert source.drawn == 1
    assert [[g.text for g in grp] for grp in batch.groups] == [["0.0", "0.1"], ["1.0", "1.1"]]
    assert batch.scores == [1.0, 1.0, 0.0, 1.0]
    assert batch.metrics["reward/mean"] == 0.75 and "dynamic_sampling/kept_groups" not in batch.metrics


def test_dynamic_sampling_keeps_groups_with_signal_until_the_batch_is_full():
    source = Source(
        [(0, [1.0, 1.0]), (1, [0.0, 1.0]), (2, [0.0, 0.0])],  # one group with signal
        [(3, [1.0, 0.0]), (4, [1.0, 0.0]), (5, [0.0, 1.0])],  # three: two fill the batch
        [(6, [0.0, 1.0]), (7, [0.0, 1.0]), (8, [0.0, 1.0])],  # never drawn
    )
    batch = collect(source, want=3)
    assert ids(batch) == [1, 3, 4]
    assert batch.scores == [0.0, 1.0, 1.0, 0.0, 1.0, 0.0]
    assert source.drawn == 2 and source.generated_rounds == [0, 1]
    assert batch.indices == [0, 1, 2, 3, 4, 5]  # every row drawn, kept or not
    assert batch.metrics["dynamic_sampling/kept_groups"] == 4  # counted even past the batch size


def test_dynamic_sampling_fills_from_the_last_round_when_rounds_run_out():
    source = Source(
        [(0, [1.0, 1.0]), (1, [0.0, 1.0])],
        [(2, [0.0, 0.0]), (3, [1.0, 1.0])],
    )
    batch = collect(source, want=3, max_rounds=2)
    # Every step has its configured size: the last round's groups, in order, fill the rest.
    assert ids(batch) == [1, 2, 3]
    assert batch.scores == [0.0, 1.0, 0.0, 0.0, 1.0, 1.0]
    assert batch.metrics["dynamic_sampling/kept_groups"] == 1


def test_the_fill_never_repeats_a_group_kept_in_the_last_round():
    source = Source(
        [(0, [1.0, 1.0]), (1, [1.0, 1.0]), (2, [1.0, 1.0])],
        [(3, [0.0, 1.0]), (4, [1.0, 1.0]), (5, [0.0, 0.0])],
    )
    batch = collect(source, want=3, max_rounds=2)
    assert ids(batch) == [3, 4, 5]  # not [3, 3, 4]: group 3 trained twice
    assert batch.scores == [0.0, 1.0, 1.0, 1.0, 0.0, 0.0]


def test_unscorable_counts_and_the_reward_metrics_cover_every_round():
    source = Source(
        [(0, [None, 1.0]), (1, [0.0, 0.0])],
        [(2, [None, None]), (3, [0.0, 1.0])],
    )
    batch = collect(source, want=2, max_rounds=2)
    assert ids(batch) == [3, 2]  # 3 has signal; 2 (no scorable pair) only fills
    # every response generated for the step, both rounds, kept or not
    assert batch.metrics["reward/none/exception"] == 3.0 and batch.metrics["reward/count"] == 8.0
    assert batch.metrics["reward/mean"] == 2 / 5  # scorable: 1, 0, 0 then 0, 1


@pytest.mark.parametrize("scores, keep", [
    ([1.0, 1.0, 0.0, 1.0], [False, True]),
    ([None, 1.0, None, None], [False, False]),  # fewer than two scorable members: no signal
    ([0.5, None, 0.5, 1.0], [False, True]),  # 0.5 alone among scorable members; 0.5 vs 1.0 differ
])
def test_groups_with_signal(scores, keep):
    assert groups_with_signal(scores, 2) == keep
