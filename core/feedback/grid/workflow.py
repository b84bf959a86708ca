"""The grid-feedback workflow (seed 002) without any UI: pick the model's uncertain mistakes
at an epoch end, the simulated user's marks (and the random-squares control), and a training
run that reviews at each epoch end and trains on with the grid penalty. The Grid feedback page
and ``benchmarks/grid_feedback.py`` drive these functions."""
from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from core.data.spec import ImageDataset
from core.engine import Callback, EpochInfo, FitResult, TrainConfig, TrainControl, fit, predict
from core.explain.saliency import input_gradients
from core.feedback.grid.loss import (
    FEEDBACK as GRID,
    KIND,
    GridAnnotation,
    GridPenalty,
    GridSettings,
    default_grid,
    squares_outside_top,
    squares_without_object,
)
from core.feedback.counterexamples import KIND as CEX, CounterexampleSettings, counterexample_term
from core.models import for_inference
from core.shortcut import percent_in_mask, split_accuracies
from core.models.base import SteerableModel
from core.select import PoolView, get_sampler

REVIEW_SAMPLERS = ("entropy", "margin", "random")
REVIEW_K = 10


# ----------------------------------------------------------------------------- what to review
def review_candidates(model: SteerableModel, data: ImageDataset, k: int = REVIEW_K, *, method: str = "entropy",
                      exclude: Iterable[int] = (), split: str = "train", seed: int = 0, batch_size: int = 512,
                      progress: Callable[[float], None] | None = None) -> np.ndarray:
    """Ids of ``k`` mistakes of ``split`` (predicted class != label), ranked by ``method``:
    "entropy" (most uncertain first, the paper's), "margin" (smallest top-two gap first) or
    "random" (seeded); never an id in ``exclude`` (already reviewed). Fewer when the split
    has fewer mistakes. One batched prediction pass over the split, in eval mode (the
    model's mode is restored)."""
    if method not in REVIEW_SAMPLERS:
        raise ValueError(f"Unknown review sampler {method!r}; choose from {', '.join(REVIEW_SAMPLERS)}.")
    ids = np.asarray(data.ids(split), dtype=np.int64)
    excluded = np.fromiter((int(i) for i in exclude), dtype=np.int64)
    ids = ids[~np.isin(ids, excluded)]
    if len(ids) == 0 or k <= 0:
        return ids[:0]
    logits = []
    for start in range(0, len(ids), batch_size):
        chunk = torch.as_tensor(ids[start:start + batch_size])
        logits.append(predict(model, data.images[chunk], batch_size=batch_size)[0])
        if progress is not None:
            progress(min(1.0, (start + len(chunk)) / len(ids)))
    probs = torch.softmax(torch.cat(logits), 1)
    wrong = (probs.argmax(1) != data.labels[torch.as_tensor(ids)]).numpy()
    view = PoolView(ids=ids[wrong], probs=probs[torch.from_numpy(wrong)].numpy())
    return get_sampler(method).rank(view, seed=seed, k=min(int(k), len(view)))


# ----------------------------------------------------------------------------- simulated user
def _masked_rows(data: ImageDataset, ids: Sequence[int]) -> list[int]:
    if data.masks is None:
        raise ValueError(f"{data.name} has no object masks: the simulated user needs them to know where the object is.")
    ids = [int(i) for i in ids]
    missing = [i for i in ids if not data.rows_with_mask()[i]]
    if missing:
        raise ValueError(f"examples {missing[:5]} have no object mask; leave them out (see without_masks)")
    return ids


def simulated_review(data: ImageDataset, ids: Sequence[int], *, n: int | None = None, method: str = "gradient",
                     epoch: int | None = None) -> list[GridAnnotation]:
    """What a careful person marks on each image: every square of an ``n`` x ``n`` grid
    (default :func:`core.feedback.grid.loss.default_grid`) that holds no object pixel, from the
    object masks (ground truth a person has: they see where the object is). Needs a mask
    for every id (see :func:`without_masks`). ``method``: the saliency shown (recorded)."""
    ids = _masked_rows(data, ids)
    h, w = data.image_shape[1:]
    n = n or default_grid(h, w)
    out = []
    for i in ids:
        squares = squares_without_object(data.masks[i, 0].numpy(), n)
        out.append(GridAnnotation(i, int(data.labels[i]), (h, w), n, squares, method, epoch, operations=len(squares),
                                  extra={"user": "simulated: every square without an object pixel"}))
    return out


def random_review(data: ImageDataset, ids: Sequence[int], *, n: int | None = None, method: str = "gradient",
                  epoch: int | None = None, seed: int = 0) -> list[GridAnnotation]:
    """The control for "any penalty helps": the same images as :func:`simulated_review`, each
    with the same number of squares, chosen uniformly at random among all n x n (object
    squares included), drawn from ``seed``."""
    like = simulated_review(data, ids, n=n, method=method, epoch=epoch)
    rng = np.random.default_rng(seed)
    return [GridAnnotation(a.example_id, a.label, a.shape, a.n,
                           tuple(int(s) for s in rng.choice(a.n * a.n, size=len(a.squares), replace=False)),
                           method, epoch, operations=len(a.squares),
                           extra={"user": "random squares (control), as many as the simulated user marks"})
            for a in like]


@dataclass(frozen=True)
class ReviewMaps:
    """What a reviewer sees: saliency maps (N, H, W) in [0, 1] of the images' true class, each
    scaled by its 99th percentile, the model's predictions, and the method that made the maps
    (``fallback``: why the asked-for method could not run on this model, so the input gradient
    made them; empty when it ran)."""

    maps: np.ndarray
    predictions: np.ndarray
    method: str
    fallback: str = ""


def review_maps(model: SteerableModel, data: ImageDataset, ids: Sequence[int], method: str = "gradient") -> ReviewMaps:
    """The maps and predictions of the images under review, as the Grid page and the study's
    grid condition show them. Scaled by the 99th percentile, not the maximum: gradient maps are
    spiky, and a few extreme pixels would leave the rest of the map too faint to read."""
    from core.explain.saliency import saliency_maps  # Captum loads on first use

    if not len(ids):
        return ReviewMaps(np.zeros((0, *data.image_shape[1:]), np.float32), np.zeros(0, np.int64), method)
    idx = torch.as_tensor(list(ids), dtype=torch.long)
    used, fallback = method, ""
    try:
        maps = saliency_maps(model, data.images[idx], data.labels[idx], method)
    except ValueError as exc:  # a method this model cannot run (DeepLift on a model torch.fx cannot trace)
        used, fallback = "gradient", str(exc)
        maps = saliency_maps(model, data.images[idx], data.labels[idx], used)
    top = np.percentile(maps.reshape(len(maps), -1), 99, axis=1).reshape(-1, 1, 1)
    preds = predict(model, data.images[idx])[0].argmax(1).numpy()
    return ReviewMaps(np.clip(maps / np.maximum(top, 1e-12), 0, 1), preds, used, fallback)


def without_masks(data: ImageDataset, split: str = "train") -> np.ndarray:
    """Ids of ``split`` that have no object mask (a simulated user cannot review them)."""
    ids = np.asarray(data.ids(split), dtype=np.int64)
    return ids if data.masks is None else ids[~data.rows_with_mask()[ids]]


# ----------------------------------------------------------------------------- training with reviews
@dataclass
class Review:
    """One epoch end's review: which images, their marks and how long choosing and marking took."""

    epoch: int
    ids: list[int]
    annotations: list[GridAnnotation]
    seconds: float
    penalty_size: int  # reviewed images in the penalty set after this review


class ReviewCallback(Callback):
    """Reviews at each epoch end that has training after it, in the training thread (the
    engine calls ``on_epoch`` between epochs: the pause point) and adds the marks to the
    penalty set before the next epoch's first step.

    ``marks``: "objects" (the simulated user, :func:`simulated_review`) or "random" (the
    control, :func:`random_review`). The images are the ``k`` mistakes ``sampler`` ranks
    first among those not reviewed yet nor in ``exclude``, or, with ``ids_by_epoch``,
    exactly those (a control reviews the images another run reviewed).
    """

    def __init__(self, model: SteerableModel, data: ImageDataset, penalty: GridPenalty, *, epochs: int,
                 k: int = REVIEW_K, sampler: str = "entropy", marks: str = "objects",
                 ids_by_epoch: Mapping[int, Sequence[int]] | None = None, exclude: Iterable[int] = (),
                 n: int | None = None, method: str = "gradient", seed: int = 0,
                 also: Sequence[Any] = ()) -> None:
        if marks not in ("objects", "random"):
            raise ValueError("marks must be 'objects' or 'random'")
        self.model, self.data, self.penalty = model, data, penalty
        self.epochs, self.k, self.sampler, self.marks = int(epochs), int(k), sampler, marks
        self.ids_by_epoch = None if ids_by_epoch is None else {int(e): list(v) for e, v in ids_by_epoch.items()}
        self.exclude = [int(i) for i in exclude]
        self.n, self.method, self.seed = n, method, seed
        self.also = list(also)  # other terms the marks feed (counterexamples), each with ``add``
        self.reviews: list[Review] = []

    @property
    def reviewed(self) -> list[int]:
        return [i for r in self.reviews for i in r.ids]

    def on_epoch(self, info: EpochInfo) -> None:
        if info.epoch + 1 >= self.epochs:  # nothing trains after the last epoch: no review
            return
        t0 = time.perf_counter()
        if self.ids_by_epoch is not None:
            ids = [int(i) for i in self.ids_by_epoch.get(info.epoch, [])]
        else:
            ids = review_candidates(self.model, self.data, self.k, method=self.sampler,
                                    exclude=self.reviewed + self.exclude, seed=self.seed * 1000 + info.epoch).tolist()
        if self.marks == "objects":
            anns = simulated_review(self.data, ids, n=self.n, method=self.method, epoch=info.epoch)
        else:
            anns = random_review(self.data, ids, n=self.n, method=self.method, epoch=info.epoch,
                                 seed=self.seed * 1000 + info.epoch)
        size = self.penalty.add(anns) if anns else len(self.penalty)
        for term in self.also:
            if anns:
                term.add(anns)
        self.reviews.append(Review(info.epoch, ids, anns, time.perf_counter() - t0, size))


@dataclass
class ReviewedRun:
    """A training run with reviews: how it ended, its penalty (lambda, the set) and the reviews."""

    result: FitResult
    penalty: GridPenalty | None
    reviews: list[Review] = field(default_factory=list)

    @property
    def annotations(self) -> list[GridAnnotation]:
        return [a for r in self.reviews for a in r.annotations]

    @property
    def ids_by_epoch(self) -> dict[int, list[int]]:
        return {r.epoch: list(r.ids) for r in self.reviews}


def train_with_reviews(model: SteerableModel, data: ImageDataset, config: TrainConfig, *,
                       marks: str | None = "objects", k: int = REVIEW_K, sampler: str = "entropy",
                       ids_by_epoch: Mapping[int, Sequence[int]] | None = None,
                       settings: GridSettings | None = None, n: int | None = None, method: str = "gradient",
                       exclude: Iterable[int] = (), callbacks: Sequence[Callback] = (),
                       control: TrainControl | None = None, penalty: bool = True,
                       counterexamples: CounterexampleSettings | None = None) -> ReviewedRun:
    """Train ``model`` in place on ``data``'s train split (validating on val) for
    ``config.epochs`` epochs, reviewing at each epoch end that has training after it
    (:class:`ReviewCallback`) and training on with CE + the grid penalty (``settings``: default
    :class:`GridSettings`). ``penalty=False`` leaves the penalty out of the loss (the reviews
    still happen); ``counterexamples`` (enabled) adds the CE of copies of each reviewed image
    whose marked squares come from other training images. ``marks=None``: the same training
    without reviews or penalty (the baseline)."""
    train_ids = torch.as_tensor(data.ids("train"), dtype=torch.long)
    if marks is None:
        result = fit(model, data.split("train"), data.split("val"), config=config, train_ids=train_ids,
                     callbacks=callbacks, control=control)
        return ReviewedRun(result, None, [])
    review_set = GRID.loss_term(data, [], settings)
    terms: dict[str, Any] = {KIND: review_set} if penalty else {}
    weights = {"cls": 1.0, KIND: 1.0}
    if counterexamples is not None and counterexamples.enabled:
        terms[CEX] = counterexample_term(data, [], counterexamples)
        weights[CEX] = counterexamples.weight
    reviewer = ReviewCallback(model, data, review_set, epochs=config.epochs, k=k, sampler=sampler, marks=marks,
                              ids_by_epoch=ids_by_epoch, exclude=exclude, n=n, method=method, seed=config.seed,
                              also=[t for name, t in terms.items() if name == CEX])
    result = fit(model, data.split("train"), data.split("val"), config=config, train_ids=train_ids,
                 loss_terms=terms or None, weights=weights, callbacks=[reviewer, *callbacks], control=control)
    penalty = review_set
    return ReviewedRun(result, penalty, reviewer.reviews)


# ----------------------------------------------------------------------------- measuring
def gradient_in_mask(model: SteerableModel, images: torch.Tensor, masks: torch.Tensor, labels: torch.Tensor, *,
                     batch_size: int = 256) -> float:
    """Mean share of the squared input gradient (of log p_y, summed over channels) that lies
    on the object masks: how much the model's local explanation sits on the object. Eval
    mode, without switching ``model``'s mode (see :func:`core.models.for_inference`);
    images whose gradient is all zero count 0."""
    model = for_inference(model)
    shares = []
    for s in range(0, len(images), batch_size):
        g = input_gradients(model, images[s:s + batch_size], labels[s:s + batch_size]).pow(2).sum(1)
        m = masks[s:s + batch_size].to(g.device).float().reshape(g.shape)
        mass = g.sum(dim=(1, 2))
        shares.append(torch.where(mass > 0, (g * m).sum(dim=(1, 2)) / mass.clamp_min(1e-30), torch.zeros_like(mass)))
    return float(torch.cat(shares).mean()) if shares else float("nan")


def bias_report(model: SteerableModel, data: ImageDataset, *, gradient_rows: int = 2000) -> dict[str, float | None]:
    """Accuracy (percent) on the test split (bias-conflicting for a biased set) and on
    ``test_aligned`` when the data has it, and the share of the squared input gradient on the
    object (percent) over the first ``gradient_rows`` test rows that have a mask (None when none has)."""
    model = for_inference(model)  # one eval-mode model for every figure; a shared one is never switched
    out = split_accuracies(model, data)
    out["gradient_in_mask"] = percent_in_mask(gradient_in_mask, model, data, "test", gradient_rows)
    return out


def review_rows(annotations: Sequence[GridAnnotation], classes: Sequence[str]) -> list[dict[str, Any]]:
    """One flat row per reviewed image, for CSV/JSON downloads (W as its marked squares)."""
    return [{"example_id": a.example_id, "label": classes[a.label] if 0 <= a.label < len(classes) else a.label,
             "epoch": None if a.epoch is None else a.epoch + 1, "method": a.method, "grid": a.n,
             "squares": list(a.squares), "marked_pixels": int(a.weights().sum()), "seconds": a.seconds,
             "operations": a.operations} for a in annotations]


# ----------------------------------------------------------------------------- marking by rule
@dataclass(frozen=True)
class OutsideTop:
    """What "mark all squares outside the top x%" does on one map: ``squares`` to mark, or
    none and a ``message`` saying why the rule was not applied."""

    squares: tuple[int, ...]
    message: str | None = None


def outside_top_marks(saliency: np.ndarray, n: int, top_percent: float) -> OutsideTop:
    """The squares of an ``n`` x ``n`` grid that hold none of the ``top_percent`` (1-100) most
    salient pixels of ``saliency`` (H, W) (:func:`core.feedback.grid.loss.squares_outside_top`),
    unless the rule would mark every square or none: then nothing, and a message.

    Every square comes out on a blank map (no pixel above zero: no top pixels at all), none
    when the top pixels touch every square (a flat map, ties included). Neither says where the
    model looks, and marking all squares fences off the object too, so the person marks by hand."""
    squares = squares_outside_top(saliency, n, float(top_percent) / 100)
    total, top = int(n) * int(n), f"{float(top_percent):g}%"
    if len(squares) == total:
        return OutsideTop((), f"All {total} squares lie outside the top {top} of this map: the map is blank (no "
                              "pixel stands out), so the rule would fence off the object too. Nothing was marked; "
                              "mark the squares by hand.")
    if not squares:
        return OutsideTop((), f"None of the {total} squares lies outside the top {top} of this map: its most salient "
                              "pixels touch every square (the map is flat). Nothing was marked; mark the squares by "
                              "hand, or try a smaller percentage.")
    return OutsideTop(squares)
