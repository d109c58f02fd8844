"""Reward workers are confined: their output is captured, capped and counted; memory, CPU time,
file size and process limits turn a runaway sample into a counted unscorable one, not a crash;
they work in a scratch folder that is removed with the pool; optionally, without a network."""

import errno
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

import reward
from reward import Limits

ROOT = Path(__file__).resolve().parents[2]

RUNAWAY = """
import os, sys, time

def score(response, ground_truth, **extra):
    if response == "print":
        print("x" * 1_000_000)              # Python's stdout
        os.write(2, b"y" * 500_000)         # and straight to file descriptor 2, as C code would
    if response == "allocate":
        block = bytearray(4 * 1024**3)      # 4 GiB
        return float(len(block))
    if response == "spin":
        while True:
            pass
    if response == "big_file":
        with open("big.bin", "wb") as f:
            f.write(b"z" * (3 * 1024 * 1024))
    if response == "small_file":
        with open("small.bin", "wb") as f:
            f.write(b"z" * (100 * 1024))
    if response == "fork":
        children = []
        try:
            for _ in range(40):
                pid = os.fork()
                if pid == 0:
                    time.sleep(2)
                    os._exit(0)
                children.append(pid)
        finally:
            for pid in children:
                os.waitpid(pid, 0)
    return float(response == ground_truth) + (0.5 if response in ("print", "small_file", "fork") else 0.0)
"""


@pytest.fixture(scope="module")
def runaway_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("sandbox") / "runaway.py"
    path.write_text(RUNAWAY)
    return path


def test_output_is_captured_capped_and_counted(runaway_file, capfd, caplog):
    caplog.set_level(logging.INFO, logger="reward.pool")
    with reward.load(f"{runaway_file}:score", num_workers=2, limits=Limits(output_bytes=1000)) as fn:
        batch = fn.score_batch(["print", "a", "print", "print"], ["a"] * 4)
    assert batch.scores == [0.5, 1.0, 0.5, 0.5]
    assert batch.output_bytes >= 3 * 1_500_000
    assert batch.output_dropped_bytes == batch.output_bytes - 1000
    metrics = batch.metrics()
    assert metrics["reward/output_dropped_bytes"] == batch.output_dropped_bytes
    printed = capfd.readouterr()
    assert len(printed.out) + len(printed.err) < 20_000  # none of the 4.5 MB reached the caller's console
    kept = [r for r in caplog.records if r.levelname == "INFO" and "while scoring" in r.getMessage()]
    assert len(kept) == 1 and "x" * 900 in kept[0].getMessage() and len(kept[0].getMessage()) < 1500
    dropped = [r for r in caplog.records if r.levelname == "WARNING" and "were dropped" in r.getMessage()]
    assert dropped and str(batch.output_dropped_bytes) in dropped[0].getMessage()


def test_memory_limit_makes_the_sample_unscorable(runaway_file):
    with reward.load(f"{runaway_file}:score", num_workers=1, limits=Limits(memory_mb=1024)) as fn:
        batch = fn.score_batch(["a", "allocate", "b"], ["a"] * 3)
    assert batch.scores == [1.0, None, 0.0]
    assert batch.none_reasons == {"exception": 1}
    assert "MemoryError" in batch.details[0]


def test_cpu_limit_kills_the_call_and_counts_it(runaway_file):
    # a wall-clock timeout far away: the CPU limit (per call) is what stops the spinning sample
    with reward.load(f"{runaway_file}:score", timeout=60.0, num_workers=1, limits=Limits(cpu_seconds=1)) as fn:
        start = time.monotonic()
        batch = fn.score_batch(["a", "spin", "b"], ["a"] * 3)
        elapsed = time.monotonic() - start
        # the budget is per call: a long-lived worker is not killed for the CPU its earlier calls used
        assert fn.score_batch(["a"] * 30, ["a"] * 30).scores == [1.0] * 30
    assert batch.scores == [1.0, None, 0.0]
    assert batch.none_reasons == {"worker_crashed": 1}
    assert "SIGXCPU" in batch.details[0] and "reward.max_cpu_seconds" in batch.details[0]
    assert elapsed < 30, elapsed


def test_file_size_limit_makes_the_sample_unscorable(runaway_file):
    with reward.load(f"{runaway_file}:score", num_workers=1, limits=Limits(file_size_mb=1)) as fn:
        batch = fn.score_batch(["small_file", "big_file", "a"], ["a"] * 3)
    assert batch.scores == [0.5, None, 1.0]
    assert batch.none_reasons == {"exception": 1}
    assert "File too large" in batch.details[0]


def test_workers_run_in_a_scratch_folder_that_is_removed(tmp_path, monkeypatch):
    file = tmp_path / "where.py"
    file.write_text(
        textwrap.dedent(
            """
            import os, tempfile

            def score(response, ground_truth, report):
                with open("relative.txt", "w") as f:     # lands in the scratch folder
                    f.write("x")
                with open(report, "w") as f:
                    f.write(os.getcwd() + "\\n" + tempfile.gettempdir())
                return 1.0
            """
        )
    )
    caller_cwd = tmp_path / "caller"
    caller_cwd.mkdir()
    monkeypatch.chdir(caller_cwd)
    report = tmp_path / "report.txt"
    fn = reward.load(f"{file}:score", num_workers=1, kwargs={"report": str(report)})
    try:
        assert fn("a", "a") == 1.0
        scratch = fn._pool.scratch
        cwd, tmp = report.read_text().splitlines()
        assert os.path.realpath(cwd) == os.path.realpath(scratch) == os.path.realpath(tmp)
        assert os.path.realpath(cwd) != os.path.realpath(caller_cwd)
        assert (Path(scratch) / "relative.txt").exists() and not (caller_cwd / "relative.txt").exists()
    finally:
        fn.close()
    assert not Path(scratch).exists()


NPROC_SCRIPT = """
import json, sys
import reward

if __name__ == "__main__":
    with reward.load(sys.argv[1] + ":score", timeout=60.0, num_workers=1, limits=reward.Limits(processes=8)) as fn:
        batch = fn.score_batch(["a", "fork", "b"], ["a"] * 3)
    print(json.dumps({"scores": batch.scores, "reasons": batch.reasons, "details": batch.details}))
"""


def _python_and_user() -> tuple[str, dict]:
    """Linux does not apply RLIMIT_NPROC to root: as root, run the caller as "nobody", with a
    Python that user may execute (the reward package's worker side needs only the standard library)."""
    if os.getuid() != 0:
        return sys.executable, {}
    for python in ("/usr/bin/python3", "/usr/local/bin/python3"):
        if os.path.exists(python) and sys.version_info[:2] == tuple(
            int(x) for x in subprocess.run([python, "-c", "import sys; print(*sys.version_info[:2])"], capture_output=True, text=True).stdout.split()
        ):
            return python, {"user": 65534, "group": 65534, "extra_groups": []}
    raise AssertionError("running as root, and no system Python of this version that 'nobody' could run")


def test_process_limit_makes_a_fork_bomb_unscorable(runaway_file):
    python, as_nobody = _python_and_user()
    folder = Path(tempfile.mkdtemp(prefix="ovlt-nproc-"))
    try:
        os.chmod(folder, 0o755)
        (folder / "runaway.py").write_text(runaway_file.read_text())
        (folder / "main.py").write_text(NPROC_SCRIPT)
        for f in folder.iterdir():
            os.chmod(f, 0o644)
        env = {**os.environ, "PYTHONPATH": str(ROOT), "HOME": str(folder), "TMPDIR": "/tmp"}
        done = subprocess.run(
            [python, str(folder / "main.py"), str(folder / "runaway.py")],
            capture_output=True, text=True, env=env, cwd=folder, timeout=180, **as_nobody,
        )
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["scores"] == [1.0, None, 0.0]
    assert result["reasons"] == [None, "exception", None]
    assert "Resource temporarily unavailable" in result["details"][0] or "BlockingIOError" in result["details"][0]


def test_bad_limits_are_rejected():
    with pytest.raises(ValueError, match="memory_mb"):
        Limits(memory_mb=-1)
    with pytest.raises(ValueError, match="cpu_seconds"):
        Limits(cpu_seconds=1.5)


def test_isolate_network_leaves_workers_without_a_network(tmp_path):
    file = tmp_path / "connects.py"
    file.write_text(
        textwrap.dedent(
            """
            import socket

            def score(response, ground_truth, port):
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=5).close()
                    return {"overall": 1.0}
                except OSError as exc:
                    return {"overall": 0.0, "errno": float(exc.errno or -1)}
            """
        )
    )
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        port = server.getsockname()[1]
        with reward.load(f"{file}:score", num_workers=1, kwargs={"port": port}) as open_fn:
            assert open_fn("a", "a") == 1.0  # without isolation the worker reaches the caller's port
        with reward.load(f"{file}:score", num_workers=1, kwargs={"port": port}, limits=Limits(isolate_network=True)) as closed_fn:
            batch = closed_fn.score_batch(["a"], ["a"])
    assert batch.scores == [0.0]
    assert batch.parts["errno"] == [float(errno.ENETUNREACH)]  # no interface at all, not even loopback


def test_output_while_loading_is_captured_too(tmp_path, capfd, caplog):
    caplog.set_level(logging.INFO, logger="reward.pool")
    file = tmp_path / "chatty_import.py"
    file.write_text("print('loading my reward ' + 'z' * 300_000)\n\ndef score(response, ground_truth):\n    return 1.0\n")
    with reward.load(f"{file}:score", num_workers=1, limits=Limits(output_bytes=100)) as fn:
        assert fn("a", "a") == 1.0
    printed = capfd.readouterr()
    assert "zzzz" not in printed.out + printed.err
    messages = [r.getMessage() for r in caplog.records]
    assert any("while loading" in m and "loading my reward" in m for m in messages)
    assert any("were dropped" in m and "while loading" in m for m in messages)
