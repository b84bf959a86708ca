"""Store and workbench: versions survive a restart, restores are exact, jobs make versions."""
from __future__ import annotations

import gc
from pathlib import Path
import time

import pytest
import torch
import torch.nn.functional as F

from core.engine import Callback, TrainConfig
from core.models import build_model
from core.session.store import Store, valid_workbench_id
from core.session.workbench import Workbench
from core.session.runs import JobOptions, KindPlan


def _make(store, data):
    base = build_model("seed-cnn", 1, 16, data.num_classes, seed=0)
    return Workbench.create(store, data, "tiny", base)


def _loader(data):
    return lambda source, seed=0: data


def test_version_saved_and_restored_is_identical(workspace, tiny_data):
    store = Store(workspace)
    wb = _make(store, tiny_data)
    job = wb.train(TrainConfig(epochs=1, batch_size=16), JobOptions("train"))
    assert job.wait(60) and job.status == "done", job.error
    assert wb.current_version == 1
    trained = {k: v.clone() for k, v in wb.model.state_dict().items()}
    wb.reset()
    assert wb.current_version == 0
    assert not all(torch.equal(trained[k], v) for k, v in wb.model.state_dict().items())
    wb.restore(1)
    assert all(torch.equal(trained[k], v) for k, v in wb.model.state_dict().items())
    assert [v.number for v in wb.versions()] == [0, 1]
    assert 0.0 <= wb.versions()[1].metrics["test_acc"] <= 1.0


def test_workbench_reopened_by_id_has_same_versions_and_annotations(workspace, tiny_data):
    store = Store(workspace)
    wb = _make(store, tiny_data)
    job = wb.train(TrainConfig(epochs=1, batch_size=16), JobOptions("first"))
    job.wait(60)
    wb.add_annotations("latent", [(3, {"xy": [0.5, 1.0]}), (7, {"xy": [0.0, -1.0]})])
    wb_id, versions, state = wb.id, wb.versions(), {k: v.clone() for k, v in wb.model.state_dict().items()}
    del wb, job
    gc.collect()
    again = Workbench.open(Store(workspace), wb_id, loader=_loader(tiny_data))
    assert [(v.number, v.description, v.metrics) for v in again.versions()] == [(v.number, v.description, v.metrics) for v in versions]
    assert again.current_version == 1
    assert all(torch.equal(state[k], v) for k, v in again.model.state_dict().items())
    assert [(a.example_id, a.payload) for a in again.annotations("latent")] == [(3, {"xy": [0.5, 1.0]}), (7, {"xy": [0.0, -1.0]})]


def test_unknown_or_malformed_id(workspace, tiny_data):
    store = Store(workspace)
    assert not valid_workbench_id("../etc") and not valid_workbench_id(None)
    with pytest.raises(KeyError):
        Workbench.open(store, "0123456789ab", loader=_loader(tiny_data))
    with pytest.raises(KeyError):
        Workbench.open(store, "../../x", loader=_loader(tiny_data))


def test_annotations_replace_and_clear(workspace, tiny_data):
    wb = _make(Store(workspace), tiny_data)
    wb.add_annotations("grid", [(1, {"w": 1})])
    wb.replace_annotations("grid", [(2, {"w": 2}), (3, {"w": 3})])
    wb.add_annotations("other", [(9, {})])
    assert [a.example_id for a in wb.annotations("grid")] == [2, 3]
    wb.clear_annotations("grid")
    assert wb.annotations("grid") == [] and len(wb.annotations()) == 1


def test_stopped_job_makes_no_version_until_the_user_keeps_it(workspace, tiny_data):
    wb = _make(Store(workspace), tiny_data)
    base_state = {k: v.clone() for k, v in wb.model.state_dict().items()}
    seen = []

    class Slow(Callback):
        def on_step(self, info):
            seen.append(info.step)
            # the current model is untouched while a copy trains
            assert all(torch.equal(base_state[k], v) for k, v in wb.model.state_dict().items())
            time.sleep(0.05)

    job = wb.train(TrainConfig(epochs=50, batch_size=8), JobOptions("long", listeners=[Slow()]))
    while not seen:
        time.sleep(0.01)
    job.stop()
    assert job.wait(30)
    assert job.status == "stopped" and job.result is None
    assert wb.current_version == 0 and len(wb.versions()) == 1
    assert job.view()["has_partial"] and "stopped after" in job.partial_note
    assert len(seen) < 50 * 6
    kept = wb.keep_partial(job)
    assert kept.number == 1 and wb.current_version == 1 and "kept by the user" in kept.description
    assert kept.feedback["ended_as"] == "stopped" and not job.view()["has_partial"]
    with pytest.raises(ValueError):
        wb.keep_partial(job)
    assert [j.status for j in wb.store.jobs(wb.id)] == ["stopped"]


def test_stopped_job_with_keep_if_stopped_commits_at_once(workspace, tiny_data):
    wb = _make(Store(workspace), tiny_data)

    class StopAt(Callback):
        def on_step(self, info):
            if info.step == 2:
                job.stop()

    job = wb.train(TrainConfig(epochs=5, batch_size=8), JobOptions("partial", listeners=[StopAt()],
                                                                  keep_if_stopped=True))
    assert job.wait(30) and job.status == "stopped"
    assert wb.current_version == 1 and "stopped after" in wb.versions()[1].description


def test_diverged_run_makes_no_version_and_says_so(workspace):
    """lr 1.0 on seed-cnn (the bug: it was saved as the current version and called a success)."""
    from core.data import load_dataset

    data = load_dataset("digits")
    store = Store(workspace)
    wb = Workbench.create(store, data, "digits", build_model("seed-cnn", 1, 28, 10, seed=0))
    before = {k: v.clone() for k, v in wb.model.state_dict().items()}
    job = wb.train(TrainConfig(epochs=2, lr=1.0), JobOptions("lr 1.0"))
    assert job.wait(120)
    assert job.status == "diverged" and "diverged" in job.message
    assert job.result is None and job.partial is None
    assert wb.current_version == 0 and [v.number for v in wb.versions()] == [0]
    assert all(torch.equal(before[k], v) for k, v in wb.model.state_dict().items())
    (record,) = store.jobs(wb.id)
    assert record.status == "diverged" and record.result_version is None and "diverged" in record.message


def test_diverged_after_a_good_epoch_offers_that_epoch(workspace, tiny_data):
    wb = _make(Store(workspace), tiny_data)

    def runaway(model, batch):  # from step 7 on, gradient ascent on the cross-entropy (the guard watches it)
        runaway.calls += 1
        return -500.0 * F.cross_entropy(batch.logits, batch.y) if runaway.calls > 6 else batch.logits.sum() * 0

    runaway.calls = 0
    job = wb.train(TrainConfig(epochs=3, batch_size=8, lr=0.05), JobOptions("x"), KindPlan(terms={"r": runaway}))
    assert job.wait(60) and job.status == "diverged"
    assert wb.current_version == 0
    assert job.view()["has_partial"] and "after epoch 1" in job.partial_note
    kept = wb.keep_partial(job)
    assert kept.feedback["ended_as"] == "diverged" and wb.current_version == 1


def test_create_leaves_no_orphan_when_it_fails(workspace, tiny_data):
    store = Store(workspace)
    wrong = build_model("seed-cnn", 3, 16, tiny_data.num_classes, seed=0)  # 3 channels for 1-channel data
    with pytest.raises(RuntimeError):
        Workbench.create(store, tiny_data, "tiny", wrong)
    assert store.list_workbenches() == []


def test_jobs_are_recorded_with_progress(workspace, tiny_data):
    store = Store(workspace)
    wb = _make(store, tiny_data)
    job = wb.train(TrainConfig(epochs=2, batch_size=8), JobOptions("recorded"))
    assert job.wait(60) and job.status == "done"
    (record,) = store.jobs(wb.id)
    assert (record.status, record.done_steps, record.total_steps) == ("done", job.total_steps, job.total_steps)
    assert record.base_version == 0 and record.result_version == 1 and record.ended is not None


def test_failed_job_reports_message_and_keeps_model(workspace, tiny_data):
    wb = _make(Store(workspace), tiny_data)

    def boom(model, batch):
        raise ValueError("bad annotation")

    job = wb.train(TrainConfig(epochs=1, batch_size=8), JobOptions("x"), KindPlan(terms={"boom": boom}))
    job.wait(30)
    assert job.status == "failed" and "bad annotation" in job.error
    assert wb.current_version == 0 and len(wb.versions()) == 1


def test_evaluation_is_cached_per_version(workspace, tiny_data):
    wb = _make(Store(workspace), tiny_data)
    a = wb.evaluation("test")
    assert wb.evaluation("test") is a
    with_f = wb.evaluation("test", with_features=True)
    assert with_f.features.shape == (len(tiny_data.ids("test")), wb.model.feature_dim)


def test_evaluation_is_kept_on_disk_for_the_next_server(workspace, tiny_data, monkeypatch):
    """A server start reuses a version's stored test predictions instead of running the model again;
    a changed checkpoint, other data or a torn file makes it evaluate again."""
    import os

    import numpy as np

    import core.session.workbench as workbench_module

    store = Store(workspace)
    wb = _make(store, tiny_data)
    first = wb.evaluation("test")
    calls = []
    real = workbench_module.evaluate
    monkeypatch.setattr(workbench_module, "evaluate", lambda *a, **k: calls.append(1) or real(*a, **k))

    def reopened():
        return Workbench.open(Store(workspace), wb.id, loader=_loader(tiny_data))

    again = reopened().evaluation("test")
    assert calls == []
    assert again.accuracy == first.accuracy and again.loss == first.loss
    for name in ("preds", "probs", "labels", "confusion"):
        assert np.array_equal(getattr(again, name), getattr(first, name))
    np.testing.assert_array_equal(again.per_class_accuracy, first.per_class_accuracy)

    ckpt = wb.version(0).checkpoint  # a checkpoint that changed on disk: evaluate again
    stat = os.stat(ckpt)
    os.utime(ckpt, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    reopened().evaluation("test")
    assert calls == [1]
    reopened().evaluation("test")  # ... and store the new result
    assert calls == [1]

    path = Path(ckpt).with_name(Path(ckpt).stem + ".eval-test.npz")
    assert path.is_file()
    path.write_bytes(path.read_bytes()[:100])  # torn: evaluate again, no error
    assert reopened().evaluation("test").accuracy == first.accuracy
    assert calls == [1, 1]

    other = reopened()  # other data under the same workbench (a changed folder): evaluate again
    other._fingerprint = "something-else"
    other.evaluation("test")
    assert calls == [1, 1, 1]


def test_train_again_with_the_same_seed_is_bit_identical(workspace, tiny_data):
    """Issue 13: every run records its seed and config; replaying a version from its parent
    reproduces its weights bit for bit on the CPU, and another seed does not."""
    store = Store(workspace)
    wb = _make(store, tiny_data)
    cfg = TrainConfig(epochs=2, batch_size=16, lr=0.03, seed=1234, device="cpu")
    job = wb.train(cfg, JobOptions("train", frozen=["conv1"]))
    assert job.wait(60) and job.status == "done", job.error
    first = wb.version(1)
    assert first.feedback["seed"] == 1234 and first.feedback["config"]["lr"] == 0.03
    assert first.feedback["replayable"] and first.feedback["initial_frozen"] == ["conv1"]
    reopened = Workbench.open(Store(workspace), wb.id, loader=_loader(tiny_data))
    replay = reopened.replay_config(1)
    assert replay is not None
    cfg2, parent, frozen = replay
    assert cfg2 == cfg and parent == 0 and frozen == ["conv1"]
    # train something else on top first: the replay must start from the parent, not the current
    job = wb.train(TrainConfig(epochs=1, batch_size=16, seed=5), JobOptions("other"))
    assert job.wait(60) and job.status == "done"
    again = wb.train(cfg2, JobOptions("again", frozen=frozen, start_version=parent))
    assert again.wait(60) and again.status == "done", again.error
    assert wb.current_version == 3 and wb.version(3).parent == 0
    a = torch.load(first.checkpoint, weights_only=True)["model"]
    b = torch.load(wb.version(3).checkpoint, weights_only=True)["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    other = wb.train(TrainConfig(**{**cfg2.__dict__, "seed": 99}),
                     JobOptions("other seed", frozen=frozen, start_version=parent))
    assert other.wait(60) and other.status == "done"
    c = torch.load(wb.version(4).checkpoint, weights_only=True)["model"]
    assert not all(torch.equal(a[k], c[k]) for k in a)
    assert wb.replay_config(0) is None  # the base model was not trained here
