"""Samplers: every one ranks the non-excluded ids, deterministically; entropy and margin
orders on hand-made probabilities; k-center greedy against a brute-force version; the GMM
puts typical attention maps before outliers; nothing is quadratic in the pool size."""
from __future__ import annotations

import logging
import time

import numpy as np
import pytest

from core.select import (
    SAMPLERS,
    GMMSampler,
    PoolView,
    Sampler,
    downsample_cams,
    get_sampler,
    kcenter_greedy,
)

NAMES = ["random", "entropy", "margin", "kcenter", "gmm"]


def _pool(n: int = 60, seed: int = 0, *, classes: int = 5, dim: int = 8, side: int = 28) -> PoolView:
    rng = np.random.default_rng(seed)
    return PoolView(
        ids=rng.choice(10 * n, size=n, replace=False),  # ids are not row numbers
        probs=rng.dirichlet(np.ones(classes), size=n),
        features=rng.normal(size=(n, dim)),
        cams=rng.random((n, side, side)),
    )


def _blob(side: int, cy: float, cx: float, width: float = 3.0) -> np.ndarray:
    yy, xx = np.mgrid[:side, :side]
    return np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * width**2))


def _bruteforce_kcenter(x: np.ndarray, k: int, chosen: list[int]) -> list[int]:
    """Textbook k-center greedy: each step, the point whose nearest chosen point is farthest
    (lowest index on ties), distances computed from scratch every time."""
    chosen, picks = list(chosen), []
    for _ in range(k):
        best, best_d = None, -1.0
        for i in range(len(x)):
            if i in chosen:
                continue
            d = min(float(np.sqrt(((x[i] - x[c]) ** 2).sum())) for c in chosen)
            if d > best_d:
                best, best_d = i, d
        chosen.append(best)
        picks.append(best)
    return picks


# --- the interface -----------------------------------------------------------------------


def test_registry_names_needs_and_unknown_name():
    assert list(SAMPLERS) == NAMES
    assert {n: set(SAMPLERS[n].needs) for n in NAMES} == {
        "random": set(), "entropy": {"probs"}, "margin": {"probs"}, "kcenter": {"features"}, "gmm": {"cams"},
    }
    for n in NAMES:
        assert get_sampler(n) is SAMPLERS[n] and isinstance(get_sampler(n), Sampler) and get_sampler(n).name == n
    with pytest.raises(ValueError, match="random, entropy, margin, kcenter, gmm"):
        get_sampler("badge")


def test_pool_view_checks_its_arrays():
    with pytest.raises(ValueError, match="unique"):
        PoolView(ids=[1, 2, 2])
    with pytest.raises(ValueError, match="probs"):
        PoolView(ids=[1, 2, 3], probs=np.ones((2, 4)) / 4)
    with pytest.raises(ValueError, match="cams"):
        PoolView(ids=[1, 2], cams=np.zeros((2, 4)))
    assert PoolView(ids=[3, 1]).ids.dtype == np.int64


@pytest.mark.parametrize("name", ["entropy", "margin", "kcenter", "gmm"])
def test_a_missing_field_is_named(name):
    with pytest.raises(ValueError, match="needs PoolView"):
        get_sampler(name).rank(PoolView(ids=np.arange(5)))


def test_non_finite_inputs_are_refused():
    pool = _pool(10)
    pool.probs[3, 0] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        get_sampler("entropy").rank(pool)


@pytest.mark.parametrize("name", NAMES)
def test_ranks_every_non_excluded_id_once(name):
    pool = _pool()
    sampler = get_sampler(name)
    full = sampler.rank(pool)
    assert full.dtype == np.int64 and sorted(full) == sorted(pool.ids)
    exclude = list(pool.ids[::4]) + [-7, 99999]  # ids not in the pool are ignored
    ranked = sampler.rank(pool, exclude=exclude, seed=3)
    assert sorted(ranked) == sorted(set(pool.ids) - set(exclude))
    assert not set(ranked) & set(exclude)


@pytest.mark.parametrize("name", NAMES)
def test_top_k_is_the_head_of_the_full_ranking(name):
    pool = _pool()
    sampler = get_sampler(name)
    exclude = pool.ids[:10]
    full = sampler.rank(pool, exclude=exclude, seed=1)
    for k in (0, 1, 7, 50, 500):
        assert np.array_equal(sampler.rank(pool, exclude=exclude, seed=1, k=k), full[:k])
    with pytest.raises(ValueError):
        sampler.rank(pool, k=-1)


@pytest.mark.parametrize("name", NAMES)
def test_deterministic_under_the_seed(name):
    pool = _pool()
    sampler = get_sampler(name)
    assert np.array_equal(sampler.rank(pool, seed=5, exclude=[pool.ids[0]]), sampler.rank(pool, seed=5, exclude=[pool.ids[0]]))


def test_random_depends_on_the_seed_and_kcenter_start_too():
    pool = _pool()
    assert not np.array_equal(get_sampler("random").rank(pool, seed=0), get_sampler("random").rank(pool, seed=1))
    assert get_sampler("kcenter").rank(pool, seed=0, k=1)[0] != get_sampler("kcenter").rank(pool, seed=2, k=1)[0]


# --- uncertainty samplers ------------------------------------------------------------------


def test_entropy_and_margin_orders_on_hand_made_probabilities():
    probs = np.array([
        [0.98, 0.01, 0.01],  # id 10: sure; entropy 0.11, margin 0.97
        [1 / 3, 1 / 3, 1 / 3],  # id 11: uniform; entropy 1.10 (the most), margin 0
        [0.50, 0.49, 0.01],  # id 12: entropy 0.74, margin 0.01
        [0.40, 0.30, 0.30],  # id 13: entropy 1.09, margin 0.10
        [0.70, 0.20, 0.10],  # id 14: entropy 0.80, margin 0.50
    ])  # entropy and margin disagree on 12 and 14
    pool = PoolView(ids=np.arange(10, 15), probs=probs)
    assert list(get_sampler("entropy").rank(pool)) == [11, 13, 14, 12, 10]
    assert list(get_sampler("margin").rank(pool)) == [11, 12, 13, 14, 10]
    assert list(get_sampler("margin").rank(pool, exclude=[11], k=2)) == [12, 13]


def test_ties_keep_pool_order():
    pool = PoolView(ids=np.array([5, 3, 9, 1]), probs=np.full((4, 2), 0.5))
    assert list(get_sampler("entropy").rank(pool)) == [5, 3, 9, 1]
    assert list(get_sampler("margin").rank(pool, k=2)) == [5, 3]


# --- k-center greedy -----------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(5))
def test_kcenter_equals_brute_force(seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(30, 3)) + 10.0  # an offset, as after a ReLU
    picks = kcenter_greedy(x, 12, seed=seed)
    first = int(np.random.default_rng(seed).integers(30))  # the documented seeded first pick
    assert list(picks) == [first, *_bruteforce_kcenter(x, 11, [first])]
    centers = rng.choice(30, size=4, replace=False)
    assert list(kcenter_greedy(x, 10, centers=centers, seed=seed)) == _bruteforce_kcenter(x, 10, list(centers))


def test_kcenter_sampler_starts_from_the_excluded_ids():
    pool = _pool(40, seed=7, dim=4)
    exclude = pool.ids[[3, 17, 25]]
    picked = get_sampler("kcenter").rank(pool, exclude=exclude, k=8)
    rows = {int(i): r for r, i in enumerate(pool.ids)}
    expected = _bruteforce_kcenter(pool.features, 8, [3, 17, 25])
    assert [rows[int(i)] for i in picked] == expected


def test_kcenter_spreads_over_clusters_and_never_repeats_duplicates():
    x = np.repeat(np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]]), 5, axis=0)  # 3 points, 5 copies each
    picks = kcenter_greedy(x, 15, seed=0)
    assert len(set(picks)) == 15
    assert len({tuple(x[p]) for p in picks[:3]}) == 3  # one per cluster before any copy
    assert len(kcenter_greedy(x, 99, centers=[0, 1])) == 13
    with pytest.raises(ValueError):
        kcenter_greedy(x, 2, centers=[15])


# --- GMM over attention maps -------------------------------------------------------------------


def test_downsample_cams_averages_blocks():
    cams = np.random.default_rng(0).random((3, 28, 28)).astype(np.float32)
    small = downsample_cams(cams)
    assert small.shape == (3, 14, 14)
    assert np.allclose(small, cams.reshape(3, 14, 2, 14, 2).mean(axis=(2, 4)), atol=1e-6)
    assert downsample_cams(cams[:, :7, :7]).shape == (3, 7, 7)
    assert downsample_cams(np.zeros((2, 224, 224))).shape == (2, 14, 14)


def test_gmm_ranks_typical_attention_above_outliers():
    rng = np.random.default_rng(0)
    typical = [_blob(28, 14 + rng.normal(0, 0.7), 14 + rng.normal(0, 0.7)) * rng.uniform(0.8, 1.0) for _ in range(200)]
    corners = [(3, 3), (3, 24), (24, 3), (24, 24), (3, 14), (24, 14), (14, 3), (14, 24), (6, 20), (21, 7)]
    odd = [_blob(28, cy, cx) for cy, cx in corners]
    cams = np.clip(np.stack(typical + odd) + rng.normal(0, 0.02, (210, 28, 28)), 0, 1)
    order = rng.permutation(210)  # outliers anywhere in the pool
    pool = PoolView(ids=np.arange(1000, 1210)[order], cams=cams[order])
    # On other synthetic pools a component sometimes collapses onto one outlier, which then
    # ranks first (3 of 100 pool x seed draws): the method's, not this code's; see GMMSampler.
    for seed in range(5):
        ranked = get_sampler("gmm").rank(pool, seed=seed)
        assert set(ranked[-10:]) == set(range(1200, 1210)), seed
    ids, ll = GMMSampler().scores(pool, seed=0)
    assert len(ids) == len(ll) == 210 and np.all(np.isfinite(ll))


def test_gmm_falls_back_to_random_on_identical_cams(caplog):
    pool = PoolView(ids=np.arange(20), cams=np.full((20, 14, 14), 0.3))
    with caplog.at_level(logging.WARNING, logger="core.select.samplers"):
        ranked = get_sampler("gmm").rank(pool, seed=4, exclude=[0, 1])
    assert np.array_equal(ranked, get_sampler("random").rank(pool, seed=4, exclude=[0, 1]))
    assert "at random" in caplog.text
    one = get_sampler("gmm").rank(pool, exclude=range(1, 20))
    assert list(one) == [0]


def test_blas_thread_limit_is_restored_after_concurrent_use():
    import threading

    from threadpoolctl import threadpool_info

    from core.select.kcenter import one_blas_thread

    before = [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]
    pool = _pool(300, side=14)
    with one_blas_thread():
        assert all(i["num_threads"] == 1 for i in threadpool_info() if i["user_api"] == "blas")
        threads = [threading.Thread(target=get_sampler(n).rank, args=(pool,), kwargs={"k": 20})
                   for n in ("gmm", "kcenter", "gmm", "kcenter")]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"] == before


# --- pool size ------------------------------------------------------------------------------------


def test_a_pool_of_10000_ranks_quickly():
    """Not a benchmark (benchmarks/sampler_speed.py is): a guard against anything quadratic,
    which at 10,000 examples would take minutes or an N x N matrix of 800 MB."""
    rng = np.random.default_rng(0)
    n = 10_000
    pool = PoolView(ids=np.arange(n), probs=rng.dirichlet(np.ones(10), n), features=rng.normal(size=(n, 128)),
                    cams=rng.random((n, 14, 14)))
    exclude = np.arange(0, n, 100)
    t0 = time.perf_counter()
    for name in NAMES:
        k = 64 if name == "kcenter" else None
        ranked = get_sampler(name).rank(pool, exclude=exclude, k=k)
        assert len(ranked) == (k or n - len(exclude))
    assert time.perf_counter() - t0 < 60
