"""Helpers for AppTest page tests: a workspace with a cached base model, and app runs."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ENTRY = str(ROOT / "app" / "main.py")


def prepare_workspace(path: Path) -> Path:
    """A workspace whose default base model is already cached (1 quick epoch)."""
    from core.data import load_dataset
    from core.engine import TrainConfig
    from core.models import save_checkpoint
    from core.session.store import Store
    from core.session.workbench import base_checkpoint_path, train_base_model

    store = Store(path)
    data = load_dataset("digits")
    model, _ = train_base_model(data, "seed-cnn", config=TrainConfig(epochs=1, lr=0.02))
    save_checkpoint(model, base_checkpoint_path(store, "digits", "seed-cnn", 0), data.classes)
    return path


def new_app(workspace: Path, query: dict | None = None, timeout: float = 60):
    """A fresh AppTest of the entry script on ``workspace`` (server caches cleared)."""
    import streamlit as st
    from streamlit.testing.v1 import AppTest

    os.environ["STEERBOARD_WORKSPACE"] = str(workspace)
    st.cache_resource.clear()
    at = AppTest.from_file(ENTRY, default_timeout=timeout)
    for k, v in (query or {}).items():
        at.query_params[k] = v
    return at


def workbench_of(at):
    """The live workbench the AppTest's session shows (from the server-wide registry)."""
    from app.state import SESSION_KEY, get_registry

    return get_registry().get(at.session_state[SESSION_KEY])


def no_exceptions(at) -> None:
    assert len(at.exception) == 0, [e.message for e in at.exception]


@pytest.fixture(scope="session")
def app_workspace(tmp_path_factory):
    old = os.environ.get("STEERBOARD_WORKSPACE")
    path = prepare_workspace(tmp_path_factory.mktemp("app") / "workspace")
    yield path
    if old is None:
        os.environ.pop("STEERBOARD_WORKSPACE", None)
    else:
        os.environ["STEERBOARD_WORKSPACE"] = old
