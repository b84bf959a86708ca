"""Stratified, seeded train / val / test / pool splits as index arrays into a dataset."""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

# Used when a source has no test split of its own.
DEFAULT_FRACTIONS: dict[str, float] = {"train": 0.6, "val": 0.1, "test": 0.15, "pool": 0.15}
# Used to carve the train part of a source that brings its own test split.
TRAIN_PART_FRACTIONS: dict[str, float] = {"train": 0.8, "val": 0.1, "pool": 0.1}


def allocate(n: int, fractions: Sequence[float]) -> list[int]:
    """Split ``n`` items into integer counts proportional to ``fractions`` that sum to ``n``.

    Largest-remainder rounding, ties broken by position, so the result is deterministic.
    """
    weights = np.asarray(fractions, dtype=np.float64)
    exact = n * weights / weights.sum()
    counts = np.floor(exact).astype(np.int64)
    short = n - int(counts.sum())
    # Stable sort keeps earlier splits first among equal remainders.
    order = np.argsort(-(exact - counts), kind="stable")
    counts[order[:short]] += 1
    return [int(c) for c in counts]


def stratified_split(
    labels: np.ndarray,
    fractions: Mapping[str, float] = DEFAULT_FRACTIONS,
    seed: int = 0,
    rows: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Split ``rows`` (default: all rows) class by class into named parts of the given fractions.

    Returns sorted int64 index arrays into ``labels``; the same labels and seed give the same
    splits.
    """
    labels = np.asarray(labels)
    rows = np.arange(len(labels), dtype=np.int64) if rows is None else np.asarray(rows, np.int64)
    names = list(fractions)
    parts: dict[str, list[np.ndarray]] = {name: [] for name in names}
    rng = np.random.default_rng(seed)
    row_labels = labels[rows]
    for cls in np.unique(row_labels):
        members = rng.permutation(rows[row_labels == cls])
        start = 0
        for name, count in zip(names, allocate(len(members), [fractions[n] for n in names])):
            parts[name].append(members[start : start + count])
            start += count
    return {
        name: np.sort(np.concatenate(chunks)).astype(np.int64) if chunks else np.zeros(0, np.int64)
        for name, chunks in parts.items()
    }


def split_with_own_test(labels: np.ndarray, is_test: np.ndarray, seed: int = 0) -> dict[str, np.ndarray]:
    """Keep a source's own test rows as "test" and carve train / val / pool out of the rest."""
    is_test = np.asarray(is_test, dtype=bool)
    splits = stratified_split(labels, TRAIN_PART_FRACTIONS, seed, rows=np.flatnonzero(~is_test))
    splits["test"] = np.flatnonzero(is_test).astype(np.int64)
    return {name: splits[name] for name in ("train", "val", "test", "pool")}


def check_splits(splits: Mapping[str, np.ndarray], n: int) -> None:
    """Raise ValueError unless the splits are int64 index arrays that are disjoint and cover 0..n-1."""
    seen = np.zeros(n, dtype=np.int64)
    for name, idx in splits.items():
        idx = np.asarray(idx)
        if idx.dtype != np.int64 or idx.ndim != 1:
            raise ValueError(f"split {name!r} must be a 1-D int64 array, got {idx.dtype} {idx.shape}")
        if len(idx) and (idx.min() < 0 or idx.max() >= n):
            raise ValueError(f"split {name!r} has indices outside 0..{n - 1}")
        np.add.at(seen, idx, 1)
    if n and (seen.min() != 1 or seen.max() != 1):
        raise ValueError("splits must be disjoint and together cover every example exactly once")


def count_per_class(
    labels: np.ndarray, classes: Sequence[str], splits: Mapping[str, np.ndarray]
) -> dict[str, dict[str, int]]:
    """Split name -> class name -> number of examples, for the dataset card."""
    labels = np.asarray(labels)
    out: dict[str, dict[str, int]] = {}
    for name, idx in splits.items():
        counts = np.bincount(labels[np.asarray(idx, np.int64)], minlength=len(classes))
        out[name] = {cls: int(counts[i]) for i, cls in enumerate(classes)}
    return out
