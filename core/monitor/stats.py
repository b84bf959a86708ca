"""Per-layer and per-filter statistics of a training run, collected cheaply.

Mean |activation| per filter is reduced inside a forward hook (a few reductions per layer,
nothing kept of the activation); gradient norms per filter are reduced from ``weight.grad``
after backward. Both stay on the training device as small tensors; nothing is copied to the
CPU until :meth:`LayerStats.snapshot` is called, as often as a page shows them.

:class:`SettleTracker` tells, once per epoch, which layer groups have stopped changing (the
cue for freezing them), and :func:`activation_maps` gives one image's maps at one layer.
"""
from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from core.engine import Callback, EpochInfo, StepInfo, frozen_groups
from core.explain.activations import capture, detached
from core.models.base import SteerableModel


@dataclass
class StatsSnapshot:
    """Statistics at one step, on the CPU. Arrays are per filter (output channel / unit)."""

    step: int
    activation: dict[str, np.ndarray]
    grad_norm: dict[str, np.ndarray]
    layer_grad_norm: dict[str, float]
    activation_step: int | None = None  # the step the activations are from (see ``act_every``)


def watched_layers(model: SteerableModel) -> dict[str, nn.Module]:
    """Convolution and linear layers, in forward order of the model's layer groups."""
    named = dict(model.named_modules())
    out: dict[str, nn.Module] = {}
    for names in model.layer_groups.values():
        for name in names:
            for sub_name, sub in named[name].named_modules():
                if isinstance(sub, (nn.Conv2d, nn.Linear)):
                    out[f"{name}.{sub_name}" if sub_name else name] = sub
    return out


class LayerStats(Callback):
    """Engine callback that records per-filter mean |activation| and gradient norm during
    training, plus each layer's gradient-norm history (for a layer-by-step heatmap).

    Gradient norms are taken on every step. Activations are reduced on every
    ``act_every``-th training step only (1: every step): the reduction reads the whole
    activation tensor, the largest cost of these statistics on small models, and a page that
    redraws every 0.8 s never shows more than one step in several anyway.

    Use as a context manager or call :meth:`close` to remove the hooks.
    """

    def __init__(self, model: SteerableModel, *, history: int = 2000, act_every: int = 1) -> None:
        if act_every < 1:
            raise ValueError(f"act_every must be at least 1; got {act_every}")
        self.model = model
        self.layers = watched_layers(model)
        self.act_every = int(act_every)
        self._act: dict[str, torch.Tensor] = {}
        self._act_step: int | None = None
        self._want_act = True  # reduce activations in the coming forward pass
        self._lock = threading.Lock()
        self._handles = [m.register_forward_hook(self._hook(name)) for name, m in self.layers.items()]
        # A fixed ring of (history, n_layers) on the CPU, written in place each step: a page's
        # read is one copy of a small array, not a stack of thousands of little tensors.
        self._history = int(history)
        self._ring = torch.zeros(self._history, len(self.layers), dtype=torch.float32)
        self._ring_steps = np.zeros(self._history, dtype=np.int64)
        self._written = 0
        self._last: tuple[int, dict[str, torch.Tensor], dict[str, torch.Tensor]] | None = None

    def _hook(self, name: str):
        def hook(module: nn.Module, inputs, output: torch.Tensor) -> None:
            if not module.training or not self._want_act:
                return  # only (sampled) training steps count; evaluation passes are not statistics
            with torch.no_grad():
                out = output.detach()
                count = out.numel() // out.shape[1]
                # abs() then two plain sums: on CPU about 4x faster than a fused
                # vector_norm(ord=1) over dims (0, 2, 3), measured on 64x32x28x28
                per = out.abs().sum(dim=(2, 3)) if out.dim() == 4 else out.abs()
                self._act[name] = per.sum(0) / count
        return hook

    def on_step(self, info: StepInfo) -> None:
        # Called after optimizer.step(); .grad still holds this step's gradients.
        with torch.no_grad():
            grads: dict[str, torch.Tensor] = {}
            layer_norms = []
            for name, module in self.layers.items():
                g = module.weight.grad
                if g is None:  # frozen layer: no backward ran through it
                    per = torch.zeros(module.weight.shape[0], device=module.weight.device)
                else:
                    per = torch.linalg.vector_norm(g.reshape(g.shape[0], -1), dim=1)
                    if module.bias is not None and module.bias.grad is not None:
                        per = torch.sqrt(per.square() + module.bias.grad.square())
                grads[name] = per
                layer_norms.append(torch.linalg.vector_norm(per))
            norms = torch.stack(layer_norms).float().cpu()
            acts = dict(self._act)
            with self._lock:
                if self._want_act:
                    self._act_step = info.step
                self._last = (info.step, acts, grads)
                slot = self._written % self._history
                self._ring[slot] = norms
                self._ring_steps[slot] = info.step
                self._written += 1
            self._want_act = (info.step + 1) % self.act_every == 0

    def snapshot(self) -> StatsSnapshot | None:
        """The latest step's statistics copied to the CPU, or None before the first step."""
        with self._lock:
            last, act_step = self._last, self._act_step
        if last is None:
            return None
        step, acts, grads = last
        return StatsSnapshot(
            step=step,
            activation={k: v.float().cpu().numpy() for k, v in acts.items()},
            grad_norm={k: v.float().cpu().numpy() for k, v in grads.items()},
            layer_grad_norm={k: float(torch.linalg.vector_norm(v)) for k, v in grads.items()},
            activation_step=act_step,
        )

    def grad_history(self) -> tuple[list[int], list[str], np.ndarray]:
        """(steps, layer names, array of shape (layers, steps)) of per-layer gradient norms,
        the last ``history`` steps, oldest first."""
        names = list(self.layers)
        with self._lock:
            n = min(self._written, self._history)
            start = self._written - n
            order = [(start + i) % self._history for i in range(n)]
            values = self._ring[order].numpy().T.copy() if n else np.zeros((len(names), 0), dtype=np.float32)
            steps = self._ring_steps[order].tolist()
        return steps, names, values

    def close(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def __enter__(self) -> "LayerStats":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ----------------------------------------------------------------------------- settling
def _first_weight_layer(model: SteerableModel, group: str) -> tuple[str, nn.Module] | None:
    """The first convolution or linear layer of ``group`` (the one whose filters are drawn)."""
    named = dict(model.named_modules())
    for name in model.layer_groups[group]:
        for sub_name, sub in named[name].named_modules():
            if isinstance(sub, (nn.Conv2d, nn.Linear)):
                return (f"{name}.{sub_name}" if sub_name else name), sub
    return None


def _flat_params(model: SteerableModel, group: str) -> torch.Tensor:
    """All parameters of ``group`` as one float64 CPU vector (a copy)."""
    params = model.group_parameters(group)
    if not params:
        return torch.zeros(0, dtype=torch.float64)
    return torch.cat([p.detach().reshape(-1).to("cpu", torch.float64) for p in params])


def _filter_rows(layer: nn.Module) -> torch.Tensor:
    """Filters of a conv/linear layer as rows (out_channels, fan_in), a float64 CPU copy."""
    w = layer.weight.detach()
    return w.reshape(w.shape[0], -1).to("cpu", torch.float64)


@dataclass
class _Basis:
    """A fixed 2D PCA layout of one layer's filters, fit on the first snapshot. Torch rather
    than numpy: numpy's BLAS threads would compete with torch's while training runs."""

    mean: torch.Tensor  # (fan_in,)
    components: torch.Tensor  # (fan_in, 2)
    radius: float  # RMS distance of the first layout's points from their centre

    @classmethod
    def fit(cls, rows: torch.Tensor) -> "_Basis":
        mean = rows.mean(dim=0)
        centred = rows - mean
        # Principal axes from the (filters x filters) Gram matrix: at most 256 x 256 here, so
        # eigh on it is several times cheaper than an SVD of the (filters x fan_in) rows, and
        # far less prone to stalls when other processes hold the cores. Deterministic for
        # one input; the axes' signs are arbitrary but fixed from then on.
        eigvals, eigvecs = torch.linalg.eigh(centred @ centred.T)  # ascending
        components = torch.zeros(rows.shape[1], 2, dtype=rows.dtype)
        for k in range(min(2, len(eigvals))):
            lam = float(eigvals[-1 - k])
            if lam > 1e-12 * max(float(eigvals[-1]), 1e-300):
                components[:, k] = centred.T @ eigvecs[:, -1 - k] / lam**0.5
        pos = centred @ components
        radius = float(pos.square().sum(dim=1).mean().sqrt()) if len(pos) else 0.0
        return cls(mean, components, radius)

    def project(self, rows: torch.Tensor) -> np.ndarray:
        return ((rows - self.mean) @ self.components).numpy()


def direction_change(before: torch.Tensor, after: torch.Tensor) -> float:
    """``||after/||after|| - before/||before|| ||``: how far a parameter vector turned,
    blind to a change of its length. Weight decay shrinks every group by the same factor
    each step (about lr * wd / (1 - momentum) per step with SGD momentum); once the
    gradients are small that shrinkage is most of each group's relative change, the same
    for all groups (0.17% per epoch on the digits at lr 0.02), and would hide which groups
    still learn. 0 for a zero vector that stayed zero."""
    nb, na = float(torch.linalg.vector_norm(before)), float(torch.linalg.vector_norm(after))
    if nb == 0 or na == 0:
        return 0.0 if nb == na else float("inf")
    return float(torch.linalg.vector_norm(after / na - before / nb))


def relative_pace(changes: dict[str, float], frozen: set[str] | frozenset[str] = frozenset()) -> dict[str, float]:
    """Each group's change divided by the median change of the groups not in ``frozen``.

    When that median is 0 (nothing moved), an unchanged group's pace is 0 and a changed one's
    is infinite; with every group frozen, the median of all groups is used."""
    live = [v for g, v in changes.items() if g not in frozen] or list(changes.values())
    if not live:
        return {}
    median = float(np.median(live))
    if median > 0:
        return {g: v / median for g, v in changes.items()}
    return {g: (0.0 if v == 0 else float("inf")) for g, v in changes.items()}


class SettleTracker(Callback):
    """Which layer groups have stopped changing *relative to the others*: the cue for
    freezing them (ReVACNN froze conv1-2 "since the t-SNE view of the filters ... showed
    stable patterns by their short to no trailing lines", while later layers still moved).

    After each epoch (:meth:`on_epoch`, or :meth:`record` called by hand), per layer group:

    - ``rel_change``: ``||W_e - W_{e-1}|| / ||W_{e-1}||`` over all the group's parameters
      (exactly 0 for a frozen group: the optimiser skips parameters without gradients);
    - ``turn``: how far the group's parameter vector turned in the epoch
      (:func:`direction_change`), blind to the uniform shrinkage of weight decay;
    - ``pace``: ``turn`` divided by the median ``turn`` of the groups that are not frozen in
      that epoch (1: changing as fast as the typical group; 0.5: half as fast). An absolute
      threshold cannot tell layers apart: the learning rate and weight decay set every
      group's change per epoch, so late in a run all of them sat at 0.16-0.17 % (the decay's
      shrinkage) and all looked "settled". Relative to the others, and with the shrinkage
      taken out, the groups that stopped learning stand out. Seen here: seed-cnn on the
      built-in digits (SGD lr 0.02, 6 epochs from scratch, seeds 0-2), conv1's pace is
      0.3-0.6 while fc3's is 1.0-2.6. From an already trained model the figures are noisier
      epoch to epoch, and on some seeds every group ends near 1: then nothing is singled out;
    - ``trail_length``: the filters (rows of the flattened weight) of the group's first
      conv/linear layer are projected to 2D with a PCA basis fit on the first snapshot and
      kept fixed, so positions stay comparable; each filter's path over its last ``trail``
      positions is summed, averaged over filters and divided by the first layout's RMS
      radius (0 when nothing moved, about 1 when filters moved by the layout's size). Shown
      beside the cue, as the page's filter trails show it; not part of the rule.

    A group is *settled* when it is frozen, or when its ``pace`` was at most
    ``pace_threshold`` (default 0.6) in each of the last ``pace_epochs`` (default 2) epochs.
    It is a cue, not a rule: the user decides.

    Costs one copy of the parameters per epoch. Thread-safe: the training thread records,
    page threads read :meth:`table` and :meth:`filter_positions` at any time.
    """

    def __init__(
        self,
        model: SteerableModel,
        *,
        trail: int = 5,
        pace_threshold: float = 0.6,
        pace_epochs: int = 2,
    ) -> None:
        if trail < 2:
            raise ValueError(f"trail must be at least 2 positions, got {trail}")
        if not pace_threshold > 0 or pace_epochs < 1:
            raise ValueError(f"pace_threshold must be > 0 and pace_epochs >= 1; got {pace_threshold}, {pace_epochs}")
        self.model = model
        self.trail = trail
        self.pace_threshold = float(pace_threshold)
        self.pace_epochs = int(pace_epochs)
        self.groups = list(model.layer_groups)
        self._layers = {g: _first_weight_layer(model, g) for g in self.groups}
        self._lock = threading.Lock()
        self._epochs: list[int] = []
        self._prev: dict[str, torch.Tensor] = {}
        self._history: dict[str, list[float]] = {g: [] for g in self.groups}
        self._pace: dict[str, list[float]] = {g: [] for g in self.groups}
        self._turn: dict[str, list[float]] = {g: [] for g in self.groups}
        self._basis: dict[str, _Basis] = {}
        self._positions: dict[str, deque[np.ndarray]] = {g: deque(maxlen=trail) for g in self.groups}
        self._frozen: dict[str, bool] = {g: False for g in self.groups}

    def record(self, epoch: int) -> None:
        """Take a snapshot of the weights now and update every group's figures.

        Call from the thread that changes the weights (the engine does, in ``on_epoch``)."""
        frozen = set(frozen_groups(self.model))
        changes: dict[str, float] = {}
        turns: dict[str, float] = {}
        positions: dict[str, np.ndarray] = {}
        current = {g: _flat_params(self.model, g) for g in self.groups}
        # Only this method writes _prev and _basis, so they are read without the lock; the
        # lock guards what the page reads.
        for g in self.groups:
            prev = self._prev.get(g)
            if prev is not None:
                norm = float(torch.linalg.vector_norm(prev))
                diff = float(torch.linalg.vector_norm(current[g] - prev))
                changes[g] = diff / norm if norm > 0 else (0.0 if diff == 0 else float("inf"))
                turns[g] = direction_change(prev, current[g])
            entry = self._layers[g]
            if entry is not None:
                rows = _filter_rows(entry[1])
                basis = self._basis.get(g)
                if basis is None:
                    basis = self._basis[g] = _Basis.fit(rows)
                positions[g] = basis.project(rows)
        paces = relative_pace(turns, frozen)
        with self._lock:
            for g in self.groups:
                if g in changes:
                    self._history[g].append(changes[g])
                    self._pace[g].append(paces[g])
                    self._turn[g].append(turns[g])
                self._prev[g] = current[g]
                self._frozen[g] = g in frozen
                if g in positions:
                    self._positions[g].append(positions[g])
            self._epochs.append(epoch)

    def on_epoch(self, info: EpochInfo) -> None:
        self.record(info.epoch)

    @property
    def epochs(self) -> list[int]:
        """The epochs recorded so far, in order."""
        with self._lock:
            return list(self._epochs)

    def _trail_length(self, group: str) -> float | None:
        positions = self._positions[group]
        if len(positions) < 2:
            return None
        stack = np.stack(positions)  # (k, filters, 2)
        path = np.linalg.norm(np.diff(stack, axis=0), axis=2).sum(axis=0)  # per filter
        radius = self._basis[group].radius
        mean_path = float(path.mean())
        if radius > 0:
            return mean_path / radius
        return 0.0 if mean_path == 0 else float("inf")

    def table(self) -> list[dict]:
        """One row per group, in ``layer_groups`` order: ``group``, ``rel_change`` (last
        epoch; None before two snapshots), ``rel_change_history``, ``turn`` and ``pace`` (last epoch;
        None before two snapshots), ``pace_history``, ``trail_length`` (None before two
        snapshots or for a group without conv/linear layers), ``settled`` and ``frozen``
        (at the last snapshot)."""
        rows = []
        with self._lock:
            for g in self.groups:
                history = list(self._history[g])
                paces = list(self._pace[g])
                frozen = self._frozen[g]
                recent = paces[-self.pace_epochs:]
                settled = frozen or (len(recent) == self.pace_epochs and max(recent) <= self.pace_threshold)
                rows.append({
                    "group": g, "rel_change": history[-1] if history else None, "rel_change_history": history,
                    "pace": paces[-1] if paces else None, "pace_history": paces,
                    "turn": self._turn[g][-1] if self._turn[g] else None,
                    "trail_length": self._trail_length(g), "settled": bool(settled), "frozen": frozen,
                })
        return rows

    def filter_positions(self, group: str) -> np.ndarray:
        """(snapshots, filters, 2): the last ``trail`` 2D positions of the filters of the
        group's first conv/linear layer, oldest first, for drawing trails. Unknown group:
        ``KeyError``."""
        if group not in self._layers:
            raise KeyError(f"Unknown layer group {group!r}; the model has {self.groups}.")
        layer = self._layers[group]
        with self._lock:
            positions = list(self._positions[group])
        if not positions:
            n = layer[1].weight.shape[0] if layer is not None else 0
            return np.zeros((0, n, 2))
        return np.stack(positions)


# ----------------------------------------------------------------------------- activations
def activation_maps(model: SteerableModel, layer: str, image: torch.Tensor) -> np.ndarray:
    """(C, H, W) output of ``layer`` (a name from :func:`watched_layers`) for one image of
    shape (C, H, W) or (1, C, H, W); linear layers give (units, 1, 1).

    Runs under ``no_grad`` in eval mode without switching the model's mode (it may be
    shared with other threads; a model in train mode is read through an eval-mode copy, see
    :func:`core.models.for_inference`). The forward stops after ``layer``; the hook that
    stops it acts in the calling thread only (:func:`core.explain.activations.capture`)."""
    if layer not in watched_layers(model):
        raise KeyError(f"Unknown layer {layer!r}; watched layers are {list(watched_layers(model))}.")
    if image.dim() == 3:
        image = image.unsqueeze(0)
    if image.dim() != 4 or image.shape[0] != 1:
        raise ValueError(f"Expected one image (C, H, W) or (1, C, H, W), got shape {tuple(image.shape)}.")
    captured = capture(model, [layer], image, reduce=detached).of(layer)
    out = captured[0].float().cpu().numpy()
    return out.reshape(out.shape[0], 1, 1) if out.ndim == 1 else out
