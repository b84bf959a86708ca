"""k-center greedy (the core-set sampler of Sener and Savarese, ICLR 2018) on feature vectors.

Written here because no maintained library offers it (scikit-learn has no k-center; the
active-learning packages that do are unmaintained and pull in their own frameworks), and
the loop is a few lines of numpy.
"""
from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np
from threadpoolctl import threadpool_limits

_BLOCK = 1024  # centers per block when folding in the initial centers (bounds the N x block matrix)

_blas_lock = threading.Lock()
_blas_users = 0
_blas_limiter: threadpool_limits | None = None


@contextmanager
def one_blas_thread() -> Iterator[None]:
    """Run numpy/scipy BLAS (OpenBLAS) on one thread inside the block.

    The samplers' BLAS calls are small (a matrix-vector product per k-center pick, N x 196
    by 2 for the GMM) and gain nothing from threads, while OpenBLAS threads competing with a
    training job for the cores spin: on a busy 2-core machine the GMM over 10,000 CAMs took
    5.8 s with 2 BLAS threads and 0.29 s with one, a k-center pick 12 ms instead of 0.4 ms.
    The limit is process-wide, so nested and concurrent users share one reference-counted
    limit and the last one out restores the original (threadpoolctl's own context manager
    would, with two threads interleaving, restore the wrong value).
    """
    global _blas_users, _blas_limiter
    with _blas_lock:
        if _blas_users == 0:
            _blas_limiter = threadpool_limits(limits=1, user_api="blas")
        _blas_users += 1
    try:
        yield
    finally:
        with _blas_lock:
            _blas_users -= 1
            if _blas_users == 0 and _blas_limiter is not None:
                _blas_limiter.restore_original_limits()
                _blas_limiter = None


def kcenter_greedy(
    features: np.ndarray,
    k: int,
    *,
    centers: Sequence[int] | np.ndarray = (),
    seed: int = 0,
) -> np.ndarray:
    """Rows of ``features`` picked by k-center greedy, in the order picked (at most ``k``).

    Each pick is the row farthest (Euclidean) from everything chosen so far. ``centers``
    (row indices, e.g. the already annotated examples) start the chosen set and are never
    picked; with no centers the first pick is a row drawn with ``seed``. Rows never picked
    twice: once every row is at distance 0 (duplicates), the rest come in row order.
    Ties go to the lowest row.

    Cost: O(N * (k + len(centers)) * D) time, O(N) memory besides the features; a running
    minimum distance to the chosen set is updated by one matrix-vector product per pick.
    """
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"features must be (N, D), got shape {x.shape}.")
    # Distances do not change under a shift; centring keeps |x|^2 - 2 x.c + |c|^2 accurate
    # when all features share a large offset (e.g. after a ReLU).
    x = x - x.mean(axis=0) if len(x) else x
    n = x.shape[0]
    if k < 0:
        raise ValueError(f"k must be non-negative, got {k}.")
    init = np.unique(np.asarray(centers, dtype=np.int64))
    if init.size and (init[0] < 0 or init[-1] >= n):
        raise ValueError(f"centers must be row indices in [0, {n}), got {init[0]}..{init[-1]}.")
    k = min(k, n - init.size)
    if k <= 0:
        return np.empty(0, dtype=np.int64)

    with one_blas_thread():
        return _greedy(x, k, init, seed)


def _greedy(x: np.ndarray, k: int, init: np.ndarray, seed: int) -> np.ndarray:
    n = x.shape[0]
    sq = np.einsum("ij,ij->i", x, x)  # squared norms, so each distance is |x|^2 - 2 x.c + |c|^2
    mind = np.full(n, np.inf)
    for start in range(0, init.size, _BLOCK):
        c = init[start : start + _BLOCK]
        d = sq[:, None] - 2.0 * (x @ x[c].T) + sq[c][None, :]
        np.minimum(mind, d.min(axis=1), out=mind)
    np.maximum(mind, 0.0, out=mind)  # rounding can make a distance to itself slightly negative
    mind[init] = -np.inf  # chosen rows are never picked again

    picks = np.empty(k, dtype=np.int64)
    if init.size:
        first = int(np.argmax(mind))
    else:
        first = int(np.random.default_rng(seed).integers(n))
    for i in range(k):
        p = first if i == 0 else int(np.argmax(mind))
        picks[i] = p
        d = sq - 2.0 * (x @ x[p]) + sq[p]
        np.minimum(mind, np.maximum(d, 0.0), out=mind)
        mind[p] = -np.inf
    return picks
