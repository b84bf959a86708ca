"""Allowed data roots, and the shared base-model registry."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from core.session.base_models import BaseModels
from core.engine import TrainConfig
from core.session.paths import PathNotAllowed, check_user_path, data_roots
from core.session.store import Store
from support import make_tiny_dataset


def test_paths_inside_roots_only(tmp_path, monkeypatch):
    root = tmp_path / "root"
    (root / "data" / "qd").mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    (root / "data" / "link").symlink_to(outside)
    monkeypatch.chdir(root)
    roots = [root.resolve()]
    assert check_user_path("data/qd", roots) == (root / "data" / "qd").resolve()
    assert check_user_path(str(root / "data" / "qd"), roots) == (root / "data" / "qd").resolve()
    for bad in ("../outside", "data/../../outside", str(outside), "/etc/passwd", "data/link", "~"):
        with pytest.raises(PathNotAllowed, match="outside the folders"):
            check_user_path(bad, roots)
    with pytest.raises(PathNotAllowed, match="Type the path"):
        check_user_path("  ", roots)


def test_data_roots_are_the_workspace_data_folder_plus_the_environment(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ws_data = (tmp_path / "ws" / "data").resolve()
    # The current directory is not a root unless it is listed.
    monkeypatch.delenv("STEERBOARD_DATA_ROOTS", raising=False)
    assert data_roots(tmp_path / "ws") == [ws_data]
    assert data_roots(tmp_path / "ws", extra="") == [ws_data]
    a, b = tmp_path / "a", tmp_path / "b"
    listed = f"{a}{os.pathsep} {os.pathsep}{b}{os.pathsep}{a}"
    assert data_roots(tmp_path / "ws", extra=listed) == [ws_data, a.resolve(), b.resolve()]
    monkeypatch.setenv("STEERBOARD_DATA_ROOTS", f".{os.pathsep}~")
    assert data_roots(tmp_path / "ws") == [ws_data, tmp_path.resolve(), Path.home().resolve()]
    # An explicit ``extra`` replaces the environment's list, never the workspace folder.
    assert data_roots(tmp_path / "ws", extra=str(a)) == [ws_data, a.resolve()]


def test_refusal_says_how_to_add_a_root(tmp_path):
    roots = data_roots(tmp_path / "ws", extra="")
    with pytest.raises(PathNotAllowed) as err:
        check_user_path(str(tmp_path), roots)
    msg = str(err.value)
    assert "\n" not in msg and str(roots[0]) in msg and "STEERBOARD_DATA_ROOTS" in msg
    with pytest.raises(PathNotAllowed, match="NUL"):
        check_user_path("data/a\x00b", roots)
    with pytest.raises(PathNotAllowed, match="full path"):
        check_user_path("~no-such-user-xyz/data", roots)


def test_base_model_trained_once_in_background_then_loaded_from_disk(tmp_path, tiny_data):
    store = Store(tmp_path / "ws")
    registry = BaseModels(store)
    cfg = TrainConfig(epochs=1, batch_size=16, seed=0)
    assert registry.status(tiny_data, "tiny", "seed-cnn", train=False, config=cfg).job is None
    first = registry.status(tiny_data, "tiny", "seed-cnn", train=True, config=cfg)
    assert first.model is None and first.job is not None
    assert first.job.wait(60) and first.job.status == "done", first.job.error
    again = registry.status(tiny_data, "tiny", "seed-cnn", train=True, config=cfg)
    assert again.model is not None and again.job is None
    fresh = BaseModels(Store(tmp_path / "ws")).status(tiny_data, "tiny", "seed-cnn", config=cfg)
    assert fresh.model is not None
    assert all((a == b).all() for a, b in zip(fresh.model.state_dict().values(), again.model.state_dict().values()))


def test_base_model_metrics_are_reused_only_for_the_same_evaluation_splits(tmp_path, tiny_data, monkeypatch):
    """A server start loads the base model's metrics from its checkpoint instead of evaluating
    it again, but only when the val and test splits are the ones they were computed on."""
    import core.session.base_models as bm

    store = Store(tmp_path / "ws")
    cfg = TrainConfig(epochs=1, batch_size=16, seed=0)
    first = BaseModels(store).status(tiny_data, "tiny", "seed-cnn", train=True, config=cfg)
    assert first.job.wait(60) and first.job.status == "done", first.job.error
    trained = BaseModels(store).status(tiny_data, "tiny", "seed-cnn", config=cfg).metrics

    calls = []
    real = bm.version_metrics
    monkeypatch.setattr(bm, "version_metrics", lambda model, data: calls.append(data) or real(model, data))
    same = BaseModels(Store(tmp_path / "ws")).status(make_tiny_dataset(), "tiny", "seed-cnn", config=cfg)
    assert same.metrics == trained and calls == []  # read from the checkpoint, not evaluated

    changed = make_tiny_dataset()
    changed.images[changed.splits["test"][0]] += 0.1  # one test image differs
    assert changed.eval_fingerprint() != tiny_data.eval_fingerprint()
    again = BaseModels(Store(tmp_path / "ws")).status(changed, "tiny", "seed-cnn", config=cfg)
    assert len(calls) == 1 and again.metrics == real(again.model, changed)
