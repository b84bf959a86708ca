"""One training engine for every page: train, evaluate, fit and fine-tune with callbacks,
layer freezing, stop/pause between steps and roll-back on a non-finite loss.

In the spirit of torchvision's reference scripts: flat functions, no framework. Datasets are
in-memory tensors (see ``core.data``), so batches are plain index gathers: no DataLoader
workers to start, which matters on a 2-core machine and keeps every run deterministic.
"""
from __future__ import annotations

import copy
import dataclasses
import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

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

    def wait_while_paused(self) -> None:
        """Block the calling (training) thread while paused and no stop is asked."""
        with self._cond:
            self.waiting = self._paused and not self._stop
            while self._paused and not self._stop:
                self._cond.wait(timeout=0.5)
            self.waiting = False


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
    """Logits (and features) for ``images``, in eval mode; the model's mode is restored."""
    device = torch.device(device) if device is not None else _model_device(model)
    was_training = model.training
    model.eval()
    logits, feats = [], []
    try:
        for start in range(0, len(images), batch_size):
            x = images[start : start + batch_size].to(device, non_blocking=True)
            f = model.features(x)
            logits.append(model.head(f).float().cpu())
            if with_features:
                feats.append(f.float().cpu())
    finally:
        model.train(was_training)
        if was_training:
            apply_freeze(model, frozen_groups(model))
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


@dataclass
class FitResult:
    """How a run ended."""

    history: list[EpochInfo]
    steps: int
    stopped: bool = False
    rolled_back: bool = False
    message: str = ""

    @property
    def ok(self) -> bool:
        return not self.rolled_back


class NonFiniteLoss(RuntimeError):
    """Raised inside a step when the loss is NaN or infinite; ``step`` is the global step."""

    def __init__(self, message: str, step: int) -> None:
        super().__init__(message)
        self.step = step


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """SGD with momentum over all parameters; frozen ones have no gradient and are skipped."""
    return torch.optim.SGD(
        model.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
    )


def train_one_epoch(
    model: SteerableModel,
    optimizer: torch.optim.Optimizer,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    epoch: int,
    config: TrainConfig,
    generator: torch.Generator,
    device: torch.device,
    ids: torch.Tensor | None = None,
    loss_terms: Mapping[str, LossTerm] | None = None,
    weights: Mapping[str, float] | None = None,
    callbacks: Sequence[Callback] = (),
    control: TrainControl | None = None,
    step0: int = 0,
    schedule: Callable[[int], float] | None = None,
) -> tuple[float, float, int, bool]:
    """One pass over ``images``. Returns (mean loss, accuracy, steps done, stopped).

    Loss = weights["cls"] * CE + sum(weights[name] * term(model, batch)). Raises
    :class:`NonFiniteLoss` before the optimiser step when the loss is not finite.
    """
    loss_terms = dict(loss_terms or {})
    weights = dict(weights or {})
    w_cls = float(weights.get("cls", 1.0))
    model.train()
    frozen = control.frozen() if control else set(frozen_groups(model))
    apply_freeze(model, frozen)
    total_loss, total_correct, total_seen, steps = 0.0, 0, 0, 0
    stopped = False
    for idx in batch_order(len(images), config.batch_size, generator):
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
        step = step0 + steps
        if schedule is not None:
            for group in optimizer.param_groups:
                group["lr"] = schedule(step)
        x = images[idx].to(device, non_blocking=True)
        y = labels[idx].to(device, non_blocking=True)
        optimizer.zero_grad(set_to_none=True)
        feats = model.features(x)
        logits = model.head(feats)
        loss = F.cross_entropy(logits, y)
        term_values: dict[str, float] = {}
        if loss_terms:
            loss = w_cls * loss
            batch = Batch(x, y, (ids[idx] if ids is not None else idx), feats, logits)
            for name, term in loss_terms.items():
                value = term(model, batch)
                term_values[name] = float(value.detach())
                loss = loss + float(weights.get(name, 1.0)) * value
        loss_value = float(loss.detach())
        if not math.isfinite(loss_value):
            raise NonFiniteLoss(f"loss became {loss_value} at epoch {epoch + 1}, step {step + 1}", step)
        loss.backward()
        optimizer.step()
        correct = int((logits.detach().argmax(1) == y).sum())
        n = len(y)
        total_loss += loss_value * n
        total_correct += correct
        total_seen += n
        steps += 1
        info = StepInfo(
            epoch=epoch,
            step=step,
            loss=loss_value,
            accuracy=correct / n,
            lr=optimizer.param_groups[0]["lr"],
            step_time=time.perf_counter() - t0,
            frozen=tuple(sorted(frozen)),
            terms=term_values,
        )
        for cb in callbacks:
            cb.on_step(info)
    mean_loss = total_loss / max(total_seen, 1)
    acc = total_correct / max(total_seen, 1)
    return mean_loss, acc, steps, stopped


def _weights_finite(model: nn.Module) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in model.state_dict().values() if t.is_floating_point())


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
) -> FitResult:
    """Train ``model`` for ``config.epochs`` epochs on ``train`` = (images, labels), with an
    evaluation on ``val`` after each epoch.

    Deterministic under ``config.seed``. Stops between steps when ``control`` asks. When the
    loss becomes NaN or infinite, the run stops and the model is put back to the last weights
    that gave a finite loss (the start of the failing epoch at the latest), and
    ``FitResult.message`` says so.
    """
    config = config or TrainConfig()
    device = pick_device(config.device)
    model.to(device)
    optimizer = optimizer or make_optimizer(model, config)
    generator = torch.Generator().manual_seed(config.seed)
    images, labels = train
    total_steps = config.epochs * math.ceil(len(images) / config.batch_size)
    schedule = None
    if config.cosine:
        schedule = lambda s: 0.5 * config.lr * (1 + math.cos(math.pi * min(s, total_steps) / total_steps))  # noqa: E731
    history: list[EpochInfo] = []
    steps = 0
    last_good = copy.deepcopy(model.state_dict())
    last_good_opt = copy.deepcopy(optimizer.state_dict())
    for epoch in range(config.epochs):
        t0 = time.perf_counter()
        try:
            loss, acc, n, stopped = train_one_epoch(
                model, optimizer, images, labels, epoch=epoch, config=config, generator=generator,
                device=device, ids=train_ids, loss_terms=loss_terms, weights=weights,
                callbacks=callbacks, control=control, step0=steps, schedule=schedule,
            )
        except NonFiniteLoss as exc:
            # The weights before the failing step may already be broken (a huge update the
            # step before); keep them only if they are all finite.
            if not _weights_finite(model):
                model.load_state_dict(last_good)
                optimizer.load_state_dict(last_good_opt)
            msg = f"Training stopped: {exc}. The model was restored to its last good weights."
            log.warning(msg)
            return FitResult(history, exc.step, stopped=True, rolled_back=True, message=msg)
        steps += n
        epoch_time = time.perf_counter() - t0
        if stopped and n == 0:
            break
        val_loss = val_acc = None
        if val is not None and len(val[0]):
            ev = evaluate(model, val[0], val[1], batch_size=config.eval_batch_size, device=device)
            val_loss, val_acc = ev.loss, ev.accuracy
        info = EpochInfo(
            epoch=epoch, train_loss=loss, train_acc=acc, val_loss=val_loss, val_acc=val_acc,
            epoch_time=epoch_time, lr=optimizer.param_groups[0]["lr"], steps=n,
            frozen=frozen_groups(model),
        )
        history.append(info)
        for cb in callbacks:
            cb.on_epoch(info)
        if stopped:
            break
        last_good = copy.deepcopy(model.state_dict())
        last_good_opt = copy.deepcopy(optimizer.state_dict())
        if control is not None and control.pause_at_epoch_end and epoch + 1 < config.epochs:
            control.pause()
            control.wait_while_paused()
            if control.stop_requested:
                return FitResult(history, steps, stopped=True, message="Stopped after a pause.")
    stopped = bool(control and control.stop_requested)
    return FitResult(history, steps, stopped=stopped, message="Stopped by request." if stopped else "")


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
