"""What one user works on: a dataset, the current model, an ordered history of model versions,
annotations, and per-version caches. Everything that took effort is in the store on disk."""
from __future__ import annotations

import copy
import dataclasses
import logging
import os
import re
import threading
import time
import zipfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

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
from core.session.jobs import ComputeBudget, Job, JobRunner
from core.models import (
    SteerableModel,
    build_model,
    load_checkpoint,
    model_from_checkpoint,
    read_checkpoint,
    save_checkpoint,
)
from core.shortcut import shortcut_meter
from core.session.runs import FineTune, JobOptions, KindPlan
from core.session.store import Annotation, Store, VersionRecord, new_workbench_id

if TYPE_CHECKING:
    from core.feedback import FeedbackKind
    from core.feedback.counterexamples import CounterexampleSettings

log = logging.getLogger(__name__)


class WorkbenchError(RuntimeError):
    """A workbench in the store cannot be opened (no versions, unreadable)."""


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
    out.update(shortcut_metrics(model, data, device=device))
    return out


SHORTCUT_ROWS = 1000  # rows the shortcut meter uses per version: two forward passes over at most this many


def shortcut_metrics(model: SteerableModel, data: ImageDataset, device: torch.device | None = None) -> dict[str, Any]:
    """The shortcut meter (:func:`core.shortcut.shortcut_meter`) as version-metric keys
    ``shortcut_plain_acc`` / ``shortcut_swapped_acc`` (fractions in [0, 1]) and
    ``shortcut_rows``; empty when the data has no object masks."""
    meter = shortcut_meter(model, data, max_rows=SHORTCUT_ROWS, device=device)
    if meter is None:
        return {}
    return {"shortcut_plain_acc": meter["plain_acc"] / 100, "shortcut_swapped_acc": meter["swapped_acc"] / 100,
            "shortcut_rows": meter["rows"]}


def train_base_model(
    data: ImageDataset,
    arch: str,
    *,
    config: TrainConfig | None = None,
    callbacks: Sequence[Callback] = (),
    control=None,
    distributed: bool = False,
) -> tuple[SteerableModel, FitResult]:
    """Build ``arch`` for ``data`` and train it from scratch on the train split
    (``distributed``: data-parallel over the torchrun process group, see ``core.engine.fit``)."""
    config = config or TrainConfig()
    c, h, _ = data.image_shape
    model = build_model(arch, c, h, data.num_classes, seed=config.seed)
    result = fit(model, data.split("train"), data.split("val"), config=config, callbacks=callbacks, control=control,
                 distributed=distributed)
    return model.cpu(), result


class Workbench:
    """One user's dataset, model, versions and annotations.

    The current model is only replaced under ``lock`` and only by a finished job, so pages
    can always draw from it while a copy trains in the background.
    """

    def __init__(self, store: Store, wb_id: str, data: ImageDataset, data_source: str, arch: str,
                 model: SteerableModel, settings: dict[str, Any], current_version: int,
                 budget: ComputeBudget | None = None) -> None:
        self.store = store
        self.id = wb_id
        self.data = data
        self.data_source = data_source
        self.arch = arch
        self.settings = settings
        self.model = model
        self.current_version = current_version
        self.lock = threading.RLock()
        self.jobs = JobRunner(budget)
        self._cache: dict[tuple[int, str, bool], EvalResult] = {}
        self._fingerprint: str | None = None

    # ------------------------------------------------------------------ creation
    @classmethod
    def create(cls, store: Store, data: ImageDataset, data_source: str, base_model: SteerableModel,
               *, base_checkpoint: str | Path | None = None, settings: dict[str, Any] | None = None,
               description: str = "base model", metrics: dict[str, Any] | None = None,
               budget: ComputeBudget | None = None) -> "Workbench":
        """A new workbench whose version 0 is (a deep copy of) ``base_model``.

        ``base_checkpoint``: an existing read-only checkpoint of the base model to point
        version 0 at instead of writing a copy. Everything that can fail (metrics, the
        checkpoint) happens before the workbench row and its version 0 are written together,
        so a failure leaves no workbench without versions behind.
        """
        arch = base_model.info.arch
        settings = dict(settings or {})
        model = copy.deepcopy(base_model).cpu().eval()  # shared from here on: eval mode, never switched (issue 29)
        if metrics is None:  # a shared base model's metrics can be computed once and passed in
            metrics = version_metrics(model, data)
        wb_id = new_workbench_id()
        if base_checkpoint is None:
            base_checkpoint = store.workbench_dir(wb_id) / "v0.pt"
            save_checkpoint(model, base_checkpoint, data.classes, {"description": description})
        base = VersionRecord(0, None, time.time(), description, str(base_checkpoint), {}, dict(metrics))
        store.create_workbench(data_source, arch, settings, wb_id, base=base)
        return cls(store, wb_id, data, data_source, arch, model, settings, 0, budget)

    @classmethod
    def open(cls, store: Store, wb_id: str, *, loader: Callable[..., ImageDataset] | None = None,
             budget: ComputeBudget | None = None) -> "Workbench":
        """Reopen a workbench by id with its current version loaded.

        Raises ``KeyError`` for an unknown id and :class:`WorkbenchError` for one that has no
        versions. ``loader(source, seed=...)`` loads the dataset (defaults to
        :func:`core.data.load_dataset`; the app passes a cached one).
        """
        record = store.get_workbench(wb_id)
        if record is None:
            raise KeyError(f"No workbench with id {wb_id!r} in {store.root}")
        versions = {v.number: v for v in store.versions(wb_id)}
        if not versions:
            raise WorkbenchError(f"workbench {wb_id} has no model versions (it was left half-created)")
        loader = loader or load_dataset
        data = loader(record.data_source, seed=int(record.settings.get("data_seed", 0)))
        current = record.current_version if record.current_version in versions else max(versions)
        model = model_from_checkpoint(versions[current].checkpoint)
        return cls(store, wb_id, data, record.data_source, record.arch, model, record.settings, current, budget)

    # ------------------------------------------------------------------ versions
    def versions(self) -> list[VersionRecord]:
        return self.store.versions(self.id)

    def version(self, number: int) -> VersionRecord:
        for v in self.versions():
            if v.number == number:
                return v
        raise KeyError(f"Workbench {self.id} has no version {number}")

    def commit_version(self, model: SteerableModel, description: str, feedback: Mapping[str, Any] | None = None,
                       extra_metrics: Mapping[str, Any] | None = None, *, parent: int | None = None) -> VersionRecord:
        """Save ``model`` as a new version and make it the current model. The number, the
        checkpoint file and the row are allocated together (:meth:`Store.commit_version`), so
        concurrent commits never cross. ``parent`` defaults to the current version."""
        model = model.cpu().eval()  # the job's own copy, about to be shared: eval mode from here on
        metrics = version_metrics(model, self.data)
        metrics.update(extra_metrics or {})
        fb = dict(feedback or {})
        with self.lock:
            parent = self.current_version if parent is None else parent
            record = self.store.commit_version(
                self.id, lambda path: save_checkpoint(model, path, self.data.classes,
                                                      {"description": description, "feedback": fb}),
                parent=parent, description=description, feedback=fb, metrics=metrics)
            self.model = model
            self.current_version = record.number
        return record

    def restore(self, number: int) -> Job | None:
        """Make version ``number`` current (its checkpoint is loaded all-or-nothing).

        A job that had ended is forgotten (:meth:`JobRunner.dismiss_ended`): its "Finished:
        version vN" and its chart were about the version before the restore, and every tab
        would go on showing them. Returns that job (its partial result, if it left one, is
        dropped with it), or None."""
        record = self.version(number)
        ckpt = read_checkpoint(record.checkpoint)
        model = copy.deepcopy(self.model)
        load_checkpoint(model, ckpt)
        with self.lock:
            self.model = model
            self.current_version = number
            self.store.update_workbench(self.id, current_version=number)
            return self.jobs.dismiss_ended()

    def _model_of(self, number: int) -> SteerableModel:
        """A fresh copy of the architecture with version ``number``'s weights."""
        ckpt = read_checkpoint(self.version(number).checkpoint)
        with self.lock:
            model = copy.deepcopy(self.model)
        load_checkpoint(model, ckpt)
        return model

    def replay_config(self, number: int) -> tuple[TrainConfig, int, list[str]] | None:
        """(config, parent version, frozen groups) that train version ``number`` again from its
        parent with the same seed, or None when it cannot be replayed (the base model, a
        fine-tune with feedback terms, a run whose freezing changed, a version made before
        seeds were recorded)."""
        record = self.version(number)
        fb = record.feedback
        if not fb.get("replayable") or record.parent is None or "config" not in fb:
            return None
        fields = {f.name for f in dataclasses.fields(TrainConfig)}
        cfg = TrainConfig(**{k: v for k, v in fb["config"].items() if k in fields})
        return cfg, int(record.parent), list(fb.get("initial_frozen", []))

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
        result = None if with_features else self._stored_evaluation(version, split)
        if result is None:
            result = evaluate(model, *self.data.split(split), with_features=with_features)
            if not with_features:
                self._store_evaluation(version, split, result)
        with self.lock:  # tabs of one workbench share this cache
            # keep the caches of the current version only: memory stays bounded
            self._cache = {k: v for k, v in self._cache.items() if k[0] == self.current_version}
            if version == self.current_version:
                self._cache[key] = result
        return result

    # A server start would otherwise run the model over the test split before Home can draw; versions
    # never change once written, so their predictions are kept on disk beside their checkpoint, keyed
    # by the checkpoint file and the data's fingerprint.
    _EVAL_FIELDS = ("loss", "accuracy", "preds", "probs", "labels", "confusion")

    def _evaluation_key(self, version: int) -> str:
        if self._fingerprint is None:
            self._fingerprint = self.data.eval_fingerprint()
        ckpt = Path(self.version(version).checkpoint)
        stat = ckpt.stat()
        return f"{self._fingerprint}|{ckpt.name}|{stat.st_size}|{stat.st_mtime_ns}"  # survives copying a workspace

    def _evaluation_path(self, version: int, split: str) -> Path:
        """Beside the checkpoint: a shared base model's predictions serve every new workbench on it."""
        ckpt = Path(self.version(version).checkpoint)
        return ckpt.with_name(f"{ckpt.stem}.eval-{split}.npz")

    def _stored_evaluation(self, version: int, split: str) -> EvalResult | None:
        """The saved predictions of ``version`` on ``split`` if they match its checkpoint and this data."""
        path = self._evaluation_path(version, split)
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as z:
                if str(z["key"]) != self._evaluation_key(version):
                    return None
                return EvalResult(loss=float(z["loss"]), accuracy=float(z["accuracy"]), preds=z["preds"],
                                  probs=z["probs"], labels=z["labels"], confusion=z["confusion"])
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:  # torn or foreign: only a cache
            log.warning("ignoring the stored evaluation %s: %s", path, exc)
            return None

    def _store_evaluation(self, version: int, split: str, result: EvalResult) -> None:
        path = self._evaluation_path(version, split)
        try:
            key = self._evaluation_key(version)
            path.parent.mkdir(parents=True, exist_ok=True)
            pending = path.with_name(f".{path.stem}.{threading.get_ident()}.tmp.npz")
            np.savez(pending, key=np.array(key), **{f: np.asarray(getattr(result, f)) for f in self._EVAL_FIELDS})
            os.replace(pending, path)  # whole or not at all
        except (OSError, KeyError) as exc:  # a read-only workspace or a deleted version: only a cache
            log.warning("could not store the evaluation %s: %s", path, exc)

    # ------------------------------------------------------------------ annotations
    def add_annotations(self, kind: str, items: list[tuple[int, dict[str, Any]]]) -> list[int]:
        return self.store.add_annotations(self.id, kind, items)

    def annotations(self, kind: str | None = None) -> list[Annotation]:
        return self.store.annotations(self.id, kind)

    def replace_annotations(self, kind: str, items: list[tuple[int, dict[str, Any]]],
                            state: dict[str, Any] | None = None) -> None:
        """Make the annotations of ``kind`` exactly ``items``; ``state`` (page-state values)
        is written in the same transaction."""
        self.store.replace_annotations(self.id, kind, items, state)

    def get_state(self, key: str, default: Any = None) -> Any:
        """A value a page saved for this workbench (see :meth:`Store.put_state`)."""
        return self.store.get_state(self.id, key, default)

    def put_state(self, key: str, value: Any) -> None:
        """Save a JSON-able value for this workbench's pages (None deletes it)."""
        self.store.put_state(self.id, key, value)

    def update_settings(self, **values: Any) -> None:
        """Merge ``values`` into the workbench's settings and write them to the store at once."""
        with self.lock:
            self.settings = {**self.settings, **values}
            self.store.update_workbench(self.id, settings=self.settings)

    def clear_annotations(self, kind: str) -> None:
        self.store.delete_annotations(self.id, kind=kind)

    # ------------------------------------------------------------------ interrupted jobs
    _DISMISSED_KEY = "jobs.interrupted_dismissed"  # page state: the newest interrupted job's id a person dismissed

    def interrupted_notice(self) -> str | None:
        """What to tell anyone who opens this workbench about a job a server restart cut off:
        the notice of its newest job when that one was interrupted and nobody dismissed it
        (:meth:`dismiss_interrupted`); None otherwise, and once a new job was started. Read
        from the store each time, so every tab, session and later server agrees."""
        self.store.mark_interrupted()  # jobs of a server that died since this one started
        latest = self.store.jobs(self.id, limit=1)
        if not latest or latest[0].status != "interrupted":
            return None
        if int(self.get_state(self._DISMISSED_KEY, 0) or 0) >= latest[0].id:
            return None
        return latest[0].interrupted_notice()

    def dismiss_interrupted(self) -> None:
        """Someone read the interrupted-job notice: stop showing it, to every tab (on disk)."""
        latest = self.store.jobs(self.id, limit=1)
        if latest and latest[0].status == "interrupted":
            self.put_state(self._DISMISSED_KEY, latest[0].id)

    # ------------------------------------------------------------------ background work
    def train(self, config: TrainConfig, options: JobOptions | None = None, plan: KindPlan | None = None) -> Job:
        """Train a copy of the current model in the background; returns the job to poll.
        ``options``: how the job runs (:class:`JobOptions`); ``plan``: extra loss terms, a
        custom train set and the feedback to store (:class:`KindPlan`; a fine-tune with a
        feedback kind goes through :meth:`start_training`, which builds it).

        How it ends: ``done`` makes a new version. ``stopped`` makes one only with
        ``keep_if_stopped``; otherwise the partly trained copy waits in ``job.partial`` for
        :meth:`keep_partial`. ``diverged`` (see :class:`core.engine.DivergenceGuard`) never
        makes a version; if an epoch before the divergence kept the validation accuracy, its
        weights wait in ``job.partial``. ``failed``: an error, nothing changed.

        Pages read the copy's weights only through ``job.request_weights()`` and
        ``job.weights()`` (snapshots taken in the training thread). ``options.start_version``
        trains a copy of that version (the new version's parent): :meth:`replay_config` gives
        what to pass to train a version again from its parent, bit for bit on the CPU.

        Every version made here records the run's seed and whole ``TrainConfig`` in its
        feedback (``seed``, ``config``), and ``replayable``: whether the config and parent
        alone determine it (no extra loss terms, no custom train set, no freezing changed
        during the run).
        """
        options = options or JobOptions()
        plan = plan or KindPlan()
        images, labels = plan.train if plan.train is not None else self.data.split("train")
        train_ids = plan.train_ids if plan.train is not None else torch.as_tensor(self.data.ids("train"),
                                                                                 dtype=torch.long)
        steps_per_epoch = -(-len(images) // config.batch_size)
        job = Job(options.kind, config.epochs * steps_per_epoch, options.description or plan.description,
                  total_epochs=config.epochs)
        job.listeners = list(options.listeners)
        job.context = dict(options.context or {})
        job.control.set_frozen(options.frozen)
        job.control.pause_at_epoch_end = options.pause_at_epoch_end
        model, base_version = self._training_copy(options.start_version)
        start_val_acc = self.version(base_version).metrics.get("val_acc") if plan.train is None else None
        pick_device(config.device)  # fails now, in the page, if the device is not there
        job.publish_weights_of(model)
        job.attached = list(options.attach(model)) if options.attach is not None else []
        job.listeners.extend(job.attached)

        def work(job: Job) -> VersionRecord | None:
            try:
                result = fit(model, (images, labels), self.data.split("val"), config=config, train_ids=train_ids,
                             loss_terms=dict(plan.terms) or None, weights=dict(plan.weights) or None,
                             callbacks=[job], control=job.control, start_val_acc=start_val_acc)
                return self._end_run(job, model, result, config, options, plan, base_version)
            finally:
                for cb in job.attached:  # remove statistics hooks from the (now finished) copy
                    close = getattr(cb, "close", None)
                    if callable(close):
                        close()

        return self.jobs.start(job, work, recorder=StoreJobRecorder(self.store, self.id, base_version))

    def _training_copy(self, start_version: int | None) -> tuple[SteerableModel, int]:
        """(a copy of the model to train, the version it is a copy of): the current one by default."""
        if start_version is None:
            with self.lock:
                return copy.deepcopy(self.model), self.current_version
        return self._model_of(start_version), start_version

    def _end_run(self, job: Job, model: SteerableModel, result: FitResult, config: TrainConfig,
                 options: JobOptions, plan: KindPlan, base_version: int) -> VersionRecord | None:
        """Commit what a finished :func:`core.engine.fit` left (or keep it in ``job.partial``),
        as :meth:`train` describes; declares how the job ended."""
        frozen = sorted(options.frozen)
        fb = dict(plan.feedback)
        fb.update({"epochs": len(result.history), "steps": result.steps, "lr": config.lr,
                   "frozen": sorted(job.control.frozen()), "seed": int(config.seed),
                   "config": dataclasses.asdict(config), "initial_frozen": frozen,
                   "replayable": bool(not plan.terms and plan.train is None and len(job.freeze_events) <= 1
                                      and sorted(job.control.frozen()) == frozen)})
        history = {"history": [{k: e[k] for k in ("epoch", "train_loss", "train_acc", "val_acc", "epoch_time")}
                               for e in job.epochs]}
        job.commit_args = (fb, history, base_version)
        description = job.description
        if result.diverged:
            if result.kept_epochs:
                job.partial = model
                job.partial_note = f"weights after epoch {result.kept_epochs}, before the divergence"
            job.declare("diverged", result.message)
            return None
        if result.stopped:
            if result.steps == 0:
                job.declare("stopped", "Stopped before the first step; nothing changed.")
                return None
            if not options.keep_if_stopped:
                job.partial = model
                job.partial_note = f"stopped after {result.steps} of {job.total_steps} steps"
                job.declare("stopped", result.message)
                return None
            job.declare("stopped", result.message)
            return self.commit_version(model, f"{description} (stopped after {result.steps} steps)", fb, history,
                                       parent=base_version)
        if result.restored_best:  # the last epochs fell far below the best one: its weights were kept
            fb["kept_best_epoch"] = result.best_epoch
            job.declare("done", result.message)
            return self.commit_version(model, f"{description} (kept epoch {result.best_epoch}: {result.message})",
                                       fb, history, parent=base_version)
        return self.commit_version(model, description, fb, history, parent=base_version)

    def start_training(self, kind: "FeedbackKind | str", annotations: Sequence[Any], settings: FineTune,
                       options: JobOptions | None = None) -> Job:
        """Fine-tune a copy of the current model with a feedback kind, in the background; returns
        the job (see :meth:`train`). The kind builds the loss terms, the train set, the
        description and the feedback from ``annotations`` and ``settings``
        (:meth:`core.feedback.FeedbackKind.plan`); the counterexamples' term
        (:mod:`core.feedback.counterexamples`) is added here when ``settings.counterexamples``
        is enabled. The kind's and the counterexamples' terms are in ``job.context["terms"]``
        (a page can add annotations while the job waits; ``options.context`` is updated in
        place); the version's feedback records the kind, the annotations' ids and the
        counterexample settings."""
        from core.feedback import get_kind

        kind = get_kind(kind) if isinstance(kind, str) else kind
        annotations = list(annotations)
        options = options or JobOptions()
        cex = settings.counterexamples if settings.counterexamples is not None and settings.counterexamples.enabled \
            else None
        if not settings.guidance and cex is None and not settings.on_annotated:
            raise ValueError("Nothing to fine-tune with: turn on the page's loss or the counterexamples.")
        plan = kind.plan(self.data, annotations, settings)
        terms, weights = dict(plan.terms), dict(plan.weights)
        fb: dict[str, Any] = {**plan.feedback, "counterexamples": None}
        desc = settings.description or options.description or plan.description
        listeners = list(options.listeners)
        if cex is not None:
            desc = self._add_counterexamples(annotations, cex, settings.on_annotated, terms, weights, fb, desc,
                                             listeners)
        if not settings.guidance:
            desc = f"{desc} (without the {kind.name} loss)"
        context = options.context if options.context is not None else {}
        context["terms"] = terms
        fb.update(settings.feedback)
        options = dataclasses.replace(options, description=desc, context=context, listeners=listeners)
        return self.train(settings.config, options, dataclasses.replace(plan, terms=terms, weights=weights, feedback=fb))

    def _add_counterexamples(self, annotations: list[Any], cex: "CounterexampleSettings", on_annotated: bool,
                             terms: dict[str, LossTerm], weights: dict[str, float], fb: dict[str, Any], desc: str,
                             listeners: list[Callback]) -> str:
        """Add the counterexamples' term to ``terms``/``weights``, their record to ``fb`` and
        their counter to ``listeners``; returns the description with them."""
        from core.feedback.counterexamples import KIND as CEX, counterexample_term, describe as describe_cex

        terms[CEX] = counterexample_term(self.data, annotations, cex)
        weights[CEX] = float(cex.weight)
        fb["counterexamples"] = cex.to_dict() | {"made": len(terms[CEX])}
        listeners.append(_CountMade(fb["counterexamples"], terms[CEX]))
        # attention rounds know the count now; a grid run adds copies at each review, so its
        # count is kept up to date in the feedback and left out of the description
        return f"{desc} {describe_cex(cex, len(terms[CEX]) if on_annotated else None)}"

    def keep_partial(self, job: Job) -> VersionRecord:
        """Make the partly trained model of a stopped or diverged ``job`` a new version (the
        user chose to keep it). Raises ``ValueError`` when there is nothing to keep."""
        if job.running or job.partial is None or job.kept is not None:
            raise ValueError("This job left no partial result to keep.")
        fb, history, base_version = job.commit_args or ({}, {}, None)
        record = self.commit_version(job.partial, f"{job.description} ({job.partial_note}, kept by the user)",
                                     {**fb, "kept_partial": True, "ended_as": job.status}, history, parent=base_version)
        job.kept, job.partial = record, None
        return record


class _CountMade(Callback):
    """Keeps a version's ``feedback["counterexamples"]["made"]`` equal to the number of
    counterexamples its term holds (a grid run adds each review's copies while it waits)."""

    def __init__(self, record: dict[str, Any], term: Any) -> None:
        self.record, self.term = record, term

    def on_step(self, info: Any) -> None:
        self.record["made"] = len(self.term)

    on_epoch = on_step


class StoreJobRecorder:
    """Writes a workbench job's life to the store: started, progress every few seconds,
    and how it ended, so a restart can say which job was interrupted."""

    def __init__(self, store: Store, wb_id: str, base_version: int) -> None:
        self.store = store
        self.wb_id = wb_id
        self.base_version = base_version

    def started(self, job: Job) -> None:
        job.record_id = self.store.start_job(self.wb_id, job.kind, job.description, job.total_steps,
                                             status=job.status, base_version=self.base_version)

    def progress(self, job: Job) -> None:
        if job.record_id is not None:
            self.store.update_job(job.record_id, status=job._status_now(), done_steps=job.done_steps)

    def ended(self, job: Job) -> None:
        if job.record_id is not None:
            version = job.result.number if isinstance(job.result, VersionRecord) else None
            self.store.end_job(job.record_id, job.status, done_steps=job.done_steps,
                               message=job.error or job.message, result_version=version)
