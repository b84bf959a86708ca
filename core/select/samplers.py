"""Samplers that pick which pool images to show a person next (seed 001, section 3.5):
random, entropy, margin, k-center greedy on features, and the authors' GMM over attention
maps.

Every sampler reads a :class:`PoolView` (what the model says about the pool, computed
elsewhere in batched passes), never offers an excluded (already annotated) id, and costs
O(N log N) or less in the pool size N (k-center: O(N * k * D) for k picks).
"""
from __future__ import annotations

import logging
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from typing import ClassVar, Protocol, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import entropy as _entropy
from sklearn.exceptions import ConvergenceWarning
from sklearn.mixture import GaussianMixture

from .kcenter import kcenter_greedy, one_blas_thread

log = logging.getLogger(__name__)

GMM_MAX_SIDE = 14  # CAMs are averaged down to at most 14 x 14 before the GMM (196 dimensions)


@dataclass
class PoolView:
    """What the model says about the pool; every array's first axis follows ``ids``.

    ``ids``: example ids (int64, unique). ``probs``: (N, K) softmax. ``features``: (N, D)
    feature-layer vectors. ``cams``: (N, h, w) attention maps (e.g. Grad-CAM) in [0, 1].
    A sampler reads only the fields in its ``needs``; the others may stay None.
    """

    ids: np.ndarray
    probs: np.ndarray | None = None
    features: np.ndarray | None = None
    cams: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.ids = np.asarray(self.ids, dtype=np.int64).reshape(-1)
        n = len(self.ids)
        if len(np.unique(self.ids)) != n:
            raise ValueError("PoolView.ids must be unique.")
        for name, ndim in (("probs", 2), ("features", 2), ("cams", 3)):
            value = getattr(self, name)
            if value is None:
                continue
            arr = np.asarray(value)
            if arr.ndim != ndim or arr.shape[0] != n:
                raise ValueError(f"PoolView.{name} must have {ndim} axes and {n} rows (one per id), got {arr.shape}.")
            setattr(self, name, arr)

    def __len__(self) -> int:
        return len(self.ids)


@runtime_checkable
class Sampler(Protocol):
    """Ranks pool examples for annotation, best first."""

    name: str
    needs: frozenset[str]  # the PoolView fields it reads

    def rank(
        self, pool: PoolView, *, exclude: Iterable[int] = (), seed: int = 0, k: int | None = None
    ) -> np.ndarray:
        """Ids of ``pool`` not in ``exclude``, best first; the first ``k`` (all for None)."""
        ...


def _candidates(pool: PoolView, exclude: Iterable[int]) -> np.ndarray:
    """Rows of ``pool`` whose id is not excluded (excluded ids absent from the pool are ignored)."""
    ex = np.fromiter((int(e) for e in exclude), dtype=np.int64)
    return np.flatnonzero(~np.isin(pool.ids, ex))


def _field(pool: PoolView, name: str, sampler: str) -> np.ndarray:
    value = getattr(pool, name)
    if value is None:
        raise ValueError(f"the {sampler} sampler needs PoolView.{name}, which is None.")
    if not np.isfinite(value).all():  # a NaN would sort anywhere and silently spoil the ranking
        raise ValueError(f"PoolView.{name} has non-finite values.")
    return value


def _check_k(k: int | None, n: int) -> int:
    if k is None:
        return n
    if k < 0:
        raise ValueError(f"k must be non-negative or None, got {k}.")
    return min(int(k), n)


def _lowest_first(values: np.ndarray, k: int) -> np.ndarray:
    """Positions of the ``k`` smallest ``values`` in ascending order, ties in position order.

    O(N + k log k): a partition picks the k, then only those are sorted."""
    n = len(values)
    if k == 0:
        return np.empty(0, dtype=np.int64)
    if k < n:
        # argpartition does not keep ties in position order; take everything up to the k-th
        # value, then a stable sort and a cut make the result the prefix of a full stable sort.
        kth = np.partition(values, k - 1)[k - 1]
        pos = np.flatnonzero(values <= kth)
    else:
        pos = np.arange(n)
    return pos[np.argsort(values[pos], kind="stable")][:k]


@dataclass(frozen=True)
class RandomSampler:
    """A permutation of the candidates drawn with ``seed``."""

    name: ClassVar[str] = "random"
    needs: ClassVar[frozenset[str]] = frozenset()

    def rank(self, pool: PoolView, *, exclude: Iterable[int] = (), seed: int = 0, k: int | None = None) -> np.ndarray:
        rows = _candidates(pool, exclude)
        k = _check_k(k, len(rows))
        return pool.ids[rows[np.random.default_rng(seed).permutation(len(rows))[:k]]]


@dataclass(frozen=True)
class EntropySampler:
    """Highest predictive entropy of the softmax first (the model is least sure)."""

    name: ClassVar[str] = "entropy"
    needs: ClassVar[frozenset[str]] = frozenset({"probs"})

    def rank(self, pool: PoolView, *, exclude: Iterable[int] = (), seed: int = 0, k: int | None = None) -> np.ndarray:
        probs = _field(pool, "probs", self.name)
        rows = _candidates(pool, exclude)
        k = _check_k(k, len(rows))
        h = _entropy(np.asarray(probs[rows], dtype=np.float64), axis=1)
        return pool.ids[rows[_lowest_first(-h, k)]]


@dataclass(frozen=True)
class MarginSampler:
    """Smallest gap between the top two softmax probabilities first."""

    name: ClassVar[str] = "margin"
    needs: ClassVar[frozenset[str]] = frozenset({"probs"})

    def rank(self, pool: PoolView, *, exclude: Iterable[int] = (), seed: int = 0, k: int | None = None) -> np.ndarray:
        probs = _field(pool, "probs", self.name)
        if probs.shape[1] < 2:
            raise ValueError(f"the margin sampler needs at least 2 classes, got {probs.shape[1]}.")
        rows = _candidates(pool, exclude)
        k = _check_k(k, len(rows))
        top2 = np.partition(np.asarray(probs[rows], dtype=np.float64), -2, axis=1)[:, -2:]
        return pool.ids[rows[_lowest_first(top2[:, 1] - top2[:, 0], k)]]


@dataclass(frozen=True)
class KCenterSampler:
    """k-center greedy on the feature vectors (core-set, Sener and Savarese 2018).

    Excluded ids that are in the pool view start the chosen set, so the picks are far from
    what is already annotated (include annotated examples in the view for that); with none,
    the first pick is drawn with ``seed``. O(N * k * D) for k picks: ``k=None`` ranks the
    whole pool in greedy order, O(N^2 * D), so callers should pass ``k``.
    """

    name: ClassVar[str] = "kcenter"
    needs: ClassVar[frozenset[str]] = frozenset({"features"})

    def rank(self, pool: PoolView, *, exclude: Iterable[int] = (), seed: int = 0, k: int | None = None) -> np.ndarray:
        features = _field(pool, "features", self.name)
        rows = _candidates(pool, exclude)
        k = _check_k(k, len(rows))
        centers = np.setdiff1d(np.arange(len(pool)), rows, assume_unique=True)
        return pool.ids[kcenter_greedy(features, k, centers=centers, seed=seed)]


def downsample_cams(cams: np.ndarray, max_side: int = GMM_MAX_SIDE) -> np.ndarray:
    """(N, h, w) maps averaged over blocks (adaptive average pooling) down to at most
    ``max_side`` per side, as float32 (N, h', w'); smaller maps are returned as they are."""
    cams = np.asarray(cams, dtype=np.float32)
    _, h, w = cams.shape
    out = (min(h, max_side), min(w, max_side))
    if out == (h, w):
        return cams
    with torch.no_grad():
        return F.adaptive_avg_pool2d(torch.from_numpy(np.ascontiguousarray(cams))[:, None], out)[:, 0].numpy()


@dataclass(frozen=True)
class GMMSampler:
    """The authors' attention sampler: a 2-component diagonal Gaussian mixture (100 EM
    iterations) fitted on the candidates' flattened CAMs, averaged down to at most 14 x 14;
    highest log-likelihood first, i.e. the most typical attention maps of the pool first, as
    the paper argues (section 3.5: those "closer to the common characteristics of the
    dataset" are the most worth annotating).

    Likelihood favours tight groups: a few identical CAMs (e.g. blank ones, all zero) get a
    component of their own with variance ``reg_covar`` and rank first, and on synthetic
    pools a component collapsed onto a single outlier in 3 of 100 draws. That is the
    method as published; filter blank CAMs before ranking if they should not be offered.

    Degenerate pools (fewer than 2 candidates, or all CAMs equal) have no mixture to fit:
    they are ranked at random with ``seed``, and a warning is logged. A fit that fails on an
    ill-defined covariance is retried once with ``reg_covar`` x 1000.
    """

    name: ClassVar[str] = "gmm"
    needs: ClassVar[frozenset[str]] = frozenset({"cams"})
    n_components: int = 2
    max_iter: int = 100
    reg_covar: float = 1e-6  # scikit-learn's default; the paper names none
    max_side: int = GMM_MAX_SIDE

    def scores(self, pool: PoolView, *, exclude: Iterable[int] = (), seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """(ids, log-likelihoods) of the candidates, in pool order. For a degenerate pool the
        scores are empty (and :meth:`rank` falls back to random)."""
        cams = _field(pool, "cams", self.name)
        rows = _candidates(pool, exclude)
        x = downsample_cams(cams[rows], self.max_side).reshape(len(rows), -1)
        few = len(rows) < max(2, self.n_components)
        if few or np.ptp(x, axis=0).max(initial=0.0) <= 0:
            if len(rows) >= 2:  # with 0 or 1 candidates any order is the order; nothing to say
                why = (f"only {len(rows)} candidates for {self.n_components} components" if few
                       else f"the {len(rows)} candidates' CAMs are all equal")
                log.warning("gmm sampler: %s, nothing to fit; ranking at random (seed %d).", why, seed)
            return pool.ids[rows], np.empty(0)
        return pool.ids[rows], self._fit_score(x, seed)

    def _fit_score(self, x: np.ndarray, seed: int) -> np.ndarray:
        for reg in (self.reg_covar, self.reg_covar * 1000):
            gmm = GaussianMixture(n_components=self.n_components, covariance_type="diag", max_iter=self.max_iter,
                                  reg_covar=reg, random_state=seed)
            try:
                with warnings.catch_warnings(), one_blas_thread():
                    # Not converging in 100 EM iterations still gives usable scores: logged below.
                    warnings.simplefilter("ignore", ConvergenceWarning)
                    gmm.fit(x)
            except ValueError as e:  # "ill-defined empirical covariance": try a larger floor once
                log.warning("gmm sampler: fit failed with reg_covar=%g (%s); retrying.", reg, e)
                continue
            if not gmm.converged_:
                log.info("gmm sampler: EM did not converge in %d iterations; scores used as they are.", self.max_iter)
            with one_blas_thread():
                return gmm.score_samples(x)
        raise RuntimeError("gmm sampler: the mixture could not be fitted even with a larger reg_covar.")

    def rank(self, pool: PoolView, *, exclude: Iterable[int] = (), seed: int = 0, k: int | None = None) -> np.ndarray:
        ids, ll = self.scores(pool, exclude=exclude, seed=seed)
        k = _check_k(k, len(ids))
        if ll.size == 0:
            return ids[np.random.default_rng(seed).permutation(len(ids))[:k]]
        return ids[_lowest_first(-ll, k)]


SAMPLERS: dict[str, Sampler] = {
    s.name: s for s in (RandomSampler(), EntropySampler(), MarginSampler(), KCenterSampler(), GMMSampler())
}


def get_sampler(name: str) -> Sampler:
    """The sampler registered as ``name`` (one of :data:`SAMPLERS`)."""
    try:
        return SAMPLERS[name]
    except KeyError:
        raise ValueError(f"unknown sampler {name!r}; choose one of: {', '.join(SAMPLERS)}.") from None
