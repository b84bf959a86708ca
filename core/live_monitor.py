"""What the training-monitor and layer-freezing pages attach to a training job.

A job trains a copy of the workbench's model in a background thread. The page cannot put
that copy in eval mode to read activations (BatchNorm would then run in eval mode during
training steps), so :class:`ActivationProbe` does it inside the training thread, between
steps, every ``every`` steps and at each epoch end; the page only reads its latest snapshot.
"""
from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from core.engine import Callback, EpochInfo, StepInfo, predict
from core.models.base import SteerableModel
from core.monitor import LayerStats, SettleTracker, watched_layers


@dataclass(frozen=True)
class ProbeSnapshot:
    """A layer's activations and the model's predictions for the probe's sample at a step."""

    step: int
    layer: str
    activations: np.ndarray  # (n, C)
    preds: np.ndarray  # (n,)


class ActivationProbe(Callback):
    """Activations of one layer, and predictions, for a fixed sample of images, computed in
    the training thread. ``set_layer`` switches the layer from another thread; the next step
    recomputes."""

    def __init__(self, model: SteerableModel, images: torch.Tensor, *, layer: str | None = None,
                 every: int = 25) -> None:
        if every < 1:
            raise ValueError(f"every must be >= 1 step, got {every}")
        layers = list(watched_layers(model))
        self.model = model
        self.images = images
        self.every = int(every)
        self._layers = layers
        self._layer = layer or model.feature_layer
        self._lock = threading.Lock()
        self._requested = True
        self._latest: ProbeSnapshot | None = None

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

    def probe(self, step: int) -> ProbeSnapshot:
        """Compute a snapshot now (call from the thread that owns the model)."""
        # imported here: core.embed pulls in scikit-learn (~0.9 s), and Home imports this
        # module's freeze bookkeeping through app.widgets on every cold start
        from core.embed import layer_activations

        with self._lock:
            layer = self._layer
            self._requested = False
        acts = layer_activations(self.model, layer, self.images)
        logits, _ = predict(self.model, self.images)
        snap = ProbeSnapshot(step, layer, acts, logits.argmax(1).numpy())
        with self._lock:
            self._latest = snap
        return snap

    def on_step(self, info: StepInfo) -> None:
        if self._requested or info.step % self.every == 0:
            self.probe(info.step)

    def on_epoch(self, info: EpochInfo) -> None:
        latest = self.latest()
        self.probe(latest.step if latest is not None else 0)

    def latest(self) -> ProbeSnapshot | None:
        """The most recent snapshot, or None before the first step."""
        with self._lock:
            return self._latest


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
                 every: int = 25) -> list[Callback]:
    """Statistics, settle tracking and (given a sample of images) an activation probe, bound
    to ``model``: what ``Workbench.start_training(attach=...)`` takes."""
    settle = SettleTracker(model)
    settle.record(-1)  # the weights before the first epoch, so epoch 1 has a relative change
    out: list[Callback] = [LayerStats(model), settle]
    if sample is not None and len(sample):
        out.append(ActivationProbe(model, sample, layer=layer, every=every))
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


def freeze_saving(epochs: Sequence[dict]) -> dict | None:
    """Time per epoch before the first freezing change and after the last one.

    The epoch in which the change happened is mixed and left out; so is the first epoch when
    another unfrozen epoch exists (it carries warm-up costs). Returns ``{"before_s",
    "after_s", "ratio", "saving" (fraction), "epochs_before", "epochs_after"}``, or None when
    there is no change or no full epoch on either side yet.
    """
    changes = freeze_changes(epochs)
    if not changes:
        return None
    first, last = changes[0][0], changes[-1][0]
    before = [e["epoch_time"] for e in epochs if e["epoch"] < first]
    # the epoch in which the change was seen ran partly before it: skip it
    after = [e["epoch_time"] for e in epochs if e["epoch"] > last]
    if len(before) > 1:
        before = before[1:]
    if not before or not after:
        return None
    b, a = float(np.median(before)), float(np.median(after))
    return {"before_s": b, "after_s": a, "ratio": a / b, "saving": 1 - a / b,
            "epochs_before": len(before), "epochs_after": len(after)}
