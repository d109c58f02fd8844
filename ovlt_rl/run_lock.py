"""One run per output folder.

Two runs writing into the same `trainer.output_dir` replace each other's checkpoints, share their
temporary folders and truncate each other's metrics. A run therefore holds an exclusive OS file
lock (`fcntl.flock`) on `<output_dir>/.lock` for its whole life. The OS drops the lock when the
process ends however it ends (a crash or SIGKILL included), so a stale lock never blocks the next
run; the pid written into the file only names the holder in the error message.

flock works on local file systems; on NFS, Linux carries it over as a POSIX lock (NFSv4 locking);
Lustre needs the `flock` mount option. A file system without locks is an error, not a silent skip.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

LOCK_NAME = ".lock"


class OutputFolderInUse(RuntimeError):
    """Another process holds the output folder's lock."""


class OutputLock:
    def __init__(self, folder: str | os.PathLike):
        self.path = Path(folder) / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> "OutputLock":
        """Take the lock or raise OutputFolderInUse naming the pid that holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise OutputFolderInUse(
                f"output folder {self.path.parent} is in use by pid {holder} (it holds {self.path}); "
                "wait for that run to end or choose another trainer.output_dir"
            ) from None
        except OSError as e:  # ENOSYS, ENOLCK, EOPNOTSUPP: a file system without locks
            os.close(fd)
            raise OSError(
                e.errno, f"can't lock {self.path}: its file system does not support file locks ({e.strerror}); "
                "ovlt needs them to keep two runs out of one output folder. Mount it with locking "
                "(Lustre: -o flock; NFS: v4 or lockd) or use another trainer.output_dir"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> "OutputLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
