"""core.monitor.live: the activation probe, monitors attached to a workbench job, and the
freezing-change bookkeeping of the layer-freezing page."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from core.monitor.embed import layer_activations
from core.engine import EpochInfo, StepInfo, TrainConfig, fit, predict
from core.monitor.live import PROBE_BUDGET, ActivationProbe, Monitors, freeze_changes, monitors_for
from core.models import build_model
from core.monitor.stats import LayerStats, SettleTracker
from core.session.store import Store
from core.session.workbench import Workbench
from core.session.runs import JobOptions


def _model(data):
    c, h, _ = data.image_shape
    return build_model("seed-cnn", in_channels=c, image_size=h, num_classes=data.num_classes, seed=0)


def _epoch(i, t, frozen=()):
    return {"epoch": i, "epoch_time": t, "frozen": tuple(frozen), "val_acc": 0.5, "train_acc": 0.5, "lr": 0.1}


def test_freeze_changes_find_the_epoch_of_each_change():
    epochs = [_epoch(0, 9.0), _epoch(1, 2.0), _epoch(2, 2.2), _epoch(3, 1.7, ["conv1"]), _epoch(4, 1.0, ["conv1"]),
              _epoch(5, 1.2, ["conv1"])]
    assert freeze_changes(epochs) == [(3, (), ("conv1",))]
    assert freeze_changes(epochs[:3]) == []
    # the saving itself: tests/test_freeze_saving.py


def test_probe_matches_direct_computation_and_follows_layer_switch(tiny_data):
    model = _model(tiny_data)
    x, y = tiny_data.split("train")
    sample = tiny_data.split("pool")[0]
    probe = ActivationProbe(model, sample, layer="conv2", every=3, budget=None)  # fixed schedule: probes at epoch end
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
    model.train()
    probe.probe(0)
    assert model.training  # the probe puts the model back in train mode (fit itself may end in eval mode)


@pytest.mark.parametrize("budget", [None, PROBE_BUDGET, 10.0])
def test_probe_does_not_change_training(tiny_data, budget):
    """Probing between steps (eval mode, no grad) leaves the run bit-identical, whatever the
    schedule (a budget of 10 lets it probe at every step)."""
    x, y = tiny_data.split("train")
    cfg = TrainConfig(epochs=2, batch_size=8, lr=0.05, seed=3)
    a, b = _model(tiny_data), _model(tiny_data)
    fit(a, (x, y), config=cfg)
    probe = ActivationProbe(b, tiny_data.split("pool")[0], every=1, budget=budget)
    fit(b, (x, y), config=cfg, callbacks=[probe])
    assert probe.probes >= 1
    for pa, pb in zip(a.state_dict().values(), b.state_dict().values()):
        assert torch.equal(pa, pb)


def _steps(probe, n, step_time, start=0):
    for s in range(start, start + n):
        probe.on_step(StepInfo(epoch=0, step=s, loss=1.0, accuracy=0.5, lr=0.1, step_time=step_time))


def test_probe_interval_adapts_to_keep_its_share_within_the_budget(tiny_data):
    """Each probe costs 0.05 s on a fake clock and a step 0.01 s: at a 5% budget the probe
    may take 1 s of 20 s of training, so it runs about every 100 steps, not every 25."""
    probe = ActivationProbe(_model(tiny_data), tiny_data.split("pool")[0], every=25, budget=0.05,
                            clock=itertools.count(0.0, 0.05).__next__)
    assert probe.pace() is None
    _steps(probe, 2000, 0.01)
    pace = probe.pace()
    assert pace["probe_s"] == pytest.approx(0.05)
    assert pace["interval"] == 100 and pace["interval_s"] == pytest.approx(1.0)
    assert pace["share"] <= 0.05 + 1e-9
    assert 18 <= probe.probes <= 20  # adaptive, not starved: the budget allows 20
    assert probe.latest().step >= 1900
    # slower steps (a bigger model, another machine): the probe runs more often, never below `every`
    fast = ActivationProbe(_model(tiny_data), tiny_data.split("pool")[0], every=25, budget=0.05,
                           clock=itertools.count(0.0, 0.05).__next__)
    _steps(fast, 1000, 1.0)
    assert fast.pace()["interval"] == 25 and fast.probes == 40


def test_probe_epoch_end_and_layer_switch_under_a_budget(tiny_data):
    probe = ActivationProbe(_model(tiny_data), tiny_data.split("pool")[0], every=25, budget=0.05,
                            clock=itertools.count(0.0, 0.05).__next__)
    _steps(probe, 10, 0.01)
    assert probe.probes == 1  # the first step only: 0.1 s of training cannot pay for another
    epoch = EpochInfo(epoch=0, train_loss=1.0, train_acc=0.5, val_loss=None, val_acc=None, epoch_time=0.1,
                      lr=0.1, steps=10)
    probe.on_epoch(epoch)
    assert probe.probes == 1  # the epoch end is budgeted too
    probe.set_layer("conv2")
    _steps(probe, 1, 0.01, start=10)
    assert probe.probes == 2 and probe.latest().layer == "conv2"  # a switch asked for by the page: at once
    _steps(probe, 400, 0.01, start=11)
    probe.on_epoch(epoch)
    assert probe.pace()["share"] <= 0.05 + 1e-9
    fixed = ActivationProbe(_model(tiny_data), tiny_data.split("pool")[0], every=5, budget=None)
    _steps(fixed, 20, 0.01)
    fixed.on_epoch(epoch)
    assert fixed.probes == 5 and fixed.pace()["interval"] == 5  # steps 0, 5, 10, 15 and the epoch end


def test_probe_rejects_bad_settings(tiny_data):
    with pytest.raises(ValueError, match="every"):
        ActivationProbe(_model(tiny_data), tiny_data.split("pool")[0], every=0)
    with pytest.raises(ValueError, match="budget"):
        ActivationProbe(_model(tiny_data), tiny_data.split("pool")[0], budget=0)


def test_workbench_job_carries_monitors_bound_to_the_training_copy(workspace, tiny_data):
    wb = Workbench.create(Store(workspace), tiny_data, "tiny", _model(tiny_data))
    sample = tiny_data.split("pool")[0]
    shown = wb.model
    job = wb.train(TrainConfig(epochs=2, batch_size=8), JobOptions("monitored",
                                                                attach=lambda m: monitors_for(m, sample, every=2)))
    assert job.wait(60) and job.status == "done", job.error
    mons = Monitors.of(job.attached)
    assert isinstance(mons.stats, LayerStats) and isinstance(mons.settle, SettleTracker) and mons.probe is not None
    assert mons.stats.model is not shown  # bound to the training copy, not the shown model
    assert wb.model is mons.stats.model  # which became the new version
    assert mons.stats.snapshot().step == job.view()["done_steps"] - 1
    rows = mons.settle.table()
    assert [r["group"] for r in rows] == list(wb.model.layer_groups)
    assert all(r["rel_change"] is not None and r["rel_change"] > 0 for r in rows)  # epoch 1 compared to the start
    assert len(mons.stats._handles) == 0  # hooks removed from the finished copy
    assert wb.current_version == 1


def test_probe_caption_shows_the_current_interval(tiny_data):
    from app.monitor_widgets import probe_caption

    probe = ActivationProbe(_model(tiny_data), tiny_data.split("pool")[0], every=25, budget=0.05,
                            clock=itertools.count(0.0, 0.05).__next__)
    assert probe_caption(probe) is None and probe_caption(None) is None  # nothing to say before the first probe
    _steps(probe, 2000, 0.01)
    text = probe_caption(probe)
    assert "every 100 steps" in text and "about every 1.0 s" in text and "within 5% of the training time" in text
    assert f"each probe of the {len(tiny_data.split('pool')[0])} points shown" in text
