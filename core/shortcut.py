"""Shortcut meter: does the model use the background? Accuracy on test images whose
background (the pixels outside the object mask) is swapped with another test image's
background, next to the plain accuracy on the same images.

A model that reads the class off the background (a shortcut) loses accuracy under the swap;
one that looks at the object does not. It needs object masks only, no bias-conflicting split,
so it works on any dataset with masks (a user's ImageFolder with ``masks/`` included).
"""
from __future__ import annotations

import numpy as np
import torch

from core.data import ImageDataset
from core.engine import evaluate
from core.models import SteerableModel

__all__ = ["swap_partners", "swap_backgrounds", "meter_split", "shortcut_meter"]


def swap_partners(n: int, labels: torch.Tensor | np.ndarray | None = None, *, seed: int = 0) -> torch.Tensor:
    """A derangement of ``range(n)`` (no row is its own partner, every row is used once as a
    partner) drawn from a ``torch.Generator`` seeded with ``seed``.

    With ``labels``, rows are ordered by class (random order within a class) and each row's
    partner is the row ``s`` places further on, cyclically, with ``s`` at least the size of the
    largest class: every partner is of another class whenever no class holds more than half the
    rows (otherwise as many as the shift allows). ``n < 2`` returns ``arange(n)``.
    """
    gen = torch.Generator().manual_seed(int(seed))
    if n < 2:
        return torch.arange(n)
    order = torch.randperm(n, generator=gen)
    if labels is None:
        shift = 1
    else:
        lab = torch.as_tensor(np.asarray(labels), dtype=torch.long)[order]
        order = order[torch.sort(lab, stable=True).indices]  # class blocks, random within each
        largest = int(torch.bincount(lab).max())
        if largest <= n - largest:  # any shift in [largest, n - largest] crosses every class block
            shift = int(torch.randint(largest, n - largest + 1, (1,), generator=gen))
        else:
            shift = n // 2
    partner = torch.empty(n, dtype=torch.long)
    partner[order] = order.roll(-shift)
    return partner


def swap_backgrounds(images: torch.Tensor, masks: torch.Tensor, *, seed: int = 0,
                     labels: torch.Tensor | np.ndarray | None = None) -> torch.Tensor:
    """``images`` (N, C, H, W) with each image's background swapped for another image's.

    Pixels inside an image's mask (``masks`` (N, 1, H, W), > 0.5 = object) are kept as they
    are; every pixel outside it becomes the same pixel of its partner (:func:`swap_partners`,
    of another class when ``labels`` are given). Where the partner's own object lies there,
    the partner's mean background colour is used instead, so no ghost of the partner's object
    enters the image. Returns a new tensor; the inputs are not changed.
    """
    if images.ndim != 4 or masks.shape != (len(images), 1, *images.shape[2:]):
        raise ValueError(f"images (N, C, H, W) and masks (N, 1, H, W) expected, got {tuple(images.shape)} "
                         f"and {tuple(masks.shape)}")
    partner = swap_partners(len(images), labels, seed=seed)
    obj = masks > 0.5
    back = (~obj).to(images.dtype)
    # each image's mean background colour (the whole image's mean when it has no background)
    count = back.sum(dim=(2, 3))
    mean_bg = torch.where(count > 0, (images * back).sum(dim=(2, 3)) / count.clamp(min=1),
                          images.mean(dim=(2, 3)))[:, :, None, None]
    donor = torch.where(obj[partner], mean_bg[partner], images[partner])
    return torch.where(obj, images, donor)


def meter_split(data: ImageDataset) -> str:
    """The split the meter runs on: "test_aligned" when the data has one (the test images with
    their natural, class-aligned backgrounds: on a bias-conflicting test split the background
    carries no class, so swapping it would show nothing), otherwise "test"."""
    return "test_aligned" if len(data.splits.get("test_aligned", ())) else "test"


def shortcut_meter(model: SteerableModel, data: ImageDataset, *, split: str | None = None, seed: int = 0,
                   max_rows: int = 2000, device: torch.device | str | None = None) -> dict[str, float | int] | None:
    """Accuracy (percent) of ``model`` on the first ``max_rows`` rows of ``split`` that have an
    object mask, plain and with backgrounds swapped (:func:`swap_backgrounds`, partners of
    another class, seeded with ``seed``): ``{"plain_acc", "swapped_acc", "rows"}``, or None
    when the data has no masks there. ``split`` None: :func:`meter_split`.

    The forward passes go through :func:`core.engine.evaluate` (eval mode, mode restored).
    """
    split = meter_split(data) if split is None else split
    if data.masks is None or split not in data.splits:
        return None
    rows = np.asarray(data.ids(split), dtype=np.int64)
    rows = rows[data.rows_with_mask()[rows]][: max(0, int(max_rows))]
    if len(rows) == 0:
        return None
    idx = torch.as_tensor(rows)
    x, y = data.images[idx], data.labels[idx]
    swapped = swap_backgrounds(x, data.masks[idx], seed=seed, labels=y)
    return {"plain_acc": 100 * evaluate(model, x, y, device=device).accuracy,
            "swapped_acc": 100 * evaluate(model, swapped, y, device=device).accuracy,
            "rows": int(len(rows))}


def split_accuracies(model: SteerableModel, data: ImageDataset) -> dict[str, float | None]:
    """Accuracy (percent) on the test split (bias-conflicting for a biased set) and on
    ``test_aligned`` (None when the data has no such split). ``model`` in eval mode."""
    return {"test_acc": 100 * evaluate(model, *data.split("test")).accuracy,
            "aligned_acc": (100 * evaluate(model, *data.split("test_aligned")).accuracy
                            if "test_aligned" in data.splits else None)}


def percent_in_mask(measure, model: SteerableModel, data: ImageDataset, split: str = "test",
                    limit: int | None = None) -> float | None:
    """``100 x measure(model, images, masks, labels)`` over the first ``limit`` rows of
    ``split`` that have an object mask (a share of attention or of gradient on the object);
    None when no row has one."""
    rows = np.asarray(data.ids(split), dtype=np.int64)
    rows = rows[data.rows_with_mask()[rows]][:limit] if data.masks is not None else rows[:0]
    if not len(rows):
        return None
    idx = torch.as_tensor(rows)
    return 100 * measure(model, data.images[idx], data.masks[idx], data.labels[idx])

