"""Two more shortcut sets built from any digit source, with the splits, "test_aligned" and
stroke masks of the colour-biased set (:mod:`core.data.biased`):

* decoy digits, Decoy-MNIST of Ross et al. (IJCAI 2017, "Right for the right reasons"): a small
  grey square in a random corner whose grey level names the class;
* texture digits: white strokes over a grey grating whose orientation and period name the
  class, every grating with the same mean and contrast (a texture shortcut, not a brightness one).

Both stay 1-channel (colour inputs are averaged to grey first).
"""
from __future__ import annotations

import math

import numpy as np
import torch

from .biased import STROKE_THRESHOLD, _assign_colours, _strokes
from .spec import DataError, ImageDataset, make_dataset

MAX_CLASSES = 10
# Decoy-MNIST's grey levels: class k's square is 255 - 25 k (Ross et al. 2017), in [0, 1].
DECOY_LEVELS = torch.tensor([255 - 25 * k for k in range(MAX_CLASSES)], dtype=torch.float32) / 255.0
DECOY_SIDE = 4  # on 28 px images; scaled with the image side
CORNER_NAMES = ["top-left", "top-right", "bottom-left", "bottom-right"]
# Texture digits: class k's grating has orientation ANGLES[k % 5] and period PERIODS[k // 5]
# pixels (on 28 px images; scaled with the side). Every grating: mean 0.25, amplitude 0.2.
TEXTURE_ANGLES = (0.0, 36.0, 72.0, 108.0, 144.0)
TEXTURE_PERIODS = (4.0, 7.0)
TEXTURE_MEAN = 0.25
TEXTURE_AMPLITUDE = 0.2


def _check(base: ImageDataset, rho: float, what: str) -> int:
    if not 0.0 <= rho <= 1.0:
        raise DataError(f"rho must be between 0 and 1, got {rho}")
    k = base.num_classes
    if k > MAX_CLASSES:
        raise DataError(f"{base.card.source}: {what} needs at most {MAX_CLASSES} classes, got {k}")
    return k


def _with_aligned(base: ImageDataset, strokes: torch.Tensor, shortcut: np.ndarray):
    """Append copies of the test rows ("test_aligned") whose shortcut is their own class."""
    labels = base.labels.numpy()
    test = base.splits["test"]
    n = len(labels)
    splits = {s: base.splits[s] for s in ("train", "val", "test", "pool")}
    splits["test_aligned"] = np.arange(n, n + len(test), dtype=np.int64)
    strokes = torch.cat([strokes, strokes[torch.from_numpy(test)]])
    shortcut = np.concatenate([shortcut, labels[test]])
    return strokes, shortcut, np.concatenate([labels, labels[test]]), splits


def _assign(
    labels: np.ndarray, splits: dict[str, np.ndarray], k: int, rho: float, seed: int, stream: int
) -> np.ndarray:
    """Shortcut class per row: biased in train/val/pool as for the colour-biased set; in test,
    each class's rows spread evenly over the shortcuts from a random offset, so a small test
    set still uses every shortcut and each row agrees with its class with probability 1/k."""
    out = _assign_colours(labels, splits, k, rho, seed, stream=stream)
    rng = np.random.default_rng([seed, stream, 2])
    test = splits["test"]
    for c in range(k):
        members = test[labels[test] == c]
        out[members] = rng.permutation((np.arange(len(members)) + rng.integers(k)) % k)
    return out


def _agree_note(shortcut: np.ndarray, labels: np.ndarray, train: np.ndarray) -> str:
    agree = float((shortcut[train] == labels[train]).mean()) if len(train) else float("nan")
    return f"{agree:.1%}"


# ----------------------------------------------------------------------------- decoy digits
def decoy_side(height: int, width: int) -> int:
    """The decoy square's side in pixels: 4 on 28 px images, scaled with the shorter side."""
    return max(1, int(round(DECOY_SIDE * min(height, width) / 28)))


def corner_masks(height: int, width: int) -> torch.Tensor:
    """(4, H, W) bool: where the decoy square lies in each corner (order of CORNER_NAMES)."""
    s = decoy_side(height, width)
    out = torch.zeros(4, height, width, dtype=torch.bool)
    out[0, :s, :s] = True
    out[1, :s, width - s:] = True
    out[2, height - s:, :s] = True
    out[3, height - s:, width - s:] = True
    return out


def make_decoy(
    base: ImageDataset, *, rho: float = 1.0, seed: int = 0, name: str | None = None
) -> ImageDataset:
    """Decoy-MNIST (Ross et al. 2017): a grey square in a random corner of each digit.

    Rows in train / val / pool get their class's grey level (DECOY_LEVELS) with probability
    ``rho`` (exactly round(rho * n) per class), otherwise another class's level at random.
    Rows in "test" are the bias-conflicting test: a random level, independent of the class
    (each class's test rows spread evenly over the levels). "test_aligned" holds the same test
    digits, in the same corners, with their class's level. The square overwrites the pixels
    under it; masks mark the digit strokes (intensity > 0.5) and are False under the square.
    """
    k = _check(base, rho, "a decoy set")
    strokes, notes = _strokes(base)
    labels = base.labels.numpy()
    levels = _assign(labels, base.splits, k, rho, seed, 2017)
    corners = np.random.default_rng([seed, 2017, 1]).integers(0, 4, size=len(labels))
    corners = np.concatenate([corners, corners[base.splits["test"]]])
    strokes, levels, labels_all, splits = _with_aligned(base, strokes, levels)
    h, w = strokes.shape[2:]
    square = corner_masks(h, w)[torch.from_numpy(corners)].unsqueeze(1)  # (N, 1, H, W)
    grey = DECOY_LEVELS[torch.from_numpy(levels)].view(-1, 1, 1, 1)
    images = torch.where(square, grey, strokes).contiguous()
    masks = ((strokes > STROKE_THRESHOLD) & ~square).to(torch.float32)
    s = decoy_side(h, w)
    notes += [
        "Decoy-MNIST style (Ross et al., IJCAI 2017, 'Right for the right reasons'): a "
        f"{s}x{s} px grey square in a random one of the four corners, drawn over the digit",
        "the square's grey level names the class: class k has level (255 - 25k)/255 ("
        + ", ".join(f"{c}={DECOY_LEVELS[i]:.2f}" for i, c in enumerate(base.classes)) + ")",
        f"train/val/pool: square at the class's level with probability rho={rho} "
        f"(train agrees for {_agree_note(levels, labels_all, splits['train'])}), otherwise another class's level",
        "test: bias-conflicting, level independent of the class (spread evenly over the levels); "
        "test_aligned: the same test digits, in the same corners, with their class's level",
        f"masks: digit strokes (intensity > {STROKE_THRESHOLD}), False under the square",
    ]
    return _derived(base, name or f"decoy-{base.name}", f"{base.card.source}, decoy squares (rho={rho}, seed={seed})",
                    images, labels_all, splits, notes, masks)


# ----------------------------------------------------------------------------- texture digits
def _waves(height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """sin and cos of each class's grating phase, (10, H, W) each."""
    y, x = torch.meshgrid(torch.arange(height, dtype=torch.float64), torch.arange(width, dtype=torch.float64),
                          indexing="ij")
    scale = min(height, width) / 28
    phases = []
    for k in range(MAX_CLASSES):
        theta = math.radians(TEXTURE_ANGLES[k % len(TEXTURE_ANGLES)])
        period = TEXTURE_PERIODS[k // len(TEXTURE_ANGLES)] * scale
        phases.append(2 * math.pi * (x * math.cos(theta) + y * math.sin(theta)) / period)
    phase = torch.stack(phases)
    return phase.sin().float(), phase.cos().float()


def make_texture(base: ImageDataset, *, rho: float = 0.99, seed: int = 0, name: str | None = None) -> ImageDataset:
    """White digit strokes over a grey grating whose orientation and period name the class.

    Class k's grating has orientation TEXTURE_ANGLES[k % 5] and period TEXTURE_PERIODS[k // 5]
    (px on 28 px images), a random phase per image, mean TEXTURE_MEAN exactly and amplitude
    TEXTURE_AMPLITUDE, so every class's background has the same brightness. Rows in train /
    val / pool get their class's grating with probability ``rho``, otherwise another class's;
    "test" is the bias-conflicting test (gratings spread evenly, independent of the class) and
    "test_aligned" the same test digits with their class's grating. Masks mark the strokes.
    """
    k = _check(base, rho, "a texture set")
    strokes, notes = _strokes(base)
    labels = base.labels.numpy()
    textures = _assign(labels, base.splits, k, rho, seed, 2021)
    phase = np.random.default_rng([seed, 2021, 1]).uniform(0.0, 2 * math.pi, size=len(labels))
    phase = np.concatenate([phase, phase[base.splits["test"]]])
    strokes, textures, labels_all, splits = _with_aligned(base, strokes, textures)
    h, w = strokes.shape[2:]
    sin, cos = _waves(h, w)
    idx = torch.from_numpy(textures)
    ph = torch.from_numpy(phase).float().view(-1, 1, 1)
    # sin(a + phi) = sin a cos phi + cos a sin phi, centred to mean 0 on each image.
    wave = sin[idx].mul_(ph.cos()).add_(cos[idx].mul_(ph.sin()))
    wave.sub_(wave.mean(dim=(1, 2), keepdim=True))
    background = wave.mul_(TEXTURE_AMPLITUDE).add_(TEXTURE_MEAN).clamp_(0.0, 1.0).unsqueeze(1)
    images = background.mul_(1.0 - strokes).add_(strokes)  # in place: white strokes over the grating
    masks = (strokes > STROKE_THRESHOLD).to(torch.float32)
    periods = [p * min(h, w) / 28 for p in TEXTURE_PERIODS]
    notes += [
        "Texture shortcut: white digit strokes over a grey sinusoidal grating (random phase) whose "
        "orientation and period name the class; every grating has mean "
        f"{TEXTURE_MEAN} and amplitude {TEXTURE_AMPLITUDE}, so the shortcut is texture, not brightness",
        "class gratings (orientation, period): " + ", ".join(
            f"{c}=({TEXTURE_ANGLES[i % 5]:g} deg, {periods[i // 5]:g} px)" for i, c in enumerate(base.classes)),
        f"train/val/pool: the class's grating with probability rho={rho} "
        f"(train agrees for {_agree_note(textures, labels_all, splits['train'])}), otherwise another class's",
        "test: bias-conflicting, grating independent of the class (spread evenly over the gratings); "
        "test_aligned: the same test digits with their class's grating",
        f"masks: digit strokes (intensity > {STROKE_THRESHOLD})",
    ]
    return _derived(base, name or f"texture-{base.name}",
                    f"{base.card.source}, textured backgrounds (rho={rho}, seed={seed})",
                    images, labels_all, splits, notes, masks)


def _derived(base: ImageDataset, name: str, source: str, images: torch.Tensor, labels: np.ndarray,
             splits: dict[str, np.ndarray], notes: list[str], masks: torch.Tensor) -> ImageDataset:
    """A shortcut set built on ``base``: its card's license, notes and skipped files carried over,
    every row with its stroke mask."""
    return make_dataset(name=name, source=source, license=base.card.license, images=images, labels=labels,
                        classes=base.classes, splits=splits, notes=base.card.notes + notes,
                        skipped=base.card.skipped, masks=masks, has_mask=np.ones(len(labels), dtype=bool))
