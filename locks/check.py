"""Check that a venv holds exactly the locked set: `python locks/check.py locks/cpu.txt` with the
venv's python. Run by `make setup` after installing, so a lock that pip could not honour (or a
package left over from an older lock) stops the set-up instead of testing something untested."""

from __future__ import annotations

import re
import subprocess
import sys


def pins(lock_path: str) -> dict[str, str]:
    out = {}
    for line in open(lock_path):
        m = re.match(r"^([A-Za-z0-9_.\-]+)==([^\s;#]+)", line)
        if m:
            out[_norm(m.group(1))] = m.group(2)
    return out


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def installed() -> dict[str, str]:
    text = subprocess.run([sys.executable, "-m", "pip", "freeze", "--all", "--exclude-editable"],
                          capture_output=True, text=True, check=True).stdout
    out = {}
    for line in text.splitlines():
        if "==" in line:
            name, version = line.split("==", 1)
            out[_norm(name)] = version.strip()
    out.pop("pip", None)  # the venv's own installer, not part of the lock
    return out


def main() -> None:
    want, have = pins(sys.argv[1]), installed()
    extra = {k: v for k, v in have.items() if k not in want}
    for name in sys.argv[2:]:  # packages a set-up step removes on purpose (tests/vllm_setup.py)
        want.pop(_norm(name), None)
    wrong = {k: (v, have.get(k)) for k, v in want.items() if have.get(k) != v}
    if wrong or extra:
        for k, (v, h) in sorted(wrong.items()):
            print(f"{sys.argv[1]}: {k}=={v} locked, {'missing' if h is None else h + ' installed'}", file=sys.stderr)
        for k, v in sorted(extra.items()):
            print(f"{sys.argv[1]}: {k}=={v} installed but not locked", file=sys.stderr)
        sys.exit(f"the venv does not hold the locked set ({len(wrong)} differ, {len(extra)} extra); remove it and run make setup again")
    print(f"{sys.argv[1]}: all {len(want)} locked packages installed at their versions")


if __name__ == "__main__":
    main()
