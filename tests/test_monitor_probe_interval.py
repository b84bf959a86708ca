"""The Monitor's "Update every (s)": the activation probe runs on a time basis (at most once
per interval of its clock), the budget still caps it, and pace() says which of the two sets
the interval; with a fake clock."""
from __future__ import annotations

import re

import pytest
import torch

from app.monitor_widgets import probe_caption
from core.engine import StepInfo
from core.monitor.live import ActivationProbe
from core.models import build_model


class Clock:
    """A clock the test moves: ``advance`` per step, and a probe takes ``probe_cost`` s."""

    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def _probe(tiny_data, clock, *, probe_cost=0.05, **kw):
    c, h, _ = tiny_data.image_shape
    model = build_model("seed-cnn", in_channels=c, image_size=h, num_classes=tiny_data.num_classes, seed=0)
    probe = ActivationProbe(model, tiny_data.split("pool")[0], clock=clock, **kw)
    forward = probe._forward

    def costly(layer, batch_size=256):  # a probe takes probe_cost seconds of the clock
        clock.t += probe_cost
        return forward(layer, batch_size)

    probe._forward = costly
    return probe


def _train(probe, clock, n, step_s=0.01, start=0, at=None):
    """n training steps of step_s seconds each; the steps that probed (and in ``at`` the clock
    when each of those probes started)."""
    probed = []
    for s in range(start, start + n):
        clock.t += step_s
        before = probe.probes
        t = clock.t
        probe.on_step(StepInfo(epoch=0, step=s, loss=1.0, accuracy=0.5, lr=0.1, step_time=step_s))
        if probe.probes > before:
            probed.append(s)
            if at is not None:
                at.append(t)
    return probed


def test_probe_follows_the_update_setting_on_a_time_basis(tiny_data):
    clock = Clock()
    # 0.05 s per probe, 0.01 s per step, 5% budget: the budget alone allows a probe every 100
    # steps (1 s); asked for every 3 s, it probes every ~3 s (every 300 steps or so), not every 1 s
    probe = _probe(tiny_data, clock, every=25, budget=0.05, interval_s=3.0)
    at: list[float] = []
    probed = _train(probe, clock, 2000, at=at)
    gaps = [b - a for a, b in zip(at, at[1:])]
    assert probed[0] == 0 and len(gaps) >= 5
    assert all(3.0 - 1e-9 <= g <= 3.0 + 0.011 for g in gaps)  # at the first step 3 s after the last probe
    pace = probe.pace()
    assert pace["limited_by"] == "setting" and pace["requested_s"] == 3.0
    assert pace["interval_s"] == pytest.approx(3.0)
    assert pace["observed_s"] == pytest.approx(3.0, abs=0.06)
    # faster than the budget allows: the budget wins, and pace says so
    probe.set_interval_s(0.5)
    probed = _train(probe, clock, 4000, start=2000)
    # the budget is over the whole run: the time the slower probes left unused is spent first
    # (every 0.5 s as asked), then it probes every 100 steps
    assert [b - a for a, b in zip(probed, probed[1:])][-10:] == [100] * 10
    pace = probe.pace()
    assert pace["limited_by"] == "budget" and pace["requested_s"] == 0.5
    assert pace["interval"] == 100 and pace["interval_s"] == pytest.approx(1.0, rel=0.06)
    assert pace["share"] <= 0.05 + 1e-9


def test_fixed_schedule_waits_for_the_interval_too(tiny_data):
    clock = Clock()
    probe = _probe(tiny_data, clock, every=5, budget=None, interval_s=0.2, probe_cost=0.0)
    probed = _train(probe, clock, 100)
    assert probed == [0, 20, 40, 60, 80]  # every 5 steps, and only once 0.2 s have passed (20 steps)
    with pytest.raises(ValueError, match="interval_s"):
        probe.set_interval_s(0)
    with pytest.raises(ValueError, match="interval_s"):
        ActivationProbe(probe.model, probe.images, interval_s=float("nan"))


def test_count_probes_only_the_points_shown(tiny_data):
    clock = Clock()
    probe = _probe(tiny_data, clock, every=5, budget=None, count=5)
    _train(probe, clock, 1)
    assert probe.latest().activations.shape[0] == 5 and probe.pace()["images"] == 5
    probe.set_count(3)  # fewer: the snapshot still holds them, no extra probe
    _train(probe, clock, 1, start=1)
    assert probe.latest().step == 0
    probe.set_count(10)  # more than the snapshot holds: probed again at the next step
    _train(probe, clock, 1, start=2)
    assert probe.latest().activations.shape[0] == 10 and probe.latest().step == 2
    probe.set_count(10**6)
    assert probe.count == len(tiny_data.split("pool")[0])


def test_caption_says_when_the_embedding_updates_and_why(tiny_data):
    clock = Clock()
    probe = _probe(tiny_data, clock, every=25, budget=0.05, interval_s=0.5)
    _train(probe, clock, 2000)
    text = probe_caption(probe)
    n = len(tiny_data.split("pool")[0])
    assert re.match(r"The embedding updates about every 1\.[01] s, not every 0\.5 s as set: ", text), text
    assert f"each probe of the {n} points shown takes 0.05 s" in text and "every 100 steps" in text
    assert "within 5% of the training time" in text
    probe.set_interval_s(3.0)
    _train(probe, clock, 1000, start=2000)
    text = probe_caption(probe)
    assert text.startswith("The embedding updates about every 3 s, as set (each probe of the")
    assert re.search(r"every ~(2[89]\d|300) steps\)", text), text  # 3 s of 0.01 s steps and the probes' own time
