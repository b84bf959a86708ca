"""Read-only base models shared by every workbench on a server: loaded from the workspace's
``base/`` folder, or trained once in the background and written there."""
from __future__ import annotations

import dataclasses
import math
import threading
from dataclasses import dataclass
from typing import Any

from core.data import ImageDataset
from core.engine import TrainConfig
from core.session.jobs import ComputeBudget, Job, JobRunner
from core.models import SteerableModel, build_model, model_from_checkpoint, read_checkpoint, save_checkpoint
from core.session.store import Store
from core.session.workbench import base_checkpoint_path, train_base_model, version_metrics

# Defaults from a sweep on the bundled digits: about 98% test accuracy.
DEFAULT_BASE_CONFIG = TrainConfig(epochs=10, batch_size=64, lr=0.02, seed=0, keep_best=True)
# Colour/shortcut sets learn their shortcut fast and then bounce at lr 0.02 (biased-digits, seed 0:
# val 94% at epoch 4, 46% at epoch 10, test at chance); at 0.005 val reaches 100% on seeds 0-2.
SHORTCUT_PREFIXES = ("biased-digits", "decoy-digits", "texture-digits")
SHORTCUT_LR = 0.005
SMALL_COLOUR_TRAIN = 5000  # 3-channel sets with at most this many training images get SHORTCUT_LR too


def base_config(source: str, data: ImageDataset, seed: int = 0) -> TrainConfig:
    """The settings every base model of ``source`` trains with (the app's and ``python -m
    core.train``'s defaults): DEFAULT_BASE_CONFIG (10 epochs, batch 64, lr 0.02, best validation
    epoch kept), with lr 0.005 for the colour/shortcut sets (sources starting with one of
    SHORTCUT_PREFIXES) and for small 3-channel sets (at most SMALL_COLOUR_TRAIN training images
    of at most 32 pixels a side)."""
    lr = DEFAULT_BASE_CONFIG.lr
    c, h, w = data.image_shape
    if str(source).strip().lower().startswith(SHORTCUT_PREFIXES):
        lr = SHORTCUT_LR
    elif c == 3 and max(h, w) <= 32 and len(data.ids("train")) <= SMALL_COLOUR_TRAIN:
        lr = SHORTCUT_LR
    return dataclasses.replace(DEFAULT_BASE_CONFIG, lr=lr, seed=seed)


CHANCE_FACTOR = 1.5  # "at chance": accuracy below 1.5 x chance (and below chance + 20% of the rest)


def chance_warning(metrics: dict[str, Any] | None, num_classes: int, *, can_reset: bool = True) -> str | None:
    """One line when a model's validation accuracy (its test accuracy if it has no val) is at or
    near chance for ``num_classes`` classes, saying what to do; None otherwise or without metrics.
    Near chance: below min(1.5 / num_classes, chance + 0.2 * (1 - chance)), so two classes need 60%.
    ``can_reset``: whether "Reset to base" is an option (False for the base version itself)."""
    if not metrics or num_classes < 2:
        return None
    split, acc = "val", metrics.get("val_acc")
    if acc is None:
        split, acc = "test", metrics.get("test_acc")
    if acc is None or not isinstance(acc, (int, float)) or math.isnan(acc):
        return None
    chance = 1.0 / num_classes
    if acc >= min(CHANCE_FACTOR * chance, chance + 0.2 * (1 - chance)):
        return None
    todo = f"train it again from Home with a lower learning rate (e.g. {SHORTCUT_LR:g})"
    todo += ", or Reset to base." if can_reset else "."
    return f"This model is at chance level ({split} {100 * acc:.1f}%, chance {100 * chance:.3g}%): {todo}"


@dataclass
class BaseStatus:
    """A base model if it is ready, else the job training it (or None if none was asked)."""

    model: SteerableModel | None
    job: Job | None
    path: str
    metrics: dict | None = None


def base_meta(source: str, data: ImageDataset, metrics: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """Checkpoint meta of a base model: its source, its metrics, and the fingerprint of the
    splits they were computed on (a later load reuses them only for the same splits)."""
    return {"data": source, **extra, "metrics": metrics, "eval_fingerprint": data.eval_fingerprint()}


def config_meta(config: TrainConfig) -> dict[str, Any]:
    """The settings a base model was trained with, for its checkpoint meta."""
    return {k: getattr(config, k) for k in ("epochs", "batch_size", "lr", "seed", "keep_best")}


class BaseModels:
    """Thread-safe registry of base models per (data source, architecture, seed).

    Models handed out are shared: callers must deep-copy before changing them (the
    workbench does).
    """

    def __init__(self, store: Store, budget: ComputeBudget | None = None) -> None:
        self.store = store
        self.budget = budget
        self._lock = threading.Lock()  # guards the dicts below, held only for a look-up or a store
        self._key_locks: dict[str, threading.Lock] = {}  # one per base model: held while it loads or evaluates
        self._models: dict[str, SteerableModel] = {}
        self._metrics: dict[str, dict] = {}
        self._jobs: dict[str, Job] = {}

    def _key_lock(self, key: str) -> threading.Lock:
        with self._lock:
            return self._key_locks.setdefault(key, threading.Lock())

    def status(self, data: ImageDataset, source: str, arch: str, *, train: bool = False,
               config: TrainConfig | None = None) -> BaseStatus:
        """The base model for ``source`` and ``arch``: from memory, from disk, or (with
        ``train``) trained in the background on first request.

        Loading, evaluating and writing a base model hold that base model's own lock only, so
        two different base models load (or are evaluated) at the same time while two callers
        of the same one wait for the one load and evaluation."""
        config = config or base_config(source, data)
        path = base_checkpoint_path(self.store, source, arch, config.seed)
        key = str(path)
        with self._key_lock(key):
            with self._lock:
                model, metrics = self._models.get(key), self._metrics.get(key)
            if model is None and path.is_file():
                ckpt = read_checkpoint(path)
                model = model_from_checkpoint(ckpt)
                stored = ckpt.get("meta") or {}
                if stored.get("metrics") and stored.get("eval_fingerprint") == data.eval_fingerprint():
                    metrics = stored["metrics"]  # evaluated on these very splits when saved
            if model is not None:
                if metrics is None:  # once per base model, not once per workbench
                    metrics = version_metrics(model, data)
                with self._lock:
                    model = self._models.setdefault(key, model)  # a finished training job may have put one
                    metrics = self._metrics.setdefault(key, metrics)
                if not path.is_file():  # the workspace was deleted under the server: write it again
                    save_checkpoint(model, key, data.classes, base_meta(source, data, metrics))
                return BaseStatus(model, None, key, metrics)
            with self._lock:
                job = self._jobs.get(key)
            if job is None or job.status in ("failed", "stopped", "diverged"):
                if not train:
                    return BaseStatus(None, job, key)
                job = self._start(data, source, arch, config, key)
            return BaseStatus(None, job, key)

    def _start(self, data: ImageDataset, source: str, arch: str, config: TrainConfig, key: str) -> Job:
        steps = config.epochs * -(-len(data.ids("train")) // config.batch_size)
        job = Job("base", steps, f"base model: {arch} on {source}")

        def work(job: Job) -> str | None:
            model, result = train_base_model(data, arch, config=config, callbacks=[job], control=job.control)
            if result.diverged:
                job.declare("diverged", result.message)
                return None
            if result.stopped:
                raise RuntimeError(result.message or "base training was stopped")
            metrics = version_metrics(model, data)
            extra = {"config": config_meta(config)}
            if result.restored_best:
                extra["message"] = result.message
                with job._lock:
                    job.message = f"Base model: {result.message}."
            with self._key_lock(key):  # no status() loads the file between the write and the publishing
                save_checkpoint(model, key, data.classes, base_meta(source, data, metrics, **extra))
                with self._lock:  # both at once: a reader never sees the model without its metrics
                    self._metrics[key] = metrics
                    self._models[key] = model.eval()  # already in eval mode (fit leaves it so); shared from here on
            return key

        with self._lock:
            self._jobs[key] = job
        JobRunner(self.budget).start(job, work)
        return job


def untrained_model(data: ImageDataset, arch: str, seed: int = 0) -> SteerableModel:
    """A freshly initialised model for ``data`` (version 0 when no base model exists yet)."""
    c, h, _ = data.image_shape
    return build_model(arch, c, h, data.num_classes, seed=seed)
