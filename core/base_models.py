"""Read-only base models shared by every workbench on a server: loaded from the workspace's
``base/`` folder, or trained once in the background and written there."""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from core.data import ImageDataset
from core.engine import TrainConfig
from core.jobs import ComputeBudget, Job, JobRunner
from core.models import SteerableModel, build_model, model_from_checkpoint, read_checkpoint, save_checkpoint
from core.store import Store
from core.workbench import base_checkpoint_path, train_base_model, version_metrics

# Defaults from a sweep on the bundled digits: about 98% test accuracy in ~10 s on 2 cores.
DEFAULT_BASE_CONFIG = TrainConfig(epochs=10, batch_size=64, lr=0.02, seed=0)


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


class BaseModels:
    """Thread-safe registry of base models per (data source, architecture, seed).

    Models handed out are shared: callers must deep-copy before changing them (the
    workbench does).
    """

    def __init__(self, store: Store, budget: ComputeBudget | None = None) -> None:
        self.store = store
        self.budget = budget
        self._lock = threading.Lock()
        self._models: dict[str, SteerableModel] = {}
        self._metrics: dict[str, dict] = {}
        self._jobs: dict[str, Job] = {}

    def status(self, data: ImageDataset, source: str, arch: str, *, train: bool = False,
               config: TrainConfig | None = None) -> BaseStatus:
        """The base model for ``source`` and ``arch``: from memory, from disk, or (with
        ``train``) trained in the background on first request."""
        path = base_checkpoint_path(self.store, source, arch, (config or DEFAULT_BASE_CONFIG).seed)
        key = str(path)
        with self._lock:
            if key not in self._models and path.is_file():
                ckpt = read_checkpoint(path)
                self._models[key] = model_from_checkpoint(ckpt).eval()
                stored = ckpt.get("meta") or {}
                if stored.get("metrics") and stored.get("eval_fingerprint") == data.eval_fingerprint():
                    self._metrics[key] = stored["metrics"]  # evaluated on these very splits when saved
            if key in self._models:
                if key not in self._metrics:  # once per base model, not once per workbench
                    self._metrics[key] = version_metrics(self._models[key], data)
                if not path.is_file():  # the workspace was deleted under the server: write it again
                    save_checkpoint(self._models[key], key, data.classes, base_meta(source, data, self._metrics[key]))
                return BaseStatus(self._models[key], None, key, self._metrics[key])
            job = self._jobs.get(key)
            if job is None or job.status in ("failed", "stopped", "diverged"):
                if not train:
                    return BaseStatus(None, job, key)
                job = self._start(data, source, arch, config or DEFAULT_BASE_CONFIG, key)
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
            save_checkpoint(model, key, data.classes, base_meta(source, data, metrics))
            with self._lock:
                self._metrics[key] = metrics
            with self._lock:
                self._models[key] = model.eval()
            return key

        self._jobs[key] = job
        JobRunner(self.budget).start(job, work)
        return job


def untrained_model(data: ImageDataset, arch: str, seed: int = 0) -> SteerableModel:
    """A freshly initialised model for ``data`` (version 0 when no base model exists yet)."""
    c, h, _ = data.image_shape
    return build_model(arch, c, h, data.num_classes, seed=seed)
