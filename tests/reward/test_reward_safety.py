"""The pool never hangs, crashes or lies: timeouts, exceptions, bad returns, dying workers, threads."""

import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

import reward
from reward import UnscorableError, check_unscorable

TIMEOUT = 1.0
ROOT = Path(__file__).resolve().parents[2]

# One function that misbehaves on demand: the response says how.
MISBEHAVING = """
import ctypes, math, os, time

def score(response, ground_truth, **extra):
    if response == "hang":
        time.sleep(10**6)
    if response == "spin":
        while True:
            pass
    if response == "raise":
        raise ZeroDivisionError("boom")
    if response == "sys_exit":
        raise SystemExit(4)
    if response == "nan":
        return math.nan
    if response == "inf":
        return {"overall": math.inf, "accuracy": 1.0}
    if response == "string":
        return "0.5"
    if response == "list":
        return [1.0]
    if response == "no_overall":
        return {"accuracy": 1.0}
    if response == "none":
        return None
    if response == "exit":
        os._exit(3)
    if response == "segfault":
        ctypes.string_at(0)
    return float(response == ground_truth)
"""


@pytest.fixture(scope="module")
def misbehaving_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("rewards") / "misbehaving.py"
    path.write_text(MISBEHAVING)
    return path


@pytest.fixture(scope="module")
def fn(misbehaving_file):
    with reward.load(f"{misbehaving_file}:score", timeout=TIMEOUT, num_workers=2) as loaded:
        yield loaded


def test_each_failure_becomes_none_with_its_reason_and_the_rest_still_score(fn):
    cases = {
        "raise": "exception",
        "sys_exit": "exception",
        "nan": "non_finite",
        "inf": "non_finite",
        "string": "non_numeric",
        "list": "non_numeric",
        "no_overall": "non_numeric",
        "none": "returned_none",
        "exit": "worker_crashed",
        "segfault": "worker_crashed",
    }
    responses, truths, expected = [], [], []
    for i, bad in enumerate(cases):
        # good samples before and after each bad one, some right and some wrong
        responses += ["a", bad, "b"]
        truths += ["a", "a", "a"]
        expected += [1.0, None, 0.0]
    batch = fn.score_batch(responses, truths)
    assert batch.scores == expected
    assert [r for r in batch.reasons if r is not None] == list(cases.values())
    assert batch.none_reasons == {"exception": 2, "non_finite": 2, "non_numeric": 3, "returned_none": 1, "worker_crashed": 2}
    assert batch.parts["accuracy"][responses.index("inf")] == 1.0  # parts survive a bad overall
    assert any("ZeroDivisionError: boom" in d for d in batch.details)
    metrics = batch.metrics()
    assert metrics["reward/mean"] == 0.5
    assert metrics["reward/unscorable_frac"] == pytest.approx(10 / 30)
    assert metrics["reward/none/worker_crashed"] == 2.0
    # the pool is whole again: a following batch scores normally
    assert fn.score_batch(["a"] * 50, ["a"] * 50).scores == [1.0] * 50


@pytest.mark.parametrize("hang", ["hang", "spin"])
def test_a_hung_sample_costs_about_the_timeout(fn, hang):
    responses = ["a"] * 20
    responses[3] = hang
    start = time.monotonic()
    batch = fn.score_batch(responses, ["a"] * 20)
    elapsed = time.monotonic() - start
    assert batch.reasons[3] == "timeout"
    assert batch.scores[:3] + batch.scores[4:] == [1.0] * 19
    assert batch.none_reasons == {"timeout": 1}
    assert TIMEOUT <= elapsed < TIMEOUT + 1.5, elapsed


def test_rest_of_a_timed_out_chunk_goes_to_a_fresh_worker(misbehaving_file):
    # one worker, one chunk: the samples after the hung one must be re-sent, not lost or timed out
    with reward.load(f"{misbehaving_file}:score", timeout=TIMEOUT, num_workers=1) as single:
        start = time.monotonic()
        batch = single.score_batch(["a", "hang", "a", "b", "a"], ["a"] * 5)
        elapsed = time.monotonic() - start
    assert batch.scores == [1.0, None, 1.0, 0.0, 1.0]
    assert batch.none_reasons == {"timeout": 1}
    assert elapsed < TIMEOUT + 5.0, elapsed  # the timeout plus one worker start


def test_a_function_that_always_hangs_is_abandoned_not_waited_for(misbehaving_file):
    timeout = 0.5
    with reward.load(f"{misbehaving_file}:score", timeout=timeout, num_workers=2) as quick:
        start = time.monotonic()
        batch = quick.score_batch(["hang"] * 40, ["a"] * 40)
        elapsed = time.monotonic() - start
        assert quick("a", "a") == 1.0  # and the pool recovers
    assert batch.scores == [None] * 40
    assert batch.none_reasons["timeout"] >= 7  # more than 2 * workers + 2 in a row, then give up
    assert batch.none_reasons["timeout"] + batch.none_reasons["abandoned"] == 40
    assert elapsed < 40 * timeout / 2 / 2, elapsed  # well under scoring every sample to its timeout


def test_works_from_a_non_main_thread(misbehaving_file):
    out = {}

    def run():
        try:
            with reward.load(f"{misbehaving_file}:score", timeout=TIMEOUT, num_workers=2) as threaded:
                out["batch"] = threaded.score_batch(["a", "hang", "raise", "b"], ["a"] * 4)
        except BaseException as exc:  # surface anything to the main thread's assertions
            out["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(timeout=30)
    assert not thread.is_alive()
    assert "error" not in out, out.get("error")
    assert out["batch"].scores == [1.0, None, None, 0.0]
    assert out["batch"].reasons == [None, "timeout", "exception", None]


def test_math_verify_signal_timeouts_work_inside_workers(tmp_path):
    # math-verify's default timeouts use signal.alarm, which needs a main thread: the worker's
    # main thread runs user code, so this works even when the caller is a thread.
    file = tmp_path / "mv_reward.py"
    file.write_text(
        textwrap.dedent(
            """
            from math_verify import parse, verify

            def score(response, ground_truth):
                return 1.0 if verify(parse(ground_truth), parse(response)) else 0.0
            """
        )
    )
    out = {}

    def run():
        with reward.load(f"{file}:score", timeout=10.0, num_workers=1) as mv:
            out["batch"] = mv.score_batch(["$\\frac{1}{2}$", "$0.6$"], ["$0.5$", "$0.5$"])

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(timeout=60)
    assert out["batch"].scores == [1.0, 0.0]
    assert not out["batch"].none_reasons


def test_concurrent_callers_are_served_one_batch_at_a_time(fn):
    results = [None] * 4

    def run(i):
        results[i] = fn.score_batch(["a", "b"] * 10, ["a"] * 20).scores

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert results == [[1.0, 0.0] * 10] * 4


def test_check_unscorable_names_the_function(fn):
    batch = fn.score_batch(["a", "raise", "none", "b"], ["a"] * 4)
    check_unscorable(batch, max_fraction=0.5, name=fn.name)  # 2/4 is not over 0.5
    with pytest.raises(UnscorableError) as info:
        check_unscorable(batch, max_fraction=0.25, name=fn.name)
    message = str(info.value)
    assert fn.name in message and "misbehaving.py:score" in message
    assert "2/4" in message and "exception=1" in message and "returned_none=1" in message
    assert "ZeroDivisionError" in message


def test_bad_batch_input_is_a_clear_error(fn):
    with pytest.raises(ValueError, match="same length"):
        fn.score_batch(["a", "b"], ["a"])
    with pytest.raises(TypeError, match="response #1 is a NoneType"):
        fn.score_batch(["a", None], ["a", "a"])
    with pytest.raises(TypeError, match="ground truth #0 is a int"):
        fn.score_batch(["a"], [3])
    with pytest.raises(ValueError, match=r"unknown keys \['tokenizer'\]"):
        fn.score_batch(["a"], ["a"], [{"tokenizer": None}])
    assert fn.score_batch([], []).scores == []


def test_closed_function_refuses_work(misbehaving_file):
    loaded = reward.load(f"{misbehaving_file}:score", timeout=TIMEOUT, num_workers=1)
    processes = [w.process for w in loaded._pool.workers]
    loaded.close()
    loaded.close()  # twice is fine
    assert all(p.exitcode is not None for p in processes)
    with pytest.raises(RuntimeError, match="closed"):
        loaded("a", "a")


def test_interpreter_exit_does_not_wait_for_a_hung_worker(misbehaving_file, tmp_path):
    # workers are not daemonic (user code may start processes), so multiprocessing's exit hook
    # would join a worker stuck in user code forever; ours kills the pool first
    script = tmp_path / "exit_while_hung.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import threading, time
            import reward

            def main():
                fn = reward.load({str(misbehaving_file) + ':score'!r}, timeout=600, num_workers=1)
                threading.Thread(target=fn.score_batch, args=(["hang"], ["a"]), daemon=True).start()
                time.sleep(1.0)
                print("leaving", flush=True)

            if __name__ == "__main__":
                main()
            """
        )
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    start = time.monotonic()
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "leaving" in done.stdout
    assert time.monotonic() - start < 20
