"""Superpixels for attention clicks (seed 001, section 3.6): a click on an image selects the
Felzenszwalb segment under it, and the segment's mask becomes a negative region of the
attention loss.

Parameters follow the authors' setting (scale 200, sigma 0.95, min_size 35 on 224 px images),
scaled to the image size by :func:`felzenszwalb_params`.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np
from skimage.segmentation import felzenszwalb

REFERENCE_SIDE = 224  # the authors' image size
REFERENCE_SCALE = 200.0
REFERENCE_SIGMA = 0.95
REFERENCE_MIN_SIZE = 35
MIN_SIGMA = 0.6  # smoothing floor for small images (see felzenszwalb_params)
MIN_SEGMENT_PIXELS = 4  # a 2x2 block: no one-pixel segments on 28 px images


@dataclass(frozen=True)
class FelzenszwalbParams:
    """Arguments of ``skimage.segmentation.felzenszwalb`` for one image size."""

    scale: float
    sigma: float
    min_size: int


def felzenszwalb_params(height: int, width: int) -> FelzenszwalbParams:
    """The authors' Felzenszwalb setting scaled to an image of ``height`` x ``width`` pixels.

    With ``r = sqrt(height * width) / 224`` (the linear size relative to the authors' images):

    - ``min_size = max(4, round(35 * r**2))``: the authors' smallest segment scaled by area,
      but never under 4 pixels (by area alone it would be under one pixel at 28 px);
    - ``sigma = max(0.6, 0.95 * r)``: the smoothing scaled with the image, with a floor,
      since felzenszwalb without smoothing splits anti-aliased strokes into slivers;
    - ``scale = 200 * sqrt(r)``: chosen by measurement. Felzenszwalb's threshold
      ``scale / |C|`` would call for ``scale`` proportional to area, but a downscaled image has
      far more contrast per pixel, and that gives 400-800 segments at 28-32 px; an unchanged
      200 gives 1-10 on downscaled photographs.

    At 224 px this is exactly the authors' setting. Median segment counts (range) measured
    with it: MNIST 28 px 18 (13-23), colour-biased MNIST 18 (11-24), CIFAR-10 32 px 25
    (10-45), photographs at 32 / 64 / 128 / 224 px 28 / 56 / 78 / 62.
    """
    if height < 1 or width < 1:
        raise ValueError(f"image size must be positive, got {height} x {width}.")
    r = float(np.sqrt(height * width)) / REFERENCE_SIDE
    return FelzenszwalbParams(
        scale=REFERENCE_SCALE * float(np.sqrt(r)),
        sigma=max(MIN_SIGMA, REFERENCE_SIGMA * r),
        min_size=max(MIN_SEGMENT_PIXELS, round(REFERENCE_MIN_SIZE * r * r)),
    )


def _as_hwc(image: Any) -> np.ndarray:
    """A (C, H, W) tensor or array (or a single-channel (H, W) one) as float32 (H, W, C)."""
    if hasattr(image, "detach"):  # torch tensor; no torch import needed here
        image = image.detach().cpu().numpy()
    arr = np.asarray(image, dtype=np.float32)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3 or min(arr.shape) < 1:
        raise ValueError(f"expected an image of shape (C, H, W) or (H, W), got {arr.shape}.")
    lo, hi = float(arr.min()), float(arr.max())
    if lo < -1e-3 or hi > 1 + 1e-3:
        # Normalised inputs (mean/std) would change every edge weight and so the segments.
        raise ValueError(f"expected pixel values in [0, 1] (un-normalised), got [{lo:.3g}, {hi:.3g}].")
    return np.ascontiguousarray(arr.transpose(1, 2, 0))


def superpixels(image: Any, params: FelzenszwalbParams | None = None) -> np.ndarray:
    """Felzenszwalb segments of one image.

    ``image``: a (C, H, W) float tensor or array in [0, 1] ((H, W) is taken as one channel).
    ``params``: by default :func:`felzenszwalb_params` for the image's size.
    Returns an int32 (H, W) label map with labels 0..K-1 (every label used). Deterministic.
    """
    hwc = _as_hwc(image)
    p = params or felzenszwalb_params(hwc.shape[0], hwc.shape[1])
    raw = felzenszwalb(hwc, scale=p.scale, sigma=p.sigma, min_size=p.min_size, channel_axis=-1)
    # felzenszwalb's labels need not be consecutive; renumber them 0..K-1.
    _, labels = np.unique(raw, return_inverse=True)
    return labels.reshape(raw.shape).astype(np.int32)


class SuperpixelCache:
    """Label maps computed once per example id and kept, shared by threads (page reruns,
    the simulated user).

    Bounded by ``max_bytes`` (default 256 MiB), least recently used out first: at 28 px a
    map takes 3 KB, so a 60,000-image pool fits, but at 224 px each takes 200 KB and a
    pool of 10,000 would take 2 GB, while a person only ever sees a few hundred images and
    recomputing an evicted one costs 1-80 ms. ``max_bytes=None``: unbounded.

    One cache per dataset: the key is the example id alone. Returned maps are read-only,
    since every caller shares them.
    """

    def __init__(self, max_bytes: int | None = 256 * 2**20, params: FelzenszwalbParams | None = None) -> None:
        if max_bytes is not None and max_bytes < 0:
            raise ValueError(f"max_bytes must be non-negative or None, got {max_bytes}.")
        self.max_bytes = max_bytes
        self.params = params
        self._maps: OrderedDict[int, np.ndarray] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, example_id: int, image: Any) -> np.ndarray:
        """The label map of example ``example_id`` (see :func:`superpixels`), computed from
        ``image`` the first time and taken from the cache afterwards."""
        key = int(example_id)
        with self._lock:
            labels = self._maps.get(key)
            if labels is not None:
                self._maps.move_to_end(key)
                return labels
        # Computed outside the lock so other ids are not held up; if two threads race on one
        # id, both compute the same (deterministic) map and the first stored one is kept.
        labels = superpixels(image, self.params)
        labels.setflags(write=False)
        with self._lock:
            kept = self._maps.get(key)
            if kept is not None:
                return kept
            self._maps[key] = labels
            self._bytes += labels.nbytes
            self._evict()
        return labels

    def _evict(self) -> None:
        # Keep at least the newest map even if it alone exceeds the bound.
        while self.max_bytes is not None and self._bytes > self.max_bytes and len(self._maps) > 1:
            _, old = self._maps.popitem(last=False)
            self._bytes -= old.nbytes

    def __contains__(self, example_id: object) -> bool:
        with self._lock:
            return example_id in self._maps

    def __len__(self) -> int:
        with self._lock:
            return len(self._maps)

    @property
    def nbytes(self) -> int:
        """Bytes held by the cached label maps."""
        with self._lock:
            return self._bytes

    def clear(self) -> None:
        """Drop every cached map (e.g. when the dataset changes)."""
        with self._lock:
            self._maps.clear()
            self._bytes = 0
