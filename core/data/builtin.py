"""Built-in datasets that need no download: scikit-learn's bundled 8x8 digits, upsampled to 28x28."""
from __future__ import annotations

import gzip
import importlib.util
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .spec import ImageDataset, make_dataset
from .splits import stratified_split

DIGITS_LICENSE = "CC BY 4.0 (UCI ML hand-written digits, E. Alpaydin and C. Kaynak, 1998)"
DIGITS_SOURCE = "sklearn.datasets.load_digits (bundled with scikit-learn, no download)"
DIGITS_SIZE = 28


def digits_arrays(limit_per_class: int | None = None) -> tuple[torch.Tensor, np.ndarray]:
    """The 1,797 digits as float32 (N, 1, 28, 28) in [0, 1] (bilinear upsampling) and int64 labels."""
    pixels, labels = _read_digits()
    if limit_per_class is not None:
        keep = np.concatenate([np.flatnonzero(labels == c)[:limit_per_class] for c in range(10)])
        keep.sort()
        pixels, labels = pixels[keep], labels[keep]
    small = torch.from_numpy(pixels.reshape(-1, 1, 8, 8).astype(np.float32) / 16.0)
    images = F.interpolate(small, size=(DIGITS_SIZE, DIGITS_SIZE), mode="bilinear", align_corners=False)
    return images.clamp_(0.0, 1.0).contiguous(), labels.astype(np.int64)


def load_digits_dataset(*, seed: int = 0, limit_per_class: int | None = None) -> ImageDataset:
    """scikit-learn's digits as a 1-channel 28x28 dataset with classes "0".."9"."""
    images, labels = digits_arrays(limit_per_class)
    return make_dataset(
        name="digits",
        source=DIGITS_SOURCE,
        license=DIGITS_LICENSE,
        images=images,
        labels=labels,
        classes=[str(d) for d in range(10)],
        splits=stratified_split(labels, seed=seed),
        notes=["8x8 images with values 0..16, scaled to [0, 1] and upsampled to 28x28 (bilinear)"],
    )


def _read_digits() -> tuple[np.ndarray, np.ndarray]:
    """Pixels (N, 64) and labels (N,) of scikit-learn's bundled digits.

    Importing sklearn.datasets alone takes about a second, so the bundled CSV (the file
    load_digits reads) is read directly when it is where scikit-learn keeps it.
    """
    spec = importlib.util.find_spec("sklearn")
    if spec is not None and spec.submodule_search_locations:
        csv = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data" / "digits.csv.gz"
        if csv.is_file():
            with gzip.open(csv, "rt") as f:
                data = np.loadtxt(f, delimiter=",", dtype=np.float64)
            return data[:, :-1], data[:, -1].astype(np.int64)
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return bunch.data, bunch.target.astype(np.int64)
