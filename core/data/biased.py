"""Biased-MNIST-style colour-bias sets (Bahng et al., ICML 2020): white digits on a background
whose colour agrees with the class with probability rho."""
from __future__ import annotations

import numpy as np
import torch

from .spec import DataError, ImageDataset, make_dataset

# ReBias's COLOUR_MAP (Bahng et al. 2020), as RGB in [0, 1]; class k is biased towards colour k.
PALETTE = torch.tensor(
    [
        [255, 0, 0], [0, 255, 0], [0, 0, 255], [225, 225, 0], [225, 0, 225],
        [0, 255, 255], [255, 128, 0], [255, 0, 128], [128, 0, 255], [128, 128, 128],
    ],
    dtype=torch.float32,
) / 255.0
PALETTE_NAMES = ["red", "green", "blue", "yellow", "magenta", "cyan", "orange", "pink", "purple", "grey"]
STROKE_THRESHOLD = 0.5
BIASED_SPLITS = ("train", "val", "pool")


def make_biased(base: ImageDataset, *, rho: float = 0.99, seed: int = 0, name: str | None = None) -> ImageDataset:
    """Colour the backgrounds of a digit dataset; keeps its rows and splits and adds "test_aligned".

    Rows in train / val / pool get their class colour with probability ``rho`` (exactly
    round(rho * n) per class), otherwise one of the other colours at random. Rows in "test"
    are the bias-conflicting test: colours spread evenly over the palette, independent of the
    class. Copies of the test digits coloured with their class colour are appended as
    "test_aligned". Masks mark the digit strokes (intensity > 0.5), for every row (the
    base's own masks, if any, are not used).
    """
    if not 0.0 <= rho <= 1.0:
        raise DataError(f"rho must be between 0 and 1, got {rho}")
    k = base.num_classes
    if k > len(PALETTE):
        raise DataError(f"{base.card.source}: a colour-biased set needs at most {len(PALETTE)} classes, got {k}")
    strokes, notes = _strokes(base)
    labels = base.labels.numpy()
    colours = _assign_colours(labels, base.splits, k, rho, seed)
    test = base.splits["test"]
    # The aligned copies share the conflicting test rows' digits; only the background differs.
    strokes = torch.cat([strokes, strokes[torch.from_numpy(test)]])
    colours = np.concatenate([colours, labels[test]])
    labels_all = np.concatenate([labels, labels[test]])
    images = _paint(strokes, colours)
    masks = (strokes > STROKE_THRESHOLD).to(torch.float32)

    n = len(labels)
    splits = {s: base.splits[s] for s in ("train", "val", "test", "pool")}
    splits["test_aligned"] = np.arange(n, n + len(test), dtype=np.int64)
    train = base.splits["train"]
    agree = float((colours[train] == labels[train]).mean()) if len(train) else float("nan")
    notes += [
        "Biased-MNIST style (Bahng et al., ICML 2020): white digit strokes over a coloured background",
        f"train/val/pool: background = class colour with probability rho={rho} "
        f"(train agrees for {agree:.1%}), otherwise a random other colour",
        "test: bias-conflicting, colour independent of the class (spread evenly over the palette); "
        "test_aligned: the same test digits with their class colour",
        "class colours: " + ", ".join(f"{c}={PALETTE_NAMES[i]}" for i, c in enumerate(base.classes)),
        f"masks: digit strokes (intensity > {STROKE_THRESHOLD})",
    ]
    return make_dataset(
        name=name or f"biased-{base.name}",
        source=f"{base.card.source}, backgrounds coloured (rho={rho}, seed={seed})",
        license=base.card.license,
        images=images,
        labels=labels_all,
        classes=base.classes,
        splits=splits,
        notes=base.card.notes + notes,
        skipped=base.card.skipped,
        masks=masks,
        has_mask=np.ones(len(labels_all), dtype=bool),  # every digit has its strokes
    )


def background_colours(ds: ImageDataset) -> np.ndarray:
    """Palette index of each image's background (per row), read back from the pixels.

    The median colour of the pixels outside the stroke mask is matched to the nearest
    palette colour, so it works on any set made by :func:`make_biased`.
    """
    if ds.masks is None or ds.images.shape[1] != 3:
        raise ValueError(f"{ds.name}: not a colour-biased dataset (needs 3 channels and masks)")
    pixels = ds.images.flatten(2)  # (N, 3, HW)
    background = ds.masks.flatten(2) < 0.5
    pixels = pixels.masked_fill(~background, float("nan"))
    median = pixels.nanmedian(dim=2).values  # (N, 3)
    return torch.cdist(median, PALETTE).argmin(dim=1).numpy()


def _strokes(base: ImageDataset) -> tuple[torch.Tensor, list[str]]:
    """Stroke intensity (N, 1, H, W) in [0, 1]; colour inputs are averaged to grey."""
    if base.images.shape[1] == 1:
        return base.images, []
    return base.images.mean(dim=1, keepdim=True), [f"{base.name}: colour images averaged to grey first"]


def _assign_colours(
    labels: np.ndarray, splits: dict[str, np.ndarray], k: int, rho: float, seed: int, stream: int = 2020
) -> np.ndarray:
    """Palette index per row: biased in train/val/pool, balanced and class-independent in test.

    ``stream`` names the random stream (the other shortcut sets draw from streams of their own)."""
    # A stream of its own, so colours do not depend on how the splits consumed randomness.
    rng = np.random.default_rng([seed, stream])
    colours = np.empty(len(labels), dtype=np.int64)
    for split in BIASED_SPLITS:
        rows = splits[split]
        for c in range(k):
            members = rng.permutation(rows[labels[rows] == c])
            n_aligned = int(round(rho * len(members)))
            colours[members[:n_aligned]] = c
            other = members[n_aligned:]
            colours[other] = (c + rng.integers(1, k, size=len(other))) % k if k > 1 else c
    test = splits["test"]
    for c in range(k):
        members = test[labels[test] == c]
        colours[members] = rng.permutation(np.arange(len(members)) % k)
    return colours


def _paint(strokes: torch.Tensor, colours: np.ndarray) -> torch.Tensor:
    """White strokes blended over a solid background: s * 1 + (1 - s) * colour."""
    background = PALETTE[torch.from_numpy(colours)][:, :, None, None]  # (N, 3, 1, 1)
    # In place, because for MNIST-sized sets each temporary is hundreds of MB.
    out = background.expand(-1, -1, *strokes.shape[2:]).clone()
    return out.mul_(1.0 - strokes).add_(strokes)
