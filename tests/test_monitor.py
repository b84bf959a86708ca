"""The training monitor: per-filter statistics, settling of layer groups and activation maps
match direct computations."""
from __future__ import annotations

import copy
import threading
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from core.engine import Callback, EpochInfo, TrainConfig, TrainControl, apply_freeze, fit
from core.models import build_model
from core.monitor.stats import LayerStats, SettleTracker, activation_maps, watched_layers


def test_statistics_match_direct_computation(tiny_data):
    model = build_model("vgg6", 1, 16, tiny_data.num_classes, seed=0)
    x, y = tiny_data.split("train")
    reference = copy.deepcopy(model)
    # lr = 0 and no weight decay: the step leaves the weights as they were
    cfg = TrainConfig(epochs=1, batch_size=len(x), lr=0.0, weight_decay=0.0, momentum=0.0, seed=0)
    with LayerStats(model) as stats:
        fit(model, (x, y), None, config=cfg, callbacks=[stats])
        snap = stats.snapshot()
        steps, names, hist = stats.grad_history()
    assert snap is not None and steps == [0] and hist.shape == (len(names), 1)

    # the same batch order as the engine (one batch, permuted by the seed)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    xb, yb = x[perm], y[perm]
    reference.train()
    acts = {}
    hooks = [m.register_forward_hook(lambda m, i, o, n=n: acts.__setitem__(n, o)) for n, m in watched_layers(reference).items()]
    loss = F.cross_entropy(reference(xb), yb)
    loss.backward()
    for h in hooks:
        h.remove()
    for name, module in watched_layers(reference).items():
        out = acts[name].detach()
        dims = (0, 2, 3) if out.dim() == 4 else (0,)
        torch.testing.assert_close(torch.from_numpy(snap.activation[name]), out.abs().mean(dim=dims), rtol=1e-4, atol=1e-6)
        g = module.weight.grad.reshape(module.weight.shape[0], -1)
        direct = (g.pow(2).sum(1) + module.bias.grad.pow(2)).sqrt()
        torch.testing.assert_close(torch.from_numpy(snap.grad_norm[name]), direct, rtol=1e-4, atol=1e-6)
        assert abs(snap.layer_grad_norm[name] - float(direct.norm())) < 1e-4 * max(1.0, float(direct.norm()))


def test_frozen_layers_report_zero_gradient_and_hooks_are_removed(tiny_data):
    model = build_model("seed-cnn", 1, 16, tiny_data.num_classes)
    apply_freeze(model, ["conv1"])
    with LayerStats(model) as stats:
        fit(model, tiny_data.split("train"), None, config=TrainConfig(epochs=1, batch_size=16), callbacks=[stats])
        snap = stats.snapshot()
        _, names, hist = stats.grad_history()
    assert float(snap.grad_norm["conv1"].sum()) == 0.0
    assert float(snap.grad_norm["conv2"].sum()) > 0.0
    assert hist.shape[1] == 3 and (hist[names.index("conv1")] == 0).all()
    assert all(not m._forward_hooks for m in watched_layers(model).values())


def _flat(model, group):
    return torch.cat([p.detach().reshape(-1).double() for p in model.group_parameters(group)])


def test_settle_tracker_rel_change_matches_direct_computation(tiny_data):
    model = build_model("vgg6", 1, 16, tiny_data.num_classes, seed=0)
    tracker = SettleTracker(model)
    tracker.record(0)
    assert all(row["rel_change"] is None and not row["settled"] for row in tracker.table())
    before = {g: _flat(model, g) for g in model.layer_groups}
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # a known change to conv2 (conv + BatchNorm) and fc1 only
        for p in model.group_parameters("conv2") + model.group_parameters("fc1"):
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    tracker.record(1)
    rows = {row["group"]: row for row in tracker.table()}
    assert list(rows) == list(model.layer_groups)
    for group, w0 in before.items():
        direct = float((_flat(model, group) - w0).norm() / w0.norm())
        assert rows[group]["rel_change"] == pytest.approx(direct, rel=1e-9, abs=1e-12)
        assert rows[group]["rel_change_history"] == [rows[group]["rel_change"]]
    assert rows["conv2"]["rel_change"] > 0 and rows["fc1"]["rel_change"] > 0
    assert rows["conv1"]["rel_change"] == 0.0 and rows["conv1"]["trail_length"] == 0.0


def test_trail_length_of_unchanged_layer_is_zero_and_of_moved_layer_matches(tiny_data):
    model = build_model("seed-cnn", 1, 16, tiny_data.num_classes, seed=0)
    tracker = SettleTracker(model, trail=3)
    assert tracker.filter_positions("conv1").shape == (0, 32, 2)
    w = model.conv1.weight.detach().reshape(32, -1).double().numpy().copy()
    for epoch in range(3):  # two epochs of (no) change: pace_epochs=2 of them are needed to settle
        tracker.record(epoch)
    rows = {row["group"]: row for row in tracker.table()}
    assert all(row["trail_length"] == 0.0 and row["rel_change"] == 0.0 and row["settled"] for row in rows.values())

    # move conv1's filters and check the trail against a direct PCA on the first snapshot
    delta = 0.1 * torch.randn(model.conv1.weight.shape, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        model.conv1.weight.add_(delta)
    tracker.record(3)
    tracker.record(4)  # a fifth snapshot: trail=3 keeps the last three positions
    mean = w.mean(0)
    _, _, vt = np.linalg.svd(w - mean, full_matrices=False)
    first = (w - mean) @ vt[:2].T
    moved = (model.conv1.weight.detach().reshape(32, -1).double().numpy() - mean) @ vt[:2].T
    radius = np.sqrt((first**2).sum(1).mean())
    expected = np.linalg.norm(moved - first, axis=1).mean() / radius
    row = tracker.table()[0]
    assert row["group"] == "conv1" and row["trail_length"] == pytest.approx(expected, rel=1e-9)
    assert row["rel_change"] == 0.0 and not row["settled"]  # it moved in one of the last two epochs
    assert row["pace_history"] == [0.0, 0.0, float("inf"), 0.0]  # alone in moving: infinitely faster
    positions = tracker.filter_positions("conv1")
    assert positions.shape == (3, 32, 2)
    np.testing.assert_allclose(np.abs(positions[0]), np.abs(first), atol=1e-9)  # axes' signs are free
    np.testing.assert_allclose(np.abs(positions[-1]), np.abs(moved), atol=1e-9)
    tracker.record(5)  # the move has left the window: settled again
    assert tracker.table()[0]["trail_length"] == 0.0 and tracker.table()[0]["settled"]
    with pytest.raises(KeyError):
        tracker.filter_positions("nope")


def test_frozen_groups_report_zero_change_and_settle_when_frozen_mid_run(tiny_data):
    model = build_model("vgg6", 1, 16, tiny_data.num_classes, seed=0)
    apply_freeze(model, ["conv1"])
    control = TrainControl()
    control.set_frozen({"conv1"})
    tracker = SettleTracker(model)

    class FreezeAfterFirst(Callback):
        def on_epoch(self, info: EpochInfo) -> None:
            if info.epoch == 0:
                control.set_frozen({"conv1", "conv2"})

    cfg = TrainConfig(epochs=3, batch_size=16, lr=0.05, seed=0)
    fit(model, tiny_data.split("train"), None, config=cfg, control=control, callbacks=[tracker, FreezeAfterFirst()])
    assert tracker.epochs == [0, 1, 2]
    rows = {row["group"]: row for row in tracker.table()}
    assert rows["conv1"]["rel_change_history"] == [0.0, 0.0]
    assert rows["conv1"]["frozen"] and rows["conv1"]["settled"] and rows["conv1"]["trail_length"] == 0.0
    assert rows["conv2"]["rel_change_history"] == [0.0, 0.0]  # epoch 0 was the baseline snapshot
    assert rows["conv2"]["frozen"] and rows["conv2"]["settled"]
    assert rows["conv3"]["rel_change"] > 0 and not rows["conv3"]["frozen"]


def test_settle_tracker_sees_a_group_frozen_between_snapshots(tiny_data):
    model = build_model("seed-cnn", 1, 16, tiny_data.num_classes, seed=0)
    control = TrainControl()
    tracker = SettleTracker(model)
    tracker.record(-1)  # before training, as a page would when the run starts

    class FreezeAfterFirst(Callback):
        def on_epoch(self, info: EpochInfo) -> None:
            if info.epoch == 0:
                control.set_frozen({"conv2"})

    cfg = TrainConfig(epochs=2, batch_size=16, lr=0.05, seed=0)
    fit(model, tiny_data.split("train"), None, config=cfg, control=control, callbacks=[tracker, FreezeAfterFirst()])
    history = {row["group"]: row["rel_change_history"] for row in tracker.table()}
    assert history["conv2"][0] > 0 and history["conv2"][1] == 0.0
    assert all(h[1] > 0 for g, h in history.items() if g != "conv2")


@pytest.mark.parametrize("layer", ["conv3", "fc1"])
def test_activation_maps_match_direct_forward_and_restore_modes(tiny_data, layer):
    model = build_model("vgg6", 1, 16, tiny_data.num_classes, seed=0)
    x, y = tiny_data.split("train")
    fit(model, (x, y), None, config=TrainConfig(epochs=1, batch_size=16, seed=0))  # non-trivial BN statistics
    model.train()
    apply_freeze(model, ["conv1"])  # a training model with one BatchNorm in eval mode
    modes = {name: m.training for name, m in model.named_modules()}
    maps = activation_maps(model, layer, x[3])
    assert {name: m.training for name, m in model.named_modules()} == modes
    assert model.training and not model.bn1.training and model.bn3.training

    reference = copy.deepcopy(model).eval()
    out = {}
    module = dict(reference.named_modules())[layer]
    handle = module.register_forward_hook(lambda m, i, o: out.__setitem__("o", o))
    with torch.no_grad():
        reference(x[3:4])
    handle.remove()
    direct = out["o"][0]
    if direct.dim() == 1:
        direct = direct.reshape(-1, 1, 1)
    assert maps.shape == tuple(direct.shape)
    np.testing.assert_allclose(maps, direct.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(activation_maps(model, layer, x[3:4]), maps)  # (1, C, H, W) too
    with pytest.raises(KeyError):
        activation_maps(model, "bn1", x[3])


def test_settle_tracker_can_be_read_while_training(tiny_data):
    model = build_model("seed-cnn", 1, 16, tiny_data.num_classes, seed=0)
    tracker = SettleTracker(model, trail=3)
    tracker.record(-1)
    errors, reads = [], []
    done = threading.Event()

    def reader() -> None:  # a page polling the tracker from its own thread
        try:
            while not done.is_set():
                rows = tracker.table()
                k = len(rows[0]["rel_change_history"])
                positions = tracker.filter_positions("conv1")
                assert 1 <= len(positions) <= 3 and positions.shape[1:] == (32, 2)
                reads.append(k)
                time.sleep(0.002)
        except BaseException as exc:  # reported in the main thread
            errors.append(exc)

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        cfg = TrainConfig(epochs=4, batch_size=8, seed=0)
        fit(model, tiny_data.split("train"), None, config=cfg, callbacks=[tracker])
    finally:
        done.set()
        thread.join()
    assert not errors and reads and reads == sorted(reads)
    assert [len(r["rel_change_history"]) for r in tracker.table()] == [4] * len(model.layer_groups)
    assert tracker.filter_positions("conv1").shape == (3, 32, 2)


def test_activation_stride_and_bounded_gradient_history(tiny_data):
    """act_every=3 reduces activations on steps 0, 3, 6 only; gradients are kept every step in a
    ring of ``history`` steps, oldest first."""
    model = build_model("seed-cnn", 1, 16, tiny_data.num_classes, seed=0)
    seen: list[tuple[int, int | None]] = []

    class Watch(Callback):
        def on_step(self, info) -> None:
            snap = stats.snapshot()
            seen.append((snap.step, snap.activation_step))

    cfg = TrainConfig(epochs=2, batch_size=8, lr=0.01, seed=0)  # 48 train images: 12 steps
    with LayerStats(model, history=5, act_every=3) as stats:
        fit(model, tiny_data.split("train"), None, config=cfg, callbacks=[stats, Watch()])
        steps, names, hist = stats.grad_history()
    n = len(seen)
    assert n >= 7
    assert [a for _, a in seen] == [s - s % 3 for s, _ in seen]
    assert steps == list(range(n - 5, n)) and hist.shape == (len(names), 5)
    assert np.isfinite(hist).all() and (hist > 0).any()
    with pytest.raises(ValueError):
        LayerStats(model, act_every=0)


@pytest.mark.slow
def test_freezing_cue_separates_early_convs_from_classifier_on_a_real_run():
    """Issue 13: on a real run (seed-cnn on the built-in digits, SGD lr 0.02, 6 epochs) the
    cue must single out the early convolution that stopped changing relative to the others,
    and leave every classifier layer "still learning" (an absolute threshold called every
    group settled)."""
    from core.data import load_dataset

    data = load_dataset("digits", seed=0)
    c, h, _ = data.image_shape
    model = build_model("seed-cnn", c, h, data.num_classes, seed=0)
    tracker = SettleTracker(model)
    tracker.record(-1)
    fit(model, data.split("train"), None, config=TrainConfig(epochs=6, batch_size=64, lr=0.02, seed=0),
        callbacks=[tracker])
    rows = {r["group"]: r for r in tracker.table()}
    fc = [g for g in rows if g.startswith("fc")]
    assert rows["conv1"]["settled"] and not rows["conv1"]["frozen"]
    assert fc and not any(rows[g]["settled"] for g in fc)
    assert max(rows["conv1"]["pace_history"][-2:]) <= tracker.pace_threshold
    last = rows["conv1"]["pace_history"][-1]
    assert all(rows[g]["pace"] > last for g in fc)
    # the absolute change would not tell them apart: every group changes by under 5% per epoch
    assert all(r["rel_change"] < 0.05 for r in rows.values())


def test_direction_change_ignores_weight_decay_shrinkage():
    from core.monitor.stats import direction_change, relative_pace

    v = torch.randn(500, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    assert direction_change(v, 0.98 * v) == pytest.approx(0.0, abs=1e-12)  # decay alone: no turn
    w = v + 0.01 * torch.randn(500, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    turned = direction_change(v, w)
    assert turned > 0 and direction_change(v, 0.98 * w) == pytest.approx(turned, rel=1e-9)
    assert direction_change(torch.zeros(3), torch.zeros(3)) == 0.0
    assert relative_pace({"a": 1.0, "b": 2.0, "c": 4.0}) == {"a": 0.5, "b": 1.0, "c": 2.0}
    assert relative_pace({"a": 0.0, "b": 1.0, "c": 3.0}, {"a"}) == {"a": 0.0, "b": 0.5, "c": 1.5}
