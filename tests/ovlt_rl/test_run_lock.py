"""One run per output folder: a second run into a folder in use stops at once with the holder's pid,
touches nothing there, and a crashed holder (SIGKILL) leaves no stale lock."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from ovlt.config import load_config
from ovlt_rl.controller import run_sft
from ovlt_rl.run_lock import OutputFolderInUse, OutputLock

REPO = Path(__file__).resolve().parents[2]


def _hold_lock_in_child(folder: Path) -> subprocess.Popen:
    code = ("import sys, time; from ovlt_rl.run_lock import OutputLock; "
            f"OutputLock({str(folder)!r}).acquire(); print('held', flush=True); time.sleep(600)")
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env)
    assert child.stdout.readline().strip() == "held"
    return child


def test_a_second_run_into_a_folder_in_use_stops_and_names_the_pid(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.jsonl").write_text('{"step": 1}\n')
    (out / "config.yaml").write_text("first run\n")
    child = _hold_lock_in_child(out)
    try:
        cfg = load_config("sft", ["recipe=tiny", f"trainer.output_dir={out}", "model.path=tiny"])
        with pytest.raises(OutputFolderInUse, match=rf"output folder {out} is in use by pid {child.pid}"):
            run_sft(cfg)
        # Stopped before any work (no data preparation, no checkpoints): the first run's files are untouched.
        assert (out / "metrics.jsonl").read_text() == '{"step": 1}\n'
        assert (out / "config.yaml").read_text() == "first run\n"
        assert sorted(p.name for p in out.iterdir()) == [".lock", "config.yaml", "metrics.jsonl"]
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    # Killed, the holder left its pid in the file but no lock: the next run takes it.
    lock = OutputLock(out).acquire()
    assert (out / ".lock").read_text().strip() == str(os.getpid())
    lock.release()


def test_the_lock_is_exclusive_within_one_process_too(tmp_path):
    with OutputLock(tmp_path):
        with pytest.raises(OutputFolderInUse, match=f"in use by pid {os.getpid()}"):
            OutputLock(tmp_path).acquire()
    with OutputLock(tmp_path) as again:  # released on exit
        assert again.held


def test_a_file_system_without_locks_is_a_clear_error(tmp_path, monkeypatch):
    import errno
    import fcntl

    def no_locks(fd, op):
        raise OSError(errno.ENOSYS, "Function not implemented")

    monkeypatch.setattr(fcntl, "flock", no_locks)  # what Lustre without -o flock answers
    with pytest.raises(OSError, match="does not support file locks.*Lustre: -o flock"):
        OutputLock(tmp_path).acquire()
