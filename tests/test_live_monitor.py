"""core.live_monitor: the activation probe, monitors attached to a workbench job, and the
freezing-change bookkeeping of the layer-freezing page."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from core.embed import layer_activations
from core.engine import TrainConfig, fit, predict
from core.live_monitor import ActivationProbe, Monitors, freeze_changes, freeze_saving, monitors_for
from core.models import build_model
from core.monitor import LayerStats, SettleTracker
from core.store import Store
from core.workbench import Workbench


def _model(data):
    c, h, _ = data.image_shape
    return build_model("seed-cnn", in_channels=c, image_size=h, num_classes=data.num_classes, seed=0)


def _epoch(i, t, frozen=()):
    return {"epoch": i, "epoch_time": t, "frozen": tuple(frozen), "val_acc": 0.5, "train_acc": 0.5, "lr": 0.1}


def test_freeze_changes_and_saving_skip_warmup_and_mixed_epochs():
    epochs = [_epoch(0, 9.0), _epoch(1, 2.0), _epoch(2, 2.2), _epoch(3, 1.7, ["conv1"]), _epoch(4, 1.0, ["conv1"]),
              _epoch(5, 1.2, ["conv1"])]
    assert freeze_changes(epochs) == [(3, (), ("conv1",))]
    s = freeze_saving(epochs)
    # before: epochs 1-2 (epoch 0 is warm-up), after: epochs 4-5 (epoch 3 changed mid-way)
    assert s["before_s"] == pytest.approx(2.1) and s["after_s"] == pytest.approx(1.1)
    assert s["ratio"] == pytest.approx(1.1 / 2.1) and s["saving"] == pytest.approx(1 - 1.1 / 2.1)
    assert (s["epochs_before"], s["epochs_after"]) == (2, 2)
    assert freeze_saving(epochs[:4]) is None  # no full epoch after the change yet
    assert freeze_saving(epochs[:3]) is None and freeze_changes(epochs[:3]) == []


def test_probe_matches_direct_computation_and_follows_layer_switch(tiny_data):
    model = _model(tiny_data)
    x, y = tiny_data.split("train")
    sample = tiny_data.split("pool")[0]
    probe = ActivationProbe(model, sample, layer="conv2", every=3)
    fit(model, (x, y), config=TrainConfig(epochs=1, batch_size=8, lr=0.05), callbacks=[probe])
    snap = probe.latest()
    assert snap is not None and snap.layer == "conv2"
    # the last snapshot is taken at epoch end, on the final weights: equal to computing it now
    np.testing.assert_allclose(snap.activations, layer_activations(model, "conv2", sample), rtol=1e-5, atol=1e-6)
    assert np.array_equal(snap.preds, predict(model, sample)[0].argmax(1).numpy())
    probe.set_layer("fc1")
    fit(model, (x, y), config=TrainConfig(epochs=1, batch_size=8, lr=0.05), callbacks=[probe])
    assert probe.latest().layer == "fc1" and probe.latest().activations.shape[1] == model.fc1.out_features
    with pytest.raises(KeyError, match="Unknown layer"):
        probe.set_layer("nope")
    assert model.training  # the probe put the model back in train mode


def test_probe_does_not_change_training(tiny_data):
    """Probing between steps (eval mode, no grad) leaves the run bit-identical."""
    x, y = tiny_data.split("train")
    cfg = TrainConfig(epochs=2, batch_size=8, lr=0.05, seed=3)
    a, b = _model(tiny_data), _model(tiny_data)
    fit(a, (x, y), config=cfg)
    fit(b, (x, y), config=cfg, callbacks=[ActivationProbe(b, tiny_data.split("pool")[0], every=1)])
    for pa, pb in zip(a.state_dict().values(), b.state_dict().values()):
        assert torch.equal(pa, pb)


def test_workbench_job_carries_monitors_bound_to_the_training_copy(workspace, tiny_data):
    wb = Workbench.create(Store(workspace), tiny_data, "tiny", _model(tiny_data))
    sample = tiny_data.split("pool")[0]
    shown = wb.model
    job = wb.start_training(TrainConfig(epochs=2, batch_size=8), description="monitored",
                            attach=lambda m: monitors_for(m, sample, every=2))
    assert job.wait(60) and job.status == "done", job.error
    mons = Monitors.of(job.attached)
    assert isinstance(mons.stats, LayerStats) and isinstance(mons.settle, SettleTracker) and mons.probe is not None
    assert mons.stats.model is job.model and job.model is not shown  # bound to the copy, not the shown model
    assert wb.model is job.model  # which became the new version
    assert mons.stats.snapshot().step == job.view()["done_steps"] - 1
    rows = mons.settle.table()
    assert [r["group"] for r in rows] == list(wb.model.layer_groups)
    assert all(r["rel_change"] is not None and r["rel_change"] > 0 for r in rows)  # epoch 1 compared to the start
    assert len(mons.stats._handles) == 0  # hooks removed from the finished copy
    assert wb.current_version == 1
