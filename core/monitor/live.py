"""What the training-monitor and layer-freezing pages attach to a training job.

A job trains a copy of the workbench's model in a background thread. The page cannot put
that copy in eval mode to read activations (BatchNorm would then run in eval mode during
training steps), so :class:`ActivationProbe` does it inside the training thread, between
steps; the page only reads its latest snapshot. The probe keeps its own cost in check: it
measures how long a probe takes and how long training steps take, and probes only as often
as keeps its share of the training time under a budget (``PROBE_BUDGET``).
"""
from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from core.engine import Callback, EpochInfo, StepInfo
from core.explain.activations import capture
from core.models.base import SteerableModel
from core.monitor.stats import LayerStats, SettleTracker, watched_layers

PROBE_SAMPLE = 1000  # pool examples the monitor pages follow during training
PROBE_EVERY = 25  # fewest training steps between two probes
# Most of the training time the probe may take (its seconds / the training steps' seconds).
# monitor_overhead.py measures the whole monitor against a bare loop, target <= 1.10; with the
# engine's own bookkeeping, the per-step statistics and the reader thread it measured 1.105
# on a quiet 2-core machine at 3%, so the probe gets 2% (a refresh about every 9 s there).
PROBE_BUDGET = 0.02
# Training steps between two activation reductions of LayerStats (gradients: every step).
# The page redraws every 0.8 s, several steps apart, so every 2nd step loses nothing shown.
ACT_EVERY = 2


@dataclass(frozen=True)
class ProbeSnapshot:
    """A layer's activations and the model's predictions for the probe's sample at a step."""

    step: int
    layer: str
    activations: np.ndarray  # (n, C)
    preds: np.ndarray  # (n,)


class ActivationProbe(Callback):
    """Activations of one layer, and predictions, for a fixed sample of images, computed in
    the training thread with one forward pass per batch of the sample. ``set_layer`` switches
    the layer from another thread; the next step recomputes.

    When to probe: at the first step, after a layer switch (or a larger ``count``), and then
    at least ``every`` steps apart (and at an epoch end) whenever the probe's total time, with
    one more probe, stays within ``budget`` times the total time of the training steps so far.
    So the interval adapts: a probe that takes 3 steps' worth of time runs every 100 steps or
    so within ``PROBE_BUDGET`` (the first one, at step 0, is not waited for: the page needs a snapshot).
    ``budget=None`` is the fixed schedule: every ``every`` steps and at each epoch end.

    ``interval_s`` (also :meth:`set_interval_s`, from the page's "Update every (s)"): besides
    the above, probe only once that many seconds (of ``clock``) have passed since the last
    probe, so a page that refreshes every N s gets a new snapshot about every N s, and the
    probe costs nothing in between. The budget still caps it: :meth:`pace` says which of the
    two sets the interval. ``count`` (also :meth:`set_count`): probe only the first ``count``
    images of the sample (the points the page shows; fewer images, cheaper probes).
    ``clock`` (seconds) is for tests.
    """

    def __init__(self, model: SteerableModel, images: torch.Tensor, *, layer: str | None = None,
                 every: int = PROBE_EVERY, budget: float | None = PROBE_BUDGET, interval_s: float | None = None,
                 count: int | None = None, clock: Callable[[], float] = time.perf_counter) -> None:
        if every < 1:
            raise ValueError(f"every must be >= 1 step, got {every}")
        if budget is not None and not budget > 0:
            raise ValueError(f"budget must be a positive share of the training time, or None; got {budget}")
        _check_interval(interval_s)
        layers = list(watched_layers(model))
        self.model = model
        self.images = images
        self.every = int(every)
        self.budget = None if budget is None else float(budget)
        self._clock = clock
        self._layers = layers
        self._layer = layer or model.feature_layer
        self._lock = threading.Lock()
        self._requested = True
        self._latest: ProbeSnapshot | None = None
        self._train_s = 0.0  # total seconds of the training steps seen
        self._steps = 0
        self._probe_s = 0.0  # total seconds spent probing
        self._last_cost: float | None = None  # seconds of the last probe
        self._last_step: int | None = None
        self._interval_s = None if interval_s is None else float(interval_s)
        self._count = len(images) if count is None else max(1, min(int(count), len(images)))
        self._last_probe_at: float | None = None  # clock at the start of the last probe
        self._probe_times: deque[float] = deque(maxlen=6)  # clock at the start of recent probes
        self._wall0: float | None = None  # clock at the first step (with an interval set)
        self._wall_steps = 0  # steps seen since then
        self.probes = 0

    @property
    def layer(self) -> str:
        return self._layer

    def set_layer(self, layer: str) -> None:
        """Probe ``layer`` from the next step on."""
        if layer not in self._layers and layer != self.model.feature_layer:
            raise KeyError(f"Unknown layer {layer!r}; choose one of {', '.join(self._layers)}")
        with self._lock:
            if layer != self._layer:
                self._layer = layer
                self._requested = True

    @property
    def interval_s(self) -> float | None:
        return self._interval_s

    def set_interval_s(self, seconds: float | None) -> None:
        """Probe at most once per ``seconds`` of the clock from now on (None: as the budget allows)."""
        _check_interval(seconds)
        with self._lock:
            self._interval_s = None if seconds is None else float(seconds)

    @property
    def count(self) -> int:
        return self._count

    def set_count(self, n: int) -> None:
        """Probe the first ``n`` images of the sample (clipped to 1..len(sample)); more than the
        last snapshot holds is probed at the next step."""
        n = max(1, min(int(n), len(self.images)))
        with self._lock:
            if self._latest is not None and n > len(self._latest.preds):
                self._requested = True
            self._count = n

    def _forward(self, layer: str, batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
        """(activations of ``layer``, predicted classes) for the sample in one eval-mode pass
        per batch: conv outputs averaged over space per channel, linear outputs as-is. Every
        module's training flag is restored afterwards (the training thread owns the model)."""
        images = self.images[: self._count]
        if not len(images):
            return np.zeros((0, 0), np.float32), np.zeros(0, np.int64)
        got = capture(self.model, [layer], images, batch_size=batch_size, stop_after=False, forward=_predict,
                      switch_mode=True)
        preds = torch.cat(got.outputs).numpy()
        if layer in got.missing:  # not on the features -> head path: the whole forward, read through a copy
            got = capture(self.model, [layer], images, batch_size=batch_size)
        return got.of(layer).numpy(), preds

    def probe(self, step: int) -> ProbeSnapshot:
        """Compute a snapshot now (call from the thread that owns the model)."""
        t0 = self._clock()
        with self._lock:
            layer = self._layer
            self._requested = False
            self._last_probe_at = t0
            self._probe_times.append(t0)
        acts, preds = self._forward(layer)
        snap = ProbeSnapshot(step, layer, acts, preds)
        cost = max(self._clock() - t0, 0.0)
        with self._lock:
            self._latest = snap
            self._probe_s += cost
            self._last_cost = cost
            self._last_step = step
            self.probes += 1
        return snap

    def _affordable(self) -> bool:
        """Whether one more probe keeps the probing time within the budget."""
        if self.budget is None or self._last_cost is None:
            return True
        return self._probe_s + self._last_cost <= self.budget * self._train_s

    def _due(self) -> bool:
        """Whether ``interval_s`` (if set) has passed since the last probe."""
        if self._interval_s is None or self._last_probe_at is None:
            return True
        return self._clock() - self._last_probe_at >= self._interval_s

    def on_step(self, info: StepInfo) -> None:
        self._train_s += max(float(info.step_time), 0.0)
        self._steps += 1
        if self._interval_s is not None:  # wall time per step, for pace()
            if self._wall0 is None:
                self._wall0 = self._clock()
            else:
                self._wall_steps += 1
        if self._requested:
            self.probe(info.step)
        elif self.budget is None:
            if info.step % self.every == 0 and self._due():
                self.probe(info.step)
        elif ((self._last_step is None or info.step - self._last_step >= self.every) and self._affordable()
              and self._due()):
            self.probe(info.step)

    def on_epoch(self, info: EpochInfo) -> None:
        if (self.budget is None or self._affordable()) and self._due():
            latest = self.latest()
            self.probe(latest.step if latest is not None else 0)

    def latest(self) -> ProbeSnapshot | None:
        """The most recent snapshot, or None before the first step."""
        with self._lock:
            return self._latest

    def pace(self) -> dict | None:
        """How often the probe runs at the rates measured so far, for the page: ``interval``
        (steps between probes), ``interval_s`` (seconds between them), ``limited_by``
        (``"budget"``: as often as the budget allows, slower than ``requested_s``;
        ``"setting"``: every ``requested_s`` as asked; ``"steps"``: every ``every`` steps;
        ``"budget"`` also when no interval was asked for), ``requested_s`` (``interval_s`` as
        set, or None), ``observed_s`` (mean clock time between the last probes, or None before
        two), ``probe_s`` (seconds of the last probe), ``share`` (probing time / training-step
        time so far), ``budget``, ``probes`` and ``images`` (probed per snapshot). None before
        the first probe."""
        with self._lock:
            if self._last_cost is None or self._steps == 0:
                return None
            step_s = self._train_s / self._steps
            if self._wall_steps > 0 and self._wall0 is not None:
                wall_step_s = max((self._clock() - self._wall0) / self._wall_steps, step_s)
            else:
                wall_step_s = step_s
            fewest = self.every
            if self.budget is None:
                steps, limited_by = fewest, "steps"
            else:
                need = math.ceil(self._last_cost / max(self.budget * step_s, 1e-12))
                steps, limited_by = max(fewest, need), ("budget" if need > fewest else "steps")
            seconds = steps * wall_step_s
            requested = self._interval_s
            if requested is not None and requested >= seconds:
                seconds, limited_by = requested, "setting"
                steps = max(fewest, math.ceil(requested / max(wall_step_s, 1e-12)))
            times = list(self._probe_times)
            observed = (times[-1] - times[0]) / (len(times) - 1) if len(times) > 2 else None
            return {"interval": int(steps), "interval_s": float(seconds), "limited_by": limited_by,
                    "requested_s": requested, "observed_s": observed, "probe_s": self._last_cost,
                    "share": self._probe_s / self._train_s if self._train_s > 0 else None,
                    "budget": self.budget, "probes": self.probes, "images": int(self._count)}


def _predict(model: SteerableModel, batch: torch.Tensor) -> torch.Tensor:
    """Predicted classes of ``batch`` (CPU), through the model's features and head."""
    return model.head(model.features(batch)).argmax(1).cpu()


def _check_interval(seconds: float | None) -> None:
    if seconds is not None and not (math.isfinite(seconds) and seconds > 0):
        raise ValueError(f"interval_s must be a positive number of seconds, or None; got {seconds}")


@dataclass
class Monitors:
    """The callbacks a monitored training job carries (found again in ``job.attached``)."""

    stats: LayerStats | None = None
    settle: SettleTracker | None = None
    probe: ActivationProbe | None = None

    @classmethod
    def of(cls, attached: Sequence[Callback]) -> "Monitors":
        """Pick the monitors out of a job's attached callbacks."""
        out = cls()
        for cb in attached:
            if isinstance(cb, LayerStats):
                out.stats = cb
            elif isinstance(cb, SettleTracker):
                out.settle = cb
            elif isinstance(cb, ActivationProbe):
                out.probe = cb
        return out


def monitors_for(model: SteerableModel, sample: torch.Tensor | None = None, *, layer: str | None = None,
                 every: int = PROBE_EVERY, budget: float | None = PROBE_BUDGET, interval_s: float | None = None,
                 count: int | None = None) -> list[Callback]:
    """Statistics, settle tracking and (given a sample of images) an activation probe, bound
    to ``model``: what ``JobOptions(attach=...)`` takes (``Workbench.train``, ``Workbench.start_training``). ``interval_s`` and
    ``count``: see :class:`ActivationProbe`."""
    settle = SettleTracker(model)
    settle.record(-1)  # the weights before the first epoch, so epoch 1 has a relative change
    out: list[Callback] = [LayerStats(model, act_every=ACT_EVERY), settle]
    if sample is not None and len(sample):
        out.append(ActivationProbe(model, sample, layer=layer, every=every, budget=budget, interval_s=interval_s,
                                   count=count))
    return out


def freeze_changes(epochs: Sequence[dict]) -> list[tuple[int, tuple[str, ...], tuple[str, ...]]]:
    """(epoch index, frozen before, frozen after) wherever an epoch ended with another frozen
    set than the epoch before it. ``epochs`` are ``EpochInfo`` dicts as a job records them."""
    out = []
    for prev, cur in zip(epochs, epochs[1:]):
        a, b = tuple(prev.get("frozen", ())), tuple(cur.get("frozen", ()))
        if a != b:
            out.append((int(cur["epoch"]), a, b))
    return out


MIN_COMPARABLE_EPOCHS = 2  # epochs needed on each side of a freezing change to compare times


@dataclass(frozen=True)
class EpochTimeSpread:
    """Times per epoch of one side of a comparison: which epochs (0-based), their median,
    interquartile range (numpy's linear percentiles) and range, in seconds."""

    epochs: tuple[int, ...]
    median: float
    q1: float
    q3: float
    low: float
    high: float

    @property
    def n(self) -> int:
        return len(self.epochs)

    @classmethod
    def of(cls, epochs: Sequence[int], times: Sequence[float]) -> "EpochTimeSpread":
        """The spread of ``times`` (one per epoch in ``epochs``); all NaN when empty."""
        t = np.asarray(times, dtype=np.float64)
        if len(t) == 0:
            nan = float("nan")
            return cls(tuple(int(e) for e in epochs), nan, nan, nan, nan, nan)
        q1, med, q3 = np.percentile(t, [25, 50, 75])
        return cls(tuple(int(e) for e in epochs), float(med), float(q1), float(q3), float(t.min()), float(t.max()))


@dataclass(frozen=True)
class FreezeSaving:
    """Time per epoch before the first freezing change against after the last one.

    ``saving`` (fraction of the before median, negative when slower) is None when the
    comparison cannot tell: ``reason`` then says why (too few comparable epochs on a side,
    or interquartile ranges that overlap). ``left_out`` are the epochs not compared: the
    first epoch of every phase (a phase = consecutive epochs with the same frozen set): the
    run's first epoch carries warm-up costs, and a later phase's first epoch is the one in
    which the change happened (partly before it), plus every epoch of the phases between
    the first and the last."""

    before: EpochTimeSpread
    after: EpochTimeSpread
    frozen_before: tuple[str, ...]
    frozen_after: tuple[str, ...]
    left_out: tuple[int, ...]
    saving: float | None
    reason: str | None

    @property
    def ratio(self) -> float | None:
        """after median / before median, when ``saving`` is known."""
        return None if self.saving is None else 1.0 - self.saving


def epoch_phases(epochs: Sequence[dict]) -> list[list[dict]]:
    """``epochs`` split into runs of consecutive epochs that ended with the same frozen set."""
    phases: list[list[dict]] = []
    for e in epochs:
        if phases and tuple(phases[-1][-1].get("frozen", ())) == tuple(e.get("frozen", ())):
            phases[-1].append(e)
        else:
            phases.append([e])
    return phases


def freeze_saving(epochs: Sequence[dict], *, min_epochs: int = MIN_COMPARABLE_EPOCHS) -> FreezeSaving | None:
    """Compare like with like: time per epoch of the first phase (before any freezing change)
    against the last phase (after the last change), each without its first epoch (see
    :class:`FreezeSaving`). A saving is given only with at least ``min_epochs`` comparable
    epochs on each side and interquartile ranges that do not overlap; otherwise ``saving`` is
    None and ``reason`` says "too few epochs to tell" and why. ``epochs`` are ``EpochInfo``
    dicts as a job records them. None when the frozen set never changed."""
    if min_epochs < 1:
        raise ValueError(f"min_epochs must be at least 1, got {min_epochs}")
    phases = epoch_phases(epochs)
    if len(phases) < 2:
        return None
    first, last = phases[0][1:], phases[-1][1:]
    used = {int(e["epoch"]) for e in first + last}
    left_out = tuple(int(e["epoch"]) for e in epochs if int(e["epoch"]) not in used)
    before = EpochTimeSpread.of([e["epoch"] for e in first], [e["epoch_time"] for e in first])
    after = EpochTimeSpread.of([e["epoch"] for e in last], [e["epoch_time"] for e in last])
    saving = reason = None
    if before.n < min_epochs or after.n < min_epochs:
        reason = (f"too few epochs to tell: {before.n} comparable epoch{'s' if before.n != 1 else ''} before the change "
                  f"and {after.n} after it; at least {min_epochs} on each side are needed (the first epoch of each "
                  "phase is left out)")
    elif before.q1 <= after.q3 and after.q1 <= before.q3:
        reason = (f"too few epochs to tell: the times before ({before.q1:.2f}-{before.q3:.2f} s) and after "
                  f"({after.q1:.2f}-{after.q3:.2f} s) overlap (interquartile ranges)")
    else:
        saving = 1.0 - after.median / before.median if before.median > 0 else None
        if saving is None:
            reason = "too few epochs to tell: the epochs before the change took no time"
    return FreezeSaving(before, after, tuple(phases[0][0].get("frozen", ())), tuple(phases[-1][0].get("frozen", ())),
                        left_out, saving, reason)
