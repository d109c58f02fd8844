"""Fixtures: small benchmark copies (built by eval_fixtures.py) in a temp folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from eval_fixtures import write_mathverse, write_mathvision, write_mathvista


@pytest.fixture
def mathvista_dir(tmp_path: Path) -> Path:
    return write_mathvista(tmp_path / "MathVista")


@pytest.fixture
def mathverse_dir(tmp_path: Path) -> Path:
    return write_mathverse(tmp_path / "MathVerse")


@pytest.fixture
def mathvision_dir(tmp_path: Path) -> Path:
    return write_mathvision(tmp_path / "MathVision")
