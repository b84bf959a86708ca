"""The one dataset spec every loader returns, and the errors loaders raise."""
from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .splits import check_splits, count_per_class, split_with_own_test, stratified_split

SPLITS = ("train", "val", "test", "pool")

# A progress callback: called with the fraction done (0..1, never decreasing, 1.0 last) and a
# short line saying what is being done ("reading train.tar.gz: 3,000 of 60,000 images").
Progress = Callable[[float, str], None]


def stage(progress: Progress | None, start: float, end: float) -> Progress | None:
    """``progress`` for one stage of a longer task: the stage's fractions 0..1 become
    ``start``..``end`` of the whole. None stays None."""
    if progress is None:
        return None

    def report(fraction: float, text: str) -> None:
        progress(start + (end - start) * min(1.0, max(0.0, float(fraction))), text)

    return report


def monotonic(progress: Progress | None) -> Progress | None:
    """``progress`` that never goes back: a fraction below the last one is reported as the last."""
    if progress is None:
        return None
    last = [0.0]

    def report(fraction: float, text: str) -> None:
        last[0] = max(last[0], min(1.0, float(fraction)))
        progress(last[0], text)

    return report


def counting(progress: Progress | None, total: int, what: str, steps: int = 100) -> Callable[[int], None]:
    """A ``tick(done)`` for a loop over ``total`` items that reports at most about ``steps``
    times (and always the last item): "WHAT: 3,000 of 60,000"."""
    if progress is None or total <= 0:
        return lambda done: None
    every = max(1, total // steps)

    def tick(done: int) -> None:
        if done == total or done % every == 0:
            progress(done / total, f"{what}: {done:,} of {total:,}")

    return tick


class DataError(ValueError):
    """A dataset could not be read; the message names the file and what was expected."""


@dataclass
class DatasetCard:
    """What a person needs to know about a dataset before trusting a model trained on it."""

    name: str
    source: str
    license: str
    classes: list[str]
    image_shape: tuple[int, int, int]
    total: int
    splits: dict[str, dict[str, int]]
    notes: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    masked: int = 0  # images with an object mask (0 when the dataset has no masks)
    mask_problems: list[str] = field(default_factory=list)  # per file: missing, mis-sized or unreadable masks

    def skipped_summary(self, shown: int = 3) -> str | None:
        """One line for the page about the files that were not read (None when none were):
        how many, the first ``shown`` with why, and what to do."""
        if not self.skipped:
            return None
        n = len(self.skipped)
        first = "; ".join(self.skipped[:shown]) + (f"; and {n - shown} more" if n > shown else "")
        return (f"Skipped {n} file{'s' if n != 1 else ''} of {self.name}: {first}. The other {self.total:,} "
                "images opened. To include a skipped image, replace it with a readable copy and open the data "
                "again; every skipped file is listed in the card on Home's Dataset tab.")

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "source": self.source,
            "license": self.license,
            "classes": list(self.classes),
            "image_shape": list(self.image_shape),
            "total": self.total,
            "splits": self.splits,
            "notes": list(self.notes),
            "skipped": list(self.skipped),
            "masked": self.masked,
            "mask_problems": list(self.mask_problems),
        }


@dataclass
class ImageDataset:
    """Images in [0, 1] as a float32 tensor (N, C, H, W), int64 labels (N,), class names,
    optional object masks (N, 1, H, W) in {0, 1}, and named splits as index arrays.

    ``has_mask`` (bool, one per row) says which rows have a real mask; a row without one has
    an all-zero mask, which must not be read as "no object". None means every row has one
    when ``masks`` is set; use :meth:`rows_with_mask` rather than reading it directly.

    An example's id is its row in ``images``; ids are stable for a given source and seed,
    so annotations can refer to them.
    """

    name: str
    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]
    splits: dict[str, np.ndarray]
    card: DatasetCard
    masks: torch.Tensor | None = None
    has_mask: np.ndarray | None = None

    @property
    def image_shape(self) -> tuple[int, int, int]:
        c, h, w = self.images.shape[1:]
        return int(c), int(h), int(w)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def split(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Images and labels of one split."""
        idx = torch.as_tensor(self.splits[name], dtype=torch.long)
        return self.images[idx], self.labels[idx]

    def ids(self, name: str) -> np.ndarray:
        """Example ids (rows of ``images``) in one split."""
        return self.splits[name]

    def eval_fingerprint(self) -> str:
        """A short hash of the evaluation splits (val and test: ids, labels, each image's pixel
        sum), class names and image shape. Metrics stored with a checkpoint are reused only
        for data with the same fingerprint, so a changed folder is evaluated again."""
        h = hashlib.sha256(json.dumps([self.classes, list(self.image_shape)]).encode())
        for name in ("val", "test"):
            idx = torch.as_tensor(self.splits.get(name, np.zeros(0, np.int64)), dtype=torch.long)
            h.update(name.encode())
            h.update(np.ascontiguousarray(idx.numpy(), dtype=np.int64).tobytes())
            h.update(np.ascontiguousarray(self.labels[idx].numpy(), dtype=np.int64).tobytes())
            sums = self.images[idx].flatten(1).double().sum(1) if len(idx) else torch.zeros(0, dtype=torch.float64)
            h.update(np.round(sums.numpy(), 3).tobytes())
        return h.hexdigest()[:16]

    def rows_with_mask(self) -> np.ndarray:
        """Bool per row: True where the row has a real object mask."""
        n = len(self.images)
        if self.masks is None:
            return np.zeros(n, dtype=bool)
        return np.ones(n, dtype=bool) if self.has_mask is None else np.asarray(self.has_mask, dtype=bool)


@dataclass
class RawImages:
    """Decoded images before splitting: uint8 (N, C, H, W), int64 labels and class names.

    ``is_test`` marks rows from the source's own test split (None when it has none);
    ``notes`` and ``skipped`` go to the card. ``masks`` is uint8 (N, 1, H, W) in {0, 1} when
    the source has masks, with ``has_mask`` per row and ``mask_problems`` for the card.
    """

    images: np.ndarray
    labels: np.ndarray
    classes: list[str]
    is_test: np.ndarray | None = None
    notes: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    masks: np.ndarray | None = None
    has_mask: np.ndarray | None = None
    mask_problems: list[str] = field(default_factory=list)

    def to_dataset(self, *, name: str, source: str, license: str, seed: int = 0) -> ImageDataset:
        """Split (keeping an own test split as "test") and wrap as an ImageDataset."""
        if self.is_test is not None and self.is_test.any():
            splits = split_with_own_test(self.labels, self.is_test, seed)
        else:
            splits = stratified_split(self.labels, seed=seed)
        return make_dataset(
            name=name, source=source, license=license, images=images_from_uint8(self.images),
            labels=self.labels, classes=self.classes, splits=splits, notes=self.notes,
            skipped=self.skipped,
            masks=None if self.masks is None else torch.from_numpy(np.ascontiguousarray(self.masks)).to(torch.float32),
            has_mask=self.has_mask, mask_problems=self.mask_problems,
        )


def images_from_uint8(array: np.ndarray) -> torch.Tensor:
    """uint8 (N, C, H, W) -> float32 tensor in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(array)).to(torch.float32).div_(255.0)


def make_dataset(
    *,
    name: str,
    source: str,
    license: str,
    images: torch.Tensor,
    labels: np.ndarray | torch.Tensor,
    classes: list[str],
    splits: dict[str, np.ndarray],
    notes: list[str] | None = None,
    skipped: list[str] | None = None,
    masks: torch.Tensor | None = None,
    has_mask: np.ndarray | None = None,
    mask_problems: list[str] | None = None,
) -> ImageDataset:
    """Check arrays and splits, count examples per split and class, and attach the card.

    With ``masks`` and no ``has_mask``, every row counts as having a mask.
    """
    labels_t = torch.as_tensor(np.asarray(labels), dtype=torch.int64)
    if images.dtype != torch.float32 or images.ndim != 4:
        raise ValueError(f"images must be float32 (N, C, H, W), got {images.dtype} {tuple(images.shape)}")
    if len(labels_t) != len(images):
        raise ValueError(f"{len(images)} images but {len(labels_t)} labels")
    if masks is not None and (masks.ndim != 4 or masks.shape[1] != 1 or len(masks) != len(images)):
        raise ValueError(f"masks must be (N, 1, H, W), got {tuple(masks.shape)}")
    if masks is None:
        has_mask = None
    else:
        has_mask = np.ones(len(images), bool) if has_mask is None else np.asarray(has_mask, dtype=bool)
        if has_mask.shape != (len(images),):
            raise ValueError(f"has_mask must be one bool per image ({len(images)}), got shape {has_mask.shape}")
    check_splits(splits, len(images))
    labels_np = labels_t.numpy()
    card = DatasetCard(
        name=name,
        source=source,
        license=license,
        classes=list(classes),
        image_shape=tuple(int(s) for s in images.shape[1:]),  # type: ignore[arg-type]
        total=int(len(images)),
        splits=count_per_class(labels_np, classes, splits),
        notes=list(notes or []),
        skipped=list(skipped or []),
        masked=0 if has_mask is None else int(has_mask.sum()),
        mask_problems=list(mask_problems or []),
    )
    return ImageDataset(
        name=name, images=images, labels=labels_t, classes=list(classes), splits=dict(splits),
        card=card, masks=masks, has_mask=has_mask,
    )
