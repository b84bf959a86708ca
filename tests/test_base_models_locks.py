"""Issue 29: ``BaseModels.status`` loads and evaluates each base model under that base
model's own lock. One global lock made every tab wait while any base model was evaluated."""
from __future__ import annotations

import threading

import core.session.base_models as bm
from core.session.base_models import BaseModels
from core.models import build_model, save_checkpoint
from core.session.store import Store
from core.session.workbench import base_checkpoint_path
from support import make_tiny_dataset


def test_two_base_models_are_evaluated_at_once_and_each_only_once(tmp_path, monkeypatch):
    store = Store(tmp_path / "ws")
    data_a, data_b = make_tiny_dataset(seed=1), make_tiny_dataset(seed=2)
    for source in ("tiny-a", "tiny-b"):  # on disk without metrics: the first status() evaluates them
        save_checkpoint(build_model("seed-cnn", 1, 16, 4, seed=0), base_checkpoint_path(store, source, "seed-cnn"),
                        data_a.classes, {})
    entered_a, release_a = threading.Event(), threading.Event()
    calls: list[str] = []

    def slow_metrics(model, data, device=None):
        name = "a" if data is data_a else "b"
        calls.append(name)
        if name == "a":
            entered_a.set()
            assert release_a.wait(30)
        return {"val_acc": 0.5, "test_acc": 0.5}

    monkeypatch.setattr(bm, "version_metrics", slow_metrics)
    bases = BaseModels(store)
    got: dict[str, list] = {"a": [], "b": []}
    first_a = threading.Thread(target=lambda: got["a"].append(bases.status(data_a, "tiny-a", "seed-cnn")))
    first_a.start()
    assert entered_a.wait(30)  # base model a is being evaluated, and stays so
    b = threading.Thread(target=lambda: got["b"].append(bases.status(data_b, "tiny-b", "seed-cnn")))
    b.start()
    b.join(15)
    b_done_while_a_evaluates = not b.is_alive()
    second_a = threading.Thread(target=lambda: got["a"].append(bases.status(data_a, "tiny-a", "seed-cnn")))
    second_a.start()
    second_a.join(0.5)
    second_a_waited = second_a.is_alive()
    release_a.set()
    for t in (first_a, second_a, b):
        t.join(30)
    assert b_done_while_a_evaluates, "another base model waited for this one's evaluation"
    assert got["b"][0].model is not None and got["b"][0].metrics == {"val_acc": 0.5, "test_acc": 0.5}
    assert second_a_waited  # the same base model: the second caller waits for the one evaluation...
    assert calls.count("a") == 1 and calls.count("b") == 1  # ...and it is not computed again
    first, second = got["a"]
    assert first.model is second.model and first.metrics == second.metrics
