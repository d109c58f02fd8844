"""Find or stop the processes of one Ray instance on this machine, by its --temp-dir.

    python cluster/ray_instance.py pids DIR     list the instance's process ids
    python cluster/ray_instance.py stop DIR     end them (SIGTERM, then SIGKILL after a grace period)

`ray stop` ends every Ray process of the machine. Where several Ray instances share a machine
(tests beside other tests, several users), this ends only the one started with `--temp-dir DIR`:
Ray's own daemons carry that folder on their command lines, and workers and job drivers are their
descendants. Processes are ended by id, never by name.
"""

from __future__ import annotations

import os
import sys

import psutil


def instance_processes(temp_dir: str) -> list[psutil.Process]:
    """The processes whose command line names `temp_dir`, and all their descendants."""
    temp_dir = os.path.realpath(temp_dir)
    roots = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        cmd = p.info["cmdline"] or []
        if p.pid != os.getpid() and any(temp_dir in arg for arg in cmd):
            roots.append(p)
    found: dict[int, psutil.Process] = {}
    for p in roots:
        found[p.pid] = p
        try:
            for c in p.children(recursive=True):
                found[c.pid] = c
        except psutil.NoSuchProcess:
            pass
    found.pop(os.getpid(), None)
    return list(found.values())


def stop_instance(temp_dir: str, grace: float = 10.0) -> int:
    """End the instance's processes; returns how many there were."""
    procs = instance_processes(temp_dir)
    for p in procs:
        try:
            p.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=grace)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=5)
    return len(procs)


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in ("pids", "stop") or not os.path.isdir(argv[1]):
        print(__doc__, file=sys.stderr)
        return 2
    if argv[0] == "pids":
        for p in instance_processes(argv[1]):
            print(p.pid)
    else:
        print(f"stopped {stop_instance(argv[1])} processes of the Ray instance in {argv[1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
