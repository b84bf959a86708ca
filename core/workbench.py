"""What one user works on: a dataset, the current model, an ordered history of model versions,
annotations, and per-version caches. Everything that took effort is in the store on disk."""
from __future__ import annotations

import copy
import logging
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from core.data import ImageDataset, load_dataset
from core.engine import (
    Callback,
    EvalResult,
    FitResult,
    LossTerm,
    TrainConfig,
    evaluate,
    fit,
    pick_device,
)
from core.jobs import Job, JobRunner
from core.models import (
    SteerableModel,
    build_model,
    load_checkpoint,
    model_from_checkpoint,
    read_checkpoint,
    save_checkpoint,
)
from core.store import Annotation, Store, VersionRecord

log = logging.getLogger(__name__)


def base_key(data_source: str, arch: str, seed: int = 0) -> str:
    """File-name-safe key of a base model for a dataset source, architecture and seed."""
    slug = re.sub(r"[^A-Za-z0-9]+", "-", str(data_source)).strip("-")[-60:] or "data"
    return f"{slug}__{arch}__s{seed}"


def base_checkpoint_path(store: Store, data_source: str, arch: str, seed: int = 0) -> Path:
    return store.base_dir() / f"{base_key(data_source, arch, seed)}.pt"


def version_metrics(model: SteerableModel, data: ImageDataset, device: torch.device | None = None) -> dict[str, Any]:
    """Accuracies (fractions in [0, 1]) of ``model`` on val and test, and per class on test."""
    out: dict[str, Any] = {}
    for split in ("val", "test"):
        if split in data.splits and len(data.splits[split]):
            ev = evaluate(model, *data.split(split), device=device)
            out[f"{split}_acc"] = ev.accuracy
            if split == "test":
                out["test_per_class_acc"] = [None if np.isnan(a) else float(a) for a in ev.per_class_accuracy]
    return out


def train_base_model(
    data: ImageDataset,
    arch: str,
    *,
    config: TrainConfig | None = None,
    callbacks: Sequence[Callback] = (),
    control=None,
) -> tuple[SteerableModel, FitResult]:
    """Build ``arch`` for ``data`` and train it from scratch on the train split."""
    config = config or TrainConfig()
    c, h, _ = data.image_shape
    model = build_model(arch, c, h, data.num_classes, seed=config.seed)
    result = fit(model, data.split("train"), data.split("val"), config=config, callbacks=callbacks, control=control)
    return model.cpu(), result


class Workbench:
    """One user's dataset, model, versions and annotations.

    The current model is only replaced under ``lock`` and only by a finished job, so pages
    can always draw from it while a copy trains in the background.
    """

    def __init__(self, store: Store, wb_id: str, data: ImageDataset, data_source: str, arch: str,
                 model: SteerableModel, settings: dict[str, Any], current_version: int) -> None:
        self.store = store
        self.id = wb_id
        self.data = data
        self.data_source = data_source
        self.arch = arch
        self.settings = settings
        self.model = model
        self.current_version = current_version
        self.lock = threading.RLock()
        self.jobs = JobRunner()
        self._cache: dict[tuple[int, str, bool], EvalResult] = {}

    # ------------------------------------------------------------------ creation
    @classmethod
    def create(cls, store: Store, data: ImageDataset, data_source: str, base_model: SteerableModel,
               *, base_checkpoint: str | Path | None = None, settings: dict[str, Any] | None = None,
               description: str = "base model", metrics: dict[str, Any] | None = None) -> "Workbench":
        """A new workbench whose version 0 is (a deep copy of) ``base_model``.

        ``base_checkpoint``: an existing read-only checkpoint of the base model to point
        version 0 at instead of writing a copy.
        """
        arch = base_model.info.arch
        settings = dict(settings or {})
        record = store.create_workbench(data_source, arch, settings)
        model = copy.deepcopy(base_model).cpu().train()
        wb = cls(store, record.id, data, data_source, arch, model, settings, 0)
        if base_checkpoint is None:
            base_checkpoint = store.workbench_dir(wb.id) / "v0.pt"
            save_checkpoint(model, base_checkpoint, data.classes, {"description": description})
        if metrics is None:  # a shared base model's metrics can be computed once and passed in
            metrics = version_metrics(model, data)
        store.add_version(wb.id, VersionRecord(0, None, time.time(), description, str(base_checkpoint), {}, dict(metrics)))
        return wb

    @classmethod
    def open(cls, store: Store, wb_id: str, *, loader: Callable[..., ImageDataset] | None = None) -> "Workbench":
        """Reopen a workbench by id with its current version loaded.

        Raises ``KeyError`` for an unknown id. ``loader(source, seed=...)`` loads the dataset
        (defaults to :func:`core.data.load_dataset`; the app passes a cached one).
        """
        record = store.get_workbench(wb_id)
        if record is None:
            raise KeyError(f"No workbench with id {wb_id!r} in {store.root}")
        loader = loader or load_dataset
        data = loader(record.data_source, seed=int(record.settings.get("data_seed", 0)))
        versions = {v.number: v for v in store.versions(wb_id)}
        current = record.current_version if record.current_version in versions else max(versions)
        model = model_from_checkpoint(versions[current].checkpoint)
        return cls(store, wb_id, data, record.data_source, record.arch, model, record.settings, current)

    # ------------------------------------------------------------------ versions
    def versions(self) -> list[VersionRecord]:
        return self.store.versions(self.id)

    def version(self, number: int) -> VersionRecord:
        for v in self.versions():
            if v.number == number:
                return v
        raise KeyError(f"Workbench {self.id} has no version {number}")

    def commit_version(self, model: SteerableModel, description: str, feedback: Mapping[str, Any] | None = None,
                       extra_metrics: Mapping[str, Any] | None = None) -> VersionRecord:
        """Save ``model`` as a new version (checkpoint first, then the database row) and make
        it the current model."""
        model = model.cpu()
        metrics = version_metrics(model, self.data)
        metrics.update(extra_metrics or {})
        with self.lock:
            number = self.store.next_version_number(self.id)
            path = self.store.workbench_dir(self.id) / f"v{number}.pt"
            save_checkpoint(model, path, self.data.classes, {"description": description, "feedback": dict(feedback or {})})
            record = VersionRecord(number, self.current_version, time.time(), description, str(path), dict(feedback or {}), metrics)
            self.store.add_version(self.id, record)
            self.model = model
            self.current_version = number
        return record

    def restore(self, number: int) -> None:
        """Make version ``number`` current (its checkpoint is loaded all-or-nothing)."""
        record = self.version(number)
        ckpt = read_checkpoint(record.checkpoint)
        model = copy.deepcopy(self.model)
        load_checkpoint(model, ckpt)
        with self.lock:
            self.model = model
            self.current_version = number
            self.store.update_workbench(self.id, current_version=number)

    def reset(self) -> None:
        """Back to the base model (version 0)."""
        self.restore(0)

    def checkpoint_bytes(self, number: int) -> bytes:
        """A version's checkpoint file, for downloading."""
        return Path(self.version(number).checkpoint).read_bytes()

    # ------------------------------------------------------------------ evaluation caches
    def evaluation(self, split: str = "test", *, with_features: bool = False) -> EvalResult:
        """Predictions of the current version on ``split``, computed once per version."""
        with self.lock:
            version, model = self.current_version, self.model
        key = (version, split, with_features)
        hit = self._cache.get(key) or (self._cache.get((version, split, True)) if not with_features else None)
        if hit is not None:
            return hit
        result = evaluate(model, *self.data.split(split), with_features=with_features)
        # keep the caches of the current version only: memory stays bounded
        self._cache = {k: v for k, v in self._cache.items() if k[0] == version}
        self._cache[key] = result
        return result

    # ------------------------------------------------------------------ annotations
    def add_annotations(self, kind: str, items: list[tuple[int, dict[str, Any]]]) -> list[int]:
        return self.store.add_annotations(self.id, kind, items)

    def annotations(self, kind: str | None = None) -> list[Annotation]:
        return self.store.annotations(self.id, kind)

    def replace_annotations(self, kind: str, items: list[tuple[int, dict[str, Any]]]) -> None:
        self.store.replace_annotations(self.id, kind, items)

    def update_settings(self, **values: Any) -> None:
        """Merge ``values`` into the workbench's settings and write them to the store at once."""
        with self.lock:
            self.settings = {**self.settings, **values}
            self.store.update_workbench(self.id, settings=self.settings)

    def clear_annotations(self, kind: str) -> None:
        self.store.delete_annotations(self.id, kind=kind)

    # ------------------------------------------------------------------ background work
    def start_training(
        self,
        config: TrainConfig,
        *,
        description: str,
        loss_terms: Mapping[str, LossTerm] | None = None,
        weights: Mapping[str, float] | None = None,
        feedback: Mapping[str, Any] | None = None,
        train: tuple[torch.Tensor, torch.Tensor] | None = None,
        train_ids: torch.Tensor | None = None,
        listeners: Sequence[Callback] = (),
        keep_if_stopped: bool = True,
        frozen: Sequence[str] = (),
        attach: Callable[[SteerableModel], Sequence[Callback]] | None = None,
        pause_at_epoch_end: bool = False,
    ) -> Job:
        """Train a copy of the current model in the background; when it ends (or is stopped
        with ``keep_if_stopped``), it becomes a new version. Returns the job to poll.

        ``attach(model)`` builds callbacks bound to the training copy (statistics hooks, probes);
        they are kept in ``job.attached`` and the copy in ``job.model`` for the pages to read.
        """
        images, labels = train if train is not None else self.data.split("train")
        if train is None:
            train_ids = torch.as_tensor(self.data.ids("train"), dtype=torch.long)
        steps_per_epoch = -(-len(images) // config.batch_size)
        job = Job("train", config.epochs * steps_per_epoch, description, total_epochs=config.epochs)
        job.listeners = list(listeners)
        job.control.set_frozen(frozen)
        job.control.pause_at_epoch_end = pause_at_epoch_end
        with self.lock:
            model = copy.deepcopy(self.model)
        pick_device(config.device)  # fails now, in the page, if the device is not there
        job.model = model
        job.attached = list(attach(model)) if attach is not None else []
        job.listeners.extend(job.attached)

        def work(job: Job) -> VersionRecord | None:
            try:
                return run(job)
            finally:
                for cb in job.attached:  # remove statistics hooks from the (now finished) copy
                    close = getattr(cb, "close", None)
                    if callable(close):
                        close()

        def run(job: Job) -> VersionRecord | None:
            result = fit(model, (images, labels), self.data.split("val"), config=config, train_ids=train_ids,
                         loss_terms=loss_terms, weights=weights, callbacks=[job], control=job.control)
            job.message = result.message
            if result.rolled_back:
                job.status = "failed"
                job.error = result.message
                if result.steps == 0:
                    return None
            if result.steps == 0 or (result.stopped and not keep_if_stopped):
                return None
            note = description if not result.stopped else f"{description} (stopped after {result.steps} steps)"
            fb = dict(feedback or {})
            fb.update({"epochs": len(result.history), "steps": result.steps, "lr": config.lr,
                       "frozen": sorted(job.control.frozen())})
            return self.commit_version(model, note, fb, {"history": [
                {k: e[k] for k in ("epoch", "train_loss", "train_acc", "val_acc", "epoch_time")} for e in job.epochs]})

        return self.jobs.start(job, work)
