"""The latent-editing workflow on a workbench, without any UI: the fixed projection branch,
the map of the pool split, the move list on disk, Update and its summary."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any

import numpy as np
import torch

from core.engine import TrainConfig, TrainsWith, evaluate, predict
from core.feedback.latent.loss import (
    KIND,
    PAPER_LR,
    PAPER_MOMENTUM,
    PAPER_WEIGHTS,
    DEFAULT_VARIANT,
    FEEDBACK as LATENT,
    LatentContext,
    LatentMoveLoss,
    Move,
    MoveList,
    class_centroids,
)
from core.session.jobs import Job
from core.models import atomic_torch_save
from core.models.base import SteerableModel
from core.feedback.latent.projection import ProjectionBranch, fit_projection, from_state, projection_r2, state
from core.session.runs import FineTune, JobOptions
from core.session.workbench import Workbench

PROJECTION_FILE = "projection.pt"
FIT_SAMPLE = 5000
PROGRESS_CHUNK = 512  # images per progress report (two batches of predict's default size)

Progress = Callable[[str, int, int], None]
"""``progress(step, done, total)``: what is being done (a short phrase) and how far it is."""


def _report(progress: Progress | None, step: str, done: int, total: int) -> None:
    if progress is not None:
        progress(step, done, total)


def features_with_progress(model: SteerableModel, images: torch.Tensor, *, what: str,
                           progress: Progress | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and features of ``images`` (see :func:`core.engine.predict`), computed in chunks
    of :data:`PROGRESS_CHUNK` so that ``progress`` hears "computing <what> features" k / n."""
    step, n = f"Computing {what} features", len(images)
    _report(progress, step, 0, n)
    logits, feats = [], []
    for start in range(0, n, PROGRESS_CHUNK):
        lo, fe = predict(model, images[start:start + PROGRESS_CHUNK], with_features=True)
        logits.append(lo)
        feats.append(fe)
        _report(progress, step, min(start + PROGRESS_CHUNK, n), n)
    if not logits:  # no images: empty results of the right widths
        return torch.zeros(0, model.info.num_classes), torch.zeros(0, model.feature_dim)
    return torch.cat(logits), torch.cat(feats)


@dataclass
class LatentView:
    """The pool split on the map under one model version."""

    version: int
    ids: np.ndarray  # example ids of the pool split
    coords: np.ndarray  # (N, 2)
    labels: np.ndarray
    preds: np.ndarray
    probs: np.ndarray
    r2: float
    features: np.ndarray | None = None  # pool features, for the "lifted" variant

    @property
    def wrong(self) -> np.ndarray:
        return self.preds != self.labels

    @cached_property
    def _index(self) -> dict[int, int]:
        return {int(e): i for i, e in enumerate(self.ids)}

    def index_of(self) -> dict[int, int]:
        """Example id -> row in this view (built once per view; pages call it on every rerun)."""
        return self._index


def load_or_fit_projection(wb: Workbench, *, refit: bool = False, seed: int = 0,
                           progress: Progress | None = None) -> ProjectionBranch:
    """The workbench's projection branch: fitted once (PCA of the current version's training
    features) and kept on disk, so the map's axes stay put across updates and restarts.
    ``progress`` hears the steps of a fit (features k / n, then the PCA)."""
    path = wb.store.workbench_dir(wb.id) / PROJECTION_FILE
    if path.is_file() and not refit:
        saved = torch.load(path, map_location="cpu", weights_only=True)
        if saved["state"]["linear.weight"].shape[1] == wb.model.feature_dim:
            return from_state(saved["state"])
    with wb.lock:
        model, version = wb.model, wb.current_version
    images, _ = wb.data.split("train")
    g = torch.Generator().manual_seed(seed)
    pick = torch.randperm(len(images), generator=g)[:FIT_SAMPLE]
    _, feats = features_with_progress(model, images[pick], what="training", progress=progress)
    _report(progress, "Fitting the 2D projection (PCA)", 0, 1)
    branch = fit_projection(feats.numpy(), seed=seed)
    _report(progress, "Fitting the 2D projection (PCA)", 1, 1)
    atomic_torch_save({"state": state(branch), "fitted_on_version": version}, path)
    return branch


def latent_view(wb: Workbench, branch: ProjectionBranch, progress: Progress | None = None) -> LatentView:
    """Pool-split coordinates, predictions and probabilities under the current version;
    ``progress`` hears "computing pool features" k / n, then "projecting"."""
    with wb.lock:
        model, version = wb.model, wb.current_version
    images, labels = wb.data.split("pool")
    logits, feats = features_with_progress(model, images, what="pool", progress=progress)
    _report(progress, "Projecting onto the map", 0, 1)
    with torch.no_grad():
        coords = branch(feats).numpy()
    probs = torch.softmax(logits, 1).numpy()
    view = LatentView(version, wb.data.ids("pool"), coords, labels.numpy(), probs.argmax(1), probs,
                      projection_r2(branch, feats.numpy()), feats.numpy())
    _report(progress, "Projecting onto the map", 1, 1)
    return view


HISTORY_KEY = "latent.history"
PENDING_KEY = "latent.pending"
RESULT_KEY = "latent.result"


@dataclass
class VersionedMoveList(MoveList):
    """A :class:`MoveList` that remembers the model version its moves were made on.

    A move's source is its point's position in that version's projection, so the moves are
    only meaningful on it: when the current version is another one (restored or trained in
    another tab), the page asks to :func:`keep_on` the new version or :func:`discard` them.
    Each undo/redo state keeps its own version, so Undo brings back moves together with the
    version they belong to. ``None``: unknown (saved by an older release; taken as current).
    """

    version: int | None = None
    undo_versions: list[int | None] = field(default_factory=list)
    redo_versions: list[int | None] = field(default_factory=list)

    def _push(self) -> None:
        super()._push()
        self.undo_versions.append(self.version)
        self.redo_versions.clear()

    def add(self, moves: list[Move], *, on: int | None = None) -> None:
        """Record one gesture as one undo step; ``on``: the version whose projection the
        sources come from. Adding to moves of another version is refused (keep or discard
        them first): one list never mixes two projections."""
        if on is not None and self.moves and self.version not in (None, on):
            raise ValueError(f"The {len(self)} moves were made on v{self.version}, not v{on}: "
                             "keep them on this version or discard them first.")
        super().add(moves)
        if moves and on is not None:
            self.version = int(on)

    def undo(self) -> bool:
        if not self.undo_stack:
            return False
        self.redo_versions.append(self.version)
        self.version = self.undo_versions.pop() if self.undo_versions else self.version
        return super().undo()

    def redo(self) -> bool:
        if not self.redo_stack:
            return False
        self.undo_versions.append(self.version)
        self.version = self.redo_versions.pop() if self.redo_versions else self.version
        return super().redo()

    def reset_history(self, keep: list[Move] | tuple[Move, ...] = (), *, on: int | None = None) -> None:
        """See :meth:`MoveList.reset_history`; ``on``: the version ``keep`` belongs to."""
        super().reset_history(keep)
        self.undo_versions, self.redo_versions = [], []
        if on is not None:
            self.version = int(on)

    def made_on_other_than(self, version: int) -> bool:
        """Whether there are moves and they were made on a version other than ``version``
        (moves of unknown version, from an older release, count as made on it)."""
        return bool(self.moves) and self.version is not None and self.version != version


def keep_on(moves: VersionedMoveList, view: LatentView) -> int:
    """Re-base the moves onto ``view``'s version, as one undo step: each source becomes the
    same point's position in ``view``, each target stays. A moved example that is not in
    ``view`` is dropped (it can be neither drawn nor applied). Returns how many were kept."""
    idx = view.index_of()
    rebased = [Move(e, tuple(view.coords[idx[e]]), m.target) for e, m in moves.moves.items() if e in idx]
    moves._push()  # the moves as made on the old version: Undo brings them back with it
    moves.moves = {m.example_id: m for m in rebased}
    moves.version = int(view.version)
    return len(rebased)


def discard(moves: VersionedMoveList, version: int) -> None:
    """Drop the moves, as one undo step (Undo brings them back with their own version);
    the empty list belongs to ``version``."""
    moves.clear()
    moves.version = int(version)


def _stack_json(stack: list[dict[int, Move]]) -> list[list[dict[str, Any]]]:
    return [[{"example_id": int(e), **m.payload()} for e, m in state.items()] for state in stack]


def _stack_from_json(raw: list) -> list[dict[int, Move]]:
    return [{int(p["example_id"]): Move.from_payload(int(p["example_id"]), p) for p in state} for state in raw]


def _versions_from_json(raw: Any, n: int) -> list[int | None]:
    """One version per history state (None for each when an older release saved none)."""
    if not isinstance(raw, list) or len(raw) != n:
        return [None] * n
    return [None if v is None else int(v) for v in raw]


def centroid_targets(view: LatentView, example_ids: Sequence[int], target_class: int,
                     seed: int = 0) -> list[tuple[float, float]]:
    """Targets at the map centroid of ``target_class`` for each id (the Latent space page's and
    the study's "Move to its centroid"), spread by a small deterministic jitter from ``seed`` so
    the moved points do not land on one pixel. ValueError when the class has no point on the map."""
    cent = class_centroids(view.coords, view.labels, view.preds, int(view.probs.shape[1]))[int(target_class)]
    if np.isnan(cent).any():
        raise ValueError("that class has no points on the map: choose another one")
    jitter = np.random.default_rng(seed).normal(0, 0.05, (len(example_ids), 2))
    return [(float(cent[0] + dx), float(cent[1] + dy)) for dx, dy in jitter]


def load_moves(wb: Workbench, shown: int | None = None) -> VersionedMoveList:
    """The move list as saved in the store, with its undo and redo history and the version
    each state was made on. ``shown``: the version on the page; moves an older release saved
    without a version are taken as made on it, and saved so."""
    saved = MoveList.from_items([(a.example_id, a.payload) for a in wb.annotations(KIND)])
    moves = VersionedMoveList(saved.moves)
    history = wb.store.get_state(wb.id, HISTORY_KEY) or {}
    try:
        moves.undo_stack = _stack_from_json(history.get("undo", []))
        moves.redo_stack = _stack_from_json(history.get("redo", []))
        version = history.get("version")
        moves.version = None if version is None else int(version)
        moves.undo_versions = _versions_from_json(history.get("undo_versions"), len(moves.undo_stack))
        moves.redo_versions = _versions_from_json(history.get("redo_versions"), len(moves.redo_stack))
    except (KeyError, TypeError, ValueError, AttributeError):  # a history from another release: keep the moves
        moves.undo_stack, moves.redo_stack, moves.undo_versions, moves.redo_versions = [], [], [], []
    if shown is not None and moves.version is None and (moves.moves or moves.undo_stack or moves.redo_stack):
        moves.version = int(shown)
        moves.undo_versions = [moves.version if v is None else v for v in moves.undo_versions]
        moves.redo_versions = [moves.version if v is None else v for v in moves.redo_versions]
        save_moves(wb, moves)
    return moves


def save_moves(wb: Workbench, moves: MoveList, **state: Any) -> None:
    """Write the move list, its undo/redo history and the version the moves were made on
    to the store in one transaction (before the page shows the move); ``state`` adds
    page-state keys to the same transaction."""
    history: dict[str, Any] = {"undo": _stack_json(moves.undo_stack[-MAX_HISTORY:]),
                               "redo": _stack_json(moves.redo_stack[-MAX_HISTORY:])}
    if isinstance(moves, VersionedMoveList):
        history["version"] = moves.version
        history["undo_versions"] = moves.undo_versions[-MAX_HISTORY:] if moves.undo_stack else []
        history["redo_versions"] = moves.redo_versions[-MAX_HISTORY:] if moves.redo_stack else []
    wb.replace_annotations(KIND, moves.items(), state={HISTORY_KEY: history, **state})


MAX_HISTORY = 50  # undo steps kept on disk


class SavedBefore:
    """The moved points' positions and predictions before an Update, as saved in the store
    (duck-types the parts of :class:`LatentView` that :func:`update_summary` reads)."""

    def __init__(self, rows: dict[str, Any]) -> None:
        self.ids = np.array([int(e) for e in rows], dtype=np.int64)
        self.coords = np.array([rows[e]["xy"] for e in rows], dtype=np.float64).reshape(-1, 2)
        self.preds = np.array([rows[e]["pred"] for e in rows], dtype=np.int64)

    def index_of(self) -> dict[int, int]:
        return {int(e): i for i, e in enumerate(self.ids)}


def pending_update(view: LatentView, moves: MoveList, test_before: dict[str, Any], version_before: int) -> dict[str, Any]:
    """What the page saves when Update starts, so any tab (or the same tab after a refresh)
    can write the result once the job has made its version."""
    idx = view.index_of()
    return {
        "version_before": int(version_before),
        "test_before": test_before,
        "moves": [{"example_id": int(e), **m.payload()} for e, m in moves.moves.items()],
        "before": {str(e): {"xy": view.coords[idx[e]].tolist(), "pred": int(view.preds[idx[e]])}
                   for e in moves.moves if e in idx},
    }


def finish_update(wb: Workbench, pending: dict[str, Any], after: LatentView) -> dict[str, Any]:
    """The result of an Update whose version exists: the summary, saved in the store together
    with the move list minus the applied moves.

    The applied moves are history now: they leave the list together with the undo and redo
    history (whose coordinates are those of the old projection), so Undo cannot bring them
    back onto the new one. A move made while the update ran is kept, still to apply, drawn
    from its point's new position."""
    moves = MoveList({int(p["example_id"]): Move.from_payload(int(p["example_id"]), p) for p in pending["moves"]})
    before = SavedBefore(pending["before"])
    summary = update_summary(wb, before, after, moves, pending["test_before"], heldout_metrics(wb))
    summary["version"] = wb.current_version
    summary["version_before"] = int(pending["version_before"])
    summary["before_coords"] = {str(e): row["xy"] for e, row in pending["before"].items()}
    summary["targets"] = {str(e): list(m.target) for e, m in moves.moves.items()}
    current = load_moves(wb)
    idx = after.index_of()
    newer = [Move(e, tuple(after.coords[idx[e]]) if e in idx else m.source, m.target)
             for e, m in current.moves.items() if e not in moves.moves or moves.moves[e].target != m.target]
    current.reset_history(newer, on=after.version)
    save_moves(wb, current, **{RESULT_KEY: summary, PENDING_KEY: None})
    return summary


#: the paper's Update fine-tune: 2 epochs (it uses 1-3) at lr 0.04, momentum 0.9, batches of 64
UPDATE = TrainConfig(epochs=2, lr=PAPER_LR, momentum=PAPER_MOMENTUM, batch_size=64)


@dataclass
class UpdateSettings(TrainsWith):
    """An Update's fine-tune: the optimiser and loop (``train``, by default :data:`UPDATE`),
    the loss's weights and its variant (defaults from the paper)."""

    train: TrainConfig = field(default_factory=lambda: replace(UPDATE))
    w_cls: float = PAPER_WEIGHTS["cls"]
    w_dis: float = PAPER_WEIGHTS["latent"]
    variant: str = DEFAULT_VARIANT  # or "paper", "implied-label"


def build_loss(wb: Workbench, branch: ProjectionBranch, moves: MoveList, view: LatentView,
               variant: str = DEFAULT_VARIANT) -> LatentMoveLoss:
    """The latent loss term for ``moves`` made in ``view`` (see :class:`LatentKind`)."""
    context = LatentContext(branch, view.coords, view.preds, view.features, variant)
    return LATENT.loss_term(wb.data, list(moves.moves.values()), context)


def start_update(wb: Workbench, branch: ProjectionBranch, moves: MoveList, view: LatentView,
                 settings: UpdateSettings) -> Job:
    """Fine-tune a copy of the current model toward the moves, in the background; it becomes
    a new version described by the moves."""
    if len(moves) == 0:
        raise ValueError("Move at least one point before pressing Update.")
    if view.version != wb.current_version:
        raise ValueError(f"The model is now v{wb.current_version}, not v{view.version} as drawn: look at the page "
                         "again before pressing Update.")
    if isinstance(moves, VersionedMoveList) and moves.made_on_other_than(view.version):
        raise ValueError(f"The moves were made on v{moves.version}; the model is now v{view.version}. Keep them on "
                         f"v{view.version} or discard them first.")
    context = LatentContext(branch, view.coords, view.preds, view.features, settings.variant)
    fine_tune = FineTune(settings.train, context, cls_weight=settings.w_cls, kind_weight=settings.w_dis,
                         feedback=moves.to_json())
    return wb.start_training(LATENT, list(moves.moves.values()), fine_tune, JobOptions(kind="latent"))


def update_summary(wb: Workbench, before: LatentView, after: LatentView, moves: MoveList,
                   test_before: dict[str, Any], test_after: dict[str, Any]) -> dict[str, Any]:
    """What an Update changed: test accuracy, per-class accuracy, each moved image's prediction
    and distance to its target."""
    idx_b, idx_a = before.index_of(), after.index_of()
    rows = []
    for e, m in moves.moves.items():
        b, a = idx_b[e], idx_a[e]
        rows.append({
            "example_id": e,
            "true": int(after.labels[a]),
            "pred_before": int(before.preds[b]),
            "pred_after": int(after.preds[a]),
            "dist_before": float(np.linalg.norm(before.coords[b] - np.array(m.target))),
            "dist_after": float(np.linalg.norm(after.coords[a] - np.array(m.target))),
        })
    pcb = np.array([np.nan if x is None else x for x in test_before.get("test_per_class_acc", [])], float)
    pca = np.array([np.nan if x is None else x for x in test_after.get("test_per_class_acc", [])], float)
    return {
        "test_acc_before": test_before.get("test_acc"),
        "test_acc_after": test_after.get("test_acc"),
        "per_class_change": (pca - pcb).tolist() if len(pca) == len(pcb) else [],
        "moved": rows,
        **moved_counts(rows),
    }


def moved_counts(rows: list[dict[str, Any]]) -> dict[str, int]:
    """How the moved images fared, from :func:`update_summary`'s rows: ``mistakes`` (moved
    images the model got wrong before the Update), ``mistakes_fixed`` (of those, right after),
    ``right_before`` (moved images it already got right: neighbours moved along, not counted
    as fixed) and ``right_broken`` (of those, wrong after)."""
    wrong = [r for r in rows if r["pred_before"] != r["true"]]
    right = [r for r in rows if r["pred_before"] == r["true"]]
    return {
        "moved_total": len(rows),
        "mistakes": len(wrong),
        "mistakes_fixed": sum(r["pred_after"] == r["true"] for r in wrong),
        "right_before": len(right),
        "right_broken": sum(r["pred_after"] != r["true"] for r in right),
    }


def heldout_metrics(wb: Workbench) -> dict[str, Any]:
    """Test accuracy, overall and per class, of the current version: the figures its version
    record already holds (computed when it was made), else an evaluation of the test split."""
    with wb.lock:
        model, version = wb.model, wb.current_version
    try:
        metrics = wb.version(version).metrics
    except KeyError:
        metrics = {}
    if metrics.get("test_acc") is not None and metrics.get("test_per_class_acc"):
        return {"test_acc": metrics["test_acc"], "test_per_class_acc": list(metrics["test_per_class_acc"])}
    ev = evaluate(model, *wb.data.split("test"))
    return {"test_acc": ev.accuracy, "test_per_class_acc": [None if np.isnan(a) else float(a) for a in ev.per_class_accuracy]}
