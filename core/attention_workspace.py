"""The attention-guidance workflow (seed 001) without any UI: score the pool for a sampler,
turn clicks into annotations, fine-tune with the attention loss, and measure the result. The
Attention page and ``benchmarks/attention_guidance.py`` drive exactly these functions."""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from core.data.spec import ImageDataset
from core.engine import Callback, FitResult, TrainConfig, TrainControl, evaluate, fit, predict
from core.explain.gradcam import gradcam, gradcam_batches
from core.explain.superpixels import superpixels
from core.feedback.attention import (
    FEEDBACK as ATTENTION,
    KIND,
    PAPER_LR,
    PAPER_WEIGHTS,
    AttentionAnnotation,
    AttentionSettings,
    attention_in_mask,
)
from core.models.base import SteerableModel
from core.select import PoolView, get_sampler

CAM_SIDE = 14  # side of the maps the GMM sampler fits (the seed CNN's Grad-CAM layer is 14 x 14 on 28 px)


@dataclass(frozen=True)
class FineTuneSettings:
    """One round's fine-tune on the annotated images (paper: lr 0.01, w_g 0.75, w_c 0.25)."""

    epochs: int = 20
    lr: float = PAPER_LR
    w_g: float = PAPER_WEIGHTS[KIND]
    w_c: float = PAPER_WEIGHTS["cls"]
    batch_size: int = 32
    momentum: float = 0.9
    weight_decay: float = 5e-4
    target: str = "true"  # the class whose Grad-CAM is guided
    seed: int = 0
    device: str | None = None

    def config(self) -> TrainConfig:
        return TrainConfig(epochs=self.epochs, batch_size=self.batch_size, lr=self.lr, momentum=self.momentum,
                           weight_decay=self.weight_decay, seed=self.seed, device=self.device)


# ----------------------------------------------------------------------------- candidates
def pool_view(model: SteerableModel, images: torch.Tensor, ids: np.ndarray, needs: Iterable[str], *,
              batch_size: int = 256, cam_side: int = CAM_SIDE) -> PoolView:
    """What a sampler needs to know about the pool, in batched passes: probabilities always,
    features when asked, Grad-CAMs (of the predicted class, downsampled to ``cam_side``)
    when asked (one forward and one backward per batch, giving the probabilities too)."""
    needs = set(needs)
    cams = features = None
    was_training = model.training
    model.eval()
    try:
        if "cams" in needs:
            cam_t, logits = gradcam_batches(model, images, batch_size=batch_size, size=cam_side)
            cams = cam_t.numpy()
        else:
            logits, feats = predict(model, images, batch_size=batch_size, with_features="features" in needs)
            features = None if feats is None else feats.numpy()
        if "features" in needs and features is None:
            features = predict(model, images, batch_size=batch_size, with_features=True)[1].numpy()
    finally:
        model.train(was_training)
    probs = torch.softmax(logits, 1).numpy()
    return PoolView(ids=np.asarray(ids, dtype=np.int64), probs=probs, features=features, cams=cams)


def select_candidates(model: SteerableModel, data: ImageDataset, sampler: str, n: int, *,
                      exclude: Iterable[int] = (), split: str = "pool", seed: int = 0) -> np.ndarray:
    """The ``n`` example ids of ``split`` the sampler ranks first, never one in ``exclude``."""
    chosen = get_sampler(sampler)
    ids = np.asarray(data.ids(split), dtype=np.int64)
    excluded = set(int(i) for i in exclude)
    keep = np.array([i not in excluded for i in ids], dtype=bool)
    ids = ids[keep]
    if len(ids) == 0:
        return ids
    view = pool_view(model, data.images[torch.as_tensor(ids)], ids, chosen.needs)
    return chosen.rank(view, seed=seed, k=min(int(n), len(ids)))


# ----------------------------------------------------------------------------- simulated user
def simulated_annotation(example_id: int, label: int, image: torch.Tensor, mask: np.ndarray, cam: np.ndarray, *,
                         max_negatives: int = 5, outside_below: float = 0.05, segments: np.ndarray | None = None,
                         model_version: int | None = None) -> AttentionAnnotation:
    """The clicks a careful person makes on one image, from its object mask (ground truth a
    person has: they see where the object is), and the Grad-CAM they are shown.

    Positive: the centroid of the mask. Negative: each superpixel lying outside the object
    (less than ``outside_below`` of its pixels on the mask) whose mean attention is above the
    image's mean, at most ``max_negatives``, the most attended first.
    """
    mask = np.asarray(mask, dtype=bool).reshape(image.shape[-2:])
    cam = np.asarray(cam, dtype=np.float64).reshape(mask.shape)
    segments = superpixels(image) if segments is None else segments
    positives: list[tuple[float, float]] = []
    if mask.any():
        ys, xs = np.nonzero(mask)
        positives = [(float(xs.mean() + 0.5), float(ys.mean() + 0.5))]
    seg_ids = np.unique(segments)
    mean_att = np.array([cam[segments == s].mean() for s in seg_ids])
    on_object = np.array([mask[segments == s].mean() for s in seg_ids])
    eligible = (on_object < outside_below) & (mean_att > cam.mean())
    picked = seg_ids[eligible][np.argsort(-mean_att[eligible], kind="stable")][:max_negatives]
    negative = np.isin(segments, picked)
    return AttentionAnnotation.from_masks(int(example_id), int(label), positives=positives, negative=negative,
                                          operations=len(positives) + len(picked), model_version=model_version)


def annotate_like_a_person(model: SteerableModel, data: ImageDataset, ids: Sequence[int], *,
                           target: str = "true", **kw: Any) -> list[AttentionAnnotation]:
    """:func:`simulated_annotation` for each of ``ids`` (needs the dataset's object masks),
    with the Grad-CAM the page would show (of the true class by default)."""
    if data.masks is None:
        raise ValueError(f"{data.name} has no object masks: the simulated user needs them to know where the object is.")
    missing = [int(i) for i in ids if not data.rows_with_mask()[int(i)]]
    if missing:
        raise ValueError(f"examples {missing[:5]} have no object mask; leave them out (see without_masks)")
    idx = torch.as_tensor(np.asarray(ids, dtype=np.int64))
    was_training = model.training
    model.eval()
    try:
        targets = data.labels[idx] if target == "true" else None
        cams = gradcam(model, data.images[idx], targets).cams.cpu().numpy()
    finally:
        model.train(was_training)
    return [simulated_annotation(int(i), int(data.labels[i]), data.images[i], data.masks[i, 0].numpy(), cams[k], **kw)
            for k, i in enumerate(idx.tolist())]


# ----------------------------------------------------------------------------- fine-tuning
def fine_tune(model: SteerableModel, data: ImageDataset, annotations: Sequence[AttentionAnnotation],
              settings: FineTuneSettings = FineTuneSettings(), *, guidance: bool = True,
              callbacks: Sequence[Callback] = (), control: TrainControl | None = None) -> FitResult:
    """Fine-tune ``model`` in place on the annotated images: ``w_c`` x CE on them with their
    labels plus ``w_g`` x the attention loss (``guidance=False``: CE alone with weight 1, the
    same-information baseline with the same steps)."""
    plan = fine_tune_plan(data, annotations, settings, guidance=guidance)
    return fit(model, plan["train"], None, config=settings.config(), train_ids=plan["train_ids"],
               loss_terms=plan["loss_terms"], weights=plan["weights"], callbacks=callbacks, control=control)


def fine_tune_plan(data: ImageDataset, annotations: Sequence[AttentionAnnotation],
                   settings: FineTuneSettings = FineTuneSettings(), *, guidance: bool = True) -> dict[str, Any]:
    """What :func:`core.engine.fit` (or ``Workbench.start_training``) takes for one round."""
    if not annotations:
        raise ValueError("Confirm at least one annotation before fine-tuning.")
    ids = torch.as_tensor([a.example_id for a in annotations], dtype=torch.long)
    plan: dict[str, Any] = {"train": (data.images[ids], data.labels[ids]), "train_ids": ids,
                            "loss_terms": None, "weights": None}
    if guidance:
        plan["loss_terms"] = {KIND: ATTENTION.loss_term(data, annotations, AttentionSettings(target=settings.target,
                                                                                              seed=settings.seed))}
        plan["weights"] = {"cls": settings.w_c, KIND: settings.w_g}
    return plan


# ----------------------------------------------------------------------------- measuring
def bias_report(model: SteerableModel, data: ImageDataset, *, masks_split: str = "test") -> dict[str, float | None]:
    """Accuracy (percent) on the test split (bias-conflicting for a biased set), on
    ``test_aligned`` when the data has it, and the share of Grad-CAM mass (true class) inside
    the object masks on the test split's rows that have a mask (None when none has)."""
    out: dict[str, float | None] = {}
    x, y = data.split("test")
    out["test_acc"] = 100 * evaluate(model, x, y).accuracy
    out["aligned_acc"] = 100 * evaluate(model, *data.split("test_aligned")).accuracy if "test_aligned" in data.splits else None
    rows = np.asarray(data.ids(masks_split), dtype=np.int64)
    rows = rows[data.rows_with_mask()[rows]] if data.masks is not None else rows[:0]
    if len(rows):
        idx = torch.as_tensor(rows)
        was_training = model.training
        model.eval()
        try:
            out["attention_in_mask"] = 100 * attention_in_mask(model, data.images[idx], data.masks[idx], data.labels[idx])
        finally:
            model.train(was_training)
    else:
        out["attention_in_mask"] = None
    return out


def without_masks(data: ImageDataset, split: str = "pool") -> np.ndarray:
    """Ids of ``split`` that have no object mask (a simulated user cannot annotate them)."""
    ids = np.asarray(data.ids(split), dtype=np.int64)
    return ids[~data.rows_with_mask()[ids]]
