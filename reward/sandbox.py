"""What reward workers are confined to: resource limits, a scratch folder, captured output.

This guards the trainer against reward code that misbehaves by accident: it eats memory or
CPU, fills the disk, forks without end, or prints megabytes. It is not a security boundary:
workers run as the driver's user, with its environment, files and network (see README,
"Safety and networking").

Worker side (``enter``, run first in each worker process):
- stdout and stderr (file descriptors 1 and 2, so C code and child processes too) go into a
  pipe that the caller reads (``OutputLog``);
- the working folder is the pool's scratch folder (also TMPDIR), removed when the pool closes;
- resource limits (``Limits``): address space, file size and processes are set once and cannot
  be raised again by user code; CPU time is a per-call budget (``start_call``), because a
  worker lives for the whole run;
- optionally (``isolate_network``) a new network namespace with no interfaces: no connection
  leaves the worker, not even to 127.0.0.1. As root it takes CAP_SYS_ADMIN; other users get it
  inside a new user namespace mapping their own uid and gid (so file access is unchanged),
  which the kernel must allow (unprivileged user namespaces).
What goes over a limit becomes an unscorable sample, counted by reason: MemoryError and a
write over the file-size limit (EFBIG) are "exception"; the CPU limit kills the worker
(SIGXCPU), which is "worker_crashed"; a fork over the process limit raises, "exception".
"""

from __future__ import annotations

import ctypes
import logging
import math
import os
import resource
import signal
import sys
from dataclasses import dataclass

logger = logging.getLogger("reward.pool")

_MB = 1024 * 1024


@dataclass(frozen=True)
class Limits:
    """Per-worker limits; 0 turns a limit off (``output_bytes`` 0: keep none). The defaults are
    RewardConfig's (ovlt_rl/config.py)."""

    memory_mb: int = 8192  # address space (RLIMIT_AS)
    cpu_seconds: int = 60  # CPU time per call: one sample, or one chunk of a batch function (RLIMIT_CPU)
    file_size_mb: int = 256  # largest file a worker may write (RLIMIT_FSIZE)
    processes: int = 64  # new processes and threads beyond the user's count at worker start (RLIMIT_NPROC)
    output_bytes: int = 65536  # stdout+stderr kept per batch (and at load); the rest is dropped and counted
    isolate_network: bool = False  # a network namespace of its own, with no interfaces

    def __post_init__(self):
        for name in ("memory_mb", "cpu_seconds", "file_size_mb", "processes", "output_bytes"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"reward limit {name} must be an integer >= 0, got {value!r}")
        if not isinstance(self.isolate_network, bool):
            raise ValueError(f"reward isolate_network must be true or false, got {self.isolate_network!r}")


# ---------------------------------------------------------------------------------- worker side


def enter(limits: Limits, scratch: str, output_fd: int) -> None:
    """Confine this worker process (call first, before importing user code or starting threads:
    a new user namespace needs a single-threaded process). Raises OSError when the platform
    refuses the network namespace."""
    if limits.isolate_network:
        _unshare_network()
    os.dup2(output_fd, 1)
    os.dup2(output_fd, 2)
    # Paths that meant the caller's folder keep meaning it after the move to the scratch folder.
    cwd = os.getcwd()
    sys.path[:] = [os.path.join(cwd, p) if not os.path.isabs(p) else p for p in sys.path]
    os.chdir(scratch)
    os.environ["TMPDIR"] = scratch
    if limits.memory_mb:
        _set(resource.RLIMIT_AS, limits.memory_mb * _MB)
    if limits.file_size_mb:
        # Without SIGXFSZ's default action (kill) a write over the limit raises OSError (EFBIG).
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        _set(resource.RLIMIT_FSIZE, limits.file_size_mb * _MB)
    if limits.processes:
        _set(resource.RLIMIT_NPROC, user_task_count(os.getuid()) + limits.processes)


_CLONE_NEWUSER = 0x10000000
_CLONE_NEWNET = 0x40000000


def _unshare_network() -> None:
    uid, gid = os.getuid(), os.getgid()
    flags = _CLONE_NEWNET if os.geteuid() == 0 else _CLONE_NEWUSER | _CLONE_NEWNET
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(flags) != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"reward.isolate_network: unshare(CLONE_NEWNET) failed: {os.strerror(code)}")
    if flags & _CLONE_NEWUSER:  # keep being the same user inside the new user namespace
        for name, text in (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1"), ("gid_map", f"{gid} {gid} 1")):
            with open(f"/proc/self/{name}", "w") as f:
                f.write(text)


def _set(which: int, value: int) -> None:
    soft, hard = resource.getrlimit(which)
    if hard != resource.RLIM_INFINITY:
        value = min(value, hard)
    resource.setrlimit(which, (value, value))


def start_call(limits: Limits) -> None:
    """Give the next call ``cpu_seconds`` of CPU time (the soft limit moves, the hard one stays)."""
    if limits.cpu_seconds:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        used = math.ceil(usage.ru_utime + usage.ru_stime)
        hard = resource.getrlimit(resource.RLIMIT_CPU)[1]
        soft = used + limits.cpu_seconds if hard == resource.RLIM_INFINITY else min(used + limits.cpu_seconds, hard)
        resource.setrlimit(resource.RLIMIT_CPU, (soft, hard))


def flush_output() -> None:
    """Push Python's buffered prints into the pipe after each call, so they are read in order."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # a stream user code closed or replaced
            pass


def user_task_count(uid: int) -> int:
    """Processes and threads of ``uid`` (what RLIMIT_NPROC counts on Linux)."""
    count = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/status") as f:
                fields = dict(line.split(":", 1) for line in f if ":" in line)
            if int(fields["Uid"].split()[0]) == uid:
                count += int(fields["Threads"])
        except (OSError, KeyError, ValueError):  # a process that ended meanwhile
            continue
    return count


def describe_exit(exitcode: int | None, limits: Limits) -> str:
    """Why a worker ended, for messages: the limit behind a signal, where one is."""
    if exitcode == -signal.SIGXCPU:
        return f"killed by SIGXCPU: over the CPU time limit of {limits.cpu_seconds} s per call (reward.max_cpu_seconds)"
    if exitcode == -signal.SIGXFSZ:
        return f"killed by SIGXFSZ: over the file size limit of {limits.file_size_mb} MB (reward.max_file_size_mb)"
    if exitcode is not None and exitcode < 0:
        try:
            return f"killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            pass
    return f"exit code {exitcode}"


def processes_limit_enforced() -> bool:
    """Linux does not apply RLIMIT_NPROC to root."""
    return os.getuid() != 0


# ---------------------------------------------------------------------------------- caller side


class OutputLog:
    """What the workers print, read from their pipes: up to ``cap`` bytes kept, the rest counted."""

    def __init__(self, cap: int):
        self.cap = cap
        self.kept = bytearray()
        self.total = 0

    @property
    def dropped(self) -> int:
        return self.total - len(self.kept)

    def read(self, fd: int) -> bool:
        """Read everything ``fd`` has now (it is non-blocking); False at end of file."""
        while True:
            try:
                data = os.read(fd, 65536)
            except BlockingIOError:
                return True
            except OSError:
                return False
            if not data:
                return False
            self.total += len(data)
            room = self.cap - len(self.kept)
            if room > 0:
                self.kept += data[:room]

    def report(self, name: str, when: str) -> None:
        """Log what was kept, and a warning for what was dropped; then start afresh."""
        if self.kept:
            text = self.kept.decode("utf-8", errors="replace").rstrip()
            logger.info("reward %r printed %d bytes %s:\n%s", name, self.total, when, text)
        if self.dropped:
            logger.warning(
                "reward %r: %d of %d bytes its workers printed %s were dropped (reward.max_output_bytes=%d)",
                name, self.dropped, self.total, when, self.cap,
            )
        self.kept = bytearray()
        self.total = 0
