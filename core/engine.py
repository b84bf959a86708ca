"""One training engine for every page: train, evaluate, fit and fine-tune with callbacks,
layer freezing, stop/pause between steps and roll-back on a non-finite loss.

In the spirit of torchvision's reference scripts: flat functions, no framework. Datasets are
in-memory tensors (see ``core.data``), so batches are plain index gathers: no DataLoader
workers to start, which matters on a 2-core machine and keeps every run deterministic.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from core.models import for_inference
from core.models.base import SteerableModel

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- devices
def pick_device(preference: str | None = None) -> torch.device:
    """``preference`` if given ("cpu", "cuda", "mps"), else CUDA, then MPS, then CPU.

    Asking for a device that is not there raises ``ValueError`` with what is available.
    """
    if preference and preference != "auto":
        pref = preference.lower()
        if pref.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError(f"CUDA was asked for but is not available; available: {', '.join(available_devices())}.")
        if pref == "mps" and not _mps_available():
            raise ValueError(f"MPS was asked for but is not available; available: {', '.join(available_devices())}.")
        return torch.device(pref)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if _mps_available():
        return torch.device("mps")
    return torch.device("cpu")


def _mps_available() -> bool:
    return bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())


def available_devices() -> list[str]:
    """Devices this machine can train on, CPU always included."""
    out = ["cpu"]
    if torch.cuda.is_available():
        out.append("cuda")
    if _mps_available():
        out.append("mps")
    return out


# ----------------------------------------------------------------------------- events
@dataclass
class StepInfo:
    """What happened in one optimisation step."""

    epoch: int
    step: int  # global step, counted from 0 over the whole run
    loss: float
    accuracy: float  # batch accuracy in [0, 1]
    lr: float
    step_time: float
    frozen: tuple[str, ...] = ()
    terms: dict[str, float] = field(default_factory=dict)


@dataclass
class EpochInfo:
    """Summary of one epoch."""

    epoch: int
    train_loss: float
    train_acc: float
    val_loss: float | None
    val_acc: float | None
    epoch_time: float
    lr: float
    steps: int
    frozen: tuple[str, ...] = ()


class Callback:
    """Listens to the engine. Override what you need; every method is optional."""

    def on_step(self, info: StepInfo) -> None:
        pass

    def on_epoch(self, info: EpochInfo) -> None:
        pass


# ----------------------------------------------------------------------------- control
class TrainControl:
    """Thread-safe requests to a running job: stop, pause/resume, freeze, pause after each
    epoch. The engine reads them between steps, so each takes effect within one step."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._stop = False
        self._paused = False
        self._frozen: set[str] = set()
        self.pause_at_epoch_end = False
        self.waiting = False  # True while the engine is blocked in a pause
        self._waited = 0.0  # seconds the engine has spent blocked in wait_while_paused, all told

    def request_stop(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify_all()

    @property
    def stop_requested(self) -> bool:
        return self._stop

    def pause(self) -> None:
        with self._cond:
            self._paused = True

    def resume(self) -> None:
        with self._cond:
            self._paused = False
            self._cond.notify_all()

    @property
    def paused(self) -> bool:
        return self._paused

    def set_frozen(self, groups: Iterable[str]) -> None:
        with self._cond:
            self._frozen = set(groups)

    def frozen(self) -> set[str]:
        with self._cond:
            return set(self._frozen)

    def wait_while_paused(self) -> float:
        """Block the calling (training) thread while paused and no stop is asked; return the
        seconds it waited (also added to :attr:`paused_seconds`)."""
        with self._cond:
            self.waiting = self._paused and not self._stop
            t0 = time.perf_counter()
            while self._paused and not self._stop:
                self._cond.wait(timeout=0.5)
            waited = time.perf_counter() - t0 if self.waiting else 0.0
            self._waited += waited
            self.waiting = False
            return waited

    @property
    def paused_seconds(self) -> float:
        """Seconds the engine has spent blocked in a pause so far (all epochs together), so
        a caller timing the run can leave the pauses out."""
        with self._cond:
            return self._waited


# ----------------------------------------------------------------------------- freezing
def apply_freeze(model: SteerableModel, frozen: Iterable[str]) -> None:
    """Freeze exactly the groups in ``frozen``: their parameters get ``requires_grad=False``
    (so no backward runs through them) and their BatchNorm layers stop updating running
    statistics. Unknown group names raise ``KeyError``."""
    frozen = set(frozen)
    unknown = frozen - set(model.layer_groups)
    if unknown:
        raise KeyError(f"Unknown layer groups {sorted(unknown)}; the model has {list(model.layer_groups)}.")
    for group in model.layer_groups:
        is_frozen = group in frozen
        for module in model.group_modules(group):
            for p in module.parameters():
                p.requires_grad_(not is_frozen)
                if is_frozen:
                    p.grad = None
            _set_bn_mode(module, frozen=is_frozen, training=model.training)


def _set_bn_mode(module: nn.Module, *, frozen: bool, training: bool) -> None:
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.train(training and not frozen)


def frozen_groups(model: SteerableModel) -> tuple[str, ...]:
    """Groups whose parameters are all frozen."""
    return tuple(
        g for g in model.layer_groups if all(not p.requires_grad for p in model.group_parameters(g))
    )


# ----------------------------------------------------------------------------- batches
@dataclass
class Batch:
    """One training batch as the loss terms see it."""

    x: torch.Tensor
    y: torch.Tensor
    ids: torch.Tensor  # example ids (rows of the dataset)
    features: torch.Tensor
    logits: torch.Tensor


class LossTerm(Protocol):
    """An extra term of the fine-tuning loss: ``term(model, batch) -> scalar tensor``."""

    def __call__(self, model: SteerableModel, batch: Batch) -> torch.Tensor: ...


def batch_order(n: int, batch_size: int, generator: torch.Generator, shuffle: bool = True) -> list[torch.Tensor]:
    """Index tensors of the batches of one epoch."""
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    return list(order.split(batch_size))


@dataclass(frozen=True)
class DataParallel:
    """Data-parallel training over processes (``torch.distributed``, started by torchrun):
    this process's ``rank`` among ``world_size``, and ``module``, the model wrapped in
    PyTorch's ``DistributedDataParallel`` (its forward pass sets up the gradient all-reduce)."""

    rank: int
    world_size: int
    module: nn.Module


def shard(idx: torch.Tensor, rank: int, world_size: int) -> torch.Tensor:
    """This rank's part of one global batch, with ``DistributedSampler``'s semantics: the
    batch is padded by repeating its first indices to a multiple of ``world_size``, and rank
    r takes every ``world_size``-th index from position r. Every rank then holds the same
    number of examples (so the averaged gradients weigh each example alike), and the ranks'
    parts together are the global batch the single-process run takes at the same step."""
    pad = (-len(idx)) % world_size
    if pad:
        idx = torch.cat([idx, idx.repeat(math.ceil(pad / len(idx)))[:pad]])
    return idx[rank::world_size]


def data_parallel(model: SteerableModel, device: torch.device) -> DataParallel | None:
    """Wrap ``model`` (already on ``device``) for the process group this process belongs to,
    or None when there is none or it has one process."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return None
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else None
    return DataParallel(dist.get_rank(), dist.get_world_size(), DistributedDataParallel(model, device_ids=ids))


# ----------------------------------------------------------------------------- evaluation
@dataclass
class EvalResult:
    """Predictions and metrics on one set of images."""

    loss: float
    accuracy: float  # in [0, 1]
    preds: np.ndarray
    probs: np.ndarray
    labels: np.ndarray
    confusion: np.ndarray  # rows = true class, columns = predicted
    features: np.ndarray | None = None

    @property
    def per_class_accuracy(self) -> np.ndarray:
        totals = self.confusion.sum(axis=1)
        return np.divide(np.diag(self.confusion), totals, out=np.full(len(totals), np.nan), where=totals > 0)


@torch.inference_mode()
def predict(
    model: SteerableModel,
    images: torch.Tensor,
    *,
    batch_size: int = 256,
    device: torch.device | str | None = None,
    with_features: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Logits (and features) for ``images``, in eval mode. The model's mode is never
    changed (it may be shared with other threads): a model in eval mode, as shared ones always
    are, is used as it is; one in train mode is evaluated on an eval-mode copy
    (:func:`core.models.for_inference`)."""
    model = for_inference(model)
    device = torch.device(device) if device is not None else _model_device(model)
    logits, feats = [], []
    for start in range(0, len(images), batch_size):
        x = images[start : start + batch_size].to(device, non_blocking=True)
        f = model.features(x)
        logits.append(model.head(f).float().cpu())
        if with_features:
            feats.append(f.float().cpu())
    out = torch.cat(logits) if logits else torch.zeros(0, model.info.num_classes)
    return out, (torch.cat(feats) if with_features and feats else None)


def evaluate(
    model: SteerableModel,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    batch_size: int = 256,
    device: torch.device | str | None = None,
    with_features: bool = False,
) -> EvalResult:
    """Loss, accuracy, confusion matrix and per-example predictions on a labelled set."""
    logits, feats = predict(model, images, batch_size=batch_size, device=device, with_features=with_features)
    labels_t = labels.long().cpu()
    k = model.info.num_classes
    if len(labels_t) == 0:
        empty = np.zeros(0, dtype=np.int64)
        return EvalResult(float("nan"), float("nan"), empty, np.zeros((0, k), np.float32), empty, np.zeros((k, k), np.int64))
    loss = float(F.cross_entropy(logits, labels_t))
    probs = torch.softmax(logits, 1)
    preds = probs.argmax(1)
    conf = torch.bincount(labels_t * k + preds, minlength=k * k).reshape(k, k)
    return EvalResult(
        loss=loss,
        accuracy=float((preds == labels_t).float().mean()),
        preds=preds.numpy(),
        probs=probs.numpy(),
        labels=labels_t.numpy(),
        confusion=conf.numpy(),
        features=None if feats is None else feats.numpy(),
    )


def _model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


# ----------------------------------------------------------------------------- training
@dataclass
class TrainConfig:
    """Optimiser and loop settings. SGD with momentum, as in the papers."""

    epochs: int = 5
    batch_size: int = 64
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    seed: int = 0
    device: str | None = None
    cosine: bool = False  # cosine learning-rate decay over the run
    eval_batch_size: int = 512
    # Divergence rule (see DivergenceGuard): the run diverged when a step's loss is not finite,
    # or when the cross-entropy, smoothed over about 5 steps, exceeds
    # max(diverge_factor * L0, L0 + diverge_margin), L0 being the first step's cross-entropy.
    # None switches the second test off.
    diverge_factor: float | None = 10.0
    diverge_margin: float = 5.0
    # "bf16": the training forward pass and loss under torch.autocast with bfloat16 (meant for
    # CUDA; it also runs on a CPU, usually slower). Evaluation stays in float32.
    precision: str = "fp32"
    # torch.compile the training forward pass (plain training only: no extra loss terms). Off
    # by default: benchmarks/compile_speed.py measures whether it pays on a machine.
    compile: bool = False
    # Keep the best validation epoch (base models): when the last epoch's validation accuracy
    # ends more than ``keep_best_margin`` below the best epoch's, fit puts that epoch's weights
    # back (FitResult.restored_best). Off: the model is the last epoch's, as always.
    keep_best: bool = False
    keep_best_margin: float = 0.05
    # With extra loss terms (feedback), each step's gradient is clipped to this L2 norm; None
    # switches it off. A double-backward penalty whose lambda was calibrated on a near-flat
    # region can give one step a gradient that wrecks the weights: on biased-digits, a grid
    # review marking one corner square left 4 of 8 seeds at 20-60 % validation accuracy or
    # diverged; with the clip all 8 ended at 100 %, as with no penalty. Plain CE training is
    # not clipped (base models and CE-only baselines train as before).
    term_grad_norm: float | None = 5.0


PRECISIONS = ("fp32", "bf16")


class TrainsWith:
    """For a feedback kind's settings dataclass that keeps its optimiser and loop in one
    ``train`` :class:`TrainConfig` (so lr, epochs and seed live in one place)."""

    train: TrainConfig

    def seeded(self, seed: int):
        """The same settings under another seed."""
        return replace(self, train=replace(self.train, seed=int(seed)))


def autocast_for(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """The context a training step's forward pass runs in for ``precision`` on ``device``."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


LR_RANGE = (1e-5, 1.0)  # learning rates the pages accept (SGD; above 1 every zoo model diverges)
EPOCHS_RANGE = (1, 500)


def check_train_settings(epochs: int, lr: float) -> None:
    """Raise ``ValueError`` with a one-line message when typed settings are out of range."""
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and LR_RANGE[0] <= lr <= LR_RANGE[1]):
        raise ValueError(f"The learning rate must be between {LR_RANGE[0]:g} and {LR_RANGE[1]:g}; got {lr:g}. "
                         "Type a value in that range (0.02 suits the zoo's models).")
    if not (EPOCHS_RANGE[0] <= int(epochs) <= EPOCHS_RANGE[1]) or int(epochs) != epochs:
        raise ValueError(f"Epochs must be a whole number from {EPOCHS_RANGE[0]} to {EPOCHS_RANGE[1]}; got {epochs:g}.")


@dataclass
class FitResult:
    """How a run ended.

    ``status`` is "done", "stopped" or "diverged". After a divergence the model holds the
    weights of its last epoch whose validation accuracy was not worse than at the start
    (``kept_epochs`` of them), or the weights it had before the run (``kept_epochs == 0``).
    """

    history: list[EpochInfo]
    steps: int
    stopped: bool = False
    rolled_back: bool = False
    message: str = ""
    diverged: bool = False
    kept_epochs: int = 0
    # With TrainConfig.keep_best: the epoch (1-based) of the best validation accuracy, and
    # whether its weights were put back because the last epoch's were far worse.
    best_epoch: int | None = None
    restored_best: bool = False

    @property
    def status(self) -> str:
        return "diverged" if self.diverged else ("stopped" if self.stopped else "done")


class DivergenceError(RuntimeError):
    """Training diverged: raised inside a step when the loss is NaN or infinite, or runs away (see
    :class:`DivergenceGuard`); ``step`` is the global step."""

    def __init__(self, message: str, step: int) -> None:
        super().__init__(message)
        self.step = step


class DivergenceGuard:
    """The documented divergence rule, checked on every step before the optimiser step.

    Diverged: the loss (any term) is NaN or infinite; or the exponential moving average of
    the cross-entropy (weight 0.2 on the newest step, about 5 steps of memory) exceeds
    ``max(factor * L0, L0 + margin)``, L0 being the first step's cross-entropy (the only one
    this run's updates have not touched). Feedback terms are left out of the average: a
    penalty may start high when it is switched on mid-run, and weights it blows up show in
    the cross-entropy. For a
    fresh 10-class network L0 is about 2.3 (limit 23); for a fine-tune from a good model it is
    small (limit about L0 + 5, a loss no useful classifier has). Noise in single batches does
    not trip it; a learning rate that blows the weights up does within a few steps.
    """

    ALPHA = 0.2

    def __init__(self, factor: float | None = 10.0, margin: float = 5.0) -> None:
        self.factor = factor
        self.margin = float(margin)
        self.first: float | None = None
        self.smoothed: float | None = None

    @property
    def limit(self) -> float | None:
        if self.factor is None or self.first is None:
            return None
        return max(self.factor * self.first, self.first + self.margin)

    def check(self, loss: float, *, epoch: int, step: int) -> None:
        """Raise :class:`DivergenceError` if ``loss`` shows the run diverged."""
        if not math.isfinite(loss):
            raise DivergenceError(f"the loss became {loss} at epoch {epoch + 1}, step {step + 1}", step)
        if self.first is None:
            self.first = self.smoothed = loss
            return
        self.smoothed = self.ALPHA * loss + (1 - self.ALPHA) * self.smoothed
        limit = self.limit
        if limit is not None and self.smoothed > limit:
            raise DivergenceError(
                f"the classification loss ran away at epoch {epoch + 1}, step {step + 1} (smoothed {self.smoothed:.3g}, "
                f"limit {limit:.3g} = max({self.factor:g} x the first step's {self.first:.3g}, "
                f"{self.first:.3g} + {self.margin:g}))", step)


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """SGD with momentum over all parameters; frozen ones have no gradient and are skipped."""
    return torch.optim.SGD(
        model.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
    )


@dataclass
class EpochSettings:
    """What every epoch of one run shares: :func:`train_one_epoch`'s settings (built once by
    :func:`fit`, or by hand for a single pass).

    Loss = ``weights["cls"]`` x CE + sum(``weights[name]`` x term(model, batch)) over
    ``loss_terms``. ``ids``: the global example ids of the training rows (what a term's batch
    names its examples by). ``schedule(step) -> lr`` sets the learning rate of every step;
    ``guard`` watches the cross-entropy for a runaway. The two other paths are apart:
    ``parallel`` (data-parallel, see :class:`DataParallel`) and ``forward`` (a compiled
    model, see ``TrainConfig.compile``); neither takes extra loss terms, which need the features.
    """

    config: TrainConfig
    optimizer: torch.optim.Optimizer
    generator: torch.Generator
    device: torch.device
    ids: torch.Tensor | None = None
    loss_terms: Mapping[str, LossTerm] = field(default_factory=dict)
    weights: Mapping[str, float] = field(default_factory=dict)
    callbacks: Sequence[Callback] = ()
    control: TrainControl | None = None
    schedule: Callable[[int], float] | None = None
    guard: DivergenceGuard | None = None
    parallel: DataParallel | None = None
    forward: Callable[[torch.Tensor], torch.Tensor] | None = None

    def __post_init__(self) -> None:
        self.loss_terms = dict(self.loss_terms or {})
        self.weights = dict(self.weights or {})
        if self.parallel is not None and self.loss_terms:
            raise ValueError("extra loss terms are not supported in data-parallel training")
        if self.forward is not None and self.loss_terms:
            raise ValueError("extra loss terms are not supported with a compiled forward pass")


@dataclass
class _StepFigures:
    """One step's loss, cross-entropy, correct count and batch size (of the global batch when
    data-parallel), and each extra term's value."""

    loss: float
    ce: float
    correct: int
    n: int
    terms: dict[str, float]


def _batch_loss(model: SteerableModel, run: EpochSettings, x: torch.Tensor, y: torch.Tensor,
                batch_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict[str, float]]:
    """(weighted loss, cross-entropy, logits, term values) of one batch, under the run's autocast."""
    term_values: dict[str, float] = {}
    with autocast_for(run.config.precision, run.device):
        if run.forward is not None or run.parallel is not None:
            feats, logits = None, (run.forward if run.forward is not None else run.parallel.module)(x)
        else:
            feats = model.features(x)
            logits = model.head(feats)
        loss = ce = F.cross_entropy(logits, y)
        if run.loss_terms:
            loss = float(run.weights.get("cls", 1.0)) * loss
            batch = Batch(x, y, batch_ids, feats, logits)
            for name, term in run.loss_terms.items():
                value = term(model, batch)
                term_values[name] = float(value.detach())
                loss = loss + float(run.weights.get(name, 1.0)) * value
    return loss, ce, logits, term_values


def _step_figures(run: EpochSettings, loss: torch.Tensor, ce: torch.Tensor, logits: torch.Tensor, y: torch.Tensor,
                  terms: dict[str, float]) -> _StepFigures:
    """The figures the step reports; data-parallel: those of the whole global batch
    (all-reduced), so every process takes the same decisions."""
    correct, n = int((logits.detach().argmax(1) == y).sum()), len(y)
    if run.parallel is None:
        return _StepFigures(float(loss.detach()), float(ce.detach()), correct, n, terms)
    import torch.distributed as dist

    totals = torch.tensor([float(loss.detach()) * n, correct, n], dtype=torch.float64, device=run.device)
    dist.all_reduce(totals)
    value = float(totals[0] / totals[2])
    return _StepFigures(value, value, int(totals[1]), int(totals[2]), terms)  # no extra terms in data-parallel training


def _train_step(model: SteerableModel, run: EpochSettings, images: torch.Tensor, labels: torch.Tensor,
                idx: torch.Tensor, *, epoch: int, step: int) -> _StepFigures:
    """One optimiser step on the rows ``idx``. Raises :class:`DivergenceError` before the
    step when the loss is not finite or the guard sees the cross-entropy run away."""
    if run.schedule is not None:
        for group in run.optimizer.param_groups:
            group["lr"] = run.schedule(step)
    if run.parallel is not None:
        idx = shard(idx, run.parallel.rank, run.parallel.world_size)
    x = images[idx].to(run.device, non_blocking=True)
    y = labels[idx].to(run.device, non_blocking=True)
    run.optimizer.zero_grad(set_to_none=True)
    loss, ce, logits, terms = _batch_loss(model, run, x, y, run.ids[idx] if run.ids is not None else idx)
    figures = _step_figures(run, loss, ce, logits, y, terms)
    if not math.isfinite(figures.loss):  # NaN or inf in any term
        raise DivergenceError(f"the loss became {figures.loss} at epoch {epoch + 1}, step {step + 1}", step)
    if run.guard is not None:
        # the runaway rule watches the cross-entropy alone: weights that blow up show there,
        # while a feedback term may rightly start far above the first step's loss (a grid
        # penalty switched on mid-run at 60 after a CE of 0.05 is not a divergence)
        run.guard.check(figures.ce, epoch=epoch, step=step)
    loss.backward()
    if run.loss_terms and run.config.term_grad_norm is not None:
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.grad is not None],
                                       float(run.config.term_grad_norm))
    run.optimizer.step()
    return figures


def train_one_epoch(model: SteerableModel, images: torch.Tensor, labels: torch.Tensor, run: EpochSettings, *,
                    epoch: int, step0: int = 0) -> tuple[float, float, int, bool]:
    """One pass over ``images`` with ``run``'s settings, its steps numbered from ``step0``.
    Returns (mean loss, accuracy, steps done, stopped). Between steps it waits while
    ``run.control`` pauses, stops when asked and applies freezing changes."""
    control = run.control
    model.train()
    frozen = control.frozen() if control else set(frozen_groups(model))
    apply_freeze(model, frozen)
    total_loss, total_correct, total_seen, steps = 0.0, 0, 0, 0
    stopped = False
    for idx in batch_order(len(images), run.config.batch_size, run.generator):
        if control is not None:
            control.wait_while_paused()
            if control.stop_requested:
                stopped = True
                break
            wanted = control.frozen()
            if wanted != frozen:  # freeze/unfreeze between steps
                frozen = wanted
                apply_freeze(model, frozen)
        t0 = time.perf_counter()
        figures = _train_step(model, run, images, labels, idx, epoch=epoch, step=step0 + steps)
        total_loss += figures.loss * figures.n
        total_correct += figures.correct
        total_seen += figures.n
        info = StepInfo(epoch=epoch, step=step0 + steps, loss=figures.loss, accuracy=figures.correct / figures.n,
                        lr=run.optimizer.param_groups[0]["lr"], step_time=time.perf_counter() - t0,
                        frozen=tuple(sorted(frozen)), terms=figures.terms)
        steps += 1
        for cb in run.callbacks:
            cb.on_step(info)
    return total_loss / max(total_seen, 1), total_correct / max(total_seen, 1), steps, stopped


def _ends_in_eval_mode(run: Callable[..., "FitResult"]) -> Callable[..., "FitResult"]:
    """``run(model, ...)`` followed, however it ends, by ``model.eval()``: a trained model is
    handed on (made a version, shared with pages and other threads) in eval mode, the mode
    shared models stay in."""
    @functools.wraps(run)
    def wrapper(model: SteerableModel, *args, **kwargs) -> FitResult:
        try:
            return run(model, *args, **kwargs)
        finally:
            model.eval()
    return wrapper


@_ends_in_eval_mode
def fit(
    model: SteerableModel,
    train: tuple[torch.Tensor, torch.Tensor],
    val: tuple[torch.Tensor, torch.Tensor] | None = None,
    *,
    config: TrainConfig | None = None,
    train_ids: torch.Tensor | None = None,
    loss_terms: Mapping[str, LossTerm] | None = None,
    weights: Mapping[str, float] | None = None,
    callbacks: Sequence[Callback] = (),
    control: TrainControl | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    start_val_acc: float | None = None,
    distributed: bool = False,
) -> FitResult:
    """Train ``model`` for ``config.epochs`` epochs on ``train`` = (images, labels), with an
    evaluation on ``val`` after each epoch.

    Deterministic under ``config.seed``. Stops between steps when ``control`` asks. When the
    run diverges (:class:`DivergenceGuard`: a non-finite loss, or one far above the first
    step's), it stops and the model is put back to the weights of its last epoch whose
    validation accuracy was not worse than at the start, or to the weights it had before the
    run; ``FitResult.diverged`` is set and ``message`` says which. ``start_val_acc`` (the
    model's validation accuracy before the run) saves one evaluation when the caller knows it.

    ``config.keep_best``: remember the weights of the epoch with the best validation accuracy;
    when the run ends (not stopped) with the last epoch's more than ``config.keep_best_margin``
    below it, put them back and say so in ``message`` (``FitResult.restored_best``).

    ``distributed``: train data-parallel over the ``torch.distributed`` process group this
    process belongs to (torchrun; see :func:`data_parallel`), ``config.batch_size`` being the
    global batch. Every process runs this with the same arguments and ends with the same weights.

    ``model`` is this run's own (train a deep copy of a shared model, as the workbench does):
    it is switched to train mode for the steps and to eval mode for each validation, and left
    in eval mode when the run ends, however it ends.
    """
    config = config or TrainConfig()
    run = _epoch_settings(model, config, len(train[0]), train_ids=train_ids, loss_terms=loss_terms, weights=weights,
                          callbacks=callbacks, control=control, optimizer=optimizer, distributed=distributed)
    state = _RunState(start_state=copy.deepcopy(model.state_dict()), start_val_acc=start_val_acc)
    state.fallback = state.start_state
    images, labels = train
    for epoch in range(config.epochs):
        t0 = time.perf_counter()
        paused0 = control.paused_seconds if control is not None else 0.0
        try:
            loss, acc, n, stopped = train_one_epoch(model, images, labels, run, epoch=epoch, step0=state.steps)
        except DivergenceError as exc:
            return _rolled_back(model, state, exc)
        state.steps += n
        # running time only: a minute paused mid-epoch (Monitor's pause) must not make the epoch look slow
        paused = (control.paused_seconds - paused0) if control is not None else 0.0
        epoch_time = max(time.perf_counter() - t0 - paused, 0.0)
        if stopped and n == 0:
            break
        val_loss, val_acc = _validate(model, val, run, state, epoch)
        info = EpochInfo(epoch=epoch, train_loss=loss, train_acc=acc, val_loss=val_loss, val_acc=val_acc,
                         epoch_time=epoch_time, lr=run.optimizer.param_groups[0]["lr"], steps=n,
                         frozen=frozen_groups(model))
        state.history.append(info)
        for cb in callbacks:
            cb.on_epoch(info)
        if stopped:
            break
        _remember_fallback(model, val, run, state, val_acc, epoch)
        if control is not None and control.pause_at_epoch_end and epoch + 1 < config.epochs:
            control.pause()
            control.wait_while_paused()
            if control.stop_requested:
                return FitResult(state.history, state.steps, stopped=True, message="Stopped after a pause.")
    return _finished(model, state, config, control)


@dataclass
class _RunState:
    """What :func:`fit` tracks across epochs: the history, the steps done, the weights a
    divergence rolls back to (``fallback``, after ``fallback_epochs`` epochs; at first the
    weights before the run) and the best epoch so far for ``keep_best`` (val acc, epoch, weights)."""

    start_state: dict
    start_val_acc: float | None = None
    history: list[EpochInfo] = field(default_factory=list)
    steps: int = 0
    fallback: dict | None = None
    fallback_epochs: int = 0
    best: tuple[float, int, dict] | None = None


def _epoch_settings(model: SteerableModel, config: TrainConfig, n_train: int, *, train_ids: torch.Tensor | None,
                    loss_terms: Mapping[str, LossTerm] | None, weights: Mapping[str, float] | None,
                    callbacks: Sequence[Callback], control: TrainControl | None,
                    optimizer: torch.optim.Optimizer | None, distributed: bool) -> EpochSettings:
    """The run's :class:`EpochSettings`: the device (the model moved there), the data-parallel
    or compiled path, the optimiser, the seeded batch order, the cosine schedule and the guard."""
    device = pick_device(config.device)
    model.to(device)
    parallel = data_parallel(model, device) if distributed else None
    autocast_for(config.precision, device)  # an unknown precision fails here, before any step
    forward = None
    if config.compile:
        if loss_terms:
            raise ValueError("TrainConfig.compile is for plain training: extra loss terms need the features")
        forward = torch.compile(parallel.module if parallel is not None else model)
    total_steps = config.epochs * math.ceil(n_train / config.batch_size)
    schedule = None
    if config.cosine:
        schedule = lambda s: 0.5 * config.lr * (1 + math.cos(math.pi * min(s, total_steps) / total_steps))  # noqa: E731
    return EpochSettings(config=config, optimizer=optimizer or make_optimizer(model, config),
                         generator=torch.Generator().manual_seed(config.seed), device=device, ids=train_ids,
                         loss_terms=loss_terms or {}, weights=weights or {}, callbacks=callbacks, control=control,
                         schedule=schedule, guard=DivergenceGuard(config.diverge_factor, config.diverge_margin),
                         parallel=parallel, forward=forward)


def _rolled_back(model: SteerableModel, state: _RunState, exc: DivergenceError) -> FitResult:
    """The run diverged: put the fallback weights back and say which they are."""
    model.load_state_dict(state.fallback)
    where = ("the weights it had before the run" if state.fallback_epochs == 0 else
             f"its weights after epoch {state.fallback_epochs} (validation accuracy not worse than at the start)")
    msg = f"Training diverged: {exc}. The model was put back to {where}."
    log.warning(msg)
    return FitResult(state.history, exc.step, stopped=True, rolled_back=True, message=msg, diverged=True,
                     kept_epochs=state.fallback_epochs)


def _validate(model: SteerableModel, val: tuple[torch.Tensor, torch.Tensor] | None, run: EpochSettings,
              state: _RunState, epoch: int) -> tuple[float | None, float | None]:
    """(val loss, val accuracy) after ``epoch``, or (None, None) without a val split; with
    ``keep_best``, remembers the weights just evaluated when they are the best so far."""
    if val is None or not len(val[0]):
        return None, None
    model.eval()  # this run's own model (train_one_epoch switches it back): no copy to evaluate
    ev = evaluate(model, val[0], val[1], batch_size=run.config.eval_batch_size, device=run.device)
    if run.config.keep_best and (state.best is None or ev.accuracy > state.best[0]):
        state.best = (ev.accuracy, epoch + 1, copy.deepcopy(model.state_dict()))
    return ev.loss, ev.accuracy


def _remember_fallback(model: SteerableModel, val: tuple[torch.Tensor, torch.Tensor] | None, run: EpochSettings,
                       state: _RunState, val_acc: float | None, epoch: int) -> None:
    """After an epoch that was not worse on val than the start, a divergence later rolls back to it."""
    if val_acc is not None and state.start_val_acc is None:
        state.start_val_acc = _accuracy_of(model, state.start_state, val, run.config, run.device)
    if val_acc is None or val_acc >= state.start_val_acc:
        state.fallback, state.fallback_epochs = copy.deepcopy(model.state_dict()), epoch + 1


def _finished(model: SteerableModel, state: _RunState, config: TrainConfig, control: TrainControl | None) -> FitResult:
    """How a run that did not diverge ended; with ``keep_best``, the best epoch's weights put
    back when the last epoch's validation accuracy fell more than the margin below it."""
    stopped = bool(control and control.stop_requested)
    result = FitResult(state.history, state.steps, stopped=stopped, message="Stopped by request." if stopped else "")
    if state.best is None:
        return result
    best_acc, best_epoch, best_weights = state.best
    result.best_epoch = best_epoch
    last = state.history[-1]
    if not stopped and last.val_acc is not None and best_acc - last.val_acc > config.keep_best_margin:
        model.load_state_dict(best_weights)
        result.restored_best = True
        result.message = (f"validation accuracy fell from {100 * best_acc:.1f}% at epoch {best_epoch} to "
                          f"{100 * last.val_acc:.1f}% at epoch {last.epoch + 1}; kept epoch {best_epoch}'s weights")
        log.warning(result.message)
    return result


def _accuracy_of(model: SteerableModel, state: dict, val: tuple[torch.Tensor, torch.Tensor], config: TrainConfig,
                 device: torch.device) -> float:
    """Validation accuracy of ``model``'s architecture with the weights ``state`` (a scratch copy)."""
    scratch = copy.deepcopy(model)
    scratch.load_state_dict(state)
    return evaluate(scratch, val[0], val[1], batch_size=config.eval_batch_size, device=device).accuracy


def fine_tune(
    model: SteerableModel,
    data,
    extra_loss_terms: Mapping[str, LossTerm] | None = None,
    weights: Mapping[str, float] | None = None,
    epochs: int = 2,
    *,
    config: TrainConfig | None = None,
    callbacks: Sequence[Callback] = (),
    control: TrainControl | None = None,
) -> FitResult:
    """Fine-tune on ``data``'s train split with CE plus weighted extra loss terms (the
    feedback kinds), validating on its val split. ``weights`` may hold "cls" for the CE term.
    """
    cfg = dataclasses.replace(config, epochs=epochs) if config else TrainConfig(epochs=epochs, lr=0.04)
    train_ids = torch.as_tensor(data.ids("train"), dtype=torch.long)
    return fit(
        model,
        data.split("train"),
        data.split("val"),
        config=cfg,
        train_ids=train_ids,
        loss_terms=extra_loss_terms,
        weights=weights,
        callbacks=callbacks,
        control=control,
    )
