"""Suite-wide: GPU tests skip (with the reason) where no NVIDIA GPU is visible."""

import pytest


def _gpu_count() -> int:
    try:
        import torch

        return torch.cuda.device_count()
    except Exception:  # noqa: BLE001 - no usable torch CUDA runtime means no GPU tests
        return 0


def pytest_collection_modifyitems(config, items):
    n = _gpu_count()
    for item in items:
        marker = item.get_closest_marker("gpu")
        if marker is None:
            continue
        need = int(marker.kwargs.get("n", 1))
        if n < need:
            item.add_marker(pytest.mark.skip(reason=f"needs {need} NVIDIA GPU(s), found {n}"))
