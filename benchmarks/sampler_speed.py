"""Sampler speed: each sampler of core.select ranking a pool of 10,000 examples, how its time
grows with the pool, and what a user would otherwise write.

The pool is synthetic, the shape of what the attention page gives the samplers: softmax
probabilities over 10 classes (Dirichlet), 128-d feature vectors (Gaussian), 14 x 14 CAMs
(a Gaussian blob at one of two typical places or anywhere, plus noise; random uniform maps
would let EM converge in a few iterations and flatter the GMM). 1% of the ids are excluded
(already annotated); k-center picks ``--k`` (256) and starts from them.

Per sampler: the median time of ``rank`` at N (``--n``, 10,000) and on the first N/4 of the
same pool, and the scaling exponent log(t_N / t_N/4) / log 4 (1 for linear time; the GMM's
EM may take a different number of iterations on the two). References, timed in the same
rounds (rotating order, ``--rounds``, after a warm-up):

- random, entropy, margin: a full ``np.argsort`` of the score (the obvious code);
- kcenter: the widely copied google/active-learning ``kcenter_greedy`` (scikit-learn
  ``pairwise_distances`` to each new center, BLAS threads as configured), same first pick;
- gmm: the same ``GaussianMixture`` fit and ``score_samples`` without our one-thread BLAS
  limit (what a user writes with scikit-learn).

The issue's figure "GMM scoring with CAMs <= 1.5x one forward+backward pass" is measured by
``gradcam_speed.py`` / ``attention_guidance.py``; this one is the samplers alone.

    python benchmarks/sampler_speed.py [--n 10000] [--k 256] [--rounds 5] [--seed 0] [--quick] [--device cpu|cuda]
                                       [--json PATH]

``--device`` is taken for the same command line as the other speed benchmarks, but nothing
here runs on a GPU: the samplers and their references are numpy / scikit-learn code and are
timed on the CPU whatever it says (the JSON's ``params.device_note`` says so). On a machine
without the device it says so and exits 0.
"""
from __future__ import annotations

import argparse
import math

import numpy as np
from _common import (device_or_exit, device_params, interleaved_many, machine, print_table, seeds_record,
                     write_json)
from scipy.stats import entropy
from sklearn.metrics import pairwise_distances
from sklearn.mixture import GaussianMixture

from core.select import PoolView, get_sampler

NAMES = ["random", "entropy", "margin", "kcenter", "gmm"]
DEVICE_NOTE = "nothing runs on a GPU here: the samplers and references are numpy / scikit-learn, timed on the CPU"


def synthetic_pool(n: int, seed: int, *, classes: int = 10, dim: int = 128, side: int = 14) -> PoolView:
    """A pool of ``n`` examples with probabilities, features and blob-shaped CAMs."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:side, :side]
    where = rng.integers(3, size=n)  # two typical places (0, 1) and anywhere (2)
    cy = np.where(where == 0, side * 0.5, np.where(where == 1, side * 0.3, rng.uniform(0, side, n)))
    cx = np.where(where == 0, side * 0.5, np.where(where == 1, side * 0.7, rng.uniform(0, side, n)))
    cy, cx = cy + rng.normal(0, 0.7, n), cx + rng.normal(0, 0.7, n)
    cams = np.exp(-((yy - cy[:, None, None]) ** 2 + (xx - cx[:, None, None]) ** 2) / (2 * (side / 7) ** 2))
    cams = np.clip(cams + rng.normal(0, 0.03, cams.shape), 0, 1).astype(np.float32)
    return PoolView(
        ids=rng.permutation(10 * n)[:n],
        probs=rng.dirichlet(np.full(classes, 0.3), n).astype(np.float32),
        features=rng.normal(size=(n, dim)).astype(np.float32),
        cams=cams,
    )


def reference_sort(pool: PoolView, exclude: np.ndarray, name: str, seed: int) -> np.ndarray:
    keep = ~np.isin(pool.ids, exclude)
    if name == "random":
        return np.random.default_rng(seed).permutation(pool.ids[keep])
    p = pool.probs[keep].astype(np.float64)
    if name == "entropy":
        return pool.ids[keep][np.argsort(-entropy(p, axis=1), kind="stable")]
    top = np.sort(p, axis=1)
    return pool.ids[keep][np.argsort(top[:, -1] - top[:, -2], kind="stable")]


def reference_kcenter(pool: PoolView, exclude: np.ndarray, k: int) -> np.ndarray:
    """google/active-learning's kcenter_greedy: a running minimum of pairwise_distances."""
    x = pool.features
    centers = np.flatnonzero(np.isin(pool.ids, exclude))
    mind = pairwise_distances(x, x[centers]).min(axis=1)
    mind[centers] = -1.0
    picks = []
    for _ in range(k):
        p = int(np.argmax(mind))
        picks.append(p)
        mind = np.minimum(mind, pairwise_distances(x, x[[p]]).ravel())
        mind[p] = -1.0
    return pool.ids[picks]


def reference_gmm(pool: PoolView, exclude: np.ndarray, seed: int) -> np.ndarray:
    keep = ~np.isin(pool.ids, exclude)
    x = pool.cams[keep].reshape(int(keep.sum()), -1)
    gmm = GaussianMixture(n_components=2, covariance_type="diag", max_iter=100, random_state=seed).fit(x)
    return pool.ids[keep][np.argsort(-gmm.score_samples(x), kind="stable")]


REPEAT = {"random": 20, "entropy": 20, "margin": 20}  # calls per timing: milliseconds alone are mostly noise


def runs_for(pool: PoolView, exclude: np.ndarray, k: int, seed: int, *, references: bool) -> dict:
    """Callables to time, by name (a sampler, or "ref:" and its name), each running
    ``REPEAT[name]`` calls (1 by default)."""
    runs = {}
    for name in NAMES:
        sampler, kk = get_sampler(name), (k if name == "kcenter" else None)
        reps = REPEAT.get(name, 1)
        runs[name] = lambda s=sampler, kk=kk, r=reps: [s.rank(pool, exclude=exclude, seed=seed, k=kk) for _ in range(r)]
        if not references:
            continue
        if name == "kcenter":
            runs["ref:kcenter"] = lambda: reference_kcenter(pool, exclude, k)
        elif name == "gmm":
            runs["ref:gmm"] = lambda: reference_gmm(pool, exclude, seed)
        else:
            runs[f"ref:{name}"] = lambda n=name, r=reps: [reference_sort(pool, exclude, n, seed) for _ in range(r)]
    return runs


REFERENCE = {
    "random": "np.random.permutation of the candidates",
    "entropy": "np.argsort of scipy entropy",
    "margin": "np.argsort of top-1 minus top-2",
    "kcenter": "google/active-learning kcenter_greedy (sklearn pairwise_distances per pick)",
    "gmm": "same GaussianMixture without the one-thread BLAS limit",
}


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10_000, help="pool size")
    ap.add_argument("--k", type=int, default=256, help="k-center picks")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="small run for CI")
    ap.add_argument("--device", default="cpu",
                    help="cpu or cuda, for the same command line as the other speed benchmarks; the samplers are "
                         "numpy / scikit-learn and always run on the CPU (on a machine without it: says so, exits 0)")
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    device = device_or_exit(args.device)
    if args.quick:
        args.n, args.k, args.rounds = 2_000, 64, 3
    prov = machine("cpu")  # where every timing ran, whatever --device said

    pool = synthetic_pool(args.n, args.seed)
    exclude = pool.ids[:: 100]
    n4 = args.n // 4  # the first quarter of the same pool, so only the size differs
    quarter = PoolView(ids=pool.ids[:n4], probs=pool.probs[:n4], features=pool.features[:n4], cams=pool.cams[:n4])
    q_exclude = quarter.ids[:: 100]

    full = interleaved_many(runs_for(pool, exclude, args.k, args.seed, references=True), rounds=args.rounds)
    small = interleaved_many(runs_for(quarter, q_exclude, args.k, args.seed, references=False), rounds=args.rounds)
    ours_k = get_sampler("kcenter").rank(pool, exclude=exclude, seed=args.seed, k=args.k)
    same_kcenter = bool(np.array_equal(ours_k, reference_kcenter(pool, exclude, args.k)))

    rows = []
    for name in NAMES:
        reps = REPEAT.get(name, 1)
        t, tq, ref = (d["median_s"][key] / reps for d, key in ((full, name), (small, name), (full, f"ref:{name}")))
        rows.append({
            "name": f"sampler_speed/{name}", "sampler": name, "n": args.n, "k": args.k if name == "kcenter" else None,
            "ours_s": t, "quarter_s": tq, "scaling_exponent": math.log(t / tq) / math.log(4),
            "reference": REFERENCE[name], "reference_s": ref, "ratio": t / ref,
            "ratio_rounds": full["ratio"][name][f"ref:{name}"], "target": None, "quick": args.quick,
            "seeds": seeds_record([args.seed], [], "nothing (a timing)"),
            "params": {"n": args.n, "n_quarter": args.n // 4, "excluded": len(exclude), "k": args.k,
                       "features_dim": 128, "classes": 10, "cams": "14x14", "rounds": args.rounds,
                       "calls_per_timing": reps, "ours_all": [x / reps for x in full["all_s"][name]],
                       "reference_all": [x / reps for x in full["all_s"][f"ref:{name}"]],
                       **({"same_picks_as_reference": same_kcenter} if name == "kcenter" else {}),
                       **device_params(device, DEVICE_NOTE), "timed_on": "cpu"},
            "provenance": prov,
        })
    print_table(rows, ["sampler", "n", "k", "ours_s", "quarter_s", "scaling_exponent", "reference_s", "ratio"])
    print(f"k-center picks identical to the reference: {same_kcenter}")
    write_json(args.json, rows)
    return rows


if __name__ == "__main__":
    main()
