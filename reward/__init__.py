"""Verifiable-answer rewards for ovlt: the contract, the built-ins, and loading your own.

Choose a reward per recipe with ``reward.fn=SPEC``, without touching the engine:

    reward.fn=openvlthinker                 a built-in (the default; see below)
    reward.fn=path/to/my_rewards.py:score   a function in a file (":name" defaults to compute_score)
    reward.fn=my_package.rewards:score      a function in an importable module

The contract. A reward function scores ONE response against its ground truth:

    def score(response: str, ground_truth: str, **extra) -> float | dict | None

``extra`` carries the row's ``data_source`` and ``extra_info`` (accept them by name or with
``**extra``, or leave them out). Return a float; or a dict with ``overall`` (the reward) and
any other named parts, which are logged as ``reward/<name>`` (e.g. ``{"overall": 0.5,
"accuracy": 1.0}``); or None for "can't score this one".

Reward files written for verl and EasyR1 load unchanged; the shape is chosen by the
function's parameter names and the file's ``REWARD_TYPE`` (reward.spec.SHAPES):
verl's ``compute_score(data_source, solution_str, ground_truth, extra_info, **kwargs)``
returning a float or a dict with ``score``, verl's batch form (``data_sources``,
``solution_strs``, ...), EasyR1's ``REWARD_TYPE = "sequential"`` ``compute_score(reward_input)``
and ``REWARD_TYPE = "batch"`` ``compute_score(reward_inputs)`` returning dicts with
``overall``, and EasyR1 0.3's ``compute_score(predict_str, ground_truth)``. ``reward.kwargs``
are passed to every call by keyword. Batch functions get one call per chunk of samples.

Safety. Your function runs in a pool of worker processes, never in the trainer. Each sample
gets a wall-clock timeout (default 10 s; a batch function's chunk gets it as a whole).
Exceptions, timeouts, None, non-numbers, NaN/inf and crashed workers (os._exit, segfaults)
make that sample's score None, counted by reason ("exception", "timeout", "returned_none",
"non_numeric", "non_finite", "worker_crashed", "abandoned"); the rest of the batch scores
normally. ``check_unscorable`` turns "too many None" into an error naming the function.
Workers run with resource limits (memory, CPU time per call, file size, processes), in a
scratch working folder, and their stdout/stderr is captured, capped and counted
(reward/sandbox.py, ``Limits``). Workers are started with multiprocessing's "spawn":
a script that calls ``reward.load`` needs the usual ``if __name__ == "__main__":`` guard.

Built-ins: ``openvlthinker`` (OpenVLThinker's reward: correctness of the last
``<answer>...</answer>``, 0.5 for a correct answer with nothing between ``</think>`` and
``<answer>``, format logged as a part), ``format``, ``multiple_choice``, ``numeric``,
``yes_no``. See reward/builtins.py.

Using it from Python:

    import reward
    with reward.load("openvlthinker", timeout=10.0, num_workers=2) as fn:
        batch = fn.score_batch(responses, ground_truths, [{"data_source": ..., "extra_info": ...}, ...])
        batch.scores, batch.parts["accuracy"], batch.none_reasons, batch.metrics()
        reward.check_unscorable(batch, max_fraction=0.1, name=fn.name)

Answer handling shared with evaluation: ``extract_answer``, ``normalize_answer``, ``grade``
(reward/grading.py). From the shell: ``ovlt reward score fn=SPEC data=rows.jsonl``.
"""

from reward.loader import RewardFn, load, load_from_config
from reward.sandbox import Limits
from reward.scores import BatchScores, UnscorableError, check_unscorable
from reward.spec import RewardSpecError

__all__ = [
    "load",
    "load_from_config",
    "RewardFn",
    "Limits",
    "BatchScores",
    "RewardSpecError",
    "UnscorableError",
    "check_unscorable",
    "extract_answer",
    "normalize_answer",
    "grade",
]

_GRADING = ("extract_answer", "normalize_answer", "grade")


def __getattr__(name: str):
    # The graders import sympy, mathruler and math-verify (about a second). Importing them on
    # first use keeps `import reward` light for the trainer and for workers running user code.
    if name in _GRADING:
        from reward import grading

        return getattr(grading, name)
    raise AttributeError(f"module 'reward' has no attribute {name!r}")
