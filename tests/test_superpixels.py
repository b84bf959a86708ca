"""Superpixels: the size rule, label maps, click-to-segment masks and the cache."""
from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from core.explain import superpixels as sp
from core.explain.superpixels import (
    FelzenszwalbParams,
    SuperpixelCache,
    felzenszwalb_params,
    superpixels,
)


def _digits(n: int = 30) -> torch.Tensor:
    from core.data.builtin import digits_arrays

    images, _ = digits_arrays(limit_per_class=max(1, n // 10))
    return images[:n]


def _photo32(name: str) -> np.ndarray:
    import skimage.data
    from skimage.transform import resize

    return resize(getattr(skimage.data, name)(), (32, 32), anti_aliasing=True).transpose(2, 0, 1).astype(np.float32)


def test_params_are_the_authors_at_224_and_scaled_below():
    assert felzenszwalb_params(224, 224) == FelzenszwalbParams(200.0, 0.95, 35)
    small = felzenszwalb_params(28, 28)
    assert small.min_size == 4 and small.sigma == pytest.approx(0.6)
    assert small.scale == pytest.approx(200 * (28 / 224) ** 0.5)
    assert felzenszwalb_params(448, 448).min_size == 140  # by area above 224
    with pytest.raises(ValueError):
        felzenszwalb_params(0, 28)


def test_label_map_is_int32_covers_every_pixel_and_is_deterministic():
    img = _digits(1)[0]
    a, b = superpixels(img), superpixels(img.clone())
    assert a.dtype == np.int32 and a.shape == (28, 28)
    assert np.array_equal(a, b)
    # labels are exactly 0..K-1: every pixel has one, none is skipped
    assert np.array_equal(np.unique(a), np.arange(a.max() + 1))


def test_tensor_array_and_single_channel_inputs_agree():
    img = _digits(1)[0]
    assert np.array_equal(superpixels(img), superpixels(img.numpy()))
    assert np.array_equal(superpixels(img), superpixels(img[0].numpy()))


def test_normalised_or_misshaped_input_is_refused():
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        superpixels(torch.randn(3, 16, 16) * 3)
    with pytest.raises(ValueError, match="shape"):
        superpixels(np.zeros((1, 3, 16, 16)))


def test_two_colour_image_splits_along_the_colour_edge():
    img = np.zeros((3, 32, 32), np.float32)
    img[0, :, :13] = 1.0  # red left part, blue right part, edge between columns 12 and 13
    img[2, :, 13:] = 1.0
    labels = superpixels(img)
    red = np.zeros((32, 32), bool)
    red[:, :13] = True
    for k in range(labels.max() + 1):  # no segment crosses the edge
        seg = labels == k
        assert red[seg].all() or not red[seg].any()
    # The smoothing (sigma 0.6) blurs the edge into a few one-pixel strips of their own on
    # each side; the two flat parts away from it are one segment each.
    assert (labels == labels[5, 3])[:, :10].all() and (labels == labels[5, 30])[:, 16:].all()
    assert labels.max() + 1 <= 6


def test_segments_follow_a_digit_on_a_coloured_background():
    digits = _digits(10)[:, 0]
    background = torch.tensor([0.0, 0.6, 1.0])[:, None, None]
    for d in digits:
        img = torch.where(d > 0.5, d.expand(3, -1, -1), background.expand(3, 28, 28))
        labels = superpixels(img)
        stroke = (d > 0.5).numpy()
        share = np.bincount(labels.ravel(), weights=stroke.ravel()) / np.bincount(labels.ravel())
        assert ((share[labels] > 0.5) == stroke).mean() > 0.95


def test_sensible_segment_counts_on_a_digit_and_a_small_colour_image():
    counts = [int(superpixels(d).max()) + 1 for d in _digits(30)]
    assert 10 <= np.median(counts) <= 40 and min(counts) >= 5 and max(counts) <= 60, counts
    for name in ("chelsea", "coffee"):
        k = int(superpixels(_photo32(name)).max()) + 1
        assert 10 <= k <= 40, (name, k)


def test_cache_computes_once_per_id(monkeypatch):
    calls = []
    real = sp.superpixels
    monkeypatch.setattr(sp, "superpixels", lambda img, params=None: calls.append(1) or real(img, params))
    imgs = _digits(2)
    cache = SuperpixelCache()
    a = cache.get(7, imgs[0])
    assert cache.get(7, imgs[0]) is a and len(calls) == 1
    assert np.array_equal(a, real(imgs[0]))
    assert not a.flags.writeable  # shared between callers
    cache.get(8, imgs[1])
    assert len(calls) == 2 and len(cache) == 2 and 7 in cache
    cache.clear()
    assert len(cache) == 0 and cache.nbytes == 0


def test_cache_is_bounded_least_recently_used_first():
    imgs = _digits(3)
    one = 28 * 28 * 4
    cache = SuperpixelCache(max_bytes=2 * one)
    cache.get(0, imgs[0])
    cache.get(1, imgs[1])
    cache.get(0, imgs[0])  # 0 is now the most recently used
    cache.get(2, imgs[2])
    assert 1 not in cache and 0 in cache and 2 in cache and cache.nbytes == 2 * one


def test_cache_is_thread_safe():
    imgs = _digits(8)
    cache = SuperpixelCache()
    results: dict[int, list[np.ndarray]] = {i: [] for i in range(8)}
    errors = []

    def work(offset: int) -> None:
        try:
            for j in range(16):
                i = (j + offset) % 8
                results[i].append(cache.get(i, imgs[i]))
        except Exception as e:  # noqa: BLE001 - surfaced by the assert below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(cache) == 8
    for i, maps in results.items():
        assert all(m is maps[0] for m in maps)  # every caller got the one stored map
        assert np.array_equal(maps[0], superpixels(imgs[i]))
