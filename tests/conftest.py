"""Shared fixtures: tiny generated datasets and a temporary workspace.

(Markers are registered in pytest.ini.)
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

torch.set_num_threads(2)

from support import SHARED_DATA, make_tiny_dataset, shared_data_or_skip  # noqa: F401  (re-exported)


@pytest.fixture
def tiny_data():
    return make_tiny_dataset()


@pytest.fixture
def workspace(tmp_path, monkeypatch):
    path = tmp_path / "workspace"
    monkeypatch.setenv("STEERBOARD_WORKSPACE", str(path))
    return path
