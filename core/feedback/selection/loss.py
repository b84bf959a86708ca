"""Selected examples (seed 003, ReVACNN's "retrain on selection"): a person box-selects points
in the activation embedding (typically the misclassified ones around a confused pair of
classes) and the model is retrained for a number of iterations on them, each batch filled up
with random training examples.

Loss of one step = mean CE over one mixed batch of ``selected_per_batch`` selected examples
(with their true labels) and ``batch_size - selected_per_batch`` random training examples.
The engine computes the CE of the training fill ("cls"); :class:`SelectedExamplesLoss` adds
the CE of the selected part, and the weights are the two shares of the batch, so the sum is
the mean over the mixed batch.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from core.data.spec import ImageDataset
from core.engine import Batch, Callback, FitResult, TrainConfig, TrainControl, TrainsWith, fit
from core.models.base import SteerableModel
from core.session.runs import FineTune, KindPlan

KIND = "selection"


#: the retrain's optimiser and mixed batch (lr tuned in benchmarks/select_retrain.py)
RETRAIN = TrainConfig(epochs=1, batch_size=64, lr=0.003)


@dataclass(frozen=True)
class RetrainSettings(TrainsWith):
    """How long and how hard to retrain on a selection.

    Defaults are the ones ``benchmarks/select_retrain.py`` uses. Tuned there on Quick Draw
    (seed-cnn, seeds 0-4): they fixed every selected mistake on all 5 seeds and kept the
    validation accuracy within 0.5 points; 100 iterations at lr 0.01 (or 0.005) fixed 100%
    (99.3%) but moved it by up to 2.9 (1.3) points on a seed.
    """

    iterations: int = 200  # optimisation steps
    selected_per_batch: int = 16  # selected examples in each batch; the rest is random training fill
    # the optimiser (lr, momentum, weight decay, seed, device) and the size of each mixed batch; the
    # run is always one pass over the fill (see retrain_config)
    train: TrainConfig = field(default_factory=lambda: replace(RETRAIN))

    def __post_init__(self) -> None:
        if self.iterations < 1:
            raise ValueError(f"iterations must be at least 1, got {self.iterations}.")
        if self.selected_per_batch < 1:
            raise ValueError(f"selected_per_batch must be at least 1, got {self.selected_per_batch}.")
        if self.selected_per_batch >= self.train.batch_size:
            raise ValueError(
                f"selected_per_batch ({self.selected_per_batch}) must be smaller than batch_size "
                f"({self.train.batch_size}): the rest of each batch is random training examples."
            )
        if not self.train.lr > 0:
            raise ValueError(f"lr must be positive, got {self.train.lr}.")
        if not 0 <= self.train.momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {self.train.momentum}.")

    @property
    def fill_per_batch(self) -> int:
        """Random training examples in each batch."""
        return self.train.batch_size - self.selected_per_batch


class SelectedExamplesLoss:
    """Loss term: CE on the next ``per_batch`` selected examples with their labels.

    The examples are taken in a seeded permutation that is redrawn after each full pass, so
    every selected example is seen equally often. The examples are forwarded once per step
    in the model's current mode, so the gradient reaches every unfrozen layer. (With
    BatchNorm, as in vgg6, they are normalised by their own batch statistics, not the
    fill's: the term only sees the batch after the engine's forward pass.)
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, per_batch: int, seed: int = 0) -> None:
        if len(images) == 0:
            raise ValueError("SelectedExamplesLoss needs at least one selected example.")
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} selected images but {len(labels)} labels.")
        if per_batch < 1:
            raise ValueError(f"per_batch must be at least 1, got {per_batch}.")
        self.images = images
        self.labels = torch.as_tensor(labels, dtype=torch.long)
        self.per_batch = int(per_batch)
        self.seed = int(seed)
        self.reset()

    def reset(self) -> None:
        """Start over from the first permutation (the same sequence of draws again)."""
        self._generator = torch.Generator().manual_seed(self.seed)
        self._order = torch.zeros(0, dtype=torch.long)

    def next_indices(self) -> torch.Tensor:
        """Rows of the selection for the next step (with repeats only across passes)."""
        out: list[torch.Tensor] = []
        need = self.per_batch
        while need > 0:
            if len(self._order) == 0:
                self._order = torch.randperm(len(self.images), generator=self._generator)
            take, self._order = self._order[:need], self._order[need:]
            out.append(take)
            need -= len(take)
        return torch.cat(out)

    def __call__(self, model: SteerableModel, batch: Batch) -> torch.Tensor:
        idx = self.next_indices()
        device = batch.x.device
        logits = model.head(model.features(self.images[idx].to(device)))
        return F.cross_entropy(logits, self.labels[idx].to(device))

    def __len__(self) -> int:
        return len(self.images)


@dataclass
class RetrainPlan:
    """Everything :func:`core.engine.fit` (or ``Workbench.start_training``) needs for one
    retrain on a selection. The loss term keeps its place in the selection, so a plan is
    for one run: plan again (or ``reset()`` the term) to repeat it."""

    train: tuple[torch.Tensor, torch.Tensor]  # the random fill: iterations * fill_per_batch training examples
    train_ids: torch.Tensor
    loss_terms: dict[str, SelectedExamplesLoss]
    weights: dict[str, float]  # {"cls": fill share, KIND: selected share}: mean CE over one mixed batch
    config: TrainConfig  # epochs=1 and batch_size=fill_per_batch: exactly `iterations` steps
    selected_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    settings: RetrainSettings = field(default_factory=RetrainSettings)

    @property
    def steps(self) -> int:
        """Optimisation steps the plan runs."""
        return -(-len(self.train[0]) // self.config.batch_size)

    def description(self) -> str:
        """One line for the version list."""
        return f"retrain on selection: {len(self.selected_ids)} examples, {self.settings.iterations} iterations"

    def feedback(self) -> dict[str, Any]:
        """What to store with the new version: the kind, the selected ids and the settings."""
        return {"kind": KIND, "example_ids": [int(i) for i in self.selected_ids],
                "settings": dataclasses.asdict(self.settings), "weights": dict(self.weights)}


def check_ids(data: ImageDataset, ids: Sequence[int] | np.ndarray | torch.Tensor) -> np.ndarray:
    """``ids`` as a sorted array of distinct int64 example ids of ``data``; ValueError when
    empty or when an id is not an example of ``data``."""
    arr = ids.detach().cpu().numpy() if isinstance(ids, torch.Tensor) else np.asarray(ids)
    if arr.size == 0:
        raise ValueError("The selection is empty: select at least one example.")
    arr = arr.reshape(-1)
    if arr.dtype.kind not in "iu":
        if arr.dtype.kind == "f" and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)):
            arr = arr.astype(np.int64)
        else:
            raise ValueError(f"Example ids must be integers, got {arr.dtype}.")
    arr = np.unique(arr.astype(np.int64))
    bad = arr[(arr < 0) | (arr >= len(data.images))]
    if len(bad):
        shown = ", ".join(str(int(i)) for i in bad[:5]) + (" ..." if len(bad) > 5 else "")
        raise ValueError(f"Unknown example ids {shown}: {data.name} has ids 0..{len(data.images) - 1}.")
    return arr


def fill_indices(n: int, count: int, seed: int = 0) -> torch.Tensor:
    """``count`` indices into ``n`` items: seeded permutations of range(n) one after the other,
    cut at ``count`` (each item at most once per pass, so repeats only when count > n)."""
    if count > 0 and n == 0:
        raise ValueError("The train split is empty: there are no training examples to fill the batches with.")
    g = torch.Generator().manual_seed(seed)
    parts, have = [], 0
    while have < count:
        parts.append(torch.randperm(n, generator=g))
        have += n
    return torch.cat(parts)[:count] if parts else torch.zeros(0, dtype=torch.long)


def retrain_config(settings: RetrainSettings) -> TrainConfig:
    """The config of a retrain: one epoch of ``iterations`` batches of ``fill_per_batch`` training fill."""
    return replace(settings.train, epochs=1, batch_size=settings.fill_per_batch)


def plan_retrain(data: ImageDataset, selected_ids: Sequence[int], settings: RetrainSettings = RetrainSettings()) -> RetrainPlan:
    """Plan a retrain on the examples ``selected_ids`` (global ids, any split, typically pool;
    their true labels are used): ``settings.iterations`` steps, each on
    ``selected_per_batch`` selected examples plus random training fill."""
    ids = check_ids(data, selected_ids)
    train_rows = np.asarray(data.ids("train"), dtype=np.int64)
    fill = settings.fill_per_batch
    pick = fill_indices(len(train_rows), settings.iterations * fill, seed=settings.train.seed)
    fill_ids = torch.as_tensor(train_rows)[pick]
    loss = FEEDBACK.loss_term(data, [Selected(int(i), int(data.labels[int(i)])) for i in ids], settings)
    config = retrain_config(settings)
    weights = {"cls": fill / settings.train.batch_size, KIND: settings.selected_per_batch / settings.train.batch_size}
    return RetrainPlan(train=(data.images[fill_ids], data.labels[fill_ids]), train_ids=fill_ids,
                       loss_terms={KIND: loss}, weights=weights, config=config, selected_ids=ids,
                       settings=settings)


def retrain_on_selection(
    model: SteerableModel,
    data: ImageDataset,
    selected_ids: Sequence[int],
    settings: RetrainSettings = RetrainSettings(),
    *,
    callbacks: Sequence[Callback] = (),
    control: TrainControl | None = None,
) -> FitResult:
    """Retrain ``model`` in place on the selection (see :func:`plan_retrain`) with
    :func:`core.engine.fit`, validating on ``data``'s val split after the run."""
    plan = plan_retrain(data, selected_ids, settings)
    val = data.split("val") if "val" in data.splits else None
    return fit(model, plan.train, val, config=plan.config, train_ids=plan.train_ids, loss_terms=plan.loss_terms,
               weights=plan.weights, callbacks=callbacks, control=control)


def most_confused_pair(labels: np.ndarray, preds: np.ndarray, num_classes: int | None = None) -> tuple[int, int]:
    """The unordered class pair (a, b), a < b, with the most mistakes between them (a->b plus
    b->a); ties go to the smallest (a, b). ValueError when there is no mistake."""
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    preds = np.asarray(preds, dtype=np.int64).reshape(-1)
    if len(labels) != len(preds):
        raise ValueError(f"{len(labels)} labels but {len(preds)} predictions.")
    if len(labels) and min(labels.min(), preds.min()) < 0:
        raise ValueError("Class indices must be non-negative.")
    k = int(max(labels.max(initial=-1), preds.max(initial=-1)) + 1)
    k = max(k, num_classes or 0)
    conf = np.bincount(labels * k + preds, minlength=k * k).reshape(k, k) if k else np.zeros((0, 0), np.int64)
    sym = np.triu(conf + conf.T, 1)
    if sym.size == 0 or sym.max() == 0:
        raise ValueError("There is no mistake between two classes: nothing to select.")
    a, b = np.unravel_index(int(np.argmax(sym)), sym.shape)  # row-major: first maximum is the smallest (a, b)
    return int(a), int(b)


def box_select(coords: np.ndarray, box: tuple[float, float, float, float]) -> np.ndarray:
    """Indices of the rows of ``coords`` (n, 2) inside ``box`` = (x0, x1, y0, y1), bounds
    inclusive, either order of x0/x1 and y0/y1."""
    coords = np.asarray(coords, dtype=np.float64)
    if coords.ndim != 2 or coords.shape[1] != 2:
        raise ValueError(f"coords must be (n, 2), got {coords.shape}.")
    if len(box) != 4:
        raise ValueError(f"box must be (x0, x1, y0, y1), got {box!r}.")
    x0, x1, y0, y1 = (float(v) for v in box)
    if not all(np.isfinite([x0, x1, y0, y1])):
        raise ValueError(f"box bounds must be finite, got {box!r}.")
    (x0, x1), (y0, y1) = sorted((x0, x1)), sorted((y0, y1))
    x, y = coords[:, 0], coords[:, 1]
    return np.flatnonzero((x >= x0) & (x <= x1) & (y >= y0) & (y <= y1)).astype(np.int64)


def selection_report(labels: np.ndarray, preds_before: np.ndarray, preds_after: np.ndarray) -> dict[str, Any]:
    """For the selected examples: ``n``, ``wrong_before``, ``right_before``, ``right_after``,
    ``fixed`` (wrong before, right after), ``broken`` (right before, wrong after),
    ``fixed_fraction`` (fixed / wrong_before, NaN when none was wrong) and
    ``right_after_fraction`` (right_after / n)."""
    labels = np.asarray(labels).reshape(-1)
    before = np.asarray(preds_before).reshape(-1)
    after = np.asarray(preds_after).reshape(-1)
    if not len(labels) == len(before) == len(after):
        raise ValueError(f"Lengths differ: {len(labels)} labels, {len(before)} and {len(after)} predictions.")
    right_b, right_a = before == labels, after == labels
    n, wrong_before = int(len(labels)), int((~right_b).sum())
    fixed = int((~right_b & right_a).sum())
    return {
        "n": n,
        "wrong_before": wrong_before,
        "right_before": int(right_b.sum()),
        "right_after": int(right_a.sum()),
        "fixed": fixed,
        "broken": int((right_b & ~right_a).sum()),
        "fixed_fraction": fixed / wrong_before if wrong_before else float("nan"),
        "right_after_fraction": int(right_a.sum()) / n if n else float("nan"),
    }


@dataclass(frozen=True)
class Selected:
    """One selected example (its true label is what the loss uses)."""

    example_id: int
    label: int


class SelectionKind:
    """The selected-examples feedback kind (see :class:`core.feedback.FeedbackKind`)."""

    name = KIND
    annotation_type = Selected

    def to_payload(self, annotation: Selected) -> tuple[int, dict[str, Any]]:
        return int(annotation.example_id), {"label": int(annotation.label)}

    def from_payload(self, example_id: int, payload: dict[str, Any]) -> Selected:
        return Selected(int(example_id), int(payload["label"]))

    def loss_term(self, data: ImageDataset, annotations: Sequence[Selected],
                  settings: RetrainSettings | None = None) -> SelectedExamplesLoss:
        """CE on the selected examples, ``selected_per_batch`` per step (labels from the data)."""
        settings = settings or RetrainSettings()
        ids = torch.as_tensor(check_ids(data, [a.example_id for a in annotations]))
        return SelectedExamplesLoss(data.images[ids], data.labels[ids], settings.selected_per_batch, seed=settings.train.seed)

    def describe(self, annotations: Sequence[Selected]) -> str:
        return f"retrain on selection: {len(annotations)} examples"

    def plan(self, data: ImageDataset, annotations: Sequence[Selected], settings: FineTune) -> KindPlan:
        """The retrain of :func:`plan_retrain` (``settings.settings``: its :class:`RetrainSettings`;
        ``settings.config`` should be its :func:`retrain_config`)."""
        retrain = settings.settings or RetrainSettings()
        ids = [int(a.example_id) for a in annotations]
        p = plan_retrain(data, ids, retrain)
        return KindPlan(terms=p.loss_terms, weights=p.weights, train=p.train, train_ids=p.train_ids,
                        description=p.description(),
                        feedback={"kind": KIND, "ids": ids, "settings": dataclasses.asdict(retrain)})


FEEDBACK = SelectionKind()
